"""Reading movies (MRC, TIFF, EER), gain/dark references and defect maps.

This is the only package that decodes movie files.  Frames are decoded lazily in chunks so a
caller holds at most one float32 copy of a movie (read_frames fills a preallocated array chunk
by chunk and applies dark, gain and defect correction in place).

Frame indices are 0-based; `last_frame` is inclusive (classic `--ddstartframe s --ddnframe n`
reads frames s .. s+n-1; see calc_frame_range).  For EER, a "frame" is a fraction: `eer_grouping`
consecutive raw frames summed; raw frames left over after the last full group are dropped.

Submodules (this package re-exports their public names): common (errors, MovieHeader,
DefectList, format sniffing, frame ranges), mrc, tiff, eer (one reader per format), frames
(headers, chunked reading and correction), references (gain/dark), defects, complete
(is_movie_complete) and calc (pure helpers).
"""
from __future__ import annotations

from appion.base.io.movies.calc import calc_fix_defects
from appion.base.io.movies.common import DefectList, GainMismatchError, MovieError, MovieHeader, calc_frame_range
from appion.base.io.movies.complete import is_movie_complete
from appion.base.io.movies.defects import calc_defect_list_from_plan, calc_defect_mask, read_defect_map
from appion.base.io.movies.eer import EER_COMPRESSIONS, EER_SAMPLING_LEVELS  # noqa: F401
from appion.base.io.movies.frames import iter_frame_chunks, read_frames, read_movie_header
from appion.base.io.movies.mrc import IMOD_STAMP, MRC_HEADER_BYTES, MRC_MODES  # noqa: F401
from appion.base.io.movies.references import _read_image_2d, calc_gain_for_frames, read_dark, read_gain  # noqa: F401

__all__ = [
    "MovieError", "GainMismatchError", "MovieHeader", "DefectList",
    "read_movie_header", "iter_frame_chunks", "read_frames", "calc_frame_range",
    "read_gain", "read_dark", "calc_gain_for_frames",
    "calc_defect_list_from_plan", "calc_defect_mask", "read_defect_map", "calc_fix_defects",
    "is_movie_complete",
]
