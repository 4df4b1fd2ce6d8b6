"""Pure helpers of the web viewer: status roll-up, drift, rates, paging, thumbnails, defocus convention,
curation thresholds, backlog series, form tokens (no I/O)."""
from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from appion.base.physics import calc_major_defocus_axis

# Per-exposure states shown in the table (loop step states plus 'new': not yet seen by the loop).
NEW = "new"
STATUS_ORDER = ("failed", "running", "retry", "queued")

# CTFFIND writes 100000 Å for "no fit resolution".
NO_RESOLUTION_A = 99999.0

# A later step the loop did not run because a curation step (quality) rejected the exposure is stored as
# failed with this reason prefix (appion.loop.core): the exposure is rejected, not failed.
REJECTION_SKIP = "not run: rejected by "

# Arrivals faster than one a second come from a bulk import (a session registered at once), not a microscope.
BULK_RATE_PER_HOUR = 3600.0
MIN_RATE_WINDOW_S = 60.0  # a run average needs at least this much wall time


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


def calc_is_rejection_skip(state: StepState) -> bool:
    """A step the loop did not run because a curation step rejected the exposure (not a failure)."""
    return state.status == "failed" and (state.last_error or "").startswith(REJECTION_SKIP)


def calc_exposure_status(states: list[StepState], steps: list[str]) -> tuple[str, str | None]:
    """Roll the per-step states of one exposure into one status and the reason it failed.

    An exposure is failed if any step failed permanently, done only when every step of the
    run is done (a step skipped because a curation step rejected the exposure counts as done: the
    verdict says why); otherwise the most urgent of running / retry / queued wins.
    """
    if not states:
        return NEW, None
    states = [StepState(s.step, "done", s.attempts, s.last_error, s.arrived, s.submitted, s.finished)
              if calc_is_rejection_skip(s) else s for s in states]
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


def calc_is_bulk_import(n_events: int, first_s: float | None, last_s: float | None,
                        max_per_hour: float = BULK_RATE_PER_HOUR) -> bool:
    """Whether arrivals came faster than a microscope records (max_per_hour over their span): a session
    imported at once, whose span-based rate means nothing."""
    if n_events < 2 or first_s is None or last_s is None:
        return False
    rate = calc_span_rate_per_hour(n_events, first_s, last_s)  # None: no span (all at the same time)
    return rate is None or rate > max_per_hour


def calc_wall_rate_per_hour(n_events: int, start_s: float | None, end_s: float | None,
                            min_window_s: float = MIN_RATE_WINDOW_S) -> float | None:
    """Events per hour of wall time from start to end (None without a window of at least min_window_s)."""
    if start_s is None or end_s is None or end_s - start_s < min_window_s:
        return None
    return n_events * 3600.0 / (end_s - start_s)


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


def calc_ctffind_defocus(defocus1_m: float | None, defocus2_m: float | None,
                         angle_deg: float | None) -> tuple[float | None, float | None, float | None]:
    """A classic ApCtfData triple in CTFFIND's convention, the one the engines' diagnostic plots print
    (docs/conventions.md): (defocus 1 Å, defocus 2 Å, azimuth of defocus 1 in degrees, in (−90, 90]),
    positive = underfocus, defocus 1 ≥ defocus 2.

    Classic Appion stores the smaller defocus as defocus1 and the azimuth of that axis, so the larger one
    (CTFFIND's defocus 1) lies along the stored angle − 90°.  A row already ordered the other way is kept.
    """
    if defocus1_m is None or defocus2_m is None:
        return None, None, None
    major, minor, angle = calc_major_defocus_axis(defocus1_m, defocus2_m, 0.0 if angle_deg is None else angle_deg)
    return major, minor, None if angle_deg is None else angle


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


# ---------------------------------------------------------------- curation metrics and thresholds
@dataclass(frozen=True)
class Metric:
    """A per-exposure quality metric drawn on the session page (ApQualityData column, its threshold)."""

    key: str  # chart id (chart-<key>)
    column: str  # ApQualityData column
    title: str
    label: str  # axis label
    limit: str | None  # field of the thresholds JSON (appion.quality.records.Thresholds), None: no limit
    scale: float = 1.0  # stored value × scale = shown value
    digits: int = 1


QUALITY_METRICS = (
    Metric("drift", "total_drift_A", "Total drift", "total drift (Å)", "max_total_drift_A"),
    Metric("resolution", "ctf_resolution_A", "CTF fit resolution", "fit resolution (Å)", "max_ctf_resolution_A",
           digits=2),
    Metric("defocus", "defocus_A", "Defocus (mean)", "defocus (µm)", None, 1e-4, 4),
    Metric("astigmatism", "astigmatism_A", "Astigmatism", "|defocus 1 − defocus 2| (Å)", "max_astigmatism_A",
           digits=0),
    Metric("tilt", "tilt_deg", "Sample tilt", "tilt (°)", "max_tilt_deg"),
    Metric("ice", "ice_thickness", "Ice thickness", "relative ice thickness", "max_ice_thickness", digits=3),
)

