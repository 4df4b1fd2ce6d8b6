"""Trajectory summaries: RMS error against a reference trajectory, path lengths."""
from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------------------
# Trajectory summaries
# ----------------------------------------------------------------------------------------

def calc_trajectory_rms_error(estimate_px: np.ndarray, truth_px: np.ndarray) -> float:
    """RMS distance between two trajectories (n, 2) after removing their mean difference."""
    diff = np.asarray(estimate_px, float) - np.asarray(truth_px, float)
    diff -= diff.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(diff * diff, axis=1))))


def calc_motion_summary(shifts_px: np.ndarray, early_frames: int = 4) -> tuple[float, float, float]:
    """(total, early, late) path length in pixels: early = the first `early_frames` steps."""
    steps = np.linalg.norm(np.diff(np.asarray(shifts_px, float), axis=0), axis=1)
    early = float(steps[:early_frames].sum())
    return float(steps.sum()), early, float(steps[early_frames:].sum())
