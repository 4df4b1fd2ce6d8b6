"""Pure helpers of the web viewer: status roll-up, drift, rates, paging, thumbnails (no I/O)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Per-exposure states shown in the table (loop step states plus 'new': not yet seen by the loop).
NEW = "new"
STATUS_ORDER = ("failed", "running", "retry", "queued")

# CTFFIND writes 100000 Å for "no fit resolution".
NO_RESOLUTION_A = 99999.0


@dataclass(frozen=True)
class StepState:
    """One ApLoopExposureData row reduced to what the page shows."""

    step: str
    status: str
    attempts: int
    last_error: str | None
    arrived: float | None
    submitted: float | None
    finished: float | None


def calc_exposure_status(states: list[StepState], steps: list[str]) -> tuple[str, str | None]:
    """Roll the per-step states of one exposure into one status and the reason it failed.

    An exposure is failed if any step failed permanently, done only when every step of the
    run is done; otherwise the most urgent of running / retry / queued wins.
    """
    if not states:
        return NEW, None
    by_step = {s.step: s for s in states}
    for s in states:
        if s.status == "failed":
            return "failed", f"{s.step}: {s.last_error or 'failed (no reason recorded)'}"
    if steps and all(by_step.get(step) is not None and by_step[step].status == "done" for step in steps):
        return "done", None
    for status in STATUS_ORDER[1:]:
        hit = next((s for s in states if s.status == status), None)
        if hit is not None:
            reason = f"{hit.step}: {hit.last_error}" if status == "retry" and hit.last_error else None
            return status, reason
    if all(s.status == "done" for s in states):
        return "queued", None  # some steps have no row yet
    return states[0].status or NEW, None


def calc_path_length_px(pos_x: list[float] | None, pos_y: list[float] | None, last_x: float | None = None,
                        last_y: float | None = None, n_positions: int | None = None) -> float | None:
    """Total drift: length of the frame trajectory in pixels.

    Classic rows keep only the first positions (SEQ|pos_x/pos_y) and the last one; when
    positions were truncated the last position is appended, so the length is then a lower bound.
    """
    if not pos_x or not pos_y:
        return None
    xs, ys = list(pos_x), list(pos_y)
    if n_positions is not None and n_positions > len(xs) and last_x is not None and last_y is not None:
        xs.append(last_x)
        ys.append(last_y)
    # Plain floats: a few dozen points per exposure, thousands of exposures per series (numpy costs more here).
    return float(sum(math.hypot(xs[i + 1] - xs[i], ys[i + 1] - ys[i]) for i in range(min(len(xs), len(ys)) - 1)))


def calc_rate_per_hour(n_events: int, window_s: float) -> float | None:
    """Events per hour over a window (None for an empty window)."""
    if window_s <= 0:
        return None
    return n_events * 3600.0 / window_s


def calc_span_rate_per_hour(n_events: int, first_s: float | None, last_s: float | None) -> float | None:
    """Average rate between the first and last event (None with fewer than 2 events or no span)."""
    if n_events < 2 or first_s is None or last_s is None or last_s <= first_s:
        return None
    return (n_events - 1) * 3600.0 / (last_s - first_s)


def calc_page_count(n_rows: int, per_page: int) -> int:
    return max(1, math.ceil(n_rows / per_page))


def calc_page_number(requested: str | None, n_pages: int) -> int:
    """1-based page from a query value, clamped into range (garbage → 1)."""
    try:
        page = int(requested or 1)
    except ValueError:
        page = 1
    return min(max(page, 1), n_pages)


def calc_resolution_A(value: float | None) -> float | None:
    """Fit resolution in Å, None when CTFFIND reported none (100000 Å) or nothing is stored."""
    if value is None or not math.isfinite(value) or value >= NO_RESOLUTION_A:
        return None
    return float(value)


def calc_astigmatism_A(defocus1_m: float | None, defocus2_m: float | None) -> float | None:
    if defocus1_m is None or defocus2_m is None:
        return None
    return abs(defocus2_m - defocus1_m) * 1e10


def calc_thumbnail(image: np.ndarray, max_px: int) -> np.ndarray:
    """A display thumbnail: block-mean binned to at most max_px on the long side, contrast-stretched.

    image: (y, x) float; returns (y', x') uint8 with the 0.5–99.5 percentiles mapped to 0–255,
    so a few hot pixels do not turn the micrograph grey.
    """
    if image.ndim != 2:
        raise ValueError(f"thumbnail needs a 2-D image, got shape {image.shape}")
    factor = max(1, math.ceil(max(image.shape) / max_px))
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    if ny == 0 or nx == 0:
        raise ValueError(f"image {image.shape} is too small for a thumbnail")
    binned = image[:ny, :nx].astype(np.float32).reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))
    finite = binned[np.isfinite(binned)]
    if finite.size == 0:
        return np.zeros(binned.shape, dtype=np.uint8)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        return np.full(binned.shape, 128, dtype=np.uint8)
    scaled = np.clip((np.nan_to_num(binned, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return (scaled * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- display text (one formatter for HTML and JSON)
def fmt_number(value: float | None, digits: int, empty: str = "–") -> str:
    if value is None or not math.isfinite(value):
        return empty
    return f"{value:.{digits}f}"


def fmt_rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}/h"


def fmt_age(seconds_ago: float | None) -> str:
    """'12 s ago', '5 min ago', '3.2 h ago' (– when unknown)."""
    if seconds_ago is None:
        return "–"
    s = max(0.0, seconds_ago)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def calc_cells(row) -> dict[str, str]:
    """The text of each table cell of an exposure row (an ExposureRow-like object)."""
    astig = fmt_number(row.astig_A, 0)
    if row.astig_A is not None and row.astig_angle_deg is not None:
        astig = f"{astig} Å @ {row.astig_angle_deg:.0f}°"
    elif row.astig_A is not None:
        astig = f"{astig} Å"
    return {
        "id": str(row.id),
        "filename": row.filename,
        "drift": fmt_number(row.drift_A, 1) if row.drift_A is not None else (
            f"{row.drift_px:.1f} px" if row.drift_px is not None else "–"),
        "defocus1": fmt_number(row.defocus1_um, 3),
        "defocus2": fmt_number(row.defocus2_um, 3),
        "astig": astig,
        "resolution": fmt_number(row.resolution_A, 1),
        "score": fmt_number(row.score, 3),
        "status": row.status,
        "reason": row.reason or "",
        "attempts": str(row.attempts),
        "extra": list(getattr(row, "extra", []) or []),
    }
