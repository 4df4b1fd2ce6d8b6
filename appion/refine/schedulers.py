"""The batch schedulers' dialects as data (Slurm, PBS/Torque, SGE, LSF): header lines, submit / status / cancel /
final-state commands, and reading their output.  Pure: building commands and parsing text, no I/O (the
tracker runs them).  Processing hosts and job files are appion.refine.hosts.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from appion.refine.hosts import (HostConfigError, JobRequest, ProcessingHost, SchedulerOutputError, SubmitCommand, _num,
                                 format_hm, format_hms)


# ---------------------------------------------------------------- reading each scheduler's status output
# Scheduler words -> 'Q' queued, 'R' running, 'D' done, 'E' error, None: no longer listed (ask the job's files).
_SLURM_STATES = {
    "PENDING": "Q", "CONFIGURING": "Q", "REQUEUED": "Q", "REQUEUE_HOLD": "Q", "REQUEUE_FED": "Q",
    "RESV_DEL_HOLD": "Q", "RUNNING": "R", "COMPLETING": "R", "SUSPENDED": "R", "STOPPED": "R",
    "SIGNALING": "R", "STAGE_OUT": "R", "RESIZING": "R",
    "COMPLETED": "D", "FAILED": "E", "CANCELLED": "E", "TIMEOUT": "E", "NODE_FAIL": "E", "PREEMPTED": "E",
    "BOOT_FAIL": "E", "DEADLINE": "E", "OUT_OF_MEMORY": "E", "SPECIAL_EXIT": "E", "REVOKED": "E"}
_PBS_STATES = {"Q": "Q", "W": "Q", "H": "Q", "T": "Q", "S": "R", "R": "R", "E": "R", "B": "R", "C": None, "F": None}
_LSF_STATES = {"PEND": "Q", "PSUSP": "Q", "WAIT": "Q", "RUN": "R", "USUSP": "R", "SSUSP": "R", "PROV": "R",
               "DONE": "D", "EXIT": "E", "ZOMBI": "E", "UNKWN": None}


def _letter(states: dict[str, str | None], word: str, command: str, job_id: int) -> str | None:
    """A state word a scheduler prints alone (squeue -o %T, bjobs -o stat) as a letter; unknown words are errors."""
    if word not in states:
        raise SchedulerOutputError(f"{command} reported an unknown state {word!r} for job {job_id}")
    return states[word]


def _qstat_state_word(job_id: int, text: str, strip_host: bool) -> str | None:
    """The state column (the 5th) of the job's line in a qstat table; None when the job is not listed.

    Torque prints ids as `N.host` (strip_host), SGE as `N`.
    """
    for line in text.splitlines():
        cols = line.split()
        if cols and (cols[0].split(".")[0] if strip_host else cols[0]) == str(job_id) and len(cols) >= 5:
            return cols[4]
    return None


def _parse_slurm_state(job_id: int, text: str) -> str | None:
    return _letter(_SLURM_STATES, text.split()[0].rstrip("+").upper(), "squeue", job_id) if text else None


def _parse_pbs_state(job_id: int, text: str) -> str | None:
    word = _qstat_state_word(job_id, text, strip_host=True)
    return None if word is None else _PBS_STATES.get(word.upper())


def _parse_sge_state(job_id: int, text: str) -> str | None:
    word = _qstat_state_word(job_id, text, strip_host=False)
    if word is None:
        return None
    if "E" in word:
        return "E"  # Eqw: the job is stuck in error
    return "Q" if word.endswith("qw") or word in ("h", "w") else "R"


def _parse_lsf_state(job_id: int, text: str) -> str | None:
    if not text or "not found" in text:
        return None
    return _letter(_LSF_STATES, text.split()[0].upper(), "bjobs", job_id)


def _parse_slurm_final_state(stdout: str) -> tuple[str | None, str]:
    """(D, E or None, the word) from `scontrol show job`."""
    match = re.search(r"\bJobState=(\S+)", stdout)
    if not match:
        return None, ""
    word = match.group(1).upper()
    letter = _SLURM_STATES.get(word)
    return (letter if letter in ("D", "E") else None), word


# ---------------------------------------------------------------- scheduler dialects (data)
@dataclass(frozen=True)
class SchedulerDialect:
    """All that differs between schedulers; the functions below are the same for every one.

    Header directives are `str.format` templates over the request's values: name, shell, pe
    (SGE parallel environment), nodes, ppn, slots (= nodes × ppn), walltime, cputime (already
    written by `format_time`), mem, pmem (integers), queue, account, output.  The `job` lines are
    always written; each resource's lines only when the request sets it (an empty tuple: the
    scheduler has no such limit).  Command templates take {job_file} or {job_id}.
    """

    prefix: str
    job: tuple[str, ...]  # name, shell, nodes × ppn
    walltime: tuple[str, ...]
    cputime: tuple[str, ...]
    mem: tuple[str, ...]
    pmem: tuple[str, ...]
    queue: tuple[str, ...]
    account: tuple[str, ...]
    output: tuple[str, ...]  # stdout file (and joining stderr into it where that takes a directive)
    format_time: Callable[[float], str]
    submit: tuple[str, ...]
    status: tuple[str, ...]
    cancel: tuple[str, ...]
    job_id_pattern: re.Pattern[str]  # group 1: the job id in the submit command's output
    parse_state: Callable[[int, str], str | None]  # (job id, stripped status output) -> Q/R/D/E/None
    submit_via_stdin: bool = False
    final_state: tuple[str, ...] = ()  # a command that still knows a job after it left the queue
    parse_final_state: Callable[[str], tuple[str | None, str]] | None = None


DIALECTS: dict[str, SchedulerDialect] = {
    "slurm": SchedulerDialect(
        prefix="#SBATCH", job=("-J {name}", "-N {nodes}", "--ntasks-per-node={ppn}"),
        walltime=("-t {walltime}",), cputime=(), mem=("--mem={mem}G",), pmem=("--mem-per-cpu={pmem}M",),
        queue=("-p {queue}",), account=("-A {account}",), output=("-o {output}",),  # stderr joins stdout
        format_time=format_hms,
        submit=("sbatch", "{job_file}"), status=("squeue", "-h", "-j", "{job_id}", "-o", "%T"),
        cancel=("scancel", "{job_id}"),
        job_id_pattern=re.compile(r"Submitted batch job (\d+)"), parse_state=_parse_slurm_state,
        final_state=("scontrol", "show", "job", "{job_id}"),  # kept for MinJobAge after the job ends
        parse_final_state=_parse_slurm_final_state),
    "pbs": SchedulerDialect(
        prefix="#PBS", job=("-N {name}", "-l nodes={nodes}:ppn={ppn}"),
        walltime=("-l walltime={walltime}",), cputime=("-l cput={cputime}",),
        mem=("-l mem={mem}gb",), pmem=("-l pmem={pmem}mb",),
        queue=("-q {queue}",), account=("-A {account}",), output=("-o {output}", "-j oe"),
        format_time=format_hms,
        submit=("qsub", "{job_file}"), status=("qstat", "{job_id}"), cancel=("qdel", "{job_id}"),
        job_id_pattern=re.compile(r"^\s*(\d+)(?:\.\S*)?\s*$", re.M),  # Torque prints N.host
        parse_state=_parse_pbs_state),
    "sge": SchedulerDialect(
        prefix="#$", job=("-N {name}", "-S {shell}", "-pe {pe} {slots}"),
        walltime=("-l h_rt={walltime}",), cputime=("-l h_cpu={cputime}",),
        mem=("-l mem_free={mem}G",), pmem=("-l h_vmem={pmem}M",),
        queue=("-q {queue}",), account=("-A {account}",), output=("-o {output}", "-j y"),
        format_time=format_hms,
        submit=("qsub", "{job_file}"), status=("qstat", "-u", "*"), cancel=("qdel", "{job_id}"),
        job_id_pattern=re.compile(r"Your job(?:-array)? (\d+)"), parse_state=_parse_sge_state),
    "lsf": SchedulerDialect(
        prefix="#BSUB", job=("-J {name}", "-n {slots}", '-R "span[ptile={ppn}]"'),
        walltime=("-W {walltime}",), cputime=("-c {cputime}",),
        mem=("-M {mem}GB",), pmem=('-R "rusage[mem={pmem}MB]"',),
        queue=("-q {queue}",), account=("-P {account}",), output=("-o {output}",),  # stderr joins stdout
        format_time=format_hm,
        submit=("bsub",), submit_via_stdin=True,  # bsub reads #BSUB directives only from a script on stdin
        status=("bjobs", "-noheader", "-o", "stat", "{job_id}"), cancel=("bkill", "{job_id}"),
        job_id_pattern=re.compile(r"Job <(\d+)> is submitted"), parse_state=_parse_lsf_state),
}
SCHEDULERS = tuple(DIALECTS)
PREFIX = {name: dialect.prefix for name, dialect in DIALECTS.items()}


def calc_dialect(scheduler: str) -> SchedulerDialect:
    """The scheduler's dialect (canonical names only: calc_host has resolved aliases such as torque)."""
    dialect = DIALECTS.get(scheduler)
    if dialect is None:
        raise HostConfigError(f"unknown scheduler {scheduler!r}")
    return dialect


