"""The loop process's database side: waiting out outages, and reading what workers need per exposure.

Only the loop process imports this, after appion.base.db.bootstrap() (workers never touch the database).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from appion.base.db.retry import DatabaseRetry as BaseDatabaseRetry
from appion.base.db.retry import close_db_connections, db_errors  # noqa: F401 (the loop's names for them)
from appion.base.exposure import ExposureInput
from appion.base.session import retrieve as r
from appion.loop.calc import calc_epoch

log = logging.getLogger("appion.loop")


class DatabaseRetry(BaseDatabaseRetry):
    """appion.base.db.retry.DatabaseRetry (waits out outages, gives up when `should_give_up()` says so: a stop
    request whose grace has run out), which also gives up when the database has not answered once since this
    object was made and `start_wait_s` have passed: a mistyped host or port must not make a loop wait forever."""

    def __init__(self, should_give_up=lambda: False, start_wait_s: float | None = None):
        self.stop_asked = should_give_up
        self.start_wait_s = start_wait_s
        self.created = time.monotonic()
        self.answered = False
        super().__init__(should_give_up=self._give_up, report=log.warning)

    def _give_up(self) -> bool:
        if self.stop_asked():
            return True
        return (not self.answered and self.start_wait_s is not None
                and time.monotonic() - self.created >= self.start_wait_s)

    def __call__(self, fn, *args, what: str = "database work", **kwargs):
        try:
            result = super().__call__(fn, *args, what=what, **kwargs)
        except db_errors():
            if not self.answered:
                log.error("the database did not answer since the start (%.0f s); giving up",
                          time.monotonic() - self.created)
            raise
        self.answered = True
        return result


class MissingPhysics(ValueError):
    """An exposure's optics are not recorded (pixel size, voltage, Cs); the message names the field."""


def calc_exposure_physics(row: dict, ctx: dict) -> tuple[float, float, float]:
    """(pixel size Å of the recorded frames, voltage kV, Cs mm) of one exposure, or MissingPhysics naming the
    field that is missing (never a default: a wrong value would give wrong results without a word)."""
    cam = ctx["cameras"].get(row["camera_id"])
    scope = ctx["scopes"].get(row["scope_id"])
    preset = ctx["presets"].get(row["preset_id"])
    tem = ctx["tems"].get(scope.tem_id if scope else None) or ctx["tems"].get(preset.tem_id if preset else None)
    mag = (scope.magnification if scope else None) or (preset.magnification if preset else None)
    name = row["filename"]
    if not mag:
        raise MissingPhysics(f"magnification (ScopeEMData.magnification / PresetData.magnification) missing for "
                             f"exposure {name}: the pixel size cannot be looked up")
    px_m = r.calc_pixel_size_m(ctx["calibrations"], mag, tem.id if tem else None,
                               cam.ccdcamera_id if cam else None, row["timestamp"])
    if not px_m or px_m <= 0:
        raise MissingPhysics(f"pixel size (PixelSizeCalibrationData for magnification {mag}) missing for exposure "
                             f"{name}")
    if scope is None or not scope.high_tension:
        raise MissingPhysics(f"accelerating voltage (ScopeEMData.high tension) missing for exposure {name}")
    if tem is None or tem.cs is None:
        which = f" of TEM {tem.name!r}" if tem is not None else " (no TEM recorded)"
        raise MissingPhysics(f"spherical aberration (InstrumentData.cs{which}) missing for exposure {name}")
    binning = cam.binning_x if cam and cam.binning_x else 1
    return px_m * binning * 1e10, scope.high_tension / 1e3, tem.cs * 1e3


def retrieve_exposure_inputs(session, image_rows: list[dict]) -> tuple[dict[int, ExposureInput], dict[int, str]]:
    """ExposureInput per image id for a batch of AcquisitionImageData rows (a handful of queries per batch),
    and the exposures that cannot be processed: image id → why (e.g. its pixel size is not recorded)."""
    ctx = r.retrieve_image_context(image_rows)
    frame_dir = Path(session.frame_path or "")
    image_dir = Path(session.image_path or "")
    out, problems = {}, {}
    for row in image_rows:
        cam = ctx["cameras"].get(row["camera_id"])
        scope = ctx["scopes"].get(row["scope_id"])
        preset = ctx["presets"].get(row["preset_id"])
        try:
            pixel_size_A, voltage_kV, cs_mm = calc_exposure_physics(row, ctx)
        except MissingPhysics as exc:
            problems[row["id"]] = str(exc)
            continue
        frames_name = (cam.frames_name if cam and cam.frames_name else f"{row['filename']}.frames.tif")
        norm = ctx["norms"].get(row["norm_id"])
        dark = ctx["darks"].get(row["dark_id"])
        plan = ctx["plans"].get(row["corrector_plan_id"])
        ts = row["timestamp"]
        out[row["id"]] = ExposureInput(
            image_id=row["id"], filename=row["filename"], movie_path=str(frame_dir / frames_name),
            image_dir=str(image_dir), preset_name=preset.name if preset else "",
            pixel_size_A=pixel_size_A, voltage_kV=voltage_kV, cs_mm=cs_mm,
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
    return out, problems


def retrieve_exposure_rows(session_id: int, image_ids: list[int]) -> list[dict]:
    """The AcquisitionImageData values retrieve_exposure_inputs needs, for given exposures (re-reading one)."""
    from appion.base.db import models as m

    return list(m.AcquisitionImageData.objects.filter(session_id=session_id, id__in=list(image_ids)).order_by("id")
                .values("id", "filename", "timestamp", "camera_id", "scope_id", "preset_id", "norm_id", "dark_id",
                        "corrector_plan_id", "image"))
