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


BACKOFF_CAP_S = 300.0  # transient failures (a full disk, an outage) are retried at least every 5 minutes


def calc_backoff_s(base_s: float, attempts: int, cap_s: float = BACKOFF_CAP_S) -> float:
    """Exponential back-off before attempt n+1 (base, 2×base, 4×base ..., at most cap_s)."""
    return min(cap_s, base_s * (2 ** min(max(0, attempts - 1), 60)))


TRANSIENT, DETERMINISTIC = "transient", "deterministic"
# Errors a worker or the store raises that say "this input is bad": trying again gives the same answer.
_DETERMINISTIC = (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, NotImplementedError,
                  AssertionError, LookupError, UnicodeError)
# Modules whose errors are the database's (the loop process only sees them when storing).
_DATABASE_MODULES = ("django.db", "MySQLdb", "sqlite3", "pymysql")


def calc_error_kind(exc: BaseException | None) -> str:
    """TRANSIENT (retry later with back-off) or DETERMINISTIC (bad input: one attempt is enough).

    Transient: OSError (a full disk, EIO, a network filesystem, a movie still being written: the steps raise an
    OSError subclass for that), database errors, a killed or lost worker, timeouts and crashes of external
    programs (RuntimeError, subprocess errors), memory exhaustion and anything unknown.  Deterministic: ValueError
    and its kin (MovieError, GainMismatchError, missing physics, NaN frames, a bad option) and programming errors.
    """
    if exc is None:
        return TRANSIENT
    if any(cls.__module__.startswith(_DATABASE_MODULES) for cls in type(exc).__mro__):
        return TRANSIENT
    if isinstance(exc, (OSError, MemoryError, TimeoutError)):
        return TRANSIENT
    if isinstance(exc, _DETERMINISTIC):
        return DETERMINISTIC
    return TRANSIENT


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


def calc_reason_naming_file(reason: str, name: str, path: str) -> str:
    """A failure reason that names the exposure's file: prefixed with `path` unless it names `name` already."""
    return reason if (name and name in reason) else f"{path}: {reason}"


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


HEARTBEAT_S = 15.0  # a running loop writes its heartbeat this often
STALE_AFTER_S = 4 * HEARTBEAT_S  # a loop whose heartbeat is older than this is taken to be gone


def calc_holder(hostname: str | None, pid: int | None, heartbeat_s: float | None, now_s: float) -> str:
    """`host:pid (heartbeat 5 s ago)`: who holds a run, for messages."""
    beat = f"heartbeat {max(0.0, now_s - heartbeat_s):.0f} s ago" if heartbeat_s else "no heartbeat"
    return f"{hostname or '?'}:{pid if pid is not None else '?'} ({beat})"


def calc_holder_alive(hostname: str | None, heartbeat_s: float | None, now_s: float, this_host: str,
                      pid_alive: bool | None, stale_after_s: float = STALE_AFTER_S) -> tuple[bool, str]:
    """Whether the loop that marked a run running is still alive, and why not.

    Alive: its heartbeat is fresher than stale_after_s and, on this host, its process still exists
    (pid_alive: None when it cannot be known, i.e. on another host).
    """
    if hostname == this_host and pid_alive is False:
        return False, "its process is gone"
    if not heartbeat_s or now_s - heartbeat_s > stale_after_s:
        return False, f"no heartbeat for more than {stale_after_s:.0f} s"
    return True, "alive"
