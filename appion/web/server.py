"""Run the viewer: a threaded WSGI server around Django, read-only by construction but for one action.

The global settings (appion.base.db.setup) know nothing about URLs; `make_wsgi_app` sets
ROOT_URLCONF and ALLOWED_HOSTS before the first request, and wraps every request so that
any statement other than a read is refused; the one exception is a person's accept/reject of an exposure
(appion.web.store, from this machine or a share-token holder, with a per-page form token).  Around that,
appion.web.security answers only the Host names this server serves (400 otherwise: DNS rebinding),
with `[web] share_token` set only local requests and those carrying the token (403 otherwise: the share
link), and adds the safety headers to every response; the views answer only GET and HEAD (405 otherwise).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

from appion.web import security

READ_PREFIXES = ("SELECT", "PRAGMA", "SET ", "SHOW", "WITH", "EXPLAIN", "SAVEPOINT", "RELEASE", "ROLLBACK")


class ReadOnlyViolation(PermissionError):
    """The viewer tried to modify the database."""


def calc_is_read(sql: str) -> bool:
    """Whether a statement only reads (or sets up the connection)."""
    return sql.lstrip().upper().startswith(READ_PREFIXES)


def refuse_writes(execute, sql, params, many, context):
    if not calc_is_read(sql):
        raise ReadOnlyViolation(f"the web viewer is read-only; refused: {sql.split(None, 1)[0]}")
    return execute(sql, params, many, context)


def calc_allowed_hosts(host: str, configured: tuple[str, ...] = (), machine_names: tuple[str, ...] = ()) -> list[str]:
    """Django's ALLOWED_HOSTS for a server bound to `host`: the names of appion.web.security's policy
    ('*' when bound to all interfaces, where the policy also takes any IP literal, which Django cannot express).

    The guard enforces the policy before Django sees a request; this keeps request.get_host() consistent.
    """
    policy = security.calc_host_policy(host, configured, machine_names)
    return ["*"] if policy.any_ip else list(policy.names)


def make_wsgi_app(host: str = "127.0.0.1"):
    """Django's WSGI handler for the viewer's URLconf, with writes refused on every connection,
    answering only the Host names a server bound to `host` serves (and, with a share token, only local
    requests or those carrying it), with safety headers on every response."""
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.db import connections

    from appion.base.db import bootstrap

    config = bootstrap()
    configured = security.retrieve_configured_hosts(config)
    machine_names = () if security.calc_is_loopback(host) else security.retrieve_machine_names()
    policy = security.calc_host_policy(host, configured, machine_names)
    share = security.SharePolicy(security.retrieve_share_token(config),
                                 security.calc_share_host(host, configured, machine_names))
    settings.ROOT_URLCONF = "appion.web.urls"
    settings.ALLOWED_HOSTS = calc_allowed_hosts(host, configured, machine_names)
    django_app = get_wsgi_application()

    def app(environ, start_response):
        with contextlib.ExitStack() as stack:
            for alias in connections:
                stack.enter_context(connections[alias].execute_wrapper(refuse_writes))
            return django_app(environ, start_response)

    return security.guard(app, policy, share)


class RedactTokens(logging.Filter):
    """Hides share tokens (`?token=...`) in the request lines the server logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = security.calc_redacted(text)
        if redacted != text:
            record.msg, record.args = redacted, ()
        return True


def serve(host: str, port: int, on_bind: Callable[[int], None] | None = None) -> None:
    """Serve until interrupted (one thread per request; connections closed after each request)."""
    from django.core.servers.basehttp import WSGIServer, run

    server_log = logging.getLogger("django.server")
    if not any(isinstance(f, RedactTokens) for f in server_log.filters):
        server_log.addFilter(RedactTokens())
    ipv6 = ":" in host
    run(host, port, make_wsgi_app(host), ipv6=ipv6, threading=True, on_bind=on_bind, server_cls=WSGIServer)
