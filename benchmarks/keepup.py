"""Keeping up with a detector: sustained exposures/hour per core, cores needed for 760/h, latency p50/p95.

    python benchmarks/keepup.py [--formats k3,eer] [--n 8] [--threads-per-task 2] [--load 0.8]

Formats (simulated once, kept under benchmarks/out/):
- k3:  K3-size LZW TIFF, 5760×4092, 40 frames, 0.83 Å, 1 e/Å² per frame (benchmarks/motion.py's movie);
- eer: Falcon-4i-like EER, 4096², 1200 raw frames rendered in 40 fractions of 30 (sampling 1), 0.73 Å,
       1 e/Å² per fraction (electrons drawn from a simulated specimen movie, spread over the raw frames).

For each format and --threads-per-task T, on a LocalCluster of cores/T workers (`appion loop` in this
process, the built-in engines, motion + CTF, SQLite; the numba cache warm):
1. Saturated: --n copies of the movie (hard links) registered at once; the loop processes the backlog.
   Sustained throughput = n exposures over the time from the first motion task's start to the last CTF row
   (the start-up is left out) → exposures/hour on this machine and per core, and the cores it takes to keep up
   with 760 exposures/hour (SerialEM's K3 rate) at that per-core rate.
2. Paced: --n copies land one every 3600 / (--load × sustained rate) s (a microscope at --load of what this
   machine sustains) into a directory watched by `appion session import --watch`; latency = movie landing
   → CTF row, p50 and p95.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchutil import read_rows  # noqa: E402

OUT = REPO / "benchmarks" / "out"
TARGET_PER_HOUR = 760.0

EER_SHAPE = (4096, 4096)
EER_RAW_FRAMES = 1200
EER_GROUPING = 30
EER_PIXEL_A = 0.73


def make_k3_movie() -> Path:
    """benchmarks/motion.py's K3-size movie (simulated once)."""
    import motion

    from appion.base.simulate.calc import MovieParams

    path = OUT / f"k3_{motion.K3_FRAMES}.tif"
    motion.simulate_tiff(path, MovieParams(shape=motion.K3_SHAPE, pixel_size_A=motion.K3_PIXEL_A,
                                           n_frames=motion.K3_FRAMES, dose_per_frame_e_per_A2=1.0,
                                           drift_total_px=20.0, seed=7))
    return path


