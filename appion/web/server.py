"""Run the viewer: a threaded WSGI server around Django, read-only by construction.

The global settings (appion.base.db.setup) know nothing about URLs; `make_wsgi_app` sets
ROOT_URLCONF and ALLOWED_HOSTS before the first request, and wraps every request so that
any statement other than a read is refused: the viewer never writes the database.
"""
from __future__ import annotations

import contextlib
from typing import Callable

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


def calc_allowed_hosts(host: str) -> list[str]:
    """Host headers accepted: the bound name plus loopback names ('*' when bound to all interfaces)."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted({host, "localhost", "127.0.0.1", "[::1]"})


def make_wsgi_app(host: str = "127.0.0.1"):
    """Django's WSGI handler for the viewer's URLconf, with writes refused on every connection."""
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.db import connections

    from appion.base.db import bootstrap

    bootstrap()
    settings.ROOT_URLCONF = "appion.web.urls"
    settings.ALLOWED_HOSTS = calc_allowed_hosts(host)
    django_app = get_wsgi_application()

    def app(environ, start_response):
        with contextlib.ExitStack() as stack:
            for alias in connections:
                stack.enter_context(connections[alias].execute_wrapper(refuse_writes))
            return django_app(environ, start_response)

    return app


def serve(host: str, port: int, on_bind: Callable[[int], None] | None = None) -> None:
    """Serve until interrupted (one thread per request; connections closed after each request)."""
    from django.core.servers.basehttp import WSGIServer, run

    ipv6 = ":" in host
    run(host, port, make_wsgi_app(host), ipv6=ipv6, threading=True, on_bind=on_bind, server_cls=WSGIServer)
