"""Warming an engine up once per numba cache: concurrent workers of a fresh install wait for the first one's
compiled functions instead of each compiling them again.  No Django."""
from __future__ import annotations

import fcntl
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def hold_warm_up_lock(name: str):
    """One process at a time warms up engine `name` against the numba cache directory (the lock file sits in
    NUMBA_CACHE_DIR, shared by every node that shares it)."""
    import numba

    folder = Path(numba.config.CACHE_DIR or tempfile.gettempdir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f".appion-warm-up-{name}.lock", "a")
    except OSError:  # a read-only cache: nothing to coordinate
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks
            pass
        yield
    finally:
        handle.close()
