"""Reading the image a CTF estimate is made from: a micrograph, or a movie's frame-group averages.

A single-image MRC (nz = 1) is a micrograph; a stack MRC, a TIFF or an EER file is a movie,
decoded through appion.base.io.movies, whose frames are averaged in consecutive groups of
`num_frame_avg` (CTFFIND's --num_frame_avg): the spectra of the group averages are summed by
the caller, so drift between groups does not blur the rings.

Worker side: no Django here (what the database holds is appion.ctfestimation.retrieve).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import mrcfile
import numpy as np

from appion.base.io import movies


@dataclass(frozen=True)
class ImageSource:
    """What an input file holds: kind 'micrograph' or 'movie', shape_yx, n_frames, n_groups."""

    path: Path
    kind: str
    shape_yx: tuple[int, int]
    n_frames: int
    n_groups: int
    pixel_size_A: float | None


def _is_single_image_mrc(path: Path) -> bool:
    name = path.name.lower()
    if not name.endswith((".mrc", ".mrcs", ".map", ".st")):
        return False
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            header = mrc.header
            return header is not None and int(header.nz) == 1
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable MRC file: {exc}") from exc


def read_image_source(path, num_frame_avg: int = 1) -> ImageSource:
    """Describe an input file without decoding its pixels.

    Raises ValueError naming the file when it does not exist or cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file does not exist")
    if num_frame_avg < 1:
        raise ValueError(f"{path}: number of frames to average must be ≥ 1, got {num_frame_avg}")
    if _is_single_image_mrc(path):
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            ny, nx = int(mrc.header.ny), int(mrc.header.nx)
            apix = float(mrc.voxel_size.x)
        return ImageSource(path=path, kind="micrograph", shape_yx=(ny, nx), n_frames=1, n_groups=1,
                           pixel_size_A=apix if apix > 0 else None)
    header = movies.read_movie_header(path)
    n_groups = header.n_frames // num_frame_avg
    if n_groups < 1:
        raise ValueError(f"{path}: movie has {header.n_frames} frames, fewer than the {num_frame_avg} "
                         f"to average per group")
    return ImageSource(path=path, kind="movie", shape_yx=header.shape_yx, n_frames=header.n_frames,
                       n_groups=n_groups, pixel_size_A=header.pixel_size_A)


def read_micrograph(path) -> np.ndarray:
    """A single-image MRC as float32 (y, x).  Raises ValueError naming the file when unreadable."""
    path = Path(path)
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            data = mrc.data
            if data is None:
                raise ValueError("no readable data (truncated file?)")
            image = np.asarray(data, dtype=np.float32)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read micrograph: {exc}") from exc
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"{path}: expected a single 2-D image, got shape {image.shape}")
    return image


def iter_frame_group_averages(path, num_frame_avg: int, threads: int = 1) -> Iterator[np.ndarray]:
    """Yield float32 (y, x) averages of consecutive groups of num_frame_avg frames of a movie.

    Frames left over after the last full group are dropped (as CTFFIND does).
    """
    header = movies.read_movie_header(path)
    n_groups = header.n_frames // num_frame_avg
    last = n_groups * num_frame_avg - 1
    for _, chunk in movies.iter_frame_chunks(path, 0, last, chunk_frames=num_frame_avg, threads=threads):
        yield chunk.mean(axis=0, dtype=np.float32) if chunk.shape[0] > 1 else chunk[0]
