"""Whether a movie is fully written (for session import and its watcher).

A TIFF written a page at a time is decodable after every page, so decoding alone cannot tell a finished
movie from one still being written: where metadata gives the frame count (SerialEM `.mdoc` NumSubFrames,
EPU `.xml` NumberOffractions, the MRC header's nz) the file must hold exactly that many frames.  The
watcher adds the other rule (the file's size has settled); see appion.base.session.watch.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appion.base.io.movies.common import MovieError, MovieHeader, _sniff_format
from appion.base.io.movies.frames import _open_source
from appion.base.io.movies.mrc import MRC_HEADER_BYTES, _mrc_header, _read_mrc_layout

TIFF_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
COMPLETE, GROWING, BROKEN = "complete", "growing", "broken"
MRC_MAP_OFFSET = 208


@dataclass(frozen=True)
class MovieCompleteness:
    """state: COMPLETE (header set), GROWING (what is wrong may be a writer not done yet: truncated data, fewer
    frames than the metadata says) or BROKEN (more writing cannot fix it).  reason: why not complete, without the
    file name (the caller names the file)."""

    state: str
    reason: str = ""
    header: MovieHeader | None = None

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE


def _without_path(path: Path, exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    for prefix in (f"{path}: ", f"{path}:"):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _read_structure(path: Path) -> MovieCompleteness:
    """Decodability alone: the header is readable, every frame's data lies within the file, the last frame decodes."""
    fmt = _sniff_format(path)
    size = path.stat().st_size
    if fmt == "mrc":
        if size < MRC_HEADER_BYTES:
            return MovieCompleteness(GROWING, f"truncated MRC: {size} bytes, less than the {MRC_HEADER_BYTES}-byte "
                                              "header")
        with open(path, "rb") as fh:
            fh.seek(MRC_MAP_OFFSET)
            if fh.read(4) != b"MAP ":
                return MovieCompleteness(BROKEN, "unreadable MRC header: no 'MAP ' stamp at byte 208 (not an MRC file)")
        try:
            with warnings.catch_warnings():  # mrcfile's warnings repeat what the error says
                warnings.simplefilter("ignore", RuntimeWarning)
                header, _, expected = _read_mrc_layout(path)
        except MovieError as exc:
            return MovieCompleteness(BROKEN, f"unreadable MRC header: {_without_path(path, exc)}")
        if int(header.nz) == 0:
            return MovieCompleteness(GROWING, "MRC header says zero frames (header not written yet?)")
        if size != expected:
            return MovieCompleteness(GROWING, f"truncated MRC: {size} bytes but the header ({int(header.nx)}x"
                                              f"{int(header.ny)}x{int(header.nz)}, mode {int(header.mode)}) implies "
                                              f"{expected}")
        return MovieCompleteness(COMPLETE, header=_mrc_header(path)[0])
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if len(magic) < 4:
        return MovieCompleteness(GROWING, f"truncated {fmt.upper()}: {size} bytes")
    if magic not in TIFF_MAGICS:
        return MovieCompleteness(BROKEN, f"unreadable header: not a {fmt.upper()} file (no TIFF signature)")
    try:
        source = _open_source(path, 1, 1, 1)
    except (MovieError, ValueError, struct.error) as exc:  # a cut directory or page chain, or a bad file
        text = _without_path(path, exc)
        return MovieCompleteness(GROWING, text if text.startswith("truncated") else
                                 f"truncated or undecodable {fmt.upper()}: {text}")
    try:
        n = source.header.n_frames
        if fmt == "eer":
            source._decode_raw_frame(source.header.n_raw_frames - 1, np.zeros(source.header.shape_yx, np.uint16))
        else:
            source.read_into(n - 1, np.empty((1,) + source.header.shape_yx, np.float32))
    except (MovieError, ValueError, RuntimeError, struct.error) as exc:
        return MovieCompleteness(GROWING, f"last frame does not decode: {_without_path(path, exc)}")
    finally:
        source.close()
    return MovieCompleteness(COMPLETE, header=source.header)


def read_movie_completeness(path, metadata_n_frames: int | None = None,
                            metadata_source: str | None = None) -> MovieCompleteness:
    """Whether the movie is fully written and agrees with its metadata's frame count.  Never raises for a bad file.

    metadata_n_frames: the frame count a sidecar file (`metadata_source`, named in the reason) gives.  Fewer
    frames in the file: GROWING (still being written).  More frames: BROKEN (the metadata describes another
    movie), except for EER, whose metadata may count dose fractions rather than the raw frames in the file.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return MovieCompleteness(BROKEN, "no longer exists")
        found = _read_structure(path)
    except (MovieError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or _without_path(path, exc)
        return MovieCompleteness(BROKEN, f"unreadable: {reason}")
    if not found.complete or not metadata_n_frames:
        return found
    header = found.header
    held = header.n_raw_frames if header.format == "eer" else header.n_frames
    unit = "raw EER frames" if header.format == "eer" else "frames"
    said = f"{metadata_source or 'its metadata'} says {metadata_n_frames}"
    if held < metadata_n_frames:
        return MovieCompleteness(GROWING, f"frame count mismatch: the file holds {held} {unit} but {said} "
                                          "(still being written, or truncated)", header)
    if held > metadata_n_frames and header.format != "eer":
        return MovieCompleteness(BROKEN, f"frame count mismatch: the file holds {held} frames but {said} "
                                         "(metadata of another movie?)", header)
    return found


def is_movie_complete(path) -> bool:
    """True only if the movie is fully written and decodable (its own header's view; no metadata).  Never raises.

    MRC: file size equals the header-implied size.  TIFF/EER: every page's data lies within the
    file, the page chain ends properly, and the last frame decodes.
    """
    return read_movie_completeness(path).complete
