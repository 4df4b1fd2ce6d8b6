"""Read-only queries behind the web viewer.

Every page costs a fixed handful of queries whatever the session size: aggregates are
COUNT/GROUP BY in the database, tables fetch one page of exposure ids and then their
results with a few `id__in` queries (leginon and appion rows may live in different
databases, so they are never joined).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.db.models import Count, Max, Min, Q

from appion.base.db import models as m
from appion.base.db.fields import SeqError, parse_seq
from appion.base.steps import StepError, get_step
from appion.web import calc
from appion.web import retrieve_quality as rq

# Steps whose results this page shows in its own columns and plots; every other registered step's
# columns (appion.base.steps.Column) are added to the table generically.
DETAILED_STEPS = ("motion", "ctf", rq.QUALITY_STEP)

ALIVE_S = 60.0  # a running loop whose heartbeat is older than this is shown as silent (as `appion status`)


# ---------------------------------------------------------------- records
@dataclass(frozen=True)
class RunRefs:
    """The processing runs a session page shows: one loop run and the classic runs it fills."""

    looprun_id: int | None = None
    runname: str | None = None
    steps: tuple[str, ...] = ()
    ddstackrun_id: int | None = None
    acerun_id: int | None = None
    ddstack_dir: Path | None = None
    ace_dir: Path | None = None
    status: str | None = None  # loop run: R running, D done, E error
    hostname: str | None = None
    started: float | None = None
    heartbeat: float | None = None
    dashboard: str | None = None
    preset: str | None = None
    step_runs: tuple[tuple[str, int | None], ...] = ()  # (step, the step's own run id) of the loop run
    quality_run_id: int | None = None  # ApQualityRunData of the loop run's quality step

    @property
    def has_quality(self) -> bool:
        """Whether the run curates (has a quality step): verdicts, thresholds and the accept/reject buttons."""
        return rq.QUALITY_STEP in self.steps or self.quality_run_id is not None


@dataclass(frozen=True)
class StepColumn:
    """A column a registered step adds to the session table."""

    key: str
    label: str
    step: str
    column: object  # appion.base.steps.Column


@dataclass
class ExposureRow:
    """One line of the session table."""

    id: int
    filename: str
    result_id: int | None = None  # the aligned sum (AcquisitionImageData)
    drift_px: float | None = None
    drift_A: float | None = None
    defocus1_um: float | None = None
    defocus2_um: float | None = None
    astig_A: float | None = None
    astig_angle_deg: float | None = None
    resolution_A: float | None = None
    score: float | None = None
    tilt_deg: float | None = None
    ice_thickness: float | None = None
    crystalline_ice: bool | None = None
    verdict: rq.Verdict | None = None  # the quality step's or a person's (None: not judged)
    quality: dict | None = None  # the exposure's ApQualityData values (exposure page only)
    status: str = calc.NEW
    reason: str | None = None
    extra: list = field(default_factory=list)  # text of the registered steps' columns (StepColumn order)
    attempts: int = 0
    arrived: float | None = None
    finished: float | None = None
    ctf_id: int | None = None
    trajectory: tuple[list, list] | None = None
    steps: list[calc.StepState] = field(default_factory=list)


@dataclass(frozen=True)
class SessionSummary:
    n_exposures: int
    n_done: int
    n_failed: int
    n_running: int
    n_waiting: int  # queued or waiting for a retry
    n_new: int  # not yet picked up by the loop
    backlog: int  # registered but neither done nor failed
    in_per_hour: float | None  # arrivals in the last hour
    out_per_hour: float | None  # completions in the last hour
    in_per_hour_avg: float | None  # over the whole run
    out_per_hour_avg: float | None
    last_arrival: float | None
    last_finish: float | None
    in_note: str | None = None  # why there is no run average of arrivals (a bulk import)


@dataclass(frozen=True)
class SessionListRow:
    id: int
    name: str
    comment: str | None
    n_exposures: int
    created: str
    loop_status: str | None


# ---------------------------------------------------------------- sessions
def retrieve_session(session_id: int):
    return m.SessionData.objects.filter(id=session_id).first()


def _exposures(session_id: int, preset: str | None = None):
    """The session's movies: frames saved, not an aligned sum written back by motion correction."""
    qs = m.AcquisitionImageData.objects.filter(session_id=session_id, camera__save_frames=True).exclude(
        camera__align_frames=True)
    if preset:
        qs = qs.filter(preset__name=preset)
    return qs


