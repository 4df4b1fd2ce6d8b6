"""Pure helpers of the motion step's classic rows and files: aligned image names, trajectory and stats values.

No I/O and no Django: both the loop process and the workers import this.
"""
from __future__ import annotations

import math


def calc_aligned_filenames(filename: str, alignlabel: str, doseweight: bool) -> tuple[str, str | None]:
    """Classic names of the aligned sums: `<source>-a` and `<source>-a-DW`."""
    base = f"{filename}-{alignlabel}"
    return base, (f"{base}-DW" if doseweight else None)


def calc_trajectory_fields(positions, limit: int = 20) -> dict:
    """ApDDFrameTrajectoryData values from the classic log's per-frame positions (relative to the middle frame)."""
    xs = [round(float(x), 5) for x, _ in positions]
    ys = [round(float(y), 5) for _, y in positions]
    return {"pos_x": xs[:limit], "pos_y": ys[:limit], "last_x": xs[-1] if xs else None,
            "last_y": ys[-1] if ys else None, "number_of_positions": len(xs), "reference_index": len(xs) // 2}


def calc_align_stats_fields(positions, pixel_size_A: float) -> dict:
    """ApDDAlignStatsData values: frame-to-frame shifts of the log positions: the three largest with their
    index, and the median (binned pixels; apix converts them)."""
    steps = [math.hypot(positions[i + 1][0] - positions[i][0], positions[i + 1][1] - positions[i][1])
             for i in range(len(positions) - 1)]
    ordered = sorted(steps)
    median = (ordered[len(ordered) // 2] if len(ordered) % 2 else
              0.5 * (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2])) if ordered else None
    out = {"apix": pixel_size_A, "median_shift_value": median}
    ranked = sorted(range(len(steps)), key=lambda i: -steps[i])
    for k in range(3):
        out[f"top_shift{k + 1}_value"] = steps[ranked[k]] if k < len(ranked) else None
        out[f"top_shift{k + 1}_index"] = ranked[k] if k < len(ranked) else None
    return out


def calc_total_drift_px(shifts_px) -> float:
    """Path length of the trajectory in (unbinned) pixels."""
    return float(sum(math.hypot(shifts_px[i + 1][0] - shifts_px[i][0], shifts_px[i + 1][1] - shifts_px[i][1])
                     for i in range(len(shifts_px) - 1)))


def parse_st_log_positions(text: str) -> tuple[tuple[float, float], ...]:
    """The per-frame `xy shift: x y` values of a classic `_st_Log.txt` (what classic stores as the trajectory)."""
    out = []
    for line in text.splitlines():
        if "xy shift:" in line:
            x, y = line.split("xy shift:", 1)[1].split()[:2]
            out.append((float(x), float(y)))
    return tuple(out)
