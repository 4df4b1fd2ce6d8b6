"""The read-only share link (`[web] share_token`): on a real `appion serve`, requests from other machines are
served only with the token (in the URL, then as a cookie), local users see the link, the token is never logged;
without a token nothing changes.  Other machines are stood for by a proxy's X-Forwarded-For header (the server
listens on 127.0.0.1 only); the decision for a server bound to every interface is checked on the guard itself.
"""
from __future__ import annotations

import html
import http.client
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.web.conftest import wait_for
from tests.web.synthetic import insert_session

pytestmark = pytest.mark.timeout(180)

TOKEN = "Zq3-xY_9.kT~" + "a1B2c3D4e5F6g7H8i9J0kLmN"  # 36 URL-safe characters
REMOTE = {"X-Forwarded-For": "203.0.113.7"}


def config_env(tmp_path: Path, web: str) -> dict:
    """The test process's database with a [web] table of our own (APPION_CONFIG), for a server subprocess."""
    home = Path(os.environ["APPION_HOME"])
    base = (home / "config.toml").read_text() if (home / "config.toml").exists() else (
        f'[database]\nurl = "sqlite:///{home / "appion.sqlite3"}"\n')
    path = tmp_path / "config.toml"
    path.write_text(f"{base}\n[web]\n{web}")
    return {**os.environ, "APPION_CONFIG": str(path)}


