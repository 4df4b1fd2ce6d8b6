"""RELION's own motion correction (relion_run_motioncorr --use_own, CPU): movies STAR, command, run, shifts."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from appion.base.io.files import write_atomic
from appion.motioncorrection.calc.external.common import _fmt, calc_log_tail, calc_movie_kind
from appion.motioncorrection.outputs import RELION_FLIPPED_FORMATS

# ---------------------------------------------------------------------------------------------
# RELION relion_run_motioncorr --use_own (CPU)
# ---------------------------------------------------------------------------------------------

class RelionError(RuntimeError):
    """relion_run_motioncorr failed or wrote no usable output."""


@dataclass(frozen=True)
class RelionMotionParams:
    """Options of `relion_run_motioncorr --use_own` (RELION 3.1).

    bfactor_A2 is RELION's "--bfactor (in pix^2)" (default 150); first/last_frame_sum are 1-based
    (last ≤ 0 = all); patch_x/patch_y ≥ 3 each enable local alignment; gain_rot/gain_flip use
    MotionCor2's numbering (RELION: "same as MotionCor2's RotGain/FlipGain").  For TIFF movies the
    gain must match RELION's (upside-down) reading of the TIFF.
    """

    bin_factor: float = 1.0
    bfactor_A2: float = 150.0
    dose_weighting: bool = False
    dose_per_frame_e_per_A2: float = 1.0
    voltage_kV: float = 300.0
    pre_exposure_e_per_A2: float = 0.0
    patch_x: int = 1
    patch_y: int = 1
    group_frames: int = 1
    first_frame_sum: int = 1
    last_frame_sum: int = -1
    gain_path: str | None = None
    gain_rot: int = 0
    gain_flip: int = 0
    defect_file_path: str | None = None
    max_iter: int = 5
    save_noDW: bool = True
    eer_grouping: int = 40
    eer_upsampling: int = 1


@dataclass(frozen=True)
class RelionOutput:
    """Files RELION wrote for one movie and its global shifts (RELION's sign, unbinned px)."""

    aligned_mrc_path: Path
    non_dose_weighted_mrc_path: Path | None
    star_path: Path
    log_path: Path
    shifts_px: np.ndarray  # (n_frames, 2) _rlnMicrographShiftX/Y
    first_frame: int


def write_relion_movies_star(path, movie_paths, pixel_size_A: float, voltage_kV: float,
                             cs_mm: float = 2.7, amplitude_contrast: float = 0.1,
                             optics_group_name: str = "opticsGroup1") -> None:
    """A RELION 3.1 movies STAR file (`data_optics` + `data_movies`), written atomically.

    RELION 3.1 reads the dose per frame and voltage for dose weighting from the command line
    (calc_relion_motioncorr_command), not from this file; the pixel size comes from here.
    """
    path = Path(path)
    optics = pd.DataFrame({
        "rlnOpticsGroupName": [optics_group_name],
        "rlnOpticsGroup": [1],
        "rlnMicrographOriginalPixelSize": [float(pixel_size_A)],
        "rlnVoltage": [float(voltage_kV)],
        "rlnSphericalAberration": [float(cs_mm)],
        "rlnAmplitudeContrast": [float(amplitude_contrast)],
    })
    movies = pd.DataFrame({"rlnMicrographMovieName": [str(m) for m in movie_paths],
                           "rlnOpticsGroup": [1] * len(movie_paths)})
    write_atomic(path, lambda tmp: starfile.write({"optics": optics, "movies": movies}, tmp, overwrite=True))


def calc_relion_motioncorr_command(star_path, out_dir: str, params: RelionMotionParams, threads: int,
                                   executable: str = "relion_run_motioncorr",
                                   has_eer: bool = False) -> list[str]:
    """The relion_run_motioncorr argument list for RELION's own (CPU) implementation.

    out_dir is RELION's output directory relative to the project directory; RELION wants a
    trailing '/'.  --angpix is not passed: RELION 3.1 takes the pixel size from the optics table.
    """
    p = params
    if threads < 1:
        raise ValueError(f"threads must be ≥1, got {threads}")
    if p.gain_rot not in (0, 1, 2, 3) or p.gain_flip not in (0, 1, 2):
        raise ValueError(f"gain_rot must be 0-3 and gain_flip 0-2, got {p.gain_rot} and {p.gain_flip}")
    out_dir = str(out_dir)
    if not out_dir.endswith("/"):
        out_dir += "/"
    cmd = [executable, "--i", str(star_path), "--o", out_dir, "--use_own", "--j", str(threads),
           "--bin_factor", _fmt(p.bin_factor), "--bfactor", _fmt(p.bfactor_A2),
           "--patch_x", str(p.patch_x), "--patch_y", str(p.patch_y),
           "--group_frames", str(p.group_frames),
           "--first_frame_sum", str(p.first_frame_sum), "--last_frame_sum", str(p.last_frame_sum),
           "--max_iter", str(p.max_iter),
           "--dose_per_frame", _fmt(p.dose_per_frame_e_per_A2), "--voltage", _fmt(p.voltage_kV),
           "--preexposure", _fmt(p.pre_exposure_e_per_A2)]
    if p.dose_weighting:
        cmd.append("--dose_weighting")
        if p.save_noDW:
            cmd.append("--save_noDW")
    if p.gain_path:
        cmd += ["--gainref", str(p.gain_path), "--gain_rot", str(p.gain_rot), "--gain_flip", str(p.gain_flip)]
    if p.defect_file_path:
        cmd += ["--defect_file", str(p.defect_file_path)]
    if has_eer:
        cmd += ["--eer_grouping", str(p.eer_grouping), "--eer_upsampling", str(p.eer_upsampling)]
    return cmd


def calc_relion_shifts(blocks: dict) -> tuple[np.ndarray, int]:
    """(shifts (n, 2) [x, y], first frame number) from a per-movie STAR read with starfile."""
    table = blocks.get("global_shift")
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise ValueError("no data_global_shift table in the RELION motion STAR file")
    for col in ("rlnMicrographFrameNumber", "rlnMicrographShiftX", "rlnMicrographShiftY"):
        if col not in table.columns:
            raise ValueError(f"data_global_shift lacks _{col}")
    table = table.sort_values("rlnMicrographFrameNumber")
    shifts = table[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=np.float64)
    return shifts, int(table["rlnMicrographFrameNumber"].iloc[0])


def parse_relion_shifts_star(path_or_text) -> np.ndarray:
    """Global shifts (n_frames, 2) [x, y] from a RELION per-movie motion STAR file (path or its text).

    Values are RELION's: minus the specimen displacement, unbinned pixels, first frame (0, 0).
    """
    if isinstance(path_or_text, str) and "data_" in path_or_text and "\n" in path_or_text:
        with tempfile.TemporaryDirectory() as tmp:
            star = Path(tmp) / "motion.star"
            star.write_text(path_or_text)
            blocks = starfile.read(star, always_dict=True)
        source = "the given text"
    else:
        source = str(path_or_text)
        blocks = starfile.read(path_or_text, always_dict=True)
    try:
        return calc_relion_shifts(blocks)[0]
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc


def calc_displacement_from_relion_shifts(shifts_px: np.ndarray, movie_kind: str) -> np.ndarray:
    """Specimen displacement d_i - d_first (numpy axes of the movie as mrcfile/tifffile read it).

    RELION's shift is the correction (-d).  RELION reads TIFF pages upside down compared with
    tifffile, so for TIFF movies its y axis points the other way (measured, RELION 3.1.3; its
    src/rwTIFF.h flips Y on reading, following MotionCor2).  EER is rendered in stream order
    (src/renderEER.cpp: y = position / width), not flipped.  When RELION drives MotionCor2 it copies
    MotionCor2's printed shifts unchanged, which are in the same orientation
    (calc_displacement_from_motioncor_shifts gives the same answer).
    """
    d = -np.asarray(shifts_px, dtype=np.float64)
    if movie_kind in RELION_FLIPPED_FORMATS:
        d[:, 1] = -d[:, 1]
    return d


def run_relion_motioncorr(movie_path, out_dir, params: RelionMotionParams, threads: int = 1,
                          pixel_size_A: float = 1.0, timeout_s: float = 3600.0,
                          executable: str = "relion_run_motioncorr") -> RelionOutput:
    """Run RELION's CPU motion correction on one movie.

    RELION keeps the movie's path relative to its project directory in the output names and
    mangles absolute paths, so each movie runs in a temporary project directory inside out_dir
    (movie linked in, movies STAR written there).  On success RELION's per-movie files
    (`<stem>.mrc`, `<stem>_noDW.mrc`, `<stem>.star`, `<stem>.log`, `<stem>_shifts.eps`) are moved
    into out_dir, which thus looks like a RELION MotionCorr job directory; RELION's stdout goes to
    `<stem>_relion.log`.  pixel_size_A goes into the optics table (used for dose weighting).
    RELION turns dots in a movie's stem into underscores (Leginon's `x.frames.tif` would come out
    as `x_frames.mrc`), so the movie is linked in under a dot-free name and the outputs are
    renamed back to `<stem>` on the way out.
    """
    movie_path = Path(movie_path).resolve()
    if not movie_path.is_file():
        raise FileNotFoundError(f"movie {movie_path} does not exist")
    kind = calc_movie_kind(movie_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = movie_path.stem
    stdout_log = out_dir / f"{stem}_relion.log"
    project = Path(tempfile.mkdtemp(prefix=f".{stem}.relion.", dir=out_dir))
    try:
        safe = stem.replace(".", "_")
        link = project / f"{safe}{movie_path.suffix}"
        link.symlink_to(movie_path)
        write_relion_movies_star(project / "movies.star", [link.name], pixel_size_A, params.voltage_kV)
        cmd = calc_relion_motioncorr_command("movies.star", "MotionCorr/", params, threads, executable,
                                             has_eer=(kind == "eer"))
        with open(stdout_log, "w") as log:
            log.write("# " + " ".join(cmd) + "\n")
            log.flush()
            try:
                proc = subprocess.run(cmd, cwd=project, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
            except FileNotFoundError as exc:
                raise RelionError(f"RELION executable {executable!r} not found") from exc
            except subprocess.TimeoutExpired as exc:
                raise RelionError(f"{executable} on {movie_path} did not finish within {timeout_s} s") from exc
        produced = project / "MotionCorr"
        mrc, star, movie_log = produced / f"{safe}.mrc", produced / f"{safe}.star", produced / f"{safe}.log"
        if proc.returncode != 0 or not mrc.is_file() or not star.is_file():
            tail = calc_log_tail(stdout_log.read_text(errors="replace"))
            if movie_log.is_file():
                tail += "\n--- " + movie_log.name + "\n" + calc_log_tail(movie_log.read_text(errors="replace"))
            raise RelionError(f"{executable} failed on {movie_path} (exit status {proc.returncode}, "
                              f"sum {'present' if mrc.is_file() else 'missing'}); last lines:\n{tail}")
        shifts, first_frame = calc_relion_shifts(starfile.read(star, always_dict=True))
        suffixes = ["_noDW.mrc", ".star", ".log", "_shifts.eps", ".mrc"]
        for suffix in suffixes:  # the sum last: its presence means the rest is there
            if (produced / f"{safe}{suffix}").is_file():
                os.replace(produced / f"{safe}{suffix}", out_dir / f"{stem}{suffix}")
    finally:
        shutil.rmtree(project, ignore_errors=True)
    no_dw = out_dir / f"{stem}_noDW.mrc"
    return RelionOutput(out_dir / f"{stem}.mrc", no_dw if no_dw.is_file() else None, out_dir / f"{stem}.star",
                        out_dir / f"{stem}.log", shifts, first_frame)
