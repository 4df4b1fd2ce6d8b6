"""The worker side of the loop: what a Dask worker runs for one exposure, and the records it returns.

Workers never touch the database (no Django import here or in anything this module imports at
the top): they read a movie or an image, write files into the run directories and return a small
record (`MotionRecord`, `CtfRecord`) that the loop process stores.  The settings dataclasses live
here because they travel to the workers with every task.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from appion.loop.calc import calc_aligned_filenames, parse_st_log_positions

MOTION_ENGINES = ("builtin", "motioncor2", "motioncor3", "relion", "noop")
CTF_ENGINES = ("builtin", "ctffind4", "gctf", "noop")


def _hashed_fields(settings, unhashed: tuple[str, ...]) -> dict:
    """The settings as a dict without the fields that do not change results (threads, paths ...)."""
    d = dataclasses.asdict(settings)
    for k in unhashed:
        d.pop(k)
    return d


# ====================================================================== settings and records
@dataclass(frozen=True)
class MotionSettings:
    """Motion-correction parameters (the ones that change results are hashed into task keys)."""

    engine: str = "builtin"
    bin: float = 1.0
    doseweight: bool = True
    alignlabel: str = "a"
    ddstartframe: int = 0
    ddnframe: int | None = None
    total_dose_e_per_A2: float | None = None  # None: the preset's dose
    patches: tuple[int, int] = (0, 0)  # (cols, rows), 0 = global only
    bfactor_global_A2: float = 500.0
    bfactor_local_A2: float = 150.0
    iterations: int = 7
    tolerance_px: float = 0.5
    group: int = 1
    eer_sampling: int = 1
    rendered_frame_size: int = 1
    frame_ref: int | None = None  # MotionCor2 -FmRef (None: the program's default)
    mask_center: tuple[float, float] | None = None  # MotionCor2 -MaskCent
    mask_size: tuple[float, float] | None = None  # MotionCor2 -MaskSize
    executable: str | None = None  # external engines: program path
    gpu_ids: str = "0"
    threads: int = 1  # numba/FFT threads a task may use (not hashed)
    noop_seconds: float = 0.0  # engine 'noop': pretend to work this long (not hashed)

    def hashed(self) -> dict:
        return _hashed_fields(self, ("threads", "noop_seconds", "executable", "gpu_ids"))


@dataclass(frozen=True)
class CtfSettings:
    engine: str = "builtin"
    amplitude_contrast: float = 0.07
    fieldsize: int = 512
    resmin_A: float = 30.0
    resmax_A: float = 5.0
    defocus_min_A: float = 5000.0
    defocus_max_A: float = 50000.0
    defstep_um: float | None = None  # classic: search nominal ∓ defstep × numstep (µm)
    numstep: int = 25
    dast_um: float | None = None  # astigmatism restraint (µm; None = none)
    phase_plate: bool = False
    min_phase_shift_deg: float = 0.0
    max_phase_shift_deg: float = 180.0
    phase_search_step_deg: float = 10.0
    bestdb: bool = False
    exhaustive: bool = False
    executable: str | None = None
    extra: tuple[tuple[str, object], ...] = ()  # engine-specific options (e.g. gctf flags)
    nominal_defocus_um: float | None = None  # classic --nominal: overrides the image's nominal defocus
    threads: int = 1
    noop_seconds: float = 0.0

    def hashed(self) -> dict:
        return _hashed_fields(self, ("threads", "noop_seconds", "executable"))


@dataclass(frozen=True)
class ExposureInput:
    """Everything a worker needs to process one movie: no database access on workers."""

    image_id: int
    filename: str
    movie_path: str
    image_dir: str
    preset_name: str
    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    dose_e_per_A2: float | None
    n_frames: int | None
    gain_path: str | None
    dark_path: str | None
    frame_rotate: int
    frame_flip: int
    defects: tuple[str | None, str | None, str | None]  # corrector plan bad rows / cols / pixels (literal text)
    nominal_defocus_m: float | None
    tilt_deg: float
    arrived: float


@dataclass(frozen=True)
class CtfInput:
    """One image to CTF-estimate: its MRC file and optics."""

    source_id: int  # the exposure (movie) it belongs to
    image_id: int | None  # the image row the ApCtfData row will reference (None until registered)
    filename: str
    image_path: str
    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    nominal_defocus_m: float | None


def calc_ctf_input(inp: ExposureInput, image_id: int | None, filename: str, pixel_size_A: float) -> CtfInput:
    """The CTF input for `<filename>.mrc` in the exposure's image directory (its aligned sum, or itself)."""
    return CtfInput(inp.image_id, image_id, filename, str(Path(inp.image_dir) / f"{filename}.mrc"), pixel_size_A,
                    inp.voltage_kV, inp.cs_mm, inp.nominal_defocus_m)


