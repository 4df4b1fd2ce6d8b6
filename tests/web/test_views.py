"""The viewer's pages and feeds in-process (Django test client) on directly inserted rows.

The browser tests (test_browser.py) cover the same pages on a real loop run; these check the
details cheaply: every stored value shown, paging, a query count that does not grow with the
session, thumbnails from a real MRC, recorded plot files served, and no writes.
"""
from __future__ import annotations

import html
import re

import mrcfile
import numpy as np
import pytest

from tests.web.synthetic import insert_session


@pytest.fixture
def client(db):
    from django.test import Client

    from appion.web.server import make_wsgi_app

    make_wsgi_app()  # sets ROOT_URLCONF / ALLOWED_HOSTS as `appion serve` does
    return Client()


def cells_of(row_html: str) -> dict[str, str]:
    """data-col → text of a rendered table row."""
    found = re.findall(r'data-col="(\w+)">(.*?)</(?:td|div|span)>', row_html)
    out = {k: html.unescape(re.sub(r"<[^>]+>", "", v)).strip() for k, v in found}
    return out


def test_session_feed_shows_every_stored_value(client, tmp_path):
    s = insert_session("vals", 30, tmp_path / "img", tmp_path / "runs", n_failed=2, n_pending=3)
    data = client.get(f"/session/{s.session_id}/rows.json").json()
    assert data["summary"]["n_exposures"] == "30"
    assert data["summary"]["n_done"] == "25"
    assert data["summary"]["n_failed"] == "2"
    assert data["summary"]["backlog"] == "3"
    assert data["summary"]["n_waiting"] == "3"
    assert [r["id"] for r in data["rows"]] == sorted(s.source_ids, reverse=True)
    for row in data["rows"]:
        cells = cells_of(row["html"])
        truth = s.truth[row["id"]]
        assert cells["status"].startswith(truth["status"])
        for key in ("drift", "defocus1", "defocus2", "astig", "resolution", "score"):
            if key in truth:
                assert cells[key] == truth[key], (row["id"], key)
        if truth["status"] == "failed":
            assert truth["reason"] in cells["reason"]
    page = client.get(f"/session/{s.session_id}/").content.decode()
    assert "truncated movie (frame 7 of 16 unreadable)" in page
    assert page.count('<tr id="row-') == 30


def test_pages_are_newest_first_and_bounded(client, tmp_path):
    s = insert_session("pages", 250, tmp_path / "img", tmp_path / "runs")
    newest = sorted(s.source_ids, reverse=True)
    first = client.get(f"/session/{s.session_id}/rows.json").json()
    third = client.get(f"/session/{s.session_id}/rows.json?page=3").json()
    beyond = client.get(f"/session/{s.session_id}/rows.json?page=99").json()
    assert [r["id"] for r in first["rows"]] == newest[:100]
    assert [r["id"] for r in third["rows"]] == newest[200:]
    assert third["n_pages"] == 3 and beyond["page"] == 3
    html_page = client.get(f"/session/{s.session_id}/?page=2").content.decode()
    assert html_page.count('<tr id="row-') == 100
    assert 'page <span id="page-no">2</span> of <span id="n-pages">3</span>' in html_page


def test_query_count_does_not_grow_with_the_session(client, tmp_path):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    small = insert_session("small", 12, tmp_path / "a", tmp_path / "ra", n_failed=1)
    large = insert_session("large", 400, tmp_path / "b", tmp_path / "rb", n_failed=1)
    counts = {}
    for s in (small, large):
        for url in (f"/session/{s.session_id}/rows.json", f"/session/{s.session_id}/series.json",
                    f"/session/{s.session_id}/"):
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(url).status_code == 200
            counts[(s.session_id == large.session_id, url.rsplit("/", 1)[-1])] = len(ctx.captured_queries)
    for name in ("rows.json", "series.json", ""):
        assert counts[(True, name)] == counts[(False, name)], counts
        assert counts[(True, name)] < 25


