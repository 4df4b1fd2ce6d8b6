"""Simulated micrographs and movies with known truth (pure: no files).

Tests, benchmarks and the demo use these so that every engine can be checked against
known drift and CTF.  The image model is a weak-phase specimen seen through the CTF of
appion.base.physics (CTFFIND conventions), plus a low-resolution amplitude texture
(ice/carbon-like, what frame alignment mostly locks on to), with Poisson shot noise at
the requested dose.  Displacements follow "frame i shows specimen(r − d_i)" with d_0 = 0.
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
    return (white * (ctf_scale * ctf_term + tex_scale * texture)).astype(np.complex64)


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
