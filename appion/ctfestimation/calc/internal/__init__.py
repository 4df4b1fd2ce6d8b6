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

Submodules, in pipeline order: common (constants, parameter/result types, validate_inputs),
spectrum (1), phase (shared phase helpers), search (3), refine (4), diagnostics (5); this
package re-exports their public names and runs the whole pipeline (calc_ctf_fit).
"""
from __future__ import annotations

import numpy as np

from appion.ctfestimation.calc.internal.common import (
    ASTIG_PENALTY, DEFAULT_ASTIG_SEARCH_A, MAX_FINE_TILE, NOISE_CC_FACTOR, SCORE_MIN_HALF_BINS, SMOOTH_PASSES,
    STAGE1_RESMAX_A, TILE_TAPER, CtfFit, CtfSearchParams, Refined, SearchStart, SpectrumData, validate_inputs)
from appion.ctfestimation.calc.internal.diagnostics import calc_appion_confidences, calc_fit_diagnostics
from appion.ctfestimation.calc.internal.phase import _optics, calc_equiphase_radius  # noqa: F401 (_optics: tests)
from appion.ctfestimation.calc.internal.refine import calc_cropped_spectrum, calc_normalised_spectrum, calc_refinement
from appion.ctfestimation.calc.internal.search import calc_defocus_search
from appion.ctfestimation.calc.internal.spectrum import (calc_binned_spectrum, calc_power_spectra, calc_power_spectrum,
                                                         calc_spectrum_data, calc_tile_origins)

__all__ = [
    "ASTIG_PENALTY", "DEFAULT_ASTIG_SEARCH_A", "MAX_FINE_TILE", "NOISE_CC_FACTOR", "SCORE_MIN_HALF_BINS",
    "SMOOTH_PASSES", "STAGE1_RESMAX_A", "TILE_TAPER",
    "CtfSearchParams", "SpectrumData", "SearchStart", "Refined", "CtfFit", "validate_inputs",
    "calc_tile_origins", "calc_power_spectrum", "calc_binned_spectrum", "calc_power_spectra", "calc_spectrum_data",
    "calc_equiphase_radius", "calc_defocus_search",
    "calc_normalised_spectrum", "calc_cropped_spectrum", "calc_refinement",
    "calc_appion_confidences", "calc_fit_diagnostics",
    "calc_ctf_fit", "calc_fit_from_spectra",
]


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
