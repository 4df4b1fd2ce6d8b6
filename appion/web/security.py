"""Which requests the viewer answers: the Host header it serves, the share token, and the safety headers of every
response.

A browser sends the name in the URL as the Host header.  A page on an attacker's domain that re-resolves
that domain to 127.0.0.1 (DNS rebinding) reaches the viewer as same-origin and could read it, but its
requests name the attacker's domain: refusing every Host that is not a name of this server stops it.
Django checks ALLOWED_HOSTS only when a view calls request.get_host(), which none does, so the check
is made here, in a WSGI wrapper around Django, before any view runs (`guard`).

Served names (`calc_host_policy`):
- always the loopback names localhost, 127.0.0.1 and [::1], and the names a site lists in
  `[web] allowed_hosts` of the config (Django's patterns: ".example.org" also matches its subdomains);
- an explicit bind address or name (`appion serve --host viewer.example.org`), with the machine's own
  host names when it is not a loopback address;
- bound to all interfaces (0.0.0.0, ::): the machine's host names and any IP address, since a Host
  that is an IP literal cannot come from DNS rebinding (the attacker's page would be another origin).
The port of the Host header is not checked.

Share link (`[web] share_token`, at least 32 URL-safe characters): with a token configured, a request from
another machine is served only when it carries the token, as `?token=...` (the share link) or as the cookie
set by the first such request (HttpOnly, SameSite=Strict, so the page's own requests need no token); else 403.
A request is local when it comes from a loopback address without a proxy's forwarding header (Forwarded,
X-Forwarded-For, X-Real-IP): local users are served as before and see the share link on the session page.
Without a token nothing changes (a non-loopback bind serves anyone whose Host is allowed).  The viewer reads
only, but for a person's accept/reject of an exposure (local users and share-token holders).  What the guard decided is in the WSGI environ: `appion.access` is "local", "token" or
"open" (no token configured, a remote client); for local requests with a token configured,
`appion.share_base` (the viewer's address as other machines reach it) and `appion.share_token` give the share
link (`calc_share_url`).
"""
from __future__ import annotations

import hmac
import ipaddress
import re
import socket
import string
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from django.http.request import split_domain_port, validate_host

from appion.base.config import AppionConfig, ConfigError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
SAFETY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
                  ("X-Frame-Options", "DENY"))
SHARE_COOKIE = "appion_share"
MIN_TOKEN_LENGTH = 32
TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.~")
FORWARDING_HEADERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
TOKEN_IN_TEXT = re.compile(r"([?&]token=)[^&\s\"']*")


@dataclass(frozen=True)
class HostPolicy:
    """Host headers served: names as Django ALLOWED_HOSTS patterns, plus any IP literal when any_ip."""

    names: tuple[str, ...]
    any_ip: bool = False

    def allows(self, host: str) -> bool:
        """Whether a Host header value (with or without its port) names this server."""
        domain, _ = split_domain_port(host)
        if not domain:
            return False
        return validate_host(domain, self.names) or (self.any_ip and calc_is_ip_literal(domain))


def calc_is_ip_literal(domain: str) -> bool:
    """Whether a Host domain is an IPv4 address or a bracketed IPv6 address."""
    text = domain[1:-1] if domain.startswith("[") and domain.endswith("]") else domain
    if text != domain and ":" not in text:
        return False  # "[127.0.0.1]" is not a valid Host
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def calc_host_name(bind: str) -> str:
    """The bind address as it appears in a Host header: lower case, IPv6 addresses in brackets."""
    bind = bind.strip().lower()
    return f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind


def calc_is_loopback(bind: str) -> bool:
    name = calc_host_name(bind)
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def calc_host_policy(bind: str, configured: tuple[str, ...] = (), machine_names: tuple[str, ...] = ()) -> HostPolicy:
    """The Host headers a server bound to `bind` answers (see the module docstring)."""
    names = set(LOOPBACK_NAMES) | {n.strip().lower() for n in configured if n.strip()}
    wildcard = bind.strip() in WILDCARD_BINDS
    if not wildcard:
        names.add(calc_host_name(bind))
    if wildcard or not calc_is_loopback(bind):
        names |= {n.lower() for n in machine_names if n}
    return HostPolicy(names=tuple(sorted(names)), any_ip=wildcard)