def _header_values(host: ProcessingHost, r: JobRequest, format_time: Callable[[float], str]) -> dict[str, object]:
    """What header templates may name; None for a resource the request leaves unset."""
    def opt(value, fmt):
        return None if value is None else fmt(value)
    return {"name": r.name, "shell": host.shell, "pe": host.sge_pe, "nodes": r.nodes, "ppn": r.ppn,
            "slots": r.nodes * r.ppn, "walltime": opt(r.walltime_h, format_time),
            "cputime": opt(r.cputime_h, format_time), "mem": opt(r.mem_gb, _num), "pmem": opt(r.pmem_mb, _num),
            "queue": r.queue or None, "account": r.account or None, "output": r.output_path or None}


def calc_header_lines(host: ProcessingHost, request: JobRequest) -> list[str]:
    """Scheduler directives for a checked request (call calc_checked_request first)."""
    d = calc_dialect(host.scheduler)
    values = _header_values(host, request, d.format_time)
    resources = (("walltime", d.walltime), ("cputime", d.cputime), ("mem", d.mem), ("pmem", d.pmem),
                 ("queue", d.queue), ("account", d.account), ("output", d.output))
    templates = [*d.job, *(t for key, group in resources if values[key] is not None for t in group)]
    lines = [f"{d.prefix} {t.format(**values)}" for t in templates]
    lines += [h if h.startswith("#") else f"{d.prefix} {h}" for h in host.header_lines]
    return lines


