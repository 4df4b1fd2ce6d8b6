"""The session and exposure pages of a run with a quality step, in-process, on directly inserted rows.

series.json carries each metric with the threshold every exposure was judged under (thresholds changed
during the run included) and the verdicts; the filters (all / accepted / rejected / failed) keep exactly the
right exposures across pages; rejected rows are greyed with their reason; the accept/reject form writes
(appion.quality.steprows.store_manual_verdict) only from this machine, same-origin, with the page's form
token, and only by POST.  Also what was measured wrong: the run averages after a bulk import, the Dask
dashboard after the run ended, and the defocus convention of the exposure page against the CTF plot title.
The same pages through a served viewer for other machines (the share token): test_quality_served.py.
"""
from __future__ import annotations

import html
import io
import json
import re
import time
from urllib.parse import urlencode

import pytest

from tests.web.synthetic import THRESHOLDS, add_quality, insert_session
from tests.web.test_views import cells_of

STRICT = {**THRESHOLDS, "max_ctf_resolution_A": 4.5}


def thresholds_of(k: int) -> dict:
    """The limits the quality step had in force for exposure k: tightened from the 9th exposure on."""
    return STRICT if k >= 8 else THRESHOLDS


@pytest.fixture
def app(db):
    """The WSGI application `appion serve` runs (host check, share guard, read-only guard), called in-process."""
    from appion.web.server import make_wsgi_app

    wsgi = make_wsgi_app()

    def call(method: str, path: str, form: dict | None = None, remote: str = "127.0.0.1", **headers):
        """(status code, headers, body text) of one request."""
        path, _, query = path.partition("?")
        body = urlencode(form or {}).encode()
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
                   "SERVER_PORT": "8000", "HTTP_HOST": "127.0.0.1:8000", "REMOTE_ADDR": remote,
                   "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
                   "wsgi.errors": io.StringIO(), "wsgi.multithread": True, "wsgi.multiprocess": False,
                   "wsgi.run_once": False, "wsgi.version": (1, 0)}
        if method == "POST":
            environ.update(CONTENT_TYPE="application/x-www-form-urlencoded", CONTENT_LENGTH=str(len(body)))
        environ.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
        out = {}

        def start_response(status, response_headers, exc_info=None):
            out["status"], out["headers"] = int(status.split()[0]), dict(response_headers)

        text = b"".join(wsgi(environ, start_response)).decode()
        return out["status"], out["headers"], text

    return call


def form_of(page: str) -> dict:
    """The hidden fields of the exposure page's accept/reject form."""
    form = re.search(r'<form method="post" action="([^"]+)"[^>]*id="verdict-form">(.*?)</form>', page, re.S)
    assert form, "no accept/reject form on the page"
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form.group(2)))
    return {"action": html.unescape(form.group(1)), **fields}


def quality_session(tmp_path, n=30, n_failed=2, n_pending=3, later_step=False, name="qual"):
    s = insert_session(name, n, tmp_path / "img", tmp_path / "runs", n_failed=n_failed, n_pending=n_pending)
    add_quality(s, thresholds_of, later_step=later_step)
    return s


def ids_with(s, **wanted) -> list[int]:
    """Image ids whose truth has these values, newest first."""
    return sorted((i for i, t in s.truth.items() if all(t.get(k) == v for k, v in wanted.items())), reverse=True)


