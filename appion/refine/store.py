"""Writes for refinement jobs: job files, lifecycle rows and transitions, per-job logs, prepared inputs."""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import mrcfile
import numpy as np
import starfile
from django.db import transaction

from appion.base.db import models as m
from appion.base.db.router import alias_for
from appion.base.db.sinedon import insert
from appion.base.io.files import make_temp_path, write_atomic, write_text_atomic
from appion.base.jobstates import JobState, Transition, calc_classic_status
from appion.refine.calc.formats import calc_imagic_files
from appion.refine.hosts import JobFiles, RunDirError, calc_checked_rundir


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_job_file(files: JobFiles, text: str) -> None:
    """The job file, executable (PBS/SGE run it directly) with the permissions the umask allows
    (0o777 less the umask, as a shell's `touch` + `chmod +x` would give), written atomically."""
    write_text_atomic(files.job_file, text, mode=0o777 & ~_current_umask())


def append_command_log(rundir: str, argv: list[str]) -> None:
    """`run_commands.log` in the run directory: every runJob.py command line, appended (classic does the same)."""
    import shlex

    with open(Path(rundir) / "run_commands.log", "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\nrunJob.py {shlex.join(argv)}\n{'_' * 46}\n")


def write_input_files(rundir: str, named_texts: dict[str, str]) -> None:
    for name, text in named_texts.items():
        if "/" in name or name.startswith("."):
            raise RunDirError(f"job input file name {name!r} must be a plain name")
        write_text_atomic(Path(rundir) / name, text)


