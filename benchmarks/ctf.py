"""Accuracy and speed of appion's built-in CTF estimator on simulated 4096² micrographs.

Cases are drawn (fixed seed) from: pixel 0.8–1.3 Å, 200 or 300 kV, mean defocus 0.7–3.5 µm,
astigmatism |Δf1 − Δf2| 0–1000 Å at any angle, dose 25–60 e/Å², B-factor 60 Å², and every
fifth case with an additional phase shift (fitted with the phase search on).  Each
micrograph is written as an MRC file and estimated from the file (read included) at
--threads 1 and --threads 2 (with the default options: box 512, 30–5 Å, 0.5–5 µm search).

Printed per case: errors of the mean defocus, RMS over all directions of the error of the
defocus-versus-direction profile Δf(θ), phase-shift error; then medians/worst and seconds
per step.  Then, side by side, what a worker spends per micrograph: appion's whole estimate as
the loop runs it (estimate_ctf_file: read, estimate, OUT.txt + OUT_avrot.txt + the diagnostic
PNG), wall and CPU seconds, against CTFFIND's (--ctffind EXE, CTFFIND 4.1/5 through appion's
runner, same box and resolution range; without it, issue 15's measured CTFFIND 5.0.2 figure on
this machine).  Usage: python benchmarks/ctf.py [--quick] [--cases N] [--shape 4096] [--ctffind EXE]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appion.base.physics import calc_defocus_at_azimuth_A  # noqa: E402
from appion.base.simulate.calc import MicrographParams, calc_micrograph  # noqa: E402
from appion.base.simulate.store import write_mrc  # noqa: E402
from appion.ctfestimation import estimate, inputs  # noqa: E402
from appion.ctfestimation.calc import internal  # noqa: E402


def draw_cases(n: int, shape: int, seed: int = 2026) -> list[MicrographParams]:
    """Micrograph parameters spanning the acceptance table."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        mean = rng.uniform(7000.0, 35000.0)
        astig = rng.uniform(0.0, 1000.0)
        phase = float(rng.uniform(0.3, 2.8)) if i % 5 == 4 else 0.0
        cases.append(MicrographParams(
            shape=(shape, shape), pixel_size_A=float(rng.uniform(0.8, 1.3)),
            voltage_kV=float(rng.choice([200.0, 300.0])), cs_mm=2.7, amplitude_contrast=0.07,
            defocus1_A=mean + astig / 2, defocus2_A=mean - astig / 2, astig_angle_deg=float(rng.uniform(-90, 90)),
            phase_shift_rad=phase, bfactor_A2=60.0, seed=1000 + i, dose_e_per_A2=float(rng.uniform(25.0, 60.0))))
    return cases


def calc_errors(result, truth: MicrographParams) -> tuple[float, float, float]:
    """(mean-defocus error Å, RMS of the Δf(θ) profile error Å, phase error rad modulo π)."""
    theta = np.linspace(0.0, np.pi, 360, endpoint=False)
    fit = calc_defocus_at_azimuth_A(result.defocus1_A, result.defocus2_A, result.astig_angle_deg, theta)
    true = calc_defocus_at_azimuth_A(truth.defocus1_A, truth.defocus2_A, truth.astig_angle_deg, theta)
    dphase = (result.phase_shift_rad - truth.phase_shift_rad + np.pi / 2) % np.pi - np.pi / 2
    return (result.mean_defocus_A - 0.5 * (truth.defocus1_A + truth.defocus2_A),
            float(np.sqrt(np.mean((fit - true) ** 2))), float(dphase))


