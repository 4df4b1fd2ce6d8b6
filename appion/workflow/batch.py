"""One command job of a workflow file, run as a batch job: here (host "local") or on a processing host.

A processing host is a scheduler name (slurm, pbs/torque, sge, lsf: that scheduler's defaults)
or a host of the site's config (`[hosts.NAME]`, see appion.refine.hosts).  There the command is
written into a job file by the refinement machinery (`hosts.calc_job_file_text`: directives,
site lines, each argument quoted on its own, an EXIT trap that records the exit status),
submitted with the scheduler's submit command (`tracker.submit_job_file`, an argument list run
in the run directory) and followed with `tracker.observe` (squeue, then `scontrol show job`,
and the job's own exit-status file) until it ends.  Exit status 0 completes the job; anything
else raises CommandFailed("exit code 3; see <rundir>/slurm-<id>.out").

The workflow engine (appion.workflow.core) calls `run_command_job(params, inputs)` on a Dask
worker thread; the parameters are `BatchSpec.as_params()`, so the memo key covers the
argument list, run directory, host and resources (the engine adds the inputs' contents and the
prerequisites' keys).  `stop_all()` cancels whatever is still running (Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from appion.workflow.flowfile import LOCAL_HOST, FlowJob, Resources

__all__ = ["COMMAND_JOBTYPE", "BatchSpec", "BatchResult", "CommandFailed", "HostError", "spec_for_job",
           "resolve_host", "configured_hosts", "calc_request", "run_batch", "run_command_job",
           "register_command_jobtype", "stop_all"]

log = logging.getLogger("appion.workflow")
COMMAND_JOBTYPE = "command"
COMMAND_JOBTYPE_VERSION = "1"
POLL_FIRST_S, POLL_MAX_S = 0.25, 5.0
SCHEDULER_SILENCE_S = 300.0  # fail a job whose scheduler has not answered about it for this long


# The command ended with a non-zero status, or could not be started or followed.  A built-in class,
# so the reason the workflow records reads "ChildProcessError: exit code 3; see ..." (a class of this
# module would be spelled out with its module path).
CommandFailed = ChildProcessError


class HostError(ValueError):
    """A job's host or resources cannot be used (unknown host, over a limit)."""


@dataclass(frozen=True)
class BatchSpec:
    """What to run, where, with what resources."""

    label: str
    argv: tuple[str, ...]
    rundir: str
    host: str
    resources: Resources

    def as_params(self) -> dict:
        return {"label": self.label, "argv": list(self.argv), "rundir": self.rundir, "host": self.host,
                "resources": self.resources.as_params()}

    @classmethod
    def from_params(cls, params: dict) -> BatchSpec:
        return cls(label=params["label"], argv=tuple(params["argv"]), rundir=params["rundir"], host=params["host"],
                   resources=Resources.from_params(params.get("resources", {})))


@dataclass(frozen=True)
class BatchResult:
    """How a command ended (the job's result in the workflow database)."""

    label: str
    host: str
    rundir: str
    exit_code: int
    output: str  # the file holding its stdout and stderr
    cluster_job_id: int | None = None


def spec_for_job(job: FlowJob) -> BatchSpec:
    if job.command is None:
        raise ValueError(f"job {job.label!r} is not a command job")
    return BatchSpec(label=job.label, argv=job.command, rundir=job.rundir, host=job.host, resources=job.resources)


# ---------------------------------------------------------------- hosts

def configured_hosts():
    """The site's processing hosts (config `[hosts]`; a single Slurm host "localhost" when none)."""
    from appion.base.db import current_config
    from appion.refine.retrieve import retrieve_hosts

    return retrieve_hosts(current_config())


def resolve_host(name: str, configured) -> object | None:
    """None for "local"; else the configured host of that name, or a scheduler's defaults by its name."""
    from appion.refine.hosts import SCHEDULER_ALIASES, ProcessingHost

    if name == LOCAL_HOST:
        return None
    for host in configured:
        if host.name == name:
            return host
    scheduler = SCHEDULER_ALIASES.get(name.lower())
    if scheduler is not None:
        return ProcessingHost(name=name, scheduler=scheduler)
    known = [LOCAL_HOST, *sorted(set(SCHEDULER_ALIASES)), *(h.name for h in configured)]
    raise HostError(f"unknown host {name!r} (known: {', '.join(known)})")


def calc_request(spec: BatchSpec, host):
    """The scheduler request for the job, checked against the host's limits (raises HostError)."""
    from appion.refine import hosts

    r = spec.resources
    try:
        hosts.calc_checked_runname(spec.label)
        return hosts.calc_checked_request(host, hosts.JobRequest(
            name=spec.label, nodes=r.nodes or 1, ppn=r.ppn or 1, walltime_h=r.walltime_h, cputime_h=r.cputime_h,
            mem_gb=r.mem_gb, pmem_mb=r.pmem_mb, queue=r.queue, account=r.account))
    except (hosts.HostLimitError, hosts.RunDirError) as exc:
        raise HostError(str(exc)) from None


# ---------------------------------------------------------------- stopping

_STOP = threading.Event()
_LIVE_LOCK = threading.Lock()
_LIVE: dict[str, Callable[[], None]] = {}  # label -> how to stop it


def _track(label: str, stop: Callable[[], None] | None) -> None:
    with _LIVE_LOCK:
        if stop is None:
            _LIVE.pop(label, None)
        else:
            _LIVE[label] = stop


