"""Reading movies (MRC, TIFF, EER), gain/dark references and defect maps.

This is the only module that decodes movie files.  Frames are decoded lazily in chunks so a
caller holds at most one float32 copy of a movie (read_frames fills a preallocated array chunk
by chunk and applies dark, gain and defect correction in place).

Frame indices are 0-based; `last_frame` is inclusive (classic `--ddstartframe s --ddnframe n`
reads frames s .. s+n-1; see calc_frame_range).  For EER, a "frame" is a fraction: `eer_grouping`
consecutive raw frames summed; raw frames left over after the last full group are dropped.
"""
from __future__ import annotations

import ast
import os
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import imagecodecs
import mrcfile
import numpy as np
import tifffile

from appion.base.io.movies.calc import (
    calc_fix_defects,
    calc_fix_defects_inplace,
    calc_gain_candidates,
    calc_oriented_gain_shapes,
    calc_upsampled_gain,
)

__all__ = [
    "MovieError", "GainMismatchError", "MovieHeader", "DefectList",
    "read_movie_header", "iter_frame_chunks", "read_frames", "calc_frame_range",
    "read_gain", "read_dark", "calc_gain_for_frames",
    "calc_defect_list_from_plan", "calc_defect_mask", "read_defect_map", "calc_fix_defects",
    "is_movie_complete",
]

MRC_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
MRC_HEADER_BYTES = 1024
IMOD_STAMP = 1146047817  # IMOD writes this at byte 152; its flags word (byte 156) bit 0 = signed bytes
EER_COMPRESSIONS = {65000: (8, 2, 2), 65001: (7, 2, 2), 65002: None}  # (skip, horizontal, vertical) bits
EER_SAMPLING_LEVELS = {1: 0, 2: 1, 4: 2}  # rendering sampling -> super-resolution bits used


class MovieError(ValueError):
    """A movie or reference file cannot be used; the message names the file and the problem."""


class GainMismatchError(ValueError):
    """The gain reference does not fit the frames in any of the orientations tried."""


@dataclass(frozen=True)
class MovieHeader:
    """What a movie holds, after EER grouping/sampling: n_frames fractions of shape_yx."""

    path: str
    format: str  # 'mrc' | 'tiff' | 'eer'
    n_frames: int
    n_raw_frames: int
    shape_yx: tuple[int, int]
    dtype: str  # stored sample type ('uint16' for EER fraction counts)
    pixel_size_A: float | None
    eer_grouping: int = 1
    eer_sampling: int = 1


