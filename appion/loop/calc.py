"""Pure helpers of the loop: task keys, parameter hashes, back-off, tilt filter, classic row values.

No I/O and no Django: both the loop process and the workers import this.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import time


class LoopError(RuntimeError):
    """The loop cannot start (no such session, run name clash ...); message is for people."""


def calc_params_hash(payload: dict) -> str:
    """A stable short hash of parameters (sorted JSON)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def calc_task_key(step: str, image_id: int, params_hash: str, attempt: int) -> str:
    """Dask key: the same exposure, step, parameters and attempt always get the same key."""
    return f"{step}-{image_id}-{params_hash}-{attempt}"


def calc_backoff_s(base_s: float, attempts: int) -> float:
    """Exponential back-off before attempt n+1 (base, 2×base, 4×base ..., at most 10 minutes)."""
    return min(600.0, base_s * (2 ** max(0, attempts - 1)))


def calc_tilt_skip(tilt_deg: float, tilt: str) -> bool:
    """Classic --tiltangle filter: True when an image of this stage tilt is to be skipped."""
    if tilt == "notilt":
        return abs(tilt_deg) > 3.0
    if tilt == "hightilt":
        return abs(tilt_deg) < 30.0
    if tilt == "lowtilt":
        return abs(tilt_deg) >= 30.0
    if tilt == "minustilt":
        return tilt_deg > -2.0
    if tilt == "plustilt":
        return tilt_deg < 2.0
    return False


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


def calc_percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a list; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An error as one line, type first (for logs and ApLoopExposureData.last_error)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not text.startswith(type(exc).__name__):
        text = f"{type(exc).__name__}: {text}"
    return text[:limit]


def parse_st_log_positions(text: str) -> tuple[tuple[float, float], ...]:
    """The per-frame `xy shift: x y` values of a classic `_st_Log.txt` (what classic stores as the trajectory)."""
    out = []
    for line in text.splitlines():
        if "xy shift:" in line:
            x, y = line.split("xy shift:", 1)[1].split()[:2]
            out.append((float(x), float(y)))
    return tuple(out)


def calc_epoch(ts) -> float:
    """Unix seconds of a naive DEF_timestamp (Django runs with TIME_ZONE=UTC, USE_TZ=False)."""
    if ts is None:
        return time.time()  # no timestamp: treat as arriving now
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return ts.timestamp()
