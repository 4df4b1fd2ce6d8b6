"""`appion session import` and `appion session set-gain`.

The parsers are appion.base.session.cli; this module runs after appion.base.db.bootstrap().
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from appion.base.db.setup import current_config
from appion.base.io import movies
from appion.base.io.movies.common import MovieHeader
from appion.base.io.movies.references import read_gain_shape
from appion.base.names import BadNameError, check_inside, check_name
from appion.base.session.checks import calc_gain_mismatch, check_gain_for_movies
from appion.base.session.importing import PassResult, RefusalLog, calc_refusal_recording, import_pass
from appion.base.session.retrieve import (find_movie_files, retrieve_exposure_filenames, retrieve_exposure_gains,
                                          retrieve_processed_image_ids, retrieve_session)
from appion.base.session.store import ImportSettings, store_exposures_gain, store_session
from appion.base.session.watch import calc_watch_times, watch_frames_dir

log = logging.getLogger("appion.session")
__all__ = ["cmd_session_import", "cmd_session_set_gain", "import_pass", "PassResult"]


def _fail(message: str) -> int:
    print(f"appion: error: {message}", file=sys.stderr)
    return 2


def _read_gain_shape(gain: Path) -> tuple[int, int]:
    """Shape of a --gain file; MovieError naming the file when it cannot be used."""
    try:
        return read_gain_shape(gain)
    except OSError as exc:
        raise movies.MovieError(f"gain reference {gain}: {exc.strerror or exc}") from None
    except movies.MovieError as exc:
        raise movies.MovieError(str(exc) if str(gain) in str(exc) else f"gain reference {gain}: {exc}") from None


def cmd_session_import(args) -> int:
    config = current_config()
    try:
        name = check_name("--name", args.name)
        image_dir = check_inside(config.appion_base / name / "rawdata", [config.appion_base],
                                 "the session's image directory")
    except BadNameError as exc:
        return _fail(str(exc))
    frames_dir = Path(args.frames_dir).resolve()
    if not frames_dir.is_dir():
        return _fail(f"frames directory {frames_dir} does not exist")
    for flag, value in (("--apix", args.apix), ("--kv", args.kv), ("--cs", args.cs), ("--dose", args.dose)):
        if not (value > 0 and value < float("inf")):
            return _fail(f"{flag} must be a positive number, not {value}")
    try:
        times = calc_watch_times(args.interval, args.settle, getattr(args, "max_wait", None))
    except ValueError as exc:
        return _fail(str(exc))
    gain = Path(args.gain).resolve() if args.gain else None
    exclude = {gain} if gain else set()
    if gain is not None:
        try:
            gain_shape = _read_gain_shape(gain)
        except movies.MovieError as exc:
            return _fail(str(exc))
        try:
            paths = find_movie_files(frames_dir, exclude)
        except OSError as exc:
            return _fail(f"cannot list frames directory {frames_dir}: {exc.strerror or exc}")
        mismatch = check_gain_for_movies(gain, gain_shape, paths, args.frame_rotate, args.frame_flip)
        if mismatch:
            return _fail(mismatch)
    settings = ImportSettings(name=name, frames_dir=frames_dir, image_dir=image_dir,
                              pixel_size_A=args.apix, voltage_kV=args.kv, cs_mm=args.cs, dose_e_per_A2=args.dose,
                              gain_path=gain, preset_name=args.preset, frame_rotate=args.frame_rotate,
                              frame_flip=args.frame_flip)
    session = store_session(settings)
    known = retrieve_exposure_filenames(session)
    not_recorded = calc_refusal_recording(session)
    if args.watch:
        return watch_frames_dir(session, settings, exclude, known, times, not_recorded)
    refusals = RefusalLog(session.id, not_recorded)
    result = import_pass(session, settings, find_movie_files(frames_dir, exclude), known, refusals=refusals)
    for path, reason in result.refused:
        refusals.refuse(path, reason)
    print(f"session {session.name}: {result.new} new exposures, {result.known} already registered, "
          f"{len(result.refused)} refused")
    return 0


def _header_of(row: dict) -> MovieHeader:
    """What a registered exposure's frames are like, for the gain check (EER as read at sampling 1)."""
    fmt = "eer" if row["eer"] else "tiff"
    return MovieHeader(row["filename"], fmt, 0, 0, tuple(int(v) for v in row["shape_yx"]), "", None)


def cmd_session_set_gain(args) -> int:
    """Replace the gain reference of a session's exposures that are not processed yet (no aligned frames).

    The new gain must fit every exposure it is given to (checked first; nothing is changed otherwise).
    """
    from appion.base.config import ConfigError
    from appion.base.db import use_appion_database
    from appion.base.db import models as m

    try:
        name = check_name("--name", args.name)
    except BadNameError as exc:
        return _fail(str(exc))
    session = retrieve_session(name)
    if session is None:
        return _fail(f"--name: session {name!r} not found (import it with `appion session import`)")
    gain = Path(args.gain).resolve()
    try:
        gain_shape = _read_gain_shape(gain)
    except movies.MovieError as exc:
        return _fail(str(exc))
    rows = retrieve_exposure_gains(session.id)
    if not rows:
        return _fail(f"session {name!r} has no exposures to give a gain to")
    project_id = (m.ProjectExperiment.objects.filter(session_id=session.id).order_by("-id")
                  .values_list("project_id", flat=True).first())
    try:
        use_appion_database(project_id)
    except ConfigError as exc:
        return _fail(f"cannot tell which exposures are processed already: {exc}")
    processed = retrieve_processed_image_ids([r["id"] for r in rows])
    todo = [r for r in rows if r["id"] not in processed]
    for row in todo:
        if row["shape_yx"] is None or None in row["shape_yx"]:
            return _fail(f"exposure {row['filename']} has no frame size recorded; cannot check --gain against it")
        mismatch = calc_gain_mismatch(gain, gain_shape, _header_of(row), row["frame_rotate"], row["frame_flip"])
        if mismatch:
            return _fail(f"--gain {mismatch} (exposure {row['filename']}; nothing was changed)")
    if todo:
        norm = store_exposures_gain(session, gain, [r["id"] for r in todo])
        print(f"session {name}: gain reference {gain} ({norm.image} in {session.image_path}) now used by "
              f"{len(todo)} exposures")
    else:
        print(f"session {name}: every exposure is processed already; no gain changed")
    if processed:
        print(f"kept the former gain of {len(processed)} processed exposures (their results were computed with it)")
    print("give later imports the same --gain (a running `appion session import --watch` keeps the gain it was "
          "started with: restart it with --gain)")
    return 0
