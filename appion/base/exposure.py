"""One exposure as every step's worker sees it: the movie, its optics and where its images go.

Read from the Leginon tables by the loop process (appion.loop.db) and sent to Dask workers with each
task, so workers never touch the database.  Pure data: no Django, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExposureInput:
    """Everything a worker needs to know about one exposure (movie) of a session.

    pixel_size_A: of the movie frames as recorded (camera binning applied).  defects: the corrector
    plan's bad rows / cols / pixels as the literal text Leginon stores.  arrived: Unix seconds when the
    exposure was registered.
    """

    image_id: int
    filename: str
    movie_path: str
    image_dir: str
    preset_name: str
    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    dose_e_per_A2: float | None
    n_frames: int | None
    gain_path: str | None
    dark_path: str | None
    frame_rotate: int
    frame_flip: int
    defects: tuple[str | None, str | None, str | None]
    nominal_defocus_m: float | None
    tilt_deg: float
    arrived: float