def retrieve_session_count() -> int:
    return m.SessionData.objects.exclude(hidden=True).count()


def retrieve_sessions(page: int, per_page: int) -> tuple[list[SessionListRow], int]:
    """Newest sessions first, with their movie counts (one GROUP BY) and the newest loop run's state."""
    qs = m.SessionData.objects.exclude(hidden=True).order_by("-id")
    total = qs.count()
    rows = list(qs.values_list("id", "name", "comment", "timestamp")[(page - 1) * per_page: page * per_page])
    ids = [r[0] for r in rows]
    counts = dict(m.AcquisitionImageData.objects.filter(session_id__in=ids, camera__save_frames=True)
                  .exclude(camera__align_frames=True).values_list("session_id").annotate(n=Count("id"))
                  .values_list("session_id", "n"))
    loops: dict[int, str] = {}
    for sid, status, heartbeat in (m.ApLoopRunData.objects.filter(session_id__in=ids).order_by("id")
                                   .values_list("session_id", "status", "heartbeat")):
        loops[sid] = calc_loop_state(status, heartbeat, time.time())
    return [SessionListRow(id=i, name=n or f"session {i}", comment=c, n_exposures=counts.get(i, 0),
                           created=t.strftime("%Y-%m-%d %H:%M") if t else "", loop_status=loops.get(i))
            for i, n, c, t in rows], total


def calc_loop_state(status: str | None, heartbeat: float | None, now: float) -> str:
    """'running', 'silent' (claims running but no heartbeat lately), 'done', 'error' or 'unknown'."""
    if status == "R":
        return "running" if heartbeat is not None and now - heartbeat <= ALIVE_S else "silent"
    return {"D": "done", "E": "error"}.get(status or "", "unknown")


def retrieve_loop_runs(session_id: int) -> list[tuple[int, str, str]]:
    """(id, run name, status letter) of the session's loop runs, newest first."""
    return list(m.ApLoopRunData.objects.filter(session_id=session_id).order_by("-id")
                .values_list("id", "runname", "status"))


def _path_of(path_id: int | None) -> Path | None:
    if path_id is None:
        return None
    value = m.ApPathData.objects.filter(id=path_id).values_list("path", flat=True).first()
    return Path(value) if value else None


