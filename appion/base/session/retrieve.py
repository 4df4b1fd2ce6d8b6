"""Read sessions, exposures and movie metadata (database and files)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from appion.base.io import movies
from appion.base.db import models as m
from appion.base.io.metadata import ExposureMetadata, MetadataError, calc_sidecar_names, parse_epu_xml, parse_mdoc

MOVIE_SUFFIXES = (".tif", ".tiff", ".mrc", ".mrcs", ".eer")
log = logging.getLogger("appion.session")


def find_movie_files(frames_dir: Path, exclude: set[Path] = frozenset()) -> list[Path]:
    """Movie files in acquisition order (modification time, then name); hidden/partial files skipped."""
    found = []
    with os.scandir(frames_dir) as it:
        for entry in it:
            name = entry.name
            if name.startswith(".") or not entry.is_file() or not name.lower().endswith(MOVIE_SUFFIXES):
                continue
            path = Path(entry.path)
            try:
                if path.resolve() in exclude:
                    continue
                found.append((entry.stat().st_mtime, name, path))
            except FileNotFoundError:  # removed or renamed while listing
                continue
    return [p for _, _, p in sorted(found)]


def read_sidecar_metadata(movie_path: Path) -> ExposureMetadata:
    """SerialEM .mdoc or EPU .xml found next to the movie (an empty record when there is none).

    A sidecar that cannot be read or parsed is reported (logged with its name) and ignored, so
    the movie still imports with the flags' values rather than being skipped.
    """
    for name in calc_sidecar_names(movie_path.name):
        side = movie_path.with_name(name)
        if not side.exists():
            continue
        try:
            data = side.read_bytes()
            if name.endswith(".xml"):
                return parse_epu_xml(data, source=str(side))
            return parse_mdoc(data.decode("utf-8", errors="replace"), source=str(side))
        except OSError as exc:
            log.warning("ignoring metadata file %s: %s", side, exc.strerror or exc)
        except MetadataError as exc:  # its message names the file
            log.warning("ignoring metadata file %s", exc)
    return ExposureMetadata()


def read_exposure_metadata(movie_path: Path, flags: ExposureMetadata) -> tuple[movies.MovieHeader, ExposureMetadata]:
    """The movie's header plus its metadata: sidecar files and header values win over flags."""
    header = movies.read_movie_header(movie_path)
    meta = flags.overlay(read_sidecar_metadata(movie_path))
    if header.pixel_size_A:
        meta = meta.overlay(ExposureMetadata(pixel_size_A=header.pixel_size_A))
    meta = meta.overlay(ExposureMetadata(n_frames=header.n_frames))
    return header, meta


def retrieve_session(name: str):
    return m.SessionData.objects.filter(name=name).order_by("-id").first()


def retrieve_exposure_filenames(session) -> set[str]:
    return set(m.AcquisitionImageData.objects.filter(session_id=session.id).values_list("filename", flat=True))


def calc_movie_filename(movie_path: Path) -> str:
    """Leginon's image filename for a movie `<filename>.frames.<ext>` (or the bare stem)."""
    name = movie_path.name
    for ext in MOVIE_SUFFIXES:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name[: -len(".frames")] if name.endswith(".frames") else name


# ---- processing loop: incremental exposure polling and run state (appion.loop.core)
REJECTED_VIEWER_STATUS = ("hidden", "trash")


def retrieve_preset_ids(session_id: int, preset_name: str) -> list[int]:
    """Every PresetData row of that name in the session (Leginon writes a new row when a preset changes)."""
    return list(m.PresetData.objects.filter(session_id=session_id, name=preset_name).values_list("id", flat=True))


def retrieve_new_images(session_id: int, after_id: int, preset_ids: list[int] | None) -> list[dict]:
    """Exposures registered after DEF_id `after_id` (oldest first): one indexed range query per poll."""
    rows = m.AcquisitionImageData.objects.filter(session_id=session_id, id__gt=after_id)
    if preset_ids is not None:
        rows = rows.filter(preset_id__in=preset_ids)
    return list(rows.order_by("id").values("id", "filename", "timestamp", "camera_id", "scope_id", "preset_id",
                                           "norm_id", "dark_id", "corrector_plan_id", "image"))


