"""MRC movies: header layout (IMOD unsigned bytes, truncation check) and memory-mapped frames."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import mrcfile
import numpy as np

from appion.base.io.movies.common import MovieError, MovieHeader

MRC_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
MRC_HEADER_BYTES = 1024
IMOD_STAMP = 1146047817  # IMOD writes this at byte 152; its flags word (byte 156) bit 0 = signed bytes


# --------------------------------------------------------------------------------------------- MRC


def _read_mrc_layout(path: Path):
    """(header, numpy dtype, expected file size) with the size checked against the file."""
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            header = None if mrc.header is None else mrc.header.copy()
    except (OSError, ValueError, EOFError) as exc:
        raise MovieError(f"{path}: not a readable MRC file: {exc}") from exc
    if header is None:
        raise MovieError(f"{path}: not a readable MRC file (no header)")
    byteorder = header.mode.dtype.byteorder
    if byteorder not in "<>":  # '=' native
        byteorder = "<" if sys.byteorder == "little" else ">"
    mode = int(header.mode)
    if mode not in MRC_MODES:
        raise MovieError(f"{path}: MRC mode {mode} is not supported (supported: "
                         f"{', '.join(f'{m} {t}' for m, t in MRC_MODES.items())})")
    dtype = np.dtype(MRC_MODES[mode])
    if mode == 0:
        extra2 = header.extra2.tobytes()
        stamp, flags = struct.unpack(byteorder + "ii", extra2[40:48])
        if stamp == IMOD_STAMP and not (flags & 1):
            dtype = np.dtype(np.uint8)  # IMOD/SerialEM: mode 0 without the signed flag is unsigned
    dtype = dtype.newbyteorder(byteorder)
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny) <= 0 or nz < 0:
        raise MovieError(f"{path}: MRC header has impossible dimensions {nx}x{ny}x{nz}")
    expected = MRC_HEADER_BYTES + int(header.nsymbt) + nx * ny * nz * dtype.itemsize
    return header, dtype, expected


def _mrc_header(path: Path) -> tuple[MovieHeader, np.dtype, int]:
    """(MovieHeader, stored dtype, byte offset of the first frame), refusing truncated files."""
    header, dtype, expected = _read_mrc_layout(path)
    size = path.stat().st_size
    if size < expected:
        raise MovieError(f"{path}: truncated MRC: {size} bytes but the header ({int(header.nx)}x"
                         f"{int(header.ny)}x{int(header.nz)}, mode {int(header.mode)}) implies {expected}")
    nz = int(header.nz)
    if nz == 0:
        raise MovieError(f"{path}: movie has zero frames")
    voxel = float(header.cella.x) / int(header.mx) if int(header.mx) > 0 else 0.0
    movie = MovieHeader(str(path), "mrc", nz, nz, (int(header.ny), int(header.nx)), dtype.name,
                        voxel if voxel > 0 else None)
    return movie, dtype, MRC_HEADER_BYTES + int(header.nsymbt)


class _MrcSource:
    """Memory-mapped MRC frames; a chunk is copied straight into float32."""

    def __init__(self, path: Path):
        self.header, dtype, offset = _mrc_header(path)
        self.is_float = dtype.kind == "f"
        self._data = np.memmap(path, dtype=dtype, mode="r", offset=offset,
                               shape=(self.header.n_frames,) + self.header.shape_yx)

    def read_into(self, first: int, out: np.ndarray) -> None:
        out[...] = self._data[first:first + out.shape[0]]

    def close(self) -> None:
        del self._data  # unmaps the file
