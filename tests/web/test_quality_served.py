"""The accept/reject form on a real `appion serve` for other machines: with `[web] share_token`, a person holding
the share link may accept or reject (the same rule as reading); without the token, nobody from another machine
may.  Other machines are stood for by a proxy's X-Forwarded-For header, as in test_share.py.
"""
from __future__ import annotations

import http.client
import re
from urllib.parse import urlencode, urlsplit

import pytest

from tests.web.synthetic import add_quality, insert_session
from tests.web.test_share import REMOTE, TOKEN, config_env

pytestmark = pytest.mark.timeout(180)


def request(server, method: str, path: str, headers: dict | None = None, form: dict | None = None):
    """(status, headers, body text) of one request to the server, with the Host it serves."""
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = urlencode(form).encode() if form is not None else None
    extra = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    try:
        conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{url.port}", **extra, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode()
    finally:
        conn.close()


def hidden_fields(page: str) -> dict:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))


def test_share_link_holders_may_accept_and_reject(db, serve, tmp_path):
    from appion.base.db import models as m

    s = insert_session("sharedq", 4, tmp_path / "img", tmp_path / "runs")
    add_quality(s)
    target = s.source_ids[0]
    server = serve(config_env(tmp_path, f'share_token = "{TOKEN}"\n'))
    port = urlsplit(server.url).port
    page_path = f"/exposure/{target}/"
    origin = {"Origin": f"http://127.0.0.1:{port}"}

    # without the token another machine gets nothing, the form included
    assert request(server, "GET", page_path, REMOTE)[0] == 403
    status, _, page = request(server, "GET", f"{page_path}?token={TOKEN}", REMOTE)
    assert status == 200 and 'id="verdict-form"' in page
    fields = hidden_fields(page)
    assert request(server, "POST", f"{page_path}verdict/", {**REMOTE, **origin},
                   {"verdict": "reject", "reason": "thick", "csrf": fields["csrf"]})[0] == 403
    assert not m.ApQualityVerdictData.objects.exists()

    # with the share link's cookie, from the page: stored under the name given, marked as the share link's
    cookie = {**REMOTE, **origin, "Cookie": f"appion_share={TOKEN}"}
    status, headers, _ = request(server, "POST", f"{page_path}verdict/", cookie,
                                 {"verdict": "reject", "reason": "thick ice at the edge", "by": "erin",
                                  "csrf": fields["csrf"], "run": fields["run"]})
    assert status == 303 and headers["Location"].startswith(page_path)
    row = m.ApQualityVerdictData.objects.get()
    assert (row.image_id, row.accepted, row.reason, row.user) == (target, False, "thick ice at the edge",
                                                                   "erin (share link)")
    assert m.ViewerImageStatus.objects.filter(image_id=target, status="hidden").exists()
    status, _, page = request(server, "GET", page_path, cookie)
    assert 'by hand, by <b id="verdict-user">erin (share link)</b>' in page
    # the share link names what its holders may do
    session_page = request(server, "GET", f"/session/{s.session_id}/")[2]
    assert "whoever has it can view this viewer and accept or reject exposures" in session_page


def test_without_a_token_other_machines_only_read(db, serve, tmp_path):
    from appion.base.db import models as m

    s = insert_session("openq", 2, tmp_path / "img", tmp_path / "runs")
    add_quality(s)
    server = serve(config_env(tmp_path, 'allowed_hosts = ["viewer.lab.example"]\n'))
    page_path = f"/exposure/{s.source_ids[0]}/"
    status, _, page = request(server, "GET", page_path, REMOTE)
    assert status == 200 and 'id="verdict"' in page and 'id="verdict-form"' not in page
    csrf = hidden_fields(request(server, "GET", page_path)[2])["csrf"]  # a local user's page
    status, _, body = request(server, "POST", f"{page_path}verdict/", REMOTE,
                              {"verdict": "accept", "csrf": csrf})
    assert status == 403 and "on this machine or through the share link" in body
    assert not m.ApQualityVerdictData.objects.exists()
    # the same form from this machine is stored
    assert request(server, "POST", f"{page_path}verdict/", None, {"verdict": "accept", "csrf": csrf})[0] == 303
    assert m.ApQualityVerdictData.objects.get().accepted is True
