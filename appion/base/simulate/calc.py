"""Simulated micrographs and movies with known truth (pure: no files).

Tests, benchmarks and the demo use these so that every engine can be checked against
known drift and CTF.  The image model is a weak-phase specimen seen through the CTF of
appion.base.physics (CTFFIND conventions), plus a low-resolution amplitude texture
(ice/carbon-like, what frame alignment mostly locks on to), with Poisson shot noise at
the requested dose.  Displacements follow "frame i shows specimen(r − d_i)" with d_0 = 0.

Optional, off by default (so the defaults give the same images and truth as before they existed):
a tilted specimen (defocus varying linearly across the image, see calc_defocus_map_A), a
vitreous-ice water ring whose power grows with the ice thickness, and crystalline-ice rings.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.fft
from scipy import ndimage

from appion.base.physics import calc_ctf, calc_frequency_grid, calc_unoriented_gain

# Relative standard deviations of the two contrast terms (fraction of the mean intensity).
CTF_TERM_STD = 0.08
TEXTURE_STD = 0.06
LOCAL_MODEL = "quadratic-v1"
# Vitreous ice: the diffuse water ring (centre 3.7 Å, Gaussian σ in k) whose variance (fraction of the mean
# intensity, squared) grows linearly with the ice thickness.  Chosen so that 20-100 nm of ice raise the
# 3.9-3.5 Å band over the shot noise of a 40 e/Å² exposure at 1 Å/px by roughly 10-60 % (relative ice
# thickness 1.1-1.6, the range cryoSPARC Live reports on real grids).
ICE_RING_CENTRE_A = 3.7
ICE_RING_SIGMA_PER_A = 0.012
ICE_RING_VAR_PER_NM = 1.2e-6
# Crystalline (hexagonal/cubic) ice: sharp rings at these spacings (Å), Gaussian σ in k.
CRYSTAL_ICE_LINES_A = (3.90, 3.67, 3.44)
CRYSTAL_ICE_SIGMA_PER_A = 0.0008
# Tilted specimens: the CTF is computed at defocus levels this far apart (Å) at most and blended linearly.
TILT_LEVEL_STEP_A = 20.0


@dataclass(frozen=True)
class OpticsParams:
    """Specimen, optics and CTF of a simulated exposure (Å, kV, mm, degrees, radians)."""

    shape: tuple[int, int] = (1024, 1024)
    pixel_size_A: float = 1.0
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus1_A: float = 15000.0
    defocus2_A: float = 14600.0
    astig_angle_deg: float = 30.0
    phase_shift_rad: float = 0.0
    bfactor_A2: float = 60.0
    seed: int = 0
    tilt_deg: float = 0.0  # specimen tilt: defocus1/2 hold at the centre, see calc_defocus_map_A
    tilt_axis_deg: float = 0.0  # tilt axis, degrees counter-clockwise from x
    ice_thickness_nm: float = 0.0  # vitreous ice: water-ring power ∝ thickness (0: no ring)
    crystalline_ice: float = 0.0  # relative std of the crystalline-ice rings (0: none)


@dataclass(frozen=True)
class MicrographParams(OpticsParams):
    """A single integrated exposure."""

    dose_e_per_A2: float = 40.0


@dataclass(frozen=True)
class MovieParams(OpticsParams):
    """A dose-fractionated movie; total dose = n_frames × dose_per_frame_e_per_A2.

    drift_total_px: length of the global drift path; local_deformation_px: largest extra
    displacement of the smooth local field at the last frame (0 = rigid drift only).
    gain_sigma: relative per-pixel sensitivity spread (0 = ideal detector, no gain file);
    gain_rotate/gain_flip: how the on-disk gain must be oriented to match the frames.
    bad_cols/bad_rows: hot lines written into the raw frames (a defect map must fix them).
    """

    n_frames: int = 32
    dose_per_frame_e_per_A2: float = 1.2
    drift_total_px: float = 15.0
    local_deformation_px: float = 0.0
    gain_sigma: float = 0.0
    gain_rotate: int = 0
    gain_flip: int = 0
    bad_cols: tuple[int, ...] = field(default_factory=tuple)
    bad_rows: tuple[int, ...] = field(default_factory=tuple)


def calc_clean_spectrum(params: OpticsParams, rng: np.random.Generator) -> np.ndarray:
    """rfft2 of the noiseless relative image minus its mean (mean intensity is 1).

    Returns (ny, nx//2+1) complex64.
    """
    ny, nx = params.shape
    k, theta = calc_frequency_grid((ny, nx), params.pixel_size_A, rfft=True)
    white = scipy.fft.rfft2(rng.standard_normal((ny, nx)).astype(np.float32), workers=-1)
    specimen_amp = 1.0 / np.sqrt(1.0 + (k / 0.08) ** 2)
    envelope = np.exp(-params.bfactor_A2 * k * k / 4.0)
    ctf = calc_ctf(k, theta, params.defocus1_A, params.defocus2_A, params.astig_angle_deg,
                   params.voltage_kV * 1e3, params.cs_mm, params.amplitude_contrast, params.phase_shift_rad)
    ctf_term = ctf * envelope * specimen_amp
    texture = np.exp(-((k / 0.012) ** 2))
    ctf_term[0, 0] = 0.0
    texture[0, 0] = 0.0
    # White noise has variance ny·nx per unnormalised Fourier coefficient, so a filter F gives a
    # real-space variance of mean(|F|²) over the full spectrum: scale each term to its target std.
    ctf_scale = CTF_TERM_STD / np.sqrt(_half_spectrum_power(ctf_term, nx))
    tex_scale = TEXTURE_STD / np.sqrt(_half_spectrum_power(texture, nx))
    if not (params.tilt_deg or params.ice_thickness_nm or params.crystalline_ice):
        return (white * (ctf_scale * ctf_term + tex_scale * texture)).astype(np.complex64)
    # Everything that passes the objective lens, before its CTF: the specimen and the ice (own noise stream,
    # so the specimen's noise is the same as without ice).
    lens = white * (ctf_scale * envelope * specimen_amp)
    lens[0, 0] = 0.0
    if params.ice_thickness_nm or params.crystalline_ice:
        ice_white = scipy.fft.rfft2(np.random.default_rng((params.seed, 1)).standard_normal((ny, nx))
                                    .astype(np.float32), workers=-1)
        lens = lens + ice_white * calc_ice_filter(k, ctf * envelope, params, nx)
    texture_spec = white * (tex_scale * texture)
    if not params.tilt_deg:
        return (lens * ctf + texture_spec).astype(np.complex64)
    tilted = calc_tilted_image(lens, k, theta, params)
    return (scipy.fft.rfft2(tilted, workers=-1) + texture_spec).astype(np.complex64)


def calc_ice_filter(k: np.ndarray, lens_ctf: np.ndarray, params: OpticsParams, nx: int) -> np.ndarray:
    """Amplitude filter (rfft layout, like k) of the ice terms for unit-variance white noise.

    The water ring (thickness-proportional variance, see ICE_RING_VAR_PER_NM) and the crystalline-ice
    rings (std params.crystalline_ice) are scaled so their variance after the lens (lens_ctf: CTF × envelope)
    is what is asked for.
    """
    out = np.zeros(k.shape, dtype=np.float64)
    if params.ice_thickness_nm:
        ring = np.exp(-0.5 * ((k - 1.0 / ICE_RING_CENTRE_A) / ICE_RING_SIGMA_PER_A) ** 2)
        out += ring * np.sqrt(ICE_RING_VAR_PER_NM * params.ice_thickness_nm
                              / _half_spectrum_power(ring * lens_ctf, nx))
    if params.crystalline_ice:
        rings = sum(np.exp(-0.5 * ((k - 1.0 / d) / CRYSTAL_ICE_SIGMA_PER_A) ** 2) for d in CRYSTAL_ICE_LINES_A)
        out += rings * params.crystalline_ice / np.sqrt(_half_spectrum_power(rings * lens_ctf, nx))
    return out


def calc_defocus_map_A(shape: tuple[int, int], pixel_size_A: float, tilt_deg: float, tilt_axis_deg: float):
    """Defocus change (Å, positive = more underfocus) across a tilted specimen: (ny, nx) float64.

    Δf(x, y) = tan(tilt) × s, s the signed distance (Å) of pixel (x, y) from the tilt axis through the image
    centre, positive towards (−sin a, cos a) (a = tilt_axis_deg, counter-clockwise from x = numpy axis 1).
    So defocus grows along the gradient direction a + 90°.
    """
    ny, nx = shape
    a = np.deg2rad(tilt_axis_deg)
    y = (np.arange(ny) - (ny - 1) / 2.0)[:, None] * pixel_size_A
    x = (np.arange(nx) - (nx - 1) / 2.0)[None, :] * pixel_size_A
    return np.tan(np.deg2rad(tilt_deg)) * (-np.sin(a) * x + np.cos(a) * y)


def calc_tilted_image(lens: np.ndarray, k: np.ndarray, theta: np.ndarray, params: OpticsParams) -> np.ndarray:
    """Real-space image (ny, nx) float32 of `lens` (rfft layout) seen through a CTF whose defocus varies
    across the image as calc_defocus_map_A says.

    The image is linear in the CTF, so it is blended per pixel (linear weights) from images computed at
    defocus levels at most TILT_LEVEL_STEP_A apart (neighbouring levels differ by 0.05 rad in phase at 5 Å).
    """
    ny, nx = params.shape
    offset = calc_defocus_map_A(params.shape, params.pixel_size_A, params.tilt_deg, params.tilt_axis_deg)
    lo, hi = float(offset.min()), float(offset.max())
    n = max(2, int(np.ceil((hi - lo) / TILT_LEVEL_STEP_A)) + 1)
    levels = np.linspace(lo, hi, n)
    pos = (offset - lo) / max(levels[1] - levels[0], 1e-12)
    out = np.zeros((ny, nx), dtype=np.float32)
    for j, delta in enumerate(levels):
        weight = np.clip(1.0 - np.abs(pos - j), 0.0, None)
        rows = np.flatnonzero(weight.any(axis=1))
        if rows.size == 0:
            continue
        ctf = calc_ctf(k, theta, params.defocus1_A + delta, params.defocus2_A + delta, params.astig_angle_deg,
                       params.voltage_kV * 1e3, params.cs_mm, params.amplitude_contrast, params.phase_shift_rad)
        level = scipy.fft.irfft2((lens * ctf).astype(np.complex64), s=params.shape, workers=-1)
        out[rows] += (weight[rows] * level[rows]).astype(np.float32)
    return out


def _half_spectrum_power(filt: np.ndarray, nx: int) -> float:
    """Mean over the full spectrum of |filt|², computed from an rfft-layout half spectrum."""
    p = filt.astype(np.float64) ** 2
    w = np.full(p.shape[1], 2.0)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    return float((p * w).sum() / (p.shape[0] * nx))


def calc_micrograph(params: MicrographParams, rng: np.random.Generator | None = None):
    """A Poisson-noisy micrograph and its truth.

    Returns (image (y, x) float32 in electrons per pixel, truth dict).
    """
    rng = rng if rng is not None else np.random.default_rng(params.seed)
    spec = calc_clean_spectrum(params, rng)
    rel = 1.0 + scipy.fft.irfft2(spec, s=params.shape, workers=-1)
    expected = np.clip(rel, 0.0, None) * params.dose_e_per_A2 * params.pixel_size_A**2
    image = rng.poisson(expected).astype(np.float32)
    truth = {"kind": "micrograph", **_jsonable(asdict(params))}
    return image, truth


def calc_drift_px(n_frames: int, drift_total_px: float, rng: np.random.Generator) -> np.ndarray:
    """A beam-induced-like trajectory: fast early motion that slows, gently curved, small jitter.

    Returns (n_frames, 2) float64 [dx, dy] with d_0 = (0, 0).
    """
    t = np.arange(n_frames) / max(n_frames - 1, 1)
    tau = 0.3
    base = (1.0 - np.exp(-t / tau)) / (1.0 - np.exp(-1.0 / tau))
    phi = rng.uniform(0, 2 * np.pi)
    along = np.stack([np.cos(phi), np.sin(phi)])
    across = np.stack([-np.sin(phi), np.cos(phi)])
    bend = 0.15 * np.sin(np.pi * t)
    jitter = np.cumsum(rng.normal(0.0, 0.03, size=(n_frames, 2)), axis=0)
    d = drift_total_px * (base[:, None] * along[None, :] + bend[:, None] * across[None, :]) + jitter
    return d - d[0]


def calc_local_field(shape: tuple[int, int], local_deformation_px: float, x_px, y_px):
    """Smooth quadratic displacement field (dx, dy) at positions, largest magnitude ≈ local_deformation_px."""
    ny, nx = shape
    xs = (np.asarray(x_px, dtype=np.float64) - (nx - 1) / 2.0) / nx
    ys = (np.asarray(y_px, dtype=np.float64) - (ny - 1) / 2.0) / ny
    # Over the field (|xs|, |ys| ≤ 0.5) the raw magnitude peaks at 0.75 (corners where xs = ys).
    ux = 2.0 * xs * ys + xs * xs
    uy = ys * ys - xs * ys
    scale = local_deformation_px / 0.75
    return scale * ux, scale * uy


def calc_time_profile(n_frames: int) -> np.ndarray:
    """How the local field grows over the exposure (0 at the first frame, 1 at the last)."""
    t = np.arange(n_frames) / max(n_frames - 1, 1)
    return (1.0 - np.exp(-t / 0.3)) / (1.0 - np.exp(-1.0 / 0.3))


def calc_local_shifts_px(truth: dict, x_px: float, y_px: float) -> np.ndarray:
    """True displacement (global + local) of the specimen at (x_px, y_px) in every frame: (n_frames, 2)."""
    shifts = np.asarray(truth["shifts_px"], dtype=np.float64)
    amount = float(truth.get("local_deformation_px", 0.0))
    if amount == 0.0:
        return shifts.copy()
    ux, uy = calc_local_field(tuple(truth["shape"]), amount, x_px, y_px)
    prof = calc_time_profile(len(shifts))
    return shifts + prof[:, None] * np.array([ux, uy])[None, :]


def calc_sensitivity(shape: tuple[int, int], gain_sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel detector sensitivity (mean ≈ 1) with pixel noise and column banding."""
    ny, nx = shape
    pixel = rng.normal(0.0, gain_sigma, size=shape)
    columns = rng.normal(0.0, gain_sigma * 0.5, size=(1, nx))
    return np.clip(1.0 + pixel + columns, 0.3, None).astype(np.float32)


def calc_movie(params: MovieParams, rng: np.random.Generator | None = None):
    """Raw counting-mode frames and their truth.

    Returns (frames (n, y, x) uint8 — uint16 when counts exceed 255 —, truth dict).
    truth["gain"] is the oriented gain (raw × gain = flat-field corrected) or None;
    truth["gain_on_disk"] the same gain as it should be written to a file (see
    appion.base.physics.calc_unoriented_gain).  Other entries are JSON-able.
    """
    rng = rng if rng is not None else np.random.default_rng(params.seed)
    ny, nx = params.shape
    spec = calc_clean_spectrum(params, rng)
    shifts = calc_drift_px(params.n_frames, params.drift_total_px, rng)
    counts_per_px = params.dose_per_frame_e_per_A2 * params.pixel_size_A**2
    sensitivity = calc_sensitivity(params.shape, params.gain_sigma, rng) if params.gain_sigma > 0 else None
    fy = np.fft.fftfreq(ny)[:, None].astype(np.float32)
    fx = np.fft.rfftfreq(nx)[None, :].astype(np.float32)
    frames = np.empty((params.n_frames, ny, nx), dtype=np.uint16)
    if params.local_deformation_px:
        base = 1.0 + scipy.fft.irfft2(spec, s=params.shape, workers=-1)
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
        ux, uy = calc_local_field(params.shape, params.local_deformation_px, xx, yy)
        prof = calc_time_profile(params.n_frames)
    for i, (dx, dy) in enumerate(shifts):
        if params.local_deformation_px:
            # frame i shows specimen(r − d_i(r)): sample the undrifted image there (periodic like the FFT shift).
            coords = [yy - dy - prof[i] * uy, xx - dx - prof[i] * ux]
            rel = ndimage.map_coordinates(base, coords, order=3, mode="grid-wrap")
        else:
            ramp = np.exp(-2j * np.pi * (fx * dx + fy * dy)).astype(np.complex64)
            rel = 1.0 + scipy.fft.irfft2(spec * ramp, s=params.shape, workers=-1)
        expected = np.clip(rel, 0.0, None) * counts_per_px
        if sensitivity is not None:
            expected = expected * sensitivity
        frame = rng.poisson(expected)
        hot = int(max(8, 6 * counts_per_px))
        if params.bad_cols:
            frame[:, list(params.bad_cols)] = hot
        if params.bad_rows:
            frame[list(params.bad_rows), :] = hot
        frames[i] = frame
    if frames.max() <= 255:
        frames = frames.astype(np.uint8)
    gain = None if sensitivity is None else (1.0 / sensitivity).astype(np.float32)
    truth = {"kind": "movie", **_jsonable(asdict(params)),
             "dose_e_per_A2": params.n_frames * params.dose_per_frame_e_per_A2,
             "shifts_px": shifts.tolist(), "local_model": LOCAL_MODEL if params.local_deformation_px else None,
             "gain": gain,
             "gain_on_disk": None if gain is None else calc_unoriented_gain(gain, params.gain_rotate, params.gain_flip)}
    return frames, truth


def calc_session_defoci_A(n: int, rng: np.random.Generator, low_A: float = 8000.0, high_A: float = 30000.0):
    """Per-exposure (defocus1, defocus2, angle) like a defocus-ramped session."""
    mean = rng.uniform(low_A, high_A, size=n)
    astig = rng.uniform(0.0, 800.0, size=n)
    angle = rng.uniform(-90.0, 90.0, size=n)
    return [(float(m + a / 2), float(m - a / 2), float(t)) for m, a, t in zip(mean, astig, angle)]


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def calc_flat_movie(params: MovieParams, kind: str, rng: np.random.Generator | None = None):
    """A movie without a specimen, and its truth: kind 'blank' (every count 0: a detector or transfer that
    delivered nothing) or 'noise' (shot noise only, at the dose: no specimen, so no Thon rings).

    Returns (frames (n, y, x) uint8, truth dict with "kind": "movie" and "content": kind; shifts all 0).
    """
    if kind not in ("blank", "noise"):
        raise ValueError(f"flat movie kind must be 'blank' or 'noise', not {kind!r}")
    rng = rng if rng is not None else np.random.default_rng(params.seed)
    shape = (params.n_frames, *params.shape)
    if kind == "blank":
        frames = np.zeros(shape, dtype=np.uint8)
    else:
        frames = rng.poisson(params.dose_per_frame_e_per_A2 * params.pixel_size_A**2, size=shape)
        frames = frames.astype(np.uint8 if frames.max() <= 255 else np.uint16)
    truth = {"kind": "movie", "content": kind, **_jsonable(asdict(params)),
             "dose_e_per_A2": params.n_frames * params.dose_per_frame_e_per_A2,
             "shifts_px": [[0.0, 0.0]] * params.n_frames, "local_model": None, "gain": None, "gain_on_disk": None}
    return frames, truth
