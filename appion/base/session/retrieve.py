"""Read sessions, exposures and movie metadata (database and files)."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from appion.base.io import movies
from appion.base.db import models as m
from appion.base.io.metadata import ExposureMetadata, MetadataError, calc_sidecar_names, parse_epu_xml, parse_mdoc

MOVIE_SUFFIXES = (".tif", ".tiff", ".mrc", ".mrcs", ".eer")
# Gain, dark and defect references that sit among the movies are not exposures: SerialEM's CountRef_/SuperRef_
# files, EPU/Falcon gain files, Leginon-style norm/dark images (a token of the name, e.g. `gain.mrc`,
# `K3_gain_ref.tif`, `20250108_dark.mrc`).  Leginon's own movies (`<name>.frames.<ext>`) are never references.
REFERENCE_NAME = re.compile(r"(^|[._-])(gain|norm|dark|bright|defects?|countref|countcdsref|superref|superresref)"
                            r"([._-]|$)", re.IGNORECASE)
log = logging.getLogger("appion.session")


def is_reference_name(name: str) -> bool:
    """True for a file name that marks a gain/dark/defect reference rather than a movie (see REFERENCE_NAME)."""
    if ".frames." in name:
        return False
    return REFERENCE_NAME.search(name) is not None


def find_movie_files(frames_dir: Path, exclude: set[Path] = frozenset()) -> list[Path]:
    """Movie files in acquisition order (modification time, then name).

    Skipped: hidden/partial files, other suffixes, the paths in `exclude` (e.g. the --gain file) and files named
    like references (is_reference_name).
    """
    found = []
    with os.scandir(frames_dir) as it:
        for entry in it:
            name = entry.name
            if name.startswith(".") or not name.lower().endswith(MOVIE_SUFFIXES) or is_reference_name(name):
                continue
            path = Path(entry.path)
            try:
                if not entry.is_file() or path.resolve() in exclude:
                    continue
                found.append((entry.stat().st_mtime, name, path))
            except FileNotFoundError:  # removed or renamed while listing
                continue
    return [p for _, _, p in sorted(found)]


def read_sidecar_metadata(movie_path: Path) -> ExposureMetadata:
    """SerialEM .mdoc or EPU .xml found next to the movie (an empty record when there is none).

    A sidecar that cannot be read or parsed is reported (logged with its name) and ignored, so
    the movie still imports with the flags' values rather than being skipped.  `source` is the sidecar's path.
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


def calc_exposure_metadata(header: movies.MovieHeader, sidecar: ExposureMetadata,
                           flags: ExposureMetadata) -> ExposureMetadata:
    """The movie's metadata: sidecar values win over flags, the header's pixel size and frame count over both.

    The frame count is the file's own (the caller has checked it against the sidecar's: read_movie_completeness).
    """
    meta = flags.overlay(sidecar)
    if header.pixel_size_A:
        meta = meta.overlay(ExposureMetadata(pixel_size_A=header.pixel_size_A))
    return meta.overlay(ExposureMetadata(n_frames=header.n_frames))


def read_exposure_metadata(movie_path: Path, flags: ExposureMetadata) -> tuple[movies.MovieHeader, ExposureMetadata]:
    """The movie's header plus its metadata: sidecar files and header values win over flags."""
    header = movies.read_movie_header(movie_path)
    return header, calc_exposure_metadata(header, read_sidecar_metadata(movie_path), flags)


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


# ---- session import: refusals and gain replacement
@dataclass(frozen=True)
class ImportRefusal:
    """A movie `appion session import` did not register: the newest reason, first/last time (Unix seconds), count."""

    path: str
    reason: str
    first_seen: float
    last_seen: float
    count: int


def retrieve_import_refusals(session_id: int) -> list[ImportRefusal]:
    """The session's movies that import refused and that are still not registered, most recently refused first.

    Reads the appion database (appion.base.db.use_appion_database must have chosen it, as for the loop's rows).
    """
    rows = (m.ApImportRefusalData.objects.filter(session_id=session_id).order_by("-last_seen", "-id")
            .values_list("path", "reason", "first_seen", "last_seen", "count"))
    return [ImportRefusal(path, reason or "", first or 0.0, last or 0.0, int(count or 0))
            for path, reason, first, last, count in rows]


def retrieve_exposure_gains(session_id: int) -> list[dict]:
    """Every exposure of the session with what a gain must fit: id, filename, frame size, orientation, EER, gain."""
    images = list(m.AcquisitionImageData.objects.filter(session_id=session_id).order_by("id")
                  .values("id", "filename", "camera_id", "norm_id"))
    cameras = _by_id(m.CameraEMData, (r["camera_id"] for r in images))
    out = []
    for row in images:
        cam = cameras.get(row["camera_id"])
        out.append({**row, "shape_yx": (cam.dimension_y, cam.dimension_x) if cam else None,
                    "frame_rotate": int(cam.frame_rotate or 0) if cam else 0,
                    "frame_flip": int(bool(cam.frame_flip)) if cam else 0,
                    "eer": bool(cam.eer_frames) if cam else False})
    return out


def retrieve_processed_image_ids(image_ids: list[int]) -> set[int]:
    """Exposures whose frames were already aligned (an ApDDAlignImagePairData row, classic or from the loop)."""
    if not image_ids:
        return set()
    return set(m.ApDDAlignImagePairData.objects.filter(source_id__in=image_ids)
               .values_list("source_id", flat=True).distinct())