def test_series_has_one_point_per_exposure(client, tmp_path):
    s = insert_session("series", 40, tmp_path / "img", tmp_path / "runs", n_failed=3, n_pending=2)
    data = client.get(f"/session/{s.session_id}/series.json").json()
    assert data["ids"] == sorted(s.source_ids)
    for k, image_id in enumerate(data["ids"]):
        truth = s.truth[image_id]
        if truth["status"] != "done":
            assert data["defocus_um"][k] is None and data["drift_A"][k] is None
            continue
        assert data["drift_A"][k] == pytest.approx(truth["drift_A"], abs=1e-3)
        assert data["resolution_A"][k] == pytest.approx(truth["resolution_A"], abs=1e-2)
        assert data["defocus_um"][k] == pytest.approx(truth["defocus_mean_um"], abs=1e-4)


def test_sessions_list_counts_movies_not_aligned_sums(client, tmp_path):
    s = insert_session("listed", 7, tmp_path / "img", tmp_path / "runs")
    page = client.get("/").content.decode()
    assert f'href="/session/{s.session_id}/"' in page
    assert re.search(r'<td class="num">7</td>', page)
    assert "running" in page


def test_thumbnail_is_made_from_the_aligned_sum_and_cached(client, tmp_path, appion_db):
    from matplotlib import image as mimage

    s = insert_session("thumbs", 3, tmp_path / "img", tmp_path / "runs")
    (tmp_path / "img").mkdir()
    gradient = np.tile(np.linspace(0, 100, 300, dtype=np.float32), (200, 1))
    for k in range(3):
        with mrcfile.new(tmp_path / "img" / f"thumbs_{k:05d}en-a.mrc") as mrc:
            mrc.set_data(gradient)
    image_id = s.source_ids[1]
    response = client.get(f"/exposure/{image_id}/thumb.png?size=96")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    body = b"".join(response.streaming_content)
    png = tmp_path / "t.png"
    png.write_bytes(body)
    pixels = mimage.imread(png)
    assert pixels.shape[:2] == (50, 75)  # integer block binning by ceil(300 / 96) = 4
    grey = pixels[..., 0]
    assert grey[:, 0].mean() < 0.05 and grey[:, -1].mean() > 0.95
    cached = list((appion_db.home / "cache" / "thumbnails").glob(f"{s.result_ids[1]}_96_*.png"))
    assert len(cached) == 1 and cached[0].read_bytes() == body
    assert client.get(f"/exposure/{s.source_ids[0]}/thumb.png").status_code == 200
    missing = insert_session("nothumb", 1, tmp_path / "none", tmp_path / "r2")
    assert client.get(f"/exposure/{missing.source_ids[0]}/thumb.png").status_code == 404


def test_exposure_page_serves_the_recorded_plots(client, tmp_path):
    s = insert_session("plots", 2, tmp_path / "img", tmp_path / "runs", n_failed=1)
    done, failed = s.source_ids
    ace_dir = tmp_path / "runs" / "ctf" / "run1"
    dd_dir = tmp_path / "runs" / "ddstack" / "run1"
    ace_dir.mkdir(parents=True)
    dd_dir.mkdir(parents=True)
    (ace_dir / "plots_00000en-a-DW.png").write_bytes(b"\x89PNG ctf plot")
    (dd_dir / "plots_00000en-a_shifts.png").write_bytes(b"\x89PNG drift plot")
    page = client.get(f"/exposure/{done}/").content.decode()
    assert f"/exposure/{done}/plot/drift.png" in page and f"/exposure/{done}/plot/ctf1.png" in page
    assert "1.0000 µm" in page  # defocus 1 of the stored CTF row
    drift = client.get(f"/exposure/{done}/plot/drift.png")
    ctf = client.get(f"/exposure/{done}/plot/ctf1.png")
    assert b"".join(drift.streaming_content) == b"\x89PNG drift plot"
    assert b"".join(ctf.streaming_content) == b"\x89PNG ctf plot"
    assert client.get(f"/exposure/{done}/plot/ctf2.png").status_code == 404
    assert client.get(f"/exposure/{done}/plot/secret.png").status_code == 404
    failed_page = client.get(f"/exposure/{failed}/").content.decode()
    assert "truncated movie (frame 7 of 16 unreadable)" in failed_page
    assert client.get("/exposure/999999/").status_code == 404
    assert client.get("/session/999999/").status_code == 404


