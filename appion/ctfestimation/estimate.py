"""Appion's built-in CTF estimator on one micrograph or movie: `estimate_ctf_file` (a worker runs it)
and `appion ctf estimate`.

Writes OUT.txt (CTFFIND 4.1 results format), OUT_avrot.txt (CTFFIND-style rotational
averages) and OUT.png (diagnostic plot).  No Django here.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

from appion.ctfestimation import inputs, outputs
from appion.ctfestimation.calc import internal
from appion.ctfestimation.calc.classic import CtffindHeader
from appion.ctfestimation.calc.result import CtfResult
from appion.base.warmup import hold_warm_up_lock

ENGINE_VERSION = "appion-internal-1"


@dataclass(frozen=True)
class CtfOptions(internal.CtfSearchParams):
    """The search parameters plus what only the command needs; num_frame_avg applies to movies only."""

    num_frame_avg: int = 1
    threads: int = 1
    write_png: bool = True

    def to_search_params(self) -> internal.CtfSearchParams:
        """The pure search parameters (the command-only fields dropped)."""
        names = [f.name for f in fields(internal.CtfSearchParams)]
        return internal.CtfSearchParams(**{name: getattr(self, name) for name in names})


@dataclass
class CtfOutcome:
    """Result and files of one estimate; seconds per step: read, spectrum, search, refine, diagnostics, write."""

    result: CtfResult
    txt_path: Path
    avrot_path: Path
    png_path: Path | None
    seconds: dict[str, float] = field(default_factory=dict)


def calc_output_paths(out_txt_path) -> tuple[Path, Path, Path]:
    """(OUT.txt, OUT_avrot.txt, OUT.png) from the results path (CTFFIND's naming)."""
    out = Path(out_txt_path)
    stem = out.with_suffix("") if out.suffix.lower() == ".txt" else out
    return out, stem.with_name(stem.name + "_avrot.txt"), stem.with_name(stem.name + ".png")


def _set_threads(threads: int) -> None:
    import numba

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


def _calc_power(image_path: Path, options: CtfOptions, params: internal.CtfSearchParams,
                seconds: dict[str, float]):
    """(spectrum at box sampling, 2·box spectrum or None) of a micrograph or movie.

    A movie contributes the mean of its frame-group averages' spectra.
    """
    t0 = time.perf_counter()
    source = inputs.read_image_source(image_path, options.num_frame_avg)
    if source.kind == "micrograph":
        image = inputs.read_micrograph(image_path)
        t1 = time.perf_counter()
        internal.validate_inputs(image, params)
        power, fine = internal.calc_power_spectra(image, params.box, params.tile_overlap, options.threads)
        seconds["read"] = t1 - t0
        seconds["spectrum"] = time.perf_counter() - t1
        return power, fine
    read_s, spectrum_s, n = time.perf_counter() - t0, 0.0, 0
    power = fine = None
    groups = inputs.iter_frame_group_averages(image_path, options.num_frame_avg, options.threads)
    while True:
        t0 = time.perf_counter()
        image = next(groups, None)
        t1 = time.perf_counter()
        read_s += t1 - t0
        if image is None:
            break
        internal.validate_inputs(image, params)
        p, f = internal.calc_power_spectra(image, params.box, params.tile_overlap, options.threads)
        power = p if power is None else power + p
        fine = f if fine is None else (None if f is None else fine + f)
        n += 1
        spectrum_s += time.perf_counter() - t1
    seconds["read"] = read_s
    seconds["spectrum"] = spectrum_s
    return power / n, (None if fine is None else fine / n)


def estimate_ctf_file(image_path, out_txt_path, options: CtfOptions) -> CtfOutcome:
    """Estimate the CTF of a micrograph (MRC) or movie and write OUT.txt, OUT_avrot.txt, OUT.png.

    Raises ValueError (naming the file) for unusable input or options.
    """
    image_path = Path(image_path)
    txt_path, avrot_path, png_path = calc_output_paths(out_txt_path)
    if not txt_path.parent.is_dir():
        raise ValueError(f"{txt_path.parent}: output directory does not exist")
    params = options.to_search_params()
    _set_threads(options.threads)
    seconds: dict[str, float] = {}
    try:
        power, fine_power = _calc_power(image_path, options, params, seconds)
        t0 = time.perf_counter()
        spec = internal.calc_spectrum_data(power, params.pixel_size_A)
        start = internal.calc_defocus_search(spec, params)
        t1 = time.perf_counter()
        spec_fine = None if fine_power is None else internal.calc_spectrum_data(fine_power, params.pixel_size_A)
        refined = internal.calc_refinement(spec, params, start, spec_fine)
        t2 = time.perf_counter()
        fit = internal.calc_fit_diagnostics(spec, params, refined)
        t3 = time.perf_counter()
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith(str(image_path)) else f"{image_path}: {message}") from exc
    seconds.update(search=t1 - t0, refine=t2 - t1, diagnostics=t3 - t2)
    header = CtffindHeader(
        version=ENGINE_VERSION, run_on=datetime.now().strftime("%Y-%m-%d %H:%M:%S"), input_file=str(image_path),
        pixel_size_A=params.pixel_size_A, voltage_kV=params.voltage_kV, cs_mm=params.cs_mm,
        amplitude_contrast=params.amplitude_contrast, box_size_px=params.box, resmin_A=params.resmin_A,
        resmax_A=params.resmax_A, defocus_min_A=params.dfmin_A, defocus_max_A=params.dfmax_A,
        n_frames_averaged=options.num_frame_avg)
    outputs.write_ctffind_results(txt_path, [fit.result], header)
    outputs.write_avrot(avrot_path, fit, header)
    written_png = None
    if options.write_png:
        written_png = outputs.write_diagnostic_png(png_path, fit, params.resmax_A, title=image_path.name)
    seconds["write"] = time.perf_counter() - t3
    return CtfOutcome(result=fit.result, txt_path=txt_path, avrot_path=avrot_path, png_path=written_png,
                      seconds=seconds)


