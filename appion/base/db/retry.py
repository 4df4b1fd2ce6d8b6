"""Waiting out database outages: for long-running commands (`session import --watch`; the loop may reuse it).

Use after appion.base.db.bootstrap().  `DatabaseRetry()(fn, ...)` runs `fn`; when it raises an error that means
"the database cannot be reached" (OperationalError, InterfaceError) every connection is closed, the outage is
reported once, and `fn` is tried again after a back-off (0.5 s doubling to 10 s) until it succeeds, with one report
when the database is back.  `should_give_up()` is asked while waiting (every 0.1 s), so a stop request (SIGTERM)
ends the wait promptly: the database error is then raised to the caller.  Only run work that is safe to repeat
(one transaction, idempotent inserts): a failed attempt has been rolled back or never reached the server.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.db import connections
from django.db.utils import InterfaceError, OperationalError

log = logging.getLogger("appion.db")
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0
POLL_S = 0.1


def db_errors() -> tuple[type[Exception], ...]:
    """The errors that mean the database is unreachable (as opposed to bad data or a missing table)."""
    return (OperationalError, InterfaceError)


def close_db_connections() -> None:
    """Drop every (possibly broken) connection; Django reconnects on next use."""
    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except Exception:  # a dead server makes close() raise too; the connection is gone either way
            conn.connection = None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class DatabaseRetry:
    """Run database work, waiting out outages (see the module docstring).

    should_give_up: asked while waiting; True ends the wait and re-raises the database error.
    report: where the two outage lines go (default: a warning on the `appion.db` logger).
    """

    def __init__(self, should_give_up: Callable[[], bool] = lambda: False,
                 report: Callable[[str], None] | None = None,
                 first_delay_s: float = FIRST_DELAY_S, max_delay_s: float = MAX_DELAY_S):
        self.should_give_up = should_give_up
        self.report = report or log.warning
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.outage_started: float | None = None
        self.outages = 0

    def _wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; False as soon as should_give_up() says so."""
        end = time.monotonic() + seconds
        while True:
            if self.should_give_up():
                return False
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(POLL_S, left))

    def __call__(self, fn, *args, what: str = "database work", **kwargs):
        delay = self.first_delay_s
        errors = db_errors()
        while True:
            try:
                result = fn(*args, **kwargs)
            except errors as exc:
                if self.outage_started is None:
                    self.outage_started = time.monotonic()
                    self.outages += 1
                    self.report(f"database unavailable during {what} ({_one_line(exc)}); waiting and reconnecting")
                close_db_connections()
                if not self._wait(delay):
                    raise
                delay = min(self.max_delay_s, delay * 2)
                continue
            if self.outage_started is not None:
                self.report(f"database reachable again after {time.monotonic() - self.outage_started:.1f} s; "
                            "continuing")
                self.outage_started = None
            return result
