"""HTTP views of the viewer: HTML pages, their JSON feeds, thumbnails, plots and static files, and the one
write: a person's accept/reject of an exposure.

Templates are rendered by a private `django.template.Engine`, so the viewer needs no
TEMPLATES setting; all data comes from appion.web.retrieve* (read-only).  Every view answers
GET and HEAD only (`require_safe`: 405 with `Allow: GET, HEAD` to anything else), except
`verdict_view`, which answers POST only (405 with `Allow: POST` otherwise) and writes only when:
- the request may write: it comes from this machine (appion.web.security's "local": loopback, no proxy)
  or carries the share token ("token", only when `[web] share_token` is configured); a request from
  another machine to a viewer without a token ("open") may read but never write;
- it is same-origin: an Origin (or Referer) header, when the browser sends one, names this server, and
  Sec-Fetch-Site, when sent, says "same-origin";
- it carries the exposure page's form token (CSRF): an HMAC of the exposure id under a secret made when
  the server starts (a page from before a restart must be reloaded).
"""
from __future__ import annotations

import getpass
import json
import mimetypes
import secrets
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.template import Context, Engine
from django.views.decorators.http import require_POST, require_safe

from appion.web import calc, retrieve, retrieve_series, security
from appion.web import retrieve_quality as rq

HERE = Path(__file__).resolve().parent
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
PER_PAGE = 100
SESSIONS_PER_PAGE = 50
THUMB_SIZES = (96, 256, 1024)
PLOT_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif"}
WRITERS = ("local", "token")  # appion.access values that may accept/reject (appion.web.security)
FORM_SECRET = secrets.token_bytes(32)  # the form tokens of this server process
MAX_REASON = 500
MAX_NAME = 80


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


def _session_payload(session_id: int, run_id: int | None, page_param: str | None, show_param: str | None) -> dict:
    """Everything the session page shows, as display text (HTML and JSON share it)."""
    now = time.time()
    refs = retrieve.retrieve_run_refs(session_id, run_id)
    states = retrieve.retrieve_exposure_states(refs)
    summary = retrieve.retrieve_session_summary(session_id, refs, now, states)
    sets = rq.retrieve_filter_sets(session_id, states, refs.quality_run_id, refs.has_quality)
    show = rq.calc_show(show_param, sets.names)
    only = rq.calc_filtered(retrieve.retrieve_exposure_ids(session_id, refs), sets, show) if show != "all" else None
    n_pages = calc.calc_page_count(summary.n_exposures if only is None else len(only), PER_PAGE)
    page = calc.calc_page_number(page_param, n_pages)
    rows, _ = retrieve.retrieve_exposure_page(session_id, refs, page, PER_PAGE, only)
    run_q = refs.looprun_id
    row_items = [_row_item(r, run_q, refs.has_quality) for r in rows]
    counts = {"all": summary.n_exposures, **sets.counts()}
    filters = [{"name": name, "label": name, "count": counts.get(name, 0), "active": name == show,
                "url": _query(run=run_q, show=None if name == "all" else name)} for name in sets.names]
    return {"refs": refs, "summary": summary, "count_items": _count_items(summary, counts, refs.has_quality),
            "rate_items": _rate_items(summary, now), "loop": _loop_items(refs, now), "rows": row_items,
            "page": page, "n_pages": n_pages, "show": show, "filters": filters, "quality": refs.has_quality,
            "step_columns": retrieve.calc_step_columns(refs), "run_id": run_q, "now": now,
            "prev": _query(run=run_q, show=None if show == "all" else show, page=page - 1) if page > 1 else None,
            "next": _query(run=run_q, show=None if show == "all" else show, page=page + 1) if page < n_pages else None}


def _row_item(row: retrieve.ExposureRow, run_id: int | None, quality: bool = False) -> dict:
    """A table row: a rejected exposure is shown as such (greyed, with the reason), a failure with its reason."""
    q = _query(run=run_id)
    cells = calc.calc_cells(row)
    verdict = row.verdict
    rejected = verdict is not None and not verdict.accepted
    shown = calc.calc_shown_status(row.status, verdict)
    notes = [row.reason] if row.reason else []
    if verdict is not None and (rejected or verdict.manual):
        notes.append(verdict.text)
    cells["reason"] = "; ".join(notes)
    classes = [f"status-{row.status}"] + (["rejected"] if rejected else []) + (
        ["manual"] if verdict is not None and verdict.manual else [])
    return {"id": row.id, "status": row.status, "shown": shown, "classes": " ".join(classes), "cells": cells,
            "verdict": None if verdict is None else ("accepted" if verdict.accepted else "rejected"),
            "quality": quality, "url": f"/exposure/{row.id}/{q}",
            "thumb": f"/exposure/{row.id}/thumb.png{_query(run=run_id, size=THUMB_SIZES[0])}"
            if row.result_id else None}


