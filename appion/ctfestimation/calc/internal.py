"""appion's own CTF estimator: tile-averaged spectrum, 1D defocus search, 2D refinement.

Pure numerics (numpy/scipy/numba, no I/O).  Conventions are CTFFIND's, through
appion.base.physics: defocus in Å (positive = underfocus), defocus1 along the azimuth
astig_angle_deg (degrees counter-clockwise from x = numpy axis 1; y = axis 0), Cs in mm,
spatial frequency k in 1/Å.

Pipeline (each step is a public function so a caller can time it; calc_ctf_fit runs them all):
1. calc_power_spectra: mean |FFT|² of mean-subtracted, edge-tapered tiles (batched float32
   rfft, scipy.fft workers).  Tiles are 2·box wide when the image allows: binned 2× they give
   the box-sampled spectrum used for the search and the outputs; unbinned they are used by
   the 2D refinement (finer sampling = less ring shift from the tile blur, see calc_refinement).
2. calc_spectrum_data: frequency coordinates of the rfft half plane (pixels on the kx = 0 and
   ky = 0 axes are left out of every fit: tile edges put a cross artefact there).
3. calc_defocus_search: 1D search over defocus (and phase shift) on the rotational average.
   For every candidate the background is the profile smoothed over the candidate's CTF²
   period (SMOOTH_PASSES box passes of width π in phase χ), which removes the rings whatever
   the background shape; the residual is normalised by its local RMS (same smoothing).
4. calc_refinement: 2D fit of (mean defocus, astigmatism as a vector, phase shift)
   maximising the correlation of the model CTF² with the background-subtracted, locally
   normalised 2D spectrum in [1/resmin, 1/resmax].  Astigmatism is parametrised as
   Δf(θ) = f + a_x cos 2θ + a_y sin 2θ (linear in the parameters, no singularity at zero
   astigmatism); coarse grid, then BFGS with an analytic gradient (numba), first to
   STAGE1_RESMAX_A, then to resmax, the background re-estimated along the fitted CTF's
   equal-phase ellipses in between.
5. calc_fit_diagnostics: CTFFIND-style 1D outputs (rotational averages, fitted CTF²,
   per-frequency fit score and its noise level), the fit resolution and Appion's confidences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.signal
from numba import njit

from appion.base.physics import calc_amplitude_phase, calc_ctf, calc_frequency_grid, calc_wavelength_A
from appion.ctfestimation.calc.result import CtfResult

# Resolution limit (Å) of the first refinement stage: low enough that the astigmatism grid
# and the start from the 1D search are inside the capture range of the local optimiser.
STAGE1_RESMAX_A = 8.0
# Largest astigmatism (|Δf1 − Δf2|, Å) the coarse grid looks at when no restraint is given.
DEFAULT_ASTIG_SEARCH_A = 2000.0
# Weight of the astigmatism restraint penalty (score units per (excess/tolerance)²).
ASTIG_PENALTY = 0.1
# Box passes (each π wide in phase) of the background smoothing; see _window_smooth.
SMOOTH_PASSES = 3
# Fraction of each tile edge tapered by a cosine (Tukey window): keeps tile-edge leakage
# (the cross along the axes from gradients across the image) out of the spectrum.  On the
# simulated benchmark cases it changes the defocus errors by less than their noise.
TILE_TAPER = 0.2
# Largest tile used for the refinement spectrum (2·box tiles, see calc_power_spectra).
MAX_FINE_TILE = 1024
# A 2D fit whose correlation is below NOISE_CC_FACTOR/√(fitted pixels) is indistinguishable
# from a fit to pure noise (see calc_fit_diagnostics).
NOISE_CC_FACTOR = 5.0
# Smallest half-width (bins) of the window of the per-frequency fit score.
SCORE_MIN_HALF_BINS = 5


@dataclass(frozen=True)
class CtfSearchParams:
    """What the estimator needs to know and where to search (Å, kV, mm, radians).

    tile_overlap: fraction of the box by which neighbouring tiles overlap (tiles always
    cover the whole image: when the size is not a multiple of the step they overlap more).
    """

    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float
    box: int = 512
    resmin_A: float = 30.0
    resmax_A: float = 5.0
    dfmin_A: float = 5000.0
    dfmax_A: float = 50000.0
    dfstep_A: float = 100.0
    astig_restraint_A: float | None = None
    find_phase_shift: bool = False
    phase_min_rad: float = 0.0
    phase_max_rad: float = math.pi
    phase_step_rad: float = 0.1
    tile_overlap: float = 0.0


@dataclass(frozen=True)
class SpectrumData:
    """The averaged power spectrum with its frequency coordinates (rfft half plane).

    power: (box, box//2+1) float64, unshifted rfft layout.  k (1/Å), cos2/sin2 (of 2θ),
    fit_mask (bool: usable pixels, i.e. not on the axes, not DC): same shape.
    dk: frequency step (1/Å) = 1/(box · pixel).
    """

    power: np.ndarray
    k: np.ndarray
    cos2: np.ndarray
    sin2: np.ndarray
    fit_mask: np.ndarray
    dk: float
    box: int


@dataclass(frozen=True)
class SearchStart:
    """Result of the 1D search: mean defocus (Å), phase shift (rad) and its score."""

    defocus_A: float
    phase_shift_rad: float
    score: float
    defocus_grid_A: np.ndarray
    score_grid: np.ndarray


@dataclass(frozen=True)
class Refined:
    """2D refinement result in CTFFIND's form (defocus1 ≥ defocus2, angle in (−90, 90])."""

    defocus1_A: float
    defocus2_A: float
    astig_angle_deg: float
    phase_shift_rad: float
    cross_correlation: float
    n_fit_pixels: int = 0


@dataclass(frozen=True)
class CtfFit:
    """Everything the outputs need.

    1D arrays (n_bins,) over frequencies_per_A = 0, dk, 2dk, … up to the spectrum corner
    (CTFFIND's _avrot lines): rotavg_no_astig (plain rotational average, background
    subtracted and normalised), rotavg (same, averaged along the fitted CTF's equal-phase
    ellipses), ctf_fit (fitted CTF² at the mean defocus), ring_score (running correlation
    between rotavg and ctf_fit), ring_score_noise (2σ of that correlation for pure noise).
    spectrum_2d / model_2d: (box, box) float32 centred (DC at [box//2, box//2]); the
    background-subtracted normalised spectrum and the fitted CTF².
    """

    result: CtfResult
    frequencies_per_A: np.ndarray
    rotavg_no_astig: np.ndarray
    rotavg: np.ndarray
    ctf_fit: np.ndarray
    ring_score: np.ndarray
    ring_score_noise: np.ndarray
    spectrum_2d: np.ndarray
    model_2d: np.ndarray
    spectrum_pixel_size_A: float


# ----------------------------------------------------------------------------- validation

def validate_inputs(image: np.ndarray, params: CtfSearchParams) -> None:
    """Raise ValueError with a specific message when the image or the parameters cannot work.

    image: (y, x) or (n, y, x) real array.
    """
    if not params.pixel_size_A > 0:
        raise ValueError(f"pixel size must be > 0 Å, got {params.pixel_size_A}")
    if not params.voltage_kV > 0:
        raise ValueError(f"voltage must be > 0 kV, got {params.voltage_kV}")
    if not 0.0 <= params.amplitude_contrast < 1.0:
        raise ValueError(f"amplitude contrast must be in [0, 1), got {params.amplitude_contrast}")
    if not params.resmin_A > params.resmax_A > 0:
        raise ValueError(f"resmax ({params.resmax_A} Å) must be smaller than resmin ({params.resmin_A} Å) and > 0")
    if params.resmax_A < 2.0 * params.pixel_size_A:
        raise ValueError(f"resmax ({params.resmax_A} Å) is beyond Nyquist ({2 * params.pixel_size_A:.3f} Å)")
    if not 0 < params.dfmin_A < params.dfmax_A:
        raise ValueError(f"need 0 < dfmin < dfmax, got dfmin {params.dfmin_A} Å, dfmax {params.dfmax_A} Å")
    if not params.dfstep_A > 0:
        raise ValueError(f"dfstep must be > 0 Å, got {params.dfstep_A}")
    if params.box < 64 or params.box % 2:
        raise ValueError(f"box must be an even number ≥ 64, got {params.box}")
    if not 0.0 <= params.tile_overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {params.tile_overlap}")
    if params.astig_restraint_A is not None and not params.astig_restraint_A > 0:
        raise ValueError(f"astigmatism restraint must be > 0 Å, got {params.astig_restraint_A}")
    if params.find_phase_shift and not params.phase_max_rad > params.phase_min_rad:
        raise ValueError("phase_max must be larger than phase_min")
    if params.find_phase_shift and not params.phase_step_rad > 0:
        raise ValueError("phase_step must be > 0")
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"expected a 2D image or a stack of images, got shape {image.shape}")
    ny, nx = image.shape[-2:]
    if ny < params.box or nx < params.box:
        raise ValueError(f"image ({nx}×{ny} px) is smaller than the box ({params.box} px)")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    if float(np.ptp(image)) == 0.0:
        raise ValueError("image is blank (all pixels have the same value)")


