"""The near-realtime loop: motion-correct and CTF-estimate every new exposure of a session on Dask.

Shape of the loop (one process, the only database writer):

    poll new exposures (DEF_id high-water mark) → filter done / rejected / failed / tilt
      → queue (newest or oldest first) → submit while fewer than --max-in-flight tasks are out
      → as tasks finish: store their rows (pair/result row last), release the future,
        submit the exposure's next step (CTF runs on the aligned dose-weighted sum)
      → errors: record attempt + error, retry after a back-off, then mark permanently failed.

Workers only read movies and write files into the run directories; they return small records
(`MotionRecord`, `CtfRecord`).  Task keys are deterministic (step, exposure id, parameter hash,
attempt), so resubmitting the same work never duplicates it on the cluster.  Every store is
idempotent (the pair/result row is checked inside the transaction that would insert it), so a
restart after SIGKILL stores nothing twice and skips nothing.  Database outages are waited out
(connection closed, back-off, retry).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import heapq
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("appion.loop")

STEPS = ("motion", "ctf")
MOTION_ENGINES = ("builtin", "motioncor2", "motioncor3", "relion", "noop")
CTF_ENGINES = ("builtin", "ctffind4", "gctf", "noop")
TILT_CHOICES = ("all", "notilt", "hightilt", "lowtilt", "minustilt", "plustilt")


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
        d = dataclasses.asdict(self)
        for k in ("threads", "noop_seconds", "executable", "gpu_ids"):
            d.pop(k)
        return d


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
        d = dataclasses.asdict(self)
        for k in ("threads", "noop_seconds", "executable"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class LoopSettings:
    session: str
    preset: str | None = None
    steps: tuple[str, ...] = STEPS
    runname: str = "loop1"
    wait: bool = True
    idle_s: float = 10.0
    poll_s: float = 2.0
    retries: int = 2
    backoff_s: float = 10.0
    grace_s: float = 120.0
    order: str = "oldest"
    max_in_flight: int | None = None
    limit: int | None = None
    skip_rejected: bool = True
    tilt: str = "all"
    commit: bool = True
    continue_run: bool = True
    motion: MotionSettings = field(default_factory=MotionSettings)
    ctf: CtfSettings = field(default_factory=CtfSettings)
    cluster: object = None  # ClusterSettings (None: local defaults)
    motion_rundir: str | None = None
    ctf_rundir: str | None = None
    program: str = "appion loop"
    jobtype: str = "appionloop"
    script_params: tuple[tuple[str, str, str], ...] = ()
    project_id: int | None = None
    start_image_id: int | None = None
    end_image_id: int | None = None
    image_ids: tuple[int, ...] | None = None  # only these (classic --mrclist)


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


# ====================================================================== pure helpers
def calc_params_hash(payload: dict) -> str:
    """A stable short hash of parameters (sorted JSON)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def calc_task_key(step: str, image_id: int, params_hash: str, attempt: int) -> str:
    """Dask key: the same exposure, step, parameters and attempt always get the same key."""
    return f"{step}-{image_id}-{params_hash}-{attempt}"


def calc_backoff_s(base_s: float, attempts: int) -> float:
    """Exponential back-off before attempt n+1 (base, 2×base, 4×base ..., at most 10 minutes)."""
    return min(600.0, base_s * (2 ** max(0, attempts - 1)))


def calc_tilt_skip(tilt_deg: float, tilt: str) -> bool:
    """Classic --tiltangle filter: True when an image of this stage tilt is to be skipped."""
    if tilt == "notilt":
        return abs(tilt_deg) > 3.0
    if tilt == "hightilt":
        return abs(tilt_deg) < 30.0
    if tilt == "lowtilt":
        return abs(tilt_deg) >= 30.0
    if tilt == "minustilt":
        return tilt_deg > -2.0
    if tilt == "plustilt":
        return tilt_deg < 2.0
    return False


def calc_aligned_filenames(filename: str, alignlabel: str, doseweight: bool) -> tuple[str, str | None]:
    """Classic names of the aligned sums: `<source>-a` and `<source>-a-DW`."""
    base = f"{filename}-{alignlabel}"
    return base, (f"{base}-DW" if doseweight else None)


