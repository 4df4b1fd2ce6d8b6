"""First result on a fresh install: seconds from the first movie landing to its CTF row, with an empty numba cache.

    python benchmarks/firstresult.py [--size 4096 --frames 40] [--delays 0,30] [--threads-per-task 1]

For each delay D: a fresh APPION_HOME and a fresh, empty NUMBA_CACHE_DIR (nothing compiled, as after
`pip install`); `appion session import --watch` on an empty frames directory, then `appion loop` on the
built-in engines (LocalCluster); D seconds after the loop process starts, one simulated movie (LZW TIFF,
uint8 counts) is copied into the frames directory (written under a hidden name, then renamed: "landing").
Printed: the time from landing to the motion row and to the CTF row (target: CTF row ≤ 15 s), and the
compiled-function files the run left in the cache directory.

D = 0 is the worst case (the movie arrives while the workers start and compile); a larger D is the usual
case (a loop is started before the first exposure), where the workers' warm-up has compiled the engines
before the movie lands.
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

TARGET_S = 15.0


def make_movie(out: Path, size: int, frames: int) -> Path:
    """One simulated movie (once per size and frame count, reused between runs)."""
    movie = out / f"first-{size}-{frames}" / "frames" / "fr_00001en.frames.tif"
    if not movie.exists():
        env = {**os.environ, "APPION_HOME": str(out / "sim-home")}
        subprocess.run(["appion", "simulate", "session", "--out", str(movie.parents[1]), "--n", "1", "--size",
                        str(size), "--frames", str(frames), "--name", "fr", "--format", "tiff", "--seed", "3"],
                       env=env, check=True, capture_output=True)
    return movie


def run_once(movie: Path, delay_s: float, frames: int, threads_per_task: int, workdir: Path) -> dict:
    """One fresh loop; returns landing → motion row / CTF row seconds and what it compiled."""
    home = workdir / f"home-{delay_s:g}"
    cache = workdir / f"numba-cache-{delay_s:g}"
    env = {**os.environ, "APPION_HOME": str(home), "NUMBA_CACHE_DIR": str(cache), "APPION_LOG_LEVEL": "INFO",
           "PYTHONUNBUFFERED": "1"}
    env.pop("APPION_CONFIG", None)
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
    optics = ["--apix", "1", "--kv", "300", "--cs", "2.7", "--dose", str(1.5 * frames)]
    # The loop needs the session's microscope (Cs) at start, which an import records with its first movie:
    # a tiny movie of another preset (which the loop, --preset en, leaves alone) records it.  It sits in the
    # frames directory: a session's movies are found under the directory its first import named.
    frames_dir = workdir / f"frames-{delay_s:g}"
    primer = workdir / f"primer-{delay_s:g}"
    subprocess.run(["appion", "simulate", "session", "--out", str(primer), "--n", "1", "--size", "64",
                    "--frames", "4", "--name", "pr"], env=env, check=True, capture_output=True)
    shutil.copytree(primer / "frames", frames_dir)
    subprocess.run(["appion", "session", "import", "--name", "fr", "--frames-dir", str(frames_dir), *optics,
                    "--preset", "pr"], env=env, check=True, capture_output=True)
    log = open(workdir / f"loop-{delay_s:g}.log", "w")
    watch = subprocess.Popen(["appion", "session", "import", "--name", "fr", "--frames-dir", str(frames_dir),
                              *optics, "--watch", "--interval", "0.2", "--settle", "0.3"], env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    db_path = home / "appion.sqlite3"
    t_start = time.time()
    loop = subprocess.Popen(["appion", "loop", "--session", "fr", "--preset", "en", "--poll", "0.3",
                             "--dashboard-address", ":0", "--threads-per-task", str(threads_per_task)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(max(0.0, t_start + delay_s - time.time()))
    part = frames_dir / f".{movie.name}.part"
    shutil.copyfile(movie, part)
    os.replace(part, frames_dir / movie.name)
    landed = time.time()
    found: dict[str, float] = {}
    deadline = landed + 600
    while time.time() < deadline and "ctf" not in found and loop.poll() is None:
        for step, finished in read_rows(db_path, "SELECT step, finished FROM ApLoopExposureData WHERE status = 'done'"):
            found.setdefault(step, float(finished))
        time.sleep(0.1)
    stop_processes((loop, watch))
    log.close()
    if "ctf" not in found:
        print((workdir / f"loop-{delay_s:g}.log").read_text()[-3000:], file=sys.stderr)
    text = (workdir / f"loop-{delay_s:g}.log").read_text(errors="replace")
    lines = [line for line in text.splitlines() if "warmed up" in line or movie.name.split(".")[0] in line]
    compiled = sorted(p.name for p in cache.rglob("*.nbc")) if cache.exists() else []
    return {"delay_s": delay_s, "motion_s": found.get("motion", float("nan")) - landed,
            "ctf_s": found.get("ctf", float("nan")) - landed, "compiled": len(compiled),
            "loop_start_to_land_s": landed - t_start, "log_lines": lines}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096, help="movie side (px)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--delays", default="0,30", help="seconds from loop start to the movie landing, comma-separated")
    p.add_argument("--threads-per-task", type=int, default=1)
    p.add_argument("--movies", type=Path, default=Path(tempfile.gettempdir()) / "appion-bench-movies",
                   help="where the simulated movie is kept between runs")
    p.add_argument("--show-log", action="store_true", help="print the loop's lines about the movie and the warm-up")
    args = p.parse_args(argv)
    args.movies.mkdir(parents=True, exist_ok=True)
    movie = make_movie(args.movies, args.size, args.frames)
    for delay in (float(d) for d in args.delays.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix="appion-bench-first-"))
        try:
            load = os.getloadavg()
            r = run_once(movie, delay, args.frames, args.threads_per_task, workdir)
            print(f"movie {args.size}²×{args.frames} landing {r['loop_start_to_land_s']:.1f} s after the loop "
                  f"started, empty numba cache: motion row after {r['motion_s']:.1f} s, CTF row after "
                  f"{r['ctf_s']:.1f} s (target ≤ {TARGET_S:g} s); {r['compiled']} compiled functions cached "
                  f"(load average before: {load[0]:.2f}, {os.cpu_count()} cores)", flush=True)
            if args.show_log:
                print("\n".join("    " + line for line in r["log_lines"]), flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