def retrieve_machine_names() -> tuple[str, ...]:
    """This machine's host name and fully qualified name (as a browser on the network would use them)."""
    names = {socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    return tuple(sorted(n for n in names if n))


def retrieve_configured_hosts(config: AppionConfig) -> tuple[str, ...]:
    """`[web] allowed_hosts` of the config: extra names the viewer is reached by (e.g. behind a proxy)."""
    section = config.extra.get("web", {}) or {}
    if not isinstance(section, dict):
        raise ConfigError("[web] must be a table")
    names = section.get("allowed_hosts", [])
    if isinstance(names, str) or not isinstance(names, list) or not all(isinstance(n, str) and n.strip()
                                                                         for n in names):
        raise ConfigError(f"[web] allowed_hosts must be a list of host names, not {names!r}")
    return tuple(names)


@dataclass(frozen=True)
class SharePolicy:
    """The share link: its token (None: not configured) and the host name other machines reach this server by."""

    token: str | None = field(default=None, repr=False)
    host_name: str = "127.0.0.1"

    def calc_base(self, environ) -> str:
        """The viewer's address as other machines reach it (the port is the one this request came in on)."""
        port = str(environ.get("SERVER_PORT") or "80")
        return f"http://{self.host_name}" + ("" if port == "80" else f":{port}")


def calc_share_url(environ, path: str) -> str | None:
    """The share link of `path` (e.g. "/session/3/"), for a local request with a token configured; else None."""
    base, token = environ.get("appion.share_base"), environ.get("appion.share_token")
    return f"{base}{path}?token={token}" if base and token else None


def retrieve_share_token(config: AppionConfig) -> str | None:
    """`[web] share_token`: None when not set; a ConfigError (never showing the value) when too short or unsafe."""
    section = config.extra.get("web", {}) or {}
    if not isinstance(section, dict):
        raise ConfigError("[web] must be a table")
    token = section.get("share_token")
    if token is None:
        return None
    if not isinstance(token, str):
        raise ConfigError("[web] share_token must be a string")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"[web] share_token must be at least {MIN_TOKEN_LENGTH} characters long (it has "
                          f"{len(token)}); make one with {MAKE_TOKEN}")
    if not set(token) <= TOKEN_CHARACTERS:
        raise ConfigError("[web] share_token may hold only letters, digits and - _ . ~ (it goes into URLs); make "
                          f"one with {MAKE_TOKEN}")
    return token


def calc_redacted(text: str) -> str:
    """Text (e.g. a logged request line) with the value of every `token=` query parameter hidden."""
    return TOKEN_IN_TEXT.sub(r"\1…", text)


def calc_share_host(bind: str, configured: tuple[str, ...] = (), machine_names: tuple[str, ...] = ()) -> str:
    """The host name a share link names: the machine's (fully qualified if known) for a wildcard bind, the bind
    address or name otherwise; for a loopback bind the first `[web] allowed_hosts` name (e.g. a proxy's)."""
    if bind.strip() in WILDCARD_BINDS:
        names = sorted(machine_names, key=lambda n: ("." not in n, -len(n)))
        return names[0].lower() if names else "localhost"
    if calc_is_loopback(bind):
        named = [n.strip().lower() for n in configured if n.strip() and not n.strip().startswith(".")]
        return named[0] if named else calc_host_name(bind)
    return calc_host_name(bind)


def calc_is_local_request(environ) -> bool:
    """From a loopback address, and not forwarded by a proxy (a proxy on this machine serves other machines)."""
    if any(environ.get(h) for h in FORWARDING_HEADERS):
        return False
    try:
        address = ipaddress.ip_address((environ.get("REMOTE_ADDR") or "").strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def _cookie_token(environ) -> str | None:
    try:
        morsel = SimpleCookie(environ.get("HTTP_COOKIE") or "").get(SHARE_COOKIE)
    except CookieError:
        return None
    return morsel.value if morsel is not None else None


def calc_access(environ, token: str | None) -> tuple[str | None, bool]:
    """(access, set the cookie?): "local", "token" or "open" (no token configured, a remote client); None: refuse."""
    local = calc_is_local_request(environ)
    if token is None:
        return ("local" if local else "open"), False
    if local:
        return "local", False
    cookie = _cookie_token(environ)
    cookie_ok = cookie is not None and _same(cookie, token)
    query = parse_qs(environ.get("QUERY_STRING") or "", keep_blank_values=True).get("token", [])
    if any(_same(q, token) for q in query):
        return "token", not cookie_ok
    return ("token", False) if cookie_ok else (None, False)


def _plain(start_response, status: str, text: str) -> list[bytes]:
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def guard(app, policy: HostPolicy, share: SharePolicy = SharePolicy()):
    """The WSGI app `app` answering only requests whose Host the policy allows (else 400, plain text) and, with a
    share token configured, only local requests or those carrying the token (else 403, plain text); with
    SAFETY_HEADERS added to every response (a header the response already sets is kept)."""

    def guarded(environ, start_response):
        set_cookie = False

        def start_with_safety_headers(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            extra = [(name, value) for name, value in SAFETY_HEADERS if name.lower() not in present]
            if set_cookie:
                extra.append(("Set-Cookie", f"{SHARE_COOKIE}={share.token}; Path=/; HttpOnly; SameSite=Strict"))
            return start_response(status, list(headers) + extra, exc_info)

        host = environ.get("HTTP_HOST")
        if not host:
            return _plain(start_with_safety_headers, "400 Bad Request", "The request has no Host header.\n")
        if not policy.allows(host):
            return _plain(start_with_safety_headers, "400 Bad Request",
                          f"Host {host!r} is not served here (a site adds the names it serves to "
                          "[web] allowed_hosts in the appion config).\n")
        access, set_cookie = calc_access(environ, share.token)
        if access is None:
            return _plain(start_with_safety_headers, "403 Forbidden",
                          "This viewer is shared by link only: open it with its share link (the address with "
                          "?token=...), which the staff see on the session page of this viewer.\n")
        environ["appion.access"] = access
        if access == "local" and share.token:
            environ["appion.share_base"] = share.calc_base(environ)
            environ["appion.share_token"] = share.token
        return app(environ, start_with_safety_headers)

    return guarded
