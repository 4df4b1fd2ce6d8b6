"""The motion step's typed records: its settings, what a worker returns, what later steps receive.

Pure dataclasses (no numpy, no Django): they travel between the loop process and Dask workers.
"""
from __future__ import annotations

from dataclasses import dataclass

from appion.base.steps import calc_hashed_settings


@dataclass(frozen=True)
class MotionSettings:
    """Motion-correction parameters of a run; `hashed()` are the ones that change results."""

    engine: str = "builtin"
    bin: float = 1.0
    doseweight: bool = True
    alignlabel: str = "a"
    ddstartframe: int = 0
    ddnframe: int | None = None
    total_dose_e_per_A2: float | None = None  # None: the preset's dose
    patches: tuple[int, int] = (0, 0)  # (cols, rows), 0 = global only
    bfactor_global_A2: float = 500.0
    bfactor_local_A2: float = 150.0
    iterations: int = 7
    tolerance_px: float = 0.5
    group: int = 1
    eer_sampling: int = 1
    rendered_frame_size: int = 1
    frame_ref: int | None = None  # MotionCor2 -FmRef (None: the program's default)
    mask_center: tuple[float, float] | None = None  # MotionCor2 -MaskCent
    mask_size: tuple[float, float] | None = None  # MotionCor2 -MaskSize
    gain_path: str | None = None  # classic --gainfile: this gain reference instead of the session's
    gain_rotate: int | None = None  # classic --rotgain (× 90°, the session's frame rotate convention)
    gain_flip: int | None = None  # classic --flipgain (1: top to bottom)
    bad_rows: str | None = None  # classic --bad_rows with --override_db: replaces the corrector plan's
    bad_cols: str | None = None  # classic --bad_cols with --override_db
    frames_dir: str | None = None  # classic --framepath: read the movies from this directory
    executable: str | None = None  # external engines: program path
    threads: int = 1  # numba/FFT threads a task may use

    def hashed(self) -> dict:
        return calc_hashed_settings(self, ("threads", "executable"))


@dataclass(frozen=True)
class MotionRecord:
    """What a worker returns for one movie (files are already in place)."""

    image_id: int
    sum_filename: str
    dw_filename: str | None
    shifts_px: tuple[tuple[float, float], ...]  # unbinned, displacement of frame i relative to frame 0
    out_pixel_size_A: float
    out_shape_yx: tuple[int, int]
    bin: float
    seconds: float
    worker: str
    log_path: str | None = None
    plot_path: str | None = None
    log_positions: tuple[tuple[float, float], ...] = ()  # the classic log's per-frame xy shifts (binned px)
    problem: str | None = None  # the aligned sum is unusable (blank, NaN, saturated ...): appion.base.imagecheck


@dataclass(frozen=True)
class AlignedImage:
    """The motion step's output for later steps: the aligned image to use (dose-weighted when there is one)."""

    source_id: int  # the movie's AcquisitionImageData id
    image_id: int  # the registered aligned image (AcquisitionImageData id)
    filename: str  # without .mrc, in the session's image directory
    pixel_size_A: float
    sum_image_id: int | None = None  # the non-dose-weighted sum, when a dose-weighted one is the output
    rejected: str | None = None  # why later steps must not use it (an unusable aligned sum)
