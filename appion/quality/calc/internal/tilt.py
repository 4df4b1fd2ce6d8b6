"""Sample tilt from the defocus fitted per tile of a micrograph.

The method is CTFFIND 5's (Elferich, Kong, Zottig & Grigorieff 2024, "CTFFIND5 provides improved insight
into quality, tilt and thickness of TEM samples", eLife 13:RP97227): a tilted specimen has a defocus that
changes linearly across the image, so defoci fitted on tiles lie on a plane whose gradient is the tilt.
Written here on appion's own CTF pieces (appion.ctfestimation.calc.internal):

1. a Fourier-binned copy of the image whose Nyquist frequency sits just above the fit limit (same
   information, less work);
2. the astigmatism azimuth on the whole image with the CTF step's defocus1/2 held (its output has no angle);
3. n × n square tiles; each tile's spectrum (Tukey taper, zero-padded ×TILE_PAD so the rings up to the fit
   limit stay resolved) is averaged along the global fit's equal-phase ellipses (astigmatism-corrected
   rotational average) and its mean defocus found by the CTF step's 1D search around the global defocus;
4. a plane Δf(x, y) = Δf0 + gx·x + gy·y (x, y in Å from the image centre) through the tiles whose fit
   beats noise, by least squares, with one pass that drops outlying tiles (carbon edge, contamination);
   the tilt's standard error follows from the tiles' scatter about the plane, and a tilt less certain than
   MAX_TILT_SIGMA_DEG is not reported (a small field of view gives a large, meaningless |gradient|);
5. tilt = atan(|g|) (g in Å per Å), tilt axis = azimuth of g − 90°: the defocus grows (more underfocus)
   towards the axis + 90°, as in appion.base.simulate.calc.calc_defocus_map_A.

Conventions (docs/conventions.md): defocus in Å, positive = underfocus; angles in degrees counter-clockwise
from x = numpy axis 1 (y = axis 0).  The precision is set by the number of Fourier pixels per tile (the
specimen's own speckle): on a 1024² × 1 Å image (1/16 of a 4k micrograph) the tilt scatters by ~2°; on a
field of 1600 Å or more it is within 1°.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.signal

from appion.base.fft import calc_irfft2, calc_rfft2
from appion.base.physics import calc_amplitude_phase, calc_wavelength_A
from appion.ctfestimation.calc.internal import (TILE_TAPER, CtfSearchParams, calc_defocus_search,
                                                calc_equiphase_radius, calc_power_spectrum, calc_spectrum_data)

TILE_PAD = 2  # zero-padding factor of a tile's spectrum
MIN_BINS_PER_RING = 3.0  # the fit stops where a CTF² period spans fewer spectrum bins than this
NOISE_SCORE_FACTOR = 5.0  # a tile's 1D score must beat NOISE_SCORE_FACTOR/√(bins fitted) (noise: ~1/√bins)
OUTLIER_MIN_A = 60.0  # a tile is an outlier when its residual exceeds max(4 robust σ, OUTLIER_MIN_A)
MAX_TILT_SIGMA_DEG = 2.5  # a tilt less certain than this (standard error from the plane fit) is not reported
ASTIG_MIN_A = 50.0  # below this |defocus1 − defocus2| the azimuth is not fitted (it does not matter)


@dataclass(frozen=True)
class TiltParams:
    """Optics, the whole image's CTF fit and the tiling (Å, kV, mm, degrees).

    defocus1_A/defocus2_A: the CTF step's fit (either order); resmax_A: the best resolution used per tile
    (the CTF fit resolution is a sensible value when it is worse than the default); max_tilt_deg: the
    largest tilt looked for (sets each tile's defocus search range).
    """

    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float
    defocus1_A: float
    defocus2_A: float
    n_tiles: int = 3
    resmin_A: float = 30.0
    resmax_A: float = 4.0
    max_tilt_deg: float = 50.0


@dataclass(frozen=True)
class TiltFit:
    """The fitted plane and the tiles behind it.

    tilt_deg ≥ 0; tilt_axis_deg in [0, 360) (None when the tilt is below 0.05°); tilt_sigma_deg: its
    standard error (from the tiles' scatter about the plane); defocus_centre_A: the plane at the image
    centre.  tile_x_A, tile_y_A, tile_defocus_A, tile_score: (n_tiles²,) float64;
    tile_used: (n_tiles²,) bool (beat noise and not an outlier); residual_rms_A: of the used tiles.
    """

    tilt_deg: float
    tilt_axis_deg: float | None
    tilt_sigma_deg: float
    defocus_centre_A: float
    astig_angle_deg: float
    tile_x_A: np.ndarray
    tile_y_A: np.ndarray
    tile_defocus_A: np.ndarray
    tile_score: np.ndarray
    tile_used: np.ndarray
    residual_rms_A: float


class TiltError(ValueError):
    """The image cannot give a tilt (too small, no rings in enough tiles)."""


def calc_fourier_binned(image: np.ndarray, pixel_size_A: float, target_pixel_A: float, workers: int = 1):
    """(image cropped in Fourier space to a pixel of about target_pixel_A, its pixel size in Å).

    image: (y, x) real.  Returns float32 (y', x') with even sizes; the image itself (as float32) when it is
    already that coarse.
    """
    ny, nx = image.shape
    factor = target_pixel_A / pixel_size_A
    my, mx = int(ny / factor) // 2 * 2, int(nx / factor) // 2 * 2
    if factor <= 1.05 or my < 64 or mx < 64:
        return np.asarray(image, dtype=np.float32), pixel_size_A
    f = calc_rfft2(image, workers)
    keep = np.concatenate([f[: my // 2, : mx // 2 + 1], f[ny - my // 2:, : mx // 2 + 1]], axis=0)
    out = calc_irfft2(keep, (my, mx), workers) * np.float32(my * mx / (ny * nx))
    return out, pixel_size_A * ny / my


def calc_tile_origins(shape: tuple[int, int], n_tiles: int) -> tuple[int, list[tuple[int, int]]]:
    """(tile size px, [(y0, x0), ...]): square tiles, n_tiles along the shorter side, evenly spread
    (overlapping a little when the size does not divide) along each axis."""
    ny, nx = shape
    size = min(ny, nx) // n_tiles
    rows = max(1, int(round(ny / size)))
    cols = max(1, int(round(nx / size)))
    ys = np.rint(np.linspace(0, ny - size, rows)).astype(int)
    xs = np.rint(np.linspace(0, nx - size, cols)).astype(int)
    return size, [(int(y), int(x)) for y in ys for x in xs]


def calc_padded_power(tile: np.ndarray, pad: int = TILE_PAD, workers: int = 1) -> np.ndarray:
    """Power spectrum of one tapered, mean-subtracted square tile zero-padded to pad × its size.

    tile: (s, s).  Returns (b, b//2+1) float64 in rfft layout, b = pad·s rounded to even.
    """
    s = tile.shape[0]
    w1 = scipy.signal.windows.tukey(s, TILE_TAPER, sym=False)
    window = w1[:, None] * w1[None, :]
    data = (tile.astype(np.float64) - float(tile.mean())) * window
    b = int(pad * s) // 2 * 2
    f = scipy.fft.rfft2(data, s=(b, b), workers=workers)
    return (f.real ** 2 + f.imag ** 2) / float(np.sum(window ** 2))


def calc_astig_angle_deg(power: np.ndarray, pixel_size_A: float, params: TiltParams, kmin: float,
                         kmax: float) -> float:
    """Azimuth (degrees in [0, 180)) of the larger of defocus1/2 that best matches the spectrum's rings.

    power: (b, b//2+1) rfft-layout spectrum.  Only the azimuthal part is compared: both the spectrum and
    the model sin²(χ + w) have their mean per radius bin removed.  0 when the astigmatism is negligible.
    """
    d_major, d_minor = max(params.defocus1_A, params.defocus2_A), min(params.defocus1_A, params.defocus2_A)
    if d_major - d_minor < ASTIG_MIN_A:
        return 0.0
    spec = calc_spectrum_data(power, pixel_size_A)
    sel = spec.fit_mask & (spec.k >= kmin) & (spec.k <= kmax)
    k2 = spec.k[sel] ** 2
    c2, s2 = spec.cos2[sel], spec.sin2[sel]
    rbin = np.rint(spec.k[sel] / spec.dk).astype(np.int64)
    counts = np.bincount(rbin).astype(np.float64)

    def detrend(values):
        return values - (np.bincount(rbin, weights=values, minlength=counts.size) / np.maximum(counts, 1))[rbin]

    data = detrend(spec.power[sel])
    data /= max(float(np.sqrt(np.sum(data ** 2))), 1e-300)
    lam = float(calc_wavelength_A(params.voltage_kV * 1e3))
    cs_A = params.cs_mm * 1e7
    w = calc_amplitude_phase(params.amplitude_contrast)
    mean, half = 0.5 * (d_major + d_minor), 0.5 * (d_major - d_minor)

    def score(angle_deg: float) -> float:
        a = math.radians(angle_deg)
        df = mean + half * (c2 * math.cos(2 * a) + s2 * math.sin(2 * a))
        model = detrend(np.sin(np.pi * lam * k2 * df - 0.5 * np.pi * cs_A * lam ** 3 * k2 * k2 + w) ** 2)
        return float(np.sum(data * model) / max(np.sqrt(np.sum(model ** 2)), 1e-300))

    coarse = np.arange(0.0, 180.0, 3.0)
    best = float(coarse[int(np.argmax([score(a) for a in coarse]))])
    fine = best + np.arange(-3.0, 3.01, 0.25)
    return float(fine[int(np.argmax([score(a) for a in fine]))] % 180.0)


def calc_plane_fit(x_A: np.ndarray, y_A: np.ndarray, defocus_A: np.ndarray):
    """Least-squares plane Δf = d0 + gx·x + gy·y: returns (d0 Å, gx, gy (Å/Å), residuals (n,) Å).

    x_A, y_A, defocus_A: (n,), n ≥ 3 points not on one line.
    """
    a = np.column_stack([np.ones_like(x_A), x_A, y_A])
    coef, *_ = np.linalg.lstsq(a, defocus_A, rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2]), defocus_A - a @ coef


def calc_tilt_sigma_deg(x_A: np.ndarray, y_A: np.ndarray, residuals_A: np.ndarray, gx: float, gy: float) -> float:
    """Standard error (degrees) of the tilt of a plane fit: the gradient's covariance s²(AᵀA)⁻¹ (s² the
    residual variance, n − 3 degrees of freedom) along the gradient, through d(atan g)/dg = 1/(1 + g²).

    x_A, y_A, residuals_A: (n,); inf when n ≤ 3.
    """
    n = len(residuals_A)
    if n <= 3:
        return math.inf
    a = np.column_stack([np.ones_like(x_A), x_A, y_A])
    cov = float(np.sum(residuals_A ** 2)) / (n - 3) * np.linalg.inv(a.T @ a)[1:, 1:]
    g = math.hypot(gx, gy)
    var = float(np.trace(cov)) / 2.0 if g == 0.0 else float(np.array([gx, gy]) @ cov @ np.array([gx, gy])) / g ** 2
    return math.degrees(math.sqrt(max(var, 0.0)) / (1.0 + g * g))


def calc_tilt_from_gradient(gx: float, gy: float) -> tuple[float, float | None]:
    """(tilt degrees ≥ 0, axis degrees in [0, 360) or None below 0.05°) of a defocus gradient (Å/Å).

    The defocus grows towards the axis + 90° (see the module docstring).
    """
    tilt = math.degrees(math.atan(math.hypot(gx, gy)))
    if tilt < 0.05:
        return tilt, None
    return tilt, (math.degrees(math.atan2(gy, gx)) - 90.0) % 360.0


def calc_tilt_fit(image: np.ndarray, params: TiltParams, workers: int = 1) -> TiltFit:
    """Fit the sample tilt of a micrograph (see the module docstring).

    image: (y, x) real, finite; workers: FFT threads.  Raises TiltError when the tiles are too small to
    resolve the rings, too few tiles show rings above noise, or the tilt is too uncertain.
    """
    mean_defocus = 0.5 * (params.defocus1_A + params.defocus2_A)
    resmax = max(params.resmax_A, 2.2 * params.pixel_size_A)
    binned, pix = calc_fourier_binned(image, params.pixel_size_A, resmax / 2.5, workers)
    size, origins = calc_tile_origins(binned.shape, params.n_tiles)
    if size < 64:
        raise TiltError(f"image ({image.shape[1]}×{image.shape[0]} px) too small for {params.n_tiles}×"
                        f"{params.n_tiles} tiles")
    lam = float(calc_wavelength_A(params.voltage_kV * 1e3))
    box = int(TILE_PAD * size) // 2 * 2
    dk = 1.0 / (box * pix)
    # rings resolved: a CTF² period 1/(2λΔf k) spans at least MIN_BINS_PER_RING bins up to the fit limit
    ny, nx = binned.shape
    reach = max(math.hypot(y0 + size / 2.0 - ny / 2.0, x0 + size / 2.0 - nx / 2.0) for y0, x0 in origins) * pix
    half_range = math.tan(math.radians(params.max_tilt_deg)) * reach + 500.0
    k_ring = 1.0 / (2.0 * lam * (mean_defocus + half_range) * MIN_BINS_PER_RING * dk)
    resmax = max(resmax, 1.0 / k_ring)
    if resmax >= 0.5 * params.resmin_A:
        raise TiltError(f"tiles of {size * pix:.0f} Å cannot resolve the Thon rings at {mean_defocus:.0f} Å "
                        f"defocus (fewer tiles or a larger image needed)")
    whole = calc_power_spectrum(binned, min(512, min(ny, nx)) // 2 * 2, workers=workers)
    angle = calc_astig_angle_deg(whole, pix, params, 1.0 / params.resmin_A, 1.0 / resmax)
    d1, d2 = max(params.defocus1_A, params.defocus2_A), min(params.defocus1_A, params.defocus2_A)
    search = CtfSearchParams(pixel_size_A=pix, voltage_kV=params.voltage_kV, cs_mm=params.cs_mm,
                             amplitude_contrast=params.amplitude_contrast, box=box, resmin_A=params.resmin_A,
                             resmax_A=resmax, dfmin_A=max(500.0, mean_defocus - half_range),
                             dfmax_A=mean_defocus + half_range, dfstep_A=25.0)
    n_bins = (1.0 / resmax - 1.0 / params.resmin_A) / dk
    noise = NOISE_SCORE_FACTOR / math.sqrt(max(n_bins, 1.0))
    xs, ys, defoci, scores = [], [], [], []
    for y0, x0 in origins:
        spec = calc_spectrum_data(calc_padded_power(binned[y0:y0 + size, x0:x0 + size], workers=workers), pix)
        spec = dataclasses.replace(spec, k=calc_equiphase_radius(spec, d1, d2, angle, lam, params.cs_mm * 1e7))
        start = calc_defocus_search(spec, search)
        xs.append((x0 + size / 2.0 - nx / 2.0) * pix)
        ys.append((y0 + size / 2.0 - ny / 2.0) * pix)
        defoci.append(start.defocus_A)
        scores.append(start.score)
    x, y, d, s = (np.asarray(v, dtype=np.float64) for v in (xs, ys, defoci, scores))
    used = s > noise
    if used.sum() < max(4, (len(s) + 1) // 2):
        raise TiltError(f"only {int(used.sum())} of {len(s)} tiles show Thon rings above noise")
    d0, gx, gy, resid = calc_plane_fit(x[used], y[used], d[used])
    sigma = 1.4826 * float(np.median(np.abs(resid)))
    keep = np.abs(resid) <= max(4.0 * sigma, OUTLIER_MIN_A)
    if not keep.all() and keep.sum() >= 4:
        idx = np.flatnonzero(used)
        used[idx[~keep]] = False
        d0, gx, gy, resid = calc_plane_fit(x[used], y[used], d[used])
    tilt, axis = calc_tilt_from_gradient(gx, gy)
    sigma = calc_tilt_sigma_deg(x[used], y[used], resid, gx, gy)
    if not sigma <= MAX_TILT_SIGMA_DEG:
        raise TiltError(f"tilt {tilt:.1f}° too uncertain (±{sigma:.1f}° from {int(used.sum())} tiles of "
                        f"{size * pix:.0f} Å): the field of view is too small")
    return TiltFit(tilt_deg=tilt, tilt_axis_deg=axis, tilt_sigma_deg=sigma, defocus_centre_A=d0,
                   astig_angle_deg=angle, tile_x_A=x,
                   tile_y_A=y, tile_defocus_A=d, tile_score=s, tile_used=used,
                   residual_rms_A=float(np.sqrt(np.mean(resid ** 2))))