def calc_dashboard(params_json: str | None) -> str | None:
    """The Dask dashboard address recorded in a loop run's parameter JSON, if any."""
    if not params_json:
        return None
    try:
        params = json.loads(params_json)
    except ValueError:
        return None
    if not isinstance(params, dict):
        return None
    for key in ("dashboard", "dashboard_link", "dashboard_address"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def calc_preset(params_json: str | None) -> str | None:
    try:
        params = json.loads(params_json or "")
    except ValueError:
        return None
    value = params.get("preset") if isinstance(params, dict) else None
    return value if isinstance(value, str) and value else None


def retrieve_run_refs(session_id: int, looprun_id: int | None = None) -> RunRefs:
    """The loop run to show (given, else the newest) and its motion/CTF runs.

    Without a loop run (a session processed by classic programs) the newest motion and CTF
    runs of the session are shown; a loop run that fills only one step borrows the other.
    """
    loop_qs = m.ApLoopRunData.objects.filter(session_id=session_id)
    loop = (loop_qs.filter(id=looprun_id) if looprun_id else loop_qs).order_by("-id").first()
    step_runs = (tuple(m.ApLoopStepRunData.objects.filter(looprun_id=loop.id).order_by("id")
                       .values_list("step", "run_id")) if loop else ())
    found = dict(step_runs)
    ddstackrun_id = found.get("motion") or (loop.ddstackrun_id if loop else None)
    acerun_id = found.get("ctf") or (loop.acerun_id if loop else None)
    if ddstackrun_id is None:
        ddstackrun_id = (m.ApDDStackRunData.objects.filter(session_id=session_id).order_by("-id")
                         .values_list("id", flat=True).first())
    if acerun_id is None:
        acerun_id = (m.ApAceRunData.objects.filter(session_id=session_id).exclude(hidden=True).order_by("-id")
                     .values_list("id", flat=True).first())
    dd_path = m.ApDDStackRunData.objects.filter(id=ddstackrun_id).values_list("path_id", flat=True).first() \
        if ddstackrun_id else None
    ace_path = m.ApAceRunData.objects.filter(id=acerun_id).values_list("path_id", flat=True).first() \
        if acerun_id else None
    steps = tuple(s.strip() for s in (loop.steps or "").split(",") if s.strip()) if loop else ()
    quality_run_id = rq.retrieve_quality_run_id(session_id, found, steps, loop.runname) if loop else None
    return RunRefs(looprun_id=loop.id if loop else None, runname=loop.runname if loop else None, steps=steps,
                   ddstackrun_id=ddstackrun_id, acerun_id=acerun_id, ddstack_dir=_path_of(dd_path),
                   ace_dir=_path_of(ace_path), status=loop.status if loop else None,
                   hostname=loop.hostname if loop else None, started=loop.started if loop else None,
                   heartbeat=loop.heartbeat if loop else None,
                   dashboard=(getattr(loop, "dashboard", None) or calc_dashboard(loop.params)) if loop else None,
                   preset=calc_preset(loop.params) if loop else None, step_runs=step_runs,
                   quality_run_id=quality_run_id)


def calc_step_columns(refs: RunRefs) -> list[StepColumn]:
    """The table columns of the run's registered steps other than those shown in detail here."""
    out = []
    for step_name, _ in refs.step_runs:
        if step_name in DETAILED_STEPS:
            continue
        try:
            step = get_step(step_name)
        except StepError:  # the step's package is not installed where the viewer runs
            continue
        out.extend(StepColumn(f"{step_name}.{c.key}", f"{c.label}", step_name, c) for c in step.columns)
    return out


def _fill_step_columns(by_id: dict[int, ExposureRow], refs: RunRefs) -> None:
    run_ids = dict(refs.step_runs)
    columns = calc_step_columns(refs)
    values = [sc.column.read(run_ids[sc.step], list(by_id)) if run_ids.get(sc.step) is not None else {}
              for sc in columns]
    for image_id, row in by_id.items():
        row.extra = [sc.column.format(v.get(image_id)) if v.get(image_id) is not None else "–"
                     for sc, v in zip(columns, values)]


def retrieve_exposure_states(refs: RunRefs) -> dict[int, rq.ExposureState]:
    """Each exposure's state in the loop run ({} without a loop run): one GROUP BY query."""
    return rq.retrieve_exposure_states(refs.looprun_id, len(refs.steps)) if refs.looprun_id else {}


def retrieve_session_summary(session_id: int, refs: RunRefs, now: float | None = None,
                             states: dict[int, rq.ExposureState] | None = None) -> SessionSummary:
    """Counts, backlog and rates, all computed by the database (a handful of aggregate queries).

    states: retrieve_exposure_states(refs), when the caller has it already."""
    now = time.time() if now is None else now
    n_exposures = _exposures(session_id, refs.preset).count()
    if refs.looprun_id is None:
        n_done = _count_classic_done(session_id, refs)
        return SessionSummary(n_exposures, n_done, 0, 0, 0, n_exposures - n_done, n_exposures - n_done,
                              None, None, None, None, None, None)
    rows = m.ApLoopExposureData.objects.filter(looprun_id=refs.looprun_id)
    first, last = (refs.steps[0], refs.steps[-1]) if refs.steps else (None, None)
    by_step_status = {(s, st): n for s, st, n in rows.values_list("step", "status").annotate(n=Count("id"))
                      .values_list("step", "status", "n")}
    states = retrieve_exposure_states(refs) if states is None else states
    n_failed = sum(1 for s in states.values() if s.outcome == "failed")  # a step skipped as rejected is no failure
    n_finished = sum(1 for s in states.values() if s.outcome is not None)
    n_running = sum(1 for s in states.values() if s.running)
    n_done = by_step_status.get((last, "done"), 0) if last else 0
    n_seen = sum(n for (s, _), n in by_step_status.items() if s == first)
    arrived = rows.filter(step=first).aggregate(lo=Min("arrived"), hi=Max("arrived"),
                                                recent=Count("id", filter=Q(arrived__gte=now - 3600)))
    finished = rows.filter(step=last, status="done").aggregate(
        lo=Min("finished"), hi=Max("finished"), recent=Count("id", filter=Q(finished__gte=now - 3600)))
    # Run averages over wall time up to now while the loop lives, else to its last sign of life: out since the
    # run started, in since the run started or the first arrival if earlier.  (A span between the first and
    # last event means nothing after a bulk import, whose arrivals all fall within seconds: that is said.)
    alive = calc_loop_state(refs.status, refs.heartbeat, now) == "running"
    out_start = refs.started if refs.started is not None else arrived["lo"]
    in_start = min((t for t in (refs.started, arrived["lo"]) if t is not None), default=None)
    end = now if alive else max((t for t in (refs.heartbeat, finished["hi"], arrived["hi"]) if t is not None),
                                default=None)
    in_note = None
    if calc.calc_is_bulk_import(n_seen, arrived["lo"], arrived["hi"]):
        in_note = f"bulk import: {n_seen} in {calc.fmt_duration(arrived['hi'] - arrived['lo'])}"
    backlog = max(0, n_exposures - n_finished)
    n_new = max(0, n_exposures - n_seen)
    return SessionSummary(
        n_exposures=n_exposures, n_done=n_done, n_failed=n_failed, n_running=n_running,
        n_waiting=max(0, backlog - n_running - n_new), n_new=n_new, backlog=backlog,
        in_per_hour=calc.calc_rate_per_hour(arrived["recent"], 3600.0),
        out_per_hour=calc.calc_rate_per_hour(finished["recent"], 3600.0),
        in_per_hour_avg=None if in_note else calc.calc_wall_rate_per_hour(n_seen, in_start, end),
        out_per_hour_avg=calc.calc_wall_rate_per_hour(n_done, out_start, end),
        last_arrival=arrived["hi"], last_finish=finished["hi"], in_note=in_note)


def _count_classic_done(session_id: int, refs: RunRefs) -> int:
    if refs.acerun_id:
        return m.ApCtfData.objects.filter(acerun_id=refs.acerun_id).values("image_id").distinct().count()
    if refs.ddstackrun_id:
        return m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=refs.ddstackrun_id).count()
    return 0


