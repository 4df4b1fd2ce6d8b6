"""CTF estimation output files: CTFFIND-format text files and the diagnostic PNG.

Worker side: no Django here (the database rows are appion.ctfestimation.store).

The diagnostic PNG is drawn directly with Pillow (a matplotlib dependency, so always present): a figure
costs a few tens of milliseconds instead of the 0.3–0.6 s a matplotlib figure takes, so a worker spends its
time on the estimate, not on its picture.

Every file is written to a temporary name in the same directory and moved into place with
os.replace, so a reader never sees a partial file.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from appion.base.io.files import write_atomic, write_text_atomic
from appion.base.io.plot import calc_ticks, format_tick  # noqa: F401 (tests read them here)
from appion.base.io.plot import draw_text_vertical
from appion.base.io.plot import font as plot_font
from appion.ctfestimation.calc.classic import AvrotData, CtffindHeader, format_avrot, format_ctffind_results
from appion.ctfestimation.calc.internal import CtfFit
from appion.ctfestimation.calc.result import CtfResult


def write_ctffind_results(path, results: list[CtfResult], header: CtffindHeader) -> Path:
    """CTFFIND 4.1 results text (comment header, 7 columns per micrograph)."""
    text = format_ctffind_results(results, header)
    return write_text_atomic(path, text)


def write_avrot(path, fit: CtfFit, header: CtffindHeader) -> Path:
    """CTFFIND-style ``_avrot.txt``: 6 lines (frequency, two rotational averages, fit, score, noise)."""
    avrot = AvrotData(spatial_frequency_per_A=fit.frequencies_per_A, rotational_average_no_astig=fit.rotavg_no_astig,
                      rotational_average=fit.rotavg, ctf_fit=fit.ctf_fit, cross_correlation=fit.ring_score,
                      noise_2sigma=fit.ring_score_noise)
    text = format_avrot([avrot], header)
    return write_text_atomic(path, text)


# ------------------------------------------------------------------------------ diagnostic PNG

SCALE = 2  # figures are drawn at twice their size, then averaged down: antialiased lines and text
COLORS = {"blue": (31, 119, 180), "orange": (255, 127, 14), "green": (44, 160, 44), "red": (214, 39, 40),
          "black": (0, 0, 0), "grey": (128, 128, 128), "white": (255, 255, 255)}


class _Panel:
    """One plot's frame on the canvas: pixel box (left, top, right, bottom, at SCALE) and data limits."""

    def __init__(self, box: tuple[int, int, int, int], xlim: tuple[float, float], ylim: tuple[float, float]):
        self.box, self.xlim, self.ylim = tuple(v * SCALE for v in box), xlim, ylim

    @property
    def size(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    def to_px(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Data coordinates to pixel coordinates inside the panel (origin at its top left)."""
        w, h = self.size
        px = (np.asarray(x, float) - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * w
        py = (self.ylim[1] - np.asarray(y, float)) / (self.ylim[1] - self.ylim[0]) * h
        return px, py


def _text(draw, xy, text: str, size: int, anchor: str, fill=COLORS["black"]) -> None:
    draw.text(xy, text, font=plot_font(size * SCALE), anchor=anchor, fill=fill)


def _polyline(draw, points_x: np.ndarray, points_y: np.ndarray, color, width: float, dash: float = 0.0) -> None:
    """A line through the points (pixel coordinates); dash > 0 draws dash-long pieces with equal gaps."""
    ok = np.isfinite(points_x) & np.isfinite(points_y)
    x, y = np.clip(points_x[ok], -1e4, 1e4), np.clip(points_y[ok], -1e4, 1e4)
    if x.size < 2:
        return
    w = max(1, int(round(width * SCALE)))
    if dash <= 0:
        draw.line(list(zip(x.tolist(), y.tolist())), fill=color, width=w, joint="curve")
        return
    length = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    n = max(2, int(length[-1] / (dash * SCALE / 4)) + 1)
    s = np.linspace(0.0, length[-1], n)
    xs, ys = np.interp(s, length, x), np.interp(s, length, y)
    on = (s // (dash * SCALE)) % 2 == 0
    for i in range(n - 1):
        if on[i]:
            draw.line([(xs[i], ys[i]), (xs[i + 1], ys[i + 1])], fill=color, width=w)


def _frame(canvas, draw, panel: _Panel, xlabel: str, ylabel: str, title: str, tick_size: int = 12,
           label_size: int = 12, title_size: int = 11, y_ticks: int = 8) -> None:
    """Frame, ticks with labels, axis labels and title around a panel."""
    left, top, right, bottom = panel.box
    draw.rectangle((left, top, right, bottom), outline=COLORS["black"], width=SCALE)
    tick = 4 * SCALE
    xt, xstep = calc_ticks(*panel.xlim)
    for v in xt:
        px = left + panel.to_px(v, 0.0)[0]
        draw.line([(px, bottom), (px, bottom + tick)], fill=COLORS["black"], width=SCALE)
        _text(draw, (px, bottom + tick + 2 * SCALE), format_tick(v, xstep), tick_size, "mt")
    yt, ystep = calc_ticks(*panel.ylim, target=y_ticks)
    label_width = 0
    for v in yt:
        py = top + panel.to_px(0.0, v)[1]
        draw.line([(left - tick, py), (left, py)], fill=COLORS["black"], width=SCALE)
        label = format_tick(v, ystep)
        _text(draw, (left - tick - 2 * SCALE, py), label, tick_size, "rm")
        label_width = max(label_width, draw.textlength(label, font=plot_font(tick_size * SCALE)))
    _text(draw, ((left + right) / 2, bottom + tick + (tick_size + 6) * SCALE), xlabel, label_size, "mt")
    draw_text_vertical(canvas, (left - tick - label_width - (4 + label_size * 0.7) * SCALE, (top + bottom) / 2),
                       ylabel, label_size * SCALE, COLORS["black"])
    _text(draw, ((left + right) / 2, top - 5 * SCALE), title, title_size, "md")


def calc_spectrum_panel(fit: CtfFit, resmax_A: float) -> tuple[np.ndarray, float]:
    """The half-and-half image of the diagnostic: (2h, 2h) uint8, row 0 at the top = highest ky, and the
    frequency (1/Å) at its edges (±).  Left half: the background-subtracted spectrum clipped to its
    2–98 % percentiles; right half: the fitted CTF² on the same grey scale."""
    box = fit.spectrum_2d.shape[0]
    dk = 1.0 / (box * fit.spectrum_pixel_size_A)
    nyquist = 0.5 / fit.spectrum_pixel_size_A
    half = max(8, int(min(nyquist, 1.3 / resmax_A) / dk))
    c = box // 2
    data = fit.spectrum_2d[c - half:c + half, c - half:c + half]
    model = fit.model_2d[c - half:c + half, c - half:c + half]
    left = data[:, :half]
    sample = data.ravel()
    lo, hi = (float(v) for v in np.percentile(sample, [2, 98]))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    shown = np.empty((2 * half, 2 * half), np.float32)
    shown[:, :half] = (np.clip(left, lo, hi) - lo) * scale
    shown[:, half:] = np.clip(model[:, half:], 0.0, 1.0) * 255.0
    return np.ascontiguousarray(np.rint(shown[::-1]).astype(np.uint8)), half * dk


def calc_diagnostic_png(fit: CtfFit, resmax_A: float, title: str = "") -> bytes:
    """The diagnostic figure as PNG bytes (990×432 px).

    Left: the 2D spectrum (background subtracted) with the fitted CTF² in its right half.  Right: the
    astigmatism-corrected 1D average, the fitted CTF², the per-frequency fit score and its noise level,
    and the fit-resolution marker.
    """
    from PIL import Image, ImageDraw

    width, height = 990, 432
    canvas = Image.new("RGB", (width * SCALE, height * SCALE), COLORS["white"])
    draw = ImageDraw.Draw(canvas)
    r = fit.result
    if title:
        _text(draw, (width * SCALE / 2, 10 * SCALE), title, 11, "mt")

    image, k_edge = calc_spectrum_panel(fit, resmax_A)
    left = _Panel((110, 52, 430, 372), (-k_edge, k_edge), (-k_edge, k_edge))
    tile = Image.fromarray(image, "L").resize(left.size, Image.Resampling.NEAREST)
    canvas.paste(tile.convert("RGB"), left.box[:2])
    _frame(canvas, draw, left, "spatial frequency kx (1/Å)", "spatial frequency ky (1/Å)", "spectrum | fitted CTF²")

    nyquist = 0.5 / fit.spectrum_pixel_size_A
    right = _Panel((548, 52, 968, 372), (0.0, nyquist), (-1.5, 2.5))
    plot = Image.new("RGB", right.size, COLORS["white"])
    pdraw = ImageDraw.Draw(plot)
    k = fit.frequencies_per_A
    sel = (k > 0) & (k <= nyquist)
    curves = [(fit.rotavg, "blue", 0.8, 0.0, "spectrum (astigmatism-corrected average)"),
              (fit.ctf_fit, "orange", 0.8, 0.0, "fitted CTF²"),
              (fit.ring_score, "green", 0.8, 0.0, "fit score"),
              (fit.ring_score_noise, "green", 0.7, 2.0, "score noise (2σ)")]
    for values, color, lw, dash, _ in curves:
        _polyline(pdraw, *right.to_px(k[sel], values[sel]), COLORS[color], lw, dash)
    legend = [(color, lw, dash, label) for _, color, lw, dash, label in curves]
    if np.isfinite(r.fit_resolution_A) and r.fit_resolution_A > 0:
        px = right.to_px(1.0 / r.fit_resolution_A, 0.0)[0]
        pdraw.line([(px, 0), (px, right.size[1])], fill=COLORS["red"], width=SCALE)
        legend.append(("red", 1.0, 0.0, f"fit resolution {r.fit_resolution_A:.2f} Å"))
    _legend(pdraw, right.size, legend)
    canvas.paste(plot, right.box[:2])
    _frame(canvas, draw, right, "spatial frequency (1/Å)", "normalised amplitude / correlation",
           f"df1 {r.defocus1_A:.0f} Å, df2 {r.defocus2_A:.0f} Å, angle {r.astig_angle_deg:.1f}°, "
           f"phase {r.phase_shift_rad:.2f} rad, cc {r.cross_correlation:.3f}")

    out = io.BytesIO()
    canvas.reduce(SCALE).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _legend(draw, size: tuple[int, int], entries: list[tuple[str, float, float, str]], font_size: int = 9) -> None:
    """Line samples and labels in a framed box at the top right of a panel of pixel size `size`."""
    font = plot_font(font_size * SCALE)
    row = int(font_size * 1.5 * SCALE)
    sample = 22 * SCALE
    text_w = max(draw.textlength(label, font=font) for *_, label in entries)
    w = int(sample + text_w + 16 * SCALE)
    h = row * len(entries) + 6 * SCALE
    x0, y0 = size[0] - w - 5 * SCALE, 5 * SCALE
    draw.rectangle((x0, y0, x0 + w, y0 + h), fill=COLORS["white"], outline=(204, 204, 204), width=SCALE)
    for i, (color, lw, dash, label) in enumerate(entries):
        y = y0 + 3 * SCALE + row * i + row / 2
        _polyline(draw, np.array([x0 + 5 * SCALE, x0 + 5 * SCALE + sample]), np.array([y, y]), COLORS[color],
                  lw, dash)
        draw.text((x0 + sample + 10 * SCALE, y), label, font=font, anchor="lm", fill=COLORS["black"])


def write_diagnostic_png(path, fit: CtfFit, resmax_A: float, title: str = "") -> Path:
    """Render (calc_diagnostic_png) and write the diagnostic PNG."""
    png = calc_diagnostic_png(fit, resmax_A, title)
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(png))