@dataclass
class DefectList:
    """Leginon corrector-plan defects in unbinned camera pixels: rows (y), columns (x), pixels (x, y)."""

    bad_rows: list[int] = field(default_factory=list)
    bad_cols: list[int] = field(default_factory=list)
    bad_pixels: list[tuple[int, int]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ format


def _sniff_format(path: Path) -> str:
    """'mrc', 'tiff' or 'eer' from the extension, or from the magic bytes for other names."""
    name = path.name.lower()
    if name.endswith((".mrc", ".mrcs", ".st")):
        return "mrc"
    if name.endswith(".eer"):
        return "eer"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    try:
        with open(path, "rb") as fh:
            head = fh.read(212)
    except OSError as exc:
        raise MovieError(f"{path}: cannot read movie: {exc}") from exc
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "tiff"
    if head[208:212] == b"MAP ":
        return "mrc"
    raise MovieError(f"{path}: not a movie (not MRC, TIFF or EER by extension or content)")


def _check_eer_options(path: Path, grouping: int, sampling: int) -> None:
    if not 1 <= int(grouping) <= 65535:  # fractions are accumulated in uint16 (<= 1 count per raw frame)
        raise MovieError(f"{path}: EER grouping must be 1-65535, not {grouping}")
    if sampling not in EER_SAMPLING_LEVELS:
        raise MovieError(f"{path}: EER sampling must be 1, 2 or 4, not {sampling}")


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


# -------------------------------------------------------------------------------------------- TIFF


def _open_tiff(path: Path) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except (OSError, ValueError, struct.error) as exc:  # TiffFileError is a ValueError
        raise MovieError(f"{path}: not a readable TIFF: {exc}") from exc


def _check_tiff_structure(tif: tifffile.TiffFile, path: Path, pages) -> None:
    """Raise MovieError if any page's data lies beyond the end of the file or the IFD chain is cut.

    A half-written TIFF has its last page's strips (or its next IFD) past the current file end.
    """
    size = path.stat().st_size
    for i, page in enumerate(pages):
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if offset + count > size or (count == 0 and page.compression != 1):
                raise MovieError(f"{path}: truncated TIFF: page {i} data ends at byte {offset + count} "
                                 f"but the file has {size} bytes")
    last = tif.pages[-1] if len(tif.pages) else None
    if last is not None:
        fmt = tif.tiff
        fh = tif.filehandle
        fh.seek(last.offset)
        n_tags = struct.unpack(fmt.byteorder + fmt.tagnoformat[-1], fh.read(fmt.tagnosize))[0]
        fh.seek(last.offset + fmt.tagnosize + n_tags * fmt.tagsize)
        raw = fh.read(fmt.offsetsize)
        if len(raw) < fmt.offsetsize:
            raise MovieError(f"{path}: truncated TIFF: the last page's directory is cut off")
        next_ifd = struct.unpack(fmt.offsetformat, raw)[0]
        if next_ifd != 0:
            raise MovieError(f"{path}: truncated TIFF: the page chain continues at byte {next_ifd} "
                             f"but the file has {size} bytes or that page is unreadable")


class _TiffSource:
    """One TIFF page per frame (uint8/uint16 counts, LZW or uncompressed), decoded by tifffile."""

    def __init__(self, path: Path, threads: int):
        self.path = path
        self.threads = max(1, int(threads))
        self._tif = _open_tiff(path)
        try:
            if self._tif.is_eer:
                raise MovieError(f"{path}: is an EER file; give it the .eer extension")
            pages = list(self._tif.pages)
            if not pages:
                raise MovieError(f"{path}: movie has zero frames")
            _check_tiff_structure(self._tif, path, pages)
            first = pages[0]
            for i, page in enumerate(pages):
                if page.shape != first.shape or page.dtype != first.dtype:
                    raise MovieError(f"{path}: page {i} is {page.shape} {page.dtype}, page 0 is "
                                     f"{first.shape} {first.dtype}; not a movie of equal frames")
            if len(first.shape) != 2 or first.samplesperpixel != 1:
                raise MovieError(f"{path}: pages have shape {first.shape}; expected one 2-D frame per page")
        except BaseException:
            self._tif.close()
            raise
        self.is_float = first.dtype.kind == "f"
        self.header = MovieHeader(str(path), "tiff", len(pages), len(pages), tuple(first.shape),
                                  first.dtype.name, None)
        self._pages = pages

    def read_into(self, first: int, out: np.ndarray) -> None:
        """Decode pages first.. into out (c, y, x) float32, strip by strip.

        tifffile decodes the strips/tiles of a page on `threads` workers and our callback casts
        each decoded strip straight into the float32 frame while it is still in cache: no
        integer copy of the frames is ever held.
        """
        ny, nx = self.header.shape_yx
        for k in range(out.shape[0]):
            frame = out[k]

            def store(result, frame=frame):
                segment, index, shape = result
                y0, x0 = index[2], index[3]
                h, w = min(shape[1], ny - y0), min(shape[2], nx - x0)
                if segment is None:  # an empty (never written) strip
                    frame[y0:y0 + h, x0:x0 + w] = 0
                else:
                    frame[y0:y0 + h, x0:x0 + w] = segment.reshape(shape)[0, :h, :w, 0]

            try:
                for _ in self._pages[first + k].segments(func=store, maxworkers=self.threads):
                    pass
            except MovieError:
                raise
            except (ValueError, RuntimeError, OSError, IndexError) as exc:
                raise MovieError(f"{self.path}: cannot decode frame {first + k}: {exc}") from exc

    def close(self) -> None:
        self._tif.close()


# --------------------------------------------------------------------------------------------- EER


class _EerSource:
    """EER raw frames summed into fractions, rendered at sampling 1, 2 or 4.

    tifffile parses the BigTIFF structure; imagecodecs.eer_decode renders each raw frame's
    strip(s) and, given an integer `out`, adds its electrons into that array, so a fraction is
    accumulated without materialising its raw frames.  Fractions are decoded in parallel
    (one thread per fraction, each with its own accumulator).
    """

    def __init__(self, path: Path, grouping: int, sampling: int, threads: int):
        _check_eer_options(path, grouping, sampling)
        self.path = path
        self.grouping = int(grouping)
        self.threads = max(1, int(threads))
        tif = _open_tiff(path)
        try:
            pages = [p for p in tif.pages if p.compression in EER_COMPRESSIONS]
            if not pages:
                raise MovieError(f"{path}: no EER-compressed frames (compression 65000-65002)")
            _check_tiff_structure(tif, path, pages)
            first = pages[0]
            layout = EER_COMPRESSIONS[first.compression]
            if layout is None:  # 65002 stores its bit widths in tags
                layout = (int(first.tags.valueof(65007, 7)), int(first.tags.valueof(65008, 2)),
                          int(first.tags.valueof(65009, 2)))
            self.skip_bits, self.horz_bits, self.vert_bits = layout
            level = EER_SAMPLING_LEVELS[sampling]
            self.superres = level
            self.factor_y = 2 ** min(self.vert_bits, level)
            factor_x = 2 ** min(self.horz_bits, level)
            ny, nx = int(first.imagelength), int(first.imagewidth)
            self.strips: list[list[tuple[int, int, int, int]]] = []
            for i, page in enumerate(pages):
                if (int(page.imagelength), int(page.imagewidth)) != (ny, nx) or page.compression != first.compression:
                    raise MovieError(f"{path}: EER frame {i} differs in size or compression from frame 0")
                rows = int(page.rowsperstrip) or ny
                self.strips.append([
                    (int(o), int(c), k * rows * self.factor_y, min((k + 1) * rows, ny) * self.factor_y)
                    for k, (o, c) in enumerate(zip(page.dataoffsets, page.databytecounts))])
        finally:
            tif.close()
        n_raw = len(self.strips)
        n_fractions = n_raw // self.grouping
        if n_fractions == 0:
            raise MovieError(f"{path}: zero fractions: {n_raw} raw EER frames, grouping {self.grouping}")
        self.is_float = False
        self.header = MovieHeader(str(path), "eer", n_fractions, n_raw, (ny * self.factor_y, nx * factor_x),
                                  "uint16", None, self.grouping, sampling)
        self._acc: np.ndarray | None = None  # uint16 per-fraction accumulators, reused across chunks
        self._fd = os.open(path, os.O_RDONLY)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def _decode_raw_frame(self, raw_index: int, acc: np.ndarray) -> None:
        width = acc.shape[1]
        for offset, count, row0, row1 in self.strips[raw_index]:
            data = os.pread(self._fd, count, offset)
            if len(data) != count:
                raise MovieError(f"{self.path}: truncated EER: raw frame {raw_index} is cut off")
            if count % 2:
                data += b"\0"
            try:
                imagecodecs.eer_decode(data, (row1 - row0, width), self.skip_bits, self.horz_bits,
                                       self.vert_bits, superres=self.superres, out=acc[row0:row1])
            except (ValueError, RuntimeError) as exc:  # EerError is a RuntimeError
                raise MovieError(f"{self.path}: cannot decode EER raw frame {raw_index}: {exc}") from exc

    def _decode_fraction(self, fraction: int, acc: np.ndarray) -> None:
        acc[...] = 0
        for raw in range(fraction * self.grouping, (fraction + 1) * self.grouping):
            self._decode_raw_frame(raw, acc)

    def read_into(self, first: int, out: np.ndarray) -> None:
        count = out.shape[0]
        ny, nx = self.header.shape_yx
        if self._acc is None or self._acc.shape[0] < count:
            self._acc = np.empty((count, ny, nx), np.uint16)
        jobs = [(first + i, self._acc[i]) for i in range(count)]
        if self._pool is None:
            for job in jobs:
                self._decode_fraction(*job)
        else:
            list(self._pool.map(lambda job: self._decode_fraction(*job), jobs))
        out[...] = self._acc[:count]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        os.close(self._fd)


# ------------------------------------------------------------------------------------------ public


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


def calc_frame_range(n_frames: int, ddstartframe: int = 0, ddnframe: int | None = None) -> tuple[int, int]:
    """(first_frame, last_frame inclusive) from classic --ddstartframe / --ddnframe (None = to the end)."""
    last = n_frames - 1 if ddnframe is None else ddstartframe + int(ddnframe) - 1
    return int(ddstartframe), int(last)


def _check_range(header: MovieHeader, first_frame: int, last_frame: int | None) -> tuple[int, int]:
    last = header.n_frames - 1 if last_frame is None else int(last_frame)
    first = int(first_frame)
    if not (0 <= first <= last < header.n_frames):
        raise MovieError(f"{header.path}: frame range {first}-{last} is outside the movie's "
                         f"{header.n_frames} frames (0-{header.n_frames - 1})")
    return first, last


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


# ------------------------------------------------------------------------------ reference images


def _read_image_2d(path, what: str) -> np.ndarray:
    """A single 2-D image (MRC, also gzip/bzip2-compressed, or first TIFF page) as float32 (y, x)."""
    path = Path(path)
    if not path.is_file():
        raise MovieError(f"{path}: {what} file does not exist")
    name = path.name.lower()
    try:
        if name.endswith((".tif", ".tiff")):
            with tifffile.TiffFile(path) as tif:
                image = tif.pages[0].asarray()
        else:
            with mrcfile.open(path, permissive=True) as mrc:
                if mrc.data is None:
                    raise MovieError(f"{path}: {what} MRC has no readable data (truncated?)")
                image = np.asarray(mrc.data)
    except MovieError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise MovieError(f"{path}: cannot read {what}: {exc}") from exc
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise MovieError(f"{path}: {what} must be a single 2-D image, not shape {image.shape}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise MovieError(f"{path}: {what} contains NaN or infinite values")
    return image


def read_gain(path) -> np.ndarray:
    """Gain reference (multiply raw counts by it) as float32 (y, x), as stored (not yet oriented)."""
    return _read_image_2d(path, "gain reference")


def read_dark(path) -> np.ndarray:
    """Dark reference as float32 (y, x), as stored; subtract a per-frame dark (divide a sum dark by n)."""
    return _read_image_2d(path, "dark reference")


def calc_gain_for_frames(gain: np.ndarray, frame_shape_yx: tuple[int, int], rotate: int, flip: int,
                         path_for_errors="gain") -> np.ndarray:
    """The gain oriented like the frames (rotate quarter turns CCW, then flip; MotionCor2's RotGain/FlipGain).

    A gain exactly 2x or 4x smaller than the frames (EER rendered at super-resolution with a
    physical-pixel gain) is upsampled nearest-neighbour.  Otherwise a size mismatch raises
    GainMismatchError listing every rotate/flip setting tried and which would fit.
    """
    frame_shape_yx = tuple(int(v) for v in frame_shape_yx)
    oriented, factor = calc_gain_candidates(gain, frame_shape_yx, rotate, flip)
    if factor == 1:
        return oriented.astype(np.float32, copy=False)
    if factor in (2, 4):
        return calc_upsampled_gain(oriented, factor)
    fy, fx = frame_shape_yx
    gy, gx = gain.shape
    tried = calc_oriented_gain_shapes(gain.shape)
    listing = ", ".join(f"rotate={r} flip={f} -> {s[0]}x{s[1]}" for r, f, s in tried)
    fitting = [(r, f) for r, f, s in tried if s == frame_shape_yx]
    msg = (f"{path_for_errors}: gain reference does not fit the frames: frames are {fy}x{fx} (y x), "
           f"gain on disk is {gy}x{gx}, and with rotate={rotate} flip={flip} it is "
           f"{oriented.shape[0]}x{oriented.shape[1]}. Orientations tried: {listing}. ")
    if fitting:
        msg += ("These settings WOULD match the frame size: "
                + ", ".join(f"rotate={r} flip={f}" for r, f in fitting)
                + " - check the camera's 'frame rotate'/'frame flip' (a wrong orientation is the usual cause).")
    else:
        msg += "None of them matches."
        for factor in (2, 4):
            if any((s[0] == fy * factor and s[1] == fx * factor) for _, _, s in tried):
                msg += (f" The gain is {factor}x larger than the frames: a super-resolution gain for "
                        f"frames rendered at the physical pixel size (EER sampling too low, or binned frames).")
            if any((s[0] * factor == fy and s[1] * factor == fx) for _, _, s in tried):
                msg += (f" The frames are {factor}x larger than the gain in a different orientation: "
                        f"check rotate/flip (super-resolution EER rendering).")
        msg += " Is this the gain for this camera and mode?"
    raise GainMismatchError(msg)


# ---------------------------------------------------------------------------------------- defects


def _parse_int_list(text, name: str) -> list:
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        value = text
    else:
        text = str(text).strip()
        if text in ("", "None", "[]", "()"):
            return []
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            raise ValueError(f"corrector plan {name} is not a literal list: {text[:80]!r}") from exc
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"corrector plan {name} must be a list, not {type(value).__name__}")
    return list(value)


def _is_index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def calc_defect_list_from_plan(bad_rows_text, bad_cols_text, bad_pixels_text) -> DefectList:
    """Parse Leginon CorrectorPlanData bad_rows / bad_cols / bad_pixels literal lists (never eval).

    Rows and columns: lists of non-negative ints.  Pixels: list of (x, y) pairs.
    Anything else raises ValueError naming the field.
    """
    rows = _parse_int_list(bad_rows_text, "bad_rows")
    cols = _parse_int_list(bad_cols_text, "bad_cols")
    pixels = _parse_int_list(bad_pixels_text, "bad_pixels")
    for name, values in (("bad_rows", rows), ("bad_cols", cols)):
        for v in values:
            if not _is_index(v):
                raise ValueError(f"corrector plan {name} holds {v!r}; expected non-negative integers")
    pairs = []
    for p in pixels:
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_index(v) for v in p)):
            raise ValueError(f"corrector plan bad_pixels holds {p!r}; expected (x, y) integer pairs")
        pairs.append((int(p[0]), int(p[1])))
    return DefectList([int(v) for v in rows], [int(v) for v in cols], pairs)