@dataclass(frozen=True)
class MotionRecord:
    image_id: int
    sum_filename: str
    dw_filename: str | None
    shifts_px: tuple[tuple[float, float], ...]  # unbinned, displacement of frame i relative to frame 0
    out_pixel_size_A: float
    out_shape_yx: tuple[int, int]
    bin: float
    seconds: float
    worker: str
    log_path: str | None = None
    plot_path: str | None = None
    log_positions: tuple[tuple[float, float], ...] = ()  # the classic log's per-frame xy shifts (binned px)


@dataclass(frozen=True)
class CtfRecord:
    source_id: int
    image_id: int | None
    defocus1_A: float
    defocus2_A: float
    astig_angle_deg: float
    phase_shift_rad: float
    cross_correlation: float
    fit_resolution_A: float
    confidence_30_10: float | None
    confidence_5_peak: float | None
    resolution_80_percent_A: float | None
    resolution_50_percent_A: float | None
    graphs: tuple[str | None, str | None, str | None, str | None]  # relative to the CTF run directory
    seconds: float
    worker: str


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _move_into(src: Path, target: Path) -> None:
    """Move a finished output into place without a partial file ever being visible under its final name."""
    if src.resolve() == target.resolve():
        return
    try:
        os.replace(src, target)
    except OSError:  # another filesystem: copy to a temporary name there, then rename
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
        src.unlink()