def get(server, path: str, headers: dict | None = None, method: str = "GET"):
    """(status, headers, body) of one request to the server."""
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, path, body=b"a=1" if method == "POST" else None,
                     headers={"Host": f"127.0.0.1:{url.port}", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def test_share_link(db, serve, tmp_path):
    s = insert_session("shared", 4, tmp_path / "img", tmp_path / "runs")
    server = serve(config_env(tmp_path, f'share_token = "{TOKEN}"\n'))
    port = urlsplit(server.url).port
    page = f"/session/{s.session_id}/"
    link = f"http://127.0.0.1:{port}{page}?token={TOKEN}"

    # a local user: served as before, and shown the share link (with a note: this server is loopback-only)
    status, headers, body = get(server, page)
    assert status == 200 and "Set-Cookie" not in headers
    text = html.unescape(body.decode())
    assert f'<a id="share-link" href="{link}">{link}</a>' in text
    assert "listens on loopback only" in text

    # another machine without the token: nothing of the viewer
    for path in ("/", page, f"/session/{s.session_id}/rows.json", f"/exposure/{s.source_ids[0]}/", "/static/app.js",
                 f"{page}?token=", f"{page}?token={TOKEN[:-1]}", f"{page}?token={TOKEN}x"):
        status, headers, body = get(server, path, REMOTE)
        assert status == 403, (path, status)
        assert headers.get_content_type() == "text/plain" and b"shared by link only" in body
        assert b"shared" not in body.replace(b"shared by link only", b"") and "Set-Cookie" not in headers
        assert headers["X-Frame-Options"] == "DENY"
    assert get(server, page, {**REMOTE, "Cookie": f"appion_share={TOKEN[:-1]}"})[0] == 403
    # a foreign Host is still refused first
    assert get(server, f"{page}?token={TOKEN}", {**REMOTE, "Host": "evil.example"})[0] == 400

    # with the share link: the page, and a cookie that serves the page's own requests
    status, headers, body = get(server, f"{page}?token={TOKEN}", REMOTE)
    assert status == 200 and b"shared" in body
    assert headers["Set-Cookie"] == f"appion_share={TOKEN}; Path=/; HttpOnly; SameSite=Strict"
    assert TOKEN.encode() not in body and b"share-link" not in body  # the link is shown to local users only
    cookie = {**REMOTE, "Cookie": f"other=1; appion_share={TOKEN}"}
    for path in (page, f"/session/{s.session_id}/rows.json", f"/session/{s.session_id}/series.json",
                 f"/exposure/{s.source_ids[0]}/", "/static/app.js"):
        status, headers, _ = get(server, path, cookie)
        assert status == 200 and "Set-Cookie" not in headers, path
    # still read-only
    status, headers, _ = get(server, f"{page}?token={TOKEN}", REMOTE, method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"

    # the token never reaches the server's log
    log = server.stop()
    assert "GET /session/" in log and "token=…" in log, log[-2000:]
    assert TOKEN not in log


def test_without_a_token_nothing_changes(db, serve, tmp_path):
    s = insert_session("open", 2, tmp_path / "img", tmp_path / "runs")
    server = serve(config_env(tmp_path, 'allowed_hosts = ["viewer.lab.example"]\n'))
    status, headers, body = get(server, f"/session/{s.session_id}/", REMOTE)
    assert status == 200 and b"share-link" not in body and "Set-Cookie" not in headers
    assert b"share-link" not in get(server, f"/session/{s.session_id}/")[2]


@pytest.mark.parametrize("value, shown", [('"short-token"', "must be at least 32 characters long (it has 11)"),
                                          (f'"{"x" * 31} z"', "may hold only letters, digits and - _ . ~"),
                                          ("42", "share_token must be a string")])
def test_bad_tokens_stop_the_server(db, tmp_path, value, shown):
    env = config_env(tmp_path, f"share_token = {value}\n")
    done = subprocess.run(["appion", "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "configuration error: [web] share_token" in done.stderr and shown in done.stderr, done.stderr
    assert "short-token" not in done.stderr and "x" * 31 not in done.stderr


def test_guard_of_a_server_bound_to_every_interface():
    """Bound to 0.0.0.0, a remote client (its own address, no proxy) needs the token; the share link names the
    machine's fully qualified name."""
    from appion.web import security

    policy = security.calc_host_policy("0.0.0.0", machine_names=("box", "box.lab.example"))
    share = security.SharePolicy(TOKEN, security.calc_share_host("0.0.0.0", (), ("box", "box.lab.example")))
    seen = []

    def app(environ, start_response):
        seen.append((environ["appion.access"], security.calc_share_url(environ, "/session/1/")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"page"]

    guarded = security.guard(app, policy, share)

    def call(remote: str, query: str = "", **headers):
        out = {}

        def start_response(status, response_headers, exc_info=None):
            out["status"], out["headers"] = status, dict(response_headers)

        environ = {"HTTP_HOST": "10.0.0.2:8000", "REMOTE_ADDR": remote, "QUERY_STRING": query, "SERVER_PORT": "8000",
                   **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}
        body = b"".join(guarded(environ, start_response))
        return out["status"], out["headers"], body

    assert call("10.0.0.5")[0] == "403 Forbidden" and not seen
    status, headers, body = call("10.0.0.5", f"run=2&token={TOKEN}")
    assert status == "200 OK" and body == b"page" and "Set-Cookie" in headers
    assert seen.pop() == ("token", None)
    assert call("10.0.0.5", cookie=f"appion_share={TOKEN}")[0] == "200 OK" and seen.pop() == ("token", None)
    assert call("::ffff:127.0.0.1")[0] == "200 OK"
    assert seen.pop() == ("local", f"http://box.lab.example:8000/session/1/?token={TOKEN}")
    assert call("127.0.0.1", x_real_ip="10.0.0.5")[0] == "403 Forbidden"  # through a proxy: not local
    assert call("::1", forwarded="for=10.0.0.5")[0] == "403 Forbidden"
    assert call("10.0.0.5", cookie='appion_share="bad; x')[0] == "403 Forbidden"  # a broken cookie is no cookie

    open_guard = security.guard(app, policy)  # no token: served as today
    environ = {"HTTP_HOST": "10.0.0.2", "REMOTE_ADDR": "10.0.0.5", "QUERY_STRING": ""}
    assert b"".join(open_guard(environ, lambda *a: None)) == b"page" and seen.pop() == ("open", None)


def test_share_host():
    from appion.web.security import calc_share_host

    assert calc_share_host("0.0.0.0", (), ("box", "box.lab.example")) == "box.lab.example"
    assert calc_share_host("::", (), ()) == "localhost"
    assert calc_share_host("viewer.lab.example", (), ("box",)) == "viewer.lab.example"
    assert calc_share_host("fe80::1") == "[fe80::1]"
    assert calc_share_host("127.0.0.1", (".proxy.example", "cryoem.lab.example")) == "cryoem.lab.example"
    assert calc_share_host("127.0.0.1") == "127.0.0.1"


def test_browser_shows_the_share_link(db, serve, tmp_path, chromium):
    s = insert_session("browse", 3, tmp_path / "img", tmp_path / "runs")
    server = serve(config_env(tmp_path, f'share_token = "{TOKEN}"\n'))
    chromium.get(f"{server.url}/session/{s.session_id}/")
    link = wait_for(lambda: chromium.execute_script(
        "const a = document.getElementById('share-link'); return a && a.href;"), what="the share link")
    assert re.fullmatch(rf"http://127\.0\.0\.1:\d+/session/{s.session_id}/\?token={re.escape(TOKEN)}", link)
    chromium.get(link)  # the link itself opens the page
    assert wait_for(lambda: chromium.execute_script("return document.querySelectorAll('#rows tr').length"),
                    what="the exposure rows") == 3
