"""One import pass over movie files, and the import refusals (printed, and recorded for `appion status`).

Runs after appion.base.db.bootstrap().  The decisions about a file are appion.base.session.checks; the
watcher (appion.base.session.watch) calls import_pass for the files that have settled.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connections

from appion.base.db import models as m
from appion.base.db.router import alias_for
from appion.base.io.metadata import ExposureMetadata
from appion.base.session.checks import READY, WAIT, GainShapes, calc_movie_verdict
from appion.base.session.retrieve import calc_movie_filename, retrieve_import_refusals
from appion.base.session.store import (ImportSettings, delete_import_refusals, store_exposure,
                                       store_import_refusal)

log = logging.getLogger("appion.session")


def run_directly(fn, *args, what: str = "", **kwargs):
    """Database work run once (errors go to the caller); the watcher uses a DatabaseRetry instead."""
    return fn(*args, **kwargs)


def calc_refusal_recording(session) -> str | None:
    """None when refusals can be recorded (ApImportRefusalData in the session's appion database), else why not.

    Chooses the appion database as the loop does: the session's project's processingdb, else [database] appion.
    """
    from appion.base.config import ConfigError
    from appion.base.db import use_appion_database

    project_id = (m.ProjectExperiment.objects.filter(session_id=session.id).order_by("-id")
                  .values_list("project_id", flat=True).first())
    try:
        use_appion_database(project_id)
    except ConfigError as exc:
        return str(exc)
    model = m.ApImportRefusalData
    conn = connections[alias_for(model)]
    with conn.cursor() as cur:
        tables = set(conn.introspection.table_names(cur))
    if model._meta.db_table not in tables:
        return f"table {model._meta.db_table} is missing from the appion database (run `appion db init`)"
    return None


class RefusalLog:
    """Prints one line per refusal (`refused PATH: REASON`, stderr) and records it in ApImportRefusalData.

    recording: None to record, else why refusals cannot be recorded (said once, then only printed).
    db: how database work is run (run_directly, or a DatabaseRetry in --watch).
    """

    def __init__(self, session_id: int, not_recorded_because: str | None, db=run_directly, out=None,
                 clock: Callable[[], float] = time.time):
        self.session_id = session_id
        self.db = db
        self.out = out
        self.clock = clock
        self.recording = not_recorded_because is None
        self.refused: set[str] = set()  # paths with a refusal row (read once, then kept up to date)
        if not self.recording:
            self._say(f"appion: warning: import refusals are printed but not recorded: {not_recorded_because}")
        else:
            self.refused = {r.path for r in db(retrieve_import_refusals, session_id, what="reading import refusals")}

    def _say(self, line: str) -> None:
        print(line, file=self.out or sys.stderr, flush=True)

    def refuse(self, path: Path, reason: str, show: bool = True) -> None:
        if show:
            self._say(f"refused {path}: {reason}")
        if self.recording:
            self.db(store_import_refusal, self.session_id, path, reason, self.clock(),
                    what=f"recording the refusal of {path.name}")
            self.refused.add(str(path))

    def clear(self, path: Path) -> None:
        if self.recording and str(path) in self.refused:
            self.db(delete_import_refusals, self.session_id, path, what=f"clearing the refusal of {path.name}")
            self.refused.discard(str(path))


@dataclass
class PassResult:
    """What one pass did: registered (new), already known, refused now, and still being written (watch mode)."""

    new: int = 0
    known: int = 0
    registered: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    waiting: list[tuple[Path, str]] = field(default_factory=list)


def import_pass(session, settings: ImportSettings, paths: list[Path], known: set[str],
                stop: Callable[[], bool] = lambda: False, *, refusals: RefusalLog | None = None,
                gains: GainShapes | None = None, db=run_directly, wait_ok: bool = False) -> PassResult:
    """Register each movie that is ready; the others are returned with their reason and the pass goes on.

    stop: checked between files, so SIGTERM during a long pass ends it after the current movie.
    wait_ok: a movie that may still be being written is returned in `waiting` (the watcher decides when it has
    waited long enough); otherwise it is refused like any other.  Refusals are returned, not recorded: the
    caller records them (refusals.refuse); a movie registered after all has its refusal cleared.
    """
    result = PassResult()
    gains = gains or GainShapes()
    flags = ExposureMetadata(pixel_size_A=settings.pixel_size_A, voltage_V=settings.voltage_kV * 1e3,
                             dose_e_per_A2=settings.dose_e_per_A2)
    for path in paths:
        if stop():
            break
        name = calc_movie_filename(path)
        if name in known:
            result.known += 1
            continue
        verdict = calc_movie_verdict(path, flags, settings.gain_path, settings.frame_rotate, settings.frame_flip,
                                     gains)
        if verdict.state == WAIT and wait_ok:
            result.waiting.append((path, verdict.reason))
            continue
        if verdict.state != READY:
            result.refused.append((path, verdict.reason))
            continue
        try:
            _, created = db(store_exposure, session, settings, path, verdict.header, verdict.meta, verdict.gain_path,
                            what=f"registering {path.name}")
        except OSError as exc:  # e.g. the gain reference cannot be copied next to the images (disk full)
            result.refused.append((path, f"cannot be registered: {exc.strerror or exc} ({exc.filename or ''})"))
            continue
        known.add(name)
        if refusals is not None:
            refusals.clear(path)
        if created:
            result.new += 1
            result.registered.append(path)
            log.info("registered %s", path.name)
        else:
            result.known += 1
    return result