def calc_defect_mask(defects: DefectList, shape_yx: tuple[int, int]) -> np.ndarray:
    """Boolean (y, x) mask, True = defective, from a DefectList (pixels given as (x, y))."""
    ny, nx = shape_yx
    mask = np.zeros((ny, nx), bool)
    for name, values, limit in (("row", defects.bad_rows, ny), ("column", defects.bad_cols, nx)):
        for v in values:
            if not 0 <= v < limit:
                raise ValueError(f"bad {name} {v} is outside the {ny}x{nx} (y x) frame")
    mask[list(defects.bad_rows), :] = True
    mask[:, list(defects.bad_cols)] = True
    for x, y in defects.bad_pixels:
        if not (0 <= x < nx and 0 <= y < ny):
            raise ValueError(f"bad pixel (x={x}, y={y}) is outside the {ny}x{nx} (y x) frame")
        mask[y, x] = True
    return mask


def read_defect_map(path) -> np.ndarray:
    """Defect map (MRC, gzip'd MRC or TIFF; MotionCor2 -DefectMap style) as bool (y, x), True = bad."""
    return _read_image_2d(path, "defect map") != 0


# ------------------------------------------------------------------------------------ completeness


def is_movie_complete(path) -> bool:
    """True only if the movie is fully written and decodable, for the session watcher.

    MRC: file size equals the header-implied size.  TIFF/EER: every page's data lies within the
    file, the page chain ends properly, and the last frame decodes.  Never raises.
    """
    path = Path(path)
    try:
        if not path.is_file():
            return False
        fmt = _sniff_format(path)
        if fmt == "mrc":
            _, _, expected = _read_mrc_layout(path)
            return path.stat().st_size == expected and expected > MRC_HEADER_BYTES
        source = _open_source(path, 1, 1, 1)
        try:
            n = source.header.n_frames
            if fmt == "eer":
                acc = np.zeros(source.header.shape_yx, np.uint16)
                source._decode_raw_frame(n - 1, acc)
            else:
                source.read_into(n - 1, np.empty((1,) + source.header.shape_yx, np.float32))
        finally:
            source.close()
        return True
    except (MovieError, OSError, ValueError, RuntimeError, struct.error):
        return False
