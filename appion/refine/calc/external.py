"""Job types: from validated parameters to the commands of a job file (pure).

Each job type is registered by name in JOB_TYPES with `register_job_type`; runJob.py, the
tracker and the workflow layer only ever call the functions below, so adding a type is one
`register_job_type(JobType(...))` and no change anywhere else.

Stable API (used by appion.workflow.core):
    build_job_commands(jobtype, params) -> list[list[str]]   # argument lists, one per job-file line
    build_job_files(jobtype, params) -> dict[str, str]        # extra input files (name -> text) for the run directory
    calc_next_cycle(jobtype, params, output_names) -> dict | None  # params for another cycle, or None when done
    parse_job_params(jobtype, params) -> record                 # validation only (raises JobParamsError)

Parameters are plain mappings (JSON-storable, so a restarted tracker can rebuild the next
cycle); values may be strings as they come from a command line and are converted here.
The refinement types (appion.refine.calc.refinejobs) build RELION's command line checked
against the installed relion_refine's --help, and EMAN 1's, Frealign 9's and Xmipp 3's from
their documented options; `program` overrides the executable.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence


class JobParamsError(ValueError):
    """Parameters a job type cannot use (names the job type and the parameter)."""


class UnknownJobTypeError(JobParamsError):
    """No job type of that name is registered."""


class CycleError(ValueError):
    """A finished run left outputs that make no sense (e.g. no iteration written)."""


@dataclass(frozen=True)
class JobType:
    """How to turn parameters into a job: parse (validate) → commands (+ files) → maybe another cycle."""

    name: str
    description: str
    parse: Callable[[Mapping[str, Any]], Any]
    commands: Callable[[Any], list[list[str]]]
    files: Callable[[Any], dict[str, str]] = lambda params: {}
    next_cycle: Callable[[Any, Sequence[str]], dict | None] | None = None  # None: always a single cycle


JOB_TYPES: dict[str, JobType] = {}


def register_job_type(jobtype: JobType) -> JobType:
    """Add (or replace) a job type; returns it so it can be used as a value."""
    JOB_TYPES[jobtype.name] = jobtype
    return jobtype


def get_job_type(name: str) -> JobType:
    try:
        return JOB_TYPES[name]
    except KeyError:
        raise UnknownJobTypeError(f"unknown job type {name!r} (known: {', '.join(sorted(JOB_TYPES))})") from None


def parse_job_params(jobtype: str, params: Mapping[str, Any]):
    return get_job_type(jobtype).parse(params)


def build_job_commands(jobtype: str, params: Mapping[str, Any]) -> list[list[str]]:
    """The job file's commands for these parameters (each an argument list, never a shell string)."""
    jt = get_job_type(jobtype)
    commands = jt.commands(jt.parse(params))
    for argv in commands:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise JobParamsError(f"job type {jobtype!r} built an invalid command {argv!r}")
    return commands


def build_job_files(jobtype: str, params: Mapping[str, Any]) -> dict[str, str]:
    jt = get_job_type(jobtype)
    return jt.files(jt.parse(params))


def calc_next_cycle(jobtype: str, params: Mapping[str, Any], output_names: Sequence[str]) -> dict | None:
    """After a successful run: parameters for another cycle, or None when the job is complete."""
    jt = get_job_type(jobtype)
    if jt.next_cycle is None:
        return None
    return jt.next_cycle(jt.parse(params), output_names)


