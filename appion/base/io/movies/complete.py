"""Whether a movie is fully written (for the session watcher)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from appion.base.io.movies.common import MovieError, _sniff_format
from appion.base.io.movies.frames import _open_source
from appion.base.io.movies.mrc import MRC_HEADER_BYTES, _read_mrc_layout


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
