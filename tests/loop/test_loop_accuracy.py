"""Issue 4's accuracy acceptance at the CTF issue's own tolerance: 12 movies through motion → CTF.

The CTF tolerance (|error of mean defocus| ≤ 3 Å median, ≤ 10 Å worst) is defined on 4096² images; the other
loop tests use 512² movies for speed, where CTF accuracy is limited by the few spectrum tiles.  Here the movies
are 4096² × 3 frames × 20 e/Å² (60 e/Å², the top of the issue's dose range), the same data once on LocalCluster +
SQLite and once on SLURMCluster.adapt(0, 2) + MariaDB.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.loop.loophelpers import Db, finish, start_loop, wait_for
from tests.loop.test_loop_local import assert_each_once
from tests.loop.test_loop_services import squeue

N = 12
FAST = ["--poll", "0.3", "--dashboard-address", ":0"]


@pytest.fixture(scope="module")
def frames_4k(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loop-sim-4k")
    subprocess.run(["appion", "simulate", "session", "--out", str(out), "--n", str(N), "--size", "4096", "--frames", "3",
                    "--dose-per-frame", "20", "--drift", "5", "--name", "ak", "--format", "tiff", "--seed", "11"],
                   check=True, capture_output=True)
    return out / "frames"


def _import(env, frames: Path) -> None:
    subprocess.run(["appion", "session", "import", "--name", "acc", "--frames-dir", str(frames), "--apix", "1.0",
                    "--kv", "300", "--cs", "2.7", "--dose", "60"], env=env, check=True, capture_output=True)


def _defocus_errors_A(db: Db, frames: Path) -> np.ndarray:
    images = dict(db.rows("SELECT DEF_id, filename FROM AcquisitionImageData", "leginon"))
    errors = []
    for image_id, d1, d2 in db.rows("SELECT `REF|leginondata|AcquisitionImageData|image`, defocus1, defocus2 "
                                    "FROM ApCtfData"):
        source = images[image_id].removesuffix("-a-DW")
        truth = json.loads((frames / f"{source}.truth.json").read_text())
        errors.append((d1 + d2) / 2 * 1e10 - (truth["defocus1_A"] + truth["defocus2_A"]) / 2)
    return np.abs(np.array(errors))


def _check(db: Db, frames: Path) -> None:
    assert_each_once(db, N)
    err = _defocus_errors_A(db, frames)
    assert len(err) == N
    assert np.median(err) <= 3.0 and err.max() <= 10.0, np.round(err, 1)


def test_twelve_4k_movies_local_sqlite(fresh_home, frames_4k, tmp_path):
    home, env = fresh_home
    _import(env, frames_4k)
    log = tmp_path / "loop.log"
    proc = start_loop(env, ["--session", "acc", "--no-wait", "--idle", "0", *FAST], log)
    assert finish(proc, 420, log) == 0, log.read_text()[-3000:]
    _check(Db(home), frames_4k)


@pytest.mark.slurm
@pytest.mark.mariadb
def test_twelve_4k_movies_slurm_mariadb(private_slurm, mariadb_home, frames_4k, tmp_path):
    home, env = mariadb_home
    assert env["SLURM_CONF"] == str(private_slurm.conf)
    job_name = f"apk{os.getpid()}"
    env = {**env, "DASK_JOBQUEUE__SLURM__NAME": job_name}
    _import(env, frames_4k)
    slurm = ["--cluster", "slurm", "--queue", "debug", "--cores", "1", "--memory", "4GB", "--walltime", "00:20:00",
             "--minimum", "0", "--maximum", "2", "--interface", "lo", "--log-directory", str(tmp_path / "slurm")]
    log = tmp_path / "loop.log"
    proc = start_loop(env, ["--session", "acc", "--no-wait", "--idle", "0", *slurm, *FAST], log)
    try:
        assert finish(proc, 600, log) == 0, log.read_text()[-3000:]
        # The loop closes its cluster on the way out: no job of this test may stay queued or running.
        wait_for(lambda: not squeue(job_name), 30, "the Slurm jobs to be gone after the run")
    finally:
        subprocess.run(["scancel", "-n", job_name], capture_output=True, env=private_slurm.env)  # after a failure
    _check(Db(home), frames_4k)
