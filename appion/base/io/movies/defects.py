"""Defects: Leginon corrector-plan lists (parsed without eval), defect masks, MotionCor2-style defect maps."""
from __future__ import annotations

import ast

import numpy as np

from appion.base.io.movies.common import DefectList
from appion.base.io.movies.references import _read_image_2d


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
