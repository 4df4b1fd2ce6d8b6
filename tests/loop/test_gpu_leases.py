"""GPUs are leased per task: two loops on one node with gpuids 0,1 never hold the same GPU at once.

Both loops run the MotionCor2 engine (the stand-in in tests/standins, which takes -Gpu like the real
program) on their own LocalCluster, sharing one services directory; the lease log records every
acquisition and release, and is checked for overlaps.
"""
from __future__ import annotations

from pathlib import Path

from appion.workflow.leases import audit_lease_log
from appion.workflow.services import read_lease_log
from tests.loop.loophelpers import Db, copy_movies, finish, import_session, start_loop

STANDIN = Path(__file__).resolve().parents[1] / "standins" / "motioncor2"
SIX = [f"lp_{i:05d}" for i in range(1, 7)]


def test_two_loops_never_share_a_gpu(home_env, sim_frames, tmp_path):
    home, env = home_env
    frames = copy_movies(sim_frames, tmp_path / "frames", SIX)
    import_session(env, "gpu", frames)
    services = tmp_path / "services"
    common = ["--session", "gpu", "--steps", "motion", "--engine-motion", "motioncor2", "--motion-exe", str(STANDIN),
              "--gpuids", "0,1", "--services-dir", str(services), "--no-wait", "--idle", "0", "--poll", "0.3",
              "--dashboard-address", ":0", "--workers", "2", "--no-reuse"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_loop(env, [*common, "--runname", name], log) for name, log in zip(("ga", "gb"), logs)]
    for proc, log in zip(procs, logs):
        assert finish(proc, 600, log) == 0, log.read_text()[-4000:]
    events = read_lease_log("gpu", services)
    audit = audit_lease_log(events)
    assert audit.ok, audit
    acquired = [e for e in events if e.event == "acquire"]
    assert len(acquired) == 12  # 6 movies × 2 loops, one lease each
    assert {e.slot for e in acquired} == {"0", "1"}
    holders = {e.holder.split(":")[1] for e in acquired}  # worker pids of both loops' clusters
    assert len(holders) >= 2
    assert len([e for e in events if e.event == "release"]) == 12
    db = Db(home)
    assert db.count("ApDDAlignImagePairData") == 12 and db.count("ApDDStackRunData") == 2
