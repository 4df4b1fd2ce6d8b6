"""Which requests the viewer answers: the Host header it serves, and the safety headers of every response.

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
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from django.http.request import split_domain_port, validate_host

from appion.base.config import AppionConfig, ConfigError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
SAFETY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
                  ("X-Frame-Options", "DENY"))


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


def _plain(start_response, status: str, text: str) -> list[bytes]:
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def guard(app, policy: HostPolicy):
    """The WSGI app `app` answering only requests whose Host the policy allows (else 400, plain text),
    with SAFETY_HEADERS added to every response (a header the response already sets is kept)."""

    def guarded(environ, start_response):
        def start_with_safety_headers(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            extra = [(name, value) for name, value in SAFETY_HEADERS if name.lower() not in present]
            return start_response(status, list(headers) + extra, exc_info)

        host = environ.get("HTTP_HOST")
        if not host:
            return _plain(start_with_safety_headers, "400 Bad Request", "The request has no Host header.\n")
        if not policy.allows(host):
            return _plain(start_with_safety_headers, "400 Bad Request",
                          f"Host {host!r} is not served here (a site adds the names it serves to "
                          "[web] allowed_hosts in the appion config).\n")
        return app(environ, start_with_safety_headers)

    return guarded