# ---------------------------------------------------------------- series.json
def test_series_carries_each_metric_with_the_thresholds_it_was_judged_under(app, tmp_path):
    s = quality_session(tmp_path)
    status, _, text = app("GET", f"/session/{s.session_id}/series.json")
    assert status == 200
    data = json.loads(text)
    assert data["quality"] is True and data["ids"] == sorted(s.source_ids)
    charts = {c["key"]: c for c in data["charts"]}
    assert list(charts) == ["drift", "resolution", "defocus", "astigmatism", "tilt", "ice"]
    assert data["thresholds"] == STRICT  # the newest exposure's
    assert data["thresholds_text"] == ("CTF fit resolution ≤ 4.5 Å, relative ice thickness ≤ 1.08, tilt ≤ 15°")
    n_rejected = 0
    for k, image_id in enumerate(data["ids"]):
        truth = s.truth[image_id]
        if truth["status"] != "done":
            assert data["verdict"][k] is None
            assert all(c["values"][k] is None for c in charts.values())
            assert charts["resolution"]["limits"][k] is None
            continue
        metrics, limits = truth["metrics"], thresholds_of(k)
        assert data["verdict"][k] == truth["verdict"], k
        n_rejected += truth["verdict"] == "rejected"
        assert charts["drift"]["values"][k] == pytest.approx(metrics["total_drift_A"], abs=0.01)
        assert charts["resolution"]["values"][k] == pytest.approx(metrics["ctf_resolution_A"], abs=0.001)
        assert charts["defocus"]["values"][k] == pytest.approx(metrics["defocus_A"] / 1e4, abs=1e-4)
        assert charts["tilt"]["values"][k] == pytest.approx(metrics["tilt_deg"])
        assert charts["ice"]["values"][k] == pytest.approx(metrics["ice_thickness"])
        assert charts["resolution"]["limits"][k] == limits["max_ctf_resolution_A"]
        assert charts["tilt"]["limits"][k] == 15.0 and charts["ice"]["limits"][k] == 1.08
        assert charts["drift"]["limits"][k] is None and charts["astigmatism"]["limits"][k] is None
    assert charts["defocus"]["limits"] is None
    assert {4.5, 5.0} == {v for v in charts["resolution"]["limits"] if v is not None}
    assert 0 < n_rejected < 25


def test_series_backlog_and_lag_over_time(app, tmp_path):
    """Backlog: registered and not finished, from the run's start; lag: arrival to done of each done exposure."""
    from appion.base.db import models as m

    s = insert_session("timeline", 6, tmp_path / "img", tmp_path / "runs", n_failed=1, n_pending=1)
    start = 1_000_000.0
    m.ApLoopRunData.objects.filter(id=s.looprun_id).update(started=start, status="D", heartbeat=start + 100)
    # exposures 0-3 done (arrived at 10, 20, 30, 40 s; finished 50, 60, 90, 95 s), 4 failed at 70 s, 5 waits
    plan = {0: (10, 50), 1: (20, 60), 2: (30, 90), 3: (40, 95), 4: (-30, 70), 5: (45, None)}
    for k, (arrived, finished) in plan.items():
        m.ApLoopExposureData.objects.filter(looprun_id=s.looprun_id, image_id=s.source_ids[k]).update(
            arrived=start + arrived, finished=None if finished is None else start + finished)
        if finished is not None:
            m.ApLoopExposureData.objects.filter(looprun_id=s.looprun_id, image_id=s.source_ids[k],
                                                status__in=("done", "failed")).update(finished=start + finished)
    data = json.loads(app("GET", f"/session/{s.session_id}/series.json")[2])
    tl = data["timeline"]
    assert tl["started"] == start
    minute = lambda t: round(t / 60.0, 4)  # noqa: E731
    # exposure 4 was registered before the run started: it waits from the start
    assert tl["backlog"] == [[0.0, 1], [minute(10), 2], [minute(20), 3], [minute(30), 4], [minute(40), 5],
                             [minute(45), 6], [minute(50), 5], [minute(60), 4], [minute(70), 3], [minute(90), 2],
                             [minute(95), 1], [minute(100), 1]]
    assert tl["lag"] == [[minute(50), 40.0], [minute(60), 40.0], [minute(90), 60.0], [minute(95), 55.0]]
    assert data["quality"] is False and [c["key"] for c in data["charts"]] == ["defocus", "resolution", "drift"]