# ---------------------------------------------------------------- scheduler commands and their output
def _argv(template: tuple[str, ...], **values: str) -> list[str]:
    return [arg.format(**values) for arg in template]


def calc_submit_command(scheduler: str, job_file: str) -> SubmitCommand:
    d = calc_dialect(scheduler)
    return SubmitCommand(_argv(d.submit, job_file=job_file), stdin_path=job_file if d.submit_via_stdin else None)


def calc_status_command(scheduler: str, job_id: int) -> list[str]:
    return _argv(calc_dialect(scheduler).status, job_id=str(int(job_id)))


def calc_cancel_command(scheduler: str, job_id: int) -> list[str]:
    return _argv(calc_dialect(scheduler).cancel, job_id=str(int(job_id)))


def calc_final_state_command(scheduler: str, job_id: int) -> list[str] | None:
    """A command that still knows a job after it left the queue (Slurm keeps it for MinJobAge); None if none."""
    d = DIALECTS.get(scheduler)
    return _argv(d.final_state, job_id=str(int(job_id))) if d and d.final_state else None


def parse_job_id(scheduler: str, stdout: str) -> int:
    """The cluster job id from the submit command's output (Torque prints `N.host`)."""
    match = calc_dialect(scheduler).job_id_pattern.search(stdout)
    if not match:
        raise SchedulerOutputError(f"{scheduler} submit output has no job id: {stdout.strip()[:200]!r}")
    return int(match.group(1))


def parse_state(scheduler: str, job_id: int, stdout: str) -> str | None:
    """Scheduler status output → 'Q', 'R', 'D', 'E', or None when the scheduler no longer lists the job.

    None means "ask the job itself" (its exit-code file): these schedulers forget finished jobs.
    """
    return calc_dialect(scheduler).parse_state(job_id, stdout.strip())


def parse_final_state(scheduler: str, stdout: str) -> tuple[str | None, str]:
    """(letter, scheduler's word) from the final-state command (`scontrol show job`): D, E or None."""
    d = DIALECTS.get(scheduler)
    return d.parse_final_state(stdout) if d and d.parse_final_state else (None, "")


def parse_exit_code(text: str) -> int | None:
    """The job file's exit-code file: one integer (None when empty or garbled)."""
    text = text.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else None
