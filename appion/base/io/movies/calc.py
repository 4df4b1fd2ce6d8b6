"""Pure numerics for movie frames: defect masks and their repair, gain shape reasoning.

No I/O here; appion.base.io.movies reads the files and calls these.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from appion.base.physics import calc_oriented_gain

# Every rotate/flip setting a user can give (MotionCor2's -RotGain 0-3 and -FlipGain 0-2).
# flip 2 equals flip 1 plus a half turn, so these 12 settings give 8 distinct orientations.
GAIN_ORIENTATIONS: tuple[tuple[int, int], ...] = tuple((r, f) for f in (0, 1, 2) for r in (0, 1, 2, 3))


def calc_oriented_gain_shapes(gain_shape_yx: tuple[int, int]) -> list[tuple[int, int, tuple[int, int]]]:
    """(rotate, flip, oriented shape) for every rotate/flip setting; odd quarter turns swap y and x."""
    ny, nx = gain_shape_yx
    return [(r, f, (nx, ny) if r % 2 else (ny, nx)) for r, f in GAIN_ORIENTATIONS]


def calc_upsampled_gain(gain: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling of a gain (y, x) by an integer factor -> (y*f, x*f) float32.

    Used when EER frames are rendered at super-resolution but the gain was recorded at the
    physical pixel size: every sub-pixel of a physical pixel shares that pixel's gain.
    """
    return np.ascontiguousarray(np.repeat(np.repeat(gain, factor, axis=0), factor, axis=1), dtype=np.float32)


def calc_gain_candidates(gain: np.ndarray, frame_shape_yx: tuple[int, int], rotate: int, flip: int):
    """Oriented gain and how it relates to the frame size: (oriented, factor).

    factor 1: same size; 2 or 4: the frames are exactly that many times larger (super-resolution
    rendering of a physical-pixel gain); 0: no simple relation.
    """
    oriented = calc_oriented_gain(gain, rotate, flip)
    if oriented.shape == tuple(frame_shape_yx):
        return oriented, 1
    for factor in (2, 4):
        if (oriented.shape[0] * factor, oriented.shape[1] * factor) == tuple(frame_shape_yx):
            return oriented, factor
    return oriented, 0


@njit(cache=True)
def _fix_defects_inplace(frames, bad_y, bad_x, good, max_radius):
    """Replace frames[:, bad_y[i], bad_x[i]] by the mean of good pixels in the smallest square window.

    frames: (n, y, x) float32, modified in place.  good: (y, x) bool (False = defect).
    The window grows from radius 1 to max_radius; if no good pixel is found the frame's mean over
    good pixels is used, so a fully bad neighbourhood still gets a plausible value.
    """
    n, ny, nx = frames.shape
    n_bad = bad_y.shape[0]
    # radius at which each bad pixel first sees a good neighbour (same for all frames)
    radius = np.full(n_bad, -1, np.int64)
    for i in range(n_bad):
        y, x = bad_y[i], bad_x[i]
        for r in range(1, max_radius + 1):
            found = False
            for yy in range(max(0, y - r), min(ny, y + r + 1)):
                for xx in range(max(0, x - r), min(nx, x + r + 1)):
                    if good[yy, xx]:
                        found = True
                        break
                if found:
                    break
            if found:
                radius[i] = r
                break
    need_mean = False
    for i in range(n_bad):
        if radius[i] < 0:
            need_mean = True
    n_good = 0
    if need_mean:
        for yy in range(ny):
            for xx in range(nx):
                if good[yy, xx]:
                    n_good += 1
    for k in range(n):
        frame_mean = 0.0
        if need_mean and n_good > 0:
            total = 0.0
            for yy in range(ny):
                for xx in range(nx):
                    if good[yy, xx]:
                        total += frames[k, yy, xx]
            frame_mean = total / n_good
        for i in range(n_bad):
            y, x, r = bad_y[i], bad_x[i], radius[i]
            if r < 0:
                frames[k, y, x] = frame_mean
                continue
            total = 0.0
            count = 0
            for yy in range(max(0, y - r), min(ny, y + r + 1)):
                for xx in range(max(0, x - r), min(nx, x + r + 1)):
                    if good[yy, xx]:
                        total += frames[k, yy, xx]
                        count += 1
            frames[k, y, x] = total / count


def calc_fix_defects_inplace(frames: np.ndarray, mask: np.ndarray, max_radius: int = 8) -> None:
    """In-place variant of calc_fix_defects for the reader (frames: (n, y, x) float32, C order)."""
    if frames.ndim != 3 or frames.dtype != np.float32 or not frames.flags.c_contiguous:
        raise ValueError("frames must be a C-contiguous (n, y, x) float32 array")
    if mask.shape != frames.shape[1:]:
        raise ValueError(f"defect mask is {mask.shape[0]}x{mask.shape[1]} (y x) but frames are "
                         f"{frames.shape[1]}x{frames.shape[2]}")
    bad_y, bad_x = np.nonzero(mask)
    if bad_y.size == 0:
        return
    _fix_defects_inplace(frames, bad_y.astype(np.int64), bad_x.astype(np.int64),
                         ~mask.astype(bool), int(max_radius))


def calc_fix_defects(frame_or_frames: np.ndarray, mask: np.ndarray, max_radius: int = 8) -> np.ndarray:
    """Copy of the frame(s) with defective pixels replaced by the local mean of good neighbours.

    frame_or_frames: (y, x) or (n, y, x), any real dtype; mask: (y, x), nonzero = defect.
    Returns float32 of the same shape.  Only originally good pixels feed the means, so a bad
    column next to another bad column takes its values from the nearest good columns.
    """
    frames = np.array(frame_or_frames, dtype=np.float32, order="C", copy=True)
    flat = frames[None] if frames.ndim == 2 else frames
    calc_fix_defects_inplace(flat, np.asarray(mask).astype(bool), max_radius)
    return frames