def estimate_from_file(path: Path, params: internal.CtfSearchParams, threads: int):
    """(CtfResult, seconds per step) for reading + estimating one micrograph file."""
    t0 = time.perf_counter()
    c0 = time.process_time()
    image = inputs.read_micrograph(path)
    t1 = time.perf_counter()
    internal.validate_inputs(image, params)
    power, fine_power = internal.calc_power_spectra(image, params.box, params.tile_overlap, threads)
    spec = internal.calc_spectrum_data(power, params.pixel_size_A)
    t2 = time.perf_counter()
    start = internal.calc_defocus_search(spec, params)
    t3 = time.perf_counter()
    spec_fine = None if fine_power is None else internal.calc_spectrum_data(fine_power, params.pixel_size_A)
    refined = internal.calc_refinement(spec, params, start, spec_fine)
    t4 = time.perf_counter()
    fit = internal.calc_fit_diagnostics(spec, params, refined)
    t5 = time.perf_counter()
    return fit.result, {"read": t1 - t0, "spectrum": t2 - t1, "search": t3 - t2, "refine": t4 - t3,
                        "diagnostics": t5 - t4, "total": t5 - t0, "cpu": time.process_time() - c0}


# CTFFIND 5.0.2 on a 4096² micrograph, box 512, 30–5 Å, one thread, this machine idle (issue 15).
CTFFIND5_REFERENCE_S = 0.92


def estimate_with_outputs(path: Path, out_dir: Path, params: internal.CtfSearchParams,
                          threads: int) -> tuple[float, float, dict[str, float]]:
    """(wall s, CPU s, seconds per step) of the whole worker-side estimate with every output file written."""
    options = estimate.CtfOptions(**{f: getattr(params, f) for f in params.__dataclass_fields__}, threads=threads)
    t0, c0 = time.perf_counter(), time.process_time()
    outcome = estimate.estimate_ctf_file(path, out_dir / (path.stem + ".txt"), options)
    return time.perf_counter() - t0, time.process_time() - c0, outcome.seconds


