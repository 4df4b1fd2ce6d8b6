"""The few drawing helpers the steps' diagnostic PNGs share (drawn directly with Pillow, a matplotlib dependency:
tens of milliseconds instead of a matplotlib figure's 0.3–0.6 s).  No Django; Pillow is imported on first use."""
from __future__ import annotations

import functools
import importlib.util
import math
import os

import numpy as np


@functools.lru_cache(maxsize=16)
def font(size_px: int):
    """A sans-serif FreeType font of size_px pixels (DejaVu Sans from matplotlib's data, else Pillow's own)."""
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        if os.path.exists(path):
            return ImageFont.truetype(path, size_px)
    return ImageFont.load_default(size_px)


def calc_ticks(lo: float, hi: float, target: int = 6) -> tuple[np.ndarray, float]:
    """Round tick values within [lo, hi] (steps 1, 2, 2.5 or 5 × 10ⁿ, about `target` of them) and the step."""
    raw = max(hi - lo, 1e-12) / target
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw * 0.999)
    first = math.ceil(lo / step - 1e-9)
    return (first + np.arange(int(math.floor(hi / step + 1e-9)) - first + 1)) * step, step


def format_tick(value: float, step: float) -> str:
    """A tick label with as many decimals as the step needs, and a typographic minus."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    decimals += 1 if round(step / 10.0 ** math.floor(math.log10(step) + 1e-9), 3) == 2.5 else 0
    text = f"{value:.{decimals}f}"
    return (f"{0.0:.{decimals}f}" if float(text) == 0.0 else text).replace("-", "\u2212")


def draw_text_vertical(canvas, xy: tuple[float, float], text: str, size_px: int,
                       fill: tuple[int, int, int] = (0, 0, 0)) -> None:
    """Draw text rotated 90° counter-clockwise on a Pillow image, centred at xy (a y-axis label)."""
    from PIL import Image, ImageDraw

    face = font(size_px)
    left, top, right, bottom = face.getbbox(text)
    mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(mask).text((-left + 1, -top + 1), text, font=face, fill=255)
    mask = mask.rotate(90, expand=True)
    canvas.paste(fill, (int(xy[0] - mask.width / 2), int(xy[1] - mask.height / 2)), mask)