# ---------------------------------------------------------------- exposure rows
def retrieve_exposure_ids(session_id: int, refs: RunRefs) -> list[int]:
    """Every exposure of the session (the run's preset), newest first."""
    return list(_exposures(session_id, refs.preset).order_by("-id").values_list("id", flat=True))


def retrieve_exposure_page(session_id: int, refs: RunRefs, page: int, per_page: int,
                           only: list[int] | None = None) -> tuple[list[ExposureRow], int]:
    """One page of the session table, newest first, with every column filled in a few queries.

    only: the exposures a filter keeps, newest first (None: all of the session's)."""
    if only is not None:
        ids = only[(page - 1) * per_page: page * per_page]
        names = dict(m.AcquisitionImageData.objects.filter(id__in=ids).values_list("id", "filename")) if ids else {}
        head = [(i, names.get(i)) for i in ids]
        return retrieve_exposure_rows(session_id, head, refs), len(only)
    qs = _exposures(session_id, refs.preset)
    total = qs.count()
    head = list(qs.order_by("-id").values_list("id", "filename")[(page - 1) * per_page: page * per_page])
    return retrieve_exposure_rows(session_id, head, refs), total


def retrieve_exposure_rows(session_id: int, head: list[tuple[int, str]], refs: RunRefs,
                           with_details: bool = False) -> list[ExposureRow]:
    """Fill rows for (id, filename) pairs: pair, trajectory, stats, CTF and loop rows by `id__in`."""
    rows = [ExposureRow(id=i, filename=f or f"image {i}") for i, f in head]
    if not rows:
        return rows
    ids = [r.id for r in rows]
    by_id = {r.id: r for r in rows}
    to_source: dict[int, int] = {i: i for i in ids}
    if refs.ddstackrun_id:
        for source, result in (m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=refs.ddstackrun_id,
                                                                       source_id__in=ids)
                               .order_by("id").values_list("source_id", "result_id")):
            by_id[source].result_id = result
            if result is not None:
                to_source[result] = source
        _fill_motion(by_id, to_source, refs, with_details)
    if refs.acerun_id:
        _fill_ctf(session_id, by_id, to_source, refs)
    if refs.step_runs:
        _fill_step_columns(by_id, refs)
    if refs.has_quality:
        rq.fill_quality(by_id, refs.quality_run_id, with_details)
    if refs.looprun_id:
        _fill_loop(by_id, refs, with_details)
    else:
        for r in rows:
            done = r.ctf_id is not None if refs.acerun_id else r.result_id is not None
            r.status = "done" if done else calc.NEW
    return rows


def parse_positions(value: str | None) -> list | None:
    """A SEQ| list of numbers: JSON first (fast, the common case), the safe literal parser otherwise."""
    if not value:
        return None
    try:
        out = json.loads(value)
        return out if isinstance(out, list) else None
    except ValueError:
        try:
            return parse_seq(value)
        except SeqError:
            return None


