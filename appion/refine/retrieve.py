"""Reads for refinement jobs: site settings, job bookkeeping files, stacks/models, lifecycle rows."""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from appion.base.config import AppionConfig, ConfigError
from appion.base.db import models as m
from appion.base.jobstates import JobState
from appion.refine import hosts, schedulers
from appion.refine.hosts import JobFiles, ProcessingHost


@dataclass(frozen=True)
class JobsSettings:
    """The `[jobs]` config section: where run directories may live and how long finished jobs stay."""

    rundir_roots: tuple[str, ...]
    archive_after_s: float | None = None  # COMPLETED → ARCHIVED
    expire_after_s: float | None = None  # → EXPIRED (directory removed)
    poll_interval_s: float = 10.0


def _positive_or_none(section: dict, key: str) -> float | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"[jobs] {key} must be a number of seconds ≥ 0, not {value!r}")
    return float(value)


def retrieve_jobs_settings(config: AppionConfig) -> JobsSettings:
    section = config.extra.get("jobs", {}) or {}
    if not isinstance(section, dict):
        raise ConfigError("[jobs] must be a table")
    roots = section.get("rundir_roots") or [str(config.appion_base)]
    if isinstance(roots, str) or not all(isinstance(r, str) for r in roots):
        raise ConfigError("[jobs] rundir_roots must be a list of directories")
    resolved = tuple(str(Path(os.path.expanduser(r)).resolve()) for r in roots)
    interval = _positive_or_none(section, "poll_interval_s")
    return JobsSettings(rundir_roots=resolved, archive_after_s=_positive_or_none(section, "archive_after_s"),
                        expire_after_s=_positive_or_none(section, "expire_after_s"),
                        poll_interval_s=interval if interval else 10.0)


def retrieve_hosts(config: AppionConfig) -> tuple[ProcessingHost, ...]:
    """The site's processing hosts: `[hosts]` in the config, or the file named by `[jobs] hosts_file`."""
    jobs = config.extra.get("jobs", {}) or {}
    section = config.extra.get("hosts")
    hosts_file = jobs.get("hosts_file") if isinstance(jobs, dict) else None
    if hosts_file:
        path = Path(os.path.expanduser(hosts_file))
        if not path.is_absolute():
            path = config.home / path
        try:
            section = tomllib.loads(path.read_text()).get("hosts")
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"hosts file {path}: {exc}") from None
    try:
        return hosts.calc_hosts_from_config(section)
    except hosts.HostConfigError as exc:
        raise ConfigError(str(exc)) from None


def read_text_or_none(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_exit_code(files: JobFiles) -> int | None:
    text = read_text_or_none(files.exitcode)
    return None if text is None else schedulers.parse_exit_code(text)


def read_phase(files: JobFiles) -> str | None:
    text = read_text_or_none(files.phase)
    return text.strip() if text else None


def read_output_names(rundir: str) -> list[str]:
    try:
        return sorted(os.listdir(rundir))
    except FileNotFoundError:
        return []


def read_lifecycle_params(lifecycle) -> tuple[dict, dict]:
    """(job-type parameters, resource request) stored with a lifecycle row."""
    data = json.loads(lifecycle.params or "{}")
    return data.get("params", {}), data.get("request", {})


def retrieve_active_lifecycles(job_id: int | None = None) -> list:
    """Lifecycle rows the tracker still has to look at (everything not EXPIRED), oldest first."""
    rows = m.ApJobLifecycleData.objects.exclude(state=JobState.EXPIRED.value)
    if job_id is not None:
        rows = rows.filter(job_id=job_id)
    return list(rows.order_by("id"))


def retrieve_lifecycle(job_id: int):
    return m.ApJobLifecycleData.objects.filter(job_id=job_id).order_by("-id").first()


def retrieve_transitions(lifecycle_id: int) -> list:
    return list(m.ApJobTransitionData.objects.filter(lifecycle_id=lifecycle_id).order_by("id"))


# ---------------------------------------------------------------- stacks and models
class InputError(ValueError):
    """A stack or model that cannot be used (names the file or id and the problem)."""


@dataclass(frozen=True)
class InputFile:
    path: Path
    pixel_size_A: float
    shape: tuple[int, ...]
    row_id: int | None = None  # ApStackData / ApInitialModelData id when known


def read_mrc_info(path: Path, apix_override: float | None, want_ndim: int) -> InputFile:
    """Header facts of an MRC stack (want_ndim=2: (n, y, x) images) or volume (3: (z, y, x))."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            if mrc.data is None:
                raise InputError(f"{path}: not a readable MRC file")
            shape = tuple(mrc.data.shape)
            voxel = float(mrc.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    if want_ndim == 2:
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3 or shape[1] != shape[2]:
            raise InputError(f"{path}: a particle stack must hold square images (n, y, x); shape is {shape}")
    elif len(shape) != 3 or len(set(shape)) != 1:
        raise InputError(f"{path}: a model must be a cubic volume (z, y, x); shape is {shape}")
    apix = apix_override or voxel
    if not apix or apix <= 0:
        raise InputError(f"{path}: the header has no pixel size; give --apix")
    return InputFile(path=path, pixel_size_A=apix, shape=shape)


def read_mrc_chunk(path: Path, start: int, stop: int) -> np.ndarray:
    """Images start..stop-1 of an MRC stack: float32 (k, y, x)."""
    with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
        data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
        return np.array(data[start:stop], dtype=np.float32)


def read_mrc_volume(path: Path) -> np.ndarray:
    with mrcfile.open(path, mode="r", permissive=True) as mrc:
        return np.array(mrc.data, dtype=np.float32)


def _retrieve_file(model_name: str, row_id: int, what: str) -> tuple[Path, float | None]:
    """(path, pixel size Å) of a stack or initial-model row: ApPathData.path / name."""
    row = getattr(m, model_name).objects.filter(id=row_id).first()
    if row is None:
        raise InputError(f"{what} id {row_id}: no {model_name} row")
    path = m.ApPathData.objects.get(id=row.path_id).path
    return Path(path) / row.name, row.pixelsize


def retrieve_stack_file(stackid: int) -> tuple[Path, float | None]:
    return _retrieve_file("ApStackData", stackid, "stack")


def retrieve_model_file(modelid: int) -> tuple[Path, float | None]:
    return _retrieve_file("ApInitialModelData", modelid, "model")


@dataclass(frozen=True)
class PreparedRefinement:
    prep_id: int
    method: str
    rundir: str
    stack_path: str
    model_path: str
    apix: float
    boxsize: int
    numpart: int | None


def retrieve_prepared_refinement(prep_id: int) -> PreparedRefinement:
    """What runJob needs from prepRefine*'s record: absolute input paths and their pixel size."""
    prep = m.ApPrepRefineData.objects.filter(id=prep_id).first()
    if prep is None:
        raise InputError(f"prepared refinement {prep_id}: no ApPrepRefineData row")
    rundir = m.ApPathData.objects.get(id=prep.path_id).path
    stack = m.ApPrepRefineStackData.objects.filter(preprefine_id=prep.id).order_by("-id").first()
    model = m.ApPrepRefineModelData.objects.filter(preprefine_id=prep.id).order_by("-id").first()
    if stack is None or model is None:
        raise InputError(f"prepared refinement {prep_id}: stack or model record missing")
    return PreparedRefinement(prep_id=prep.id, method=prep.method, rundir=rundir,
                              stack_path=str(Path(rundir) / stack.filename),
                              model_path=str(Path(rundir) / model.filename), apix=stack.apix,
                              boxsize=stack.boxsize, numpart=stack.last_part)