def retrieve_rejected_image_ids(image_ids: list[int]) -> set[int]:
    """Images a person rejected: newest viewer status hidden/trash, or newest assessment 'do not keep'."""
    if not image_ids:
        return set()
    rejected: set[int] = set()
    newest_status: dict[int, str] = {}
    for image_id, status in (m.ViewerImageStatus.objects.filter(image_id__in=image_ids)
                             .order_by("id").values_list("image_id", "status")):
        newest_status[image_id] = status
    rejected |= {i for i, s in newest_status.items() if s in REJECTED_VIEWER_STATUS}
    newest_keep: dict[int, bool] = {}
    for image_id, keep in (m.ApAssessmentData.objects.filter(image_id__in=image_ids)
                           .order_by("id").values_list("image_id", "selectionkeep")):
        newest_keep[image_id] = keep
    rejected |= {i for i, keep in newest_keep.items() if keep is False or keep == 0}
    return rejected


def retrieve_session_done(session_id: int) -> bool:
    """Leginon marks a finished session with a SessionDoneLog row (done=True)."""
    row = m.SessionDoneLog.objects.filter(session_id=session_id).order_by("-id").first()
    return bool(row and row.done)


def _by_id(model, ids) -> dict:
    ids = {i for i in ids if i is not None}
    return {row.id: row for row in model.objects.filter(id__in=ids)} if ids else {}


def retrieve_image_context(image_rows: list[dict]) -> dict:
    """The rows around a batch of exposures (cameras, scopes, presets, instruments, gains, defects,
    pixel-size calibrations), fetched with one query per table rather than per exposure."""
    cameras = _by_id(m.CameraEMData, (r["camera_id"] for r in image_rows))
    scopes = _by_id(m.ScopeEMData, (r["scope_id"] for r in image_rows))
    presets = _by_id(m.PresetData, (r["preset_id"] for r in image_rows))
    norms = _by_id(m.NormImageData, (r["norm_id"] for r in image_rows))
    darks = _by_id(m.DarkImageData, (r["dark_id"] for r in image_rows))
    plans = _by_id(m.CorrectorPlanData, (r["corrector_plan_id"] for r in image_rows))
    tems = _by_id(m.InstrumentData, [s.tem_id for s in scopes.values()] + [p.tem_id for p in presets.values()])
    mags = {s.magnification for s in scopes.values()} | {p.magnification for p in presets.values()}
    calibrations = list(m.PixelSizeCalibrationData.objects.filter(magnification__in=[x for x in mags if x])
                        .order_by("-id"))
    return {"cameras": cameras, "scopes": scopes, "presets": presets, "norms": norms, "darks": darks,
            "plans": plans, "tems": tems, "calibrations": calibrations}


def calc_pixel_size_m(calibrations, magnification, tem_id, ccdcamera_id, before) -> float | None:
    """Leginon's rule: the newest calibration for that magnification, TEM and camera older than the image
    (falling back to any camera / any time when none matches exactly)."""
    def pick(rows):
        return next((c.pixelsize for c in rows), None)

    rows = [c for c in calibrations if c.magnification == magnification]
    exact = [c for c in rows if c.tem_id == tem_id and c.ccdcamera_id == ccdcamera_id]
    older = [c for c in exact if before is None or c.timestamp is None or c.timestamp <= before]
    return pick(older) or pick(exact) or pick([c for c in rows if c.tem_id == tem_id]) or pick(rows)


def retrieve_images_by_filename(session_id: int, filenames: list[str]) -> dict[str, int]:
    """filename → newest image id of that name in the session."""
    rows = m.AcquisitionImageData.objects.filter(session_id=session_id, filename__in=filenames).order_by("id")
    return dict(rows.values_list("filename", "id"))
