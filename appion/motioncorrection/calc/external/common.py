"""Helpers shared by the MotionCor and RELION wrappers: number formatting, movie kind, log tails."""
from __future__ import annotations

from pathlib import Path

LOG_TAIL_LINES = 30


def _fmt(value: float) -> str:
    """Numbers as MotionCor reads them: integers without a decimal point, others with ≤6 significant digits."""
    if float(value).is_integer():
        return str(int(value))
    return format(float(value), ".6g")


def calc_movie_kind(movie_path) -> str:
    """'mrc', 'tiff' or 'eer' from the file name (Leginon: <name>.frames.<mrc|tif|eer>)."""
    suffix = Path(movie_path).suffix.lower()
    if suffix in (".mrc", ".mrcs"):
        return "mrc"
    if suffix in (".tif", ".tiff"):
        return "tiff"
    if suffix == ".eer":
        return "eer"
    raise ValueError(f"{movie_path}: unknown movie format {suffix!r} (expected .mrc, .mrcs, .tif, .tiff or .eer)")


def calc_log_tail(text: str, n_lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a program's log, for error messages."""
    return "\n".join(text.rstrip().splitlines()[-n_lines:])