# (thresholds field, label, unit) in the order classic users read them
LIMITS = (("max_ctf_resolution_A", "CTF fit resolution", " Å"), ("max_total_drift_A", "total drift", " Å"),
          ("max_astigmatism_A", "astigmatism", " Å"), ("max_ice_thickness", "relative ice thickness", ""),
          ("max_tilt_deg", "tilt", "°"))


def calc_limit(thresholds: dict | None, field_name: str | None) -> float | None:
    """One limit of a thresholds JSON object (None: no limit, or not a number)."""
    if not thresholds or not field_name:
        return None
    value = thresholds.get(field_name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def fmt_thresholds(thresholds: dict | None) -> str:
    """The limits in force as one line: 'CTF fit resolution ≤ 6 Å, total drift ≤ 80 Å' ('no limits')."""
    if thresholds is None:
        return "–"
    parts = [f"{label} ≤ {value:g}{unit}" for name, label, unit in LIMITS
             if (value := calc_limit(thresholds, name)) is not None]
    if thresholds.get("reject_crystalline_ice") is True:
        parts.append("no crystalline ice")
    return ", ".join(parts) or "no limits"


# ---------------------------------------------------------------- backlog and lag over time
def calc_backlog_series(exposures: list[tuple[float | None, float | None, bool]], start_s: float,
                        end_s: float) -> tuple[list[list[float]], list[list[float]]]:
    """Backlog and lag of a loop run over time.

    exposures: (arrived, finished or None, done) per exposure (done: processed, not failed); times in Unix s.
    An exposure registered before the run started waits from the start.  Returns (backlog, lag):
    backlog [[minutes since start, exposures registered and not yet finished], ...], one point per change
    (the count after it) and one at end_s; lag [[minutes since start at finish, seconds from arrival to
    done], ...] of the done exposures, in order of finishing.
    """
    events: list[tuple[float, int]] = []
    lag: list[list[float]] = []
    for arrived, finished, done in exposures:
        if arrived is None:
            continue
        waits_from = max(arrived, start_s)
        events.append((waits_from, 1))
        if finished is not None:
            events.append((max(finished, waits_from), -1))
            if done:
                lag.append([round((max(finished, start_s) - start_s) / 60.0, 4), round(max(0.0, finished - arrived),
                                                                                      1)])
    events.sort()
    backlog: list[list[float]] = [[0.0, 0]]
    n = 0
    for t, change in events:
        n += change
        x = round((t - start_s) / 60.0, 4)
        if backlog[-1][0] == x:
            backlog[-1][1] = n
        else:
            backlog.append([x, n])
    x_end = round((end_s - start_s) / 60.0, 4)
    if x_end > backlog[-1][0]:
        backlog.append([x_end, n])
    lag.sort()
    return backlog, lag


# ---------------------------------------------------------------- the accept/reject form
def calc_form_token(secret: bytes, purpose: str) -> str:
    """A per-page form token (CSRF): HMAC-SHA256 of what the form is for, under the server's secret."""
    return hmac.new(secret, purpose.encode(), hashlib.sha256).hexdigest()


def calc_form_token_ok(secret: bytes, purpose: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(calc_form_token(secret, purpose), str(given))


def calc_is_same_origin(host: str | None, origin: str | None, referer: str | None, fetch_site: str | None) -> bool:
    """Whether a POST comes from this server's own page, by what a browser says: Sec-Fetch-Site (when sent) is
    "same-origin", and the Origin header (else the Referer) names the Host it was sent to.  A client that
    sends none of them (not a browser) passes: the form token decides."""
    if not host:
        return False
    if fetch_site is not None and fetch_site != "same-origin":
        return False
    for value in (origin, referer):
        if value is not None:
            try:
                netloc = urlsplit(value).netloc
            except ValueError:
                return False
            return value != "null" and netloc.lower() == host.lower()
    return True


# ---------------------------------------------------------------- display text (one formatter for HTML and JSON)
def fmt_number(value: float | None, digits: int, empty: str = "–") -> str:
    if value is None or not math.isfinite(value):
        return empty
    return f"{value:.{digits}f}"


def fmt_rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}/h"


def fmt_duration(seconds: float) -> str:
    """'40 s', '12 min', '3.2 h'."""
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def fmt_age(seconds_ago: float | None) -> str:
    """'12 s ago', '5 min ago', '3.2 h ago' (– when unknown)."""
    return "–" if seconds_ago is None else f"{fmt_duration(seconds_ago)} ago"


def calc_shown_status(status: str, verdict) -> str:
    """The state a page shows for an exposure: "rejected" when curation rejected it (a verdict with accepted
    False), unless it failed (the failure and its reason come first); else the loop's state."""
    return "rejected" if verdict is not None and not verdict.accepted and status != "failed" else status


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
        "tilt": fmt_number(getattr(row, "tilt_deg", None), 1),
        "ice": fmt_number(getattr(row, "ice_thickness", None), 3)
        + (" crystalline" if getattr(row, "crystalline_ice", None) else ""),
    }
