"""What the loop records about its cluster, and the environment its workers run in.

The dashboard test runs `appion loop` with the test-only noop engines (tests/plugins, on PYTHONPATH: no
compute, nothing stored; the cluster and the bookkeeping are what is tested); the worker test starts a real one-worker LocalCluster.
"""
from __future__ import annotations

import importlib.util
import os
import re

from pathlib import Path

import dask

from appion.loop import cluster
from tests.loop.loophelpers import Db, copy_movies, finish, import_session, start_loop

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"  # the test-only noop engines


def test_loop_records_the_dashboard_it_printed(home_env, sim_frames, tmp_path):
    """The dashboard address the loop announces is stored on its ApLoopRunData row (the session page links it):
    the scheduler's URL when the dashboard runs (bokeh installed), else the reason there is none."""
    home, env = home_env
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), env.get("PYTHONPATH")]))}
    frames = copy_movies(sim_frames, tmp_path / "frames", ["lp_00001", "lp_00002"])
    import_session(env, "db", frames)
    log = tmp_path / "loop.log"
    proc = start_loop(env, ["--session", "db", "--no-wait", "--idle", "0", "--poll", "0.3",
                            "--dashboard-address", ":0", "--engine-motion", "noop", "--engine-ctf", "noop"], log)
    assert finish(proc, 120, log) == 0, log.read_text()[-3000:]
    printed = re.search(r"dashboard: (.+)$", log.read_text(), re.MULTILINE)
    assert printed, log.read_text()[-3000:]
    address = printed.group(1).strip()
    if importlib.util.find_spec("bokeh"):  # the Dask dashboard needs it
        assert re.fullmatch(r"http://[\w.\-\[\]:]+:\d+/status", address), address
    else:
        assert address.startswith("unavailable"), address
    assert Db(home).rows("SELECT runname, dashboard FROM ApLoopRunData") == [("loop1", address)]
    # test-only engines never write the classic result tables
    assert Db(home).count("ApDDAlignImagePairData") == 0 and Db(home).count("ApCtfData") == 0
    assert Db(home).count("ApDDStackRunData") == 0 and Db(home).count("ApAceRunData") == 0


def test_local_workers_run_blas_single_threaded():
    """Workers get one BLAS/OpenMP thread (even when the Dask configuration says otherwise) and numba gets
    the task's threads: scipy's BLAS pool otherwise competes with numba and other workers for the cores."""
    with dask.config.set({"distributed.nanny.pre-spawn-environ.OPENBLAS_NUM_THREADS": "4",
                          "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": "4"}):
        local, client, slots = cluster.start_cluster(cluster.ClusterSettings(workers=1, threads_per_task=2,
                                                                             dashboard_address=":0"))
        try:
            names = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
            seen = client.submit(lambda: {k: os.environ.get(k) for k in names}, pure=False).result(timeout=60)
        finally:
            cluster.stop_cluster(local, client)
    assert slots == 1
    assert seen == {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                    "NUMBA_NUM_THREADS": "2"}


def test_batch_job_prologue_sets_single_threaded_blas():
    kw = cluster.calc_jobqueue_kwargs(cluster.ClusterSettings(kind="slurm", cores=4))
    prologue = kw["job_script_prologue"]
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        assert f"export {name}=1" in prologue
    assert "export NUMBA_NUM_THREADS=${SLURM_CPUS_PER_TASK:-4}" in prologue
