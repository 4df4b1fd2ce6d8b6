"""Reading what a motion-correction run needs: the movie (one float32 copy), gain and defects.

Decoding itself is appion.base.movies; this module only decides what to read and checks it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from appion.base import movies


def read_oriented_gain(gain_path, frame_shape_yx: tuple[int, int], rotate: int, flip: int) -> np.ndarray:
    """Gain reference oriented like the frames: (y, x) float32.

    Raises MovieError (unreadable) or GainMismatchError (no orientation fits), both naming the file.
    """
    gain = movies.read_gain(gain_path)
    oriented = movies.calc_gain_for_frames(gain, frame_shape_yx, rotate, flip, str(gain_path))
    if not np.all(oriented > 0):
        bad = int(np.count_nonzero(~(oriented > 0)))
        raise movies.MovieError(f"{gain_path}: gain reference has {bad} pixels <= 0")
    return oriented


def read_defects_mask(defects_path, frame_shape_yx: tuple[int, int]) -> np.ndarray:
    """Defect map (nonzero = bad pixel) as bool (y, x); must have the frames' size."""
    mask = movies.read_defect_map(defects_path)
    if mask.shape != tuple(frame_shape_yx):
        raise movies.MovieError(f"{defects_path}: defect map is {mask.shape[0]}x{mask.shape[1]} (y x) "
                                f"but the frames are {frame_shape_yx[0]}x{frame_shape_yx[1]}")
    return mask


def iter_corrected_chunks(movie_path, first_frame: int, last_frame: int, eer_grouping: int, eer_sampling: int,
                          threads: int, gain: np.ndarray | None,
                          defects_mask: np.ndarray | None) -> Iterator[tuple[int, np.ndarray]]:
    """Frames first..last (inclusive) as float32 chunks (index of first frame, (c, y, x)): raw × gain,
    defects repaired.  Keeping the chunks (not copying them) is the caller's single copy of the movie.

    Non-finite values: the reader rejects them in float movies (naming the frame), integer movies
    cannot hold them, and read_oriented_gain rejects non-finite or non-positive gains.
    """
    yield from movies.iter_frame_chunks(movie_path, first_frame, last_frame, max(2, 2 * threads), eer_grouping,
                                        eer_sampling, threads, gain=gain, defects_mask=defects_mask)


def read_header(movie_path, eer_grouping: int, eer_sampling: int) -> movies.MovieHeader:
    """The movie's header (frame count, size), validating the file structure."""
    if not Path(movie_path).exists():
        raise movies.MovieError(f"{movie_path}: movie file does not exist")
    return movies.read_movie_header(movie_path, eer_grouping, eer_sampling)


# ---- database rows (classic Appion tables)
def retrieve_motion_done(ddstackrun_id: int, source_ids: list[int]) -> dict[int, int]:
    """source image id → aligned (result) image id, for the movies this ddstack run has finished."""
    from appion.base.db import models as m

    rows = m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=ddstackrun_id, source_id__in=source_ids)
    return dict(rows.values_list("source_id", "result_id"))