def test_classic_runs_without_a_loop_run_are_shown(client, tmp_path):
    from appion.base.db import models as m

    s = insert_session("classic", 5, tmp_path / "img", tmp_path / "runs", n_pending=2)
    m.ApLoopExposureData.objects.filter(looprun_id=s.looprun_id).delete()
    m.ApLoopRunData.objects.filter(id=s.looprun_id).delete()
    data = client.get(f"/session/{s.session_id}/rows.json").json()
    statuses = {r["id"]: r["status"] for r in data["rows"]}
    assert sorted(statuses.values()) == ["done", "done", "done", "new", "new"]
    assert data["summary"]["n_done"] == "3" and data["loop"]["state"] == "no loop run"


def test_viewer_refuses_to_write(db):
    from django.db import connections

    from appion.base.db import models as m
    from appion.web.server import ReadOnlyViolation, refuse_writes

    with connections["default"].execute_wrapper(refuse_writes):
        assert m.SessionData.objects.count() == 0
        with pytest.raises(ReadOnlyViolation, match="read-only"):
            m.SessionData.objects.create(name="nope")
    assert m.SessionData.objects.count() == 0


def test_session_page_links_the_dask_dashboard_the_loop_recorded(client, tmp_path):
    from appion.base.db import models as m

    s = insert_session("dash", 2, tmp_path / "img", tmp_path / "runs")
    page = client.get(f"/session/{s.session_id}/").content.decode()
    assert "not recorded" in page
    m.ApLoopRunData.objects.filter(id=s.looprun_id).update(
        params='{"steps": ["motion", "ctf"], "dashboard": "http://node7:8787/status"}')
    page = client.get(f"/session/{s.session_id}/").content.decode()
    assert '<a href="http://node7:8787/status"' in page
    assert client.get(f"/session/{s.session_id}/rows.json").json()["loop"]["dashboard_url"] == \
        "http://node7:8787/status"


def test_session_page_links_the_dashboard_column(client, tmp_path):
    """The loop records its Dask dashboard in ApLoopRunData.dashboard: a URL is a link, anything else
    (why there is none) is shown as text."""
    from appion.base.db import models as m

    s = insert_session("dashcol", 2, tmp_path / "img", tmp_path / "runs")
    m.ApLoopRunData.objects.filter(id=s.looprun_id).update(dashboard="http://127.0.0.1:40123/status")
    page = client.get(f"/session/{s.session_id}/").content.decode()
    assert '<a href="http://127.0.0.1:40123/status"' in page and "not recorded" not in page
    loop = client.get(f"/session/{s.session_id}/rows.json").json()["loop"]
    assert loop["dashboard_url"] == loop["dashboard"] == "http://127.0.0.1:40123/status"
    m.ApLoopRunData.objects.filter(id=s.looprun_id).update(dashboard="unavailable (install bokeh)")
    page = client.get(f"/session/{s.session_id}/").content.decode()
    assert "unavailable (install bokeh)" in page and '<a href="unavailable' not in page
    assert client.get(f"/session/{s.session_id}/rows.json").json()["loop"]["dashboard_url"] == ""


def test_served_app_refuses_writes_from_any_view(db, monkeypatch):
    """The WSGI app `appion serve` runs wraps every request: a view that tried to write gets a 500."""
    import io
    from wsgiref.util import setup_testing_defaults

    from appion.base.db import models as m
    from appion.web import retrieve
    from appion.web.server import make_wsgi_app

    def sneaky_count():
        m.SessionData.objects.create(name="written by the viewer")
        return 0

    monkeypatch.setattr(retrieve, "retrieve_session_count", sneaky_count)
    app = make_wsgi_app()
    environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "wsgi.errors": io.StringIO()}
    setup_testing_defaults(environ)
    environ["HTTP_HOST"] = "127.0.0.1"
    status = []
    b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
    assert status[0].startswith("500")
    assert not m.SessionData.objects.filter(name="written by the viewer").exists()


def test_empty_database_and_empty_session_render(client):
    from appion.base.db import models as m

    assert "No sessions yet" in client.get("/").content.decode()
    session = m.SessionData.objects.create(name="empty")
    page = client.get(f"/session/{session.id}/").content.decode()
    assert "No exposures registered yet" in page and "no loop run" in page
    data = client.get(f"/session/{session.id}/rows.json").json()
    assert data["rows"] == [] and data["summary"]["n_exposures"] == "0"
    assert client.get(f"/session/{session.id}/series.json").json()["ids"] == []
