"""HTTP views of the viewer: HTML pages, their JSON feeds, thumbnails, plots and static files.

Templates are rendered by a private `django.template.Engine`, so the viewer needs no
TEMPLATES setting; all data comes from appion.web.retrieve (read-only).  Every view answers
GET and HEAD only (`require_safe`: 405 with `Allow: GET, HEAD` to anything else).
"""
from __future__ import annotations

import json
import mimetypes
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.template import Context, Engine
from django.views.decorators.http import require_safe

from appion.web import calc, retrieve, security

HERE = Path(__file__).resolve().parent
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
PER_PAGE = 100
SESSIONS_PER_PAGE = 50
THUMB_SIZES = (96, 256, 1024)
PLOT_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif"}


@lru_cache(maxsize=1)
def engine() -> Engine:
    return Engine(dirs=[str(HERE / "templates")], autoescape=True)


def render(name: str, context: dict, status: int = 200) -> HttpResponse:
    html = engine().get_template(name).render(Context(context))
    return HttpResponse(html, content_type="text/html; charset=utf-8", status=status)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _query(**params) -> str:
    kept = {k: v for k, v in params.items() if v is not None}
    return f"?{urlencode(kept)}" if kept else ""


def fmt_time(unix_s: float | None) -> str:
    if unix_s is None:
        return "–"
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------- sessions list
@require_safe
def sessions_view(request):
    n_pages = calc.calc_page_count(retrieve.retrieve_session_count(), SESSIONS_PER_PAGE)
    page = calc.calc_page_number(request.GET.get("page"), n_pages)
    rows, total = retrieve.retrieve_sessions(page, SESSIONS_PER_PAGE)
    return render("sessions.html", {"rows": rows, "total": total, "page": page, "n_pages": n_pages,
                                    "prev": _query(page=page - 1) if page > 1 else None,
                                    "next": _query(page=page + 1) if page < n_pages else None})


# ---------------------------------------------------------------- session page
def _session_payload(session_id: int, run_id: int | None, page_param: str | None) -> dict:
    """Everything the session page shows, as display text (HTML and JSON share it)."""
    now = time.time()
    refs = retrieve.retrieve_run_refs(session_id, run_id)
    summary = retrieve.retrieve_session_summary(session_id, refs, now)
    n_pages = calc.calc_page_count(summary.n_exposures, PER_PAGE)
    page = calc.calc_page_number(page_param, n_pages)
    rows, _ = retrieve.retrieve_exposure_page(session_id, refs, page, PER_PAGE)
    run_q = refs.looprun_id
    row_items = [_row_item(r, run_q) for r in rows]
    return {"refs": refs, "summary": summary, "summary_items": _summary_items(summary, now),
            "loop": _loop_items(refs, now), "rows": row_items, "page": page, "n_pages": n_pages,
            "step_columns": retrieve.calc_step_columns(refs),
            "run_id": run_q, "now": now}


def _row_item(row: retrieve.ExposureRow, run_id: int | None) -> dict:
    q = _query(run=run_id)
    return {"id": row.id, "status": row.status, "cells": calc.calc_cells(row), "url": f"/exposure/{row.id}/{q}",
            "thumb": f"/exposure/{row.id}/thumb.png{_query(run=run_id, size=THUMB_SIZES[0])}"
            if row.result_id else None}


def _summary_items(s: retrieve.SessionSummary, now: float) -> list[tuple[str, str, str]]:
    """(key, label, text) of the counters and rates panel."""
    return [("n_exposures", "exposures", str(s.n_exposures)), ("n_done", "done", str(s.n_done)),
            ("n_failed", "failed", str(s.n_failed)), ("n_running", "running", str(s.n_running)),
            ("n_waiting", "queued / retry", str(s.n_waiting)), ("n_new", "not picked up", str(s.n_new)),
            ("backlog", "backlog", str(s.backlog)),
            ("in_per_hour", "in, last hour", calc.fmt_rate(s.in_per_hour)),
            ("out_per_hour", "out, last hour", calc.fmt_rate(s.out_per_hour)),
            ("in_per_hour_avg", "in, run average", calc.fmt_rate(s.in_per_hour_avg)),
            ("out_per_hour_avg", "out, run average", calc.fmt_rate(s.out_per_hour_avg)),
            ("last_arrival", "last arrival", calc.fmt_age(now - s.last_arrival if s.last_arrival else None)),
            ("last_finish", "last finished", calc.fmt_age(now - s.last_finish if s.last_finish else None))]


