"""MotionCor2 / MotionCor3: version check, command, frame-integration file, run, shifts from stdout."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appion.base.io.files import write_text_atomic
from appion.motioncorrection.calc.external.common import _fmt, calc_log_tail, calc_movie_kind

# ---------------------------------------------------------------------------------------------
# MotionCor2 / MotionCor3
# ---------------------------------------------------------------------------------------------

SUPPORTED_MOTIONCOR2 = ((1, 4), (1, 5), (1, 6))


class MotionCorError(RuntimeError):
    """A MotionCor run failed or its output could not be read."""


@dataclass(frozen=True)
class MotionCorVersion:
    """What `<executable> --version` reported, e.g. MotionCor2 1.6.4 or MotionCor3 1.1.2."""

    program: str  # "MotionCor2" or "MotionCor3"
    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.program} {self.major}.{self.minor}.{self.patch}"

    @property
    def has_patch_group(self) -> bool:
        """-Group takes a second value (patch grouping) from MotionCor2 1.6 and in MotionCor3."""
        return self.program == "MotionCor3" or (self.major, self.minor) >= (1, 6)

    @property
    def has_log_dir(self) -> bool:
        """MotionCor2 1.5+ and MotionCor3 take -LogDir (their parameter echo lists it); 1.4 takes -LogFile."""
        return self.program == "MotionCor3" or (self.major, self.minor) >= (1, 5)

    @property
    def has_mask(self) -> bool:
        """-MaskCent/-MaskSize exist only before MotionCor2 1.5 (absent from 1.5/1.6/MotionCor3 echoes)."""
        return self.program == "MotionCor2" and (self.major, self.minor) < (1, 5)

    @property
    def prints_shift_table(self) -> bool:
        """MotionCor2 1.6 prints full-frame shifts as a 3-column table instead of '...... Frame' lines."""
        return self.program == "MotionCor2" and (self.major, self.minor) == (1, 6)


@dataclass(frozen=True)
class MotionCor2Params:
    """Run-wide MotionCor settings, named after classic makeDDAlignMotionCor2_UCSF.py options.

    start_frame (--ddstartframe, 0-based) and n_frames_sum (--ddnframe, None = to the end) select
    the frames summed, counted in frames as MotionCor sees them (rendered frames for EER);
    group_global (--nrw) → -Group; frame_ref (--FmRef, None = program default = middle frame);
    patch_cols/patch_rows (--Patchcols/--Patchrows) → -Patch cols rows; bfactor_global/local
    (--Bft_global/--Bft_local) → -Bft; total_dose_e_per_A2 (--totaldose, or the preset dose)
    gives -FmDose when dose_weight; gain_rotate/gain_flip are Leginon's `frame rotate`/`frame flip`
    → -RotGain/-FlipGain (classic passes them through unchanged); rendered_frame_size
    (--rendered_frame_size, EER grouping) and eer_sampling (--eer_sampling) drive -FmIntFile,
    -EerSampling and -FtBin (binning is applied to the upsampled EER frames, as classic does).
    """

    pixel_size_A: float
    voltage_kV: float = 300.0
    start_frame: int = 0
    n_frames_sum: int | None = None
    bin_factor: float = 1.0
    group_global: int = 1
    group_patch: int | None = None
    frame_ref: int | None = None
    n_iter: int = 7
    tolerance_px: float = 0.5
    patch_cols: int = 0
    patch_rows: int = 0
    patch_overlap_percent: int | None = None
    mask_center: tuple[float, float] | None = None
    mask_size: tuple[float, float] | None = None
    bfactor_global: float = 500.0
    bfactor_local: float = 150.0
    gpu_ids: tuple[int, ...] = (0,)
    dose_weight: bool = False
    total_dose_e_per_A2: float | None = None
    pre_exposure_e_per_A2: float = 0.0
    gain_path: str | None = None
    dark_path: str | None = None
    defect_map_path: str | None = None
    defect_file_path: str | None = None
    gain_rotate: int = 0
    gain_flip: int = 0
    rendered_frame_size: int = 1
    eer_sampling: int = 1


@dataclass(frozen=True)
class MotionCorOutput:
    """Files written by one MotionCor run and the full-frame shifts it printed.

    shifts_px is exactly what MotionCor printed (its sign, its orientation of the movie, its
    reference frame = 0); displacement_px is the same trajectory as appion states it (see
    calc_displacement_from_motioncor_shifts): specimen displacement in the numpy axes of the
    movie as mrcfile/tifffile read it, first summed frame = (0, 0).  For TIFF input the aligned
    sums are written in MotionCor's orientation, i.e. upside down relative to tifffile's array.
    """

    aligned_mrc_path: Path
    dose_weighted_mrc_path: Path | None
    log_path: Path
    shifts_px: np.ndarray  # (n_frames, 2) [x, y], MotionCor's "correction" sign, reference frame = 0
    version: MotionCorVersion
    movie_kind: str = "mrc"

    @property
    def displacement_px(self) -> np.ndarray:
        return calc_displacement_from_motioncor_shifts(self.shifts_px, self.movie_kind)


# The y axis of MotionCor's reading of each movie format relative to mrcfile/tifffile's numpy axis 0:
# MRC rows in file order; TIFF pages bottom-up (the first stored row becomes the last y); EER rows in
# stream order.  Sources: docs/conventions.md, "MotionCor2 orientation".
MOTIONCOR_Y_FLIPPED_FORMATS = ("tiff",)


def calc_displacement_from_motioncor_shifts(shifts_px: np.ndarray, movie_kind: str) -> np.ndarray:
    """Specimen displacement d_i - d_first (n, 2) [x, y] from MotionCor's printed full-frame shifts.

    MotionCor prints the correction applied to each frame (-d, relative to its reference frame)
    in its own reading of the movie; RELION copies these numbers unchanged into
    _rlnMicrographShiftX/Y (relion_run_motioncorr's getShiftsMotioncor2).  MotionCor reads TIFF
    rows bottom-up, so for TIFF movies its y axis is tifffile's reversed and the y sign flips
    back; MRC and EER are read in file order.  Frame 0 of the result is (0, 0).
    """
    kind = movie_kind.lower()
    if kind not in ("mrc", "tiff", "eer"):
        raise ValueError(f"unknown movie kind {movie_kind!r} (expected mrc, tiff or eer)")
    s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    if len(s) == 0:
        raise ValueError("no shifts")
    d = -(s - s[0])
    if kind in MOTIONCOR_Y_FLIPPED_FORMATS:
        d[:, 1] = -d[:, 1]
    return d + 0.0  # + 0.0 turns -0.0 into 0.0


def calc_uses_fmintfile(movie_path, params: MotionCor2Params) -> bool:
    """EER movies always need a frame-integration file; other movies only when frames are grouped."""
    return calc_movie_kind(movie_path) == "eer" or params.rendered_frame_size > 1


def calc_n_rendered_frames(n_raw_frames: int, grouping: int) -> int:
    """Frames after integration: the leftover raw frames (if any) form one extra, shorter frame."""
    if n_raw_frames < 1 or grouping < 1:
        raise ValueError(f"need ≥1 raw frame and grouping ≥1, got {n_raw_frames} and {grouping}")
    return n_raw_frames // grouping + (1 if n_raw_frames % grouping else 0)


def calc_fmintfile_text(n_raw_frames: int, grouping: int, dose_per_raw_frame: float) -> str:
    """MotionCor's -FmIntFile: lines `count group dose` (raw frames in the entry, raw frames summed
    per integrated frame, dose per RAW frame in e/Å²), read in order.

    Classic Appion writes the leftover raw frames first as one short integrated frame so that
    every raw frame is used; MotionCor requires each count to be divisible by its group.
    """
    calc_n_rendered_frames(n_raw_frames, grouping)  # validates
    if dose_per_raw_frame < 0:
        raise ValueError(f"dose per raw frame must be ≥0, got {dose_per_raw_frame}")
    leftover = n_raw_frames % grouping
    dose = format(float(dose_per_raw_frame), ".6g")
    lines = []
    if leftover:
        lines.append(f"{leftover} {leftover} {dose}")
    if n_raw_frames - leftover:
        lines.append(f"{n_raw_frames - leftover} {grouping} {dose}")
    return "\n".join(lines) + "\n"


def calc_fmintfile_path(out_mrc_path) -> Path:
    """Where run_motioncor2 writes the frame-integration file: next to the output."""
    out = Path(out_mrc_path)
    return out.with_name(out.stem + "_fmint.txt")


def calc_motioncor_work_dir(out_mrc_path) -> Path:
    """Temporary directory (same file system as the output) that MotionCor writes into; its files
    are moved into place only after a successful run, so no partial outputs are left behind."""
    out = Path(out_mrc_path)
    return out.with_name(f".{out.stem}.motioncor.tmp")


def calc_motioncor_log_path(out_mrc_path) -> Path:
    """MotionCor's captured stdout+stderr, next to the output."""
    out = Path(out_mrc_path)
    return out.with_name(out.stem + "_motioncor.log")


