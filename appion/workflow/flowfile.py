"""Workflow files (`appion workflow run FILE.toml`): TOML read, checked and turned into dataclasses.

Pure: nothing here runs a job, reads the database or imports a module.  Every error names the
file, the job and the problem on one line, e.g. "flow.toml: job 'b': unknown label 'x' in when".

    name = "refine-chain"        # workflow name: its state is kept in the database under it
    host = "slurm"               # default processing host of command jobs (default "local")
    workdir = "runs"             # default <file's directory>/<name>; each command job runs in <workdir>/<label>
    modules = ["mysite.jobs"]    # imported before the run; they register job types

    [[job]]
    label = "prepare"
    command = ["python3", "prep.py", "--box", "256"]    # an argument list, never a shell line
    inputs = ["particles.star"]                        # their contents take part in the memo key
    [[job]]
    label = "refine"
    command = ["relion_refine", "..."]
    when = "prepare.completed"
    host = "garibaldi"                                 # this job elsewhere (a [hosts.NAME] of the config)
    resources = { ppn = 8, mem_gb = 32, walltime_h = 12 }
    [[job]]
    label = "report"
    jobtype = "mysite-report"                          # a registered job type instead of a command
    params = { format = "pdf" }
    when = "refine.completed or (refine.failed and not prepare.cancelled)"

Conditions: `label.completed`, `label.failed`, `label.cancelled`, combined with `and`, `or`, `not`
(or `&`, `|`, `~`) and parentheses; `not` binds tighter than `and`, `and` tighter than `or`.
Relative paths (workdir, rundir, inputs) are relative to the file's directory.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appion.workflow.calc import MAX_CONDITION_DEPTH, PREDICATES, Condition, Is, calc_cycle, calc_labels

__all__ = ["FlowFile", "FlowJob", "FlowFileError", "Resources", "read_flow_file", "parse_flow_text",
           "parse_when", "LOCAL_HOST"]

LOCAL_HOST = "local"
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+@=,-]{0,127}$")
_HOST = re.compile(r"^[A-Za-z0-9_.+:@=,-]{1,64}$")  # what hosts.py accepts as a host name
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_KEYWORDS = frozenset({"and", "or", "not"})
_TOP_KEYS = ("name", "host", "workdir", "modules", "job")
_JOB_KEYS = ("label", "command", "jobtype", "params", "inputs", "when", "host", "rundir", "resources")
_COMMAND_ONLY = ("host", "rundir", "resources")
MAX_WHEN_CHARS = 4000


class FlowFileError(ValueError):
    """The workflow file is wrong; the message is one line naming the file (and job) and the problem."""


@dataclass(frozen=True)
class Resources:
    """What a command job asks of a scheduler (classic runJob.py units); None/"" = the host's default."""

    nodes: int | None = None
    ppn: int | None = None
    walltime_h: float | None = None
    cputime_h: float | None = None
    mem_gb: float | None = None
    pmem_mb: float | None = None
    queue: str = ""
    account: str = ""

    def as_params(self) -> dict:
        """Only the fields set (so a field added later leaves existing memo keys alone)."""
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_params(cls, data: dict) -> Resources:
        return cls(**data)


_RESOURCE_INTS = ("nodes", "ppn")
_RESOURCE_FLOATS = ("walltime_h", "cputime_h", "mem_gb", "pmem_mb")
_RESOURCE_WORDS = ("queue", "account")


@dataclass(frozen=True)
class FlowJob:
    """One job of the file: a command (argv) run on a processing host, or a registered job type."""

    label: str
    when: Condition | None
    when_text: str | None
    inputs: tuple[str, ...] = ()  # absolute paths
    command: tuple[str, ...] | None = None
    host: str = LOCAL_HOST
    rundir: str = ""  # absolute; command jobs only
    resources: Resources = field(default_factory=Resources)
    jobtype: str | None = None
    params: dict = field(default_factory=dict)

    @property
    def is_command(self) -> bool:
        return self.command is not None


@dataclass(frozen=True)
class FlowFile:
    """A checked workflow file; `jobs` are in an order where every job comes after those it waits on."""

    path: str  # as given (for messages)
    name: str
    workdir: str  # absolute
    modules: tuple[str, ...]
    jobs: tuple[FlowJob, ...]

    def job(self, label: str) -> FlowJob:
        for job in self.jobs:
            if job.label == label:
                return job
        raise KeyError(label)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(j.label for j in self.jobs)


# ---------------------------------------------------------------- conditions as text

_TOKEN = re.compile(r"\s*(?:(?P<punct>[()&|~])|(?P<word>[A-Za-z_][A-Za-z0-9_-]*)(?:\.(?P<pred>[A-Za-z_]+))?)")