def time_ctffind(executable: str, path: Path, out_dir: Path, params: internal.CtfSearchParams,
                 threads: int) -> tuple[float, float]:
    """(wall s, CPU s of the child) of CTFFIND on one micrograph with the same box, range and search."""
    from appion.ctfestimation.calc.external.ctffind4 import Ctffind4Params, run_ctffind4

    cp = Ctffind4Params(pixel_size_A=params.pixel_size_A, voltage_kV=params.voltage_kV, cs_mm=params.cs_mm,
                        defocus_min_A=params.dfmin_A, defocus_max_A=params.dfmax_A, defocus_step_A=params.dfstep_A,
                        amplitude_contrast=params.amplitude_contrast, box_size_px=params.box,
                        resmin_A=params.resmin_A, resmax_A=params.resmax_A,
                        find_phase_shift=params.find_phase_shift, n_threads=threads)
    r0 = os.times()
    t0 = time.perf_counter()
    run_ctffind4(executable, path, out_dir / (path.stem + "_ctffind.mrc"), cp)
    r1 = os.times()
    return time.perf_counter() - t0, (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 cases instead of 25")
    parser.add_argument("--cases", type=int, default=None, help="number of cases")
    parser.add_argument("--shape", type=int, default=4096, help="micrograph size (px)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case and thread count")
    parser.add_argument("--ctffind", default=None, help="a CTFFIND 4.1/5 executable to time side by side")
    args = parser.parse_args(argv)
    n = args.cases or (5 if args.quick else 25)
    cases = draw_cases(n, args.shape)
    import numba

    rows, times = [], {1: [], 2: []}
    full = {1: [], 2: []}
    ctffind = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="ctf-bench-") as tmp:
        for i, case in enumerate(cases):
            image, _ = calc_micrograph(case)
            path = Path(tmp) / f"mic{i:03d}.mrc"
            write_mrc(path, image, case.pixel_size_A)
            del image
            params = internal.CtfSearchParams(pixel_size_A=case.pixel_size_A, voltage_kV=case.voltage_kV,
                                              cs_mm=case.cs_mm, amplitude_contrast=case.amplitude_contrast,
                                              find_phase_shift=case.phase_shift_rad != 0.0)
            if i == 0:
                estimate_from_file(path, params, 1)  # numba compilation / cache load
            result = None
            for threads in (1, 2):
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                for _ in range(args.repeats):
                    result, sec = estimate_from_file(path, params, threads)
                    times[threads].append(sec)
                for _ in range(args.repeats):
                    full[threads].append(estimate_with_outputs(path, Path(tmp), params, threads))
                if args.ctffind:
                    ctffind[threads].append(time_ctffind(args.ctffind, path, Path(tmp), params, threads))
            derr, rms, perr = calc_errors(result, case)
            rows.append((case, result, derr, rms, perr))
            mean = 0.5 * (case.defocus1_A + case.defocus2_A)
            print(f"{i:3d} apix {case.pixel_size_A:.3f} {case.voltage_kV:3.0f}kV mean {mean:8.1f} "
                  f"astig {case.defocus1_A - case.defocus2_A:6.1f} ang {case.astig_angle_deg:6.1f} "
                  f"dose {case.dose_e_per_A2:4.1f} phase {case.phase_shift_rad:4.2f} | "
                  f"fit {result.defocus1_A:8.1f} {result.defocus2_A:8.1f} {result.astig_angle_deg:6.1f} "
                  f"{result.phase_shift_rad:5.3f} cc {result.cross_correlation:.3f} "
                  f"res {result.fit_resolution_A:5.2f} | d_mean {derr:+6.2f} rms {rms:5.2f}"
                  + (f" d_phase {perr:+.4f}" if case.phase_shift_rad else ""), flush=True)
            path.unlink()
    derrs = np.abs([r[2] for r in rows])
    rmss = np.array([r[3] for r in rows])
    perrs = np.abs([r[4] for r in rows if r[0].phase_shift_rad])
    print("\nsummary over", len(rows), "cases")
    print(f"|error of mean defocus| (Å): median {np.median(derrs):.2f}, worst {derrs.max():.2f}"
          f"   (acceptance: ≤ 3 median, ≤ 10 worst)")
    print(f"RMS error of Δf(θ) profile (Å): median {np.median(rmss):.2f}, max {rmss.max():.2f}"
          f"   (acceptance: ≤ 5 median, ≤ 10 every case)")
    if perrs.size:
        print(f"|phase shift error| (rad): median {np.median(perrs):.4f}, max {perrs.max():.4f}   (acceptance ≤ 0.05)")
    for threads in (1, 2):
        t = times[threads]
        med = {k: float(np.median([s[k] for s in t])) for k in ("read", "spectrum", "search", "refine",
                                                                 "diagnostics", "total", "cpu")}
        print(f"--threads {threads}: median wall seconds per {args.shape}² micrograph (read included) "
              f"{med['total']:.3f} (CPU seconds {med['cpu']:.3f}); per step (wall): "
              + ", ".join(f"{k} {v:.3f}" for k, v in med.items() if k not in ("total", "cpu")))
    print("\nper micrograph on a worker, diagnostics included (read, estimate, OUT.txt, OUT_avrot.txt, OUT.png):")
    print(f"{'':12s} {'appion wall':>12s} {'appion CPU':>11s} {'png write':>10s} | {'CTFFIND wall':>13s} "
          f"{'CTFFIND CPU':>12s} | speed-up")
    for threads in (1, 2):
        wall = float(np.median([f[0] for f in full[threads]]))
        cpu = float(np.median([f[1] for f in full[threads]]))
        write = float(np.median([f[2]["write"] for f in full[threads]]))
        if ctffind[threads]:
            c_wall = float(np.median([c[0] for c in ctffind[threads]]))
            c_cpu = f"{float(np.median([c[1] for c in ctffind[threads]])):12.3f}"
            c_text = f"{c_wall:13.3f}"
        else:
            c_wall, c_cpu, c_text = CTFFIND5_REFERENCE_S, f"{'':12s}", f"{CTFFIND5_REFERENCE_S:12.2f}*"
        print(f"--threads {threads} {wall:12.3f} {cpu:11.3f} {write:10.3f} | {c_text} {c_cpu} | "
              f"{c_wall / wall:.2f}×   (target: ≤ 0.45 s, ≥ 2× CTFFIND)")
    if not args.ctffind:
        print(f"* CTFFIND 5.0.2 measured on this machine, idle, 1 thread (issue 15); --ctffind EXE measures it here")
    print(f"(machine: {os.cpu_count()} cores, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
