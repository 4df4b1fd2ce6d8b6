"""Read-only queries behind the viewer's curation: verdicts, the quality metrics of a page's rows, the exposure
sets of the session table's filters and the state of each exposure of a loop run.

A verdict is the quality step's (ApQualityData of the loop run's quality run: rejected, reason, the thresholds
in force when it was judged) unless a person gave one (ApQualityVerdictData: the newest per exposure wins, in
every run), as appion.quality.steprows decides for the loop.  Every function costs a fixed number of queries
whatever the session size (whole-run `values_list` or `id__in` of one page).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Min, Q

from appion.base.db import models as m
from appion.quality.retrieve import retrieve_quality_rows
from appion.web import calc

QUALITY_STEP = "quality"
FILTERS_QUALITY = ("all", "accepted", "rejected", "failed")
FILTERS_PLAIN = ("all", "done", "failed")


@dataclass(frozen=True)
class Verdict:
    """Whether an exposure is kept, and who said so.

    reason: why it was rejected (automatic: every failed limit; by hand: the person's words), or a person's
    note on an acceptance.  thresholds: the limits in force when the quality step judged it (its own
    verdict, or the automatic one a person's overrides).
    """

    accepted: bool
    reason: str | None
    manual: bool
    user: str | None = None
    when: str | None = None  # "YYYY-MM-DD HH:MM:SS UTC"
    thresholds: dict | None = None
    automatic: Verdict | None = None  # the quality step's verdict that a person's overrides

    @property
    def text(self) -> str:
        """What the table shows under the status: the rejection reason, or that a person accepted it."""
        if self.manual:
            word = "accepted" if self.accepted else "rejected"
            return f"{word} by hand: {self.reason}" if self.reason else f"{word} by hand"
        return "" if self.accepted else (self.reason or "rejected")


def fmt_timestamp(value) -> str | None:
    """A row's DEF_timestamp (naive UTC, as Django stores it with USE_TZ False) as display text."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else None


def parse_thresholds(text: str | None) -> dict | None:
    try:
        value = json.loads(text or "")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def retrieve_quality_run_id(session_id: int, step_runs: dict, steps: tuple[str, ...],
                            runname: str | None) -> int | None:
    """The loop run's quality run: its ApLoopStepRunData row, else (a loop just starting) the session's newest
    quality run of the same name."""
    if step_runs.get(QUALITY_STEP) is not None:
        return step_runs[QUALITY_STEP]
    if QUALITY_STEP not in steps:
        return None
    return (m.ApQualityRunData.objects.filter(session_id=session_id, runname=runname).order_by("-id")
            .values_list("id", flat=True).first())


def calc_automatic(row: dict) -> Verdict:
    return Verdict(accepted=not row.get("rejected"), reason=row.get("reason") if row.get("rejected") else None,
                   manual=False, when=fmt_timestamp(row.get("timestamp")),
                   thresholds=parse_thresholds(row.get("thresholds")))


def calc_verdict(row: dict | None, manual: Verdict | None) -> Verdict | None:
    """The verdict in force: a person's (keeping the automatic one it overrides), else the quality step's."""
    automatic = calc_automatic(row) if row is not None else None
    if manual is not None:
        return Verdict(manual.accepted, manual.reason, True, manual.user, manual.when,
                       automatic.thresholds if automatic else None, automatic)
    return automatic


def retrieve_manual_verdicts(image_ids: list[int]) -> dict[int, Verdict]:
    """image id → the newest verdict a person gave on it."""
    out: dict[int, Verdict] = {}
    if not image_ids:
        return out
    for image_id, accepted, reason, user, stamp in (
            m.ApQualityVerdictData.objects.filter(image_id__in=image_ids).order_by("id")
            .values_list("image_id", "accepted", "reason", "user", "timestamp")):
        out[image_id] = Verdict(bool(accepted), reason, True, user, fmt_timestamp(stamp))
    return out


def fill_quality(by_id: dict, quality_run_id: int | None, with_details: bool = False) -> None:
    """Set tilt, ice and the verdict (and, with_details, every stored metric) of a page's rows (two queries)."""
    ids = list(by_id)
    rows = retrieve_quality_rows(quality_run_id, ids) if quality_run_id is not None else {}
    manual = retrieve_manual_verdicts(ids)
    for image_id, row in by_id.items():
        stored = rows.get(image_id)
        if stored is not None:
            row.tilt_deg, row.ice_thickness = stored["tilt_deg"], stored["ice_thickness"]
            row.crystalline_ice = stored["crystalline_ice"]
            if with_details:
                row.quality = stored
        row.verdict = calc_verdict(stored, manual.get(image_id))


# ---------------------------------------------------------------- whole-run sets (filters, counts, timeline)
@dataclass(frozen=True)
class ExposureState:
    """One exposure of a loop run: when it arrived and finished, and how (done, failed, or neither yet)."""

    arrived: float | None
    finished: float | None
    outcome: str | None  # "done" (every step done, or skipped because rejected), "failed", None: not finished
    running: bool = False  # a step of it runs now


def retrieve_exposure_states(looprun_id: int, n_steps: int) -> dict[int, ExposureState]:
    """image id → its state in the loop run (one GROUP BY query)."""
    skipped = Q(status="failed", last_error__startswith=calc.REJECTION_SKIP)
    out = {}
    for image_id, arrived, finished, n_done, n_failed, n_running in (
            m.ApLoopExposureData.objects.filter(looprun_id=looprun_id).values("image_id")
            .annotate(a=Min("arrived"), f=Max("finished"), nd=Count("id", filter=Q(status="done") | skipped),
                      nf=Count("id", filter=Q(status="failed") & ~skipped), nr=Count("id", filter=Q(status="running")))
            .values_list("image_id", "a", "f", "nd", "nf", "nr")):
        outcome = "failed" if n_failed else "done" if n_steps and n_done >= n_steps else None
        out[image_id] = ExposureState(arrived, finished if outcome else None, outcome, bool(n_running))
    return out


def retrieve_verdict_flags(session_id: int, quality_run_id: int | None) -> dict[int, bool]:
    """image id → accepted? for every judged exposure of the session (the quality run's, a person's newest
    winning); two whole-run queries of ids and flags."""
    flags: dict[int, bool] = {}
    if quality_run_id is not None:
        flags.update((i, not bool(r)) for i, r in m.ApQualityData.objects.filter(qualityrun_id=quality_run_id)
                     .order_by("id").values_list("image_id", "rejected"))
    flags.update((i, bool(a)) for i, a in m.ApQualityVerdictData.objects.filter(session_id=session_id)
                 .order_by("id").values_list("image_id", "accepted"))
    return flags


@dataclass(frozen=True)
class FilterSets:
    """The exposures each filter of the session table keeps (sets of image ids) and the filters offered."""

    names: tuple[str, ...]
    sets: dict[str, set[int]]

    def counts(self) -> dict[str, int]:
        return {name: len(ids) for name, ids in self.sets.items()}


def retrieve_filter_sets(session_id: int, states: dict[int, ExposureState], quality_run_id: int | None,
                         has_quality: bool) -> FilterSets:
    """accepted (judged and kept, not failed), rejected (by the quality step or by hand), failed (a step failed
    permanently; a step skipped because the exposure was rejected is not a failure), done (runs without a
    quality step: every step done).  states: the loop run's (retrieve_exposure_states; {} without one)."""
    failed = {i for i, s in states.items() if s.outcome == "failed"}
    if not has_quality:
        return FilterSets(FILTERS_PLAIN, {"done": {i for i, s in states.items() if s.outcome == "done"},
                                          "failed": failed})
    flags = retrieve_verdict_flags(session_id, quality_run_id)
    return FilterSets(FILTERS_QUALITY, {"accepted": {i for i, ok in flags.items() if ok} - failed,
                                        "rejected": {i for i, ok in flags.items() if not ok}, "failed": failed})


def calc_show(requested: str | None, names: tuple[str, ...]) -> str:
    """The filter asked for, when the run offers it; else "all"."""
    return requested if requested in names else "all"


def calc_filtered(ids_newest_first: list[int], sets: FilterSets, show: str) -> list[int] | None:
    """The exposures a filter keeps, newest first (None for "all")."""
    if show == "all" or show not in sets.sets:
        return None
    keep = sets.sets[show]
    return [i for i in ids_newest_first if i in keep]
