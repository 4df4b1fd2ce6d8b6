"""Reading frames of any format: headers, chunked decoding with dark, gain and defect correction.

Frames are decoded lazily in chunks so a caller holds at most one float32 copy of a movie
(read_frames fills a preallocated array chunk by chunk and corrects it in place).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from appion.base.io.movies.calc import calc_fix_defects_inplace
from appion.base.io.movies.common import MovieError, MovieHeader, _check_range, _sniff_format
from appion.base.io.movies.eer import _EerSource
from appion.base.io.movies.mrc import _mrc_header, _MrcSource
from appion.base.io.movies.tiff import _TiffSource


# ----------------------------------------------------------------------------------------- reading


def _open_source(path, eer_grouping: int, eer_sampling: int, threads: int):
    path = Path(path)
    if not path.is_file():
        raise MovieError(f"{path}: movie file does not exist")
    fmt = _sniff_format(path)
    try:
        if fmt == "mrc":
            return _MrcSource(path)
        if fmt == "eer":
            return _EerSource(path, eer_grouping, eer_sampling, threads)
        return _TiffSource(path, threads)
    except MovieError:
        raise
    except (OSError, ValueError, struct.error) as exc:  # e.g. tifffile's TiffFileError on a cut IFD
        raise MovieError(f"{path}: not a readable {fmt.upper()} movie: {exc}") from exc


def read_movie_header(path, eer_grouping: int = 1, eer_sampling: int = 1) -> MovieHeader:
    """Frame count, size and sample type of a movie without decoding pixels.

    Also validates the file structure (truncated files raise MovieError).
    """
    path = Path(path)
    if not path.is_file():
        raise MovieError(f"{path}: movie file does not exist")
    if _sniff_format(path) == "mrc":
        return _mrc_header(path)[0]
    source = _open_source(path, eer_grouping, eer_sampling, 1)
    source.close()
    return source.header


def _check_reference(name: str, array, shape_yx) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array, dtype=np.float32)
    if array.shape != tuple(shape_yx):
        raise ValueError(f"{name} is {array.shape[0]}x{array.shape[1]} (y x) but frames are "
                         f"{shape_yx[0]}x{shape_yx[1]}; orient it with calc_gain_for_frames first")
    return array


def _iter_filled(source, first: int, last: int, chunk_frames: int, out: np.ndarray | None,
                 dark, gain, defects_mask) -> Iterator[tuple[int, np.ndarray]]:
    """Decode [first, last] chunk by chunk into float32 (slices of `out`, or new arrays) and correct."""
    header = source.header
    dark = _check_reference("dark", dark, header.shape_yx)
    gain = _check_reference("gain", gain, header.shape_yx)
    mask = None
    if defects_mask is not None:
        mask = np.asarray(defects_mask).astype(bool)
        if mask.shape != header.shape_yx:
            raise ValueError(f"defect mask is {mask.shape} but frames are {header.shape_yx}")
        if not mask.any():
            mask = None
    step = max(1, int(chunk_frames))
    for start in range(first, last + 1, step):
        count = min(step, last + 1 - start)
        if out is None:
            chunk = np.empty((count,) + header.shape_yx, np.float32)
        else:
            chunk = out[start - first:start - first + count]
        source.read_into(start, chunk)
        if source.is_float and not np.isfinite(chunk).all():
            bad = start + int(np.nonzero(~np.isfinite(chunk).reshape(count, -1).all(axis=1))[0][0])
            raise MovieError(f"{header.path}: frame {bad} contains NaN or infinite values")
        if dark is not None:
            chunk -= dark
        if gain is not None:
            chunk *= gain
        if mask is not None:
            calc_fix_defects_inplace(chunk, mask)
        yield start, chunk


def iter_frame_chunks(path, first_frame: int = 0, last_frame: int | None = None, chunk_frames: int = 4,
                      eer_grouping: int = 1, eer_sampling: int = 1, threads: int = 1, *,
                      dark=None, gain=None, defects_mask=None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index of the chunk's first frame, float32 (c, y, x)) for frames first..last (inclusive).

    Frames are decoded lazily, `chunk_frames` at a time, so a caller that sums or transforms
    chunks never holds the movie.  Optional corrections as in read_frames.
    """
    source = _open_source(path, eer_grouping, eer_sampling, threads)
    try:
        first, last = _check_range(source.header, first_frame, last_frame)
        yield from _iter_filled(source, first, last, chunk_frames, None, dark, gain, defects_mask)
    finally:
        source.close()


def read_frames(path, first_frame: int = 0, last_frame: int | None = None, eer_grouping: int = 1,
                eer_sampling: int = 1, threads: int = 1, out: np.ndarray | None = None, *,
                dark=None, gain=None, defects_mask=None, chunk_frames: int = 4) -> np.ndarray:
    """Frames first..last (inclusive) as float32 (n, y, x), corrected = (raw − dark) × gain, then defects.

    out: optional preallocated C-contiguous float32 (n, y, x) to fill (the caller's single copy).
    dark, gain: (y, x) arrays oriented like the frames (per-frame dark; see calc_gain_for_frames).
    defects_mask: (y, x), nonzero = defective pixel, replaced by the mean of good neighbours.
    """
    source = _open_source(path, eer_grouping, eer_sampling, threads)
    try:
        first, last = _check_range(source.header, first_frame, last_frame)
        shape = (last - first + 1,) + source.header.shape_yx
        if out is None:
            out = np.empty(shape, np.float32)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous float32 {shape}, not {out.dtype} {out.shape}")
        for _ in _iter_filled(source, first, last, chunk_frames, out, dark, gain, defects_mask):
            pass
    finally:
        source.close()
    return out
