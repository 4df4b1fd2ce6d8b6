"""Submit cluster jobs and move their lifecycle rows along (the daemon calls `poll_jobs_once`).

Everything the tracker knows is in the database (ApJobLifecycleData + transitions) and in
files the job writes about itself (`<runname>.phase`, `<runname>.exitcode`), so it needs no
scheduler accounting and can be stopped and restarted at any point: it reads the stored
state and continues.  Scheduler commands are argument lists (never a shell).

A host with a login (appion.refine.remote) gets its scheduler commands through ssh; with a
remote_rundir the run directory (and the prepared inputs its commands name) is copied there
before each submission, the job's phase and exit code are read there, and the run directory is
copied back as soon as the job has ended, before anything looks at its outputs.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import asdict, dataclass

from appion.base import jobstates as js
from appion.base.db import models as m
from appion.base.db.setup import current_config
from appion.base.io.files import write_text_atomic
from appion.base.jobstates import JobState
from appion.refine import hosts, remote, retrieve, schedulers, store
from appion.refine.calc import external
from appion.refine.hosts import JobFiles, JobRequest, ProcessingHost

log = logging.getLogger("appion.jobs")
SCHEDULER_TIMEOUT_S = 60
SUBMIT_GRACE_S = 300.0  # a job row without a cluster id older than this was never submitted


class SchedulerError(RuntimeError):
    """A scheduler command failed (message carries its stderr)."""


def run_scheduler(argv: list[str], stdin_path: str | None = None, cwd: str | None = None,
                  host: ProcessingHost | None = None) -> subprocess.CompletedProcess:
    """A scheduler command, here or (a host with a login) on the host through ssh, cwd being the host's path."""
    if host is not None and host.remote is not None:
        try:
            return remote.run_ssh(host, argv, cwd=cwd, stdin_path=stdin_path, timeout_s=SCHEDULER_TIMEOUT_S)
        except remote.RemoteError as exc:
            raise SchedulerError(str(exc)) from None
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    try:
        return subprocess.run(argv, stdin=stdin, capture_output=True, text=True, cwd=cwd,
                              timeout=SCHEDULER_TIMEOUT_S)
    except FileNotFoundError:
        raise SchedulerError(f"scheduler command {argv[0]!r} is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"scheduler command {' '.join(argv)} did not answer in {SCHEDULER_TIMEOUT_S} s") from None
    finally:
        if stdin_path:
            stdin.close()


# ---------------------------------------------------------------- submission
def _copies(host: ProcessingHost) -> bool:
    return host.remote is not None and host.remote.copies


def write_job(host: ProcessingHost, request: JobRequest, files: JobFiles, jobtype: str, params: dict,
              roots: tuple[str, ...] | None = None) -> str:
    """Write input files and the job file for this cycle; returns the job file text.

    jobtype: the job's name (an unregistered name runs as a generic job, see external.resolve_job_type).
    For a host that gets copies, the job file is in the host's paths and the existing inputs its commands
    name outside the run directory (below the run roots: `roots`, default the config's) are listed in
    files.inputs for submit_job_file to copy."""
    run_as = external.resolve_job_type(jobtype)
    commands = external.build_job_commands(run_as, params)
    store.write_input_files(files.rundir, external.build_job_files(run_as, params))
    mapped: tuple[str, ...] = ()
    if _copies(host):
        mapped = roots if roots is not None else retrieve.retrieve_jobs_settings(current_config()).rundir_roots
        inputs = [hosts.calc_input_copy(p, os.path.isdir(p), files.rundir, mapped)
                  for p in hosts.calc_input_paths(commands, files.rundir, mapped) if os.path.exists(p)]
        write_text_atomic(files.inputs, "".join(f"{p}\n" for p in dict.fromkeys(inputs)))
    text = hosts.calc_job_file_text(host, request, commands, files, jobtype=jobtype, mapped_roots=mapped)
    store.write_job_file(files, text)
    return text


def _stage_remote(host: ProcessingHost, files: JobFiles) -> JobFiles:
    """Copy the run directory and its listed inputs to the host, clear the host's cycle files; the host's JobFiles."""
    there = hosts.calc_remote_files(host, files)
    try:
        remote.copy_to(host, files.rundir, there.rundir, exclude=files.local_only)
        for path in (retrieve.read_text_or_none(files.inputs) or "").splitlines():
            if os.path.isdir(path):
                remote.copy_to(host, path, hosts.calc_remote_path(host, path))
            elif os.path.exists(path):
                remote.copy_file_to(host, path, hosts.calc_remote_path(host, path))
        remote.remove_remote_files(host, [there.exitcode, there.phase])
    except (remote.RemoteError, OSError) as exc:
        raise SchedulerError(f"copying the job to {host.name} failed: {exc}" if isinstance(exc, OSError)
                             else str(exc)) from None
    return there


def submit_job_file(host: ProcessingHost, files: JobFiles) -> int:
    """Submit the written job file (after copying it and its inputs to a host that gets copies); returns the
    cluster job id."""
    store.clear_cycle_files(files)
    there = _stage_remote(host, files) if _copies(host) else files
    cmd = schedulers.calc_submit_command(host.scheduler, there.job_file)
    stdin_path = files.job_file if cmd.stdin_path else None  # LSF reads the script on stdin: this machine's copy
    result = run_scheduler(cmd.argv, stdin_path, cwd=there.rundir, host=host)
    if result.returncode != 0:
        raise SchedulerError(f"{cmd.argv[0]} refused {there.job_file}: {(result.stderr or result.stdout).strip()}")
    return schedulers.parse_job_id(host.scheduler, result.stdout)


def cancel_job(host: ProcessingHost, cluster_job_id: int) -> None:
    result = run_scheduler(schedulers.calc_cancel_command(host.scheduler, cluster_job_id), host=host)
    if result.returncode != 0:
        raise SchedulerError(f"cancelling job {cluster_job_id} failed: {(result.stderr or result.stdout).strip()}")


# ---------------------------------------------------------------- observation
@dataclass(frozen=True)
class Observation:
    """What the scheduler and the job's own files say right now."""

    letter: str | None  # Q, R, D, E, or None: the scheduler no longer lists the job
    phase: str | None
    exit_code: int | None
    final_word: str = ""  # e.g. CANCELLED from scontrol


def observe(host: ProcessingHost, cluster_job_id: int, files: JobFiles) -> Observation | None:
    """None when the scheduler could not be asked (try again next poll)."""
    try:
        result = run_scheduler(schedulers.calc_status_command(host.scheduler, cluster_job_id), host=host)
    except SchedulerError as exc:
        log.warning("%s", exc)
        return None
    text = result.stdout
    if result.returncode != 0:
        if host.scheduler == "slurm" and "Invalid job id" in result.stderr:
            text = ""
        elif host.scheduler == "lsf" and "not found" in (result.stderr + result.stdout):
            text = ""
        elif host.scheduler == "pbs" and "Unknown Job" in result.stderr:
            text = ""
        else:
            log.warning("status of job %s: %s", cluster_job_id, result.stderr.strip())
            return None
    letter = schedulers.parse_state(host.scheduler, cluster_job_id, text)
    try:
        phase, exit_code = _read_job_state(host, files)
    except remote.RemoteError as exc:
        log.warning("job %s: %s", cluster_job_id, exc)
        return None
    final_word = ""
    if letter is None or letter in ("D", "E"):
        final_cmd = schedulers.calc_final_state_command(host.scheduler, cluster_job_id)
        if final_cmd:
            try:
                final = run_scheduler(final_cmd, host=host)
                letter_final, final_word = schedulers.parse_final_state(host.scheduler, final.stdout)
                if letter is None and letter_final is not None and exit_code is None:
                    letter = letter_final
            except SchedulerError as exc:
                log.warning("%s", exc)
    if _copies(host) and (exit_code is not None or letter in (None, "D", "E")):
        try:  # the job has ended: its outputs come home before anyone reads them
            remote.copy_back(host, hosts.calc_remote_files(host, files).rundir, files.rundir,
                             exclude=files.local_only)
        except (remote.RemoteError, OSError) as exc:
            log.warning("job %s ended on %s but its outputs could not be copied back (trying again): %s",
                        cluster_job_id, host.name, exc)
            return None
    return Observation(letter=letter, phase=phase, exit_code=exit_code, final_word=final_word)


def _read_job_state(host: ProcessingHost, files: JobFiles) -> tuple[str | None, int | None]:
    """(phase, exit code) from the job's own files: here, or on a host that gets copies."""
    if not _copies(host):
        return retrieve.read_phase(files), retrieve.read_exit_code(files)
    there = hosts.calc_remote_files(host, files)
    texts = remote.read_remote_files(host, [there.phase, there.exitcode])
    phase, code = texts[there.phase], texts[there.exitcode]
    return ((phase.strip() or None) if phase else None), (None if code is None else schedulers.parse_exit_code(code))


def calc_scheduled_target(state: JobState, obs: Observation) -> tuple[JobState, str]:
    """Where a scheduled job goes given an observation (pure): same state, further along, or FAILED."""
    if obs.letter == "Q":
        return state, ""
    if obs.letter == "R" and obs.exit_code is None:
        target = js.calc_state_for_phase(obs.phase)
        if js.MAIN_LINE.index(target) < js.MAIN_LINE.index(state):
            return state, ""  # a later cycle: already RUNNING
        return target, ""
    # the job has ended (or is ending): its own exit code decides
    if obs.exit_code == 0 and obs.final_word not in ("CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
        return JobState.POSTPROCESSING, "job exited with status 0"
    if obs.exit_code is not None:
        extra = f" ({obs.final_word.lower()})" if obs.final_word and obs.final_word != "COMPLETED" else ""
        return JobState.FAILED, f"job exited with status {obs.exit_code}{extra}"
    if obs.letter == "D":
        return JobState.POSTPROCESSING, "scheduler reports the job completed"
    if obs.final_word:
        return JobState.FAILED, f"scheduler reports {obs.final_word} and the job wrote no exit status"
    if obs.letter == "R":
        return state, ""
    return JobState.FAILED, "job left the queue without writing an exit status"


# ---------------------------------------------------------------- one step per lifecycle row
@dataclass
class Context:
    hosts: tuple[ProcessingHost, ...]
    settings: retrieve.JobsSettings


def _host_for(ctx: Context, lifecycle) -> ProcessingHost:
    return hosts.calc_pick_host(ctx.hosts, lifecycle.host)


def _request_for(lifecycle) -> JobRequest:
    _, request = retrieve.read_lifecycle_params(lifecycle)
    return JobRequest(**request)


def step_lifecycle(ctx: Context, lifecycle, now: float) -> bool:
    """Advance one job as far as the evidence allows; returns True when its state changed."""
    state = JobState(lifecycle.state)
    files = JobFiles(lifecycle.rundir, lifecycle.runname)
    if state in js.SCHEDULED:
        job = m.ApAppionJobData.objects.get(id=lifecycle.job_id)
        if not job.clusterjobid:
            # being submitted right now (the submitter records the id next) — unless that was long ago
            if now - (lifecycle.updated_at or now) > SUBMIT_GRACE_S:
                store.store_transitions(lifecycle, [js.calc_transition(
                    state, JobState.FAILED, f"no cluster job id recorded {SUBMIT_GRACE_S:.0f} s after submission "
                                            "began (the submitter was interrupted)")], now=now)
                return True
            return False
        obs = observe(_host_for(ctx, lifecycle), job.clusterjobid, files)
        if obs is None:
            return False
        target, reason = calc_scheduled_target(state, obs)
        if target is state:
            return False
        store.store_transitions(lifecycle, js.calc_path(state, target, reason), now=now,
                                cluster_job_id=job.clusterjobid)
        return True
    if state is JobState.POSTPROCESSING:
        params, _ = retrieve.read_lifecycle_params(lifecycle)
        try:
            next_params = external.calc_next_cycle(external.resolve_job_type(lifecycle.jobtype), params,
                                                   retrieve.read_output_names(files.rundir))
        except (external.CycleError, external.JobParamsError) as exc:
            store.store_transitions(lifecycle, [js.calc_transition(state, JobState.FAILED, str(exc))], now=now)
            return True
        if next_params is None:
            store.store_transitions(lifecycle, [js.calc_transition(state, JobState.FINALIZING, "outputs complete")],
                                    now=now)
            return True
        # Claim the next cycle first (compare-and-set), so two trackers never submit it twice; until
        # its cluster id is recorded the job reads as "being submitted".
        cycle = (lifecycle.cycle or 1) + 1
        store.store_transitions(lifecycle, [js.calc_transition(state, JobState.RUNNING,
                                                               f"another cycle ({cycle}) asked for")],
                                now=now, clear_cluster_job_id=True, cycle=cycle, params=next_params)
        host = _host_for(ctx, lifecycle)
        try:
            write_job(host, _request_for(lifecycle), files, lifecycle.jobtype, next_params,
                      roots=ctx.settings.rundir_roots)
            cluster_id = submit_job_file(host, files)
        except (SchedulerError, hosts.SchedulerOutputError, OSError, external.JobParamsError) as exc:
            store.store_transitions(lifecycle, [js.calc_transition(JobState.RUNNING, JobState.FAILED,
                                                                   f"cycle {cycle} could not be submitted: {exc}")],
                                    now=now)
            return True
        store.store_cluster_job_id(lifecycle, cluster_id)
        return True
    if state is JobState.FINALIZING:
        names = [n for n in retrieve.read_output_names(files.rundir) if not n.startswith(".")]
        store.append_job_log(files, f"outputs: {len(names)} files after {lifecycle.cycle or 1} cycle(s)")
        store.store_transitions(lifecycle, [js.calc_transition(state, JobState.COMPLETED, "finished")], now=now)
        return True
    if state in js.AGEING:
        age = now - (lifecycle.finished_at or lifecycle.updated_at or now)
        target = js.calc_age_target(state, age, ctx.settings.archive_after_s, ctx.settings.expire_after_s)
        if target is None:
            return False
        steps = js.calc_path(state, target) if state is not JobState.FAILED else [js.calc_transition(state, target)]
        for step in steps:
            if step.to_state is JobState.ARCHIVED:
                store.write_archive_manifest(files)
            elif step.to_state is JobState.EXPIRED:
                store.remove_run_directory(files, ctx.settings.rundir_roots)
        if state is JobState.FAILED:  # keep why it failed: the row stays E (appion.refine.store)
            steps = [js.Transition(s.from_state, s.to_state, f"expired after failing: {lifecycle.reason}")
                     for s in steps]
        steps = [js.Transition(s.from_state, s.to_state, s.reason or f"age {age:.0f} s") for s in steps]
        store.store_transitions(lifecycle, steps, now=now)
        return True
    return False


def poll_jobs_once(config=None, now: float | None = None, job_id: int | None = None) -> int:
    """One pass over every job not yet EXPIRED; returns how many changed state.

    A job is stepped repeatedly within the pass (e.g. RUNNING → POSTPROCESSING → FINALIZING →
    COMPLETED) so one poll takes it as far as the evidence allows.
    """
    config = config or current_config()
    ctx = Context(retrieve.retrieve_hosts(config), retrieve.retrieve_jobs_settings(config))
    changed = 0
    for lifecycle in retrieve.retrieve_active_lifecycles(job_id):
        for _ in range(8):
            t = time.time() if now is None else now
            try:
                moved = step_lifecycle(ctx, lifecycle, t)
            except store.StaleLifecycleError as exc:  # another tracker got there first: it owns this step
                log.info("job %s: %s", lifecycle.job_id, exc)
                moved = False
            except hosts.HostConfigError as exc:
                log.error("job %s: %s", lifecycle.job_id, exc)
                moved = False
            if not moved:
                break
            changed += 1
    return changed


def count_live_jobs(job_id: int | None = None) -> int:
    return sum(1 for lc in retrieve.retrieve_active_lifecycles(job_id) if JobState(lc.state) in js.LIVE)


def watch_jobs(interval_s: float, until_idle: bool = False, max_seconds: float | None = None,
               job_id: int | None = None, stop=lambda: False) -> int:
    """Poll until stopped (or, with until_idle, until no job is live any more). Returns polls made."""
    started, polls = time.monotonic(), 0
    while not stop():
        poll_jobs_once(job_id=job_id)
        polls += 1
        if until_idle and count_live_jobs(job_id) == 0:
            break
        if max_seconds is not None and time.monotonic() - started > max_seconds:
            break
        time.sleep(interval_s)
    return polls


def request_as_dict(request: JobRequest) -> dict:
    return asdict(request)
