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


def calc_oriented_gain_shape(gain_shape_yx: tuple[int, int], rotate: int) -> tuple[int, int]:
    """The gain's shape after `rotate` quarter turns (flips keep the shape)."""
    ny, nx = (int(v) for v in gain_shape_yx)
    return (nx, ny) if int(rotate) % 2 else (ny, nx)


def calc_gain_upsampling(gain_shape_yx: tuple[int, int], frame_shape_yx: tuple[int, int], rotate: int,
                         eer_sampling: int = 1) -> int:
    """How the oriented gain relates to the frames: 1 same size, `eer_sampling` (2 or 4) for an EER movie rendered
    at super-resolution with a physical-pixel gain, 0 no fit.

    Upsampling by an integer factor is only for EER super-resolution rendering: a gain exactly 2x smaller than
    TIFF or MRC frames is a gain for another camera mode (or a binned gain), not something to stretch.
    """
    oriented = calc_oriented_gain_shape(gain_shape_yx, rotate)
    frame = tuple(int(v) for v in frame_shape_yx)
    if oriented == frame:
        return 1
    factor = int(eer_sampling)
    if factor in (2, 4) and (oriented[0] * factor, oriented[1] * factor) == frame:
        return factor
    return 0


def calc_gain_candidates(gain: np.ndarray, frame_shape_yx: tuple[int, int], rotate: int, flip: int,
                         eer_sampling: int = 1):
    """Oriented gain and how it relates to the frame size: (oriented, factor) as calc_gain_upsampling."""
    oriented = calc_oriented_gain(gain, rotate, flip)
    return oriented, calc_gain_upsampling(gain.shape, frame_shape_yx, rotate, eer_sampling)


def calc_gain_mismatch_message(gain_shape_yx: tuple[int, int], frame_shape_yx: tuple[int, int], rotate: int,
                               flip: int, path_for_errors="gain", eer_sampling: int = 1) -> str:
    """Why a gain of that shape does not fit frames of that shape: both shapes, every orientation tried, and
    which settings would fit."""
    fy, fx = (int(v) for v in frame_shape_yx)
    gy, gx = (int(v) for v in gain_shape_yx)
    oy, ox = calc_oriented_gain_shape(gain_shape_yx, rotate)
    tried = calc_oriented_gain_shapes((gy, gx))
    listing = ", ".join(f"rotate={r} flip={f} -> {s[0]}x{s[1]}" for r, f, s in tried)
    fitting = [(r, f) for r, f, s in tried if s == (fy, fx)]
    msg = (f"{path_for_errors}: gain reference does not fit the frames: frames are {fy}x{fx} (y x), "
           f"gain on disk is {gy}x{gx}, and with rotate={rotate} flip={flip} it is {oy}x{ox}. "
           f"Orientations tried: {listing}. ")
    if fitting:
        return msg + ("These settings WOULD match the frame size: "
                      + ", ".join(f"rotate={r} flip={f}" for r, f in fitting)
                      + " - check the camera's 'frame rotate'/'frame flip' (a wrong orientation is the usual cause).")
    msg += "None of them matches."
    for factor in (2, 4):
        if any((s[0] == fy * factor and s[1] == fx * factor) for _, _, s in tried):
            msg += (f" The gain is {factor}x larger than the frames: a super-resolution gain for "
                    f"frames rendered at the physical pixel size (EER sampling too low, or binned frames).")
        if any((s[0] * factor == fy and s[1] * factor == fx) for _, _, s in tried):
            if eer_sampling == 1:
                msg += (f" The frames are {factor}x larger than the gain: a gain is upsampled only for EER movies "
                        f"rendered at super-resolution (EER sampling {factor}); for other movies it is the gain of "
                        f"another camera mode (or binned).")
            else:
                msg += (f" The frames are {factor}x larger than the gain but the EER sampling is {eer_sampling}: "
                        f"check rotate/flip and the sampling.")
    return msg + " Is this the gain for this camera and mode?"


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
