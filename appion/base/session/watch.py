"""`appion session import --watch`: register movies as they finish being written, until SIGTERM/SIGINT.

A movie is checked once its size and modification time have not changed for `settle_s` (long enough for slow
network writers: a TIFF written a page at a time decodes after every page).  Then it is registered if it is
complete and consistent (appion.base.session.checks).  If it may still be being written (fewer frames than its
metadata says, data cut off) it waits: it is checked again when it changes, or every settle_s, and refused once
it has stayed unchanged for `max_wait_s`.  A refused movie is reported once per reason, recorded, and checked
again when it changes or every retry_s (the cause may have been passing).  Database outages are waited out
(connections closed, backing off, said once); SIGTERM stops the watcher promptly even during one.
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from appion.base.db.retry import DatabaseRetry, db_errors
from appion.base.session.checks import GainShapes
from appion.base.session.importing import RefusalLog, import_pass
from appion.base.session.retrieve import calc_movie_filename, find_movie_files


@dataclass(frozen=True)
class WatchTimes:
    interval_s: float  # between directory scans
    settle_s: float  # a file unchanged this long is checked
    max_wait_s: float  # a file that may still be being written is refused after staying unchanged this long
    retry_s: float  # a refused file is checked again after this long even if unchanged


def calc_watch_times(interval_s: float, settle_s: float, max_wait_s: float | None) -> WatchTimes:
    """The watcher's timing; max_wait_s None: 10 x settle_s.  ValueError naming the option for a bad value."""
    for flag, value in (("--interval", interval_s), ("--settle", settle_s), ("--max-wait", max_wait_s)):
        if value is not None and not (0 <= value < float("inf")):
            raise ValueError(f"{flag} must be a number of seconds >= 0, not {value}")
    max_wait = 10 * settle_s if max_wait_s is None else max_wait_s
    if max_wait < settle_s:
        raise ValueError(f"--max-wait ({max_wait:g} s) must be at least --settle ({settle_s:g} s)")
    return WatchTimes(interval_s, settle_s, max_wait, max(60.0, 10 * settle_s, max_wait))


@dataclass
class FileState:
    """What the watcher knows of one unregistered file."""

    sig: tuple[int, int]  # (size, mtime in ns) when last looked at
    changed_at: float  # monotonic time this signature was first seen
    next_check: float | None = None  # None: once settled; else when to check again
    reported: str | None = None  # the refusal reason last printed for this signature


def calc_due(paths: list[Path], known: set[str], states: dict[Path, FileState], times: WatchTimes,
             now: float) -> list[Path]:
    """The unregistered files to check now (updates `states`): settled ones, and those whose next check is due.

    A file that changed starts settling afresh (and may be reported again); files that vanished are forgotten.
    """
    present = set(paths)
    for gone in [p for p in states if p not in present]:
        del states[gone]
    due = []
    for path in paths:
        if calc_movie_filename(path) in known:
            states.pop(path, None)
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        sig = (st.st_size, st.st_mtime_ns)
        state = states.get(path)
        if state is None or state.sig != sig:
            states[path] = FileState(sig, now)
            continue
        when = state.changed_at + times.settle_s if state.next_check is None else state.next_check
        if now >= when:
            due.append(path)
    return due


def calc_after_check(state: FileState, waiting_reason: str | None, refused_reason: str | None, times: WatchTimes,
                     now: float) -> str | None:
    """Schedule a checked file's next check; returns the refusal reason if it is refused now (else None).

    Waiting: refused once unchanged for max_wait_s, else checked again after settle_s (not past max_wait_s).
    """
    if waiting_reason is not None:
        if now - state.changed_at >= times.max_wait_s:
            refused_reason = (f"{waiting_reason}; unchanged for more than {times.max_wait_s:g} s "
                              "(--max-wait), so not a writer still at work")
        else:
            state.next_check = min(state.changed_at + times.max_wait_s, now + max(times.settle_s, times.interval_s))
            return None
    state.next_check = now + times.retry_s
    return refused_reason


def watch_frames_dir(session, settings, exclude: set[Path], known: set[str], times: WatchTimes,
                     refusals_not_recorded_because: str | None) -> int:
    """Register movies as they finish being written, until SIGTERM/SIGINT; returns the exit code (0)."""
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    db = DatabaseRetry(should_give_up=lambda: stop["now"], report=lambda text: say(f"appion: {text}"))
    states: dict[Path, FileState] = {}
    gains = GainShapes()
    scan_error = None
    total = 0
    print(f"watching {settings.frames_dir} for session {session.name} (SIGTERM to stop)", flush=True)
    try:
        refusals = RefusalLog(session.id, refusals_not_recorded_because, db=db)
        while not stop["now"]:
            try:
                paths = find_movie_files(settings.frames_dir, exclude)
                scan_error = None
            except OSError as exc:  # directory unmounted or removed: say so once, keep waiting
                if scan_error != str(exc):
                    say(f"cannot list {settings.frames_dir}: {exc.strerror or exc}")
                scan_error, paths = str(exc), []
            due = calc_due(paths, known, states, times, time.monotonic())
            if due:
                result = import_pass(session, settings, due, known, stop=lambda: stop["now"], refusals=refusals,
                                     gains=gains, db=db, wait_ok=True)
                total += result.new
                now = time.monotonic()
                waiting = dict(result.waiting)
                refused = dict(result.refused)
                for path in due:
                    state = states.get(path)
                    if state is None or calc_movie_filename(path) in known:
                        states.pop(path, None)
                        continue
                    if path not in waiting and path not in refused:
                        continue  # not reached: the pass was stopped
                    reason = calc_after_check(state, waiting.get(path), refused.get(path), times, now)
                    if reason is not None:
                        refusals.refuse(path, reason, show=reason != state.reported)
                        state.reported = reason
                if result.new:
                    print(f"session {session.name}: registered {result.new} (total {total})", flush=True)
            end = time.monotonic() + times.interval_s
            while not stop["now"] and time.monotonic() < end:
                time.sleep(min(0.1, times.interval_s))
    except db_errors() as exc:
        if not stop["now"]:
            raise
        say(f"appion: stopped during a database outage ({' '.join(str(exc).split())[:200]})")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stopped watching; {total} exposures registered", flush=True)
    return 0
