"""Motion-correction output files: aligned sums (MRC), RELION motion STAR, drift plot, classic log.

Worker side: no Django here (the database rows are appion.motioncorrection.store).

Every writer writes to a temporary name in the target directory and renames it into place, so
a crash never leaves a half-written file under the final name.  `write_outputs` writes a set
of files all-or-nothing.

Shift conventions: internally a trajectory is the specimen displacement d_i (frame i shows
specimen(r − d_i), numpy axes, x = axis 1).  RELION (and MotionCor2's printed full-frame shifts)
give the correction −d_i, in the frame as RELION reads the movie: RELION reads TIFF (and EER)
pages upside down relative to tifffile, so there the Y sign flips back (measured with RELION
3.1.3, see appion.motioncorrection.calc.external).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mrcfile
import numpy as np

from appion.base.io.files import make_temp_path, write_atomic
from appion.motioncorrection.calc.internal import calc_motion_summary, calc_poly_basis

RELION_FLIPPED_FORMATS = ("tiff", "eer")


def write_outputs(writers: list[tuple[Path, Callable[[Path], None]]]) -> list[Path]:
    """Write several files all-or-nothing: all to temporary names first, then rename them all.

    writers: (final path, function writing to a given path).  On any error the temporary files
    and any already renamed outputs are removed and the error is re-raised.
    """
    temps: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for final, write in writers:
            final = Path(final)
            tmp = make_temp_path(final)
            temps.append((tmp, final))
            write(tmp)
        for tmp, final in temps:
            os.replace(tmp, final)
            done.append(final)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        for final in done:
            final.unlink(missing_ok=True)
        raise
    return done


# ----------------------------------------------------------------------------------------- images

def write_sum_mrc(path, image: np.ndarray, pixel_size_A: float) -> Path:
    """Aligned sum (y, x) float32 as MRC mode 2 with the pixel size in the header."""
    def write(tmp: Path) -> None:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.asarray(image, dtype=np.float32))
            mrc.voxel_size = pixel_size_A
    return write_atomic(path, write)


# ------------------------------------------------------------------------------------------- STAR

def calc_relion_shifts(displacements_px: np.ndarray, movie_format: str) -> np.ndarray:
    """RELION _rlnMicrographShiftX/Y (n, 2) from displacements d (n, 2), first frame = (0, 0)."""
    d = np.asarray(displacements_px, float)
    shifts = -(d - d[0]) + 0.0  # + 0.0 turns -0.0 into 0.0
    if movie_format in RELION_FLIPPED_FORMATS:
        shifts[:, 1] *= -1.0
    return shifts


def calc_relion_model_coeffs(coeffs: np.ndarray, shape_yx: tuple[int, int], n_frames: int,
                             movie_format: str) -> np.ndarray:
    """RELION ThirdOrderPolynomialModel coefficients (36,) [18 for X, 18 for Y] from our model.

    Our model (2, 18) gives the displacement at numpy positions; RELION's gives the correction
    (−displacement) at positions in its own reading of the movie (y flipped for TIFF/EER).
    Re-fitted on a grid, which is exact because the basis is closed under y -> −y.
    """
    ny, nx = shape_yx
    xs = np.linspace(0, nx - 1, 7)
    ys = np.linspace(0, ny - 1, 7)
    ts = np.arange(max(n_frames, 4), dtype=float)
    X, Y, T = np.meshgrid(xs, ys, ts, indexing="ij")
    ours = calc_poly_basis(X / nx - 0.5, Y / ny - 0.5, T) @ np.asarray(coeffs).T  # (..., 2)
    target = -ours
    y_relion = Y
    if movie_format in RELION_FLIPPED_FORMATS:
        y_relion = (ny - 1) - Y
        target[..., 1] *= -1.0
    basis = calc_poly_basis(X / nx - 0.5, y_relion / ny - 0.5, T).reshape(-1, 18)
    sol, *_ = np.linalg.lstsq(basis, target.reshape(-1, 2), rcond=None)
    return np.concatenate([sol[:, 0], sol[:, 1]])


@dataclass(frozen=True)
class StarGeneral:
    """data_general values of a RELION per-micrograph motion STAR file."""

    movie_name: str
    shape_yx: tuple[int, int]
    n_movie_frames: int
    binning: float
    original_pixel_size_A: float
    dose_per_frame_e_per_A2: float
    pre_exposure_e_per_A2: float
    voltage_kV: float
    start_frame: int  # 1-based
    gain_name: str | None = None
    defect_file: str | None = None


def calc_motion_star_blocks(general: StarGeneral, frame_numbers: np.ndarray, displacements_px: np.ndarray,
                            movie_format: str, model_coeffs: np.ndarray | None = None) -> dict:
    """The STAR blocks RELION's relion_run_motioncorr writes per micrograph (as starfile data).

    frame_numbers: 1-based movie frame numbers of the frames used; displacements (n, 2) unbinned px.
    """
    import pandas as pd  # imported when needed: pandas costs ~0.3 s at start-up

    ny, nx = general.shape_yx
    gen = {
        "rlnImageSizeX": int(nx),
        "rlnImageSizeY": int(ny),
        "rlnImageSizeZ": int(general.n_movie_frames),
        "rlnMicrographMovieName": general.movie_name,
    }
    if general.gain_name:
        gen["rlnMicrographGainName"] = general.gain_name
    if general.defect_file:
        gen["rlnMicrographDefectFile"] = general.defect_file
    gen.update({
        "rlnMicrographBinning": float(general.binning),
        "rlnMicrographOriginalPixelSize": float(general.original_pixel_size_A),
        "rlnMicrographDoseRate": float(general.dose_per_frame_e_per_A2),
        "rlnMicrographPreExposure": float(general.pre_exposure_e_per_A2),
        "rlnVoltage": float(general.voltage_kV),
        "rlnMicrographStartFrame": int(general.start_frame),
        "rlnMotionModelVersion": 0 if model_coeffs is None else 1,
    })
    shifts = calc_relion_shifts(displacements_px, movie_format)
    blocks = {
        "general": gen,
        "global_shift": pd.DataFrame({
            "rlnMicrographFrameNumber": np.asarray(frame_numbers, dtype=int),
            "rlnMicrographShiftX": shifts[:, 0],
            "rlnMicrographShiftY": shifts[:, 1],
        }),
    }
    if model_coeffs is not None:
        relion = calc_relion_model_coeffs(model_coeffs, general.shape_yx, len(frame_numbers), movie_format)
        blocks["local_motion_model"] = pd.DataFrame({
            "rlnMotionModelCoeffsIdx": np.arange(relion.size, dtype=int),
            "rlnMotionModelCoeff": relion,
        })
    return blocks


def write_motion_star(path, blocks: dict) -> Path:
    """Write STAR blocks (from calc_motion_star_blocks) with the starfile package.

    Floats keep 9 significant digits: the model's t³ coefficients are small (~1e-5) but multiply
    t³ ~ 1e5 for long movies, so a fixed 6 decimals would lose tenths of a pixel.
    """
    import starfile

    return write_atomic(path, lambda tmp: starfile.write(blocks, tmp, overwrite=True, float_format="%.9g"))


# ---------------------------------------------------------------------------------- classic log

def calc_appion_log_text(displacements_px: np.ndarray, first_frame: int, n_frames_total: int, binning: float,
                         movie_format: str) -> str:
    """Classic Appion `_st_Log.txt` (what apDDMotionCorrMaker writes from MotionCor2 shifts).

    MotionCor2-convention shifts s (= RELION's) are re-referenced to the middle frame,
    negated and divided by the binning: (−(s − s_mid)/bin).  Header counts as classic does:
    `Sum Frame #000 - #<total> (Reference Frame #<total//2>):`.
    """
    s = calc_relion_shifts(displacements_px, movie_format)
    mid = s[len(s) // 2]
    adjusted = -(s - mid) / binning
    lines = ["Sum Frame #%.3d - #%.3d (Reference Frame #%.3d):" % (0, n_frames_total, n_frames_total // 2)]
    for i, (x, y) in enumerate(adjusted):
        lines.append("......Add Frame #%.3d with xy shift: %.5f %.5f" % (i + first_frame, x, y))
    return "\n".join(lines) + "\n"


def write_appion_log(path, text: str) -> Path:
    """Write the classic log text."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


# ----------------------------------------------------------------------------------------- plot

def calc_shift_plot_png(displacements_px: np.ndarray, pixel_size_A: float, first_frame: int, title: str = "",
                        dose_per_frame_e_per_A2: float | None = None) -> bytes:
    """Drift trajectory as PNG bytes: specimen position per frame in Å, frame numbers marked, motion noted.

    Early motion = the first 4 frames' steps (or the frames within the first 4 e/Å² when the dose
    is known), late = the rest.  Pure rendering (matplotlib Agg, no pyplot state), so it can run
    in a thread while the frames are summed.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    d = np.asarray(displacements_px, float)
    d = d - d[0]
    early_frames = 4
    if dose_per_frame_e_per_A2:
        early_frames = max(1, int(round(4.0 / dose_per_frame_e_per_A2)))
    total, early, late = (v * pixel_size_A for v in calc_motion_summary(d, min(early_frames, max(len(d) - 1, 0))))
    xa, ya = d[:, 0] * pixel_size_A, d[:, 1] * pixel_size_A

    fig = Figure(figsize=(5.5, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xa, ya, "-", color="tab:blue", lw=1)
    sc = ax.scatter(xa, ya, c=np.arange(len(d)) + first_frame, cmap="viridis", s=14, zorder=3)
    step = max(1, len(d) // 8)
    for i in list(range(0, len(d), step)) + ([len(d) - 1] if (len(d) - 1) % step else []):
        ax.annotate(str(i + first_frame), (xa[i], ya[i]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    fig.colorbar(sc, ax=ax, label="frame (0-based)")
    ax.set_xlabel("x drift (Å)")
    ax.set_ylabel("y drift (Å)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, lw=0.3)
    ax.set_title((title + "\n" if title else "") +
                 f"total {total:.1f} Å, early {early:.1f} Å ({early_frames} frames), late {late:.1f} Å", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_png(path, png: bytes) -> Path:
    """Write PNG bytes (from calc_shift_plot_png)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(png))


def write_shift_plot(path, displacements_px: np.ndarray, pixel_size_A: float, first_frame: int,
                     title: str = "", dose_per_frame_e_per_A2: float | None = None) -> Path:
    """Render and write the drift plot PNG (see calc_shift_plot_png)."""
    return write_png(path, calc_shift_plot_png(displacements_px, pixel_size_A, first_frame, title,
                                               dose_per_frame_e_per_A2))