def calc_motioncor2_command(executable: str, movie_path, out_mrc_path, params: MotionCor2Params,
                            version: MotionCorVersion, *, n_movie_frames: int,
                            fmintfile_path=None) -> list[str]:
    """The MotionCor2/3 argument list, following classic Appion's choices.

    n_movie_frames: frames stored in the movie (raw EER frames for EER).  -Throw is start_frame;
    -Trunc = n_used - start_frame - n_frames_sum (frames after integration), both only when > 0.
    -FmDose: total dose / n_movie_frames, or for integrated frames dose_per_raw × rendered_frame_size
    (the FmIntFile carries the dose per raw frame).  fmintfile_path is required when frames are
    integrated (EER or rendered_frame_size > 1); run_motioncor2 writes it.
    """
    p = params
    kind = calc_movie_kind(movie_path)
    if n_movie_frames < 1:
        raise ValueError(f"{movie_path}: movie has no frames ({n_movie_frames})")
    if p.pixel_size_A <= 0:
        raise ValueError(f"pixel size must be > 0 Å, got {p.pixel_size_A}")
    if p.gain_rotate not in (0, 1, 2, 3) or p.gain_flip not in (0, 1, 2):
        raise ValueError(f"gain rotate must be 0-3 and flip 0-2, got {p.gain_rotate} and {p.gain_flip}")
    if p.eer_sampling not in (1, 2, 4):
        raise ValueError(f"EER sampling must be 1, 2 or 4, got {p.eer_sampling}")
    integrate = calc_uses_fmintfile(movie_path, p)
    if integrate and fmintfile_path is None:
        raise ValueError(f"{movie_path}: frames are integrated (EER or rendered_frame_size > 1): "
                         "a -FmIntFile path is required")
    n_used = calc_n_rendered_frames(n_movie_frames, p.rendered_frame_size) if integrate else n_movie_frames
    if p.start_frame < 0:
        raise ValueError(f"start frame must be ≥0, got {p.start_frame}")
    n_sum = n_used - p.start_frame if p.n_frames_sum is None else p.n_frames_sum
    trunc = n_used - p.start_frame - n_sum
    if n_sum < 1 or trunc < 0:
        raise ValueError(f"{movie_path}: cannot sum {n_sum} frames from frame {p.start_frame}: "
                         f"the movie has {n_used} frames")

    in_flag = {"mrc": "-InMrc", "tiff": "-InTiff", "eer": "-InEer"}[kind]
    cmd = [executable, in_flag, str(movie_path), "-OutMrc", str(out_mrc_path)]
    if p.gain_path:
        cmd += ["-Gain", str(p.gain_path)]
    if p.dark_path:
        cmd += ["-Dark", str(p.dark_path)]
    if p.defect_map_path:
        cmd += ["-DefectMap", str(p.defect_map_path)]
    if p.defect_file_path:
        cmd += ["-DefectFile", str(p.defect_file_path)]
    cmd += ["-RotGain", str(p.gain_rotate), "-FlipGain", str(p.gain_flip)]
    if p.patch_cols > 0 or p.patch_rows > 0:
        cmd += ["-Patch", str(p.patch_cols), str(p.patch_rows)]
        if p.patch_overlap_percent is not None:
            cmd.append(str(p.patch_overlap_percent))
    cmd += ["-Iter", str(p.n_iter), "-Tol", _fmt(p.tolerance_px)]
    cmd += ["-Bft", _fmt(p.bfactor_global), _fmt(p.bfactor_local)]
    ft_bin = p.bin_factor * (p.eer_sampling if kind == "eer" else 1)
    if ft_bin > 1:
        cmd += ["-FtBin", _fmt(ft_bin)]
    if p.start_frame > 0:
        cmd += ["-Throw", str(p.start_frame)]
    if trunc > 0:
        cmd += ["-Trunc", str(trunc)]
    if p.group_patch is not None:
        if not version.has_patch_group:
            raise ValueError(f"{version} takes one -Group value; group_patch needs MotionCor2 ≥1.6 or MotionCor3")
        cmd += ["-Group", str(p.group_global), str(p.group_patch)]
    else:
        cmd += ["-Group", str(p.group_global)]
    if p.frame_ref is not None:
        cmd += ["-FmRef", str(p.frame_ref)]
    if p.mask_center is not None or p.mask_size is not None:
        if not version.has_mask:
            raise ValueError(f"{version} has no -MaskCent/-MaskSize options")
        if p.mask_center is not None:
            cmd += ["-MaskCent", _fmt(p.mask_center[0]), _fmt(p.mask_center[1])]
        if p.mask_size is not None:
            cmd += ["-MaskSize", _fmt(p.mask_size[0]), _fmt(p.mask_size[1])]
    if integrate:
        cmd += ["-FmIntFile", str(fmintfile_path)]
    if kind == "eer":
        cmd += ["-EerSampling", str(p.eer_sampling)]
    if p.dose_weight:
        if not p.total_dose_e_per_A2 or p.total_dose_e_per_A2 <= 0:
            raise ValueError("dose weighting needs a total dose > 0 e/Å² (--totaldose or the preset dose)")
        if integrate:
            fm_dose = p.total_dose_e_per_A2 / n_movie_frames * p.rendered_frame_size
        else:
            fm_dose = p.total_dose_e_per_A2 / n_movie_frames
        cmd += ["-FmDose", _fmt(fm_dose)]
        if p.pre_exposure_e_per_A2 > 0:
            cmd += ["-InitDose", _fmt(p.pre_exposure_e_per_A2)]
    cmd += ["-PixSize", _fmt(p.pixel_size_A), "-kV", _fmt(p.voltage_kV)]
    cmd += ["-Gpu", *[str(g) for g in p.gpu_ids]]
    out = Path(out_mrc_path)
    if version.has_log_dir:
        cmd += ["-LogDir", str(out.parent)]
    else:
        cmd += ["-LogFile", str(out.with_suffix(""))]
    return cmd


