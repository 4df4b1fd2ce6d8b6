"""What every movie reader shares: the errors, MovieHeader, DefectList, format sniffing and frame ranges.

Frame indices are 0-based; `last_frame` is inclusive (see calc_frame_range).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
