"""The motion step's worker side: align one movie with the chosen engine, write its files, return a record.

Runs on Dask workers: no Django here or in anything imported at the top.  The aligned sums go into the
session's image directory, the classic log and plot into the run directory.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
from pathlib import Path

from appion.base.exposure import ExposureInput
from appion.base.steps import StepInput
from appion.base.versions import calc_executable_version
from appion.motioncorrection.calc.rows import calc_aligned_filenames, calc_total_drift_px, parse_st_log_positions
from appion.motioncorrection.records import MotionRecord, MotionSettings

# The program each external engine runs when no --motion-exe is given (never another engine's program).
PROGRAMS = {"motioncor2": "MotionCor2", "motioncor3": "MotionCor3", "relion": "relion_run_motioncorr"}


def calc_engine_program(settings: MotionSettings) -> str:
    return settings.executable or PROGRAMS[settings.engine]


def calc_engine_version(settings: MotionSettings) -> str:
    return calc_executable_version(calc_engine_program(settings))


def worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def move_into(src: Path, target: Path) -> None:
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


class MovieStillBeingWritten(OSError):
    """The movie changed after it was registered (more frames, or its size or time changed while it was read):
    a transient error, so the loop retries it later instead of storing a result of a partial movie."""


def stat_movie(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a movie file."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def check_movie_unchanged(path: str, before: tuple[int, int], when: str) -> None:
    """MovieStillBeingWritten when the movie's size or modification time differs from `before`."""
    try:
        after = stat_movie(path)
    except FileNotFoundError:
        raise MovieStillBeingWritten(f"{path}: the movie disappeared {when} (being moved or rewritten?)") from None
    if after != before:
        raise MovieStillBeingWritten(f"{path}: the movie changed {when} ({before[0]} -> {after[0]} bytes): still "
                                     "being written; retried later")


def check_movie_frames(inp: ExposureInput) -> tuple[int, int]:
    """Check that the movie still has the frames it was registered with; returns its (size, mtime) stamp.

    More frames than registered: it grew after registration (MovieStillBeingWritten, transient).  Fewer, or
    a file that cannot be read and did not change meanwhile: MovieError (bad input).  A read error while the
    file changes: MovieStillBeingWritten.
    """
    from appion.base.io import movies

    path = inp.movie_path
    try:
        before = stat_movie(path)
    except FileNotFoundError:
        raise movies.MovieError(f"{path}: movie file does not exist") from None
    try:
        n_frames = movies.read_movie_header(path).n_frames
    except movies.MovieError as exc:
        check_movie_unchanged(path, before, f"while its header was read ({exc})")
        raise
    if inp.n_frames is not None and n_frames != inp.n_frames:
        if n_frames > inp.n_frames:
            raise MovieStillBeingWritten(f"{path}: has {n_frames} frames but was registered with {inp.n_frames}: it "
                                         "grew after registration (still being written?); not stored, retried later")
        raise movies.MovieError(f"{path}: has {n_frames} frames but was registered with {inp.n_frames} "
                                "(truncated or replaced after registration?)")
    return before


def calc_total_dose(inp: ExposureInput, settings: MotionSettings) -> float | None:
    """e/Å² over the whole movie for dose weighting (None: no dose known, or dose weighting off)."""
    if not settings.doseweight:
        return None
    return settings.total_dose_e_per_A2 or inp.dose_e_per_A2 or None


def calc_dose_per_frame(inp: ExposureInput, settings: MotionSettings) -> float | None:
    """e/Å² per frame the engine aligns, for dose weighting (None: no dose known, or dose weighting off).

    inp.n_frames counts the frames as stored; an EER movie stores raw frames and is aligned in fractions of
    `settings.rendered_frame_size` raw frames each, so its dose per fraction is that many raw frames' dose."""
    total = calc_total_dose(inp, settings)
    if not total or not inp.n_frames:
        return None
    per_stored_frame = total / inp.n_frames
    if str(inp.movie_path).lower().endswith(".eer"):
        return per_stored_frame * max(1, int(settings.rendered_frame_size))
    return per_stored_frame


