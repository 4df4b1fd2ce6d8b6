"""The image a quality task measures, and reading it (worker side: no Django)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from appion.base.exposure import ExposureInput
from appion.base.steps import StepInput


@dataclass(frozen=True)
class MeasuredImage:
    """The image CTF estimation used: the motion step's aligned (dose-weighted) sum when motion is part of
    the run, else the exposure's own image."""

    image_id: int
    path: str
    pixel_size_A: float


def calc_measured_image(task: StepInput) -> MeasuredImage:
    inp: ExposureInput = task.exposure
    aligned = task.upstream.get("motion")
    if aligned is not None:
        if not hasattr(aligned, "filename"):
            raise ValueError(f"{inp.filename}: the motion step gave no aligned image to measure")
        return MeasuredImage(aligned.image_id, str(Path(inp.image_dir) / f"{aligned.filename}.mrc"),
                             aligned.pixel_size_A)
    return MeasuredImage(inp.image_id, str(Path(inp.image_dir) / f"{inp.filename}.mrc"), inp.pixel_size_A)


def read_image(path) -> np.ndarray:
    """A single-image MRC as stored (y, x) (its own dtype, so saturation and zeros are judged as written).

    Raises ValueError naming the file when it is missing or unreadable, or is not one 2-D image.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: image to measure does not exist")
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            if mrc.data is None:
                raise ValueError("no readable data (truncated file?)")
            image = np.array(mrc.data)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read the image: {exc}") from exc
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"{path}: expected a single 2-D image, got shape {image.shape}")
    return image
