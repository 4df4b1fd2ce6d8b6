"""Write sessions and exposures the way Leginon does, so Appion tools and viewers see them."""
from __future__ import annotations

import getpass
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from appion.base.db import models as m
from appion.base.db.router import alias_for
from appion.base.db.sinedon import insert
from appion.base.metadata import ExposureMetadata
from appion.base.movies import MovieHeader
from appion.base.retrieve import calc_movie_filename

DEFAULT_PROJECT = "appion"


@dataclass(frozen=True)
class ImportSettings:
    """What `appion session import` was told; per-file metadata overrides these."""

    name: str
    frames_dir: Path
    image_dir: Path
    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    dose_e_per_A2: float
    gain_path: Path | None = None
    preset_name: str = "en"
    frame_rotate: int = 0
    frame_flip: int = 0


def store_session(settings: ImportSettings, project_name: str = DEFAULT_PROJECT):
    """Session row (get-or-create by name) linked to a project, as Leginon + myamiweb would have it."""
    user, _ = insert(m.UserData, username=getpass.getuser())
    session = m.SessionData.objects.filter(name=settings.name).order_by("-id").first()
    if session is None:
        session, _ = insert(m.SessionData, name=settings.name, user=user, image_path=str(settings.image_dir),
                            frame_path=str(settings.frames_dir), comment="imported by appion", hidden=False)
    project = m.Project.objects.filter(name=project_name).order_by("-id").first()
    if project is None:
        project, _ = insert(m.Project, name=project_name, short_description="sessions imported by appion")
    insert(m.ProjectExperiment, project=project, session_id=session.id)
    return session


def store_gain(session, gain_path: Path):
    """NormImageData for the gain reference (one per gain file, shared by every exposure).

    The file is copied into the session's image path, where Leginon keeps its references.
    """
    image_dir = Path(session.image_path)
    image_dir.mkdir(parents=True, exist_ok=True)
    target = image_dir / gain_path.name
    if not target.exists():
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(gain_path, tmp)
        tmp.replace(target)
    stem = target.name.rsplit(".", 1)[0]
    norm, _ = insert(m.NormImageData, session=session, image=target.name, filename=stem)
    return norm


def store_exposure(session, settings: ImportSettings, movie_path: Path, header: MovieHeader, meta: ExposureMetadata,
                   gain_path: Path | None):
    """Register one movie as a Leginon exposure; returns (AcquisitionImageData, created).

    Everything for one movie is written in one transaction, the image row last, so a
    killed import never leaves an exposure half-registered.
    """
    filename = calc_movie_filename(movie_path)
    existing = m.AcquisitionImageData.objects.filter(session_id=session.id, filename=filename).order_by("-id").first()
    if existing is not None:
        return existing, False
    voltage_V = meta.voltage_V or settings.voltage_kV * 1e3
    pixel_size_A = meta.pixel_size_A or settings.pixel_size_A
    dose = meta.dose_e_per_A2 if meta.dose_e_per_A2 is not None else settings.dose_e_per_A2
    # A magnification is needed to look the pixel size up the way Leginon does; derive a stable one if absent.
    mag = meta.magnification or int(round(1e5 / pixel_size_A))
    ny, nx = header.shape_yx
    with transaction.atomic(using=alias_for(m.AcquisitionImageData)):
        tem, _ = insert(m.InstrumentData, name="imported-tem", hostname="appion-import", cs=settings.cs_mm * 1e-3)
        cam, _ = insert(m.InstrumentData, name=meta.camera_name or "imported-camera", hostname="appion-import")
        insert(m.PixelSizeCalibrationData, session=session, tem=tem, ccdcamera=cam, magnification=mag,
               pixelsize=pixel_size_A * 1e-10, comment="from session import")
        preset, _ = insert(m.PresetData, session=session, tem=tem, ccdcamera=cam, name=settings.preset_name,
                           magnification=mag, dose=dose * 1e20, dimension_x=nx, dimension_y=ny, binning_x=1,
                           binning_y=1, offset_x=0, offset_y=0, save_frames=True,
                           exposure_time=(meta.exposure_time_s or 0.0) * 1e3 or None)
        scope, _ = insert(m.ScopeEMData, session=session, tem=tem, magnification=mag, defocus=meta.defocus_m,
                          high_tension=int(round(voltage_V)), stage_a=meta.tilt_rad)
        camera, _ = insert(m.CameraEMData, session=session, ccdcamera=cam, dimension_x=nx, dimension_y=ny,
                           binning_x=1, binning_y=1, offset_x=0, offset_y=0, nframes=header.n_frames,
                           save_frames=True, align_frames=False, tiff_frames=header.format == "tiff",
                           eer_frames=header.format == "eer", frame_rotate=settings.frame_rotate,
                           frame_flip=bool(settings.frame_flip), frames_name=movie_path.name,
                           exposure_time=(meta.exposure_time_s or 0.0) * 1e3 or None,
                           frame_time=((meta.exposure_time_s or 0.0) * 1e3 / header.n_frames) or None)
        norm = store_gain(session, gain_path) if gain_path else None
        image, created = insert(m.AcquisitionImageData, session=session, image=f"{filename}.mrc", filename=filename,
                                label="imported", scope=scope, camera=camera, preset=preset, norm=norm,
                                use_frames=None)
    return image, created
