"""Appion's own frame-alignment engine: pure numerics, no I/O.

Conventions (shared with appion.base.simulate.calc): frame i shows specimen(r − d_i); a
trajectory is d_i = (dx, dy) in pixels (x = numpy axis 1, y = axis 0), relative to the
first frame used.  The aligned sum is out(r) = Σ frame_i(r + d_i): the first frame's
position.  RELION's STAR shifts are −d (see appion.motioncorrection.store).

Why it is fast: alignment runs on box-binned copies of the frames, binned only as far as the
local B-factor allows (about 2.5 Å pixels; calc_refinement_binning), transformed once; the wide
peak search runs on a Fourier crop of them to ~800 px with CC maps computed only over the
frequencies its filter keeps (~500 px), and the sub-pixel refinement needs no CC map at all (Newton steps
from sums over the spectra, see refine); shifts are applied once, at full size, as Fourier phase
ramps while the frames are summed (and exposure weighted) in Fourier space.
For global alignment of integer TIFF movies the command keeps the frames as stored (8/16-bit,
1/4 or 1/2 of a float32 copy) and applies the gain inside the binning and the FFT padding
(calc_binned_raw_frame, calc_add_raw_frames: the same float32 arithmetic as the corrected
frames, so the results are identical); one frame per thread is transformed once the shifts are
known.  For other global cases the full-size FFT of each frame does not depend on the shifts, so
the command computes it while the next frames are decoded and keeps the spectra instead of the
frames (the one full-size copy of the movie).

Methods
- Global: iterative cross-correlation of each frame against the sum of all other
  (already shifted) frames, filtered by exp(−B k²/2) (= exp(−B k²/4) on each image, B in
  Å²).  Two stages: a search with the global B-factor on the frames Fourier-cropped to ~512 px (peak
  searched near the origin, sub-pixel position by a 3-point Gaussian fit per axis, parabola as
  fallback) until the RMS update < 0.25 px; then a refinement with the local B-factor on the
  finer frames: Newton steps to each frame's CC maximum from the CC's gradient and Hessian at
  the current estimate (sums over the cross-spectrum) until the RMS update < tolerance (0.02
  px).  Every iteration re-shifts the frames exactly in Fourier space, so the next one measures
  the residual.  Trajectory relative to the first frame used.
- Local: after global alignment the aligned frames (Fourier-cropped to ~800 px) are cut into cols × rows
  patches (cosine-tapered edges) and each patch stack is aligned with the same routine
  (B-factor --bfactor-local).  The patch trajectories are fitted by MotionCor2/RELION's
  smooth model: 18 terms {1, x, x², y, y², xy} × {t, t², t³} (x, y normalised to
  [−0.5, 0.5), t = frame index), with one free offset per patch, then one robust refit
  without outlier patches.  The model is 0 at t = 0, so it adds to the global trajectory.
- Locally corrected sum: the image is cut into tiles (≈512 px core + 32 px margin, the outer
  part blended to the tile mean so the FFT's periodic wrap has no jump); each tile of each
  frame is shifted by the total (global + model) displacement at the tile centre — integer
  part by choosing the source window, fractional part by a Fourier phase ramp — accumulated
  in Fourier space, and the tile cores are put together at the end.
- Global sum: each frame padded with its mean to a fast FFT size, shifted by a phase ramp
  (numpy's frequency convention: the Nyquist row counts as negative), summed in Fourier space.
- Exposure weighting: appion.base.physics.calc_exposure_weights on a fine 1-D table of
  |k|, looked up per Fourier pixel; the weighted sum is scaled by √n so its mean equals
  the unweighted sum's.
- Binning: Fourier cropping of the summed spectrum (mean per pixel preserved).

Submodules (this package re-exports their public names): align (binning, spectra, CC search),
refine (the two-stage global alignment, Newton refinement), local (patches and the smooth model), sums (exposure weights, tiled Fourier sums,
output binning), summary (trajectory figures).
"""
from __future__ import annotations

from appion.motioncorrection.calc.internal.align import (
    AlignmentResult, _find_peaks, calc_alignment_binning, calc_binned_frames, calc_binned_raw_frame, calc_cc_shape,
    calc_cropped_bfactor_filter, calc_fast_size_below, calc_frame_shifts, calc_phase_vectors,
    calc_shifted_spectra_inplace, calc_spectra)  # noqa: F401 (_find_peaks: tests)
from appion.motioncorrection.calc.internal.local import (N_POLY_TERMS, calc_local_model, calc_local_shifts_at,
                                                         calc_patch_boxes, calc_patch_trajectories, calc_poly_basis,
                                                         calc_taper)
from appion.motioncorrection.calc.internal.refine import (
    NEWTON_MAX_STEP_PX, REFINE_FILTER_AT_NYQUIST, REFINE_MAX_PIXELS, SEARCH_SIZE_PX, GlobalAlignment,
    calc_coarse_shape, calc_crop_scale,
    calc_fourier_crop_spectra, calc_global_alignment, calc_newton_shifts, calc_newton_steps, calc_refinement_binning,
    calc_weighted_filter)
from appion.motioncorrection.calc.internal.summary import calc_motion_summary, calc_trajectory_rms_error
from appion.motioncorrection.calc.internal.sums import (
    K_TABLE_SIZE, TILE_CORE_PX, TILE_MARGIN_PX, SumState, calc_add_frame, calc_add_raw_frames, calc_add_spectra,
    calc_edge_taper,
    calc_finished_sums, calc_fourier_crop, calc_frame_spectrum, calc_output_shape, calc_sum_plan, calc_tile_shifts,
    calc_weight_table)

__all__ = [
    "N_POLY_TERMS", "TILE_CORE_PX", "TILE_MARGIN_PX", "K_TABLE_SIZE",
    "calc_alignment_binning", "calc_binned_frames", "calc_binned_raw_frame",
    "calc_spectra", "calc_phase_vectors", "calc_shifted_spectra_inplace", "calc_cc_shape",
    "calc_cropped_bfactor_filter", "calc_fast_size_below", "AlignmentResult", "calc_frame_shifts",
    "REFINE_FILTER_AT_NYQUIST", "REFINE_MAX_PIXELS", "NEWTON_MAX_STEP_PX", "SEARCH_SIZE_PX",
    "calc_refinement_binning", "calc_coarse_shape", "calc_crop_scale", "calc_fourier_crop_spectra", "calc_weighted_filter", "calc_newton_steps",
    "calc_newton_shifts", "GlobalAlignment", "calc_global_alignment",
    "calc_patch_boxes", "calc_taper", "calc_patch_trajectories", "calc_poly_basis", "calc_local_model",
    "calc_local_shifts_at",
    "calc_weight_table", "SumState", "calc_sum_plan", "calc_edge_taper", "calc_frame_spectrum", "calc_add_spectra",
    "calc_add_raw_frames",
    "calc_add_frame", "calc_output_shape", "calc_fourier_crop", "calc_finished_sums", "calc_tile_shifts",
    "calc_trajectory_rms_error", "calc_motion_summary",
]
