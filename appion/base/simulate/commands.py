"""`appion simulate session`: simulated movies with their truth (no database)."""
from __future__ import annotations

from pathlib import Path

from appion.base.simulate.calc import MovieParams
from appion.base.simulate.store import write_simulated_session


def cmd_simulate_session(args) -> int:
    base = MovieParams(shape=(args.size, args.size), pixel_size_A=args.apix, voltage_kV=args.kv, cs_mm=args.cs,
                       n_frames=args.frames, dose_per_frame_e_per_A2=args.dose_per_frame,
                       drift_total_px=args.drift, gain_sigma=args.gain_sigma, bfactor_A2=args.bfactor)

    def progress(i, n, path):
        print(f"[{i}/{n}] {path.name}", flush=True)

    paths = write_simulated_session(args.out, args.n, base, fmt=args.format, name=args.name,
                                    micrographs=args.micrographs, seed=args.seed, progress=progress)
    print(f"wrote {len(paths)} movies to {Path(args.out) / 'frames'}")
    return 0
