"""Loop memory over a long session: RSS of the loop process across N exposures with the no-op engines.

    python benchmarks/memory.py [--n 20000] [--every 1000] [--trace]

N exposures are inserted directly into the embedded SQLite database (one simulated movie registered by
`appion session import`, the rest bulk-created from its row, as benchmarks/loop.py overhead does) while
one loop (motion + CTF with the test-only no-op engines of tests/plugins, APPION_NOOP_SECONDS=0, a
LocalCluster, --no-wait) runs over them in this process.  They arrive as in a session, --batch at a time
whenever fewer than --backlog wait (with every exposure inserted up front, the memory the first poll
takes for all of them would be reused by any later growth and hide it).  Every --every finished
exposures the loop process's RSS is sampled (after a garbage collection), with the workers' total RSS.

Printed: RSS after the first --every exposures (everything imported, caches filled), at the end, the growth
in between (target ≤ 50 MB over 20,000 exposures) and per exposure.  --trace also prints the Python
allocations that grew most between those two points (tracemalloc, 12 frames; slows the loop down) — where
per-exposure state is held.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_MB = 50.0


def _run(cmd, env):
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)


def prepare_session(home: Path, workdir: Path):
    """A session with one exposure in a fresh APPION_HOME (this process's database from now on); returns
    insert(first, last): bulk-creates exposures first..last (numbers) like it."""
    env = {**os.environ, "APPION_HOME": str(home), "APPION_LOG_LEVEL": "WARNING"}
    env.pop("APPION_CONFIG", None)
    os.environ.update({"APPION_HOME": str(home), "APPION_NOOP_SECONDS": "0", "APPION_LOG_LEVEL": "WARNING"})
    os.environ.pop("APPION_CONFIG", None)
    _run(["appion", "simulate", "session", "--out", str(workdir / "mem"), "--n", "1", "--size", "64", "--frames",
          "4", "--name", "mem"], env)
    _run(["appion", "db", "init"], env)
    _run(["appion", "session", "import", "--name", "mem", "--frames-dir", str(workdir / "mem" / "frames"), "--apix",
          "1", "--kv", "300", "--cs", "2.7", "--dose", "6"], env)
    from appion.base.db import bootstrap

    bootstrap()
    from appion.base.db import models as m

    template = m.AcquisitionImageData.objects.get(filename="mem_00001en")
    fields = {f.attname: getattr(template, f.attname) for f in m.AcquisitionImageData._meta.concrete_fields
              if f.name not in ("id", "timestamp")}

    def insert(first: int, last: int) -> None:
        m.AcquisitionImageData.objects.bulk_create(
            [m.AcquisitionImageData(**{**fields, "filename": f"mem_{i:05d}en", "image": f"mem_{i:05d}en.mrc"})
             for i in range(first, last + 1)])

    return insert


def feed(insert, n: int, batch: int, backlog: int, finished: dict, stop) -> None:
    """Insert exposures 2..n, `batch` at a time whenever fewer than `backlog` are waiting (a thread)."""
    from django.db import OperationalError, connection

    inserted = 1
    try:
        while inserted < n and not stop.is_set():
            if inserted - finished["n"] < backlog:
                last = min(n, inserted + batch)
                try:
                    insert(inserted + 1, last)
                    inserted = last
                except OperationalError:  # the loop holds SQLite's write lock: again in a moment
                    pass
            time.sleep(0.05)
    finally:
        connection.close()


def run(n: int, every: int, trace: bool, batch: int, backlog: int) -> dict:
    import threading

    import psutil

    workdir = Path(tempfile.mkdtemp(prefix="appion-bench-memory-"))
    stop = threading.Event()
    try:
        insert = prepare_session(workdir / "home", workdir)
        plugins = str(REPO / "tests" / "plugins")  # the noop engines, here and in the workers
        sys.path.insert(0, plugins)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")]))
        from appion.base.steps import load_steps
        from appion.ctfestimation.records import CtfSettings
        from appion.loop import core as loop
        from appion.loop.cluster import ClusterSettings
        from appion.motioncorrection.records import MotionSettings

        load_steps(refresh=True)
        me = psutil.Process()
        samples: list[tuple[int, float, float, float]] = []  # (finished, loop RSS MiB, workers RSS MiB, time)
        snapshots = {}
        finished = {"n": 0}
        original = loop.Loop._finish_exposure

        def sample() -> None:
            gc.collect()
            workers = sum(c.memory_info().rss for c in me.children(recursive=True) if c.is_running())
            samples.append((finished["n"], me.memory_info().rss / 2**20, workers / 2**20, time.perf_counter()))
            print(f"  {finished['n']:6d} exposures: loop RSS {samples[-1][1]:7.1f} MiB, workers {samples[-1][2]:7.1f} "
                  f"MiB", flush=True)
            if trace:
                import tracemalloc

                snapshots[finished["n"]] = tracemalloc.take_snapshot()

        def counted(self, image_id):
            original(self, image_id)
            finished["n"] += 1
            if finished["n"] % every == 0:
                sample()

        loop.Loop._finish_exposure = counted
        if trace:
            import tracemalloc

            tracemalloc.start(12)
        feeder = threading.Thread(target=feed, args=(insert, n, batch, backlog, finished, stop), daemon=True)
        feeder.start()
        settings = loop.LoopSettings(session="mem", runname="memory", wait=False, idle_s=5.0, poll_s=0.2,
                                     step_settings={"motion": MotionSettings(engine="noop"),
                                                    "ctf": CtfSettings(engine="noop")},
                                     cluster=ClusterSettings(dashboard_address=":0"), max_in_flight=8)
        t0 = time.perf_counter()
        summary = loop.run_loop(settings, install_signals=False)
        wall = time.perf_counter() - t0
        print(f"  loop finished: {len(summary.done)} exposures done in {wall:.0f} s", flush=True)
        loop.Loop._finish_exposure = original
        stop.set()
        feeder.join()
        if trace and len(snapshots) >= 2:
            first, last = min(snapshots), max(snapshots)
            print(f"\nlargest Python allocation growth between {first} and {last} exposures (tracemalloc):", flush=True)
            for stat in snapshots[last].compare_to(snapshots[first], "traceback")[:12]:
                print(f"  {stat.size_diff / 2**10:+9.1f} KiB in {stat.count_diff:+7d} blocks", flush=True)
                for line in stat.traceback.format()[-8:]:
                    print("     " + line, flush=True)
        return {"n": len(summary.done), "samples": samples, "wall_s": wall}
    finally:
        stop.set()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000, help="exposures")
    p.add_argument("--every", type=int, default=1000, help="sample RSS every this many finished exposures")
    p.add_argument("--batch", type=int, default=100, help="exposures inserted at a time")
    p.add_argument("--backlog", type=int, default=200, help="insert more when fewer than this many wait")
    p.add_argument("--trace", action="store_true", help="tracemalloc: where the growth is held")
    args = p.parse_args(argv)
    r = run(args.n, args.every, args.trace, args.batch, args.backlog)
    s = r["samples"]
    if len(s) < 2:
        print(f"only {r['n']} exposures finished: no growth figure")
        return 1
    (n0, rss0, w0, t0), (n1, rss1, w1, t1) = s[0], s[-1]
    growth = rss1 - rss0
    print(f"\nloop memory, {r['n']} exposures (no-op motion + CTF, LocalCluster, SQLite), {r['wall_s']:.0f} s: "
          f"loop RSS {rss0:.1f} MiB after {n0}, {rss1:.1f} MiB after {n1}: growth {growth:+.1f} MiB "
          f"({growth * 2**20 / max(1, n1 - n0):+.0f} bytes per exposure; target ≤ {TARGET_MB:g} MB over 20,000); "
          f"workers {w0:.0f} → {w1:.0f} MiB; {(t1 - t0) / max(1, n1 - n0) * 1e3:.1f} ms per exposure "
          f"(load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
