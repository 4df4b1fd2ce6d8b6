"""Constants, parameter and result types of appion's CTF estimator, and input validation.

Units: Å, kV, mm, radians (see the package docstring for the conventions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