# ---------------------------------------------------------------- filters
@pytest.mark.parametrize("later_step", [False, True])
def test_filters_keep_the_right_rows(app, tmp_path, later_step):
    """With later_step, the loop recorded the step after quality as not run for rejected exposures: they are
    rejected, not failed."""
    s = quality_session(tmp_path, later_step=later_step)
    expected = {"all": sorted(s.source_ids, reverse=True), "accepted": ids_with(s, verdict="accepted"),
                "rejected": ids_with(s, verdict="rejected"), "failed": ids_with(s, status="failed")}
    assert len(expected["failed"]) == 2 and expected["accepted"] and expected["rejected"]
    for show, ids in expected.items():
        data = json.loads(app("GET", f"/session/{s.session_id}/rows.json?show={show}")[2])
        assert data["show"] == show
        assert [r["id"] for r in data["rows"]] == ids, show
        assert data["filters"] == {name: len(v) for name, v in expected.items()}
    page = app("GET", f"/session/{s.session_id}/?show=rejected")[2]
    assert page.count('<tr id="row-') == len(expected["rejected"])
    assert re.search(r'class="filter active" aria-current="true">rejected <span class="n" '
                     rf'data-filter-count="rejected">{len(expected["rejected"])}</span>', page)
    summary = json.loads(app("GET", f"/session/{s.session_id}/rows.json")[2])["summary"]
    assert summary["n_failed"] == "2" and summary["n_rejected"] == str(len(expected["rejected"]))
    assert summary["backlog"] == "3"  # rejected exposures are finished, not waiting
    # an unknown filter shows everything
    assert len(json.loads(app("GET", f"/session/{s.session_id}/rows.json?show=bogus")[2])["rows"]) == 30


def test_filters_page_through_their_own_rows_and_follow_verdicts(app, tmp_path):
    from appion.quality.steprows import store_manual_verdict

    s = quality_session(tmp_path, n=230, n_failed=0, n_pending=0)
    rejected = ids_with(s, verdict="rejected")
    assert len(rejected) > 100  # two pages
    first = json.loads(app("GET", f"/session/{s.session_id}/rows.json?show=rejected")[2])
    second = json.loads(app("GET", f"/session/{s.session_id}/rows.json?show=rejected&page=2")[2])
    assert [r["id"] for r in first["rows"]] == rejected[:100] and [r["id"] for r in second["rows"]] == rejected[100:]
    assert first["n_pages"] == 2 and first["next"] == f"?run={s.looprun_id}&show=rejected&page=2"
    assert second["prev"] == f"?run={s.looprun_id}&show=rejected&page=1" and second["next"] is None
    # a person's verdict moves an exposure between the filters
    accepted = ids_with(s, verdict="accepted")
    store_manual_verdict(rejected[0], True, "fine for this project", user="alice")
    store_manual_verdict(accepted[0], False, "cracked ice", user="bob")
    now_rejected = [r["id"] for r in json.loads(app("GET", f"/session/{s.session_id}/rows.json?show=rejected")[2])
                    ["rows"]] + [r["id"] for r in json.loads(
                        app("GET", f"/session/{s.session_id}/rows.json?show=rejected&page=2")[2])["rows"]]
    assert now_rejected == sorted(set(rejected) - {rejected[0]} | {accepted[0]}, reverse=True)
    series = json.loads(app("GET", f"/session/{s.session_id}/series.json")[2])
    position = {i: k for k, i in enumerate(series["ids"])}
    assert series["verdict"][position[rejected[0]]] == "accepted"
    assert series["verdict"][position[accepted[0]]] == "rejected"


def test_rejected_rows_are_greyed_with_their_reason(app, tmp_path):
    from appion.quality.steprows import store_manual_verdict

    s = quality_session(tmp_path)
    by_hand = ids_with(s, verdict="accepted")[0]
    kept_by_hand = ids_with(s, verdict="rejected")[0]
    store_manual_verdict(by_hand, False, "contamination on the grid", user="carol")
    store_manual_verdict(kept_by_hand, True, "tilt expected here", user="carol")
    data = json.loads(app("GET", f"/session/{s.session_id}/rows.json")[2])
    for row in data["rows"]:
        truth = s.truth[row["id"]]
        tr = re.match(r'<tr id="row-\d+" data-id="\d+" data-verdict="(\w*)" class="([^"]*)">', row["html"])
        assert tr, row["html"][:200]
        verdict, classes = tr.group(1), tr.group(2).split()
        cells = cells_of(row["html"])
        badge = re.search(r'<span class="badge st-(\w+)">(\w+)</span>', row["html"]).group(2)
        if row["id"] == by_hand:
            assert "rejected" in classes and "manual" in classes and badge == "rejected"
            assert cells["reason"] == "rejected by hand: contamination on the grid"
        elif row["id"] == kept_by_hand:
            assert "rejected" not in classes and badge == "done" and verdict == "accepted"
            assert cells["reason"] == "accepted by hand: tilt expected here"
        elif truth.get("verdict") == "rejected":
            assert "rejected" in classes and badge == "rejected" and verdict == "rejected"
            assert cells["reason"] == truth["verdict_reason"]
        else:
            assert "rejected" not in classes and badge == truth["status"], row["id"]
            assert verdict == (truth.get("verdict") or "")
            if truth["status"] != "failed":
                assert "reason" not in cells
        if truth["status"] == "done":
            assert cells["tilt"] == f"{truth['metrics']['tilt_deg']:.1f}"
            assert cells["ice"] == f"{truth['metrics']['ice_thickness']:.3f}"


