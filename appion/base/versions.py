"""Program versions for memo keys: what identifies the code that computed a result.

Built-in engines are identified by appion's own version; an external program by the executable
found on PATH (its resolved path, size and modification time: a reinstalled or upgraded program is a
new version even when it prints no version number).  No Django, cheap enough to call once per run.
"""
from __future__ import annotations

import hashlib
import os
import shutil


def calc_appion_version(settings=None) -> str:
    """appion's version (the version of every built-in engine; settings are not needed)."""
    import appion

    return f"appion {appion.__version__}"


def calc_executable_version(program: str) -> str:
    """`name@<hash of resolved path, size, mtime>`, or `name (not found)` when it is not on PATH."""
    found = shutil.which(program) if os.sep not in program else (program if os.path.exists(program) else None)
    if not found:
        return f"{program} (not found)"
    real = os.path.realpath(found)
    st = os.stat(real)
    digest = hashlib.sha1(f"{real}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return f"{os.path.basename(program)}@{digest}"
