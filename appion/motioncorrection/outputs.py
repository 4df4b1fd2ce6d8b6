"""Motion-correction output files: aligned sums (MRC), RELION motion STAR, drift plot, classic log.

Worker side: no Django here (the database rows are appion.motioncorrection.store).

The drift plot is drawn with Pillow (see calc_shift_plot_png).

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

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mrcfile
import numpy as np

from appion.base.io.files import make_temp_path, write_atomic
from appion.base.io.plot import calc_ticks, format_tick
from appion.base.io.plot import draw_text_vertical
from appion.base.io.plot import font as plot_font

# Movie kinds RELION reads with the y axis reversed (TIFF only; EER is rendered in stream order): for the STAR files
# written here and for calc.external.relion.calc_displacement_from_relion_shifts, which reads RELION's back.
RELION_FLIPPED_FORMATS = ("tiff",)



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
    (−displacement) at positions in its own reading of the movie (y flipped for TIFF: RELION_FLIPPED_FORMATS).
    Re-fitted on a grid, which is exact because the basis is closed under y -> −y.
    """
    from appion.motioncorrection.calc.internal import calc_poly_basis  # numba: loaded by the engine already

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
    """The STAR blocks RELION's relion_run_motioncorr writes per micrograph: block name → a dict of single
    values (general) or of equally long columns (loops).

    frame_numbers: 1-based movie frame numbers of the frames used; displacements (n, 2) unbinned px.
    """
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
        "global_shift": {
            "rlnMicrographFrameNumber": np.asarray(frame_numbers, dtype=int),
            "rlnMicrographShiftX": shifts[:, 0],
            "rlnMicrographShiftY": shifts[:, 1],
        },
    }
    if model_coeffs is not None:
        relion = calc_relion_model_coeffs(model_coeffs, general.shape_yx, len(frame_numbers), movie_format)
        blocks["local_motion_model"] = {
            "rlnMotionModelCoeffsIdx": np.arange(relion.size, dtype=int),
            "rlnMotionModelCoeff": relion,
        }
    return blocks


def _star_value(value) -> str:
    """One STAR value: floats with 9 significant digits (no −0), quoted text when it holds blanks."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        text = f"{float(value):.9g}"
        return "0" if text in ("-0", "0") else text
    text = str(value)
    return f'"{text}"' if not text or any(c.isspace() for c in text) else text


def format_star(blocks: dict) -> str:
    """STAR text of blocks from calc_motion_star_blocks: a block of single values, or a loop of columns.

    Floats keep 9 significant digits: the model's t³ coefficients are small (~1e-5) but multiply
    t³ ~ 1e5 for long movies, so a fixed 6 decimals would lose tenths of a pixel.
    """
    lines = ["# written by appion", ""]
    for name, block in blocks.items():
        lines += ["", f"data_{name}", ""]
        columns = {key: np.asarray(value) for key, value in block.items()}
        if all(column.ndim == 0 for column in columns.values()):
            lines += [f"_{key}\t\t\t{_star_value(value.item())}" for key, value in columns.items()]
        else:
            lines.append("loop_")
            lines += [f"_{key} #{i + 1}" for i, key in enumerate(columns)]
            lines += ["\t".join(_star_value(column[i].item()) for column in columns.values())
                      for i in range(len(next(iter(columns.values()))))]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_motion_star(path, blocks: dict) -> Path:
    """Write STAR blocks (from calc_motion_star_blocks); RELION and the starfile package read them."""
    text = format_star(blocks)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


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

# Drawn directly with Pillow (a matplotlib dependency): ~20 ms instead of matplotlib's ~0.3 s plus its
# import.  The drawing helpers both steps use are appion.base.io.plot.
PLOT_SCALE = 2  # drawn at twice the size, then averaged down: antialiased lines and text
VIRIDIS = np.array([(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
                    (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37)], float)


def calc_viridis(t: np.ndarray) -> np.ndarray:
    """Colours (…, 3) uint8 of values t in [0, 1] on (an approximation of) matplotlib's viridis map."""
    x = np.clip(np.asarray(t, float), 0.0, 1.0) * (len(VIRIDIS) - 1)
    return np.rint(np.stack([np.interp(x, np.arange(len(VIRIDIS)), VIRIDIS[:, c]) for c in range(3)],
                            axis=-1)).astype(np.uint8)


def _text(draw, xy, text: str, size: int, anchor: str) -> None:
    draw.text(xy, text, font=plot_font(size * PLOT_SCALE), anchor=anchor, fill=(0, 0, 0))


def calc_equal_aspect_limits(x: np.ndarray, y: np.ndarray, width: float, height: float,
                             margin: float = 0.08) -> tuple[tuple[float, float], tuple[float, float]]:
    """x and y limits around the points with equal units per pixel on a width × height panel."""
    x0, x1 = float(np.min(x)), float(np.max(x))
    y0, y1 = float(np.min(y)), float(np.max(y))
    span = max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * margin)
    per_px = max(max(x1 - x0, 1e-9) * (1 + 2 * margin) / width, max(y1 - y0, 1e-9) * (1 + 2 * margin) / height,
                 span / max(width, height))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - per_px * width / 2, cx + per_px * width / 2), (cy - per_px * height / 2, cy + per_px * height / 2)