def _loop_items(refs: retrieve.RunRefs, now: float) -> dict:
    state = retrieve.calc_loop_state(refs.status, refs.heartbeat, now) if refs.looprun_id else "no loop run"
    return {"runname": refs.runname or "–", "state": state, "host": refs.hostname or "–",
            "steps": ", ".join(refs.steps) or "–", "started": fmt_time(refs.started),
            "heartbeat": calc.fmt_age(now - refs.heartbeat if refs.heartbeat else None),
            "dashboard": refs.dashboard or "",
            "dashboard_url": refs.dashboard if (refs.dashboard or "").startswith(("http://", "https://")) else "",
            "ddstackrun": refs.ddstackrun_id, "acerun": refs.acerun_id}


@require_safe
def session_view(request, session_id: int):
    session = retrieve.retrieve_session(session_id)
    if session is None:
        raise Http404(f"no session {session_id}")
    payload = _session_payload(session_id, _int(request.GET.get("run")), request.GET.get("page"))
    page, n_pages, run_id = payload["page"], payload["n_pages"], payload["run_id"]
    runs = [{"id": i, "label": f"{name or 'run'} (#{i}, {retrieve.calc_loop_state(st, None, 0)})",
             "selected": i == run_id} for i, name, st in retrieve.retrieve_loop_runs(session_id)]
    for item in payload["rows"]:
        item["html"] = _row_html(item)
    share_url = security.calc_share_url(request.META, f"/session/{session_id}/")  # local users only
    share_host = urlsplit(share_url).hostname if share_url else None
    return render("session.html", {
        **payload, "session": session, "runs": runs, "per_page": PER_PAGE, "share_url": share_url,
        "share_loopback": bool(share_host) and security.calc_is_loopback(share_host),
        "prev": _query(run=run_id, page=page - 1) if page > 1 else None,
        "next": _query(run=run_id, page=page + 1) if page < n_pages else None,
        "config": json.dumps({"session": session_id, "run": run_id, "page": page, "interval_ms": 2000})})


def _row_html(item: dict) -> str:
    return engine().get_template("_row.html").render(Context({"r": item})).strip()


@require_safe
def session_rows_json(request, session_id: int):
    """The live feed: counters and the current page's rows (each with its rendered <tr>)."""
    if retrieve.retrieve_session(session_id) is None:
        raise Http404(f"no session {session_id}")
    payload = _session_payload(session_id, _int(request.GET.get("run")), request.GET.get("page"))
    rows = [{"id": item["id"], "status": item["status"], "html": _row_html(item)} for item in payload["rows"]]
    body = {"page": payload["page"], "n_pages": payload["n_pages"], "run": payload["run_id"],
            "summary": {k: text for k, _, text in payload["summary_items"]},
            "counts": {"n_exposures": payload["summary"].n_exposures, "n_done": payload["summary"].n_done,
                       "n_failed": payload["summary"].n_failed},
            "loop": payload["loop"], "rows": rows}
    return _json(body)


@require_safe
def session_series_json(request, session_id: int):
    if retrieve.retrieve_session(session_id) is None:
        raise Http404(f"no session {session_id}")
    refs = retrieve.retrieve_run_refs(session_id, _int(request.GET.get("run")))
    s = retrieve.retrieve_series(session_id, refs)
    return _json({"ids": s.ids, "defocus_um": s.defocus_um, "resolution_A": s.resolution_A, "drift_A": s.drift_A})


def _json(body: dict) -> JsonResponse:
    response = JsonResponse(body)
    response["Cache-Control"] = "no-store"
    return response


# ---------------------------------------------------------------- exposure page
CTF_FIELDS = (  # (column, label, scale, digits, unit)
    ("defocus1", "defocus 1", 1e6, 4, "µm"), ("defocus2", "defocus 2", 1e6, 4, "µm"),
    ("angle_astigmatism", "astigmatism angle", 1, 1, "°"), ("extra_phase_shift", "phase shift", 1, 3, "rad"),
    ("ctffind4_resolution", "fit resolution", 1, 2, "Å"), ("cross_correlation", "score (cross-correlation)", 1, 4, ""),
    ("confidence", "confidence", 1, 3, ""), ("confidence_30_10", "confidence 30–10 Å", 1, 3, ""),
    ("confidence_5_peak", "confidence 5 peak", 1, 3, ""), ("resolution_80_percent", "resolution (80 %)", 1, 2, "Å"),
    ("resolution_50_percent", "resolution (50 %)", 1, 2, "Å"), ("defocusinit", "initial defocus", 1e6, 3, "µm"),
    ("cs", "Cs", 1, 2, "mm"), ("amplitude_contrast", "amplitude contrast", 1, 3, ""))


