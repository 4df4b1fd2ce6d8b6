"""Start-up time of the commands: wall time from exec to exit of `--help`, each in a fresh interpreter.

Prints, per command, the median and the minimum of --repeat runs next to its target, then the modules
that cost `appion --help` the most (python -X importtime, cumulative).  Asserts nothing.

    python benchmarks/startup.py [--repeat 5] [--top 10]

Targets: `appion --help` 0.5 s; a subcommand's help (`appion status --help`, `appion session import
--help`) 0.8 s; drop-ins and runJob.py 1 s.  Commands are run as found on PATH (as a user types them,
console-script wrapper and any pyenv shim included).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = (  # (argv, target seconds)
    (["appion", "--help"], 0.5),
    (["appion", "status", "--help"], 0.8),
    (["appion", "session", "import", "--help"], 0.8),
    (["makeDDAlignMotionCor2_UCSF.py", "--help"], 1.0),
    (["ctffind4.py", "--help"], 1.0),
    (["runJob.py", "--help"], 1.0),
)


def time_command(argv: list[str], repeat: int, env: dict) -> tuple[list[float], str | None]:
    """Wall times of `repeat` runs; the error (exit status and last stderr line) if a run failed."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            return times, f"exit {proc.returncode}: {last}"
    return times, None


def heaviest_imports(argv: list[str], top: int, env: dict) -> list[tuple[float, float, str]]:
    """(cumulative ms, self ms, module) of the `top` costliest imports of `python -X importtime -m ...`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = (part.strip() for part in line[len("import time:"):].split("|"))
        rows.append((int(cum_us) / 1e3, int(self_us) / 1e3, name))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--top", type=int, default=10)
    args = p.parse_args()
    # A fresh, empty APPION_HOME: nothing here may depend on (or create) a database.
    home = tempfile.mkdtemp(prefix="appion-bench-startup-")
    env = {**os.environ, "APPION_HOME": home, "APPION_LOG_LEVEL": "WARNING"}
    env.pop("APPION_CONFIG", None)

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)  # warm the file cache
    floor, _ = time_command([sys.executable, "-c", "pass"], args.repeat, env)
    print(f"{args.repeat} runs each; python itself (-c pass): median {statistics.median(floor):.2f} s, "
          f"min {min(floor):.2f} s; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"{'command':<44} {'median s':>8} {'min s':>6} {'target s':>8}  verdict")
    for argv, target in COMMANDS:
        path = shutil.which(argv[0], path=env.get("PATH"))
        label = " ".join(argv)
        if path is None:
            print(f"{label:<44} {'-':>8} {'-':>6} {target:>8.1f}  not installed (pip install -e .)")
            continue
        times, error = time_command([path, *argv[1:]], args.repeat, env)
        median = statistics.median(times)
        verdict = f"FAILED ({error})" if error else ("ok" if median <= target else "SLOW")
        print(f"{label:<44} {median:>8.2f} {min(times):>6.2f} {target:>8.1f}  {verdict}")
    print(f"\nheaviest imports of `appion --help` (python -X importtime -m appion.cli --help), top {args.top}:")
    print(f"{'cumulative ms':>13} {'self ms':>8}  module")
    for cum, own, name in heaviest_imports(["-m", "appion.cli", "--help"], args.top, env):
        print(f"{cum:>13.1f} {own:>8.1f}  {name}")
    shutil.rmtree(home, ignore_errors=True)
    print(f"\n({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
