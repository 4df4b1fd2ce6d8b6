"""EER movies: raw frames summed into fractions (grouping), rendered at sampling 1, 2 or 4."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np

from appion.base.io.movies.common import MovieError, MovieHeader
from appion.base.io.movies.tiff import _check_tiff_structure, _open_tiff

EER_COMPRESSIONS = {65000: (8, 2, 2), 65001: (7, 2, 2), 65002: None}  # (skip, horizontal, vertical) bits
EER_SAMPLING_LEVELS = {1: 0, 2: 1, 4: 2}  # rendering sampling -> super-resolution bits used


def _check_eer_options(path: Path, grouping: int, sampling: int) -> None:
    if not 1 <= int(grouping) <= 65535:  # fractions are accumulated in uint16 (<= 1 count per raw frame)
        raise MovieError(f"{path}: EER grouping must be 1-65535, not {grouping}")
    if sampling not in EER_SAMPLING_LEVELS:
        raise MovieError(f"{path}: EER sampling must be 1, 2 or 4, not {sampling}")


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
