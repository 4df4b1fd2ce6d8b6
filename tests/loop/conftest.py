"""Fixtures for the loop tests: one simulated session of small movies (shared), imported per test.

The movies are 512² × 8 frames (12 of them) so that a full motion + CTF pass stays within a few
seconds per movie on 2 cores; every test gets its own APPION_HOME (fresh database, run directories).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.loop.loophelpers import DOSE_PER_FRAME, FRAMES, N_MOVIES, SIZE


@pytest.fixture(scope="session")
def sim_frames(tmp_path_factory) -> Path:
    """A directory of 12 simulated movies (+ truth JSON) written once for all loop tests."""
    out = tmp_path_factory.mktemp("loop-sim")
    subprocess.run(["appion", "simulate", "session", "--out", str(out), "--n", str(N_MOVIES), "--size", str(SIZE),
                    "--frames", str(FRAMES), "--dose-per-frame", str(DOSE_PER_FRAME), "--name", "lp",
                    "--format", "tiff", "--seed", "4"], check=True, capture_output=True)
    return out / "frames"


@pytest.fixture
def home_env(fresh_home):
    home, env = fresh_home
    env = {**env, "APPION_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    return home, env
