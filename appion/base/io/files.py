"""Atomic file writes, shared by every writer: a reader (the web viewer, a watching importer, a
restarted loop) never sees half a file under its final name, and a failed write leaves nothing behind.

The temporary name is hidden (leading dot), unique per call (concurrent writers of the same file do not
collide) and ends in `.part`, so directory scans for movies and outputs skip it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def make_temp_path(path: Path) -> Path:
    """An empty file next to `path` with the permissions a plain open() would give (umask)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def write_atomic(path, write: Callable[[Path], None]) -> Path:
    """Call write(temporary path) next to `path`, then rename it into place; on error remove it and re-raise."""
    path = Path(path)
    tmp = make_temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path, text: str, mode: int | None = None) -> Path:
    """`text` into `path` atomically; `mode` (e.g. 0o755 for a job script) is set before the rename."""

    def write(tmp: Path) -> None:
        tmp.write_text(text)
        if mode is not None:
            os.chmod(tmp, mode)

    return write_atomic(path, write)
