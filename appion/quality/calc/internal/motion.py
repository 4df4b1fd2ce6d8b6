"""Total, early and late drift of a movie from its per-frame positions.

As RELION's motion correction reports accumulated motion (rlnAccumMotionTotal/Early/Late; Zivanov, Nakane &
Scheres 2019, IUCrJ 6:5-17): the path length of the trajectory, split at an accumulated dose of
EARLY_DOSE_E_PER_A2.  The step from frame i−1 to frame i is early when the dose received before frame i
(pre-exposure + i × dose per frame) is at most EARLY_DOSE_E_PER_A2, late otherwise.
Pure: no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EARLY_DOSE_E_PER_A2 = 4.0


@dataclass(frozen=True)
class DriftMeasure:
    """Path lengths in Å; early/late None when the dose per frame is not known."""

    total_A: float
    early_A: float | None
    late_A: float | None
    n_frames: int


def calc_drift_A(positions_px, pixel_size_A: float, dose_per_frame_e_per_A2: float | None,
                 pre_exposure_e_per_A2: float = 0.0) -> DriftMeasure:
    """Drift of a trajectory.

    positions_px: (n_frames, 2) x, y positions in pixels of `pixel_size_A` (any common origin: only the
    differences count).  dose_per_frame_e_per_A2: None or ≤ 0 when unknown.
    """
    p = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    steps = np.hypot(*np.diff(p, axis=0).T) * pixel_size_A if len(p) > 1 else np.zeros(0)
    total = float(steps.sum())
    if not dose_per_frame_e_per_A2 or dose_per_frame_e_per_A2 <= 0 or not math.isfinite(dose_per_frame_e_per_A2):
        return DriftMeasure(total, None, None, len(p))
    dose_before = pre_exposure_e_per_A2 + np.arange(1, len(p)) * dose_per_frame_e_per_A2
    early = dose_before <= EARLY_DOSE_E_PER_A2 + 1e-9
    return DriftMeasure(total, float(steps[early].sum()), float(steps[~early].sum()), len(p))