def test_query_count_with_a_quality_step_does_not_grow(app, tmp_path):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    small = quality_session(tmp_path / "a", n=12, n_failed=1, n_pending=1, name="small")
    large = quality_session(tmp_path / "b", n=300, n_failed=1, n_pending=1, name="large")
    counts = {}
    for s in (small, large):
        for url in ("rows.json", "rows.json?show=rejected", "series.json", "", "?show=accepted"):
            with CaptureQueriesContext(connection) as ctx:
                assert app("GET", f"/session/{s.session_id}/{url}")[0] == 200
            # the connection's set-up statements (SQLite PRAGMAs, once per request here) are not the page's
            counts[(s is large, url)] = sum(1 for q in ctx.captured_queries if not q["sql"].startswith("PRAGMA"))
    for url in ("rows.json", "rows.json?show=rejected", "series.json", "", "?show=accepted"):
        assert counts[(True, url)] == counts[(False, url)], counts
        assert counts[(True, url)] < 30, counts


# ---------------------------------------------------------------- accept / reject
def test_verdict_form_writes_from_this_machine_with_its_token(app, tmp_path):
    from appion.base.db import models as m

    s = quality_session(tmp_path)
    target = ids_with(s, verdict="accepted")[0]
    j = s.source_ids.index(target)
    related = {target, s.result_ids[j], s.dw_ids[j]}
    status, _, page = app("GET", f"/exposure/{target}/?run={s.looprun_id}")
    assert status == 200
    assert 'id="verdict"' in page and "automatically (quality step)" in page
    assert "Thresholds in force when judged: <span id=\"verdict-thresholds\">" in page
    form = form_of(page)
    assert form["action"] == f"/exposure/{target}/verdict/" and form["run"] == str(s.looprun_id)
    origin = {"origin": "http://127.0.0.1:8000"}

    # refused: without the token, with another exposure's token, cross-site, by GET, without a reason
    other = form_of(app("GET", f"/exposure/{s.source_ids[0]}/")[2])["csrf"]
    reject = {"verdict": "reject", "reason": "broken ice", "by": "dora", "run": form["run"]}
    for fields, headers, code in (
            (reject, origin, 403), ({**reject, "csrf": other}, origin, 403),
            ({**reject, "csrf": form["csrf"]}, {"origin": "http://evil.example"}, 403),
            ({**reject, "csrf": form["csrf"]}, {**origin, "sec_fetch_site": "cross-site"}, 403),
            ({**reject, "csrf": form["csrf"]}, {"referer": "http://evil.example/x"}, 403),
            ({**reject, "csrf": form["csrf"], "reason": "  "}, origin, 400),
            ({**reject, "csrf": form["csrf"], "verdict": "maybe"}, origin, 400)):
        status, _, body = app("POST", form["action"], fields, **headers)
        assert status == code, (fields, headers, status, body)
    status, headers, _ = app("GET", f"{form['action']}?{urlencode({**reject, 'csrf': form['csrf']})}")
    assert status == 405 and headers["Allow"] == "POST"
    # another machine (through a proxy) when no share token is configured: read, never write
    status, _, body = app("POST", form["action"], {**reject, "csrf": form["csrf"]}, x_forwarded_for="203.0.113.7",
                          **origin)
    assert status == 403 and "on this machine or through the share link" in body
    remote_page = app("GET", f"/exposure/{target}/", x_forwarded_for="203.0.113.7")[2]
    assert 'id="verdict-form"' not in remote_page and 'id="verdict-readonly"' in remote_page
    assert not m.ApQualityVerdictData.objects.exists()
    assert not m.ViewerImageStatus.objects.filter(image_id__in=related).exists()

    # from this machine, same-origin, with the page's token: stored, hidden in the classic viewer
    status, headers, _ = app("POST", form["action"], {**reject, "csrf": form["csrf"]}, sec_fetch_site="same-origin",
                             **origin)
    assert status == 303 and headers["Location"] == f"/exposure/{target}/?run={s.looprun_id}#verdict"
    row = m.ApQualityVerdictData.objects.get()
    assert (row.image_id, row.accepted, row.reason, row.user) == (target, False, "broken ice", "dora")
    assert dict(m.ViewerImageStatus.objects.filter(image_id__in=related).values_list("image_id", "status")) == {
        i: "hidden" for i in related}
    page = app("GET", f"/exposure/{target}/?run={s.looprun_id}")[2]
    assert '<span class="badge st-rejected" id="status">rejected</span>' in page
    assert 'by hand, by <b id="verdict-user">dora</b>' in page and ">broken ice</p>" in page
    assert "The quality step's verdict was: accepted." in page
    rows = json.loads(app("GET", f"/session/{s.session_id}/rows.json?show=rejected")[2])["rows"]
    assert target in [r["id"] for r in rows]

    # accepted again (no reason needed, a curl-like client without Origin): shown again in the classic viewer
    status, _, _ = app("POST", form["action"], {"verdict": "accept", "csrf": form["csrf"], "run": form["run"]})
    assert status == 303
    newest = m.ApQualityVerdictData.objects.order_by("-id").first()
    assert newest.accepted is True and newest.reason is None and newest.user  # the viewer's own user name
    assert not m.ViewerImageStatus.objects.filter(image_id__in=related).exists()


