"""The web viewer's writes: thumbnail PNGs in a disk cache, and a person's accept/reject of an exposure (the one
database write, `store_verdict`).

`appion serve` refuses every statement that is not a read on every request (appion.web.server.refuse_writes);
`store_verdict` lifts that refusal for its own statements only, on this request's thread, after the view has
checked who asks (appion.web.views.verdict_view).
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import mrcfile
import numpy as np

from appion.base.io.files import write_atomic
from appion.web.calc import calc_thumbnail


class ThumbnailError(Exception):
    """The aligned sum cannot be turned into a thumbnail (message names the file)."""


def calc_thumbnail_cache_path(cache_dir: Path, image_id: int, mrc_path: Path, size_px: int) -> Path:
    """Cache name per image, size and file path (two databases never share a cached picture)."""
    tag = hashlib.sha1(str(mrc_path).encode()).hexdigest()[:10]
    return cache_dir / f"{image_id}_{size_px}_{tag}.png"


def read_image_2d(mrc_path: Path) -> np.ndarray:
    """(y, x) float32 of an MRC (the first section of a stack)."""
    try:
        with mrcfile.mmap(mrc_path, mode="r", permissive=True) as mrc:
            data = mrc.data
            if data is None:
                raise ThumbnailError(f"{mrc_path}: MRC file has no data block")
            image = np.asarray(data[0] if data.ndim == 3 else data, dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise ThumbnailError(f"{mrc_path}: cannot read MRC image: {exc}") from None
    if image.ndim != 2:
        raise ThumbnailError(f"{mrc_path}: expected a 2-D image, found shape {image.shape}")
    return image


def write_png_gray(path: Path, pixels: np.ndarray) -> Path:
    """Write a uint8 (y, x) image as a greyscale PNG, atomically (temporary name, then rename)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import image as mimage

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: mimage.imsave(tmp, pixels, cmap="gray", vmin=0, vmax=255, format="png"))


def save_thumbnail(cache_dir: Path, image_id: int, mrc_path: Path, size_px: int) -> Path:
    """The cached thumbnail of an aligned sum, made on first request (or when the MRC is newer)."""
    try:
        mrc_mtime = mrc_path.stat().st_mtime
    except OSError:
        raise ThumbnailError(f"{mrc_path}: aligned sum not found") from None
    target = calc_thumbnail_cache_path(cache_dir, image_id, mrc_path, size_px)
    try:
        if target.stat().st_mtime >= mrc_mtime:
            return target
    except FileNotFoundError:
        pass
    return write_png_gray(target, calc_thumbnail(read_image_2d(mrc_path), size_px))


@contextlib.contextmanager
def writes_allowed():
    """The read-only guard lifted on this thread's database connections for the duration (restored after)."""
    from django.db import connections

    from appion.web.server import refuse_writes

    saved = []
    for alias in connections:
        conn = connections[alias]
        saved.append((conn, list(conn.execute_wrappers)))
        conn.execute_wrappers[:] = [w for w in conn.execute_wrappers if w is not refuse_writes]
    try:
        yield
    finally:
        for conn, wrappers in saved:
            conn.execute_wrappers[:] = wrappers


def store_verdict(image_id: int, accepted: bool, reason: str | None, user: str) -> int:
    """A person's verdict on an exposure: appion.quality.steprows.store_manual_verdict (ApQualityVerdictData,
    and Leginon's ViewerImageStatus hidden when rejected, shown again when accepted).  Returns the row id."""
    from appion.quality.steprows import store_manual_verdict

    with writes_allowed():
        return store_manual_verdict(image_id, accepted, reason, user=user)
