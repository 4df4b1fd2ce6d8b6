"""Reading what a motion-correction run needs: the movie (one copy), gain and defects.

Worker side: no Django here (what the database holds is appion.motioncorrection.retrieve).

Decoding is appion.base.io.movies (float32, corrected), except iter_raw_frames: integer TIFF pages as
stored (one page per thread) and EER fractions as counts, for the global-shift fast path of
`appion motion align` (the movie kept as integers: 1/4 of a float32 copy for 8-bit counts).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import tifffile

from appion.base.io import movies


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


def is_raw_tiff_movie(header: movies.MovieHeader) -> bool:
    """True for a TIFF movie of 8/16-bit integer counts: iter_raw_tiff_frames can keep it as stored."""
    dtype = np.dtype(header.dtype)
    return header.format == "tiff" and dtype.kind in "ui" and dtype.itemsize <= 2


def calc_raw_dtype(header: movies.MovieHeader) -> np.dtype | None:
    """The integer type iter_raw_frames keeps the movie's frames in, or None when it cannot.

    TIFF: 8/16-bit counts as stored.  EER: a fraction of g raw frames holds at most g electrons per
    rendered pixel (a physical pixel sees at most one per raw frame), so uint8 up to g = 255, else uint16.
    """
    if is_raw_tiff_movie(header):
        return np.dtype(header.dtype)
    if header.format == "eer":
        return np.dtype(np.uint8) if (header.eer_grouping or 1) <= 255 else np.dtype(np.uint16)
    return None


def iter_raw_frames(movie_path, header: movies.MovieHeader, first_frame: int, last_frame: int, threads: int,
                    out: np.ndarray) -> Iterator[int]:
    """Frames first..last (inclusive) as integer counts into out (n, y, x) of calc_raw_dtype(header); yield each
    frame's index j (frame first + j) once out[j] holds it."""
    if header.format == "eer":
        return iter_raw_eer_frames(movie_path, header, first_frame, last_frame, threads, out)
    return iter_raw_tiff_frames(movie_path, first_frame, last_frame, threads, out)


def iter_raw_eer_frames(movie_path, header: movies.MovieHeader, first_frame: int, last_frame: int, threads: int,
                        out: np.ndarray) -> Iterator[int]:
    """EER fractions first..last rendered as counts into out (n, y, x) uint8/uint16, `threads` fractions at a
    time (one thread each, appion.base.io.movies' EER reader); yield each index j once out[j] holds it."""
    from appion.base.io.movies.frames import _open_source  # the reader behind iter_frame_chunks, as counts

    source = _open_source(movie_path, header.eer_grouping or 1, header.eer_sampling or 1, threads)
    try:
        step = max(1, int(threads))
        for j in range(0, last_frame - first_frame + 1, step):
            count = min(step, last_frame - first_frame + 1 - j)
            source.read_into(first_frame + j, out[j:j + count])
            yield from range(j, j + count)
    finally:
        source.close()


def iter_raw_tiff_frames(movie_path, first_frame: int, last_frame: int, threads: int,
                         out: np.ndarray) -> Iterator[int]:
    """Decode TIFF pages first..last (inclusive) as stored (no float copy) into out (n, y, x); yield
    each frame's index j (page first + j) once out[j] holds it.

    Why: the integer counts are 1/4 (uint8) or 1/2 (uint16) of a float32 copy, and tifffile decodes
    fastest into the stored dtype, one page per thread (`threads` pages at once, a few ahead of the
    consumer); gain is applied later, fused with the binning and the FFT padding.  The header
    (read_header) has already validated the structure (truncation, equal pages).
    """
    path = Path(movie_path)
    try:
        tif = tifffile.TiffFile(path)
    except (OSError, ValueError) as exc:
        raise movies.MovieError(f"{path}: not a readable TIFF: {exc}") from exc
    n = last_frame - first_frame + 1
    workers = max(1, int(threads))

    def decode(j: int) -> int:
        try:
            pages[j].asarray(out=out[j], maxworkers=1)
        except (ValueError, RuntimeError, OSError, IndexError) as exc:
            raise movies.MovieError(f"{path}: cannot decode frame {first_frame + j}: {exc}") from exc
        return j

    # One page per thread (measured faster than one page's strips over several threads).
    with tif, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tiff-page") as pool:
        tif.filehandle.set_lock(True)  # pages share the file handle: serialise its seeks and reads
        pages = [tif.pages[first_frame + j] for j in range(n)]  # parse the directories here, not in threads
        pending = deque(pool.submit(decode, j) for j in range(min(n, workers + 1)))
        for j in range(n):
            pending.popleft().result()
            if j + workers + 1 < n:
                pending.append(pool.submit(decode, j + workers + 1))
            yield j


def read_header(movie_path, eer_grouping: int, eer_sampling: int) -> movies.MovieHeader:
    """The movie's header (frame count, size), validating the file structure."""
    if not Path(movie_path).exists():
        raise movies.MovieError(f"{movie_path}: movie file does not exist")
    return movies.read_movie_header(movie_path, eer_grouping, eer_sampling)