def calc_trajectory_fields(positions, limit: int = 20) -> dict:
    """ApDDFrameTrajectoryData values from the classic log's per-frame positions (relative to the middle frame)."""
    xs = [round(float(x), 5) for x, _ in positions]
    ys = [round(float(y), 5) for _, y in positions]
    return {"pos_x": xs[:limit], "pos_y": ys[:limit], "last_x": xs[-1] if xs else None,
            "last_y": ys[-1] if ys else None, "number_of_positions": len(xs), "reference_index": len(xs) // 2}


def calc_align_stats_fields(positions, pixel_size_A: float) -> dict:
    """ApDDAlignStatsData values: frame-to-frame shifts of the log positions: the three largest with their
    index, and the median (binned pixels; apix converts them)."""
    steps = [math.hypot(positions[i + 1][0] - positions[i][0], positions[i + 1][1] - positions[i][1])
             for i in range(len(positions) - 1)]
    ordered = sorted(steps)
    median = (ordered[len(ordered) // 2] if len(ordered) % 2 else
              0.5 * (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2])) if ordered else None
    out = {"apix": pixel_size_A, "median_shift_value": median}
    ranked = sorted(range(len(steps)), key=lambda i: -steps[i])
    for k in range(3):
        out[f"top_shift{k + 1}_value"] = steps[ranked[k]] if k < len(ranked) else None
        out[f"top_shift{k + 1}_index"] = ranked[k] if k < len(ranked) else None
    return out


def calc_total_drift_px(shifts_px) -> float:
    """Path length of the trajectory in (unbinned) pixels."""
    return float(sum(math.hypot(shifts_px[i + 1][0] - shifts_px[i][0], shifts_px[i + 1][1] - shifts_px[i][1])
                     for i in range(len(shifts_px) - 1)))


def calc_percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a list; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def one_line(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not text.startswith(type(exc).__name__):
        text = f"{type(exc).__name__}: {text}"
    return text[:limit]


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    from appion.base import movies

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


def parse_st_log_positions(text: str) -> tuple[tuple[float, float], ...]:
    """The per-frame `xy shift: x y` values of a classic `_st_Log.txt` (what classic stores as the trajectory)."""
    out = []
    for line in text.splitlines():
        if "xy shift:" in line:
            x, y = line.split("xy shift:", 1)[1].split()[:2]
            out.append((float(x), float(y)))
    return tuple(out)


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
        modules += ["appion.base.movies", "appion.motioncorrection.store",
                    "appion.motioncorrection.cli" if motion_engine == "builtin" else "appion.motioncorrection.calc.external"]
    if "ctf" in steps and ctf_engine != "noop":
        modules += ["appion.ctfestimation.cli" if ctf_engine == "builtin" else "appion.ctfestimation.calc.external"]
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # reported properly by the first task that needs it
            pass


def _warm_up_plugin(steps, motion_engine, ctf_engine):
    """A worker plugin that warms up every worker, including ones adaptive scaling starts later."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class WarmUp(WorkerPlugin):
        name = "appion-warm-up"

        def setup(self, worker):
            warm_up_worker(steps, motion_engine, ctf_engine)

    return WarmUp()


# ====================================================================== database access with outage handling
def _db_errors():
    from django.db.utils import InterfaceError, OperationalError

    return (OperationalError, InterfaceError)


def close_db_connections() -> None:
    """Drop every (possibly broken) connection; Django reconnects on next use."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except Exception:  # a dead server makes close() raise too; the connection is gone either way
            conn.connection = None


class DatabaseRetry:
    """Run database work, waiting out outages: on OperationalError/InterfaceError close the connections,
    back off (0.5 s doubling to 10 s) and try again.  Logs the outage once and its end."""

    def __init__(self, should_give_up=lambda: False):
        self.should_give_up = should_give_up
        self.outage_started: float | None = None
        self.outages = 0

    def __call__(self, fn, *args, what: str = "database work", **kwargs):
        delay = 0.5
        errors = _db_errors()
        while True:
            try:
                result = fn(*args, **kwargs)
            except errors as exc:
                if self.outage_started is None:
                    self.outage_started = time.monotonic()
                    self.outages += 1
                    log.warning("database unavailable during %s (%s); waiting and reconnecting", what, one_line(exc))
                close_db_connections()
                if self.should_give_up():
                    raise
                time.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            if self.outage_started is not None:
                log.warning("database reachable again after %.1f s; continuing", time.monotonic() - self.outage_started)
                self.outage_started = None
            return result


# ====================================================================== exposure inputs (loop process, reads)
def retrieve_exposure_inputs(session, image_rows: list[dict]) -> dict[int, ExposureInput]:
    """ExposureInput per image id for a batch of AcquisitionImageData rows (a handful of queries per batch)."""
    from appion.base import retrieve as r

    ctx = r.retrieve_image_context(image_rows)
    frame_dir = Path(session.frame_path or "")
    image_dir = Path(session.image_path or "")
    out = {}
    for row in image_rows:
        cam = ctx["cameras"].get(row["camera_id"])
        scope = ctx["scopes"].get(row["scope_id"])
        preset = ctx["presets"].get(row["preset_id"])
        tem = ctx["tems"].get(scope.tem_id if scope else None) or ctx["tems"].get(preset.tem_id if preset else None)
        mag = (scope.magnification if scope else None) or (preset.magnification if preset else None)
        px_m = r.calc_pixel_size_m(ctx["calibrations"], mag, tem.id if tem else None,
                                   cam.ccdcamera_id if cam else None, row["timestamp"])
        binning = (cam.binning_x if cam and cam.binning_x else 1)
        frames_name = (cam.frames_name if cam and cam.frames_name else f"{row['filename']}.frames.tif")
        norm = ctx["norms"].get(row["norm_id"])
        dark = ctx["darks"].get(row["dark_id"])
        plan = ctx["plans"].get(row["corrector_plan_id"])
        ts = row["timestamp"]
        out[row["id"]] = ExposureInput(
            image_id=row["id"], filename=row["filename"], movie_path=str(frame_dir / frames_name),
            image_dir=str(image_dir), preset_name=preset.name if preset else "",
            pixel_size_A=(px_m or 1e-10) * binning * 1e10,
            voltage_kV=(scope.high_tension or 300000) / 1e3 if scope else 300.0,
            cs_mm=(tem.cs * 1e3) if tem and tem.cs is not None else 2.7,
            dose_e_per_A2=(preset.dose / 1e20) if preset and preset.dose else None,
            n_frames=cam.nframes if cam else None,
            gain_path=str(image_dir / norm.image) if norm and norm.image else None,
            dark_path=str(image_dir / dark.image) if dark and dark.image else None,
            frame_rotate=int(cam.frame_rotate or 0) if cam else 0,
            frame_flip=int(bool(cam.frame_flip)) if cam else 0,
            defects=(plan.bad_rows, plan.bad_cols, plan.bad_pixels) if plan else (None, None, None),
            nominal_defocus_m=scope.defocus if scope else None,
            tilt_deg=math.degrees(scope.stage_a or 0.0) if scope else 0.0,
            arrived=_epoch(ts),
        )
    return out


def _epoch(ts) -> float:
    """Unix seconds of a naive DEF_timestamp (Django runs with TIME_ZONE=UTC, USE_TZ=False)."""
    import datetime as dt

    if ts is None:
        return time.time()
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return ts.timestamp()


# ====================================================================== errors
def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are a person's to fix (no such session, run name clash): printed as one line."""
    from appion.base.store import RunConflict  # imported late: workers must not start Django

    return (LoopError, RunConflict)


# ====================================================================== the loop
@dataclass
class Work:
    image_id: int
    step: str
    attempt: int
    key: str
    submitted: float
    future: object


@dataclass
class LoopSummary:
    done: list[int] = field(default_factory=list)  # exposures with every step done (this run)
    failed: dict[tuple[int, str], str] = field(default_factory=dict)
    motion: dict[int, MotionRecord] = field(default_factory=dict)
    ctf: dict[int, CtfRecord] = field(default_factory=dict)
    latency_s: dict[int, float] = field(default_factory=dict)
    stopped_by_signal: bool = False
    db_outages: int = 0


class LoopError(RuntimeError):
    """The loop cannot start (no such session, run name clash ...); message is for people."""


class Loop:
    """One loop run over one session.  State is real here: queues, in-flight futures, attempts."""

    def __init__(self, settings: LoopSettings):
        from appion.base.cluster import ClusterSettings

        self.s = settings
        self.cluster_settings = settings.cluster or ClusterSettings()
        self.stop_requested = False
        self.hard_stop = False
        self.db = DatabaseRetry(should_give_up=lambda: self.hard_stop)
        self.summary = LoopSummary()
        self.inputs: dict[int, ExposureInput] = {}
        self.ctf_inputs: dict[int, CtfInput] = {}
        self.rows: dict[tuple[int, str], int] = {}
        self.attempts: dict[tuple[int, str], int] = {}
        self.status: dict[tuple[int, str], str] = {}
        self.queue: list = []
        self.retry_heap: list = []
        self.inflight: dict[str, Work] = {}
        self.seq = 0
        self.high_water = 0
        self.accepted = 0
        self.last_arrival = time.monotonic()
        self.session_done = False
        self.motion_hash = calc_params_hash({"motion": settings.motion.hashed()})
        self.ctf_hash = calc_params_hash({"ctf": settings.ctf.hashed(),
                                          "on": self.motion_hash if "motion" in settings.steps else "images"})
        self.hashes = {"motion": self.motion_hash, "ctf": self.ctf_hash}
        self.run_hash = calc_params_hash({"steps": settings.steps, "preset": settings.preset, **self.hashes})
        self.looprun_id = None
        self.ddstackrun_id = None
        self.acerun_id = None
        self.job_ids: list[int] = []
        self.cluster = self.client = None
        self.task_slots = 1
        self.row_cache: dict = {}

    # ------------------------------------------------------------------ set-up
    def _rundir(self, step: str) -> Path:
        from appion.base.db import current_config

        given = self.s.motion_rundir if step == "motion" else self.s.ctf_rundir
        if given:
            return Path(given).resolve()
        kind = "ddstack" if step == "motion" else "ctf"
        return current_config().appion_base / self.s.session / kind / self.s.runname

    def setup(self) -> None:
        from appion.base import retrieve as r
        from appion.base.db import use_appion_database

        unknown = [x for x in self.s.steps if x not in STEPS]
        if unknown or not self.s.steps:
            raise LoopError(f"unknown step(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(STEPS)}")
        self.session = self.db(r.retrieve_session, self.s.session, what="reading the session")
        if self.session is None:
            raise LoopError(f"session {self.s.session!r} not found in the Leginon database "
                            f"(import one with `appion session import --name {self.s.session} ...`)")
        self.db(use_appion_database, self.s.project_id, what="choosing the appion database")
        self.rundirs = {step: self._rundir(step) for step in self.s.steps}
        for d in self.rundirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.preset_ids = (self.db(r.retrieve_preset_ids, self.session.id, self.s.preset, what="reading presets")
                           if self.s.preset else None)
        if self.s.commit:
            self.db(self._store_runs, what="registering the run")
        self._write_params_file()

    def _first_preset_id(self):
        return self.preset_ids[0] if self.preset_ids else None

    def _store_runs(self) -> None:
        from appion.base import store as st
        from appion.base.db import models as m

        cs_mm = 2.7
        tem = m.InstrumentData.objects.filter(cs__isnull=False).order_by("-id").first()
        if tem is not None:
            cs_mm = tem.cs * 1e3
        if "motion" in self.s.steps:
            from appion.motioncorrection import store as mstore

            method = {"builtin": "appion", "noop": "noop"}.get(self.s.motion.engine, self.s.motion.engine)
            run = mstore.store_ddstack_run(self.session.id, self._first_preset_id(), self.s.runname,
                                           self.rundirs["motion"], self.s.motion.bin, method)
            self.ddstackrun_id = run.id
        if "ctf" in self.s.steps:
            from appion.ctfestimation import store as cstore

            c = self.s.ctf
            run = cstore.store_ace_run(self.session.id, self.s.runname, self.rundirs["ctf"], cs_mm=cs_mm,
                                       amplitude_contrast=c.amplitude_contrast, fieldsize=c.fieldsize,
                                       resmin_A=c.resmin_A, defstep_m=(c.defstep_um or 0.0) * 1e-6, bestdb=c.bestdb,
                                       phase_plate=c.phase_plate, min_phase_shift_deg=c.min_phase_shift_deg,
                                       max_phase_shift_deg=c.max_phase_shift_deg,
                                       phase_search_step_deg=c.phase_search_step_deg)
            self.acerun_id = run.id
        params_json = json.dumps({"steps": list(self.s.steps), "preset": self.s.preset,
                                  "motion": self.s.motion.hashed(), "ctf": self.s.ctf.hashed()}, default=str)
        first_dir = self.rundirs[self.s.steps[0]]
        looprun = st.store_loop_run(self.s.runname, self.session.id, ",".join(self.s.steps), self.run_hash,
                                    params_json, first_dir, self.ddstackrun_id, self.acerun_id, os.getpid(),
                                    time.time())
        self.looprun_id = looprun.id
        for step in self.s.steps:
            job = st.store_appion_job(f"{self.s.runname}.appionsub.job", self.rundirs[step], self.s.jobtype,
                                      self.session.id, status="R", cluster=self.cluster_settings.kind)
            self.job_ids.append(job.id)
            st.store_program_run(self.s.program, self.s.runname, self.rundirs[step], job.id, self.session.id,
                                 list(self.s.script_params))

    def _write_params_file(self) -> None:
        text = json.dumps({"session": self.s.session, "runname": self.s.runname, "steps": list(self.s.steps),
                           "motion": dataclasses.asdict(self.s.motion), "ctf": dataclasses.asdict(self.s.ctf),
                           "hash": self.run_hash}, indent=1, default=str)
        for d in self.rundirs.values():
            _atomic_write_text(d / f"{self.s.runname}.loop-params.json", text)

    # ------------------------------------------------------------------ polling
    def poll(self) -> int:
        """Look for exposures registered since the high-water mark; queue what needs doing.  Returns how many.

        All database work happens before any in-memory state changes, so a poll interrupted by a
        database outage is simply repeated.
        """
        from appion.base import retrieve as r
        from appion.base.db import models as m

        if self.s.preset:
            self.preset_ids = r.retrieve_preset_ids(self.session.id, self.s.preset)
        rows = r.retrieve_new_images(self.session.id, self.high_water, self.preset_ids)
        if not rows:
            return 0
        high_water = max(row["id"] for row in rows)
        rows = [row for row in rows if self._in_id_range(row["id"])]
        if "motion" in self.s.steps and rows:
            cams = r._by_id(m.CameraEMData, (row["camera_id"] for row in rows))
            rows = [row for row in rows if not (cams.get(row["camera_id"]) and cams[row["camera_id"]].align_frames)]
        if self.s.skip_rejected and rows:
            rejected = r.retrieve_rejected_image_ids([row["id"] for row in rows])
            rows = [row for row in rows if row["id"] not in rejected]
        inputs = retrieve_exposure_inputs(self.session, rows) if rows else {}
        if self.s.tilt != "all":
            inputs = {i: x for i, x in inputs.items() if not calc_tilt_skip(x.tilt_deg, self.s.tilt)}
        ids = sorted(inputs)
        todo = self._steps_to_do(ids, inputs) if ids else {}
        chosen = [i for i in ids if todo.get(i)]
        if self.s.order == "newest":
            chosen.reverse()  # --limit with newest first keeps the newest
        if self.s.limit is not None:
            chosen = chosen[:max(0, self.s.limit - self.accepted)]
        new_rows = [(i, step, inputs[i].arrived) for i in chosen for step in todo[i] if (i, step) not in self.rows]
        if new_rows and self.s.commit:
            self.rows.update(self._store_new_rows(new_rows))
        self.high_water = high_water
        for image_id in chosen:
            self.accepted += 1
            self.inputs[image_id] = inputs[image_id]
            self._enqueue(image_id, todo[image_id][0])
        if chosen:
            self.last_arrival = time.monotonic()
        return len(chosen)

    def _in_id_range(self, image_id: int) -> bool:
        if self.s.start_image_id is not None and image_id < self.s.start_image_id:
            return False
        if self.s.end_image_id is not None and image_id > self.s.end_image_id:
            return False
        return self.s.image_ids is None or image_id in self.s.image_ids

    def _store_new_rows(self, items):
        from appion.base import store as st

        return st.store_loop_exposures(self.looprun_id, items)

    def _steps_to_do(self, ids: list[int], inputs: dict[int, ExposureInput]) -> dict[int, list[str]]:
        """Per exposure, the steps still to do in order (none when done or permanently failed)."""
        from appion.base.db import models as m
        from appion.base.db.models.loop import FAILED

        existing = {}
        if self.looprun_id is not None:
            for row_id, image_id, step, status, attempts in (
                    m.ApLoopExposureData.objects.filter(looprun_id=self.looprun_id, image_id__in=ids)
                    .values_list("id", "image_id", "step", "status", "attempts")):
                existing[(image_id, step)] = (row_id, status, attempts or 0)
        for key, (row_id, status, attempts) in existing.items():
            self.rows[key] = row_id
            self.attempts[key] = attempts
        motion_done: dict[int, int] = {}
        ctf_done: set[int] = set()
        use_db = self.s.commit and self.s.continue_run
        if "motion" in self.s.steps and use_db and self.ddstackrun_id:
            from appion.motioncorrection.retrieve import retrieve_motion_done

            motion_done = retrieve_motion_done(self.ddstackrun_id, ids)
            if motion_done and "ctf" in self.s.steps:
                self._restore_ctf_inputs(motion_done, inputs)
        if "ctf" in self.s.steps and use_db and self.acerun_id:
            from appion.ctfestimation.retrieve import retrieve_ctf_done

            if "motion" in self.s.steps:
                targets = {self.ctf_inputs[i].image_id: i for i in motion_done if i in self.ctf_inputs}
                ctf_done = {targets[t] for t in retrieve_ctf_done(self.acerun_id, list(targets))}
            else:
                ctf_done = retrieve_ctf_done(self.acerun_id, ids)
        out = {}
        for image_id in ids:
            steps = []
            for step in self.s.steps:
                done = (step == "motion" and image_id in motion_done) or (step == "ctf" and image_id in ctf_done)
                failed = self.s.continue_run and existing.get((image_id, step), (0, "", 0))[1] == FAILED
                if failed:
                    self.summary.failed[(image_id, step)] = "permanently failed in an earlier run"
                    steps = []
                    break
                if not done:
                    steps.append(step)
            if steps:
                out[image_id] = steps
        return out

    def _restore_ctf_inputs(self, motion_done: dict[int, int], inputs: dict[int, ExposureInput]) -> None:
        """CTF inputs of exposures whose motion correction an earlier run already stored."""
        from appion.base.db import models as m

        results = dict(m.AcquisitionImageData.objects.filter(id__in=list(motion_done.values()))
                       .values_list("id", "filename"))
        wanted = {}
        for source, result in motion_done.items():
            name = results.get(result)
            if name is None:
                continue
            wanted[source] = f"{name}-DW" if self.s.motion.doseweight else name
        from appion.base.retrieve import retrieve_images_by_filename

        found = retrieve_images_by_filename(self.session.id, list(wanted.values()))
        for source, name in wanted.items():
            if name in found and source in inputs:
                inp = inputs[source]
                self.ctf_inputs[source] = CtfInput(source, found[name], name, str(Path(inp.image_dir) / f"{name}.mrc"),
                                                   inp.pixel_size_A * self.s.motion.bin, inp.voltage_kV, inp.cs_mm,
                                                   inp.nominal_defocus_m)

    def _ctf_input_for_image(self, inp: ExposureInput) -> CtfInput:
        """CTF-only runs: the exposure's own MRC in the session's image directory."""
        return CtfInput(inp.image_id, inp.image_id, inp.filename, str(Path(inp.image_dir) / f"{inp.filename}.mrc"),
                        inp.pixel_size_A, inp.voltage_kV, inp.cs_mm, inp.nominal_defocus_m)

    def _enqueue(self, image_id: int, step: str) -> None:
        from appion.base.db.models.loop import QUEUED

        rank = -self.s.steps.index(step)  # later steps first: finish exposures already started
        order = -image_id if self.s.order == "newest" else image_id
        self.seq += 1
        heapq.heappush(self.queue, (rank, order, self.seq, image_id, step))
        self.status[(image_id, step)] = QUEUED

    # ------------------------------------------------------------------ submitting
    def max_in_flight(self) -> int:
        return self.s.max_in_flight or max(2, 2 * self.task_slots)

    def submit_ready(self) -> int:
        from appion.base.db.models.loop import RUNNING

        now = time.time()
        while self.retry_heap and self.retry_heap[0][0] <= now:
            _, _, image_id, step = heapq.heappop(self.retry_heap)
            self._enqueue(image_id, step)
        submitted = []
        while self.queue and len(self.inflight) < self.max_in_flight():
            _, _, _, image_id, step = heapq.heappop(self.queue)
            attempt = self.attempts.get((image_id, step), 0) + 1
            key = calc_task_key(step, image_id, self.hashes[step], attempt)
            if key in self.inflight:
                continue
            future = self._submit(image_id, step, key)
            self.inflight[key] = Work(image_id, step, attempt, key, time.time(), future)
            self.status[(image_id, step)] = RUNNING
            row = self.rows.get((image_id, step))
            if row is not None:
                submitted.append(row)
        if submitted and self.s.commit:
            from appion.base import store as st

            self.db(st.store_loop_exposures_status, submitted, RUNNING, submitted=now, what="marking submissions")
        return len(submitted)

    def _submit(self, image_id: int, step: str, key: str):
        resources = None
        if step == "motion":
            if self.s.motion.engine in ("motioncor2", "motioncor3") and self.cluster_settings.gpus:
                resources = {"GPU": 1}
            return self.client.submit(task_motion, self.inputs[image_id], self.s.motion, str(self.rundirs["motion"]),
                                      key=key, resources=resources, retries=0)
        ctf_input = self.ctf_inputs.get(image_id) or self._ctf_input_for_image(self.inputs[image_id])
        return self.client.submit(task_ctf, ctf_input, self.s.ctf, str(self.rundirs["ctf"]), key=key, retries=0)

    # ------------------------------------------------------------------ collecting
    def collect(self, timeout_s: float) -> int:
        """Wait up to timeout_s for tasks to finish; store each result (one writer).  Returns how many finished."""
        from distributed import wait

        if not self.inflight:
            time.sleep(timeout_s)
            return 0
        try:
            wait([w.future for w in self.inflight.values()], timeout=timeout_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return 0
        finished = [w for w in self.inflight.values() if w.future.status != "pending"]
        for work in finished:
            del self.inflight[work.key]
            self._handle(work)
            work.future.release()
            work.future = None  # no stray references: adaptive clusters can scale down to zero
        return len(finished)

    def _handle(self, work: Work) -> None:
        status = work.future.status
        if status == "finished":
            try:
                record = work.future.result()
                if work.step == "motion":
                    self._store_motion(work, record)
                else:
                    self._store_ctf(work, record)
                return
            except _db_errors():
                raise  # only when giving up on a dead database during a hard stop
            except Exception as exc:  # storing failed for a reason of this exposure (bad data)
                self._failed(work, f"storing the result: {one_line(exc)}")
                return
        if status in ("cancelled", "lost"):
            self._failed(work, f"task {status} (its worker went away)")
            return
        exc = work.future.exception()
        self._failed(work, one_line(exc))

    def _mark_done(self, key: tuple[int, str], now: float, seconds: float, worker: str):
        """The loop's own bookkeeping, run inside the transaction that writes the result rows."""
        row = self.rows.get(key)
        if row is None:
            return None

        def mark():
            from appion.base import store as st
            from appion.base.db.models.loop import DONE

            st.store_loop_exposure_fields(row, status=DONE, finished=now, seconds=seconds, worker=worker)
        return mark

    def _store_motion(self, work: Work, record: MotionRecord) -> None:
        inp = self.inputs[work.image_id]
        now = time.time()
        result_id = dw_id = None
        if self.s.commit:
            from appion.motioncorrection import store as mstore

            result_id, dw_id = self.db(mstore.store_aligned_images, work.image_id, record.sum_filename,
                                       record.dw_filename, record.out_shape_yx, record.bin, self.s.motion.alignlabel,
                                       self.row_cache, what="registering aligned images")
            self.db(mstore.store_motion_rows, self.ddstackrun_id, work.image_id, result_id,
                    calc_trajectory_fields(record.log_positions),
                    calc_align_stats_fields(record.log_positions, record.out_pixel_size_A),
                    inside=self._mark_done((work.image_id, "motion"), now, record.seconds, record.worker),
                    what="storing motion results")
        self.summary.motion[work.image_id] = record
        self.status[(work.image_id, "motion")] = "done"
        ctf_name = record.dw_filename or record.sum_filename
        self.ctf_inputs[work.image_id] = CtfInput(work.image_id, dw_id or result_id, ctf_name,
                                                  str(Path(inp.image_dir) / f"{ctf_name}.mrc"),
                                                  record.out_pixel_size_A, inp.voltage_kV, inp.cs_mm,
                                                  inp.nominal_defocus_m)
        log.debug("%s motion %.2f s on %s", inp.filename, record.seconds, record.worker)
        self._advance(work, now)

    def _store_ctf(self, work: Work, record: CtfRecord) -> None:
        inp = self.inputs[work.image_id]
        now = time.time()
        if self.s.commit:
            from appion.ctfestimation import store as cstore
            from appion.ctfestimation.calc.result import CtfResult

            image_id = record.image_id or self.ctf_inputs[work.image_id].image_id
            result = CtfResult(defocus1_A=record.defocus1_A, defocus2_A=record.defocus2_A,
                               astig_angle_deg=record.astig_angle_deg, phase_shift_rad=record.phase_shift_rad,
                               cross_correlation=record.cross_correlation, fit_resolution_A=record.fit_resolution_A,
                               confidence_30_10=record.confidence_30_10, confidence_5_peak=record.confidence_5_peak,
                               resolution_80_percent_A=record.resolution_80_percent_A,
                               resolution_50_percent_A=record.resolution_50_percent_A)
            defocus_init_m = (self.s.ctf.nominal_defocus_um * 1e-6 if self.s.ctf.nominal_defocus_um
                              else inp.nominal_defocus_m)
            self.db(cstore.store_ctf_rows, self.acerun_id, image_id, result, cs_mm=inp.cs_mm,
                    amplitude_contrast=self.s.ctf.amplitude_contrast, defocus_init_m=defocus_init_m,
                    graphs=record.graphs,
                    inside=self._mark_done((work.image_id, "ctf"), now, record.seconds, record.worker),
                    what="storing CTF results")
        self.summary.ctf[work.image_id] = record
        self.status[(work.image_id, "ctf")] = "done"
        self._advance(work, now)

    def _advance(self, work: Work, now: float) -> None:
        steps = self.s.steps
        i = steps.index(work.step)
        if i + 1 < len(steps):
            self._enqueue(work.image_id, steps[i + 1])
            return
        inp = self.inputs[work.image_id]
        latency = now - inp.arrived
        self.summary.done.append(work.image_id)
        self.summary.latency_s[work.image_id] = latency
        log.info("%s", self._exposure_line(inp, latency))

    def _exposure_line(self, inp: ExposureInput, latency: float) -> str:
        parts = [f"{inp.filename}:"]
        mrec = self.summary.motion.get(inp.image_id)
        crec = self.summary.ctf.get(inp.image_id)
        if mrec:
            parts.append(f"motion {mrec.seconds:.1f} s (drift {calc_total_drift_px(mrec.shifts_px):.1f} px)")
        if crec:
            parts.append(f"ctf {crec.seconds:.1f} s (defocus {crec.defocus1_A / 1e4:.3f}/{crec.defocus2_A / 1e4:.3f} µm,"
                         f" fit to {crec.fit_resolution_A:.1f} Å)")
        parts.append(f"latency {latency:.1f} s")
        return " ".join(parts)

    def _failed(self, work: Work, reason: str) -> None:
        from appion.base.db.models.loop import FAILED, RETRY

        key = (work.image_id, work.step)
        attempts = self.attempts.get(key, 0) + 1
        self.attempts[key] = attempts
        row = self.rows.get(key)
        name = self.inputs[work.image_id].filename
        if attempts <= self.s.retries:
            delay = calc_backoff_s(self.s.backoff_s, attempts)
            log.warning("%s %s attempt %d failed: %s; retrying in %.0f s", name, work.step, attempts, reason, delay)
            self.seq += 1
            heapq.heappush(self.retry_heap, (time.time() + delay, self.seq, work.image_id, work.step))
            self.status[key] = RETRY
            if row is not None and self.s.commit:
                from appion.base import store as st

                self.db(st.store_loop_exposure_fields, row, status=RETRY, attempts=attempts, last_error=reason,
                        retry_after=time.time() + delay, what="recording a failed attempt")
            return
        log.error("%s %s permanently failed after %d attempts: %s", name, work.step, attempts, reason)
        self.status[key] = FAILED
        self.summary.failed[key] = reason
        later = self.s.steps[self.s.steps.index(work.step) + 1:]
        if self.s.commit:
            from appion.base import store as st

            if row is not None:
                self.db(st.store_loop_exposure_fields, row, status=FAILED, attempts=attempts, last_error=reason,
                        finished=time.time(), what="recording a permanent failure")
            for step in later:  # never run: say why rather than leave them queued forever
                if (work.image_id, step) in self.rows:
                    self.db(st.store_loop_exposure_fields, self.rows[(work.image_id, step)], status=FAILED,
                            last_error=f"not run: {work.step} failed", finished=time.time(),
                            what="recording a skipped step")

    # ------------------------------------------------------------------ running
    def idle_and_caught_up(self) -> bool:
        return not self.queue and not self.inflight and not self.retry_heap

    def should_exit(self) -> bool:
        if not self.idle_and_caught_up():
            return False
        if self.s.limit is not None and self.accepted >= self.s.limit:
            return True
        if self.s.wait and not self.session_done:
            return False
        return time.monotonic() - self.last_arrival >= self.s.idle_s

    def run(self) -> LoopSummary:
        from appion.base import retrieve as r
        from appion.base.cluster import describe_dashboard, start_cluster

        self.setup()
        error = None
        try:
            self.cluster, self.client, self.task_slots = start_cluster(self.cluster_settings)
            try:
                self.client.register_plugin(_warm_up_plugin(self.s.steps, self.s.motion.engine, self.s.ctf.engine))
            except Exception as exc:  # only an optimisation
                log.warning("could not warm up the workers: %s", one_line(exc))
            print(f"appion loop: session {self.s.session}, run {self.s.runname}, steps {'+'.join(self.s.steps)} on "
                  f"{self.cluster_settings.kind} ({self.task_slots} task slots); dashboard: "
                  f"{describe_dashboard(self.client)}", flush=True)
            next_poll = next_beat = 0.0
            while not self.stop_requested:
                now = time.monotonic()
                if now >= next_poll:
                    self.db(self.poll, what="polling for new exposures")
                    if not self.session_done:
                        self.session_done = self.db(r.retrieve_session_done, self.session.id,
                                                    what="checking whether the session is done")
                    next_poll = now + self.s.poll_s
                if self.s.commit and self.looprun_id and now >= next_beat:
                    from appion.base import store as st

                    self.db(st.store_loop_run_fields, self.looprun_id, heartbeat=time.time(), what="heartbeat")
                    next_beat = now + 15.0
                self.submit_ready()
                if self.should_exit():
                    break
                self.collect(min(0.5, self.s.poll_s))
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.shutdown(error)
        return self.summary

    def shutdown(self, error: BaseException | None) -> None:
        from appion.base.cluster import stop_cluster
        from appion.base.db.models.loop import QUEUED

        if self.inflight and error is None:
            deadline = time.monotonic() + (0 if self.hard_stop else self.s.grace_s)
            log.info("stopping: waiting up to %.0f s for %d tasks in flight", max(0, deadline - time.monotonic()),
                     len(self.inflight))
            while self.inflight and time.monotonic() < deadline and not self.hard_stop:
                self.collect(0.5)
        cancelled = [w for w in self.inflight.values()]
        if cancelled:
            log.info("cancelling %d unfinished tasks (they will be redone by the next run)", len(cancelled))
            try:
                self.client.cancel([w.future for w in cancelled])
            except Exception as exc:
                log.warning("cancelling tasks: %s", exc)
            rows = [self.rows[(w.image_id, w.step)] for w in cancelled if (w.image_id, w.step) in self.rows]
            self.inflight.clear()
            if rows and self.s.commit:
                from appion.base import store as st

                self._safe_db(st.store_loop_exposures_status, rows, QUEUED)
        if self.client is not None:
            stop_cluster(self.cluster, self.client)
        final = "E" if error is not None and not isinstance(error, KeyboardInterrupt) else "D"
        if self.s.commit and self.looprun_id:
            from appion.base import store as st

            self._safe_db(st.store_loop_run_fields, self.looprun_id, status=final, heartbeat=time.time())
            for job_id in self.job_ids:
                self._safe_db(st.store_job_status, job_id, final)
        self.summary.db_outages = self.db.outages

    def _safe_db(self, fn, *args, **kwargs):
        try:
            return self.db(fn, *args, what="finishing the run", **kwargs)
        except Exception as exc:  # the run is ending anyway; say what could not be recorded
            log.warning("could not record the end of the run: %s", one_line(exc))

    def request_stop(self, signum=None, frame=None) -> None:
        if self.stop_requested:
            self.hard_stop = True
            log.warning("second signal: stopping now")
            return
        self.stop_requested = True
        name = signal.Signals(signum).name if signum else "stop"
        log.warning("%s received: no new submissions; finishing %d tasks in flight (grace %.0f s)", name,
                    len(self.inflight), self.s.grace_s)


def run_loop(settings: LoopSettings, install_signals: bool = True) -> LoopSummary:
    """Run a loop to its end (caught up with --no-wait, SessionDoneLog, --limit, or SIGTERM/SIGINT)."""
    loop = Loop(settings)
    previous = {}
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, loop.request_stop)
            except ValueError:  # not the main thread
                break
    try:
        summary = loop.run()
        summary.stopped_by_signal = loop.stop_requested
        return summary
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ====================================================================== status
def calc_status_report(session_name: str, runname: str | None = None, now: float | None = None) -> str:
    """`appion status`: per loop run and step: done / running / queued / failed (with reasons), rates, backlog."""
    from appion.base import retrieve as r
    from appion.base.db import models as m
    from appion.base.db.models.loop import DONE, FAILED, QUEUED, RETRY, RUNNING

    now = time.time() if now is None else now
    session = r.retrieve_session(session_name)
    if session is None:
        raise LoopError(f"session {session_name!r} not found")
    runs = m.ApLoopRunData.objects.filter(session_id=session.id).order_by("id")
    if runname:
        runs = runs.filter(runname=runname)
    lines = [f"session {session.name}"]
    if not runs.exists():
        lines.append("  no loop runs yet (start one with `appion loop --session NAME`)")
        return "\n".join(lines)
    hour_ago = now - 3600
    for run in runs:
        params = json.loads(run.params or "{}")
        preset = params.get("preset")
        images = m.AcquisitionImageData.objects.filter(session_id=session.id)
        if preset:
            images = images.filter(preset_id__in=r.retrieve_preset_ids(session.id, preset))
        else:
            cams = set(m.CameraEMData.objects.filter(session_id=session.id, align_frames=True)
                       .values_list("id", flat=True))
            images = images.exclude(camera_id__in=cams)
        stamps = [_epoch(t) for t in images.values_list("timestamp", flat=True)]
        total = len(stamps)
        arrived_last_hour = sum(1 for t in stamps if t >= hour_ago)
        alive = run.status == "R" and run.heartbeat and now - run.heartbeat < 60
        state = {"R": "running" if alive else "not running (no heartbeat: killed?)", "D": "finished",
                 "E": "ended with an error"}.get(run.status or "", run.status or "?")
        lines.append(f"run {run.runname} ({run.steps}; {state}; host {run.hostname} pid {run.pid})")
        rows = list(m.ApLoopExposureData.objects.filter(looprun_id=run.id)
                    .values("image_id", "step", "status", "attempts", "last_error", "arrived", "finished"))
        names = dict(m.AcquisitionImageData.objects.filter(id__in={x["image_id"] for x in rows})
                     .values_list("id", "filename"))
        steps = (run.steps or "").split(",")
        for step in steps:
            mine = [x for x in rows if x["step"] == step]
            count = {k: sum(1 for x in mine if x["status"] == k) for k in (DONE, RUNNING, QUEUED, RETRY, FAILED)}
            done_times = [x["finished"] for x in mine if x["status"] == DONE and x["finished"]]
            out_last_hour = sum(1 for t in done_times if t >= hour_ago)
            backlog = total - count[DONE] - count[FAILED]
            lines.append(f"  {step:<6} done {count[DONE]:>5}  running {count[RUNNING]:>3}  queued {count[QUEUED]:>4}  "
                         f"retrying {count[RETRY]:>3}  failed {count[FAILED]:>3}  backlog {backlog:>4}  "
                         f"in {arrived_last_hour}/h  out {out_last_hour}/h")
            latencies = [x["finished"] - x["arrived"] for x in mine
                         if x["status"] == DONE and x["finished"] and x["arrived"]]
            if latencies and step == steps[-1]:
                lines.append(f"         latency from registration: p50 {calc_percentile(latencies, 50):.1f} s, "
                             f"p95 {calc_percentile(latencies, 95):.1f} s")
            for x in mine:
                if x["status"] in (FAILED, RETRY):
                    what = "FAILED" if x["status"] == FAILED else "retrying"
                    lines.append(f"    {what} {names.get(x['image_id'], x['image_id'])} {step} "
                                 f"after {x['attempts']} attempt(s): {x['last_error']}")
    return "\n".join(lines)


def cmd_status(args) -> int:
    try:
        print(calc_status_report(args.session, args.runname))
    except LoopError as exc:
        print(f"appion: {exc}", file=sys.stderr)
        return 2
    return 0


# ====================================================================== command line
def add_loop_options(p: argparse.ArgumentParser) -> None:
    """Options of `appion loop` and `python loop.py`."""
    p.add_argument("--session", required=True, help="session name (Leginon or imported)")
    p.add_argument("--preset", help="only exposures of this preset (default: every movie of the session)")
    p.add_argument("--steps", default="motion,ctf", help="comma-separated steps in order (motion, ctf)")
    p.add_argument("--runname", default="loop1", help="run name: the same name resumes the run")
    p.add_argument("--cluster", default="local", choices=("local", "slurm", "pbs", "sge", "lsf"))
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="exit once caught up and no exposure arrived for --idle seconds")
    p.add_argument("--idle", type=float, default=10.0, help="seconds without new exposures before --no-wait exits")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between database polls")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed exposure step before giving up")
    p.add_argument("--backoff", type=float, default=10.0, help="seconds before the first retry (doubling)")
    p.add_argument("--grace", type=float, default=120.0, help="seconds in-flight tasks may finish after SIGTERM")
    p.add_argument("--order", choices=("oldest", "newest"), default="oldest")
    p.add_argument("--max-in-flight", type=int, help="tasks submitted at once (default 2 per task slot)")
    p.add_argument("--limit", type=int, help="process at most this many exposures")
    p.add_argument("--tiltangle", default="all", choices=TILT_CHOICES)
    p.add_argument("--include-rejects", dest="skip_rejected", action="store_false",
                   help="also process hidden/trashed/assessment-rejected exposures")
    p.add_argument("--project-id", type=int, help="project whose appion database to use (MySQL)")
    g = p.add_argument_group("motion correction")
    g.add_argument("--engine-motion", default="builtin", choices=MOTION_ENGINES)
    g.add_argument("--motion-exe", help="executable for motioncor2/motioncor3/relion engines")
    g.add_argument("--bin", type=float, default=1.0)
    g.add_argument("--no-doseweight", dest="doseweight", action="store_false")
    g.add_argument("--alignlabel", default="a")
    g.add_argument("--patches", default="0,0", help="local motion patches COLS,ROWS (0,0 = global only)")
    g = p.add_argument_group("CTF estimation")
    g.add_argument("--engine-ctf", default="builtin", choices=CTF_ENGINES)
    g.add_argument("--ctf-exe", help="executable for ctffind4/gctf engines")
    g.add_argument("--ampcontrast", type=float, default=0.07)
    g.add_argument("--fieldsize", type=int, default=512)
    g.add_argument("--resmin", type=float, default=30.0, help="Å")
    g.add_argument("--resmax", type=float, default=5.0, help="Å")
    g.add_argument("--defocus-min", type=float, default=0.5, help="µm")
    g.add_argument("--defocus-max", type=float, default=5.0, help="µm")
    g = p.add_argument_group("cluster (unset values come from the Dask configuration, e.g. jobqueue.yaml)")
    g.add_argument("--threads-per-task", type=int, default=1)
    g.add_argument("--workers", type=int, help="local: worker processes (default cores / threads-per-task)")
    g.add_argument("--minimum", type=int, default=0, help="batch: adapt minimum jobs")
    g.add_argument("--maximum", type=int, help="batch: adapt maximum jobs (default 2)")
    g.add_argument("--cores", type=int)
    g.add_argument("--memory")
    g.add_argument("--queue")
    g.add_argument("--account")
    g.add_argument("--walltime")
    g.add_argument("--lifetime")
    g.add_argument("--lifetime-stagger", default="60s")
    g.add_argument("--gpus", type=int, default=0, help="GPU resource per worker (external GPU engines)")
    g.add_argument("--interface")
    g.add_argument("--log-directory")
    g.add_argument("--dashboard-address", default=":8787")
    p.add_argument("--noop-seconds", type=float, default=0.0, help=argparse.SUPPRESS)


