"""Viewer speed on a large session: 5,000 exposures with motion, CTF and loop rows (inserted directly).

Starts `appion serve` on a temporary embedded database and times each page over HTTP.
Prints the median (and min/max) of several requests; the target for the session page is < 1 s.

    python benchmarks/web.py [--n 5000] [--repeat 9]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_synthetic():
    spec = importlib.util.spec_from_file_location("web_synthetic", REPO / "tests" / "web" / "synthetic.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fetch_s(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        size = len(r.read())
    return time.perf_counter() - start, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="appion-bench-web-"))
    os.environ["APPION_HOME"] = str(home)
    os.environ.pop("APPION_CONFIG", None)
    from appion.base.db import bootstrap
    from appion.base.db.schema import create_missing_tables

    bootstrap()
    create_missing_tables()
    synthetic = load_synthetic()
    start = time.perf_counter()
    s = synthetic.insert_session("bench", args.n, home / "img", home / "runs", n_failed=args.n // 200,
                                 n_pending=args.n // 100)
    print(f"inserted {args.n} exposures (+ aligned sums, trajectories, stats, CTF, loop rows) "
          f"in {time.perf_counter() - start:.1f} s")
    from django.db import connections

    connections.close_all()

    server = subprocess.Popen([sys.executable, "-m", "appion.cli", "serve", "--port", "0"],
                              env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        base = re.search(r"http://[^ ]+/", line).group(0).rstrip("/")
        mid = s.source_ids[len(s.source_ids) // 2]
        pages = [("session page (HTML, newest 100 rows)", f"/session/{s.session_id}/"),
                 ("session page 25 (HTML)", f"/session/{s.session_id}/?page=25"),
                 ("live feed rows.json", f"/session/{s.session_id}/rows.json"),
                 ("time series series.json (all exposures)", f"/session/{s.session_id}/series.json"),
                 ("sessions list", "/"),
                 ("exposure page", f"/exposure/{mid}/")]
        print(f"{'page':<42} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'bytes':>9}")
        for label, path in pages:
            fetch_s(base + path)  # warm-up (template compile, SQLite page cache)
            times, size = [], 0
            for _ in range(args.repeat):
                t, size = fetch_s(base + path)
                times.append(t * 1e3)
            print(f"{label:<42} {statistics.median(times):>10.1f} {min(times):>8.1f} {max(times):>8.1f} {size:>9}")
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