def _count_items(s: retrieve.SessionSummary, counts: dict, quality: bool) -> list[tuple[str, str, str]]:
    """(key, label, text) of the counters panel."""
    items = [("n_exposures", "exposures", str(s.n_exposures)), ("n_done", "done", str(s.n_done)),
             ("n_failed", "failed", str(s.n_failed))]
    if quality:
        items.append(("n_rejected", "rejected", str(counts.get("rejected", 0))))
    return items + [("n_running", "running", str(s.n_running)), ("n_waiting", "queued / retry", str(s.n_waiting)),
                    ("n_new", "not picked up", str(s.n_new)), ("backlog", "backlog", str(s.backlog))]


def _rate_items(s: retrieve.SessionSummary, now: float) -> list[tuple[str, str, str]]:
    """(key, label, text) of the rates panel (run averages over the run's wall time; a bulk import is named)."""
    return [("in_per_hour", "in, last hour", calc.fmt_rate(s.in_per_hour)),
            ("out_per_hour", "out, last hour", calc.fmt_rate(s.out_per_hour)),
            ("in_per_hour_avg", "in, run average", s.in_note or calc.fmt_rate(s.in_per_hour_avg)),
            ("out_per_hour_avg", "out, run average", calc.fmt_rate(s.out_per_hour_avg)),
            ("last_arrival", "last arrival", calc.fmt_age(now - s.last_arrival if s.last_arrival else None)),
            ("last_finish", "last finished", calc.fmt_age(now - s.last_finish if s.last_finish else None))]


def _loop_items(refs: retrieve.RunRefs, now: float) -> dict:
    """The processing panel; the Dask dashboard only while the loop lives (after, its address leads nowhere)."""
    state = retrieve.calc_loop_state(refs.status, refs.heartbeat, now) if refs.looprun_id else "no loop run"
    alive = state == "running"
    dashboard = refs.dashboard or ""
    note = "" if alive and dashboard else ("not recorded" if not dashboard else
                                           f"gone: the loop is {state}" if refs.looprun_id else "not recorded")
    return {"runname": refs.runname or "–", "state": state, "host": refs.hostname or "–",
            "steps": ", ".join(refs.steps) or "–", "started": fmt_time(refs.started),
            "heartbeat": calc.fmt_age(now - refs.heartbeat if refs.heartbeat else None),
            "dashboard": dashboard if alive else "", "dashboard_note": note,
            "dashboard_url": dashboard if alive and dashboard.startswith(("http://", "https://")) else "",
            "ddstackrun": refs.ddstackrun_id, "acerun": refs.acerun_id}


@require_safe
def session_view(request, session_id: int):
    session = retrieve.retrieve_session(session_id)
    if session is None:
        raise Http404(f"no session {session_id}")
    payload = _session_payload(session_id, _int(request.GET.get("run")), request.GET.get("page"),
                               request.GET.get("show"))
    page, run_id = payload["page"], payload["run_id"]
    runs = [{"id": i, "label": f"{name or 'run'} (#{i}, {retrieve.calc_loop_state(st, None, 0)})",
             "selected": i == run_id} for i, name, st in retrieve.retrieve_loop_runs(session_id)]
    for item in payload["rows"]:
        item["html"] = _row_html(item)
    share_url = security.calc_share_url(request.META, f"/session/{session_id}/")  # local users only
    share_host = urlsplit(share_url).hostname if share_url else None
    return render("session.html", {
        **payload, "session": session, "runs": runs, "per_page": PER_PAGE, "share_url": share_url,
        "share_loopback": bool(share_host) and security.calc_is_loopback(share_host),
        "config": json.dumps({"session": session_id, "run": run_id, "page": page, "show": payload["show"],
                              "quality": payload["quality"], "interval_ms": 2000})})


def _row_html(item: dict) -> str:
    return engine().get_template("_row.html").render(Context({"r": item})).strip()