def calc_shift_plot_png(displacements_px: np.ndarray, pixel_size_A: float, first_frame: int, title: str = "",
                        dose_per_frame_e_per_A2: float | None = None) -> bytes:
    """Drift trajectory as PNG bytes (550×550): specimen position per frame in Å (equal scales), frames
    coloured by number with a colour bar, every few frame numbers written, the motion noted in the title.

    Early motion = the first 4 frames' steps (or the frames within the first 4 e/Å² when the dose
    is known), late = the rest.  Pure rendering (Pillow), so it can run in a thread while the frames are summed.
    """
    from PIL import Image, ImageDraw

    from appion.motioncorrection.calc.internal import calc_motion_summary  # numba: loaded by the engine already

    d = np.asarray(displacements_px, float)
    d = d - d[0]
    early_frames = 4
    if dose_per_frame_e_per_A2:
        early_frames = max(1, int(round(4.0 / dose_per_frame_e_per_A2)))
    total, early, late = (v * pixel_size_A for v in calc_motion_summary(d, min(early_frames, max(len(d) - 1, 0))))
    xa, ya = d[:, 0] * pixel_size_A, d[:, 1] * pixel_size_A

    S = PLOT_SCALE
    size = 550
    left, top, right, bottom = 70, 62, 410, 490
    canvas = Image.new("RGB", (size * S, size * S), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    lines = ([title] if title else []) + [f"total {total:.1f} Å, early {early:.1f} Å ({early_frames} frames), "
                                          f"late {late:.1f} Å"]
    for i, line in enumerate(lines):
        _text(draw, (size * S / 2, (top - 8 - 14 * (len(lines) - 1 - i)) * S), line, 11, "md")
    w, h = right - left, bottom - top
    xlim, ylim = calc_equal_aspect_limits(xa, ya, w, h)

    def px(x, y):
        return (left + (np.asarray(x) - xlim[0]) / (xlim[1] - xlim[0]) * w) * S, \
               (bottom - (np.asarray(y) - ylim[0]) / (ylim[1] - ylim[0]) * h) * S

    xt, xstep = calc_ticks(*xlim, target=6)
    yt, ystep = calc_ticks(*ylim, target=8)
    for v in xt:  # grid, ticks and labels
        x = px(v, 0.0)[0]
        draw.line([(x, top * S), (x, bottom * S)], fill=(225, 225, 225), width=S)
        draw.line([(x, bottom * S), (x, (bottom + 4) * S)], fill=(0, 0, 0), width=S)
        _text(draw, (x, (bottom + 6) * S), format_tick(v, xstep), 12, "mt")
    for v in yt:
        y = px(0.0, v)[1]
        draw.line([(left * S, y), (right * S, y)], fill=(225, 225, 225), width=S)
        draw.line([((left - 4) * S, y), (left * S, y)], fill=(0, 0, 0), width=S)
        _text(draw, ((left - 6) * S, y), format_tick(v, ystep), 12, "rm")
    draw.rectangle((left * S, top * S, right * S, bottom * S), outline=(0, 0, 0), width=S)
    _text(draw, ((left + right) / 2 * S, (bottom + 24) * S), "x drift (Å)", 13, "mt")
    draw_text_vertical(canvas, ((left - 52) * S, (top + bottom) / 2 * S), "y drift (Å)", 13 * S)

    x, y = px(xa, ya)
    draw.line(list(zip(x.tolist(), y.tolist())), fill=(31, 119, 180), width=S, joint="curve")
    n = len(d)
    colours = calc_viridis(np.arange(n) / max(n - 1, 1))
    r = 3.5 * S
    for i in range(n):
        draw.ellipse((x[i] - r, y[i] - r, x[i] + r, y[i] + r), fill=tuple(int(c) for c in colours[i]))
    step = max(1, n // 8)
    for i in list(range(0, n, step)) + ([n - 1] if (n - 1) % step else []):
        _text(draw, (x[i] + 5 * S, y[i] - 5 * S), str(i + first_frame), 9, "ls")

    bar_left, bar_right = 440, 458  # colour bar of frame numbers
    ramp = calc_viridis(np.linspace(1.0, 0.0, h * S))[:, None, :].repeat((bar_right - bar_left) * S, axis=1)
    canvas.paste(Image.fromarray(np.ascontiguousarray(ramp), "RGB"), (bar_left * S, top * S))
    draw.rectangle((bar_left * S, top * S, bar_right * S, bottom * S), outline=(0, 0, 0), width=S)
    lo, hi = first_frame, first_frame + max(n - 1, 1)
    ticks, tstep = calc_ticks(lo, hi, target=7)
    for v in ticks:
        yb = (bottom - (v - lo) / (hi - lo) * h) * S
        draw.line([(bar_right * S, yb), ((bar_right + 4) * S, yb)], fill=(0, 0, 0), width=S)
        _text(draw, ((bar_right + 6) * S, yb), format_tick(v, max(tstep, 1.0)), 12, "lm")
    draw_text_vertical(canvas, ((bar_right + 52) * S, (top + bottom) / 2 * S), "frame (0-based)", 13 * S)

    out = io.BytesIO()
    canvas.reduce(S).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def write_png(path, png: bytes) -> Path:
    """Write PNG bytes (from calc_shift_plot_png)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(png))


def write_shift_plot(path, displacements_px: np.ndarray, pixel_size_A: float, first_frame: int,
                     title: str = "", dose_per_frame_e_per_A2: float | None = None) -> Path:
    """Render and write the drift plot PNG (see calc_shift_plot_png)."""
    return write_png(path, calc_shift_plot_png(displacements_px, pixel_size_A, first_frame, title,
                                               dose_per_frame_e_per_A2))