def test_writes_stay_refused_everywhere_else_after_a_verdict(app, tmp_path, monkeypatch):
    """The verdict lifts the read-only guard for its own statements only: a view that writes afterwards on the
    same thread still gets a 500 and writes nothing."""
    from appion.base.db import models as m
    from appion.web import retrieve

    s = quality_session(tmp_path, n=4, n_failed=0, n_pending=0)
    target = s.source_ids[0]
    form = form_of(app("GET", f"/exposure/{target}/")[2])
    assert app("POST", form["action"], {"verdict": "accept", "csrf": form["csrf"]})[0] == 303

    def sneaky_count():
        m.SessionData.objects.create(name="written by the viewer")
        return 0

    monkeypatch.setattr(retrieve, "retrieve_session_count", sneaky_count)
    assert app("GET", "/")[0] == 500
    assert not m.SessionData.objects.filter(name="written by the viewer").exists()


def test_no_buttons_without_a_quality_step(app, tmp_path):
    from appion.base.db import models as m

    s = insert_session("plain", 3, tmp_path / "img", tmp_path / "runs")
    page = app("GET", f"/exposure/{s.source_ids[0]}/")[2]
    assert 'id="verdict"' not in page and "<form" not in page and "Accept" not in page
    session_page = app("GET", f"/session/{s.session_id}/")[2]
    assert 'data-show="rejected"' not in session_page and 'data-show="done"' in session_page
    assert "tilt (°)" not in session_page
    # a hand-made form is refused: this run has nothing to curate
    from appion.web import calc, views

    token = calc.calc_form_token(views.FORM_SECRET, f"verdict:{s.source_ids[0]}")
    status, _, body = app("POST", f"/exposure/{s.source_ids[0]}/verdict/", {"verdict": "accept", "csrf": token})
    assert status == 409 and "no quality step" in body
    assert not m.ApQualityVerdictData.objects.exists()


# ---------------------------------------------------------------- what was measured wrong
def test_run_averages_after_a_bulk_import(app, tmp_path):
    from appion.base.db import models as m

    now = time.time()
    s = insert_session("bulk", 40, tmp_path / "img", tmp_path / "runs", now=now)
    start = now - 3600.0
    m.ApLoopRunData.objects.filter(id=s.looprun_id).update(started=start, heartbeat=now)
    for k, image_id in enumerate(s.source_ids):  # all registered within 2 s, an hour ago; done over the hour
        m.ApLoopExposureData.objects.filter(looprun_id=s.looprun_id, image_id=image_id).update(
            arrived=start - 10 + 0.05 * k, finished=start + 60 * (k + 1))
    summary = json.loads(app("GET", f"/session/{s.session_id}/rows.json")[2])["summary"]
    assert summary["in_per_hour_avg"] == "bulk import: 40 in 2 s"
    out = int(summary["out_per_hour_avg"].removesuffix("/h"))
    assert out == pytest.approx(40, abs=1)  # 40 done in the hour since the run started (not a span rate)

    # arrivals over time (a microscope): the average over the run's wall time
    for k, image_id in enumerate(s.source_ids):
        m.ApLoopExposureData.objects.filter(looprun_id=s.looprun_id, image_id=image_id).update(
            arrived=start + 80 * k)
    summary = json.loads(app("GET", f"/session/{s.session_id}/rows.json")[2])["summary"]
    assert int(summary["in_per_hour_avg"].removesuffix("/h")) == pytest.approx(40, abs=1)