# ------------------------------------------------------------------------------------ warm-up

WARM_UP_SHAPE = 256  # a tiny micrograph: the engine runs on it in a fraction of a second once compiled


def calc_warm_up_micrograph(pixel_size_A: float = 1.0, seed: int = 0):
    """A tiny micrograph with Thon rings: (WARM_UP_SHAPE, WARM_UP_SHAPE) float32 noise filtered by a CTF
    (15000/14000 Å at 30°, 300 kV, Cs 2.7 mm), with a smooth background."""
    import numpy as np

    from appion.base.physics import calc_ctf, calc_frequency_grid

    n = WARM_UP_SHAPE
    rng = np.random.default_rng(seed)
    k, theta = calc_frequency_grid((n, n), pixel_size_A, rfft=True)
    ctf = calc_ctf(k, theta, 15000.0, 14000.0, 30.0, 300e3, 2.7, 0.07)
    noise = np.fft.rfft2(rng.standard_normal((n, n)))
    image = np.fft.irfft2(noise * (0.3 + ctf * np.exp(-20.0 * k * k)), s=(n, n))
    return (image + 0.5 * rng.standard_normal((n, n)) + 10.0).astype(np.float32)


def warm_up_common_path(work_dir=None) -> dict[str, float]:
    """warm_up_engines without the phase-shift search: a worker's first stage (appion.base.steps.Engine)."""
    return warm_up_engines(work_dir, phases=(False,))


def warm_up_phase_search(work_dir=None) -> dict[str, float]:
    """The second stage after warm_up_common_path: the phase-shift search."""
    return warm_up_engines(work_dir, phases=(True,))


def warm_up_engines(work_dir=None, phases: tuple[bool, ...] = (False, True)) -> dict[str, float]:
    """Compile, or load from the numba cache, every numba function of the estimator before the first image.

    Estimates a tiny synthetic micrograph through estimate_ctf_file (every output written, the diagnostic
    PNG included), without and with the phase-shift search.  Outputs go to a temporary directory (or
    `work_dir`) and are removed.  Returns the seconds each case took (≈ 0.05 s each from a warm cache; a few
    seconds on a fresh install, once per cache directory).
    """
    import tempfile

    from appion.base.simulate.store import write_mrc

    seconds: dict[str, float] = {}
    with hold_warm_up_lock("ctf"), tempfile.TemporaryDirectory(prefix="appion-warm-up-", dir=work_dir) as tmp:
        image = Path(tmp) / "micrograph.mrc"
        write_mrc(image, calc_warm_up_micrograph(), 1.0)
        for phase in phases:
            options = CtfOptions(pixel_size_A=1.0, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.07, box=64,
                                 resmin_A=30.0, resmax_A=5.0, dfmin_A=5000.0, dfmax_A=30000.0, dfstep_A=500.0,
                                 find_phase_shift=phase, phase_step_rad=0.5)
            t0 = time.perf_counter()
            estimate_ctf_file(image, Path(tmp) / f"ctf-{'phase' if phase else 'plain'}.txt", options)
            seconds["phase" if phase else "plain"] = time.perf_counter() - t0
    return seconds


# ------------------------------------------------------------------------------------ command

def cmd_ctf_estimate(args) -> int:
    """The `ctf estimate` command: 0 on success, 2 with one line on stderr for bad input."""
    options = CtfOptions(
        pixel_size_A=args.apix, voltage_kV=args.kv, cs_mm=args.cs, amplitude_contrast=args.ac, box=args.box,
        resmin_A=args.resmin, resmax_A=args.resmax, dfmin_A=args.dfmin, dfmax_A=args.dfmax, dfstep_A=args.dfstep,
        astig_restraint_A=args.astig_restraint, find_phase_shift=args.phase_shift, phase_min_rad=args.phase_min,
        phase_max_rad=args.phase_max, phase_step_rad=args.phase_step, num_frame_avg=args.num_frame_avg,
        threads=args.threads, write_png=not args.no_png)
    try:
        outcome = estimate_ctf_file(args.image, args.output, options)
    except (ValueError, OSError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"appion ctf estimate: error: {text}", file=sys.stderr)
        return 2
    r = outcome.result
    print(f"{args.image}: defocus1 {r.defocus1_A:.1f} Å, defocus2 {r.defocus2_A:.1f} Å, "
          f"angle {r.astig_angle_deg:.2f}°, phase shift {r.phase_shift_rad:.3f} rad, "
          f"cc {r.cross_correlation:.4f}, fit resolution {r.fit_resolution_A:.2f} Å "
          f"({sum(outcome.seconds.values()):.2f} s) -> {outcome.txt_path}")
    return 0
