"""`noop` engines for the motion and CTF steps: no computation, for measuring the loop's own overhead.

They are test-only engines (Engine.test_only): the loop never stores their records in the classic tables.
APPION_NOOP_SECONDS makes each task pretend to work that long.
"""
from __future__ import annotations

import os
import time

from appion.base.steps import Engine, EngineSpec, Lazy
from appion.ctfestimation.records import CtfRecord
from appion.motioncorrection.records import MotionRecord

NOOP = Engine("noop", "test only: no computation, nothing stored", version="noop-1", test_only=True)


def _pause() -> None:
    seconds = float(os.environ.get("APPION_NOOP_SECONDS", "0") or 0)
    if seconds:
        time.sleep(seconds)


def run_noop_motion(task, settings) -> MotionRecord:
    start = time.perf_counter()
    _pause()
    inp = task.exposure
    zeros = tuple((0.0, 0.0) for _ in range(inp.n_frames or 2))
    return MotionRecord(inp.image_id, f"{inp.filename}-{settings.alignlabel}", None, zeros,
                        inp.pixel_size_A * settings.bin, (0, 0), settings.bin, time.perf_counter() - start,
                        f"noop:{os.getpid()}", log_positions=zeros)


def run_noop_ctf(task, settings) -> CtfRecord:
    start = time.perf_counter()
    _pause()
    inp = task.exposure
    df = abs(inp.nominal_defocus_m or 1.5e-6) * 1e10
    return CtfRecord(inp.image_id, inp.image_id, df, df, 0.0, 0.0, 0.1, 8.0, None, None, None, None,
                     (None, None, None, None), time.perf_counter() - start, f"noop:{os.getpid()}")


MOTION_NOOP = EngineSpec("motion", NOOP, Lazy("appion_test_plugins.noop", "run_noop_motion"))
CTF_NOOP = EngineSpec("ctf", NOOP, Lazy("appion_test_plugins.noop", "run_noop_ctf"))