def test_dask_dashboard_only_while_the_loop_lives(app, tmp_path):
    from appion.base.db import models as m

    s = insert_session("dashend", 2, tmp_path / "img", tmp_path / "runs")
    m.ApLoopRunData.objects.filter(id=s.looprun_id).update(dashboard="http://node7:8787/status")
    assert '<a href="http://node7:8787/status"' in app("GET", f"/session/{s.session_id}/")[2]
    for status, heartbeat, state in (("D", time.time(), "done"), ("R", time.time() - 600, "silent"),
                                     ("E", time.time(), "error")):
        m.ApLoopRunData.objects.filter(id=s.looprun_id).update(status=status, heartbeat=heartbeat)
        page = app("GET", f"/session/{s.session_id}/")[2]
        assert "node7:8787" not in page and f"gone: the loop is {state}" in page
        loop = json.loads(app("GET", f"/session/{s.session_id}/rows.json")[2])["loop"]
        assert loop["dashboard_url"] == loop["dashboard"] == "" and loop["state"] == state


@pytest.mark.parametrize("df1, df2, angle", [(15000.0, 14200.0, 30.0), (21000.0, 20990.0, -89.5),
                                             (9000.0, 8000.0, 90.0), (12000.0, 11000.0, 0.0)])
def test_exposure_page_shows_defocus_as_the_ctf_plot_title(app, tmp_path, df1, df2, angle):
    """The CTF plot's title prints the engine's result (CTFFIND's convention); the database holds classic's
    mapping of it (appion.ctfestimation.calc.classic): the page must show the title's numbers."""
    from appion.base.db import models as m
    from appion.ctfestimation.calc.classic import calc_apctfdata_fields
    from appion.ctfestimation.calc.result import CtfResult

    s = insert_session("conv", 1, tmp_path / "img", tmp_path / "runs")
    result = CtfResult(defocus1_A=df1, defocus2_A=df2, astig_angle_deg=angle, phase_shift_rad=0.0,
                       cross_correlation=0.2, fit_resolution_A=4.0)
    fields = calc_apctfdata_fields(result, cs_mm=2.7, amplitude_contrast=0.07)
    assert fields["defocus1"] < fields["defocus2"]  # classic: the smaller first
    m.ApCtfData.objects.filter(acerun_id=s.acerun_id).update(**{k: fields[k] for k in (
        "defocus1", "defocus2", "angle_astigmatism")})
    page = html.unescape(app("GET", f"/exposure/{s.source_ids[0]}/")[2])
    title = f"df1 {result.defocus1_A:.0f} Å, df2 {result.defocus2_A:.0f} Å, angle {result.astig_angle_deg:.1f}°"
    shown = re.search(r'<dd id="defocus-summary">(\d+) / (\d+) Å, defocus 1 at (-?[\d.]+)°</dd>', page)
    assert shown, page[:3000]
    assert f"df1 {shown.group(1)} Å, df2 {shown.group(2)} Å, angle {shown.group(3)}°" == title
    assert f"<dt>defocus 1</dt><dd>{df1:.0f} Å ({df1 * 1e-4:.4f} µm)</dd>" in page
    assert f"<dt>angle of defocus 1</dt><dd>{angle:.1f}°</dd>" in page
    cells = cells_of(json.loads(app("GET", f"/session/{s.session_id}/rows.json")[2])["rows"][0]["html"])
    assert (cells["defocus1"], cells["defocus2"]) == (f"{df1 * 1e-4:.3f}", f"{df2 * 1e-4:.3f}")
    assert cells["astig"] == f"{df1 - df2:.0f} Å @ {angle:.0f}°"