@require_safe
def exposure_view(request, image_id: int):
    run_id = _int(request.GET.get("run"))
    detail = retrieve.retrieve_exposure(image_id, run_id)
    if detail is None:
        raise Http404(f"no exposure {image_id}")
    row = detail.row
    q = dict(run=run_id)
    ctf = []
    for column, label, scale, digits, unit in CTF_FIELDS:
        value = detail.ctf_values.get(column)
        if column == "ctffind4_resolution":
            value = calc.calc_resolution_A(value)
        if value is not None:
            ctf.append((label, f"{calc.fmt_number(value * scale, digits)} {unit}".strip()))
    plots = []
    if detail.drift_plot is not None and detail.drift_plot.is_file():
        plots.append(("drift trajectory", f"/exposure/{image_id}/plot/drift.png{_query(**q)}", "square"))
    for k, path in enumerate(detail.ctf_graphs, start=1):
        if path is not None and path.is_file() and path.suffix.lower() in PLOT_SUFFIXES:
            plots.append((f"CTF diagnostic {k}", f"/exposure/{image_id}/plot/ctf{k}.png{_query(**q)}", "wide"))
    steps = [{"step": s.step, "status": s.status, "attempts": s.attempts, "error": s.last_error or "",
              "arrived": fmt_time(s.arrived), "submitted": fmt_time(s.submitted), "finished": fmt_time(s.finished)}
             for s in row.steps]
    trajectory = []
    if row.trajectory:
        trajectory = [(i, f"{x:.2f}", f"{y:.2f}") for i, (x, y) in enumerate(zip(*row.trajectory))]
    return render("exposure.html", {
        "d": detail, "row": row, "cells": calc.calc_cells(row), "ctf": ctf, "plots": plots, "steps": steps,
        "trajectory": trajectory, "back": f"/session/{detail.session_id}/{_query(**q)}",
        "aligned": f"/exposure/{image_id}/thumb.png{_query(run=run_id, size=THUMB_SIZES[-1])}"
        if row.result_id else None})


@require_safe
def thumbnail_view(request, image_id: int):
    from appion.base.db import current_config
    from appion.web.store import ThumbnailError, save_thumbnail

    size = _int(request.GET.get("size")) or THUMB_SIZES[0]
    size = min(THUMB_SIZES, key=lambda s: abs(s - size))
    found = retrieve.retrieve_aligned_mrc(image_id, _int(request.GET.get("run")))
    if found is None:
        raise Http404(f"exposure {image_id} has no aligned sum yet")
    result_id, mrc_path = found
    try:
        png = save_thumbnail(current_config().home / "cache" / "thumbnails", result_id, mrc_path, size)
    except ThumbnailError as exc:
        raise Http404(str(exc)) from None
    response = FileResponse(open(png, "rb"), content_type="image/png")
    response["Cache-Control"] = "max-age=3600"
    return response


@require_safe
def plot_view(request, image_id: int, name: str):
    """A diagnostic PNG whose path the database records (never a path taken from the request)."""
    detail = retrieve.retrieve_exposure(image_id, _int(request.GET.get("run")))
    if detail is None:
        raise Http404(f"no exposure {image_id}")
    if name == "drift":
        path = detail.drift_plot
    elif name in ("ctf1", "ctf2", "ctf3", "ctf4"):
        path = detail.ctf_graphs[int(name[-1]) - 1]
    else:
        raise Http404(f"no plot {name}")
    if path is None or not path.is_file() or path.suffix.lower() not in PLOT_SUFFIXES:
        raise Http404(f"exposure {image_id} has no {name} plot")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    response = FileResponse(open(path, "rb"), content_type=content_type)
    response["Cache-Control"] = "no-cache"
    return response


@require_safe
def static_view(request, name: str):
    if name not in STATIC:
        raise Http404(name)
    response = HttpResponse((HERE / "static" / name).read_bytes(), content_type=f"{STATIC[name]}; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return response