# ====================================================================== worker tasks (run on Dask workers)
def task_motion(inp: ExposureInput, settings: MotionSettings, rundir: str) -> MotionRecord:
    """Align one movie; the sums go into the session's image directory, the classic log and plot into rundir."""
    start = time.perf_counter()
    run = Path(rundir)
    run.mkdir(parents=True, exist_ok=True)
    image_dir = Path(inp.image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    dose_per_frame = calc_dose_per_frame(inp, settings)
    sum_name, dw_name = calc_aligned_filenames(inp.filename, settings.alignlabel, dose_per_frame is not None)
    if settings.engine == "noop":
        if settings.noop_seconds:
            time.sleep(settings.noop_seconds)
        n = inp.n_frames or 2
        zeros = tuple((0.0, 0.0) for _ in range(n))
        return MotionRecord(inp.image_id, sum_name, dw_name, zeros, inp.pixel_size_A * settings.bin, (0, 0),
                            settings.bin, time.perf_counter() - start, _worker_name(), log_positions=zeros)
    from appion.base.io import movies

    if not Path(inp.movie_path).exists():
        raise movies.MovieError(f"{inp.movie_path}: movie file does not exist")
    out = run_motion_engine(inp, settings, run / f"{inp.filename}.mrc", dose_per_frame)
    shifts = tuple((float(x), float(y)) for x, y in out["shifts_px"])
    _move_into(Path(out["sum_path"]), image_dir / f"{sum_name}.mrc")
    if dw_name:
        _move_into(Path(out["dw_path"]), image_dir / f"{dw_name}.mrc")
    shape = _read_mrc_shape(image_dir / f"{sum_name}.mrc")
    log_text = Path(out["log_path"]).read_text()
    return MotionRecord(inp.image_id, sum_name, dw_name, shifts, out["pixel_size_A"], shape, settings.bin,
                        time.perf_counter() - start, _worker_name(), str(out["log_path"]),
                        str(out.get("plot_path") or ""), parse_st_log_positions(log_text))


def calc_dose_per_frame(inp: ExposureInput, settings: MotionSettings) -> float | None:
    """e/Å² per frame for dose weighting (None: no dose known, or dose weighting off)."""
    if not settings.doseweight:
        return None
    total = settings.total_dose_e_per_A2 or inp.dose_e_per_A2
    if not total or not inp.n_frames:
        return None
    return total / inp.n_frames


def _read_mrc_shape(path: Path) -> tuple[int, int]:
    import mrcfile

    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        return int(mrc.header.ny), int(mrc.header.nx)


def run_motion_engine(inp: ExposureInput, settings: MotionSettings, out_path: Path,
                      dose_per_frame: float | None) -> dict:
    """Run the chosen engine on one movie.  Returns sum_path, dw_path, shifts_px (specimen displacement,
    unbinned px, relative to the first frame used), pixel_size_A (output), log_path (classic log), plot_path."""
    from appion.motioncorrection import store as mstore

    first = settings.ddstartframe
    last = None if settings.ddnframe is None else first + settings.ddnframe - 1
    if settings.engine == "builtin":
        from appion.motioncorrection.cli import MotionOptions, align_movie_file

        options = MotionOptions(
            pixel_size_A=inp.pixel_size_A, gain_path=inp.gain_path, gain_rotate=inp.frame_rotate,
            gain_flip=inp.frame_flip, patch_cols=settings.patches[0], patch_rows=settings.patches[1],
            bin_factor=settings.bin, dose_per_frame_e_per_A2=dose_per_frame, voltage_kV=inp.voltage_kV,
            first_frame=first, last_frame=last, eer_sampling=settings.eer_sampling,
            eer_grouping=settings.rendered_frame_size, bfactor_global_A2=settings.bfactor_global_A2,
            bfactor_local_A2=settings.bfactor_local_A2, threads=settings.threads, appion_log=True)
        o = align_movie_file(inp.movie_path, out_path, options)
        return {"sum_path": o.sum_path, "dw_path": o.dw_path, "shifts_px": o.shifts_px,
                "pixel_size_A": o.pixel_size_A, "log_path": o.log_path, "plot_path": o.plot_path}
    from appion.motioncorrection.calc import external as ext

    kind = ext.calc_movie_kind(inp.movie_path)
    if settings.engine in ("motioncor2", "motioncor3"):
        exe = settings.executable or shutil.which("MotionCor2") or shutil.which(settings.engine) or settings.engine
        params = ext.MotionCor2Params(
            pixel_size_A=inp.pixel_size_A, voltage_kV=inp.voltage_kV, start_frame=first, n_frames_sum=settings.ddnframe,
            bin_factor=settings.bin, group_global=settings.group, frame_ref=settings.frame_ref,
            mask_center=settings.mask_center, mask_size=settings.mask_size, n_iter=settings.iterations,
            tolerance_px=settings.tolerance_px, patch_cols=settings.patches[0], patch_rows=settings.patches[1],
            bfactor_global=settings.bfactor_global_A2, bfactor_local=settings.bfactor_local_A2,
            gpu_ids=tuple(int(x) for x in settings.gpu_ids.split(",") if x.strip()),
            dose_weight=dose_per_frame is not None,
            total_dose_e_per_A2=(dose_per_frame or 0.0) * (inp.n_frames or 0) or None, gain_path=inp.gain_path,
            dark_path=inp.dark_path, gain_rotate=inp.frame_rotate, gain_flip=inp.frame_flip,
            rendered_frame_size=settings.rendered_frame_size, eer_sampling=settings.eer_sampling)
        o = ext.run_motioncor2(exe, inp.movie_path, out_path, params, timeout_s=3600.0)
        s = o.shifts_px - o.shifts_px[0]
        disp = ext.calc_displacement_from_relion_shifts(s, kind)
        sum_path, dw_path = o.aligned_mrc_path, o.dose_weighted_mrc_path
    elif settings.engine == "relion":
        params = ext.RelionMotionParams(
            bin_factor=settings.bin, bfactor_A2=settings.bfactor_local_A2, dose_weighting=dose_per_frame is not None,
            dose_per_frame_e_per_A2=dose_per_frame or 1.0, voltage_kV=inp.voltage_kV,
            patch_x=max(1, settings.patches[0]), patch_y=max(1, settings.patches[1]), group_frames=settings.group,
            first_frame_sum=first + 1, last_frame_sum=(last + 1) if last is not None else -1,
            gain_path=inp.gain_path, gain_rot=inp.frame_rotate, gain_flip=inp.frame_flip)
        o = ext.run_relion_motioncorr(inp.movie_path, out_path.parent, params, threads=settings.threads,
                                      pixel_size_A=inp.pixel_size_A,
                                      executable=settings.executable or "relion_run_motioncorr")
        disp = ext.calc_displacement_from_relion_shifts(o.shifts_px, kind)
        if dose_per_frame is not None:
            sum_path, dw_path = o.non_dose_weighted_mrc_path or o.aligned_mrc_path, o.aligned_mrc_path
        else:
            sum_path, dw_path = o.aligned_mrc_path, None
    else:
        raise ValueError(f"unknown motion engine {settings.engine!r} (choose from {', '.join(MOTION_ENGINES)})")
    log_path = out_path.with_name(out_path.stem + "_st_Log.txt")
    text = mstore.calc_appion_log_text(disp, first, len(disp), settings.bin, kind)
    mstore.write_appion_log(log_path, text)
    return {"sum_path": sum_path, "dw_path": dw_path, "shifts_px": disp, "pixel_size_A": inp.pixel_size_A * settings.bin,
            "log_path": log_path, "plot_path": None}


def task_ctf(inp: CtfInput, settings: CtfSettings, rundir: str) -> CtfRecord:
    """Estimate the CTF of one image; diagnostic files go into rundir."""
    start = time.perf_counter()
    run = Path(rundir)
    run.mkdir(parents=True, exist_ok=True)
    if settings.engine == "noop":
        if settings.noop_seconds:
            time.sleep(settings.noop_seconds)
        df = abs(inp.nominal_defocus_m or 1.5e-6) * 1e10
        return CtfRecord(inp.source_id, inp.image_id, df, df, 0.0, 0.0, 0.1, 8.0, None, None, None, None,
                         (None, None, None, None), time.perf_counter() - start, _worker_name())
    if not Path(inp.image_path).exists():
        raise FileNotFoundError(f"{inp.image_path}: image to CTF-estimate does not exist")
    out = run_ctf_engine(inp, settings, run)
    r = out["result"]
    graphs = tuple(os.path.relpath(p, run) if p else None for p in out["graphs"])
    return CtfRecord(inp.source_id, inp.image_id, r.defocus1_A, r.defocus2_A, r.astig_angle_deg, r.phase_shift_rad,
                     r.cross_correlation, r.fit_resolution_A, r.confidence_30_10, r.confidence_5_peak,
                     r.resolution_80_percent_A, r.resolution_50_percent_A, graphs, time.perf_counter() - start,
                     _worker_name())


def calc_ctf_search_range_A(inp: CtfInput, settings: CtfSettings) -> tuple[float, float]:
    """Defocus search range: classic start ∓ defstep × numstep around the nominal defocus when --defstep is
    given and the nominal defocus is known, else [defocus_min, defocus_max]."""
    nominal_A = (settings.nominal_defocus_um * 1e4 if settings.nominal_defocus_um
                 else abs(inp.nominal_defocus_m or 0.0) * 1e10)
    if settings.defstep_um and nominal_A:
        from appion.ctfestimation.calc.external import calc_classic_defocus_range_A

        return calc_classic_defocus_range_A(nominal_A, settings.defstep_um, settings.numstep)
    return settings.defocus_min_A, settings.defocus_max_A


def run_ctf_engine(inp: CtfInput, settings: CtfSettings, rundir: Path) -> dict:
    """Run the chosen CTF engine on one image; returns result (CtfResult) and graphs (4 paths or None)."""
    low, high = calc_ctf_search_range_A(inp, settings)
    step_A = (settings.defstep_um or 0.05) * 1e4
    diag = rundir / f"{inp.filename}-pow.mrc"
    if settings.engine == "builtin":
        from appion.ctfestimation import cli as ctfcli

        options = _builtin_ctf_options(ctfcli, inp, settings, low, high)
        out = ctfcli.estimate_ctf_file(inp.image_path, rundir / f"{inp.filename}-pow.txt", options)
        return {"result": out.result, "graphs": (getattr(out, "png_path", None), None, None, None)}
    from appion.ctfestimation.calc import external as ext

    if settings.engine == "ctffind4":
        params = ext.Ctffind4Params(
            pixel_size_A=inp.pixel_size_A, voltage_kV=inp.voltage_kV, cs_mm=inp.cs_mm, defocus_min_A=low,
            defocus_max_A=high, defocus_step_A=step_A, amplitude_contrast=settings.amplitude_contrast,
            box_size_px=settings.fieldsize, resmin_A=settings.resmin_A, resmax_A=settings.resmax_A,
            exhaustive_search=settings.exhaustive,
            astigmatism_restraint_A=settings.dast_um * 1e4 if settings.dast_um else None,
            find_phase_shift=settings.phase_plate, min_phase_shift_rad=math.radians(settings.min_phase_shift_deg),
            max_phase_shift_rad=math.radians(settings.max_phase_shift_deg),
            phase_shift_step_rad=math.radians(settings.phase_search_step_deg))
        out = ext.run_ctffind4(settings.executable or "ctffind4", inp.image_path, diag, params)
        return {"result": out.result, "graphs": (out.diag_path, out.avrot_path, None, None)}
    if settings.engine == "gctf":
        link = rundir / f"{inp.filename}.mrc"  # Gctf writes next to its input: give it one in the run directory
        if not link.exists():
            tmp = link.with_name(f".{link.name}.link")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(Path(inp.image_path).resolve())
            os.replace(tmp, link)
        extra = dict(settings.extra)
        params = ext.GctfParams(
            pixel_size_A=inp.pixel_size_A, voltage_kV=inp.voltage_kV, cs_mm=inp.cs_mm, defocus_min_A=low,
            defocus_max_A=high, defocus_step_A=step_A, amplitude_contrast=settings.amplitude_contrast,
            box_size_px=settings.fieldsize, resmin_A=settings.resmin_A, resmax_A=settings.resmax_A,
            astigmatism_A=(settings.dast_um or 1000.0) * 1e4, find_phase_shift=settings.phase_plate,
            min_phase_shift_deg=settings.min_phase_shift_deg, max_phase_shift_deg=settings.max_phase_shift_deg,
            phase_shift_step_deg=settings.phase_search_step_deg, **extra)
        out = ext.run_gctf(settings.executable or "gctf", link, params)
        return {"result": out.result, "graphs": (out.ctf_path, out.log_path, None, None)}
    raise ValueError(f"unknown CTF engine {settings.engine!r} (choose from {', '.join(CTF_ENGINES)})")


def _builtin_ctf_options(ctfcli, inp: CtfInput, settings: CtfSettings, low: float, high: float):
    """The built-in engine's options from the loop's settings."""
    return ctfcli.CtfOptions(
        pixel_size_A=inp.pixel_size_A, voltage_kV=inp.voltage_kV, cs_mm=inp.cs_mm,
        amplitude_contrast=settings.amplitude_contrast, box=settings.fieldsize, resmin_A=settings.resmin_A,
        resmax_A=settings.resmax_A, dfmin_A=low, dfmax_A=high,
        dfstep_A=(settings.defstep_um * 1e4) if settings.defstep_um else 100.0,
        astig_restraint_A=(settings.dast_um * 1e4) if settings.dast_um else None,
        find_phase_shift=settings.phase_plate, phase_min_rad=math.radians(settings.min_phase_shift_deg),
        phase_max_rad=math.radians(settings.max_phase_shift_deg),
        phase_step_rad=math.radians(settings.phase_search_step_deg), threads=settings.threads)


def warm_up_worker(steps: tuple[str, ...], motion_engine: str, ctf_engine: str) -> None:
    """Import the engines in a fresh worker before its first movie (numba/scipy imports take seconds)."""
    import importlib

    modules = []
    if "motion" in steps and motion_engine != "noop":
        modules += ["appion.base.io.movies", "appion.motioncorrection.store",
                    "appion.motioncorrection.cli" if motion_engine == "builtin"
                    else "appion.motioncorrection.calc.external"]
    if "ctf" in steps and ctf_engine != "noop":
        modules += ["appion.ctfestimation.cli" if ctf_engine == "builtin" else "appion.ctfestimation.calc.external"]
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # reported properly by the first task that needs it
            pass


def warm_up_plugin(steps: tuple[str, ...], motion_engine: str, ctf_engine: str):
    """A worker plugin that warms up every worker, including ones adaptive scaling starts later."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class WarmUp(WorkerPlugin):
        name = "appion-warm-up"

        def setup(self, worker):
            warm_up_worker(steps, motion_engine, ctf_engine)

    return WarmUp()
