"""`appion db`, `appion session`, `appion simulate` and `appion demo`."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from appion.base.io import movies
from appion.base.db import current_config
from appion.base.db import models as m
from appion.base.db.schema import calc_schema_report, create_missing_tables
from appion.base.io.metadata import ExposureMetadata
from appion.base.session.retrieve import (calc_movie_filename, find_movie_files, read_exposure_metadata,
                                  retrieve_exposure_filenames)
from appion.base.simulate.calc import MovieParams
from appion.base.simulate.store import write_simulated_session
from appion.base.session.store import ImportSettings, store_exposure, store_session

log = logging.getLogger("appion.session")


# ---------------------------------------------------------------- db
UNNAMED_APPION = ("no appion database is configured (it is found per project through processingdb), "
                  "so its tables were not {}: set [database] appion to include them")


def cmd_db_init(args) -> int:
    config = current_config()
    created = create_missing_tables()
    where = config.leginon.safe if config.embedded else (
        f"{config.leginon.safe}, {config.project.safe}" + (f", {config.appion.safe}" if config.appion else ""))
    print(f"created {len(created)} tables in {where}" + (f": {', '.join(created)}" if created else ""))
    if config.appion is None and not config.embedded:
        print(UNNAMED_APPION.format("created"))
    return 0


def cmd_db_check(args) -> int:
    report = calc_schema_report()
    if report.unnamed_aliases:
        print(UNNAMED_APPION.format("checked"))
    for alias, tables in report.missing_tables.items():
        for t in tables:
            print(f"missing table {t} ({alias})")
    for table, cols in report.missing_columns.items():
        print(f"table {table} lacks columns: {', '.join(cols)}")
    if report.complete:
        print("schema complete")
        return 0
    return 1


# ---------------------------------------------------------------- session import
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


# ---------------------------------------------------------------- simulate
def cmd_simulate_session(args) -> int:
    base = MovieParams(shape=(args.size, args.size), pixel_size_A=args.apix, voltage_kV=args.kv, cs_mm=args.cs,
                       n_frames=args.frames, dose_per_frame_e_per_A2=args.dose_per_frame,
                       drift_total_px=args.drift, gain_sigma=args.gain_sigma, bfactor_A2=args.bfactor)

    def progress(i, n, path):
        print(f"[{i}/{n}] {path.name}", flush=True)

    paths = write_simulated_session(args.out, args.n, base, fmt=args.format, name=args.name,
                                    micrographs=args.micrographs, seed=args.seed, progress=progress)
    print(f"wrote {len(paths)} movies to {Path(args.out) / 'frames'}")
    return 0


# ---------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """Simulate a small session, import it and process it on the embedded defaults."""
    config = current_config()
    out = config.home / "demo"
    frames = out / "frames"
    if not frames.exists() or not any(frames.glob("*.frames.*")):
        print(f"simulating {args.n} movies in {out}", flush=True)
        sim = argparse.Namespace(out=out, n=args.n, size=args.size, apix=1.0, kv=300.0, cs=2.7, frames=args.frames,
                                 dose_per_frame=1.5, drift=12.0, gain_sigma=0.0, bfactor=60.0, format="both",
                                 name=args.name, micrographs=False, seed=1)
        cmd_simulate_session(sim)
    cmd_db_init(args)
    imp = argparse.Namespace(name=args.name, frames_dir=str(frames), apix=1.0, kv=300.0, cs=2.7,
                             dose=1.5 * args.frames, gain=None, preset="en", frame_rotate=0, frame_flip=0,
                             watch=False, interval=1.0, settle=2.0)
    cmd_session_import(imp)
    run_demo_processing = getattr(sys.modules.get("appion.loop.core"), "run_demo", None)
    if run_demo_processing is not None:
        return run_demo_processing(args.name)
    print_session(args.name)
    return 0


def print_session(name: str) -> None:
    session = m.SessionData.objects.filter(name=name).order_by("-id").first()
    images = list(m.AcquisitionImageData.objects.filter(session_id=session.id).order_by("id"))
    print(f"session {name}: {len(images)} exposures in {session.frame_path}")
    print(f"{'id':>5}  {'filename':<24} {'frames':>6} {'apix':>6} {'dose e/A2':>9} {'kV':>5}")
    for img in images:
        cam = m.CameraEMData.objects.get(id=img.camera_id)
        preset = m.PresetData.objects.get(id=img.preset_id)
        scope = m.ScopeEMData.objects.get(id=img.scope_id)
        cal = m.PixelSizeCalibrationData.objects.filter(magnification=preset.magnification,
                                                        tem_id=preset.tem_id).order_by("-id").first()
        print(f"{img.id:>5}  {img.filename:<24} {cam.nframes:>6} {cal.pixelsize * 1e10:>6.3f} "
              f"{preset.dose / 1e20:>9.2f} {scope.high_tension / 1e3:>5.0f}")


# ---------------------------------------------------------------- parsers
def add_parser(subparsers) -> None:
    db = subparsers.add_parser("db", help="create or check the database schema").add_subparsers(dest="db_cmd",
                                                                                                  required=True)
    db.add_parser("init", help="create missing tables (never alters existing ones)").set_defaults(func=cmd_db_init)
    db.add_parser("check", help="report missing tables and columns").set_defaults(func=cmd_db_check)

    sess = subparsers.add_parser("session", help="register exposures").add_subparsers(dest="session_cmd", required=True)
    imp = sess.add_parser("import", help="register movies of a directory as a Leginon-like session")
    imp.add_argument("--name", required=True)
    imp.add_argument("--frames-dir", required=True)
    imp.add_argument("--apix", type=float, required=True, help="pixel size in Å (file metadata wins)")
    imp.add_argument("--kv", type=float, required=True)
    imp.add_argument("--cs", type=float, required=True, help="spherical aberration in mm")
    imp.add_argument("--dose", type=float, required=True, help="total dose per exposure in e/Å²")
    imp.add_argument("--gain", help="gain reference (MRC or TIFF)")
    imp.add_argument("--preset", default="en")
    imp.add_argument("--frame-rotate", type=int, default=0, choices=range(4))
    imp.add_argument("--frame-flip", type=int, default=0, choices=(0, 1, 2))
    imp.add_argument("--watch", action="store_true", help="keep registering new movies until SIGTERM")
    imp.add_argument("--interval", type=float, default=1.0, help="seconds between directory scans (--watch)")
    imp.add_argument("--settle", type=float, default=2.0, help="seconds a file must stay unchanged (--watch)")
    imp.set_defaults(func=cmd_session_import)

    sim = subparsers.add_parser("simulate", help="write simulated data with known truth").add_subparsers(
        dest="sim_cmd", required=True)
    ss = sim.add_parser("session", help="a session of movies (+ truth JSON, optional micrographs)")
    ss.add_argument("--out", required=True, type=Path)
    ss.add_argument("--n", type=int, default=12)
    ss.add_argument("--size", type=int, default=1024)
    ss.add_argument("--frames", type=int, default=16)
    ss.add_argument("--apix", type=float, default=1.0)
    ss.add_argument("--kv", type=float, default=300.0)
    ss.add_argument("--cs", type=float, default=2.7)
    ss.add_argument("--dose-per-frame", type=float, default=1.5)
    ss.add_argument("--drift", type=float, default=12.0)
    ss.add_argument("--gain-sigma", type=float, default=0.0)
    ss.add_argument("--bfactor", type=float, default=60.0)
    ss.add_argument("--format", choices=("tiff", "mrc", "both"), default="tiff")
    ss.add_argument("--name", default="sim")
    ss.add_argument("--micrographs", action="store_true")
    ss.add_argument("--seed", type=int, default=0)
    ss.set_defaults(func=cmd_simulate_session)

    demo = subparsers.add_parser("demo", help="simulate, import and process a small session on the embedded defaults")
    demo.add_argument("--name", default="demo")
    demo.add_argument("--n", type=int, default=8)
    demo.add_argument("--size", type=int, default=1024)
    demo.add_argument("--frames", type=int, default=16)
    demo.set_defaults(func=cmd_demo)
