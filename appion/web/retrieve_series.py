"""Whole-session series behind the session page's charts (series.json): per-exposure metrics in order of
acquisition, the curation thresholds in force when each exposure was judged, and the loop run's backlog and
lag over time.  A fixed number of whole-run queries whatever the session size.

With a quality step the metrics are the quality step's (ApQualityData: drift, CTF fit resolution, defocus,
astigmatism, tilt, relative ice thickness) with the limit each exposure was judged under; without one, the
motion and CTF runs' drift, fit resolution and defocus.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from appion.base.db import models as m
from appion.web import calc
from appion.web import retrieve_quality as rq
from appion.web.retrieve import RunRefs, _exposures, calc_loop_state, parse_positions


@dataclass(frozen=True)
class Series:
    """Whole-session time series for the plots (x: exposure id order)."""

    ids: list[int]
    defocus_um: list[float | None]
    resolution_A: list[float | None]
    drift_A: list[float | None]


def retrieve_series(session_id: int, refs: RunRefs) -> Series:
    """Per-exposure defocus, resolution and drift for the whole session, from whole-run queries."""
    ids = list(_exposures(session_id, refs.preset).order_by("id").values_list("id", flat=True))
    position = {i: k for k, i in enumerate(ids)}
    defocus: list[float | None] = [None] * len(ids)
    resolution: list[float | None] = [None] * len(ids)
    drift: list[float | None] = [None] * len(ids)
    to_source: dict[int, int] = {i: i for i in ids}
    if refs.ddstackrun_id:
        for source, result in (m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=refs.ddstackrun_id)
                               .values_list("source_id", "result_id")):
            if result is not None and source in position:
                to_source[result] = source
        apix = {to_source.get(i): a for i, a in m.ApDDAlignStatsData.objects.filter(
            ddstackrun_id=refs.ddstackrun_id).values_list("image_id", "apix") if a}
        for image_id, px, py, lx, ly, n in (m.ApDDFrameTrajectoryData.objects.filter(ddstackrun_id=refs.ddstackrun_id)
                                             .values_list("image_id", "pos_x", "pos_y", "last_x", "last_y",
                                                          "number_of_positions")):
            source = to_source.get(image_id)
            if source not in position:
                continue
            length = calc.calc_path_length_px(parse_positions(px), parse_positions(py), lx, ly, n)
            a = apix.get(source)
            drift[position[source]] = round(length * a, 3) if length is not None and a else length
    if refs.acerun_id:
        ctf = list(m.ApCtfData.objects.filter(acerun_id=refs.acerun_id).order_by("id")
                   .values_list("image_id", "defocus1", "defocus2", "ctffind4_resolution"))
        unknown = {i for i, *_ in ctf if i not in to_source}
        if unknown:  # dose-weighted sums: `<aligned filename>-DW`
            names = dict(m.AcquisitionImageData.objects.filter(session_id=session_id)
                         .values_list("id", "filename"))
            result_by_name = {names.get(r): s for r, s in to_source.items() if r != s and names.get(r)}
            for i in unknown:
                name = names.get(i) or ""
                if name.endswith("-DW") and name[:-3] in result_by_name:
                    to_source[i] = result_by_name[name[:-3]]
        for image_id, d1, d2, res in ctf:
            source = to_source.get(image_id)
            if source not in position:
                continue
            k = position[source]
            defocus[k] = round((d1 + d2) * 0.5e6, 4) if d1 is not None and d2 is not None else None
            r = calc.calc_resolution_A(res)
            resolution[k] = round(r, 2) if r is not None else None
    return Series(ids=ids, defocus_um=defocus, resolution_A=resolution, drift_A=drift)


def _rounded(value: float | None, scale: float, digits: int) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    return round(value * scale, digits + 1)


def retrieve_quality_charts(session_id: int, refs: RunRefs,
                            ids: list[int]) -> tuple[list[dict], list[str | None], dict | None]:
    """The quality step's metrics per exposure with the limit each was judged under, each exposure's verdict
    ("accepted" / "rejected" / None: not judged; a person's newest wins) and the newest thresholds in force."""
    position = {i: k for k, i in enumerate(ids)}
    columns = [metric.column for metric in calc.QUALITY_METRICS]
    values = {metric.key: [None] * len(ids) for metric in calc.QUALITY_METRICS}
    limits = {metric.key: [None] * len(ids) for metric in calc.QUALITY_METRICS if metric.limit}
    verdict: list[str | None] = [None] * len(ids)
    parsed: dict[str, dict | None] = {}  # a run has a handful of distinct threshold sets
    newest = None
    rows = (m.ApQualityData.objects.filter(qualityrun_id=refs.quality_run_id).order_by("id")
            .values_list("image_id", "rejected", "thresholds", *columns)) if refs.quality_run_id else ()
    for image_id, rejected, text, *metric_values in rows:
        k = position.get(image_id)
        if k is None:
            continue
        thresholds = parsed[text] if text in parsed else parsed.setdefault(text, rq.parse_thresholds(text))
        newest = thresholds
        verdict[k] = "rejected" if rejected else "accepted"
        for metric, value in zip(calc.QUALITY_METRICS, metric_values):
            if metric.column == "ctf_resolution_A":
                value = calc.calc_resolution_A(value)
            values[metric.key][k] = _rounded(value, metric.scale, metric.digits)
            if metric.limit:
                limits[metric.key][k] = calc.calc_limit(thresholds, metric.limit)
    for image_id, accepted in (m.ApQualityVerdictData.objects.filter(session_id=session_id).order_by("id")
                               .values_list("image_id", "accepted")):
        if image_id in position:
            verdict[position[image_id]] = "accepted" if accepted else "rejected"
    charts = [{"key": metric.key, "title": metric.title, "label": metric.label, "values": values[metric.key],
               "limits": limits.get(metric.key), "limit_name": metric.limit} for metric in calc.QUALITY_METRICS]
    return charts, verdict, newest


def retrieve_timeline(refs: RunRefs, now: float | None = None) -> dict | None:
    """Backlog and lag of the loop run over time (calc.calc_backlog_series), minutes since its start."""
    if refs.looprun_id is None:
        return None
    now = time.time() if now is None else now
    states = rq.retrieve_exposure_states(refs.looprun_id, len(refs.steps))  # one GROUP BY query
    # from the run's start: exposures registered before it (an import) wait from the start
    start = refs.started if refs.started is not None else min(
        (s.arrived for s in states.values() if s.arrived is not None), default=None)
    if start is None:
        return None
    alive = calc_loop_state(refs.status, refs.heartbeat, now) == "running"
    finishes = [s.finished for s in states.values() if s.finished is not None]
    last_signs = [start, *finishes] + ([refs.heartbeat] if refs.heartbeat is not None else [])
    end = now if alive else max(last_signs)  # a finished run's timeline ends with its last sign of life
    backlog, lag = calc.calc_backlog_series([(s.arrived, s.finished, s.outcome == "done") for s in states.values()],
                                            start, end)
    return {"started": start, "backlog": backlog, "lag": lag}


def retrieve_chart_payload(session_id: int, refs: RunRefs, now: float | None = None) -> dict:
    """Everything series.json sends: the classic series, the charts to draw, verdicts, thresholds, timeline."""
    series = retrieve_series(session_id, refs)
    body = {"ids": series.ids, "defocus_um": series.defocus_um, "resolution_A": series.resolution_A,
            "drift_A": series.drift_A, "quality": refs.has_quality, "verdict": None, "thresholds": None,
            "thresholds_text": None, "timeline": retrieve_timeline(refs, now)}
    if refs.has_quality:
        charts, verdict, thresholds = retrieve_quality_charts(session_id, refs, series.ids)
        body.update(charts=charts, verdict=verdict, thresholds=thresholds,
                    thresholds_text=calc.fmt_thresholds(thresholds) if thresholds is not None else None)
    else:
        body["charts"] = [
            {"key": "defocus", "title": "Defocus (mean)", "label": "defocus (µm)",
             "values": series.defocus_um, "limits": None, "limit_name": None},
            {"key": "resolution", "title": "CTF fit resolution", "label": "fit resolution (Å)",
             "values": series.resolution_A, "limits": None, "limit_name": None},
            {"key": "drift", "title": "Total drift", "label": "total drift (Å)", "values": series.drift_A,
             "limits": None, "limit_name": None}]
    return body
