"""TIFF movies: one page per frame, decoded strip by strip into float32; structure (truncation) checks."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tifffile

from appion.base.io.movies.common import MovieError, MovieHeader


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
