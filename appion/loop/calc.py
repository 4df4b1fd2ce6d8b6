"""Pure helpers of the loop: task keys, parameter hashes, back-off, tilt filter, percentiles, times.

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


def calc_epoch(ts) -> float:
    """Unix seconds of a naive DEF_timestamp (Django runs with TIME_ZONE=UTC, USE_TZ=False)."""
    if ts is None:
        return time.time()  # no timestamp: treat as arriving now
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return ts.timestamp()