@require_safe
def session_rows_json(request, session_id: int):
    """The live feed: counters and the current page's rows (each with its rendered <tr>)."""
    if retrieve.retrieve_session(session_id) is None:
        raise Http404(f"no session {session_id}")
    payload = _session_payload(session_id, _int(request.GET.get("run")), request.GET.get("page"),
                               request.GET.get("show"))
    rows = [{"id": item["id"], "status": item["status"], "verdict": item["verdict"], "html": _row_html(item)}
            for item in payload["rows"]]
    summary = payload["summary"]
    body = {"page": payload["page"], "n_pages": payload["n_pages"], "run": payload["run_id"], "show": payload["show"],
            "prev": payload["prev"], "next": payload["next"],
            "filters": {f["name"]: f["count"] for f in payload["filters"]},
            "summary": {k: text for k, _, text in payload["count_items"] + payload["rate_items"]},
            "counts": {"n_exposures": summary.n_exposures, "n_done": summary.n_done, "n_failed": summary.n_failed,
                       **{f"filter_{f['name']}": f["count"] for f in payload["filters"]}},
            "loop": payload["loop"], "rows": rows}
    return _json(body)


@require_safe
def session_series_json(request, session_id: int):
    """The charts' data: per-exposure metrics (with the thresholds each exposure was judged under when the run
    has a quality step), verdicts, and the run's backlog and lag over time (retrieve_series)."""
    if retrieve.retrieve_session(session_id) is None:
        raise Http404(f"no session {session_id}")
    refs = retrieve.retrieve_run_refs(session_id, _int(request.GET.get("run")))
    return _json(retrieve_series.retrieve_chart_payload(session_id, refs))


def _json(body: dict) -> JsonResponse:
    response = JsonResponse(body)
    response["Cache-Control"] = "no-store"
    return response


# ---------------------------------------------------------------- exposure page
CTF_FIELDS = (  # (column, label, scale, digits, unit); defocus 1 / 2 and the angle come first (_defocus_items)
    ("extra_phase_shift", "phase shift", 1, 3, "rad"),
    ("ctffind4_resolution", "fit resolution", 1, 2, "Å"), ("cross_correlation", "score (cross-correlation)", 1, 4, ""),
    ("confidence", "confidence", 1, 3, ""), ("confidence_30_10", "confidence 30–10 Å", 1, 3, ""),
    ("confidence_5_peak", "confidence 5 peak", 1, 3, ""), ("resolution_80_percent", "resolution (80 %)", 1, 2, "Å"),
    ("resolution_50_percent", "resolution (50 %)", 1, 2, "Å"), ("defocusinit", "initial defocus", 1e6, 3, "µm"),
    ("cs", "Cs", 1, 2, "mm"), ("amplitude_contrast", "amplitude contrast", 1, 3, ""))


QUALITY_FIELDS = (  # (ApQualityData column, label, digits, unit)
    ("total_drift_A", "total drift", 1, "Å"), ("early_drift_A", "early drift (first 4 e/Å²)", 1, "Å"),
    ("late_drift_A", "late drift", 1, "Å"), ("ctf_resolution_A", "CTF fit resolution", 2, "Å"),
    ("astigmatism_A", "astigmatism", 0, "Å"), ("defocus_A", "mean defocus", 0, "Å"),
    ("tilt_deg", "sample tilt", 1, "°"), ("tilt_axis_deg", "tilt axis", 0, "°"),
    ("ice_thickness", "relative ice thickness", 3, ""))


def _defocus_items(ctf_values: dict) -> tuple[str, list[tuple[str, str]]]:
    """Defocus 1 / 2 and the astigmatism angle in CTFFIND's convention, as the CTF plot's title prints them
    (docs/conventions.md): the summary text and the CTF panel's lines."""
    df1, df2, angle = calc.calc_ctffind_defocus(ctf_values.get("defocus1"), ctf_values.get("defocus2"),
                                                ctf_values.get("angle_astigmatism"))
    if df1 is None:
        return "–", []
    items = [("defocus 1", f"{df1:.0f} Å ({df1 * 1e-4:.4f} µm)"), ("defocus 2", f"{df2:.0f} Å ({df2 * 1e-4:.4f} µm)")]
    summary = f"{df1:.0f} / {df2:.0f} Å"
    if angle is not None:
        items.append(("angle of defocus 1", f"{angle:.1f}°"))
        summary += f", defocus 1 at {angle:.1f}°"
    return summary, items


def _quality_items(row: retrieve.ExposureRow) -> list[tuple[str, str]]:
    """The quality step's metrics of the exposure (its ApQualityData row), as label / text."""
    stored = row.quality or {}
    out = []
    for column, label, digits, unit in QUALITY_FIELDS:
        value = stored.get(column)
        if column == "ctf_resolution_A":
            value = calc.calc_resolution_A(value)
        if value is not None:
            out.append((label, f"{calc.fmt_number(value, digits)}{'' if unit in ('°', '') else ' '}{unit}"))
    if stored.get("crystalline_ice") is not None:
        out.append(("crystalline ice", "yes" if stored["crystalline_ice"] else "no"))
    for column, label in (("image_problem", "image problem"), ("notes", "notes")):
        if stored.get(column):
            out.append((label, stored[column]))
    return out