def _fill_motion(by_id: dict[int, ExposureRow], to_source: dict[int, int], refs: RunRefs, with_details: bool) -> None:
    keys = list(to_source)
    apix: dict[int, float] = {}
    for image_id, value in (m.ApDDAlignStatsData.objects.filter(ddstackrun_id=refs.ddstackrun_id, image_id__in=keys)
                            .values_list("image_id", "apix")):
        if value:
            apix[to_source[image_id]] = value
    for image_id, px, py, lx, ly, n in (m.ApDDFrameTrajectoryData.objects
                                         .filter(ddstackrun_id=refs.ddstackrun_id, image_id__in=keys).order_by("id")
                                         .values_list("image_id", "pos_x", "pos_y", "last_x", "last_y",
                                                      "number_of_positions")):
        row = by_id[to_source[image_id]]
        xs, ys = parse_positions(px), parse_positions(py)
        row.drift_px = calc.calc_path_length_px(xs, ys, lx, ly, n)
        a = apix.get(row.id)
        row.drift_A = row.drift_px * a if row.drift_px is not None and a else None
        if with_details:
            row.trajectory = (xs or [], ys or [])


def _fill_ctf(session_id: int, by_id: dict[int, ExposureRow], to_source: dict[int, int], refs: RunRefs) -> None:
    """CTF rows may name the movie, its aligned sum or the dose-weighted sum (`<aligned>-DW`)."""
    found = _ctf_values(refs.acerun_id, list(to_source))
    missing = [r for r in by_id.values() if r.result_id is not None and
               not any(to_source.get(i) == r.id for i in found)]
    if missing:
        result_names = dict(m.AcquisitionImageData.objects.filter(id__in=[r.result_id for r in missing])
                            .values_list("id", "filename"))
        wanted = {f"{result_names[r.result_id]}-DW": r.id for r in missing if result_names.get(r.result_id)}
        extra = dict(m.AcquisitionImageData.objects.filter(session_id=session_id, filename__in=list(wanted))
                     .values_list("id", "filename"))
        for image_id, name in extra.items():
            to_source[image_id] = wanted[name]
        found.update(_ctf_values(refs.acerun_id, list(extra)))
    for image_id, values in found.items():
        _apply_ctf(by_id[to_source[image_id]], values)


def _ctf_values(acerun_id: int, image_ids: list[int]) -> dict[int, tuple]:
    out: dict[int, tuple] = {}
    if not image_ids:
        return out
    for values in (m.ApCtfData.objects.filter(acerun_id=acerun_id, image_id__in=image_ids).order_by("id")
                   .values_list("image_id", "id", "defocus1", "defocus2", "angle_astigmatism", "ctffind4_resolution",
                                "cross_correlation")):
        out[values[0]] = values[1:]  # newest row wins
    return out


def _apply_ctf(row: ExposureRow, values: tuple) -> None:
    """CTFFIND's convention on every page (docs/conventions.md): defocus 1 ≥ defocus 2, the angle of defocus 1."""
    ctf_id, d1, d2, angle, res, cc = values
    row.ctf_id = ctf_id
    df1_A, df2_A, df1_angle = calc.calc_ctffind_defocus(d1, d2, angle)
    row.defocus1_um = df1_A * 1e-4 if df1_A is not None else None
    row.defocus2_um = df2_A * 1e-4 if df2_A is not None else None
    row.astig_A = calc.calc_astigmatism_A(d1, d2)
    row.astig_angle_deg = df1_angle
    row.resolution_A = calc.calc_resolution_A(res)
    row.score = cc


def _fill_loop(by_id: dict[int, ExposureRow], refs: RunRefs, with_details: bool) -> None:
    states: dict[int, dict[str, calc.StepState]] = {}
    for image_id, step, status, attempts, error, arrived, submitted, finished in (
            m.ApLoopExposureData.objects.filter(looprun_id=refs.looprun_id, image_id__in=list(by_id)).order_by("id")
            .values_list("image_id", "step", "status", "attempts", "last_error", "arrived", "submitted", "finished")):
        states.setdefault(image_id, {})[step] = calc.StepState(step, status, attempts or 0, error, arrived,
                                                               submitted, finished)
    order = {s: i for i, s in enumerate(refs.steps)}
    for image_id, row in by_id.items():
        per_step = sorted(states.get(image_id, {}).values(), key=lambda s: order.get(s.step, len(order)))
        row.status, row.reason = calc.calc_exposure_status(per_step, list(refs.steps))
        row.attempts = sum(s.attempts for s in per_step)
        row.arrived = min((s.arrived for s in per_step if s.arrived is not None), default=None)
        row.finished = max((s.finished for s in per_step if s.finished is not None), default=None)
        if with_details:
            row.steps = per_step