def calc_script_params(args: argparse.Namespace, skip=("func", "command", "config")) -> tuple:
    """(name, value, usage) for every option set, for ScriptParamName/Value rows."""
    out = []
    for name, value in sorted(vars(args).items()):
        if name in skip or value is None or callable(value):
            continue
        flag = "--" + name.replace("_", "-")
        out.append((name, str(value), f"{flag}={value}"))
    return tuple(out)


def settings_from_args(args: argparse.Namespace) -> LoopSettings:
    from appion.base.cluster import ClusterSettings

    try:
        cols, rows = (int(x) for x in args.patches.split(","))
    except ValueError:
        raise LoopError(f"--patches {args.patches!r} is not COLS,ROWS") from None
    threads = args.threads_per_task
    motion = MotionSettings(engine=args.engine_motion, bin=args.bin, doseweight=args.doseweight,
                            alignlabel=args.alignlabel, patches=(cols, rows), executable=args.motion_exe,
                            threads=threads, noop_seconds=args.noop_seconds)
    ctf = CtfSettings(engine=args.engine_ctf, amplitude_contrast=args.ampcontrast, fieldsize=args.fieldsize,
                      resmin_A=args.resmin, resmax_A=args.resmax, defocus_min_A=args.defocus_min * 1e4,
                      defocus_max_A=args.defocus_max * 1e4, executable=args.ctf_exe, threads=threads,
                      noop_seconds=args.noop_seconds)
    cluster = ClusterSettings(kind=args.cluster, threads_per_task=threads, workers=args.workers,
                              minimum=args.minimum, maximum=args.maximum, cores=args.cores, memory=args.memory,
                              queue=args.queue, account=args.account, walltime=args.walltime,
                              lifetime=args.lifetime, lifetime_stagger=args.lifetime_stagger, gpus=args.gpus,
                              interface=args.interface, log_directory=args.log_directory,
                              dashboard_address=args.dashboard_address)
    steps = tuple(x.strip() for x in args.steps.split(",") if x.strip())
    return LoopSettings(session=args.session, preset=args.preset, steps=steps, runname=args.runname, wait=args.wait,
                        idle_s=args.idle, poll_s=args.poll, retries=args.retries, backoff_s=args.backoff,
                        grace_s=args.grace, order=args.order, max_in_flight=args.max_in_flight, limit=args.limit,
                        skip_rejected=args.skip_rejected, tilt=args.tiltangle, motion=motion, ctf=ctf,
                        cluster=cluster, script_params=calc_script_params(args), project_id=args.project_id)


