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
import distributed  # noqa: F401  (its config defaults loaded before a test's dask.config.set context records them)

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
            names = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS",
                     "MALLOC_ARENA_MAX", "OMP_WAIT_POLICY", "NUMBA_CACHE_DIR")
            seen = client.submit(lambda: {k: os.environ.get(k) for k in names}, pure=False).result(timeout=60)
        finally:
            cluster.stop_cluster(local, client)
    assert slots == 1
    assert seen == {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                    "NUMBA_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "1", "OMP_WAIT_POLICY": "PASSIVE",
                    "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR")}


def test_workers_warm_up_into_the_configured_numba_cache(tmp_path, monkeypatch):
    """Two fresh workers on an empty numba cache (the directory `[paths] numba_cache` names) compile the
    built-in engines' functions before any task: the cache holds both engines' compiled functions afterwards,
    and each worker has imported the engines."""
    from appion.base.steps import load_steps
    from appion.loop.tasks import warm_up_plugin

    steps = load_steps()
    engines = [steps["motion"].engines["builtin"], steps["ctf"].engines["builtin"]]
    cache = tmp_path / "numba-cache"
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nnumba_cache = "{cache}"\n')
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("APPION_CONFIG", str(config))
    from appion.base.config import set_numba_cache_dir

    set_numba_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == str(cache)
    local, client, _ = cluster.start_cluster(cluster.ClusterSettings(workers=2, threads_per_task=1,
                                                                     dashboard_address=":0"))
    try:
        client.register_plugin(warm_up_plugin(tuple(m for e in engines for m in e.modules),
                                              tuple(e.warm_up for e in engines)))
        imported = client.run(lambda: sorted(m for m in ("appion.motioncorrection.align",
                                                         "appion.ctfestimation.estimate")
                                             if m in __import__("sys").modules))
    finally:
        cluster.stop_cluster(local, client)
    assert all(names == ["appion.ctfestimation.estimate", "appion.motioncorrection.align"]
               for names in imported.values()), imported
    compiled = {p.name.split("-")[0] for p in cache.rglob("*.nbc")}  # <module>.<function>-<line>.py3X.N.nbc
    assert {"sums._accumulate_tiles", "align._shift_and_sum", "align.calc_binned_raw_frame"} <= compiled, compiled
    assert {"spectrum._accumulate_power", "refine._minimise_bfgs"} <= compiled, compiled


def test_batch_job_prologue_sets_single_threaded_blas():
    kw = cluster.calc_jobqueue_kwargs(cluster.ClusterSettings(kind="slurm", cores=4))
    prologue = kw["job_script_prologue"]
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        assert f"export {name}=1" in prologue
    assert "export NUMBA_NUM_THREADS=${SLURM_CPUS_PER_TASK:-4}" in prologue
    assert "export MALLOC_ARENA_MAX=1" in prologue and "export OMP_WAIT_POLICY=PASSIVE" in prologue


WARMED: list[str] = []


def _warm_motion():
    WARMED.append("motion")


def _warm_motion_rest():
    WARMED.append("motion rest")


def _warm_ctf():
    WARMED.append("ctf")


def _warm_broken():
    raise RuntimeError("no such program")


def test_warm_up_order_rotates_by_worker_index():
    """Worker 0 warms the engines up in step order, first stages (common paths) before second ones (a single
    worker compiles the first step's common path first); worker 1 starts with the next engine, and so on; a
    failing warm-up is skipped (the first task reports the problem)."""
    from appion.base.steps import Lazy
    from appion.loop.tasks import calc_worker_index, warm_up_worker

    here = __name__
    motion = (Lazy(here, "_warm_motion"), Lazy(here, "_warm_motion_rest"))
    ups = (motion, (Lazy(here, "_warm_broken"),), (Lazy(here, "_warm_ctf"),), ())
    orders = []
    for name in (0, 1, "SLURMCluster-2", "SLURMCluster-3-1"):
        WARMED.clear()
        seconds = warm_up_worker((), ups, calc_worker_index(name))
        orders.append(list(WARMED))
        assert set(seconds) == {f"{here}:_warm_motion", f"{here}:_warm_motion_rest", f"{here}:_warm_ctf"}
    assert orders == [["motion", "ctf", "motion rest"], ["ctf", "motion", "motion rest"],
                      ["ctf", "motion", "motion rest"], ["motion", "ctf", "motion rest"]]