# ---------------------------------------------------------------- parameter records
def _convert(jobtype: str, name: str, kind, value):
    if value is None:
        return None
    try:
        if kind in (int, "int", "int | None"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind in (float, "float", "float | None"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind in (bool, "bool"):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on", ""):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if kind in (str, "str"):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise JobParamsError(f"job type {jobtype!r}: parameter {name} has the wrong type ({value!r})") from None
    return value


def _parser(jobtype: str, record: type, required: tuple[str, ...] = ()):
    """A parse function filling a dataclass from a mapping; unknown keys are ignored (a classic command
    line carries options for other programs), missing required keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(record)}

    def parse(params: Mapping[str, Any]):
        if not isinstance(params, Mapping):
            raise JobParamsError(f"job type {jobtype!r}: parameters must be a mapping")
        values = {}
        for name, f in fields.items():
            if name in params and params[name] is not None:
                values[name] = _convert(jobtype, name, f.type, params[name])
        missing = [r for r in required if r not in values]
        if missing:
            raise JobParamsError(f"job type {jobtype!r} needs parameter(s) {', '.join(missing)}")
        record_value = record(**values)
        check = getattr(record_value, "check", None)
        if check:
            check(jobtype)
        return record_value

    return parse


@dataclass(frozen=True)
class GenericParams:
    command: tuple[str, ...] = ()

    def check(self, jobtype: str) -> None:
        if not self.command or not all(isinstance(a, str) for a in self.command):
            raise JobParamsError(f"job type {jobtype!r} needs a non-empty command (list of arguments)")


def _parse_generic(params: Mapping[str, Any]) -> GenericParams:
    command = params.get("command") if isinstance(params, Mapping) else None
    if isinstance(command, str) or not isinstance(command, (list, tuple)):
        raise JobParamsError("job type 'generic' needs 'command' as a list of arguments, not a shell string")
    value = GenericParams(tuple(command))
    value.check("generic")
    return value


register_job_type(JobType("generic", "any command line, run as given (classic generic Appion job)",
                          _parse_generic, lambda p: [list(p.command)]))

# Job types classic Appion's web interface submits through runJob.py that run their command line as it
# is (leginon's apAgent builds a generic job for every type but its refinement types; its own test
# type is jobtest).  runJob.py treats any other name the same way, with a warning.
CLASSIC_COMMAND_TYPES = {
    "makeddrawframestack": "motion correction of dose-fractionated movies (makeDDAlignMotionCor2_UCSF.py ...)",
    "ctfestimate": "CTF estimation (ctffind4.py, ctfestimate.py)", "gctf": "CTF estimation with Gctf (gctf.py)",
    "ctffind4": "CTF estimation with CTFFIND 4 (ctffind4.py)", "ctffind5": "CTF estimation with CTFFIND 5",
    "dogpicker": "difference-of-Gaussians particle picking", "templatecorrelator": "template particle picking",
    "manualpicker": "manual particle picks", "gautomatch": "Gautomatch particle picking",
    "makestack2": "particle stack extraction", "stackintopicks": "picks from a stack",
    "partalign": "2D particle alignment", "maxlikealign": "maximum-likelihood 2D alignment",
    "topologyalign": "topology-representing-network alignment", "cl2d": "Xmipp CL2D classification",
    "sparxisac": "SPARX ISAC 2D classification", "imagicmsa": "IMAGIC MSA classification",
    "createmodel": "initial model", "uploadmodel": "model upload", "uploadtemplate": "template upload",
    "uploadrecon": "reconstruction upload", "prepfrealign": "Frealign preparation",
    "preprefine": "refinement preparation (prepRefine*.py)", "jobtest": "classic runJob.py test job",
}


def register_command_type(name: str, description: str) -> JobType:
    """A job type that runs its command line as given (like 'generic', under its own name)."""
    return register_job_type(JobType(name, description, _parse_generic, lambda p: [list(p.command)]))


for _name, _description in CLASSIC_COMMAND_TYPES.items():
    register_command_type(_name, _description)


def resolve_job_type(jobtype: str) -> str:
    """The registered type a job of this name runs as: itself, or 'generic' for a name nobody registered
    (classic runJob.py runs unknown types as generic jobs; the job keeps its name in the database)."""
    return jobtype if jobtype in JOB_TYPES else "generic"


def calc_is_command_type(jobtype: str) -> bool:
    """True when the type runs a command line as given (generic and the classic command types)."""
    jt = JOB_TYPES.get(jobtype)
    return jt is not None and jt.parse is _parse_generic


# The refinement job types register themselves (they use the registry above).
from appion.refine.calc import refinejobs  # noqa: E402,F401
