"""The CTF step's typed records: settings, the image a worker estimates, what it returns, what is stored.

Pure dataclasses (no numpy, no Django): they travel between the loop process and Dask workers.
"""
from __future__ import annotations

from dataclasses import dataclass

from appion.base.steps import calc_hashed_settings


@dataclass(frozen=True)
class CtfSettings:
    """CTF-estimation parameters of a run; `hashed()` are the ones that change results."""

    engine: str = "builtin"
    amplitude_contrast: float = 0.07
    fieldsize: int = 512
    resmin_A: float = 30.0
    resmax_A: float = 5.0
    defocus_min_A: float = 5000.0
    defocus_max_A: float = 50000.0
    defstep_um: float | None = None  # classic: search nominal ∓ defstep × numstep (µm)
    numstep: int = 25
    dast_um: float | None = None  # astigmatism restraint (µm; None = none)
    phase_plate: bool = False
    min_phase_shift_deg: float = 0.0
    max_phase_shift_deg: float = 180.0
    phase_search_step_deg: float = 10.0
    bestdb: bool = False
    exhaustive: bool = False
    executable: str | None = None
    extra: tuple[tuple[str, object], ...] = ()  # engine-specific options (e.g. gctf flags)
    nominal_defocus_um: float | None = None  # classic --nominal: overrides the image's nominal defocus
    threads: int = 1

    def hashed(self) -> dict:
        return calc_hashed_settings(self, ("threads", "executable"))


@dataclass(frozen=True)
class CtfInput:
    """One image to CTF-estimate: its MRC file and optics."""

    source_id: int  # the exposure (movie) it belongs to
    image_id: int | None  # the image row the ApCtfData row will reference
    filename: str
    image_path: str
    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    nominal_defocus_m: float | None


@dataclass(frozen=True)
class CtfRecord:
    """What a worker returns for one image (diagnostic files are already in the run directory)."""

    source_id: int
    image_id: int | None
    defocus1_A: float
    defocus2_A: float
    astig_angle_deg: float
    phase_shift_rad: float
    cross_correlation: float
    fit_resolution_A: float
    confidence_30_10: float | None
    confidence_5_peak: float | None
    resolution_80_percent_A: float | None
    resolution_50_percent_A: float | None
    graphs: tuple[str | None, str | None, str | None, str | None]  # relative to the CTF run directory
    seconds: float
    worker: str


@dataclass(frozen=True)
class CtfDone:
    """The CTF step's output for later steps: which image was estimated and the fit."""

    source_id: int
    image_id: int
    defocus1_A: float | None = None
    defocus2_A: float | None = None
    fit_resolution_A: float | None = None