# ----------------------------------------------------------------------------- spectrum

def calc_tile_origins(size: int, box: int, overlap: float) -> np.ndarray:
    """Evenly spaced tile start positions covering [0, size): (n,) int64."""
    step = max(1, int(round(box * (1.0 - overlap))))
    n = int(math.ceil((size - box) / step)) + 1
    return np.rint(np.linspace(0, size - box, n)).astype(np.int64)


@njit(cache=True)
def _accumulate_power(spectra, out):
    """out += Σ_i |spectra[i]|²; spectra: (n, y, x) complex64, out: (y, x) float64."""
    n, ny, nx = spectra.shape
    for i in range(n):
        for y in range(ny):
            for x in range(nx):
                v = spectra[i, y, x]
                out[y, x] += v.real * v.real + v.imag * v.imag


def calc_power_spectrum(images: np.ndarray, box: int, overlap: float = 0.0, workers: int = 1,
                        chunk_px: int = 1 << 22) -> np.ndarray:
    """Mean power spectrum of mean-subtracted box×box tiles over one image or a stack.

    images: (y, x) or (n, y, x), any real dtype.  Tiles are copied in chunks into one reused
    float32 buffer and transformed together (scipy.fft.rfft2, `workers` threads).
    Returns (box, box//2+1) float64 in unshifted rfft layout.
    """
    stack = images[None] if images.ndim == 2 else images
    ny, nx = stack.shape[-2:]
    ys = calc_tile_origins(ny, box, overlap)
    xs = calc_tile_origins(nx, box, overlap)
    origins = [(i, y, x) for i in range(stack.shape[0]) for y in ys for x in xs]
    buf = np.empty((max(1, min(chunk_px // (box * box), len(origins))), box, box), dtype=np.float32)
    w1 = scipy.signal.windows.tukey(box, TILE_TAPER, sym=False).astype(np.float32)
    window = w1[:, None] * w1[None, :]
    out = np.zeros((box, box // 2 + 1), dtype=np.float64)
    for start in range(0, len(origins), buf.shape[0]):
        part = origins[start:start + buf.shape[0]]
        tiles = buf[:len(part)]
        for j, (i, y, x) in enumerate(part):
            tiles[j] = stack[i, y:y + box, x:x + box]
        tiles -= tiles.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
        tiles *= window
        spectra = scipy.fft.rfft2(tiles, workers=workers, overwrite_x=True)
        _accumulate_power(spectra, out)
    out /= len(origins) * float(np.sum(window.astype(np.float64) ** 2))
    return out


def calc_binned_spectrum(fine: np.ndarray) -> np.ndarray:
    """Halve the sampling of an rfft-layout power spectrum (2B, B+1) → (B, B//2+1).

    Each coarse bin is the (¼, ½, ¼)² weighted mean of the fine bins around the same
    frequency (symmetric, so no frequency shift).  Larger tiles binned this way blur the rings
    with a kernel that is smooth in real space, unlike the tile edge of a B-sized tile.
    """
    n2 = fine.shape[0]
    b = n2 // 2
    neg = (-np.arange(n2)) % n2                       # P(ky, −kx) = P(−ky, kx)
    ext = np.concatenate([fine[neg, 1:2], fine, fine[neg, b - 1:b]], axis=1)
    rows = 0.5 * ext + 0.25 * (np.roll(ext, 1, axis=0) + np.roll(ext, -1, axis=0))
    cols = 0.5 * rows[:, 1:-1] + 0.25 * (rows[:, :-2] + rows[:, 2:])
    return np.ascontiguousarray(cols[0::2, 0::2])


def calc_power_spectra(images: np.ndarray, box: int, overlap: float = 0.0, workers: int = 1):
    """(spectrum at box sampling, spectrum of 2·box tiles or None) from one pass of FFTs.

    When the image holds 2·box tiles, they are transformed once: binned 2× they give the
    box-sampled spectrum (search, diagnostics), unbinned they serve the 2D refinement (see
    calc_refinement).  Smaller images, and boxes above MAX_FINE_TILE/2 (already finely
    sampled; larger tiles would make the 2D fit slow), use box tiles only.
    images: (y, x) or (n, y, x).  Returns float64 arrays in rfft layout.
    """
    if min(images.shape[-2:]) >= 2 * box and 2 * box <= MAX_FINE_TILE:
        fine = calc_power_spectrum(images, 2 * box, overlap, workers)
        return calc_binned_spectrum(fine), fine
    return calc_power_spectrum(images, box, overlap, workers), None


def calc_spectrum_data(power: np.ndarray, pixel_size_A: float) -> SpectrumData:
    """Frequency coordinates of an rfft-layout power spectrum (box, box//2+1)."""
    box = power.shape[0]
    k, theta = calc_frequency_grid((box, box), pixel_size_A, rfft=True)
    iy = np.fft.fftfreq(box, d=1.0 / box)
    mask = np.ones(power.shape, dtype=bool)
    mask[:, 0] = False
    mask[iy == 0, :] = False
    return SpectrumData(power=power, k=k, cos2=np.cos(2 * theta), sin2=np.sin(2 * theta), fit_mask=mask,
                        dk=1.0 / (box * pixel_size_A), box=box)


# ----------------------------------------------------------------------------- phase helpers

def _optics(params: CtfSearchParams) -> tuple[float, float, float]:
    """(λ Å, Cs Å, amplitude phase w rad)."""
    return (float(calc_wavelength_A(params.voltage_kV * 1e3)), params.cs_mm * 1e7,
            calc_amplitude_phase(params.amplitude_contrast))


def _calc_k_at_phase(target, a, b):
    """Smallest k ≥ 0 with a·k² − b·k⁴ = target (χ without offsets); inf when none exists.

    a = πλΔf, b = ½πCsλ³; target and a broadcast together.
    """
    target = np.asarray(target, dtype=np.float64)
    disc = a * a - 4.0 * b * np.maximum(target, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # k² = (a − √disc)/(2b), written in the cancellation-free form 2t/(a + √disc).
        k2 = 2.0 * np.maximum(target, 0.0) / (a + np.sqrt(np.maximum(disc, 0.0)))
    k = np.sqrt(k2)
    return np.where(disc < 0, np.inf, k)


def _calc_phase_windows(defocus_A, n_bins: int, dk: float, lam: float, cs_A: float, min_half_bins: int = 2):
    """Index windows [lo, hi) of 1D bins within ±π/2 in χ of each bin (one CTF² period).

    defocus_A: (m,) → lo, hi: (m, n_bins) int64.  Windows are at least ±min_half_bins wide.
    """
    a = np.pi * lam * np.asarray(defocus_A, dtype=np.float64)[:, None]
    b = 0.5 * np.pi * cs_A * lam**3
    kj = np.arange(n_bins) * dk
    chi = a * kj**2 - b * kj**4
    k_lo = _calc_k_at_phase(chi - np.pi / 2, a, b)
    k_hi = _calc_k_at_phase(chi + np.pi / 2, a, b)
    j = np.arange(n_bins)[None, :]
    lo = np.ceil(np.minimum(k_lo / dk, n_bins)).astype(np.int64)
    hi = np.floor(np.minimum(k_hi / dk, n_bins - 1)).astype(np.int64) + 1
    lo = np.clip(np.minimum(lo, j - min_half_bins), 1, n_bins)
    hi = np.clip(np.maximum(hi, j + min_half_bins + 1), 1, n_bins)
    return lo, hi


def _window_mean(values, weights, lo, hi):
    """Weighted mean of values over index windows [lo, hi) along the last axis (prefix sums)."""
    wv = np.concatenate([np.zeros(values.shape[:-1] + (1,)), np.cumsum(values * weights, axis=-1)], axis=-1)
    ww = np.concatenate([np.zeros(weights.shape[:-1] + (1,)), np.cumsum(weights, axis=-1)], axis=-1)
    num = np.take_along_axis(wv, hi, -1) - np.take_along_axis(wv, lo, -1)
    den = np.take_along_axis(np.broadcast_to(ww, wv.shape), hi, -1) - np.take_along_axis(
        np.broadcast_to(ww, wv.shape), lo, -1)
    return num / np.maximum(den, 1e-300)


def _window_smooth(values, weights, lo, hi):
    """SMOOTH_PASSES passes of the window mean: a smooth kernel ±SMOOTH_PASSES·π/2 wide in phase.

    One box pass of width π removes the CTF² oscillation but, where the envelope slopes,
    leaves a quadrature ripple ∝ dln(envelope)/dχ that shifts the apparent rings (a defocus
    bias of tens of Å); n passes give a kernel with an n-fold zero at the CTF² frequency.
    """
    out = values
    for _ in range(SMOOTH_PASSES):
        out = _window_mean(out, weights, lo, hi)
    return out


def _radial_profile(values: np.ndarray, radius_bins: np.ndarray, n_bins: int, mask: np.ndarray):
    """Mean of values per integer radius bin over mask: (profile (n_bins,), counts (n_bins,))."""
    idx = radius_bins[mask]
    counts = np.bincount(idx, minlength=n_bins)[:n_bins].astype(np.float64)
    sums = np.bincount(idx, weights=values[mask], minlength=n_bins)[:n_bins]
    return sums / np.maximum(counts, 1.0), counts


def calc_equiphase_radius(spec: SpectrumData, defocus1_A: float, defocus2_A: float, astig_angle_deg: float,
                          lam: float, cs_A: float) -> np.ndarray:
    """Frequency k_e (1/Å) at which a non-astigmatic CTF at the mean defocus has the same χ.

    Averaging the spectrum in bins of k_e is CTFFIND's astigmatism-corrected rotational
    average: the fitted rings become circles.  Returns the shape of spec.k.
    """
    mean = 0.5 * (defocus1_A + defocus2_A)
    half = 0.5 * (defocus1_A - defocus2_A)
    ang = np.deg2rad(astig_angle_deg)
    df = mean + half * (spec.cos2 * np.cos(2 * ang) + spec.sin2 * np.sin(2 * ang))
    a_pix = np.pi * lam * df
    b = 0.5 * np.pi * cs_A * lam**3
    k2 = spec.k**2
    chi = a_pix * k2 - b * k2 * k2
    ke = _calc_k_at_phase(chi, np.pi * lam * mean, b)
    return np.where(np.isfinite(ke), ke, spec.k)


# ----------------------------------------------------------------------------- 1D search

def calc_defocus_search(spec: SpectrumData, params: CtfSearchParams) -> SearchStart:
    """Best mean defocus (and phase shift) for the rotational average in [1/resmin, 1/resmax].

    Each candidate defocus gets its own background (the profile smoothed over its CTF²
    period, see _window_smooth) and normalisation (smoothed RMS of the residual); the score is
    the count-weighted correlation of that residual with the model's CTF², detrended the same way.  Candidates
    come from dfmin..dfmax in dfstep (and phase_min..phase_max in phase_step), then a
    finer local search (step/10) around the best.
    """
    lam, cs_A, w = _optics(params)
    # bins up to 1/resmax plus room for the background windows (SMOOTH_PASSES × ±π/2 in phase)
    n_all = int(np.ceil(params.box / 2 * np.sqrt(2))) + 2
    a_min = np.pi * lam * params.dfmin_A
    k_edge = _calc_k_at_phase(a_min / params.resmax_A**2 + SMOOTH_PASSES * np.pi, a_min, 0.0)
    n_bins = int(min(n_all, np.ceil(float(k_edge) / spec.dk) + 8))
    radius = np.minimum(np.rint(spec.k / spec.dk).astype(np.int64), n_all - 1)
    prof, counts = _radial_profile(spec.power, radius, n_all, spec.fit_mask)
    prof, counts = prof[:n_bins], counts[:n_bins]
    kj = np.arange(n_bins) * spec.dk
    sel = (kj >= 1.0 / params.resmin_A) & (kj <= 1.0 / params.resmax_A) & (counts > 0)
    phases = (np.arange(params.phase_min_rad, params.phase_max_rad + 1e-9, params.phase_step_rad)
              if params.find_phase_shift else np.array([0.0]))

    def score(defoci, phis):
        # sin²(χ+φ+w) = ½ − ½cos2φ·cos(2χ+2w) + ½sin2φ·sin(2χ+2w): the detrended model is a
        # linear combination of two detrended basis rows, so every φ costs a few scalars.
        lo, hi = _calc_phase_windows(defoci, n_bins, spec.dk, lam, cs_A)
        wts = np.broadcast_to(counts, lo.shape)
        bg = _window_smooth(np.broadcast_to(prof, lo.shape), wts, lo, hi)
        resid = prof[None, :] - bg
        rms = np.sqrt(_window_smooth(resid**2, wts, lo, hi))
        ws = counts[sel]
        sw = ws.sum()

        def centred(x):
            x = x[:, sel]
            return x - ((x * ws).sum(axis=1) / sw)[:, None]

        data = centred(resid / np.maximum(rms, 1e-300))                                  # (m, s)
        chi = (np.pi * lam * np.asarray(defoci)[:, None] * kj[None, :] ** 2
               - 0.5 * np.pi * cs_A * lam**3 * kj[None, :] ** 4) + w
        cos_b = np.cos(2 * chi)
        sin_b = np.sin(2 * chi)
        cos_b = centred(cos_b - _window_smooth(cos_b, wts, lo, hi))
        sin_b = centred(sin_b - _window_smooth(sin_b, wts, lo, hi))
        dd = (data * data * ws).sum(axis=1)
        dc = (data * cos_b * ws).sum(axis=1)
        ds = (data * sin_b * ws).sum(axis=1)
        cc = (cos_b * cos_b * ws).sum(axis=1)
        cs = (cos_b * sin_b * ws).sum(axis=1)
        ss = (sin_b * sin_b * ws).sum(axis=1)
        alpha = -np.cos(2 * np.asarray(phis))[None, :]
        beta = np.sin(2 * np.asarray(phis))[None, :]
        num = alpha * dc[:, None] + beta * ds[:, None]
        model_norm2 = alpha**2 * cc[:, None] + 2 * alpha * beta * cs[:, None] + beta**2 * ss[:, None]
        den = np.sqrt(np.maximum(model_norm2, 1e-300) * dd[:, None])
        r = num / np.maximum(den, 1e-300)                                                # (m, n_phi)
        best = np.argmax(r, axis=1)
        return r[np.arange(len(defoci)), best], np.asarray(phis)[best]

    grid = np.arange(params.dfmin_A, params.dfmax_A + 0.5 * params.dfstep_A, params.dfstep_A)
    grid_score, grid_phi = score(grid, phases)
    i = int(np.argmax(grid_score))
    fine = grid[i] + np.arange(-10, 11) * params.dfstep_A / 10.0
    fine = fine[(fine > 0)]
    fine_phases = (grid_phi[i] + np.arange(-5, 6) * params.phase_step_rad / 5.0
                   if params.find_phase_shift else phases)
    fine_score, fine_phi = score(fine, fine_phases)
    j = int(np.argmax(fine_score))
    return SearchStart(defocus_A=float(fine[j]), phase_shift_rad=float(fine_phi[j]), score=float(fine_score[j]),
                       defocus_grid_A=grid, score_grid=grid_score)


# ----------------------------------------------------------------------------- 2D refinement

@njit(cache=True, fastmath=True)
def _score_and_gradient(p, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase):
    """Weighted correlation of data with sin²(χ + w) and its gradient in the scaled parameters.

    p: (4,) scaled (mean defocus, a_x, a_y, phase); scale: (4,) units → Å/rad.
    k2, k4, c2, s2, data, wts: (n,) float64 per pixel; data is pre-centred (weighted mean 0).
    Returns (r, grad (4,)).
    """
    f = p[0] * scale[0]
    ax = p[1] * scale[1]
    ay = p[2] * scale[2]
    phi = p[3] * scale[3]
    n = k2.shape[0]
    sw = 0.0
    sa = 0.0
    sq = 0.0
    sl = 0.0
    sdd = 0.0
    da = np.zeros(4)
    dq = np.zeros(4)
    dl = np.zeros(4)
    for i in range(n):
        wi = wts[i]
        df = f + ax * c2[i] + ay * s2[i]
        chi = pi_lam * k2[i] * df - half_pi_cs_lam3 * k4[i] + phi + w_amp
        s = math.sin(chi)
        m = s * s
        dm = 2.0 * s * math.cos(chi)          # d sin²/dχ
        g0 = dm * pi_lam * k2[i]
        d = data[i]
        sw += wi
        sa += wi * d * m
        sq += wi * m * m
        sl += wi * m
        sdd += wi * d * d
        t = wi * d
        u = wi * 2.0 * m
        da[0] += t * g0
        da[1] += t * g0 * c2[i]
        da[2] += t * g0 * s2[i]
        dq[0] += u * g0
        dq[1] += u * g0 * c2[i]
        dq[2] += u * g0 * s2[i]
        dl[0] += wi * g0
        dl[1] += wi * g0 * c2[i]
        dl[2] += wi * g0 * s2[i]
        if fit_phase:
            da[3] += t * dm
            dq[3] += u * dm
            dl[3] += wi * dm
    var = sq - sl * sl / sw
    if var <= 0.0 or sdd <= 0.0:
        return 0.0, np.zeros(4)
    s_m = math.sqrt(var)
    nd = math.sqrt(sdd)
    r = sa / (nd * s_m)
    grad = np.zeros(4)
    for j in range(4):
        dvar = dq[j] - 2.0 * sl * dl[j] / sw
        grad[j] = (da[j] / s_m - sa * dvar / (2.0 * s_m * var)) / nd * scale[j]
    return r, grad


@njit(cache=True)
def _objective(q, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase, restraint):
    """−(correlation − astigmatism penalty) and its gradient in scaled parameters.

    restraint: tolerated |Δf1 − Δf2| in Å (≤ 0: none); beyond it the score loses
    ASTIG_PENALTY × (excess / restraint)².
    """
    r, g = _score_and_gradient(q, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase)
    f = -r
    grad = -g
    if restraint > 0.0:
        ax = q[1] * scale[1]
        ay = q[2] * scale[2]
        astig = 2.0 * math.sqrt(ax * ax + ay * ay)
        if astig > restraint:
            excess = (astig - restraint) / restraint
            f += ASTIG_PENALTY * excess * excess
            dpen = 2.0 * ASTIG_PENALTY * excess / restraint          # d penalty / d astig
            grad[1] += dpen * 4.0 * ax / astig * scale[1]
            grad[2] += dpen * 4.0 * ay / astig * scale[2]
    return f, grad


@njit(cache=True)
def _minimise_bfgs(q0, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase, restraint):
    """BFGS with a backtracking (Armijo) line search on _objective; 4 parameters, plain loops.

    Written out (instead of scipy.optimize) because L-BFGS-B's BLAS calls wake OpenBLAS's
    thread pool, which costs milliseconds per iteration on a busy machine.
    """
    n = 4 if fit_phase else 3
    q = q0.copy()
    f, g = _objective(q, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase, restraint)
    h = np.eye(4)
    for _ in range(100):
        d = np.zeros(4)
        for i in range(n):
            for j in range(n):
                d[i] -= h[i, j] * g[j]
        slope = 0.0
        for i in range(n):
            slope += d[i] * g[i]
        if slope >= 0.0:                      # not a descent direction: restart from steepest descent
            h = np.eye(4)
            for i in range(n):
                d[i] = -g[i]
            slope = 0.0
            for i in range(n):
                slope += d[i] * g[i]
        # never move more than ~0.5 rad of phase at kmax in one step
        norm = 0.0
        for i in range(n):
            norm = max(norm, abs(d[i]))
        step = 1.0 if norm <= 0.5 else 0.5 / norm
        accepted = False
        for _ls in range(30):
            qn = q + step * d
            fn, gn = _objective(qn, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase,
                                restraint)
            if fn <= f + 1e-4 * step * slope:
                accepted = True
                break
            step *= 0.5
        if not accepted:
            break
        sv = qn - q
        yv = gn - g
        q = qn
        df_ = f - fn
        f = fn
        g = gn
        sy = 0.0
        for i in range(n):
            sy += sv[i] * yv[i]
        if sy > 1e-18:
            hy = np.zeros(4)
            for i in range(n):
                for j in range(n):
                    hy[i] += h[i, j] * yv[j]
            yhy = 0.0
            for i in range(n):
                yhy += yv[i] * hy[i]
            for i in range(n):
                for j in range(n):
                    h[i, j] += ((sy + yhy) * sv[i] * sv[j] / (sy * sy) - (hy[i] * sv[j] + sv[i] * hy[j]) / sy)
        smax = 0.0
        for i in range(n):
            smax = max(smax, abs(sv[i]))
        if smax < 1e-7 or df_ < 1e-13:
            break
    return q


@dataclass(frozen=True)
class _FitPixels:
    """Flattened pixels used by the 2D score: all (n,) float64."""

    k2: np.ndarray
    k4: np.ndarray
    c2: np.ndarray
    s2: np.ndarray
    data: np.ndarray
    wts: np.ndarray


def calc_normalised_spectrum(spec: SpectrumData, defocus1_A: float, defocus2_A: float, astig_angle_deg: float,
                             lam: float, cs_A: float):
    """Background-subtracted, locally normalised spectrum for a CTF estimate.

    The background at each pixel is the average of the equiphase profile over one CTF²
    period around its equiphase radius; the normalisation is the RMS of the residual over
    the same window.  Returns (normalised (box, box//2+1) float64 (0 where not usable),
    equiphase radius (same shape), background profile (n_bins,), rms profile (n_bins,)).
    """
    n_bins = int(np.ceil(float(spec.k.max()) / spec.dk)) + 2
    ke = calc_equiphase_radius(spec, defocus1_A, defocus2_A, astig_angle_deg, lam, cs_A)
    rbin = np.minimum(np.rint(ke / spec.dk).astype(np.int64), n_bins - 1)
    prof, counts = _radial_profile(spec.power, rbin, n_bins, spec.fit_mask)
    mean = 0.5 * (defocus1_A + defocus2_A)
    lo, hi = _calc_phase_windows(np.array([mean]), n_bins, spec.dk, lam, cs_A)
    bg = _window_smooth(prof[None], counts[None], lo, hi)[0]
    # interpolate the background at each pixel's continuous equiphase radius
    kj = np.arange(n_bins) * spec.dk
    resid = spec.power - np.interp(ke, kj, bg)
    sq, _ = _radial_profile(resid**2, rbin, n_bins, spec.fit_mask)
    rms = np.sqrt(_window_smooth(sq[None], counts[None], lo, hi)[0])
    norm = resid / np.maximum(np.interp(ke, kj, rms), 1e-300)
    norm[~spec.fit_mask] = 0.0
    return norm, ke, bg, rms


def _select_pixels(spec: SpectrumData, norm: np.ndarray, kmin: float, kmax: float, mean_defocus_A: float,
                   lam: float, cs_A: float) -> _FitPixels:
    """Pixels in the fit range, equally weighted, data centred.

    The range is kmin..kmax, but starting no lower than where χ = π at the current mean
    defocus: below that the background windows (±π in phase) are cut off at k = 0 and lose
    their symmetry, which leaves a quadrature ripple (a ring shift) in the residual.  (A
    smooth taper of the weights at the ends was tried and made the bias slightly worse.)
    """
    a = math.pi * lam * mean_defocus_A
    b = 0.5 * math.pi * cs_A * lam**3
    k_pi = float(_calc_k_at_phase(math.pi, a, b))
    chi_hi = a * kmax**2 - b * kmax**4
    if math.isfinite(k_pi) and chi_hi - math.pi >= 2 * math.pi:     # keep at least two rings
        kmin = max(kmin, k_pi)
    sel = spec.fit_mask & (spec.k >= kmin) & (spec.k <= kmax)
    k2 = spec.k[sel] ** 2
    data = norm[sel].astype(np.float64)
    data = data - data.mean()
    return _FitPixels(k2=k2, k4=k2 * k2, c2=spec.cos2[sel].astype(np.float64), s2=spec.sin2[sel].astype(np.float64),
                      data=data, wts=np.ones_like(data))


def _to_ctffind(mean: float, ax: float, ay: float) -> tuple[float, float, float]:
    """(defocus1 ≥ defocus2, angle in (−90, 90]) from the mean and the astigmatism vector."""
    half = math.hypot(ax, ay)
    ang = 0.5 * math.degrees(math.atan2(ay, ax)) if half > 0 else 0.0
    if ang <= -90.0:
        ang += 180.0
    return float(mean + half), float(mean - half), float(ang)


def _fit_stage(pix: _FitPixels, start: np.ndarray, params: CtfSearchParams, lam: float, cs_A: float, w: float,
               kmax: float, grid_half_astig: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Optional coarse astigmatism grid, then L-BFGS-B on −(correlation − restraint penalty).

    start: (4,) (mean Å, a_x Å, a_y Å, phase rad).  Returns (best (4,), correlation).
    """
    pi_lam = math.pi * lam
    b = 0.5 * math.pi * cs_A * lam**3
    # one scaled unit ≈ one radian of phase at kmax
    unit_df = 1.0 / (pi_lam * kmax**2)
    scale = np.array([unit_df, unit_df, unit_df, 1.0])
    fit_phase = bool(params.find_phase_shift)

    restraint = -1.0 if params.astig_restraint_A is None else float(params.astig_restraint_A)
    args = (scale, pix.k2, pix.k4, pix.c2, pix.s2, pix.data, pix.wts, pi_lam, b, w, fit_phase, restraint)
    best = np.asarray(start, dtype=np.float64) / scale
    if grid_half_astig is not None:
        candidates = [best.copy()]
        for h in grid_half_astig:
            for t in np.deg2rad(np.arange(0.0, 180.0, 22.5)):
                c = best.copy()
                c[1] = h * math.cos(2 * t) / scale[1]
                c[2] = h * math.sin(2 * t) / scale[2]
                candidates.append(c)
        vals = [_objective(c, *args)[0] for c in candidates]
        best = candidates[int(np.argmin(vals))]
    q = _minimise_bfgs(best, *args)
    r, _ = _score_and_gradient(q, scale, pix.k2, pix.k4, pix.c2, pix.s2, pix.data, pix.wts, pi_lam, b, w, fit_phase)
    return q * scale, float(r)


def calc_cropped_spectrum(spec: SpectrumData, k_limit: float) -> SpectrumData:
    """The part of an rfft-layout spectrum with |ky|, kx ≤ k_limit (same dk, smaller arrays).

    The fit only needs frequencies up to 1/resmax and its background windows; cropping makes
    every per-pixel pass proportionally cheaper.
    """
    r = int(min(spec.box // 2, math.ceil(k_limit / spec.dk) + 1))
    if r >= spec.box // 2:
        return spec
    rows = np.r_[0:r + 1, spec.box - r:spec.box]
    cols = slice(0, r + 1)

    def crop(a):
        return a[rows, cols]

    return SpectrumData(power=crop(spec.power), k=crop(spec.k), cos2=crop(spec.cos2), sin2=crop(spec.sin2),
                        fit_mask=crop(spec.fit_mask), dk=spec.dk, box=spec.box)


def _calc_crop_limit(k_fit: float, defocus_A: float, lam: float, cs_A: float, dk: float) -> float:
    """Frequency up to which the background windows around k_fit reach (+SMOOTH_PASSES·π/2, + 8 bins)."""
    a = math.pi * lam * defocus_A
    b = 0.5 * math.pi * cs_A * lam**3
    k_edge = float(_calc_k_at_phase(a * k_fit**2 - b * k_fit**4 + SMOOTH_PASSES * math.pi / 2, a, b))
    return (k_edge if math.isfinite(k_edge) else 2 * k_fit) + 8 * dk


def calc_refinement(spec: SpectrumData, params: CtfSearchParams, start: SearchStart,
                    spec_fine: SpectrumData | None = None) -> Refined:
    """2D refinement of defocus 1, defocus 2, angle (and phase shift) from the 1D start.

    Stage 1 (to STAGE1_RESMAX_A or resmax if lower, on spec): coarse astigmatism grid + local
    fit with a rotational-average background.  Stage 2 (to resmax, on spec_fine when given):
    background re-estimated along the stage-1 equiphase ellipses, local fit; repeated once
    with the updated background.  Returns CTFFIND's form; cross_correlation is the final one.

    Why spec_fine (the spectrum of 2·box tiles, see calc_power_spectra): a tile-averaged
    spectrum is the true one blurred by a kernel as wide as one frequency bin, and where the
    signal envelope slopes that blur shifts the apparent rings (the ring at k pairs with image
    detail λ·Δf·k away: at 3.5 µm, 0.8 Å/px, 200 kV the mean defocus came out 16 Å low from
    512 tiles).  The shift scales with the bin width, so finer sampling removes most of it.
    """
    lam, cs_A, w = _optics(params)
    kmin = 1.0 / params.resmin_A
    kmax = 1.0 / params.resmax_A
    k1 = min(kmax, 1.0 / STAGE1_RESMAX_A) if 1.0 / STAGE1_RESMAX_A > kmin * 1.5 else kmax
    max_astig = params.astig_restraint_A if params.astig_restraint_A is not None else DEFAULT_ASTIG_SEARCH_A
    grid = np.array([0.125, 0.25, 0.5, 0.75, 1.0]) * max_astig / 2.0
    q = np.array([start.defocus_A, 0.0, 0.0, start.phase_shift_rad])
    coarse = calc_cropped_spectrum(spec, _calc_crop_limit(k1, params.dfmin_A, lam, cs_A, spec.dk))
    norm, _, _, _ = calc_normalised_spectrum(coarse, q[0], q[0], 0.0, lam, cs_A)
    q, r = _fit_stage(_select_pixels(coarse, norm, kmin, k1, q[0], lam, cs_A), q, params, lam, cs_A, w, k1, grid)
    fine_full = spec if spec_fine is None else spec_fine
    fine = calc_cropped_spectrum(fine_full, _calc_crop_limit(kmax, params.dfmin_A, lam, cs_A, fine_full.dk))
    for _ in range(2):
        d1, d2, ang = _to_ctffind(q[0], q[1], q[2])
        norm, _, _, _ = calc_normalised_spectrum(fine, d1, d2, ang, lam, cs_A)
        pix = _select_pixels(fine, norm, kmin, kmax, q[0], lam, cs_A)
        q, r = _fit_stage(pix, q, params, lam, cs_A, w, kmax, None)
    d1, d2, ang = _to_ctffind(q[0], q[1], q[2])
    # CTF² has period π in the phase shift: report it in [0, π)
    phase = float(q[3]) % math.pi if params.find_phase_shift else 0.0
    return Refined(defocus1_A=d1, defocus2_A=d2, astig_angle_deg=ang, phase_shift_rad=phase, cross_correlation=r,
                   n_fit_pixels=int(pix.data.size))


# ----------------------------------------------------------------------------- diagnostics

def _window_correlation(data, model, lo, hi, valid):
    """Pearson correlation of data and model over each index window [lo, hi) of valid bins: (n,)."""
    v = valid.astype(np.float64)

    def csum(x):
        return np.concatenate([[0.0], np.cumsum(x * v)])

    n = csum(np.ones_like(data))
    sx, sy = csum(data), csum(model)
    sxx, syy, sxy = csum(data * data), csum(model * model), csum(data * model)

    def win(c):
        return c[hi] - c[lo]

    cnt = win(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = win(sxy) - win(sx) * win(sy) / cnt
        vx = win(sxx) - win(sx) ** 2 / cnt
        vy = win(syy) - win(sy) ** 2 / cnt
        r = cov / np.sqrt(vx * vy)
    return np.where((cnt >= 3) & np.isfinite(r), r, 0.0), cnt


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1D arrays (0 when undefined); no BLAS (see _minimise_bfgs)."""
    am = a - a.mean()
    bm = b - b.mean()
    den = math.sqrt(float(np.sum(am * am)) * float(np.sum(bm * bm)))
    return float(np.sum(am * bm)) / den if den > 0 else 0.0


def _calc_ctf_peaks_k(mean_defocus_A: float, phase_rad: float, lam: float, cs_A: float, w: float,
                      n: int) -> np.ndarray:
    """Frequencies (1/Å) of the first n maxima of CTF² (χ + φ + w = π/2 + mπ) at the mean defocus."""
    a = np.pi * lam * mean_defocus_A
    b = 0.5 * np.pi * cs_A * lam**3
    offset = phase_rad + w
    m0 = math.ceil((offset - np.pi / 2) / np.pi)
    targets = np.pi / 2 + np.pi * (m0 + np.arange(n)) - offset
    targets = targets[targets > 0][:n]
    return _calc_k_at_phase(targets, a, b)


def calc_appion_confidences(k: np.ndarray, data: np.ndarray, ctf2: np.ndarray, valid: np.ndarray,
                            peaks_k: np.ndarray):
    """Appion's quality figures from a 1D (astigmatism-corrected) profile and the fitted CTF².

    k: (n,) 1/Å; data: (n,) background-subtracted, envelope-normalised profile; ctf2: (n,)
    fitted CTF²; valid: (n,) bool; peaks_k: CTF² maxima (1/Å), at least two.
    Definitions (as in classic Appion's ctfdisplay/ctfres, reimplemented):
    - confidence_30_10: Pearson correlation of profile and CTF² over 1/30–1/10 Å⁻¹.
    - confidence_5_peak: the same from the first CTF² maximum to the sixth.
    - resolution_80_percent / resolution_50_percent: a correlation profile is computed in
      windows of width 1.8 × (k²(2nd max) − k²(1st max)) in k², stepped by a quarter window,
      starting at the first maximum; the resolution is the spacing (Å) where it first falls
      below 0.8 / 0.5 (linear interpolation).  100 Å when it never reaches the limit in its
      first points, the highest frequency analysed when it never falls below.
    Returns (conf_30_10, conf_5_peak, res80_A, res50_A).
    """
    def pearson(lo_k, hi_k):
        s = valid & (k >= lo_k) & (k < hi_k)
        if s.sum() < 3:
            return 0.0
        return _pearson(data[s], ctf2[s])

    conf3010 = pearson(1 / 30.0, 1 / 10.0)
    conf5 = pearson(peaks_k[0], peaks_k[min(5, len(peaks_k) - 1)]) if len(peaks_k) >= 2 else 0.0
    kk = k[valid]
    dd = data[valid]
    cc = ctf2[valid]
    if len(peaks_k) < 2 or kk.size < 8:
        return conf3010, conf5, 100.0, 100.0
    k2 = kk**2
    width = 1.8 * (peaks_k[1] ** 2 - peaks_k[0] ** 2)
    centres = []
    confs = []
    x = peaks_k[0] ** 2 + width / 2
    while x < k2[-1] - width / 2:
        s = (k2 >= x - width / 2) & (k2 < x + width / 2)
        if s.sum() >= 4:
            centres.append(math.sqrt(x))
            confs.append(_pearson(dd[s], cc[s]))
        x += width / 4
    centres = np.array(centres)
    confs = np.array(confs)

    def res_at(limit):
        if confs.size < 3 or confs[:3].max() < limit:
            return 100.0
        for i in range(1, confs.size):
            if confs[i] < limit <= confs[i - 1]:
                f = (confs[i - 1] - limit) / (confs[i - 1] - confs[i])
                return float(1.0 / (centres[i - 1] + f * (centres[i] - centres[i - 1])))
            if confs[i] < limit:
                return float(1.0 / centres[i - 1]) if i > 0 else 100.0
        return float(1.0 / kk[-1])

    return conf3010, conf5, res_at(0.8), res_at(0.5)


def calc_fit_diagnostics(spec: SpectrumData, params: CtfSearchParams, refined: Refined) -> CtfFit:
    """1D outputs, fit resolution and Appion's confidences for a refined fit.

    The per-frequency score is the correlation of the equiphase average with the fitted CTF²
    over a window of ±π in χ (two CTF² periods; at least ±SCORE_MIN_HALF_BINS bins) around
    each frequency; its noise level is 2/√(number of bins in the window).  The fit resolution
    (CTFFIND's "spacing up to which CTF rings were fit successfully") is the spacing at the
    first frequency where the score falls below that noise level, looking from the CTF²
    maximum that follows the first zero above 1/resmin; if it never does, the Nyquist
    frequency; if it does before the next CTF² maximum (not even one ring fitted), or if the
    2D correlation is no better than a fit to pure noise reaches (NOISE_CC_FACTOR/√N), resmin.
    """
    lam, cs_A, w = _optics(params)
    d1, d2, ang, phi = refined.defocus1_A, refined.defocus2_A, refined.astig_angle_deg, refined.phase_shift_rad
    mean = 0.5 * (d1 + d2)
    n_bins = int(spec.box / 2 * np.sqrt(2)) + 1          # CTFFIND's count: 363 for a 512 box
    kj = np.arange(n_bins) * spec.dk

    norm, ke, _, _ = calc_normalised_spectrum(spec, d1, d2, ang, lam, cs_A)
    rbin = np.minimum(np.rint(ke / spec.dk).astype(np.int64), n_bins - 1)
    rotavg, counts = _radial_profile(norm, rbin, n_bins, spec.fit_mask)
    # Plain rotational average with the background of a non-astigmatic fit at the mean defocus.
    norm0, _, _, _ = calc_normalised_spectrum(spec, mean, mean, 0.0, lam, cs_A)
    rbin0 = np.minimum(np.rint(spec.k / spec.dk).astype(np.int64), n_bins - 1)
    rotavg0, _ = _radial_profile(norm0, rbin0, n_bins, spec.fit_mask)

    ctf_fit = calc_ctf(kj, 0.0, mean, mean, 0.0, params.voltage_kV * 1e3, params.cs_mm,
                       params.amplitude_contrast, phi) ** 2
    valid = (counts > 0) & (kj <= 0.5 / params.pixel_size_A)
    a = np.pi * lam * mean
    b = 0.5 * np.pi * cs_A * lam**3
    chi = a * kj**2 - b * kj**4
    k_lo = _calc_k_at_phase(chi - np.pi, a, b)
    k_hi = _calc_k_at_phase(chi + np.pi, a, b)
    jj = np.arange(n_bins)
    lo = np.clip(np.minimum(np.ceil(np.minimum(k_lo / spec.dk, n_bins)), jj - SCORE_MIN_HALF_BINS), 0, n_bins)
    hi = np.clip(np.maximum(np.floor(np.minimum(k_hi / spec.dk, n_bins - 1)) + 1, jj + SCORE_MIN_HALF_BINS + 1),
                 0, n_bins)
    score, cnt = _window_correlation(rotavg, ctf_fit, lo.astype(np.int64), hi.astype(np.int64), valid)
    noise = 2.0 / np.sqrt(np.maximum(cnt, 1.0))
    noise = np.minimum(noise, 1.0)

    peaks = _calc_ctf_peaks_k(mean, phi, lam, cs_A, w, 12)
    peaks = peaks[np.isfinite(peaks)]
    zeros = _calc_ctf_peaks_k(mean, phi - np.pi / 2, lam, cs_A, w, 12)      # CTF² minima
    zeros = zeros[np.isfinite(zeros) & (zeros > 1.0 / params.resmin_A)]
    # the lobe below the first zero is where background and signal cannot be told apart
    k_start = float(zeros[0]) if zeros.size else 1.0 / params.resmin_A
    after = peaks[peaks > k_start]
    k_start = float(after[0]) if after.size else k_start
    j0 = int(np.searchsorted(kj, k_start))
    k_last = kj[valid][-1]
    fit_res = 1.0 / k_last
    below = np.nonzero((score[j0:] < noise[j0:]) & valid[j0:])[0]
    if below.size:
        fit_res = 1.0 / kj[max(j0 + below[0], 1)]
        # failing within the first full ring after the start means no ring was fitted at all
        later = peaks[peaks > k_start * (1 + 1e-9)]
        if later.size and kj[j0 + below[0]] < later[0]:
            fit_res = max(fit_res, params.resmin_A)

    # A fit of pure noise still finds "rings": the best of many candidate patterns correlates
    # ~√(2 ln M / N) with N independent pixels, and averaging along the fitted ellipses then
    # makes those rings look real bin by bin.  Below NOISE_CC_FACTOR/√N nothing was fitted.
    if refined.n_fit_pixels and refined.cross_correlation < NOISE_CC_FACTOR / math.sqrt(refined.n_fit_pixels):
        fit_res = max(fit_res, params.resmin_A)

    conf = calc_appion_confidences(kj, rotavg, ctf_fit, valid & (kj > 0), peaks)
    result = CtfResult(defocus1_A=float(d1), defocus2_A=float(d2), astig_angle_deg=float(ang),
                       phase_shift_rad=float(phi), cross_correlation=float(refined.cross_correlation),
                       fit_resolution_A=float(fit_res), confidence_30_10=float(conf[0]),
                       confidence_5_peak=float(conf[1]), resolution_80_percent_A=float(conf[2]),
                       resolution_50_percent_A=float(conf[3]))

    spectrum_2d, model_2d = _calc_display(spec, norm, d1, d2, ang, phi, params)
    return CtfFit(result=result, frequencies_per_A=kj, rotavg_no_astig=rotavg0, rotavg=rotavg, ctf_fit=ctf_fit,
                  ring_score=score, ring_score_noise=noise, spectrum_2d=spectrum_2d, model_2d=model_2d,
                  spectrum_pixel_size_A=params.pixel_size_A)


def _calc_display(spec: SpectrumData, norm: np.ndarray, d1: float, d2: float, ang: float, phi: float,
                  params: CtfSearchParams):
    """Full centred (box, box) images of the normalised spectrum and the fitted CTF²."""
    box = spec.box
    full = np.empty((box, box), dtype=np.float32)
    nh = box // 2 + 1
    full[:, :nh] = norm
    # Hermitian symmetry: P(−ky, −kx) = P(ky, kx)
    iy = (-np.arange(box)) % box
    full[:, nh:] = norm[iy][:, box - np.arange(nh, box)]
    spectrum_2d = np.fft.fftshift(full)
    k, theta = calc_frequency_grid((box, box), params.pixel_size_A)
    model = calc_ctf(k, theta, d1, d2, ang, params.voltage_kV * 1e3, params.cs_mm, params.amplitude_contrast, phi) ** 2
    return spectrum_2d, np.fft.fftshift(model).astype(np.float32)


# ----------------------------------------------------------------------------- entry point

def calc_ctf_fit(image: np.ndarray, params: CtfSearchParams, workers: int = 1) -> CtfFit:
    """Estimate the CTF of a micrograph (y, x) or of frame-group averages (n, y, x) float32.

    Raises ValueError for unusable input (see validate_inputs).
    """
    validate_inputs(image, params)
    power, fine_power = calc_power_spectra(image, params.box, params.tile_overlap, workers)
    return calc_fit_from_spectra(power, fine_power, params)


def calc_fit_from_spectra(power: np.ndarray, fine_power: np.ndarray | None, params: CtfSearchParams) -> CtfFit:
    """The estimate from calc_power_spectra's output (search, refinement, diagnostics)."""
    spec = calc_spectrum_data(power, params.pixel_size_A)
    start = calc_defocus_search(spec, params)
    spec_fine = None if fine_power is None else calc_spectrum_data(fine_power, params.pixel_size_A)
    refined = calc_refinement(spec, params, start, spec_fine)
    return calc_fit_diagnostics(spec, params, refined)
