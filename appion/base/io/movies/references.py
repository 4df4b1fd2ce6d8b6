"""Gain and dark references: reading single 2-D images, orienting the gain like the frames."""
from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import tifffile

from appion.base.io.movies.calc import calc_gain_candidates, calc_oriented_gain_shapes, calc_upsampled_gain
from appion.base.io.movies.common import GainMismatchError, MovieError


# ------------------------------------------------------------------------------ reference images


def _read_image_2d(path, what: str) -> np.ndarray:
    """A single 2-D image (MRC, also gzip/bzip2-compressed, or first TIFF page) as float32 (y, x)."""
    path = Path(path)
    if not path.is_file():
        raise MovieError(f"{path}: {what} file does not exist")
    name = path.name.lower()
    try:
        if name.endswith((".tif", ".tiff")):
            with tifffile.TiffFile(path) as tif:
                image = tif.pages[0].asarray()
        else:
            with mrcfile.open(path, permissive=True) as mrc:
                if mrc.data is None:
                    raise MovieError(f"{path}: {what} MRC has no readable data (truncated?)")
                image = np.asarray(mrc.data)
    except MovieError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise MovieError(f"{path}: cannot read {what}: {exc}") from exc
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise MovieError(f"{path}: {what} must be a single 2-D image, not shape {image.shape}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise MovieError(f"{path}: {what} contains NaN or infinite values")
    return image


def read_gain(path) -> np.ndarray:
    """Gain reference (multiply raw counts by it) as float32 (y, x), as stored (not yet oriented)."""
    return _read_image_2d(path, "gain reference")


def read_dark(path) -> np.ndarray:
    """Dark reference as float32 (y, x), as stored; subtract a per-frame dark (divide a sum dark by n)."""
    return _read_image_2d(path, "dark reference")


def calc_gain_for_frames(gain: np.ndarray, frame_shape_yx: tuple[int, int], rotate: int, flip: int,
                         path_for_errors="gain") -> np.ndarray:
    """The gain oriented like the frames (rotate quarter turns CCW, then flip; MotionCor2's RotGain/FlipGain).

    A gain exactly 2x or 4x smaller than the frames (EER rendered at super-resolution with a
    physical-pixel gain) is upsampled nearest-neighbour.  Otherwise a size mismatch raises
    GainMismatchError listing every rotate/flip setting tried and which would fit.
    """
    frame_shape_yx = tuple(int(v) for v in frame_shape_yx)
    oriented, factor = calc_gain_candidates(gain, frame_shape_yx, rotate, flip)
    if factor == 1:
        return oriented.astype(np.float32, copy=False)
    if factor in (2, 4):
        return calc_upsampled_gain(oriented, factor)
    fy, fx = frame_shape_yx
    gy, gx = gain.shape
    tried = calc_oriented_gain_shapes(gain.shape)
    listing = ", ".join(f"rotate={r} flip={f} -> {s[0]}x{s[1]}" for r, f, s in tried)
    fitting = [(r, f) for r, f, s in tried if s == frame_shape_yx]
    msg = (f"{path_for_errors}: gain reference does not fit the frames: frames are {fy}x{fx} (y x), "
           f"gain on disk is {gy}x{gx}, and with rotate={rotate} flip={flip} it is "
           f"{oriented.shape[0]}x{oriented.shape[1]}. Orientations tried: {listing}. ")
    if fitting:
        msg += ("These settings WOULD match the frame size: "
                + ", ".join(f"rotate={r} flip={f}" for r, f in fitting)
                + " - check the camera's 'frame rotate'/'frame flip' (a wrong orientation is the usual cause).")
    else:
        msg += "None of them matches."
        for factor in (2, 4):
            if any((s[0] == fy * factor and s[1] == fx * factor) for _, _, s in tried):
                msg += (f" The gain is {factor}x larger than the frames: a super-resolution gain for "
                        f"frames rendered at the physical pixel size (EER sampling too low, or binned frames).")
            if any((s[0] * factor == fy and s[1] * factor == fx) for _, _, s in tried):
                msg += (f" The frames are {factor}x larger than the gain in a different orientation: "
                        f"check rotate/flip (super-resolution EER rendering).")
        msg += " Is this the gain for this camera and mode?"
    raise GainMismatchError(msg)
