"""The loop process's database side: waiting out outages, and reading what workers need per exposure.

Only the loop process imports this, after appion.base.db.bootstrap() (workers never touch the database).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from django.db import connections
from django.db.utils import InterfaceError, OperationalError

from appion.base.exposure import ExposureInput
from appion.base.session import retrieve as r
from appion.loop.calc import calc_epoch, one_line

log = logging.getLogger("appion.loop")


def db_errors() -> tuple[type[Exception], ...]:
    """The errors that mean the database is unreachable (as opposed to bad data)."""
    return (OperationalError, InterfaceError)


def close_db_connections() -> None:
    """Drop every (possibly broken) connection; Django reconnects on next use."""
    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except Exception:  # a dead server makes close() raise too; the connection is gone either way
            conn.connection = None


class DatabaseRetry:
    """Run database work, waiting out outages: on OperationalError/InterfaceError close the connections,
    back off (0.5 s doubling to 10 s) and try again.  Logs the outage once and its end."""

    def __init__(self, should_give_up=lambda: False):
        self.should_give_up = should_give_up
        self.outage_started: float | None = None
        self.outages = 0

    def __call__(self, fn, *args, what: str = "database work", **kwargs):
        delay = 0.5
        errors = db_errors()
        while True:
            try:
                result = fn(*args, **kwargs)
            except errors as exc:
                if self.outage_started is None:
                    self.outage_started = time.monotonic()
                    self.outages += 1
                    log.warning("database unavailable during %s (%s); waiting and reconnecting", what, one_line(exc))
                close_db_connections()
                if self.should_give_up():
                    raise
                time.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            if self.outage_started is not None:
                log.warning("database reachable again after %.1f s; continuing", time.monotonic() - self.outage_started)
                self.outage_started = None
            return result


def retrieve_exposure_inputs(session, image_rows: list[dict]) -> dict[int, ExposureInput]:
    """ExposureInput per image id for a batch of AcquisitionImageData rows (a handful of queries per batch)."""
    ctx = r.retrieve_image_context(image_rows)
    frame_dir = Path(session.frame_path or "")
    image_dir = Path(session.image_path or "")
    out = {}
    for row in image_rows:
        cam = ctx["cameras"].get(row["camera_id"])
        scope = ctx["scopes"].get(row["scope_id"])
        preset = ctx["presets"].get(row["preset_id"])
        tem = ctx["tems"].get(scope.tem_id if scope else None) or ctx["tems"].get(preset.tem_id if preset else None)
        mag = (scope.magnification if scope else None) or (preset.magnification if preset else None)
        px_m = r.calc_pixel_size_m(ctx["calibrations"], mag, tem.id if tem else None,
                                   cam.ccdcamera_id if cam else None, row["timestamp"])
        binning = (cam.binning_x if cam and cam.binning_x else 1)
        frames_name = (cam.frames_name if cam and cam.frames_name else f"{row['filename']}.frames.tif")
        norm = ctx["norms"].get(row["norm_id"])
        dark = ctx["darks"].get(row["dark_id"])
        plan = ctx["plans"].get(row["corrector_plan_id"])
        ts = row["timestamp"]
        out[row["id"]] = ExposureInput(
            image_id=row["id"], filename=row["filename"], movie_path=str(frame_dir / frames_name),
            image_dir=str(image_dir), preset_name=preset.name if preset else "",
            pixel_size_A=(px_m or 1e-10) * binning * 1e10,
            voltage_kV=(scope.high_tension or 300000) / 1e3 if scope else 300.0,
            cs_mm=(tem.cs * 1e3) if tem and tem.cs is not None else 2.7,
            dose_e_per_A2=(preset.dose / 1e20) if preset and preset.dose else None,
            n_frames=cam.nframes if cam else None,
            gain_path=str(image_dir / norm.image) if norm and norm.image else None,
            dark_path=str(image_dir / dark.image) if dark and dark.image else None,
            frame_rotate=int(cam.frame_rotate or 0) if cam else 0,
            frame_flip=int(bool(cam.frame_flip)) if cam else 0,
            defects=(plan.bad_rows, plan.bad_cols, plan.bad_pixels) if plan else (None, None, None),
            nominal_defocus_m=scope.defocus if scope else None,
            tilt_deg=math.degrees(scope.stage_a or 0.0) if scope else 0.0,
            arrived=calc_epoch(ts),
        )
    return out
