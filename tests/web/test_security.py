"""What the viewer answers to requests it must not serve, on a real `appion serve` with raw HTTP requests.

A Host that is not a name of this server (DNS rebinding) gets 400; anything but GET/HEAD gets 405 with
`Allow: GET, HEAD` (the one write, an exposure's verdict, answers POST only); every response carries the safety
headers.  The host policy itself (wildcard binds,
explicit names, `[web] allowed_hosts`) is checked directly.
"""
from __future__ import annotations

import http.client
import subprocess
from urllib.parse import urlsplit

import pytest

from tests.web.synthetic import insert_session

pytestmark = pytest.mark.timeout(180)

SAFETY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}
WRITE_METHODS = ("POST", "PUT", "DELETE", "PATCH")


def send(server, method: str, path: str, host: str | None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with exactly this Host header (none when host is None); (status, headers, body)."""
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        if method in WRITE_METHODS:
            conn.putheader("Content-Type", "application/x-www-form-urlencoded")
            conn.putheader("Content-Length", "3")
            conn.endheaders(b"a=1")
        else:
            conn.endheaders()
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def assert_safety_headers(headers, what: str) -> None:
    for name, value in SAFETY.items():
        assert headers.get(name) == value, f"{what}: {name} is {headers.get(name)!r}, not {value!r}"


def test_foreign_host_is_refused(db, serve, tmp_path):
    s = insert_session("rebind", 3, tmp_path / "img", tmp_path / "runs")
    server = serve()
    port = urlsplit(server.url).port
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io",
                 "[::2]", "10.0.0.1"):
        for path in ("/", f"/session/{s.session_id}/", f"/session/{s.session_id}/rows.json", "/static/app.js"):
            status, headers, body = send(server, "GET", path, host)
            assert status == 400, (host, path, status)
            assert headers.get_content_type() == "text/plain"
            assert f"Host '{host}' is not served here".encode() in body, body
            assert b"session" not in body and b"<" not in body  # nothing of the page leaks
            assert_safety_headers(headers, f"400 for {host}")
    status, headers, body = send(server, "GET", "/", None)
    assert status == 400 and b"no Host header" in body
    # a write is refused for its Host before its method
    assert send(server, "POST", "/", "evil.example")[0] == 400


def test_loopback_names_are_served_with_or_without_port(db, serve, tmp_path):
    s = insert_session("served", 3, tmp_path / "img", tmp_path / "runs")
    server = serve()
    port = urlsplit(server.url).port
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        status, headers, body = send(server, "GET", "/", host)
        assert status == 200, (host, status, body[:300])
        assert b"rebind" not in body and b"served" in body
        assert_safety_headers(headers, f"GET / with Host {host}")
    for path in (f"/session/{s.session_id}/", f"/session/{s.session_id}/rows.json", "/static/style.css"):
        status, headers, _ = send(server, "GET", path, f"127.0.0.1:{port}")
        assert status == 200, (path, status)
        assert_safety_headers(headers, path)
    status, headers, body = send(server, "GET", "/no-such-page/", f"127.0.0.1:{port}")
    assert status == 404
    assert_safety_headers(headers, "404")
    status, headers, body = send(server, "HEAD", f"/session/{s.session_id}/", f"127.0.0.1:{port}")
    assert status == 200 and body == b""
    assert_safety_headers(headers, "HEAD")


def test_only_get_and_head_are_answered(db, serve, tmp_path):
    s = insert_session("methods", 3, tmp_path / "img", tmp_path / "runs")
    server = serve()
    host = f"127.0.0.1:{urlsplit(server.url).port}"
    paths = ("/", f"/session/{s.session_id}/", f"/session/{s.session_id}/rows.json",
             f"/session/{s.session_id}/series.json", f"/exposure/{s.source_ids[0]}/", "/static/app.js")
    verdict = f"/exposure/{s.source_ids[0]}/verdict/"  # the one write: POST only, never by GET
    for method in ("GET", "HEAD", "PUT", "DELETE", "PATCH"):
        status, headers, _ = send(server, method, verdict, host)
        assert status == 405 and headers.get("Allow") == "POST", (method, status)
        assert_safety_headers(headers, f"{method} {verdict}")
    status, headers, body = send(server, "POST", verdict, host)  # without the page's form token
    assert status == 403 and b"form token" in body
    assert_safety_headers(headers, f"POST {verdict}")
    for path in paths:
        assert send(server, "GET", path, host)[0] == 200, path
        for method in WRITE_METHODS:
            status, headers, body = send(server, method, path, host)
            assert status == 405, (method, path, status, body[:300])
            assert headers.get("Allow") == "GET, HEAD", (method, path)
            assert b"methods" not in body  # not the page
            assert_safety_headers(headers, f"{method} {path}")


# The one view that writes: a person's accept/reject of an exposure (POST only; who may is checked in
# tests/web/test_quality_page.py and test_quality_served.py).
WRITE_VIEWS = {"verdict"}


def test_every_view_refuses_writes(db):
    """Each URL of the viewer (also one added later) answers only GET and HEAD, except the verdict, which
    answers only POST and refuses a request that does not say where it comes from."""
    from django.test import RequestFactory

    from appion.web import urls

    factory = RequestFactory()
    assert WRITE_VIEWS <= {p.name for p in urls.urlpatterns}
    for pattern in urls.urlpatterns:
        kwargs = {name: 1 if type(conv).__name__ == "IntConverter" else "x"
                  for name, conv in pattern.pattern.converters.items()}
        if pattern.name in WRITE_VIEWS:
            for method in ("GET", "HEAD", "PUT", "DELETE", "PATCH"):
                response = pattern.callback(factory.generic(method, "/"), **kwargs)
                assert response.status_code == 405 and response["Allow"] == "POST", (pattern.name, method)
            # no appion.access in the environ (not through appion.web.security's guard): never written
            response = pattern.callback(factory.post("/", {"verdict": "reject", "reason": "x"}), **kwargs)
            assert response.status_code == 403, pattern.name
            continue
        for method in WRITE_METHODS:
            try:
                response = pattern.callback(factory.generic(method, "/"), **kwargs)
            except Exception as exc:  # the view ran instead of refusing the method
                pytest.fail(f"{method} to {pattern.name!r} ran the view ({type(exc).__name__}: {exc})")
            assert response.status_code == 405, (pattern.name, method, response.status_code)
            assert response["Allow"] == "GET, HEAD", pattern.name


def test_host_policy():
    from appion.web.security import calc_host_policy

    loop = calc_host_policy("127.0.0.1", machine_names=("box", "box.lab.example"))
    assert all(loop.allows(h) for h in ("127.0.0.1", "127.0.0.1:8000", "localhost:8000", "[::1]:8000"))
    for host in ("box", "evil.example", "10.0.0.5", "localhost.evil.example", "", "[127.0.0.1]", "a b"):
        assert not loop.allows(host), host

    v6 = calc_host_policy("::1")
    assert v6.allows("[::1]:8000") and not v6.allows("[::2]:8000")

    named = calc_host_policy("viewer.lab.example", configured=(".proxy.example",), machine_names=("box",))
    assert all(named.allows(h) for h in ("viewer.lab.example:8000", "box", "a.proxy.example", "proxy.example",
                                          "localhost"))
    assert not named.allows("10.0.0.5") and not named.allows("lab.example")

    wild = calc_host_policy("0.0.0.0", machine_names=("box", "box.lab.example"))
    assert all(wild.allows(h) for h in ("10.0.0.5:8000", "[fe80::1]:8000", "box", "box.lab.example:8000",
                                         "localhost"))
    for host in ("evil.example", "box.evil.example", "10.0.0.5.nip.io"):
        assert not wild.allows(host), host


def test_django_allowed_hosts_follow_the_policy():
    from appion.web.server import calc_allowed_hosts

    assert calc_allowed_hosts("::1") == ["127.0.0.1", "[::1]", "localhost"]
    assert calc_allowed_hosts("Viewer.Lab.Example", ("proxy.example",), ("box",)) == [
        "127.0.0.1", "[::1]", "box", "localhost", "proxy.example", "viewer.lab.example"]
    assert calc_allowed_hosts("::") == ["*"]


def test_configured_names_are_served(fresh_home, serve):
    home, env = fresh_home
    (home / "config.toml").write_text('[web]\nallowed_hosts = ["viewer.lab.example", ".proxy.example"]\n')
    server = serve(env)
    for host in ("viewer.lab.example", "viewer.lab.example:443", "a.proxy.example", "127.0.0.1"):
        status, headers, _ = send(server, "GET", "/", host)
        assert status == 200, (host, status)
        assert_safety_headers(headers, host)
    assert send(server, "GET", "/", "lab.example")[0] == 400


@pytest.mark.parametrize("section, shown", [('[web]\nallowed_hosts = "viewer.lab.example"\n', "must be a list"),
                                            ("web = 3\n", "[web] must be a table"),
                                            ("[web]\nallowed_hosts = [1]\n", "must be a list")])
def test_misconfigured_names_stop_the_server(fresh_home, section, shown):
    home, env = fresh_home
    (home / "config.toml").write_text(section)
    done = subprocess.run(["appion", "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "configuration error" in done.stderr and shown in done.stderr, done.stderr
