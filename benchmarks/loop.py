"""Loop benchmarks: per-exposure overhead (no-op engines) and sustained throughput/latency (real engines).

    python benchmarks/loop.py overhead [--n 200] [--mariadb]
    python benchmarks/loop.py sustained [--n 12 --interval 8 --size 1024 --frames 16]
    python benchmarks/loop.py all

overhead: N exposures through motion + CTF with the test-only no-op engines (tests/plugins) on a
LocalCluster and the embedded SQLite database: what the loop itself costs per exposure (polling,
conditions, scheduling two Dask tasks, the loop's bookkeeping rows; test-only engines store nothing in
the classic tables, so classic row writes are not part of this figure).  Target < 50 ms.

sustained: a simulated microscope writes a movie every --interval seconds into a frames directory
watched by `appion session import --watch`; `appion loop` processes them with the built-in engines.
Prints throughput and the latency from "movie complete" to "CTF row stored" (p50/p95).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import read_rows, stop_processes


def _env(home: Path) -> dict:
    env = {**os.environ, "APPION_HOME": str(home), "APPION_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    env.pop("APPION_CONFIG", None)
    env.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "appion-numba-cache"))
    return env


def _run(cmd, env, **kw):
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, **kw)


def _mariadb_config(home: Path, prefix: str) -> None:
    """Fresh MariaDB databases for the benchmark (root@127.0.0.1, as on this machine kind)."""
    for part in ("leg", "proj", "ap"):
        subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "-e",
                        f"DROP DATABASE IF EXISTS `{prefix}_{part}`; CREATE DATABASE `{prefix}_{part}`"], check=True)
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[database]\n" + "".join(
        f'{k} = "mysql://root@127.0.0.1:3306/{prefix}_{part}"\n'
        for k, part in (("leginon", "leg"), ("project", "proj"), ("appion", "ap"))))


def _drop_mariadb(prefix: str) -> None:
    for part in ("leg", "proj", "ap"):
        subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "-e", f"DROP DATABASE IF EXISTS `{prefix}_{part}`"])


def bench_overhead(n: int, workdir: Path, mariadb: bool = False) -> dict:
    """No-op engines: loop wall time per exposure, and the part of it spent storing rows."""
    home = workdir / "overhead-home"
    if mariadb:
        _mariadb_config(home, "appion_bench_loop")
    env = _env(home)
    os.environ.update({"APPION_HOME": str(home)})
    os.environ.pop("APPION_CONFIG", None)
    _run(["appion", "simulate", "session", "--out", str(workdir / "ov"), "--n", "1", "--size", "64", "--frames", "4",
          "--name", "ov"], env)
    _run(["appion", "db", "init"], env)
    _run(["appion", "session", "import", "--name", "ov", "--frames-dir", str(workdir / "ov" / "frames"), "--apix",
          "1", "--kv", "300", "--cs", "2.7", "--dose", "6"], env)

    from appion.base.db import bootstrap

    bootstrap()  # this process's database (APPION_HOME above), before the models are imported
    from appion.loop.cluster import ClusterSettings
    from appion.base.db import models as m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "plugins"))  # the noop engines
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [sys.path[0], os.environ.get("PYTHONPATH")]))
    from appion.base.steps import load_steps
    from appion.ctfestimation.records import CtfSettings
    from appion.loop import core as loop
    from appion.motioncorrection.records import MotionSettings

    load_steps(refresh=True)

    template = m.AcquisitionImageData.objects.get(filename="ov_00001en")
    fields = {f.attname: getattr(template, f.attname) for f in m.AcquisitionImageData._meta.concrete_fields
              if f.name not in ("id", "timestamp")}
    m.AcquisitionImageData.objects.bulk_create(
        [m.AcquisitionImageData(**{**fields, "filename": f"ov_{i:05d}en", "image": f"ov_{i:05d}en.mrc"})
         for i in range(2, n + 1)])
    stored = {"motion": 0.0, "ctf": 0.0}
    orig_store = loop.Loop._store

    def timed(self, work, record):
        t0 = time.perf_counter()
        try:
            return orig_store(self, work, record)
        finally:
            stored[work.step] += time.perf_counter() - t0

    loop.Loop._store = timed
    started = {}
    orig_poll = loop.Loop.poll

    def poll(self):
        started.setdefault("t", time.perf_counter())
        return orig_poll(self)

    loop.Loop.poll = poll
    settings = loop.LoopSettings(session="ov", runname="bench", wait=False, idle_s=0.0, poll_s=0.2,
                                 step_settings={"motion": MotionSettings(engine="noop"),
                                                "ctf": CtfSettings(engine="noop")},
                                 cluster=ClusterSettings(dashboard_address=":0"), max_in_flight=8)
    t_all = time.perf_counter()
    summary = loop.run_loop(settings, install_signals=False)
    t_end = time.perf_counter()
    done = len(summary.done)
    wall = t_end - started["t"]
    return {"n": done, "total_s": t_end - t_all, "processing_s": wall, "per_exposure_ms": 1e3 * wall / max(1, done),
            "store_motion_ms": 1e3 * stored["motion"] / max(1, done), "store_ctf_ms": 1e3 * stored["ctf"] / max(1, done)}


def bench_sustained(n: int, interval_s: float, size: int, frames: int, workdir: Path) -> dict:
    """A simulated microscope writing a movie every interval_s while watch-import and the loop run."""
    home = workdir / "sustained-home"
    env = _env(home)
    sim = workdir / "sustained-sim"
    _run(["appion", "simulate", "session", "--out", str(sim), "--n", str(n), "--size", str(size), "--frames",
          str(frames), "--name", "su", "--format", "tiff", "--seed", "7"], env)
    _run(["appion", "db", "init"], env)
    frames_dir = workdir / "sustained-frames"
    frames_dir.mkdir()
    watch = subprocess.Popen(["appion", "session", "import", "--name", "su", "--frames-dir", str(frames_dir),
                              "--apix", "1", "--kv", "300", "--cs", "2.7", "--dose", str(1.5 * frames), "--watch",
                              "--interval", "0.2", "--settle", "0.5"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    db_path = home / "appion.sqlite3"
    while not read_rows(db_path, "SELECT 1 FROM SessionData WHERE name = 'su'"):
        time.sleep(0.2)
    loop_log = open(workdir / "sustained-loop.log", "w")
    loop_proc = subprocess.Popen(["appion", "loop", "--session", "su", "--poll", "0.5", "--dashboard-address", ":0"],
                                 env={**env, "APPION_LOG_LEVEL": "INFO"}, stdout=loop_log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    time.sleep(5.0)  # loop and workers up (a microscope session starts before the first exposure)
    complete = {}
    t0 = time.time()
    for i, movie in enumerate(sorted(sim.glob("frames/*.frames.tif"))):
        target = t0 + i * interval_s
        time.sleep(max(0.0, target - time.time()))
        part = frames_dir / f".{movie.name}.part"
        shutil.copyfile(movie, part)
        os.replace(part, frames_dir / movie.name)
        complete[movie.name.split(".frames")[0]] = time.time()
    deadline = time.time() + 600
    rows = []
    while time.time() < deadline:
        rows = read_rows(db_path, "SELECT i.filename, e.finished FROM ApLoopExposureData e JOIN AcquisitionImageData i "
                              "ON i.DEF_id = e.\"REF|leginondata|AcquisitionImageData|image\" "
                              "WHERE e.step = 'ctf' AND e.status = 'done'")
        if len(rows) >= n:
            break
        time.sleep(0.5)
    t_last = max(f for _, f in rows) if rows else time.time()
    stop_processes((loop_proc, watch))
    latencies = sorted(f - complete[name] for name, f in rows if name in complete)
    return {"n": len(rows), "interval_s": interval_s, "size": size, "frames": frames,
            "throughput_per_h": 3600.0 * len(rows) / max(1e-9, t_last - t0),
            "latency_p50_s": _pct(latencies, 50), "latency_p95_s": _pct(latencies, 95),
            "latency_max_s": latencies[-1] if latencies else None}


def _pct(values, q):
    if not values:
        return None
    return sorted(values)[max(0, min(len(values) - 1, int(round(q / 100 * len(values) + 0.5)) - 1))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("overhead", "sustained", "all"), nargs="?", default="all")
    p.add_argument("--n", type=int, help="exposures (overhead default 200, sustained default 12)")
    p.add_argument("--interval", type=float, default=8.0, help="sustained: seconds between movies")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--mariadb", action="store_true", help="overhead: use MariaDB at 127.0.0.1 instead of SQLite")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="appion-bench-loop-"))
    try:
        if args.what in ("sustained", "all"):
            r = bench_sustained(args.n or 12, args.interval, args.size, args.frames, workdir)
            print(f"sustained: {r['n']} movies {r['size']}² × {r['frames']} frames, one every {r['interval_s']:g} s: "
                  f"throughput {r['throughput_per_h']:.0f}/h, latency movie complete → CTF row "
                  f"p50 {r['latency_p50_s']:.1f} s, p95 {r['latency_p95_s']:.1f} s, max {r['latency_max_s']:.1f} s",
                  flush=True)
        if args.what in ("overhead", "all"):
            try:
                r = bench_overhead(args.n or 200, workdir, args.mariadb)
            finally:
                if args.mariadb:
                    _drop_mariadb("appion_bench_loop")
            db = "MariaDB" if args.mariadb else "SQLite"
            print(f"overhead: {r['n']} exposures (no-op motion + CTF, LocalCluster, {db}): "
                  f"{r['per_exposure_ms']:.1f} ms per exposure (target < 50 ms); of which storing rows "
                  f"{r['store_motion_ms']:.1f} ms motion + {r['store_ctf_ms']:.1f} ms CTF; "
                  f"{r['processing_s']:.1f} s processing, {r['total_s']:.1f} s with cluster start/stop", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
