"""Wrappers around external motion-correction programs: MotionCor2/MotionCor3 and RELION's own.

Each program has three parts: build the command (pure `calc_*`), run it (`run_*`: the only
functions here with side effects: they start a process and write its files), and read its
output (pure `parse_*`).  Commands are argument lists, never shell strings.

Shift conventions (sources in docs/conventions.md, "MotionCor2 orientation"; RELION 3.1.3 is
also measured in tests/motioncorrection/test_external.py):
- RELION's `_rlnMicrographShiftX/Y` (block `data_global_shift`) is the CORRECTION applied to a
  frame, i.e. minus the specimen displacement: shift_i = -(d_i - d_first), unbinned pixels,
  first summed frame = (0, 0).  For TIFF input RELION reads the pages upside down relative to
  tifffile (src/rwTIFF.h flips Y "as IMOD, EMAN2, SerialEM and MotionCor2" do), so in
  tifffile's array coordinates the Y sign is reversed (`calc_displacement_from_relion_shifts`).
- MotionCor2's "Full-frame alignment shift" values use the same "correction" sign (RELION copies
  them verbatim into `_rlnMicrographShiftX/Y`), relative to the reference frame (-FmRef), in
  MotionCor's reading of the movie: TIFF upside down relative to tifffile, MRC and EER not
  (`calc_displacement_from_motioncor_shifts`, `MotionCorOutput.displacement_px`).

Submodules (this package re-exports their public names): common (shared helpers), motioncor2
(MotionCor2/MotionCor3), relion (relion_run_motioncorr --use_own).
"""
from __future__ import annotations

from appion.motioncorrection.calc.external.common import LOG_TAIL_LINES, calc_log_tail, calc_movie_kind
from appion.motioncorrection.calc.external.motioncor2 import (
    MOTIONCOR_Y_FLIPPED_FORMATS, SUPPORTED_MOTIONCOR2, MotionCor2Params, MotionCorError, MotionCorOutput,
    MotionCorVersion, calc_displacement_from_motioncor_shifts, calc_fmintfile_path,
    calc_fmintfile_text, calc_motioncor2_command, calc_motioncor_log_path, calc_motioncor_version,
    calc_motioncor_work_dir, calc_n_rendered_frames, calc_uses_fmintfile, detect_motioncor_version,
    parse_motioncor2_shifts, read_movie_frame_count, run_motioncor2)
from appion.motioncorrection.calc.external.relion import (
    RelionError, RelionMotionParams, RelionOutput, calc_displacement_from_relion_shifts, calc_relion_motioncorr_command,
    calc_relion_shifts, parse_relion_shifts_star, run_relion_motioncorr, write_relion_movies_star)

__all__ = [
    "LOG_TAIL_LINES", "calc_log_tail", "calc_movie_kind",
    "MOTIONCOR_Y_FLIPPED_FORMATS", "calc_displacement_from_motioncor_shifts",
    "SUPPORTED_MOTIONCOR2", "MotionCorError", "MotionCorVersion", "MotionCor2Params", "MotionCorOutput",
    "calc_uses_fmintfile", "calc_n_rendered_frames", "calc_fmintfile_text", "calc_fmintfile_path",
    "calc_motioncor_work_dir", "calc_motioncor_log_path", "calc_motioncor2_command", "calc_motioncor_version",
    "detect_motioncor_version", "parse_motioncor2_shifts", "read_movie_frame_count", "run_motioncor2",
    "RelionError", "RelionMotionParams", "RelionOutput", "write_relion_movies_star",
    "calc_relion_motioncorr_command", "calc_relion_shifts", "parse_relion_shifts_star",
    "calc_displacement_from_relion_shifts", "run_relion_motioncorr",
]
