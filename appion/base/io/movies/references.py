"""Gain and dark references: reading single 2-D images, orienting the gain like the frames."""
from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import tifffile

from appion.base.io.movies.calc import calc_gain_candidates, calc_gain_mismatch_message, calc_upsampled_gain
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
                         path_for_errors="gain", eer_sampling: int = 1) -> np.ndarray:
    """The gain oriented like the frames (rotate quarter turns CCW, then flip; MotionCor2's RotGain/FlipGain).

    eer_sampling: the frames are an EER movie rendered at this sampling (1 for TIFF and MRC movies).  Only
    then is a gain exactly that many times smaller (recorded at the physical pixel size) upsampled
    nearest-neighbour; any other size mismatch, including a 2x smaller gain for TIFF/MRC frames, raises
    GainMismatchError with both shapes, every rotate/flip setting tried and which would fit.
    """
    frame_shape_yx = tuple(int(v) for v in frame_shape_yx)
    oriented, factor = calc_gain_candidates(gain, frame_shape_yx, rotate, flip, eer_sampling)
    if factor == 1:
        return oriented.astype(np.float32, copy=False)
    if factor in (2, 4):
        return calc_upsampled_gain(oriented, factor)
    raise GainMismatchError(calc_gain_mismatch_message(gain.shape, frame_shape_yx, rotate, flip, path_for_errors,
                                                       eer_sampling))


def read_gain_shape(path) -> tuple[int, int]:
    """The (y, x) shape of a gain reference without keeping its pixels (the file is fully read and checked)."""
    return tuple(int(v) for v in read_gain(path).shape)
