"""`appion session import`: register the movies of a directory as a Leginon-like session.

The parser is appion.base.session.cli; this module runs after appion.base.db.bootstrap().
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from appion.base.db.setup import current_config
from appion.base.io import movies
from appion.base.io.metadata import ExposureMetadata
from appion.base.session.retrieve import (calc_movie_filename, find_movie_files, read_exposure_metadata,
                                          retrieve_exposure_filenames)
from appion.base.session.store import ImportSettings, store_exposure, store_session

log = logging.getLogger("appion.session")
GAIN_SUFFIXES = (".mrc", ".tif", ".tiff")


def _import_one(session, settings: ImportSettings, path: Path, known: set[str]) -> str:
    """Register one movie; returns 'new' or 'known', or raises MovieError."""
    name = calc_movie_filename(path)
    if name in known:
        return "known"
    if not movies.is_movie_complete(path):
        raise movies.MovieError(f"{path}: truncated or unreadable movie (file incomplete or not decodable)")
    flags = ExposureMetadata(pixel_size_A=settings.pixel_size_A, voltage_V=settings.voltage_kV * 1e3,
                             dose_e_per_A2=settings.dose_e_per_A2)
    header, meta = read_exposure_metadata(path, flags)
    gain = settings.gain_path
    if meta.gain_name:  # a gain named by the mdoc wins when it sits next to the movie in a readable format
        named = path.parent / meta.gain_name
        if named.suffix.lower() in GAIN_SUFFIXES and named.is_file():
            gain = named
    _, created = store_exposure(session, settings, path, header, meta, gain)
    known.add(name)
    return "new" if created else "known"


def import_pass(session, settings: ImportSettings, paths: list[Path], known: set[str],
                stop: Callable[[], bool] = lambda: False) -> tuple[int, int, list[tuple[Path, str]]]:
    """Register each movie; a bad file is recorded as (path, message) and the others go on.

    stop: checked between files, so SIGTERM during a long pass ends it after the current movie.
    Returns (new, already registered, errors).
    """
    new = skipped = 0
    errors: list[tuple[Path, str]] = []
    for path in paths:
        if stop():
            break
        try:
            outcome = _import_one(session, settings, path, known)
        except (movies.MovieError, OSError, ValueError) as exc:
            text = str(exc)
            errors.append((path, text if str(path) in text else f"{path}: {text}"))
            continue
        if outcome == "new":
            new += 1
            log.info("registered %s", path.name)
        else:
            skipped += 1
    return new, skipped, errors


def _fail(message: str) -> int:
    print(f"appion: error: {message}", file=sys.stderr)
    return 2


def cmd_session_import(args) -> int:
    config = current_config()
    frames_dir = Path(args.frames_dir).resolve()
    if not frames_dir.is_dir():
        return _fail(f"frames directory {frames_dir} does not exist")
    for flag, value in (("--apix", args.apix), ("--kv", args.kv), ("--cs", args.cs), ("--dose", args.dose)):
        if not (value > 0 and value < float("inf")):
            return _fail(f"{flag} must be a positive number, not {value}")
    gain = Path(args.gain).resolve() if args.gain else None
    if gain is not None:
        try:
            movies.read_gain(gain)
        except (movies.MovieError, OSError) as exc:
            return _fail(f"gain reference {gain}: {exc}" if str(gain) not in str(exc) else str(exc))
    settings = ImportSettings(name=args.name, frames_dir=frames_dir, image_dir=config.appion_base / args.name / "rawdata",
                              pixel_size_A=args.apix, voltage_kV=args.kv, cs_mm=args.cs, dose_e_per_A2=args.dose,
                              gain_path=gain, preset_name=args.preset, frame_rotate=args.frame_rotate,
                              frame_flip=args.frame_flip)
    session = store_session(settings)
    known = retrieve_exposure_filenames(session)
    exclude = {gain} if gain else set()
    if not args.watch:
        new, skipped, errors = import_pass(session, settings, find_movie_files(frames_dir, exclude), known)
        for _, message in errors:
            print(f"skipped {message}", file=sys.stderr)
        print(f"session {session.name}: {new} new exposures, {skipped} already registered, {len(errors)} skipped")
        return 0
    return watch_frames_dir(session, settings, exclude, known, args.interval, args.settle)


def watch_frames_dir(session, settings, exclude, known, interval_s: float, settle_s: float) -> int:
    """Register movies as they finish being written, until SIGTERM/SIGINT.

    A movie counts as finished when its size and mtime have not changed for settle_s and it
    decodes completely: a movie still being written is never registered half-written.  A file
    that fails is reported once; it is tried again as soon as it changes, and otherwise every
    retry_s (the failure may have been passing, e.g. a full disk), without being reported again.
    """
    retry_s = max(60.0, 10 * settle_s)
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    seen: dict[Path, tuple[int, float, float]] = {}  # path -> (size, mtime, first time seen like this)
    bad: dict[Path, tuple[int, float, float]] = {}  # failed: path -> (size, mtime, when to retry)
    scan_error = None
    total = 0
    print(f"watching {settings.frames_dir} for session {session.name} (SIGTERM to stop)", flush=True)
    try:
        while not stop["now"]:
            try:
                paths = find_movie_files(settings.frames_dir, exclude)
                scan_error = None
            except OSError as exc:  # directory unmounted or removed: say so once, keep waiting
                if scan_error != str(exc):
                    print(f"cannot list {settings.frames_dir}: {exc.strerror or exc}", file=sys.stderr, flush=True)
                scan_error, paths = str(exc), []
            ready = _find_settled(paths, known, seen, bad, settle_s, time.monotonic())
            if ready:
                new, _, errors = import_pass(session, settings, ready, known, stop=lambda: stop["now"])
                total += new
                for path in ready:
                    seen.pop(path, None)
                for path, message in errors:
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    again = bad.get(path, (None, None))[:2] == (st.st_size, st.st_mtime)
                    bad[path] = (st.st_size, st.st_mtime, time.monotonic() + retry_s)
                    if not again:
                        print(f"skipped {message}", file=sys.stderr, flush=True)
                if new:
                    print(f"session {session.name}: registered {new} (total {total})", flush=True)
            time.sleep(interval_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stopped watching; {total} exposures registered", flush=True)
    return 0


def _find_settled(paths: list[Path], known: set[str], seen: dict, bad: dict, settle_s: float,
                  now: float) -> list[Path]:
    """The unregistered paths whose size and mtime have not changed for settle_s (updates `seen`).

    A path in `bad` is left out until it changes (then it settles afresh) or its retry time comes.
    """
    ready = []
    present = set(paths)
    for table in (seen, bad):
        for gone in [p for p in table if p not in present]:
            del table[gone]
    for path in paths:
        if calc_movie_filename(path) in known:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        sig = (st.st_size, st.st_mtime)
        failed = bad.get(path)
        if failed is not None and failed[:2] == sig:
            if now >= failed[2]:
                ready.append(path)
            continue
        prev = seen.get(path)
        if prev is None or prev[:2] != sig:
            seen[path] = (*sig, now)
        elif now - prev[2] >= settle_s:
            ready.append(path)
    return ready