def stop_all() -> list[str]:
    """Stop every command still running in this process (scheduler cancel / terminate); returns their labels."""
    _STOP.set()
    with _LIVE_LOCK:
        live = dict(_LIVE)
    for label, stop in live.items():
        try:
            stop()
        except Exception as exc:  # noqa: BLE001 - report and go on stopping the others
            log.warning("job %s could not be stopped: %s", label, exc)
    return sorted(live)


# ---------------------------------------------------------------- running

def run_batch(spec: BatchSpec, configured=None) -> BatchResult:
    """Run the command to its end; returns how it ended (exit 0) or raises CommandFailed."""
    if _STOP.is_set():
        raise CommandFailed("not started: the run is stopping")
    try:
        host = resolve_host(spec.host, configured_hosts() if configured is None else configured)
    except HostError as exc:
        raise CommandFailed(str(exc)) from None
    try:
        os.makedirs(spec.rundir, exist_ok=True)
    except OSError as exc:
        raise CommandFailed(f"run directory {spec.rundir} cannot be created: {exc.strerror or exc}") from None
    if host is None:
        return _run_local(spec)
    return _run_scheduled(spec, host)


def _run_local(spec: BatchSpec) -> BatchResult:
    output = str(Path(spec.rundir) / f"{spec.label}.appionlocal.log")  # cf. a scheduler's <label>.appionsub.log
    with open(output, "wb") as out:
        try:
            proc = subprocess.Popen(list(spec.argv), cwd=spec.rundir, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        except FileNotFoundError:
            raise CommandFailed(f"program {spec.argv[0]!r} not found on this machine") from None
        except PermissionError:
            raise CommandFailed(f"program {spec.argv[0]!r} is not executable") from None
        _track(spec.label, proc.terminate)
        try:
            code = proc.wait()
        finally:
            _track(spec.label, None)
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        raise CommandFailed(f"{how}; see {output}")
    return BatchResult(label=spec.label, host=LOCAL_HOST, rundir=spec.rundir, exit_code=0, output=output)


def _run_scheduled(spec: BatchSpec, host) -> BatchResult:
    from dataclasses import replace

    from appion.base.io.files import write_text_atomic
    from appion.base.jobstates import JobState
    from appion.refine import hosts, tracker

    try:
        request = calc_request(spec, host)
    except HostError as exc:
        raise CommandFailed(str(exc)) from None
    files = hosts.JobFiles(spec.rundir, spec.label)
    if host.scheduler != "slurm":  # Slurm's default is slurm-<id>.out in the submission (run) directory
        request = replace(request, output_path=files.output)
    text = hosts.calc_job_file_text(host, request, [list(spec.argv)], files, jobtype="workflow-command")
    try:
        write_text_atomic(files.job_file, text, mode=0o755)
        cluster_id = tracker.submit_job_file(host, files)
    except (OSError, tracker.SchedulerError, hosts.SchedulerOutputError) as exc:
        raise CommandFailed(f"could not submit to {host.name} ({host.scheduler}): {exc}") from None
    output = str(Path(spec.rundir) / f"slurm-{cluster_id}.out") if host.scheduler == "slurm" else files.output
    log.info("job %s: %s job %s, output %s", spec.label, host.scheduler, cluster_id, output)
    _track(spec.label, lambda: tracker.cancel_job(host, cluster_id))
    try:
        delay, silent_since = POLL_FIRST_S, None
        while True:
            if _STOP.wait(delay):
                raise CommandFailed(f"interrupted; {host.scheduler} job {cluster_id} cancelled; see {output}")
            delay = min(delay * 1.5, POLL_MAX_S)
            obs = tracker.observe(host, cluster_id, files)
            if obs is None:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > SCHEDULER_SILENCE_S:
                    raise CommandFailed(f"{host.scheduler} did not answer about job {cluster_id} for "
                                        f"{SCHEDULER_SILENCE_S:.0f} s; see {output}")
                continue
            silent_since = None
            target, reason = tracker.calc_scheduled_target(JobState.RUNNING, obs)
            if target is JobState.RUNNING:
                continue
            if target is JobState.FAILED:
                raise CommandFailed(f"{_exit_words(reason, obs)}; see {output}")
            return BatchResult(label=spec.label, host=host.name, rundir=spec.rundir,
                               exit_code=0 if obs.exit_code is None else obs.exit_code, output=output,
                               cluster_job_id=cluster_id)
    finally:
        _track(spec.label, None)


def _exit_words(reason: str, obs) -> str:
    """The tracker's reason, as "exit code N" when the job recorded its status."""
    if obs.exit_code is not None:
        # the scheduler's word only when it says more than the status does (cancelled, timeout, out of memory)
        extra = f" ({obs.final_word.lower()})" if obs.final_word not in ("", "COMPLETED", "FAILED") else ""
        return f"exit code {obs.exit_code}{extra}"
    return reason


def run_command_job(params: dict, inputs: list[str]) -> dict:
    """The job function of COMMAND_JOBTYPE (inputs only take part in the memo key)."""
    return asdict(run_batch(BatchSpec.from_params(params)))


def register_command_jobtype() -> None:
    from appion.workflow.core import register_jobtype

    register_jobtype(COMMAND_JOBTYPE, run_command_job, version=COMMAND_JOBTYPE_VERSION)
