"""The quality step's typed records: thresholds, settings, what a worker returns, what later steps receive.

Pure dataclasses (no numpy, no Django): they travel between the loop process and Dask workers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Thresholds:
    """Curation limits; None = no limit on that metric.  An exposure above any limit is rejected."""

    max_ctf_resolution_A: float | None = None
    max_total_drift_A: float | None = None
    max_astigmatism_A: float | None = None
    max_ice_thickness: float | None = None  # relative ice thickness (1 = no water ring)
    max_tilt_deg: float | None = None
    reject_crystalline_ice: bool = False


# Names of the thresholds on the command line (--max-ctf-resolution) and in the config's [curation] table
# (max_ctf_resolution = 6; `-` and `_` are the same there) → Thresholds fields.
THRESHOLD_KEYS = {
    "max_ctf_resolution": "max_ctf_resolution_A",
    "max_total_drift": "max_total_drift_A",
    "max_astigmatism": "max_astigmatism_A",
    "max_ice_thickness": "max_ice_thickness",
    "max_tilt": "max_tilt_deg",
    "reject_crystalline_ice": "reject_crystalline_ice",
}


@dataclass(frozen=True)
class QualitySettings:
    """Quality parameters of a run; `hashed()` are the ones that change results (the thresholds included:
    a new set on the command line is a new step run that judges every exposure again).

    tiles: tiles per side of the tilt fit (0: from the image's field of view); amplitude_contrast: of the
    CTF model the tiles are fitted with.  The thresholds given here are overridden, while the loop runs, by
    the keys of the config file's [curation] table (appion.quality.curation).
    """

    engine: str = "builtin"
    tiles: int = 0
    amplitude_contrast: float = 0.07
    thresholds: Thresholds = field(default_factory=Thresholds)
    threads: int = 1

    def hashed(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("threads")
        return d


@dataclass(frozen=True)
class QualityRecord:
    """What a worker measures on one exposure's image (the motion and CTF numbers are added when storing).

    image_problem: why the image is unusable (appion.base.imagecheck), then nothing else is measured.
    tilt_note / ice_note: why the tilt / ice thickness could not be measured (None when they were).
    """

    source_id: int
    image_id: int | None  # the image measured (the aligned sum CTF used, or the exposure itself)
    image_problem: str | None
    tilt_deg: float | None
    tilt_axis_deg: float | None
    tilt_note: str | None
    ice_thickness: float | None
    crystalline_ice: bool | None
    ice_note: str | None
    seconds: float
    worker: str


@dataclass(frozen=True)
class Metrics:
    """Every metric of one exposure as judged (Å, degrees; None = not measured)."""

    total_drift_A: float | None = None
    early_drift_A: float | None = None
    late_drift_A: float | None = None
    ctf_resolution_A: float | None = None
    astigmatism_A: float | None = None
    defocus_A: float | None = None
    tilt_deg: float | None = None
    tilt_axis_deg: float | None = None
    ice_thickness: float | None = None
    crystalline_ice: bool | None = None
    image_problem: str | None = None


@dataclass(frozen=True)
class QualityOutput:
    """The quality step's output for later steps: the verdict (rejected: the reason, None = accepted)."""

    source_id: int
    rejected: str | None
    metrics: Metrics
    manual: bool = False  # the verdict is a person's (appion.quality.steprows.store_manual_verdict)