class _WhenError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, column) with kind: punct ( ) & | ~, op (and/or/not), pred ("label.state"); then end."""
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            raise _WhenError(f"unexpected character {text[col - 1]!r} at column {col}")
        col = (m.start("punct") if m.group("punct") else m.start("word")) + 1
        if m.group("punct"):
            out.append(("punct", m.group("punct"), col))
        elif m.group("pred") is not None:
            out.append(("pred", f"{m.group('word')}.{m.group('pred')}", col))
        elif m.group("word") in _KEYWORDS:
            out.append(("op", m.group("word"), col))
        else:
            raise _WhenError(f"{m.group('word')!r} at column {col} is neither and/or/not nor label.state")
        pos = m.end()
    out.append(("end", "", len(text) + 1))
    return out


class _Parser:
    """Recursive descent: or_expr := and_expr (or and_expr)*; and_expr := unary (and unary)*;
    unary := not unary | ( or_expr ) | label.state."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.toks[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def is_op(self, *names: str) -> bool:
        kind, value, _ = self.peek()
        return (kind == "op" and value in names) or (kind == "punct" and value in names)

    def parse(self) -> Condition:
        cond = self.or_expr(0)
        kind, value, col = self.peek()
        if kind != "end":
            raise _WhenError(f"unexpected {value!r} at column {col}")
        return cond

    def or_expr(self, depth: int) -> Condition:
        cond = self.and_expr(depth)
        while self.is_op("or", "|"):
            self.take()
            cond = cond | self.and_expr(depth)
        return cond

    def and_expr(self, depth: int) -> Condition:
        cond = self.unary(depth)
        while self.is_op("and", "&"):
            self.take()
            cond = cond & self.unary(depth)
        return cond

    def unary(self, depth: int) -> Condition:
        if depth > MAX_CONDITION_DEPTH:
            raise _WhenError(f"nested deeper than {MAX_CONDITION_DEPTH} levels")
        kind, value, col = self.take()
        if (kind, value) in (("op", "not"), ("punct", "~")):
            return ~self.unary(depth + 1)
        if (kind, value) == ("punct", "("):
            cond = self.or_expr(depth + 1)
            kind, value, col = self.take()
            if (kind, value) != ("punct", ")"):
                raise _WhenError(f"expected ')' at column {col}" + (f", found {value!r}" if value else ""))
            return cond
        if kind == "pred":
            label, _, state = value.partition(".")
            if state not in PREDICATES:
                raise _WhenError(f"unknown state {state!r} of {label!r} at column {col} "
                                 f"(expected {', '.join(PREDICATES)})")
            return Is(label, PREDICATES[state])
        found = "the end" if kind == "end" else repr(value)
        raise _WhenError(f"expected label.completed|failed|cancelled, 'not' or '(' at column {col}, found {found}")


def parse_when(text: str) -> Condition:
    """A condition from its text form, e.g. "a.completed and not (b.failed or c.cancelled)" (raises ValueError)."""
    if len(text) > MAX_WHEN_CHARS:
        raise ValueError(f"condition longer than {MAX_WHEN_CHARS} characters")
    if not text.strip():
        raise ValueError("condition is empty (leave `when` out to start without waiting)")
    try:
        return _Parser(text).parse()
    except _WhenError as exc:
        raise ValueError(str(exc)) from None


# ---------------------------------------------------------------- the file

def read_flow_file(path: str | Path) -> FlowFile:
    """Read and check a workflow file (raises FlowFileError)."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowFileError(f"{shown}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowFileError(f"{shown}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_flow_text(text, shown, base_dir=Path(path).resolve().parent)


def parse_flow_text(text: str, shown: str, base_dir: Path) -> FlowFile:
    """Check TOML text (from the file `shown`, relative paths under `base_dir`) into a FlowFile."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FlowFileError(f"{shown}: not valid TOML: {exc}") from None

    def fail(msg: str) -> FlowFileError:
        return FlowFileError(f"{shown}: {' '.join(msg.split())}")

    _unknown_keys(data, _TOP_KEYS, "", fail)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(f"name must be a word of letters, digits and _.+@=,- (got {name!r})")
    host = _host(data.get("host", LOCAL_HOST), "host", fail)
    workdir = _abs_path(data.get("workdir", name), base_dir, "workdir", fail)
    modules = data.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and _MODULE.match(m) for m in modules):
        raise fail(f"modules must be a list of dotted Python module names (got {modules!r:.100})")
    tables = data.get("job")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise fail("needs at least one [[job]] table")
    jobs: list[FlowJob] = []
    seen: set[str] = set()
    for i, table in enumerate(tables, start=1):
        job = _job(table, i, host, workdir, base_dir, fail)
        if job.label in seen:
            raise fail(f"job {job.label!r}: label used twice")
        seen.add(job.label)
        jobs.append(job)
    for job in jobs:
        unknown = sorted(calc_labels(job.when) - seen)
        if unknown:
            raise fail(f"job {job.label!r}: unknown label {', '.join(map(repr, unknown))} in when")
    conditions = {j.label: j.when for j in jobs}
    for job in jobs:
        cycle = calc_cycle(job.label, job.when, conditions)
        if cycle:
            raise fail(f"job {job.label!r}: jobs wait on each other in a cycle: {' -> '.join(cycle)}")
    return FlowFile(path=shown, name=name, workdir=workdir, modules=tuple(modules), jobs=_ordered(jobs))


