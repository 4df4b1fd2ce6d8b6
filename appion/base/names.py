"""Names that become paths (session names, run names, step and service names) are checked here, in one place.

A name is one path component: letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 100
characters, never `.`/`..`.  `check_inside` checks that a path derived from user input stays under one of
the configured roots.  No I/O besides resolving paths; no Django.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class BadNameError(ValueError):
    """A name that would become a path is not a plain name; the message names the option and the problem."""


def check_name(kind: str, value: object) -> str:
    """`value` if it is a plain name, else BadNameError naming `kind` (e.g. "--runname")."""
    if not isinstance(value, str) or not value:
        raise BadNameError(f"{kind} is empty")
    if value in (".", "..") or not _NAME.fullmatch(value):
        shown = value if len(value) <= 120 else value[:117] + "..."
        raise BadNameError(f"{kind} {shown!r} is not a plain name (letters, digits, '.', '_', '-'; no '/' or '..'; "
                           f"at most 100 characters, starting with a letter or digit)")
    return value


def check_inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], what: str = "path") -> Path:
    """The resolved path if it lies under one of `roots` (resolved too), else BadNameError naming it."""
    resolved = Path(path).resolve()
    allowed = [Path(r).resolve() for r in roots]
    for root in allowed:
        if resolved == root or root in resolved.parents:
            return resolved
    raise BadNameError(f"{what} {resolved} is outside the configured directories "
                       f"({', '.join(str(r) for r in allowed) or 'none configured'})")
