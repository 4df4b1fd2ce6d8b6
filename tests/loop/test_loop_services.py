"""The loop against the real services: SLURMCluster (dask-jobqueue, adapt 0..2) + MariaDB, and a MariaDB outage.

Slurm is the session's private single-node Slurm (`private_slurm`); the outage is made on a private MariaDB server
of the test's own (`private_mariadb`), never on the machine's server.  Slurm jobs get a per-test job name through
the Dask configuration (DASK_JOBQUEUE__SLURM__NAME), so the "no job left behind" check looks only at this test's jobs.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import require_slurm, write_mariadb_config
from tests.loop.loophelpers import N_MOVIES, Db, copy_movies, finish, import_session, start_loop, wait_for
from tests.loop.test_loop_local import assert_each_once, check_defocus, results

FAST = ["--poll", "0.3", "--dashboard-address", ":0"]


def squeue(name: str) -> list[str]:
    """This job name's jobs on the session's private Slurm."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True, check=True,
                         env=require_slurm().env)
    return out.stdout.split("\n") if out.stdout.strip() else []


@pytest.mark.slurm
@pytest.mark.mariadb
def test_slurm_mariadb_sigterm_then_restart(private_slurm, mariadb_home, sim_frames, tmp_path):
    """12 movies on SLURMCluster.adapt(0, 2) with MariaDB: SIGTERM mid-batch leaves no Slurm job; a restart
    finishes; every exposure has exactly one motion and one CTF result, defocus close to the truth."""
    home, env = mariadb_home
    assert env["SLURM_CONF"] == str(private_slurm.conf)
    job_name = f"apl{os.getpid()}"
    env = {**env, "APPION_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "DASK_JOBQUEUE__SLURM__NAME": job_name}
    frames = copy_movies(sim_frames, tmp_path / "frames")
    import_session(env, "sl", frames)
    db = Db(home)
    slurm = ["--cluster", "slurm", "--queue", "debug", "--cores", "1", "--memory", "1GB", "--walltime", "00:15:00",
             "--minimum", "0", "--maximum", "2", "--interface", "lo", "--log-directory", str(tmp_path / "slurm")]
    log = tmp_path / "loop1.log"
    proc = start_loop(env, ["--session", "sl", *slurm, *FAST], log)
    try:
        wait_for(lambda: db.count("ApCtfData") >= 3, 240, "three CTF results", proc, log)
        assert squeue(job_name), "adaptive scaling started no Slurm job"
        proc.send_signal(signal.SIGTERM)
        assert finish(proc, 180, log) == 0, log.read_text()[-3000:]
        wait_for(lambda: not squeue(job_name), 30, "the Slurm jobs to be gone after SIGTERM")
        first = results(db)
        assert 3 <= len(first["ctf"]) and set(first["ctf"].values()) == {1}
        log2 = tmp_path / "loop2.log"
        proc = start_loop(env, ["--session", "sl", "--no-wait", "--idle", "0", *slurm, *FAST], log2)
        assert finish(proc, 300, log2) == 0, log2.read_text()[-3000:]
        wait_for(lambda: not squeue(job_name), 30, "the Slurm jobs to be gone after the run")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["scancel", "-n", job_name], capture_output=True, env=private_slurm.env)
    assert_each_once(db, N_MOVIES)
    check_defocus(db, frames)
    assert {r[0] for r in db.rows("SELECT status FROM ApAppionJobData")} == {"D"}


@pytest.fixture
def private_mariadb_home(private_mariadb, tmp_path):
    """An APPION_HOME whose leginon/project/appion databases live on the test's private MariaDB server."""
    home = tmp_path / "appion-home"
    write_mariadb_config(home, "apo", port=private_mariadb.port)
    env = {**os.environ, "APPION_HOME": str(home)}
    env.pop("APPION_CONFIG", None)
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
    return home, env


@pytest.mark.mariadb
def test_mariadb_outage_is_waited_out(private_mariadb, private_mariadb_home, sim_frames, tmp_path):
    """The loop's MariaDB (a private server) stopped for 20 s mid-run and started again: the loop logs the outage,
    reconnects, and finishes with every result stored exactly once."""
    home, env = private_mariadb_home
    assert f"127.0.0.1:{private_mariadb.port}/" in (home / "config.toml").read_text() and private_mariadb.port != 3306
    env = {**env, "APPION_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    frames = copy_movies(sim_frames, tmp_path / "frames", [f"lp_{i:05d}" for i in range(1, 9)])
    import_session(env, "md", frames)
    db = Db(home)
    log = tmp_path / "loop.log"
    proc = start_loop(env, ["--session", "md", "--no-wait", "--idle", "0", *FAST], log)
    try:
        wait_for(lambda: db.count("ApCtfData") >= 2, 180, "two CTF results", proc, log)
        private_mariadb.stop()  # by the PID in its own pid file
        assert not private_mariadb.ping()
        time.sleep(20)
    finally:
        if not private_mariadb.ping():
            private_mariadb.start()
    try:
        assert finish(proc, 240, log) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "database unavailable" in text and "database reachable again" in text, text[-3000:]
    assert_each_once(db, 8)