def _verdict_context(request, detail: retrieve.ExposureDetail, run_id: int | None) -> dict | None:
    """The verdict panel of an exposure page: only when the run has a quality step."""
    refs = detail.refs
    if refs is None or not refs.has_quality:
        return None
    verdict = detail.row.verdict
    automatic = verdict.automatic if verdict is not None and verdict.manual else (
        verdict if verdict is not None and not verdict.manual else None)
    access = request.META.get("appion.access")
    return {"verdict": verdict, "automatic": automatic,
            "thresholds": calc.fmt_thresholds(verdict.thresholds) if verdict and verdict.thresholds else None,
            "metrics": _quality_items(detail.row), "can_write": access in WRITERS,
            "action": f"/exposure/{detail.row.id}/verdict/", "run": run_id if run_id is not None else "",
            "csrf": calc.calc_form_token(FORM_SECRET, f"verdict:{detail.row.id}")}


@require_safe
def exposure_view(request, image_id: int):
    run_id = _int(request.GET.get("run"))
    detail = retrieve.retrieve_exposure(image_id, run_id)
    if detail is None:
        raise Http404(f"no exposure {image_id}")
    row = detail.row
    q = dict(run=run_id)
    defocus_text, ctf = _defocus_items(detail.ctf_values)
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
    verdict = _verdict_context(request, detail, run_id)
    return render("exposure.html", {
        "d": detail, "row": row, "cells": calc.calc_cells(row), "ctf": ctf, "plots": plots, "steps": steps,
        "defocus": defocus_text, "q": verdict,
        "shown": calc.calc_shown_status(row.status, row.verdict),
        "trajectory": trajectory, "back": f"/session/{detail.session_id}/{_query(**q)}",
        "aligned": f"/exposure/{image_id}/thumb.png{_query(run=run_id, size=THUMB_SIZES[-1])}"
        if row.result_id else None})


def _refuse(status: int, text: str) -> HttpResponse:
    return HttpResponse(text + "\n", status=status, content_type="text/plain; charset=utf-8")


@require_POST
def verdict_view(request, image_id: int):
    """A person accepts or rejects an exposure (the exposure page's form); see the module docstring for who may.

    Form fields: verdict (accept | reject), reason (required to reject), by (a name, optional), run, csrf.
    Answers 303 to the exposure page once stored."""
    access = request.META.get("appion.access")
    if access not in WRITERS:
        return _refuse(403, "Accepting or rejecting exposures is possible on this machine or through the share "
                            "link only ([web] share_token in the appion config).")
    meta = request.META
    if not calc.calc_is_same_origin(meta.get("HTTP_HOST"), meta.get("HTTP_ORIGIN"), meta.get("HTTP_REFERER"),
                                    meta.get("HTTP_SEC_FETCH_SITE")):
        return _refuse(403, "Refused: the form was not sent from this viewer's own page.")
    if not calc.calc_form_token_ok(FORM_SECRET, f"verdict:{image_id}", request.POST.get("csrf")):
        return _refuse(403, "Refused: the form token is missing or out of date (the viewer restarted?): reload the "
                            "exposure page and try again.")
    choice = request.POST.get("verdict")
    if choice not in ("accept", "reject"):
        return _refuse(400, "verdict must be accept or reject")
    reason = (request.POST.get("reason") or "").strip()[:MAX_REASON]
    if choice == "reject" and not reason:
        return _refuse(400, "A rejection needs a reason: go back, write why, and reject again.")
    run_id = _int(request.POST.get("run"))
    detail = retrieve.retrieve_exposure(image_id, run_id)
    if detail is None:
        raise Http404(f"no exposure {image_id}")
    if detail.refs is None or not detail.refs.has_quality:
        return _refuse(409, "This run has no quality step: there is no verdict to give.")
    name = " ".join((request.POST.get("by") or "").split())[:MAX_NAME]
    if access == "local":
        user = name or getpass.getuser()
    else:
        user = f"{name or 'someone'} (share link)"
    from appion.web.store import store_verdict

    store_verdict(image_id, choice == "accept", reason or None, user)
    response = HttpResponse(status=303)
    response["Location"] = f"/exposure/{image_id}/{_query(run=run_id)}#verdict"
    response["Cache-Control"] = "no-store"
    return response


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