# ---------------------------------------------------------------- one exposure
@dataclass
class ExposureDetail:
    row: ExposureRow
    session_id: int
    session_name: str
    result_filename: str | None
    ctf_values: dict
    ctf_graphs: list[Path | None]  # graph1..graph4 resolved against the CTF run directory
    drift_plot: Path | None
    aligned_mrc: Path | None
    refs: RunRefs | None = None


def retrieve_exposure(image_id: int, looprun_id: int | None = None) -> ExposureDetail | None:
    image = m.AcquisitionImageData.objects.filter(id=image_id).values_list("id", "filename", "session_id").first()
    if image is None:
        return None
    session = m.SessionData.objects.filter(id=image[2]).first()
    refs = retrieve_run_refs(image[2], looprun_id)
    row = retrieve_exposure_rows(image[2], [(image[0], image[1])], refs, with_details=True)[0]
    result = (m.AcquisitionImageData.objects.filter(id=row.result_id).values_list("filename", "image").first()
              if row.result_id else None)
    ctf_values: dict = {}
    graphs: list[Path | None] = [None] * 4
    if row.ctf_id:
        ctf = m.ApCtfData.objects.filter(id=row.ctf_id).values().first() or {}
        ctf_values = {k: v for k, v in ctf.items() if k not in ("id", "timestamp", "acerun_id", "image_id")
                      and not k.startswith("graph")}
        graphs = [calc_run_file(refs.ace_dir, ctf.get(f"graph{k}")) for k in range(1, 5)]
    aligned = calc_image_file(session.image_path if session else None, result[0], result[1]) if result else None
    return ExposureDetail(row=row, session_id=image[2], session_name=session.name if session else "",
                          result_filename=result[0] if result else None, ctf_values=ctf_values, ctf_graphs=graphs,
                          drift_plot=find_drift_plot(refs.ddstack_dir, image[1], result[0] if result else None),
                          aligned_mrc=aligned, refs=refs)


def retrieve_aligned_mrc(image_id: int, looprun_id: int | None = None) -> tuple[int, Path] | None:
    """(aligned image id, its MRC path) for a movie, without the rest of the page's queries."""
    image = m.AcquisitionImageData.objects.filter(id=image_id).values_list("session_id", flat=True).first()
    if image is None:
        return None
    refs = retrieve_run_refs(image, looprun_id)
    if not refs.ddstackrun_id:
        return None
    result_id = (m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=refs.ddstackrun_id, source_id=image_id)
                 .order_by("-id").values_list("result_id", flat=True).first())
    if result_id is None:
        return None
    result = m.AcquisitionImageData.objects.filter(id=result_id).values_list("filename", "image").first()
    image_path = m.SessionData.objects.filter(id=image).values_list("image_path", flat=True).first()
    path = calc_image_file(image_path, result[0], result[1]) if result else None
    return (result_id, path) if path else None


def calc_image_file(image_path: str | None, filename: str | None, mrc_name: str | None) -> Path | None:
    """A Leginon image's file: `<session image path>/<MRC|image>` (or `<filename>.mrc`)."""
    if not image_path or not (mrc_name or filename):
        return None
    return Path(image_path) / (mrc_name or f"{filename}.mrc")


def calc_run_file(run_dir: Path | None, relative: str | None) -> Path | None:
    """A graph column resolved against its run directory (absolute values are kept as they are)."""
    if not relative:
        return None
    p = Path(relative)
    if p.is_absolute():
        return p
    return run_dir / p if run_dir else None


def find_drift_plot(ddstack_dir: Path | None, source_filename: str | None, result_filename: str | None) -> Path | None:
    """The motion run's drift PNG of a movie (named after the aligned sum or the movie)."""
    if ddstack_dir is None:
        return None
    stems = [s for s in (result_filename, source_filename) if s]
    for stem in stems:
        for name in (f"{stem}_shifts.png", f"{stem}-DW_shifts.png", f"{stem}_st_shifts.png", f"{stem}_drift.png"):
            if (ddstack_dir / name).is_file():
                return ddstack_dir / name
    for stem in stems:
        hits = sorted(p for p in ddstack_dir.glob(f"{stem}*.png") if "shift" in p.name or "drift" in p.name)
        if hits:
            return hits[0]
    return None
