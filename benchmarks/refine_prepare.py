"""Throughput of refinement preparation (filter + Fourier binning) and of one scheduler status query.

Prints figures; asserts nothing.  Run: python benchmarks/refine_prepare.py [--n 2000 --box 256]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import time

import numpy as np

from appion.refine.calc import internal


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--box", type=int, default=256)
    p.add_argument("--chunk", type=int, default=256)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    chunk = rng.normal(size=(args.chunk, args.box, args.box)).astype(np.float32)
    internal.calc_prepared(chunk[:2], 1.0, 8.0, 100.0, 2, ndim=2)  # compile / warm up
    for label, lp, hp, b in (("lowpass only", 8.0, None, 1), ("band-pass + bin 2", 8.0, 100.0, 2),
                             ("bin 4 only", None, None, 4)):
        t0 = time.perf_counter()
        done = 0
        while done < args.n:
            internal.calc_prepared(chunk, 1.0, lp, hp, b, ndim=2)
            done += args.chunk
        dt = time.perf_counter() - t0
        print(f"{label:<20} {done / dt:8.0f} particles/s  ({args.box}² box, chunks of {args.chunk})")
    vol = rng.normal(size=(args.box,) * 3).astype(np.float32)
    t0 = time.perf_counter()
    internal.calc_prepared(vol, 1.0, 8.0, 100.0, 2, ndim=3)
    print(f"model {args.box}³ band-pass + bin 2: {time.perf_counter() - t0:.2f} s")
    if shutil.which("squeue"):
        t0 = time.perf_counter()
        for _ in range(20):
            subprocess.run(["squeue", "-h", "-j", "1", "-o", "%T"], capture_output=True)
        print(f"squeue status query: {(time.perf_counter() - t0) / 20 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
