"""Throughput of refinement preparation: filter + Fourier binning, and writing the metadata and stacks
the refinement programs read (RELION STAR tables, Frealign parameter lines, IMAGIC records).

Prints figures; asserts nothing; touches no service (the scheduler figure it used to print queried the
machine's own Slurm).  Run: python benchmarks/refine_prepare.py [--n 2000 --box 256]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from appion.refine.calc import formats, internal


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
    names = [f"{i:06d}@/data/particles.mrcs" for i in range(1, args.n + 1)]
    ctf = [formats.ParticleCtf(15000.0 + i, 14500.0 + i, 30.0) for i in range(args.n)]
    optics = formats.Optics(1.0, args.box, 300.0, 2.7, 0.07)
    t0 = time.perf_counter()
    formats.calc_relion_tables(names, optics, ctf, ["mic.mrc"] * args.n, (3, 1))
    t1 = time.perf_counter()
    formats.calc_frealign_par(ctf)
    t2 = time.perf_counter()
    formats.calc_imagic_files(chunk)
    t3 = time.perf_counter()
    print(f"RELION tables {args.n / (t1 - t0):8.0f} particles/s, Frealign .par {args.n / (t2 - t1):8.0f} particles/s, "
          f"IMAGIC records {args.chunk / (t3 - t2):8.0f} images/s")

if __name__ == "__main__":
    main()