def _job(table: dict, index: int, default_host: str, workdir: str, base_dir: Path, fail) -> FlowJob:
    label = table.get("label")
    if not isinstance(label, str) or not _LABEL.match(label) or label in _KEYWORDS:
        raise fail(f"job {index}: label must start with a letter and hold only letters, digits, _ and - "
                   f"(at most 64; not and/or/not), got {label!r}")
    where = f"job {label!r}"
    _unknown_keys(table, _JOB_KEYS, f"{where}: ", fail)
    command, jobtype = table.get("command"), table.get("jobtype")
    if (command is None) == (jobtype is None):
        raise fail(f"{where}: needs exactly one of command (an argument list) or jobtype")
    when_text = table.get("when")
    when = None
    if when_text is not None:
        if not isinstance(when_text, str):
            raise fail(f"{where}: when must be a string such as \"a.completed and not b.failed\"")
        try:
            when = parse_when(when_text)
        except ValueError as exc:
            raise fail(f"{where}: bad condition {when_text!r} in when: {exc}") from None
    inputs = table.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(p, str) and p for p in inputs):
        raise fail(f"{where}: inputs must be a list of file paths")
    inputs = tuple(_abs_path(p, base_dir, "inputs", lambda m: fail(f"{where}: {m}")) for p in inputs)
    if jobtype is not None:
        misplaced = [k for k in _COMMAND_ONLY if k in table]
        if misplaced:
            raise fail(f"{where}: {', '.join(misplaced)} only apply to command jobs")
        if not isinstance(jobtype, str) or not jobtype:
            raise fail(f"{where}: jobtype must be a non-empty string")
        params = table.get("params", {})
        if not isinstance(params, dict):
            raise fail(f"{where}: params must be a table")
        return FlowJob(label=label, when=when, when_text=when_text, inputs=inputs, jobtype=jobtype,
                       params=_plain(params))
    if "params" in table:
        raise fail(f"{where}: params only apply to jobtype jobs (a command carries its own arguments)")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise fail(f"{where}: command must be a non-empty list of strings (an argument list, not a shell line)")
    if not command[0] or any("\0" in a for a in command):
        raise fail(f"{where}: command has an empty program name or a NUL character")
    host = _host(table.get("host", default_host), f"{where}: host", fail)
    rundir = _abs_path(table.get("rundir", str(Path(workdir) / label)), base_dir, f"{where}: rundir", fail)
    resources = _resources(table.get("resources", {}), where, fail)
    return FlowJob(label=label, when=when, when_text=when_text, inputs=inputs, command=tuple(command), host=host,
                   rundir=rundir, resources=resources)


def _resources(spec, where: str, fail) -> Resources:
    if not isinstance(spec, dict):
        raise fail(f"{where}: resources must be a table such as {{ ppn = 4, mem_gb = 8 }}")
    known = _RESOURCE_INTS + _RESOURCE_FLOATS + _RESOURCE_WORDS
    _unknown_keys(spec, known, f"{where}: resources: ", fail)
    values: dict = {}
    for key, value in spec.items():
        ok = (key in _RESOURCE_INTS and isinstance(value, int) and not isinstance(value, bool) and value > 0) or \
             (key in _RESOURCE_FLOATS and isinstance(value, (int, float)) and not isinstance(value, bool)
              and 0 < value < float("inf")) or \
             (key in _RESOURCE_WORDS and isinstance(value, str) and _HOST.match(value))
        if not ok:
            kind = ("a positive integer" if key in _RESOURCE_INTS else "a positive number" if key in _RESOURCE_FLOATS
                    else "a word of letters, digits and _.+:@=,-")
            raise fail(f"{where}: resources: {key} must be {kind}, not {value!r}")
        values[key] = float(value) if key in _RESOURCE_FLOATS else value
    return Resources(**values)


def _unknown_keys(table: dict, known: tuple[str, ...], prefix: str, fail) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise fail(f"{prefix}unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                   f"(known: {', '.join(known)})")


def _host(value, where: str, fail) -> str:
    if not isinstance(value, str) or not _HOST.match(value):
        raise fail(f"{where} must be \"local\", a scheduler (slurm, pbs, sge, lsf) or a configured host name, "
                   f"not {value!r}")
    return value


def _abs_path(value, base_dir: Path, where: str, fail) -> str:
    if not isinstance(value, str) or not value or "\0" in value or "\n" in value:
        raise fail(f"{where} must be a path, not {value!r}")
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p))


def _plain(value):
    """TOML values as JSON-ready ones (dates become ISO text)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return value.isoformat()


def _ordered(jobs: list[FlowJob]) -> tuple[FlowJob, ...]:
    """File order, except that a job moves after the jobs it waits on (the file is known to be acyclic)."""
    placed: set[str] = set()
    out: list[FlowJob] = []
    pending = list(jobs)
    while pending:
        for job in pending:
            if calc_labels(job.when) <= placed:
                out.append(job)
                placed.add(job.label)
                pending.remove(job)
                break
    return tuple(out)