_VERSION_RE = re.compile(r"(MotionCor[23])\D{0,20}?(\d+)\.(\d+)(?:\.(\d+))?", re.IGNORECASE)


def calc_motioncor_version(executable: str, version_text: str) -> MotionCorVersion:
    """Parse `--version` output ("MotionCor2 version 1.6.4", "MotionCor3 version 1.1.2") and accept
    only MotionCor2 1.4–1.6 and MotionCor3, whose flags and log format this module knows."""
    match = _VERSION_RE.search(version_text)
    first_line = next((ln.strip() for ln in version_text.splitlines() if ln.strip()), "")
    if match is None:
        raise MotionCorError(f"{executable} --version printed {first_line!r}: no MotionCor2/MotionCor3 "
                             "version found (supported: MotionCor2 1.4–1.6, MotionCor3)")
    program = "MotionCor" + match.group(1)[-1]
    version = MotionCorVersion(program, int(match.group(2)), int(match.group(3)), int(match.group(4) or 0))
    if program == "MotionCor2" and (version.major, version.minor) not in SUPPORTED_MOTIONCOR2:
        raise MotionCorError(f"{executable} reports {version} ({first_line!r}); supported are "
                             "MotionCor2 1.4–1.6 and MotionCor3")
    return version


def detect_motioncor_version(executable: str, timeout_s: float = 60.0) -> MotionCorVersion:
    """Run `<executable> --version` and check it is a MotionCor we support."""
    try:
        proc = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as exc:
        raise MotionCorError(f"MotionCor executable {executable!r} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise MotionCorError(f"{executable} --version did not answer within {timeout_s} s") from exc
    return calc_motioncor_version(executable, proc.stdout + "\n" + proc.stderr)


_SHIFT_LINE_RE = re.compile(r"^\.{6}\s*Frame\s*\(\s*(\d+)\)\s*shift:\s*(\S+)\s+(\S+)\s*$")
_TABLE_HEADER_RE = re.compile(r"^\s*Frame\s+x\s+Shift\s+y\s+Shift\s*$")
_TABLE_ROW_RE = re.compile(r"^\s*(\d+)\s+(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s+(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")


def parse_motioncor2_shifts(stdout_text: str) -> np.ndarray:
    """Full-frame shifts from MotionCor2/3 stdout: (n_frames, 2) float64 [x, y] in pixels of the
    aligned (before -FtBin) frames, reference frame = (0, 0).

    Reads the '...... Frame (  i) shift:    x    y' lines after "Full-frame alignment shift"
    (MotionCor2 ≤1.5, MotionCor3) or the 'Frame   x Shift   y Shift' table (MotionCor2 1.6); the
    per-patch summary table that follows is not taken.  With several blocks (e.g. -Serial) the last
    one wins.
    """
    lines = stdout_text.splitlines()
    blocks: list[list[tuple[int, float, float]]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "Full-frame alignment shift" in line:
            rows = []
            j = i + 1
            while j < len(lines):
                m = _SHIFT_LINE_RE.match(lines[j])
                if m:
                    rows.append((int(m.group(1)), float(m.group(2)), float(m.group(3))))
                elif rows or lines[j].strip():
                    break  # the block ends at the first other line (blank lines only before it)
                j += 1
            if rows:
                blocks.append(rows)
            i = j
            continue
        if _TABLE_HEADER_RE.match(line) and i > 0 and "Full-frame alignment" in lines[i - 1]:
            rows = []
            j = i + 1
            while j < len(lines):
                m = _TABLE_ROW_RE.match(lines[j])
                if not m:
                    break
                rows.append((int(m.group(1)), float(m.group(2)), float(m.group(3))))
                j += 1
            if rows:
                blocks.append(rows)
            i = j
            continue
        i += 1
    if not blocks:
        raise MotionCorError("no full-frame alignment shifts found in the MotionCor output")
    rows = blocks[-1]
    numbers = [r[0] for r in rows]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise MotionCorError(f"full-frame shift lines are not consecutive frames: {numbers}")
    return np.array([[r[1], r[2]] for r in rows], dtype=np.float64)


def read_movie_frame_count(movie_path) -> int:
    """Frames stored in a movie (raw frames for EER) from its header, without reading pixels."""
    import mrcfile
    import tifffile

    kind = calc_movie_kind(movie_path)
    try:
        if kind == "mrc":
            with mrcfile.open(movie_path, header_only=True, permissive=True) as mrc:
                return int(mrc.header.nz)
        with tifffile.TiffFile(movie_path) as tif:
            return len(tif.pages)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{movie_path}: cannot read the number of frames: {exc}") from exc


def run_motioncor2(executable: str, movie_path, out_mrc_path, params: MotionCor2Params,
                   timeout_s: float, *, version: MotionCorVersion | None = None,
                   n_movie_frames: int | None = None) -> MotionCorOutput:
    """Run MotionCor2/3 on one movie; return the sums written and the full-frame shifts.

    MotionCor writes into a temporary directory next to the output; its files (sum, _DW, _DWS,
    patch logs) are moved into the output directory only when it exits 0 and the sum exists.
    stdout and stderr go to `<out stem>_motioncor.log`; on failure the error carries its tail.
    """
    movie_path = Path(movie_path)
    out = Path(out_mrc_path)
    if not movie_path.is_file():
        raise FileNotFoundError(f"movie {movie_path} does not exist")
    if version is None:
        version = detect_motioncor_version(executable)
    if n_movie_frames is None:
        n_movie_frames = read_movie_frame_count(movie_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmint_path = None
    if calc_uses_fmintfile(movie_path, params):
        fmint_path = calc_fmintfile_path(out)
        dose = (params.total_dose_e_per_A2 or 0.0) / n_movie_frames
        write_text_atomic(fmint_path, calc_fmintfile_text(n_movie_frames, params.rendered_frame_size, dose))
    work = calc_motioncor_work_dir(out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    cmd = calc_motioncor2_command(executable, movie_path, work / out.name, params, version,
                                  n_movie_frames=n_movie_frames, fmintfile_path=fmint_path)
    log_path = calc_motioncor_log_path(out)
    try:
        with open(log_path, "w") as log:
            log.write("# " + " ".join(cmd) + "\n")
            log.flush()
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise MotionCorError(f"{executable} on {movie_path} did not finish within {timeout_s} s; "
                                     f"last lines of {log_path}:\n"
                                     f"{calc_log_tail(log_path.read_text(errors='replace'))}") from exc
        log_text = log_path.read_text(errors="replace")
        produced = work / out.name
        if proc.returncode != 0 or not produced.is_file():
            reason = f"exit status {proc.returncode}" if proc.returncode else f"no output {produced.name}"
            raise MotionCorError(f"{executable} failed on {movie_path} ({reason}); last lines of {log_path}:\n"
                                 f"{calc_log_tail(log_text)}")
        shifts = parse_motioncor2_shifts(log_text)
        for item in sorted(work.iterdir()):
            if item.name != out.name:
                os.replace(item, out.parent / item.name)
        os.replace(produced, out)  # the main sum last: its presence means the rest is there
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dw = out.with_name(out.stem + "_DW.mrc")
    return MotionCorOutput(out, dw if dw.is_file() else None, log_path, shifts, version,
                           calc_movie_kind(movie_path))