def run_motion_task(task: StepInput, settings: MotionSettings) -> MotionRecord:
    """Align one movie (see module doc).  task.lease may hold the GPU id leased for this task."""
    from appion.base.io import movies

    start = time.perf_counter()
    inp: ExposureInput = calc_exposure_overrides(task.exposure, settings)
    run = Path(task.rundir)
    run.mkdir(parents=True, exist_ok=True)
    image_dir = Path(inp.image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    dose_per_frame = calc_dose_per_frame(inp, settings)
    sum_name, dw_name = calc_aligned_filenames(inp.filename, settings.alignlabel, dose_per_frame is not None)
    stamp = check_movie_frames(inp)  # the frame count the dose per frame was computed for
    gpu = task.lease.get("gpu")
    try:
        out = run_motion_engine(inp, settings, run / f"{inp.filename}.mrc", dose_per_frame, gpu)
    except movies.MovieError as exc:
        check_movie_unchanged(inp.movie_path, stamp, f"while it was aligned ({exc})")
        raise
    check_movie_unchanged(inp.movie_path, stamp, "while it was aligned")  # before anything is stored
    shifts = tuple((float(x), float(y)) for x, y in out["shifts_px"])
    move_into(Path(out["sum_path"]), image_dir / f"{sum_name}.mrc")
    if dw_name:
        move_into(Path(out["dw_path"]), image_dir / f"{dw_name}.mrc")
    shape = read_mrc_shape(image_dir / f"{sum_name}.mrc")
    log_text = Path(out["log_path"]).read_text()
    problem = read_sum_problem(image_dir / f"{sum_name}.mrc")  # e.g. the all-black sums some MotionCor3 runs give
    return MotionRecord(inp.image_id, sum_name, dw_name, shifts, out["pixel_size_A"], shape, settings.bin,
                        time.perf_counter() - start, worker_name(), str(out["log_path"]),
                        str(out.get("plot_path") or ""), parse_st_log_positions(log_text), problem)


def calc_exposure_overrides(inp: ExposureInput, settings: MotionSettings) -> ExposureInput:
    """The exposure with the run's classic overrides applied (--gainfile, --rotgain, --flipgain, --bad_rows,
    --bad_cols, --framepath); without overrides the exposure as Leginon recorded it."""
    changes = {}
    if settings.gain_path:
        changes["gain_path"] = settings.gain_path
    if settings.gain_rotate is not None:
        changes["frame_rotate"] = int(settings.gain_rotate)
    if settings.gain_flip is not None:
        changes["frame_flip"] = int(settings.gain_flip)
    if settings.bad_rows is not None or settings.bad_cols is not None:
        changes["defects"] = (settings.bad_rows, settings.bad_cols, inp.defects[2])
    if settings.frames_dir:
        changes["movie_path"] = str(Path(settings.frames_dir) / Path(inp.movie_path).name)
    return dataclasses.replace(inp, **changes) if changes else inp


def read_sum_problem(path: Path) -> str | None:
    """Why an aligned sum cannot be used (appion.base.imagecheck), naming the file; None when it is fine."""
    import mrcfile

    from appion.base.imagecheck import calc_image_problem

    with mrcfile.open(path, permissive=True) as mrc:
        problem = calc_image_problem(mrc.data)
    return f"{path.name}: {problem}" if problem else None


def write_defect_map(inp: ExposureInput, rundir: Path) -> str | None:
    """The corrector plan's bad rows/columns/pixels as a defect map (MRC, 1 = bad) in the run directory, for
    the engines (appion's -defects, MotionCor2's -DefectMap); None without defects.  One file per distinct plan
    and frame size, written once."""
    import hashlib

    import mrcfile
    import numpy as np

    from appion.base.io import movies
    from appion.base.io.files import write_atomic

    if not any(inp.defects):
        return None
    shape = movies.read_movie_header(inp.movie_path).shape_yx
    key = hashlib.sha1(repr((inp.defects, shape)).encode()).hexdigest()[:12]
    path = rundir / f"defects-{key}.mrc"
    if path.exists():
        return str(path)
    try:
        mask = movies.calc_defect_mask(movies.calc_defect_list_from_plan(*inp.defects), shape)
    except ValueError as exc:
        raise movies.MovieError(f"{inp.movie_path}: the defect list does not fit the frames: {exc}") from None

    def write(tmp: Path) -> None:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(mask.astype(np.int8))

    write_atomic(path, write)
    return str(path)


def read_mrc_shape(path: Path) -> tuple[int, int]:
    import mrcfile

    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        return int(mrc.header.ny), int(mrc.header.nx)


def run_motion_engine(inp: ExposureInput, settings: MotionSettings, out_path: Path, dose_per_frame: float | None,
                      gpu: str | None = None) -> dict:
    """Run the chosen engine on one movie.  Returns sum_path, dw_path, shifts_px (specimen displacement,
    unbinned px, relative to the first frame used), pixel_size_A (output), log_path (classic log), plot_path.
    gpu: the leased GPU id for GPU engines (None: GPU 0)."""
    from appion.motioncorrection.outputs import calc_appion_log_text, write_appion_log

    first = settings.ddstartframe
    last = None if settings.ddnframe is None else first + settings.ddnframe - 1
    if settings.engine == "builtin":
        from appion.motioncorrection.align import MotionOptions, align_movie_file

        options = MotionOptions(
            pixel_size_A=inp.pixel_size_A, gain_path=inp.gain_path, gain_rotate=inp.frame_rotate,
            gain_flip=inp.frame_flip, patch_cols=settings.patches[0], patch_rows=settings.patches[1],
            bin_factor=settings.bin, dose_per_frame_e_per_A2=dose_per_frame, voltage_kV=inp.voltage_kV,
            first_frame=first, last_frame=last, eer_sampling=settings.eer_sampling,
            eer_grouping=settings.rendered_frame_size, bfactor_global_A2=settings.bfactor_global_A2,
            bfactor_local_A2=settings.bfactor_local_A2, threads=settings.threads, appion_log=True,
            defects_path=write_defect_map(inp, out_path.parent))
        o = align_movie_file(inp.movie_path, out_path, options)
        return {"sum_path": o.sum_path, "dw_path": o.dw_path, "shifts_px": o.shifts_px,
                "pixel_size_A": o.pixel_size_A, "log_path": o.log_path, "plot_path": o.plot_path}
    from appion.motioncorrection.calc import external as ext

    if settings.engine not in PROGRAMS:
        raise ValueError(f"unknown motion engine {settings.engine!r} (choose from builtin, {', '.join(PROGRAMS)})")
    kind = ext.calc_movie_kind(inp.movie_path)
    exe = calc_engine_program(settings)
    if settings.engine in ("motioncor2", "motioncor3"):
        if shutil.which(exe) is None and not Path(exe).is_file():
            raise FileNotFoundError(f"{exe}: the {settings.engine} program is not on PATH (give --motion-exe)")
        gpu_ids = (int(gpu),) if gpu is not None else (0,)
        params = ext.MotionCor2Params(
            pixel_size_A=inp.pixel_size_A, voltage_kV=inp.voltage_kV, start_frame=first, n_frames_sum=settings.ddnframe,
            bin_factor=settings.bin, group_global=settings.group, frame_ref=settings.frame_ref,
            mask_center=settings.mask_center, mask_size=settings.mask_size, n_iter=settings.iterations,
            tolerance_px=settings.tolerance_px, patch_cols=settings.patches[0], patch_rows=settings.patches[1],
            bfactor_global=settings.bfactor_global_A2, bfactor_local=settings.bfactor_local_A2,
            gpu_ids=gpu_ids, dose_weight=dose_per_frame is not None,
            total_dose_e_per_A2=calc_total_dose(inp, settings) if dose_per_frame is not None else None,
            gain_path=inp.gain_path,
            dark_path=inp.dark_path, gain_rotate=inp.frame_rotate, gain_flip=inp.frame_flip,
            rendered_frame_size=settings.rendered_frame_size, eer_sampling=settings.eer_sampling,
            defect_map_path=write_defect_map(inp, out_path.parent))
        o = ext.run_motioncor2(exe, inp.movie_path, out_path, params, timeout_s=3600.0)
        s = o.shifts_px - o.shifts_px[0]
        disp = ext.calc_displacement_from_relion_shifts(s, kind)
        sum_path, dw_path = o.aligned_mrc_path, o.dose_weighted_mrc_path
    else:
        params = ext.RelionMotionParams(
            bin_factor=settings.bin, bfactor_A2=settings.bfactor_local_A2, dose_weighting=dose_per_frame is not None,
            dose_per_frame_e_per_A2=dose_per_frame or 1.0, voltage_kV=inp.voltage_kV,
            patch_x=max(1, settings.patches[0]), patch_y=max(1, settings.patches[1]), group_frames=settings.group,
            first_frame_sum=first + 1, last_frame_sum=(last + 1) if last is not None else -1,
            gain_path=inp.gain_path, gain_rot=inp.frame_rotate, gain_flip=inp.frame_flip)
        o = ext.run_relion_motioncorr(inp.movie_path, out_path.parent, params, threads=settings.threads,
                                      pixel_size_A=inp.pixel_size_A, executable=exe)
        disp = ext.calc_displacement_from_relion_shifts(o.shifts_px, kind)
        if dose_per_frame is not None:
            sum_path, dw_path = o.non_dose_weighted_mrc_path or o.aligned_mrc_path, o.aligned_mrc_path
        else:
            sum_path, dw_path = o.aligned_mrc_path, None
    log_path = out_path.with_name(out_path.stem + "_st_Log.txt")
    write_appion_log(log_path, calc_appion_log_text(disp, first, len(disp), settings.bin, kind))
    return {"sum_path": sum_path, "dw_path": dw_path, "shifts_px": disp, "pixel_size_A": inp.pixel_size_A * settings.bin,
            "log_path": log_path, "plot_path": None}


def describe_motion_record(record: MotionRecord) -> str:
    return f"motion {record.seconds:.1f} s (drift {calc_total_drift_px(record.shifts_px):.1f} px)"
