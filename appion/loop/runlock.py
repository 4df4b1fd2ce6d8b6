"""One loop per run, and what a killed loop leaves behind.

A run (session + run name) is held by the loop whose ApLoopRunData row says status R with its host, pid and a
fresh heartbeat (appion.loop.store.store_loop_run takes it atomically).  This module answers "is that holder
still alive?" from the process table, and removes the hidden temporaries (`.<name>.<random>.part`, see
appion.base.io.files) that killed workers left in the run's directories.  No Django here.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from appion.loop.calc import LoopError, calc_holder, calc_holder_alive

log = logging.getLogger("appion.loop")

PART_MARGIN_S = 60.0  # a temporary nobody wrote to for this long has no live writer (writers append continuously)


class RunLocked(LoopError):
    """Another live loop is processing this run; the message names its host, pid and heartbeat age."""


def is_pid_alive(pid: int | None, started_s: float | None = None) -> bool:
    """Whether process `pid` of this host still exists (and is not a newer process that reused the pid:
    one created after `started_s`, the holder's start, plus a second)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if started_s is None:
        return True
    try:
        import psutil

        return psutil.Process(pid).create_time() <= started_s + 1.0
    except Exception:  # psutil missing, or the process ended meanwhile: the kill check above decides
        return True


def calc_holder_state(hostname: str | None, pid: int | None, heartbeat_s: float | None, started_s: float | None,
                      now_s: float | None = None) -> tuple[bool, str]:
    """(alive, `host:pid (heartbeat 5 s ago)`) of a run's holder as recorded in its ApLoopRunData row."""
    now_s = time.time() if now_s is None else now_s
    this_host = socket.gethostname()
    pid_alive = is_pid_alive(pid, started_s) if hostname == this_host else None
    alive, why = calc_holder_alive(hostname, heartbeat_s, now_s, this_host, pid_alive)
    holder = calc_holder(hostname, pid, heartbeat_s, now_s)
    return alive, holder if alive else f"{holder}: {why}"


def clean_part_files(directories: Iterable[Path], margin_s: float = PART_MARGIN_S,
                     now_s: float | None = None) -> list[Path]:
    """Remove hidden temporaries `.*.part` directly in `directories` not written to for `margin_s` seconds.

    Only those names (hidden and ending in .part, as appion.base.io.files makes them), only regular files,
    only in the given directories (no recursion, no symlinks followed).  Returns what was removed.
    """
    now_s = time.time() if now_s is None else now_s
    removed = []
    for directory in dict.fromkeys(Path(d) for d in directories):
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(".part")):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if now_s - entry.stat(follow_symlinks=False).st_mtime < margin_s:
                    continue
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:  # removed meanwhile (its writer renamed it into place)
                continue
            except OSError as exc:
                log.warning("could not remove the leftover temporary %s: %s", entry.path, exc.strerror or exc)
    return removed


class Heartbeat:
    """A thread that calls `beat()` every interval_s (the run's heartbeat, which keeps its lock) until stopped.

    A thread, so that long work in the loop's main thread (a big first poll, waiting out the grace, closing a
    cluster) never lets a live loop's lock look stale.  Errors (a database outage) are logged once per outage
    and otherwise ignored: the main thread reports outages.  `close()` runs in the thread when it ends (to close
    the thread's own database connections).
    """

    def __init__(self, beat: Callable[[], None], interval_s: float, close: Callable[[], None] = lambda: None):
        import threading

        self.beat, self.interval_s, self.close = beat, interval_s, close
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="appion-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.thread.start()
        return self

    def _run(self) -> None:
        failing = False
        try:
            while not self.stopped.wait(self.interval_s):
                try:
                    self.beat()
                    failing = False
                except Exception as exc:
                    if not failing:
                        log.debug("heartbeat not written: %s", exc)
                    failing = True
        finally:
            self.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)