def calc_raw_frame_events(counts: np.ndarray, grouping: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Electron events of `grouping` raw frames whose sum is `counts` (ny, nx): each count of a pixel goes to a
    different raw frame (a physical pixel sees at most one electron per raw frame), at a random sub-pixel
    position of the 4× grid.  Returns (m, 2) int16 [row, column] positions on the 4× grid per raw frame."""
    ny, nx = counts.shape
    flat = counts.ravel()
    pixels = np.repeat(np.nonzero(flat)[0], flat[flat > 0])
    first = np.repeat(rng.integers(0, grouping, size=np.count_nonzero(flat)), flat[flat > 0])
    rank = np.arange(pixels.size) - np.repeat(np.cumsum(flat[flat > 0]) - flat[flat > 0], flat[flat > 0])
    raw = (first + rank) % grouping
    sub = rng.integers(0, 4, size=(pixels.size, 2))
    rows = ((pixels // nx) * 4 + sub[:, 0]).astype(np.int16)
    cols = ((pixels % nx) * 4 + sub[:, 1]).astype(np.int16)
    order = np.argsort(raw, kind="stable")
    bounds = np.searchsorted(raw[order], np.arange(grouping + 1))
    return [np.stack([rows[order[a:b]], cols[order[a:b]]], axis=1) for a, b in zip(bounds[:-1], bounds[1:])]


def make_eer_movie() -> Path:
    """A Falcon-4i-like EER movie (simulated once: a few minutes)."""
    path = OUT / f"eer_{EER_SHAPE[1]}_{EER_RAW_FRAMES}.eer"
    if path.exists():
        return path
    sys.path.insert(0, str(REPO / "tests" / "base"))
    from eer_writer import write_eer

    from appion.base.simulate.calc import MovieParams, calc_movie

    n_fractions = EER_RAW_FRAMES // EER_GROUPING
    print(f"simulating an EER movie {EER_SHAPE[1]}², {EER_RAW_FRAMES} raw frames (cached at {path}) ...", flush=True)
    fractions, _ = calc_movie(MovieParams(shape=EER_SHAPE, pixel_size_A=EER_PIXEL_A, n_frames=n_fractions,
                                          dose_per_frame_e_per_A2=1.0, drift_total_px=20.0, seed=11))
    rng = np.random.default_rng(11)
    raw_frames: list[np.ndarray] = []
    for counts in fractions:
        raw_frames.extend(calc_raw_frame_events(counts, EER_GROUPING, rng))
    del fractions
    tmp = path.with_name(path.name + ".part")
    write_eer(tmp, raw_frames, EER_SHAPE)
    os.replace(tmp, path)
    return path


def _ctf_done(db: Path) -> dict[str, float]:
    rows = read_rows(db, "SELECT i.filename, e.finished FROM ApLoopExposureData e JOIN AcquisitionImageData i "
                     "ON i.DEF_id = e.\"REF|leginondata|AcquisitionImageData|image\" "
                     "WHERE e.step = 'ctf' AND e.status = 'done'")
    return {name: float(t) for name, t in rows}


def _first_motion_start(db: Path, prefix: str) -> float:
    """When the first motion task of the session's exposures started (its row's finish minus its seconds)."""
    rows = read_rows(db, "SELECT i.filename, e.finished, e.seconds FROM ApLoopExposureData e JOIN AcquisitionImageData i "
                     "ON i.DEF_id = e.\"REF|leginondata|AcquisitionImageData|image\" "
                     "WHERE e.step = 'motion' AND e.status = 'done'")
    return min(float(t) - float(sec or 0.0) for name, t, sec in rows if name.startswith(prefix))


def _land(movie: Path, frames_dir: Path, name: str) -> float:
    """The movie appears under `name` at once (a hard link, else a copy renamed into place); returns when."""
    target = frames_dir / name
    try:
        os.link(movie, target)
    except OSError:
        part = frames_dir / f".{name}.part"
        shutil.copyfile(movie, part)
        os.replace(part, target)
    return time.time()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_loop(home: Path, session: str, runname: str, threads: int, grouping: int, idle_s: float) -> None:
    """`appion loop` over the session in this process (motion settings as `appion loop --eer-grouping N` gives)."""
    from appion.ctfestimation.records import CtfSettings
    from appion.loop import core as loop
    from appion.loop.cluster import ClusterSettings
    from appion.motioncorrection.records import MotionSettings

    settings = loop.LoopSettings(session=session, runname=runname, wait=False, idle_s=idle_s, poll_s=0.5,
                                 step_settings={"motion": MotionSettings(threads=threads,
                                                                         rendered_frame_size=grouping),
                                                "ctf": CtfSettings(threads=threads)},
                                 cluster=ClusterSettings(threads_per_task=threads, dashboard_address=":0"))
    loop.run_loop(settings, install_signals=False)


def bench_format(fmt: str, movie: Path, n: int, threads: int, load: float, workdir: Path, env: dict) -> dict:
    suffix = movie.suffix
    apix = EER_PIXEL_A if fmt == "eer" else 0.83
    grouping = EER_GROUPING if fmt == "eer" else 1
    dose = 40.0
    db = Path(env["APPION_HOME"]) / "appion.sqlite3"
    optics = ["--apix", str(apix), "--kv", "300", "--cs", "2.7", "--dose", str(dose)]

    # 1. saturated: a backlog of n movies
    session = f"{fmt}sat{threads}"
    frames = workdir / session
    frames.mkdir()
    for i in range(n):
        _land(movie, frames, f"{session}_{i + 1:05d}en{suffix}")
    subprocess.run(["appion", "session", "import", "--name", session, "--frames-dir", str(frames), *optics],
                   env=env, check=True, capture_output=True)
    t0 = time.time()
    run_loop(Path(env["APPION_HOME"]), session, "keepup", threads, grouping, idle_s=1.0)
    done = sorted(_ctf_done(db).items(), key=lambda kv: kv[1])
    done = [t for name, t in done if name.startswith(session)]
    if len(done) < 2:
        raise RuntimeError(f"{fmt}: only {len(done)} of {n} exposures finished in the saturated run")
    # From the first motion task's start to the last CTF row: the start-up is left out, and the order in which the
    # workers return rows (a CTF task may wait behind the next motion tasks) cannot shorten the interval.
    rate = 3600.0 * len(done) / (done[-1] - _first_motion_start(db, session))
    first_s = done[0] - t0

    # 2. paced at `load` of the sustained rate, through a watched directory
    interval = 3600.0 / (load * rate)
    session = f"{fmt}pace{threads}"
    frames = workdir / session
    frames.mkdir()
    landed: dict[str, float] = {}
    _land(movie, frames, f"{session}_00000en{suffix}")  # the session and its microscope exist before the loop
    subprocess.run(["appion", "session", "import", "--name", session, "--frames-dir", str(frames), *optics,
                    "--preset", "pr"], env=env, check=True, capture_output=True)
    watch = subprocess.Popen(["appion", "session", "import", "--name", session, "--frames-dir", str(frames), *optics,
                              "--watch", "--interval", "0.2", "--settle", "0.3"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def microscope() -> None:
        time.sleep(5.0)  # loop and workers up, as in a session
        start = time.time()
        for i in range(n):
            time.sleep(max(0.0, start + i * interval - time.time()))
            name = f"{session}_{i + 1:05d}en"
            landed[name] = _land(movie, frames, name + suffix)

    scope = threading.Thread(target=microscope, daemon=True)
    scope.start()
    try:
        from appion.loop import core as loop
        from appion.loop.cluster import ClusterSettings
        from appion.ctfestimation.records import CtfSettings
        from appion.motioncorrection.records import MotionSettings

        settings = loop.LoopSettings(session=session, preset="en", runname="keepup", wait=False,
                                     idle_s=interval + 30.0, poll_s=0.5,
                                     step_settings={"motion": MotionSettings(threads=threads,
                                                                             rendered_frame_size=grouping),
                                                    "ctf": CtfSettings(threads=threads)},
                                     cluster=ClusterSettings(threads_per_task=threads, dashboard_address=":0"))
        loop.run_loop(settings, install_signals=False)
    finally:
        scope.join()
        watch.terminate()
        watch.wait(timeout=60)
    finished = _ctf_done(db)
    latencies = sorted(finished[name] - t for name, t in landed.items() if name in finished)
    return {"format": fmt, "threads": threads, "workers": max(1, (os.cpu_count() or 1) // threads),
            "rate_per_h": rate, "per_core_per_h": rate / (os.cpu_count() or 1), "first_s": first_s,
            "interval_s": interval, "paced_done": len(latencies), "n": n,
            "p50_s": _pct(latencies, 50), "p95_s": _pct(latencies, 95)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", default="k3,eer")
    p.add_argument("--n", type=int, default=8, help="movies per run")
    p.add_argument("--threads-per-task", default="2", help="comma-separated: numba/FFT threads per task")
    p.add_argument("--load", type=float, default=0.8, help="paced run: arrival rate as a fraction of the sustained")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    movies = {"k3": make_k3_movie, "eer": make_eer_movie}
    workdir = Path(tempfile.mkdtemp(prefix="appion-bench-keepup-", dir=OUT))
    home = workdir / "home"
    env = {**os.environ, "APPION_HOME": str(home), "APPION_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    env.pop("APPION_CONFIG", None)
    os.environ.update({"APPION_HOME": str(home), "APPION_LOG_LEVEL": "WARNING"})
    os.environ.pop("APPION_CONFIG", None)
    results = []
    try:
        subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
        from appion.base.db import bootstrap

        bootstrap()
        for fmt in args.formats.split(","):
            movie = movies[fmt]()
            for threads in (int(t) for t in args.threads_per_task.split(",")):
                load = os.getloadavg()[0]
                r = bench_format(fmt, movie, args.n, threads, args.load, workdir, env)
                r["load_before"] = load
                results.append(r)
                print(f"{fmt}: {r['workers']} worker(s) × {threads} thread(s): sustained {r['rate_per_h']:.0f}/h "
                      f"({r['per_core_per_h']:.0f}/h per core) → {math.ceil(TARGET_PER_HOUR / r['per_core_per_h'])} "
                      f"cores for {TARGET_PER_HOUR:.0f}/h; paced at one every {r['interval_s']:.1f} s: latency "
                      f"landing → CTF row p50 {r['p50_s']:.1f} s, p95 {r['p95_s']:.1f} s ({r['paced_done']}/{r['n']} "
                      f"done); first result of the backlog after {r['first_s']:.1f} s "
                      f"(load average before {load:.2f})", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if results:
        print(f"\n{'format':8s} {'threads':>7s} {'per hour':>9s} {'per core':>9s} {'cores for 760/h':>16s} "
              f"{'p50 s':>7s} {'p95 s':>7s}")
        for r in results:
            print(f"{r['format']:8s} {r['threads']:7d} {r['rate_per_h']:9.0f} {r['per_core_per_h']:9.0f} "
                  f"{math.ceil(TARGET_PER_HOUR / r['per_core_per_h']):16d} {r['p50_s']:7.1f} {r['p95_s']:7.1f}")
        print(f"(machine: {os.cpu_count()} cores, load average now {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