def clear_cycle_files(files: JobFiles) -> None:
    """Remove last cycle's exit code and phase so the tracker cannot read them for the next cycle."""
    for p in (files.exitcode, files.phase):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def append_job_log(files: JobFiles, line: str) -> None:
    """The per-job log in the run directory: one line per event, never rewritten."""
    try:
        with open(files.log, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC {line}\n")
    except FileNotFoundError:  # an expired job's directory is gone; its transitions stay in the database
        pass


# ---------------------------------------------------------------- job rows
def store_job(*, name: str, files: JobFiles, jobtype: str, host: str, params: dict, request: dict,
              session_id: int | None = None, job_id: int | None = None, now: float | None = None):
    """ApAppionJobData (status Q; reused when the web interface created it, classic --jobid) plus its
    lifecycle row in INCOMING.  Returns (job, lifecycle)."""
    now = time.time() if now is None else now
    alias = alias_for(m.ApAppionJobData)
    with transaction.atomic(using=alias):
        path, _ = insert(m.ApPathData, path=files.rundir)
        if job_id is not None:
            job = m.ApAppionJobData.objects.filter(id=job_id).first()
            if job is None:
                raise ValueError(f"--jobid {job_id}: no ApAppionJobData row with that id")
            job.name, job.path, job.clusterpath, job.jobtype, job.status = name, path, path, jobtype, "Q"
            job.cluster = host
            job.save()
        else:
            job = m.ApAppionJobData.objects.create(name=name, path=path, clusterpath=path, cluster=host,
                                                   jobtype=jobtype, status="Q", user=getpass.getuser(),
                                                   session_id=session_id)
        lifecycle = m.ApJobLifecycleData.objects.create(
            job=job, state=JobState.INCOMING.value, reason="accepted", jobtype=jobtype, host=host,
            rundir=files.rundir, runname=files.runname, params=json.dumps({"params": params, "request": request}),
            cycle=1, updated_at=now)
        m.ApJobTransitionData.objects.create(lifecycle=lifecycle, from_state="", to_state=JobState.INCOMING.value,
                                             reason="accepted", cycle=1, at=now)
    append_job_log(files, f"INCOMING: {jobtype} job {job.id} for host {host}")
    return job, lifecycle


def store_cluster_job_id(lifecycle, cluster_job_id: int) -> None:
    """The scheduler's id for the cycle just submitted (also on the transition that started the cycle)."""
    with transaction.atomic(using=alias_for(m.ApAppionJobData)):
        m.ApAppionJobData.objects.filter(id=lifecycle.job_id).update(clusterjobid=cluster_job_id)
        last = m.ApJobTransitionData.objects.filter(lifecycle_id=lifecycle.id).order_by("-id").first()
        if last is not None and last.clusterjobid is None:
            m.ApJobTransitionData.objects.filter(id=last.id).update(clusterjobid=cluster_job_id)
    append_job_log(JobFiles(lifecycle.rundir, lifecycle.runname), f"submitted as cluster job {cluster_job_id}")


class StaleLifecycleError(RuntimeError):
    """Another tracker moved this job first (the row's state is no longer the one the steps start from)."""


def store_transitions(lifecycle, steps: list[Transition], *, now: float | None = None,
                      cluster_job_id: int | None = None, clear_cluster_job_id: bool = False, cycle: int | None = None,
                      params: dict | None = None) -> None:
    """Apply steps to the lifecycle row, its transition history, ApAppionJobData.status and the job log.

    One transaction, and a compare-and-set on the stored state: a tracker killed half-way leaves
    all of a poll's steps or none, and two trackers (the daemon and `runJob.py --wait`) never apply
    the same step twice — the second gets StaleLifecycleError.  `lifecycle` is updated in memory.
    """
    if not steps:
        return
    now = time.time() if now is None else now
    start, final = steps[0].from_state, steps[-1].to_state
    if JobState(lifecycle.state) is not start:
        raise StaleLifecycleError(f"lifecycle {lifecycle.id} is {lifecycle.state}, not {start.value}")
    values = {"state": final.value, "reason": steps[-1].reason or final.value.lower(), "updated_at": now}
    if cycle is not None:
        values["cycle"] = cycle
    if params is not None:
        stored = json.loads(lifecycle.params or "{}")
        stored["params"] = params
        values["params"] = json.dumps(stored)
    if final in (JobState.COMPLETED, JobState.FAILED):
        values["finished_at"] = now
    with transaction.atomic(using=alias_for(m.ApJobLifecycleData)):
        claimed = m.ApJobLifecycleData.objects.filter(id=lifecycle.id, state=start.value).update(**values)
        if claimed != 1:
            raise StaleLifecycleError(f"lifecycle {lifecycle.id} is no longer {start.value} (moved by another tracker)")
        for step in steps:
            m.ApJobTransitionData.objects.create(lifecycle_id=lifecycle.id, from_state=step.from_state.value,
                                                 to_state=step.to_state.value, reason=step.reason,
                                                 cycle=values.get("cycle", lifecycle.cycle),
                                                 clusterjobid=cluster_job_id, at=now)
        job_update = {"status": calc_classic_status(final)}
        if final is JobState.EXPIRED and (start is JobState.FAILED or any(
                step.from_state is JobState.FAILED for step in steps)):
            job_update["status"] = "E"  # a failed job keeps its E when its directory ages out
        if cluster_job_id is not None or clear_cluster_job_id:
            job_update["clusterjobid"] = cluster_job_id
        m.ApAppionJobData.objects.filter(id=lifecycle.job_id).update(**job_update)
    for key, value in values.items():
        setattr(lifecycle, key, value)
    files = JobFiles(lifecycle.rundir, lifecycle.runname)
    for step in steps:
        append_job_log(files, f"{step.from_state.value} -> {step.to_state.value}" + (f": {step.reason}" if step.reason else ""))
    if final in (JobState.COMPLETED, JobState.FAILED) and start is not final:
        notify_job_end(lifecycle, final, steps[-1].reason or "")


def notify_job_end(lifecycle, state: JobState, reason: str) -> None:
    """The job's user (and for FAILED the admins) hear of its end through [notify] (once: the transition is
    stored once, see store_transitions).  Never raises: a broken notification must not stop the tracker."""
    from appion.notify.monitor import notify_job_state

    user = m.ApAppionJobData.objects.filter(id=lifecycle.job_id).values_list("user", flat=True).first()
    notify_job_state(lifecycle, state, user, reason=reason)


# ---------------------------------------------------------------- archive and expiry
def write_archive_manifest(files: JobFiles) -> Path:
    """ARCHIVED: a manifest of the run directory (name, size, sha256) and the files made read-only,
    so what was archived can be checked later and nothing changes it any more."""
    rundir = Path(files.rundir)
    entries = []
    for p in sorted(rundir.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            digest = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            entries.append({"name": str(p.relative_to(rundir)), "bytes": p.stat().st_size,
                            "sha256": digest.hexdigest()})
    manifest = rundir / f"{files.runname}.manifest.json"
    write_text_atomic(manifest, json.dumps({"files": entries}, indent=1))
    for p in rundir.rglob("*"):
        if p.is_file() and p.name != Path(files.log).name:
            p.chmod(p.stat().st_mode & ~0o222)
    return manifest


def remove_run_directory(files: JobFiles, roots: tuple[str, ...]) -> bool:
    """EXPIRED: delete the run directory (only below a configured root; the database rows stay)."""
    rundir = Path(files.rundir)
    calc_checked_rundir(str(rundir), list(roots))
    if rundir.is_symlink():
        raise RunDirError(f"run directory {rundir} is a symbolic link; not removing it")
    if not rundir.exists():
        return False

    def _writable_then_retry(func, path, exc_info):
        os.chmod(os.path.dirname(path), 0o755)
        os.chmod(path, 0o644) if os.path.isfile(path) else None
        func(path)

    shutil.rmtree(rundir, onerror=_writable_then_retry)
    return True


# ---------------------------------------------------------------- prepared refinement inputs
def write_mrc_atomic(path: Path, data: np.ndarray, pixel_size_A: float) -> None:
    def write(tmp: Path) -> None:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.asarray(data, dtype=np.float32))
            mrc.voxel_size = pixel_size_A

    write_atomic(path, write)


class StackWriter:
    """Write a particle stack in chunks to a temporary name; `commit` moves it into place.

    Used as a context manager: an exception leaves no partial stack behind.
    """

    def __init__(self, path: Path, n: int, box: int, pixel_size_A: float):
        self.path, self.tmp = path, make_temp_path(path)
        self.mrc = mrcfile.new_mmap(self.tmp, shape=(n, box, box), mrc_mode=2, overwrite=True)
        self.mrc.set_image_stack()  # (n, y, x) is n images, not a volume
        self.mrc.header.mz = 1  # one section per image, so the z "voxel" matches x and y
        self.mrc.voxel_size = pixel_size_A

    def write(self, start: int, chunk: np.ndarray) -> None:
        self.mrc.data[start:start + chunk.shape[0]] = chunk

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.mrc.update_header_stats()
            self.mrc.close()
            os.replace(self.tmp, self.path)
        else:
            self.mrc.close()
            self.tmp.unlink(missing_ok=True)
        return False


def write_relion_star(path: Path, tables: dict) -> None:
    """A RELION STAR file (data blocks named by the dict keys), written atomically with starfile."""
    write_atomic(path, lambda tmp: starfile.write(tables, tmp, overwrite=True))


class ImagicWriter:
    """An IMAGIC-5 stack (`<root>.hed` + `<root>.img`) written in chunks to temporary names; both files are
    moved into place when the context ends without an error (nothing is left behind otherwise)."""

    def __init__(self, hed_path: Path, n: int):
        self.hed, self.img = Path(hed_path), Path(hed_path).with_suffix(".img")
        self.n, self.written = n, 0
        self.tmp_hed, self.tmp_img = make_temp_path(self.hed), make_temp_path(self.img)
        self.fh_hed, self.fh_img = open(self.tmp_hed, "wb"), open(self.tmp_img, "wb")
        self.when = time.localtime()

    def write(self, start: int, chunk: np.ndarray) -> None:
        if start != self.written:
            raise ValueError(f"IMAGIC chunks must be written in order (expected {self.written}, got {start})")
        hed, img = calc_imagic_files(chunk, self.when, first=start + 1, total=self.n)
        self.fh_hed.write(hed)
        self.fh_img.write(img)
        self.written += chunk.shape[0]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.fh_hed.close()
        self.fh_img.close()
        complete = exc_type is None and self.written == self.n
        if complete:
            os.replace(self.tmp_img, self.img)
            os.replace(self.tmp_hed, self.hed)
        else:
            self.tmp_hed.unlink(missing_ok=True)
            self.tmp_img.unlink(missing_ok=True)
        if exc_type is None and not complete:
            raise ValueError(f"IMAGIC stack {self.hed}: {self.written} of {self.n} images written")
        return False


def store_stack_row(path: Path, pixel_size_A: float, boxsize: int, numpart: int, description: str = ""):
    dir_row, _ = insert(m.ApPathData, path=str(path.parent))
    row, _ = insert(m.ApStackData, name=path.name, path=dir_row, pixelsize=pixel_size_A, boxsize=boxsize,
                    numpart=numpart, description=description or None, hidden=False)
    return row


def store_model_row(path: Path, pixel_size_A: float, boxsize: int, description: str = ""):
    dir_row, _ = insert(m.ApPathData, path=str(path.parent))
    row, _ = insert(m.ApInitialModelData, name=path.name, path=dir_row, pixelsize=pixel_size_A, boxsize=boxsize,
                    description=description or None, hidden=False)
    return row


def store_prepared_refinement(*, runname: str, rundir: str, method: str, description: str, stack_row, model_row,
                              stack_file: str, model_file: str, last_part: int, lowpass: float | None,
                              highpass: float | None, bin_factor: int, apix: float, boxsize: int, fmt: str,
                              session_id: int | None = None):
    """ApPrepRefineData + its stack and model records; returns the ApPrepRefineData row."""
    with transaction.atomic(using=alias_for(m.ApPrepRefineData)):
        path, _ = insert(m.ApPathData, path=rundir)
        prep = m.ApPrepRefineData.objects.create(name=runname, path=path, method=method, description=description,
                                                 stack=stack_row, model=model_row, session_id=session_id,
                                                 hidden=False)
        m.ApPrepRefineStackData.objects.create(preprefine=prep, stackref=stack_row, filename=stack_file,
                                               last_part=last_part, lowpass=lowpass, highpass=highpass,
                                               bin=bin_factor, apix=apix, boxsize=boxsize, format=fmt)
        m.ApPrepRefineModelData.objects.create(preprefine=prep, refmodel=model_row, filename=model_file,
                                               lowpass=lowpass, apix=apix, boxsize=boxsize, format="mrc")
    return prep