def print_summary(summary: LoopSummary) -> None:
    lat = list(summary.latency_s.values())
    text = f"done {len(summary.done)} exposures"
    if lat:
        text += f" (latency p50 {calc_percentile(lat, 50):.1f} s, p95 {calc_percentile(lat, 95):.1f} s)"
    if summary.failed:
        text += f"; {len(summary.failed)} permanently failed"
    if summary.stopped_by_signal:
        text += "; stopped by signal"
    print(text, flush=True)
    for (image_id, step), reason in sorted(summary.failed.items()):
        print(f"  failed: exposure {image_id} {step}: {reason}", flush=True)


def cmd_loop(args) -> int:
    try:
        settings = settings_from_args(args)
        summary = run_loop(settings)
    except user_errors() as exc:
        print(f"appion: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


def add_parser(subparsers) -> None:
    loop = subparsers.add_parser("loop", help="process a session's exposures as they arrive (Dask)")
    add_loop_options(loop)
    loop.set_defaults(func=cmd_loop)
    status = subparsers.add_parser("status", help="what a session's loop runs have done, are doing and failed")
    status.add_argument("session")
    status.add_argument("--runname")
    status.set_defaults(func=cmd_status)


def main(argv: list[str] | None = None) -> int:
    """`python loop.py --session NAME ...`: the same as `appion loop`."""
    from appion.cli import main as appion_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return appion_main(["loop", *argv])


# ====================================================================== demo
def run_demo(session_name: str) -> int:
    """`appion demo`: process the simulated session on this machine and show what the database now holds."""
    from appion.base.cluster import ClusterSettings

    settings = LoopSettings(session=session_name, runname="demo", wait=False, idle_s=0.0, poll_s=0.5,
                            cluster=ClusterSettings(dashboard_address=":0"),
                            script_params=(("session", session_name, f"--session={session_name}"),))
    try:
        summary = run_loop(settings)
    except user_errors() as exc:
        print(f"appion: {exc}", file=sys.stderr)
        return 2
    print()
    print(calc_demo_table(session_name, "demo"))
    print()
    print_summary(summary)
    print(f"see also: appion status {session_name}")
    return 0 if not summary.failed else 1


def calc_demo_table(session_name: str, runname: str) -> str:
    """Per exposure, from the database rows of a run: drift, CTF fit (with the simulated truth when known), time."""
    from appion.base import retrieve as r
    from appion.base.db import models as m
    from appion.base.db.fields import parse_seq

    session = r.retrieve_session(session_name)
    looprun = m.ApLoopRunData.objects.filter(session_id=session.id, runname=runname).order_by("-id").first()
    if looprun is None:
        return f"no run {runname!r} in session {session_name!r}"
    pairs = dict(m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=looprun.ddstackrun_id)
                 .values_list("source_id", "result_id"))
    trajectories = {t.image_id: t for t in m.ApDDFrameTrajectoryData.objects.filter(ddstackrun_id=looprun.ddstackrun_id)}
    ctf_by_image = {c.image_id: c for c in m.ApCtfData.objects.filter(acerun_id=looprun.acerun_id)}
    seconds: dict[int, float] = {}
    for image_id, secs in m.ApLoopExposureData.objects.filter(looprun_id=looprun.id).values_list("image_id", "seconds"):
        seconds[image_id] = seconds.get(image_id, 0.0) + (secs or 0.0)
    names = dict(m.AcquisitionImageData.objects.filter(session_id=session.id).values_list("id", "filename"))
    dw_ids = r.retrieve_images_by_filename(session.id, [f"{names[x]}-DW" for x in pairs.values() if x in names])
    head = (f"{'exposure':<18} {'drift px':>8} {'defocus1 µm':>11} {'defocus2 µm':>11} {'astig °':>7} "
            f"{'truth µm':>15} {'fit Å':>6} {'time s':>6}")
    lines = [head, "-" * len(head)]
    for source in sorted(pairs):
        result = pairs[source]
        traj = trajectories.get(result)
        drift = "-"
        if traj is not None:
            xs, ys = parse_seq(traj.pos_x) or [], parse_seq(traj.pos_y) or []
            drift = f"{calc_total_drift_px(list(zip(xs, ys))):.1f}"
        ctf = ctf_by_image.get(dw_ids.get(f"{names.get(result)}-DW")) or ctf_by_image.get(result)
        if ctf is not None:
            fit = ctf.ctffind4_resolution
            cols = (f"{ctf.defocus1 * 1e6:11.3f} {ctf.defocus2 * 1e6:11.3f} {ctf.angle_astigmatism:7.1f}",
                    f"{fit:6.1f}" if fit < 1e4 else f"{'none':>6}")
        else:
            cols = (f"{'-':>11} {'-':>11} {'-':>7}", f"{'-':>6}")
        truth = _read_truth(session, names.get(source, ""))
        tr = f"{min(truth) / 1e4:7.3f}/{max(truth) / 1e4:7.3f}" if truth else f"{'-':>15}"
        lines.append(f"{names.get(source, source)!s:<18} {drift:>8} {cols[0]} {tr} {cols[1]} "
                     f"{seconds.get(source, 0.0):6.1f}")
    lines.append("(defocus as stored for the Appion viewer: defocus1 ≤ defocus2; drift from the trajectory rows; "
                 "time = motion + CTF compute)")
    return "\n".join(lines)


def _read_truth(session, filename: str):
    """(defocus1_A, defocus2_A) from a simulated movie's `<stem>.truth.json`, when there is one."""
    path = Path(session.frame_path or "") / f"{filename}.truth.json"
    try:
        truth = json.loads(path.read_text())
        return float(truth["defocus1_A"]), float(truth["defocus2_A"])
    except (OSError, ValueError, KeyError):
        return None
