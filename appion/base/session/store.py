"""Write sessions and exposures the way Leginon does, so Appion tools and viewers see them."""
from __future__ import annotations

import getpass
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from appion.base.db import models as m
from appion.base.db.router import alias_for
from appion.base.db.sinedon import insert, serialised_inserts
from appion.base.io.metadata import ExposureMetadata
from appion.base.io.movies import MovieHeader
from appion.base.session.retrieve import calc_movie_filename

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
    with serialised_inserts(alias_for(m.SessionData)):  # two importers of one new session make one row
        user, _ = insert(m.UserData, username=getpass.getuser())
        session = m.SessionData.objects.filter(name=settings.name).order_by("-id").first()
        if session is None:
            session, _ = insert(m.SessionData, name=settings.name, user=user, image_path=str(settings.image_dir),
                                frame_path=str(settings.frames_dir), comment="imported by appion", hidden=False)
    with serialised_inserts(alias_for(m.Project)):
        project = m.Project.objects.filter(name=project_name).order_by("-id").first()
        if project is None:
            project, _ = insert(m.Project, name=project_name, short_description="sessions imported by appion")
        insert(m.ProjectExperiment, project=project, session_id=session.id)
    return session


def _calc_file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_gain(session, gain_path: Path):
    """NormImageData for the gain reference (one per gain file, shared by every exposure).

    The file is copied into the session's image path, where Leginon keeps its references.  A different file
    of the same name already there (a replacement gain, `appion session set-gain`) is copied under its name with
    a content digest added, so the gain of exposures already registered never changes underneath them.
    """
    image_dir = Path(session.image_path)
    image_dir.mkdir(parents=True, exist_ok=True)
    target = image_dir / gain_path.name
    if target.exists() and target.resolve() != gain_path.resolve():
        digest = _calc_file_digest(gain_path)
        if _calc_file_digest(target) != digest:
            target = image_dir / f"{gain_path.stem}.{digest[:12]}{gain_path.suffix}"
    if not target.exists():
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(gain_path, tmp)
        tmp.replace(target)
    stem = target.name.rsplit(".", 1)[0]
    norm, _ = insert(m.NormImageData, session=session, image=target.name, filename=stem)
    return norm


def store_exposures_gain(session, gain_path: Path, image_ids: list[int]):
    """Point these exposures at a (new) gain reference: their NormImageData, as Leginon links it.  Returns the row."""
    with serialised_inserts(alias_for(m.AcquisitionImageData)):
        norm = store_gain(session, gain_path)
        if image_ids:
            m.AcquisitionImageData.objects.filter(session_id=session.id, id__in=image_ids).update(norm_id=norm.id)
    return norm


def store_import_refusal(session_id: int, path: Path, reason: str, now: float) -> None:
    """Record that import refused a movie: one row per session and path (newest reason, first/last time, count)."""
    with transaction.atomic(using=alias_for(m.ApImportRefusalData)):
        row = (m.ApImportRefusalData.objects.select_for_update().filter(session_id=session_id, path=str(path))
               .order_by("-id").first())
        if row is None:
            m.ApImportRefusalData.objects.create(session_id=session_id, path=str(path), reason=reason,
                                                 first_seen=now, last_seen=now, count=1)
        else:
            m.ApImportRefusalData.objects.filter(id=row.id).update(reason=reason, last_seen=now,
                                                                   count=int(row.count or 0) + 1)


def delete_import_refusals(session_id: int, path: Path) -> None:
    """The movie was registered after all: it is no longer refused."""
    m.ApImportRefusalData.objects.filter(session_id=session_id, path=str(path)).delete()


def store_exposure(session, settings: ImportSettings, movie_path: Path, header: MovieHeader, meta: ExposureMetadata,
                   gain_path: Path | None):
    """Register one movie as a Leginon exposure; returns (AcquisitionImageData, created).

    Everything for one movie is written in one transaction, the image row last, so a
    killed import never leaves an exposure half-registered; the check for an existing exposure
    is inside it, so two importers of one directory register each movie once.
    """
    filename = calc_movie_filename(movie_path)
    voltage_V = meta.voltage_V or settings.voltage_kV * 1e3
    pixel_size_A = meta.pixel_size_A or settings.pixel_size_A
    dose = meta.dose_e_per_A2 if meta.dose_e_per_A2 is not None else settings.dose_e_per_A2
    # A magnification is needed to look the pixel size up the way Leginon does; derive a stable one if absent.
    mag = meta.magnification or int(round(1e5 / pixel_size_A))
    ny, nx = header.shape_yx
    with serialised_inserts(alias_for(m.AcquisitionImageData)):
        existing = (m.AcquisitionImageData.objects.filter(session_id=session.id, filename=filename)
                    .order_by("-id").first())
        if existing is not None:
            return existing, False
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


# ---- processing loop: run bookkeeping (appion.loop.core)
def store_path(path) -> "m.ApPathData":
    row, _ = insert(m.ApPathData, path=str(path))
    return row


def store_appion_job(name: str, rundir, jobtype: str, session_id: int, status: str = "R",
                     cluster: str | None = None) -> "m.ApAppionJobData":
    """A classic job row (status R while running); a new row per start, as classic resubmission does."""
    import socket

    path = store_path(rundir)
    return m.ApAppionJobData.objects.create(name=name, path=path, clusterpath=path, cluster=cluster or socket.gethostname(),
                                            jobtype=jobtype, status=status, user=getpass.getuser(),
                                            session_id=session_id)


def store_job_status(job_id: int, status: str) -> None:
    m.ApAppionJobData.objects.filter(id=job_id).update(status=status)


def store_program_run(progname: str, runname: str, rundir, job_id: int | None, session_id: int,
                      params: list[tuple[str, str, str]]) -> "m.ScriptProgramRun":
    """ScriptProgramRun + ScriptParamName/Value rows: how the web viewer shows a run's command line.

    params: (name, value, usage) e.g. ("bin", "2", "--bin=2").
    """
    import os
    import platform
    import socket

    import appion

    prog, _ = insert(m.ScriptProgramName, name=progname)
    user, _ = insert(m.ScriptUserName, name=getpass.getuser(), uid=os.getuid(), gid=os.getgid())
    host, _ = insert(m.ScriptHostName, name=socket.gethostname(), system=platform.system().lower(),
                     arch=platform.machine())
    appion_path = store_path(Path(appion.__file__).resolve().parent)
    run = m.ScriptProgramRun.objects.create(runname=runname, progname=prog, username=user, hostname=host,
                                            rundir=store_path(rundir), job_id=job_id, appion_path=appion_path,
                                            session_id=session_id, revision=getattr(appion, "__version__", None),
                                            unixshell=os.environ.get("SHELL"))
    for name, value, usage in params:
        pname, _ = insert(m.ScriptParamName, name=name, progname=prog)
        m.ScriptParamValue.objects.create(value=value, usage=usage, paramname=pname, progrun=run)
    return run


class RunConflict(ValueError):
    """A run name is already used in this session with other parameters."""


def calc_row_values(row, **changes) -> dict:
    """The column values of a row (no DEF_id/DEF_timestamp), with changes applied: for copies of rows."""
    values = {f.attname: getattr(row, f.attname) for f in type(row)._meta.concrete_fields
              if f.name not in ("id", "timestamp")}
    values.update(changes)
    return values
