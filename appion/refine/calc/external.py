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
Refinement programs (EMAN, Frealign, RELION, Xmipp) cannot be installed on the test
machines; their command lines follow each program's documented options, and `program`
overrides the executable (tests point it at tests/standins/refine_standin).
"""
from __future__ import annotations

import dataclasses
import re
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


_SYM = re.compile(r"^(c\d+|d\d+|t|o|i\d?)$", re.I)


@dataclass(frozen=True)
class RefineParams:
    """What every refinement job type needs; paths are the prepared inputs in the run directory."""

    rundir: str = ""
    stack: str = ""  # prepared particles (MRC stack; RELION: its STAR file; Xmipp: its metadata)
    model: str = ""  # prepared initial model (MRC)
    apix: float = 0.0  # Å per pixel of the prepared inputs
    iterations: int = 1
    start_iteration: int = 1  # > 1 when continuing after an earlier cycle
    symmetry: str = "c1"
    diameter_A: float = 0.0  # particle diameter (masking); 0: 0.8 × box
    boxsize: int = 0
    angle_deg: float = 10.0  # angular sampling
    lowpass_A: float = 30.0  # initial low-pass of the reference
    nproc: int = 1  # total MPI processes (nodes × ppn)
    program: str = ""  # override the executable
    output_root: str = "run"  # output name prefix inside the run directory

    def check(self, jobtype: str) -> None:
        problems = []
        for name in ("rundir", "stack", "model"):
            if not getattr(self, name):
                problems.append(f"{name} is required")
        if self.apix <= 0:
            problems.append("apix must be positive")
        if self.iterations < 1 or not 1 <= self.start_iteration <= self.iterations:
            problems.append(f"iterations {self.iterations} / start_iteration {self.start_iteration} out of range")
        if not _SYM.match(self.symmetry):
            problems.append(f"symmetry {self.symmetry!r} is not a point group like c1, d7, t, o, i")
        if self.nproc < 1:
            problems.append("nproc must be at least 1")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.output_root):
            problems.append(f"output_root {self.output_root!r} must be a plain file name")
        if problems:
            raise JobParamsError(f"job type {jobtype!r}: " + "; ".join(problems))

    @property
    def mask_radius_px(self) -> int:
        diameter = self.diameter_A or 0.8 * self.boxsize * self.apix
        return max(1, int(round(diameter / (2 * self.apix))))


def _mpi(params: RefineParams, serial: str, parallel: str) -> list[str]:
    """The program, under mpirun when more than one process is asked for."""
    if params.program:
        program = params.program
    else:
        program = parallel if params.nproc > 1 else serial
    return (["mpirun", "-np", str(params.nproc)] if params.nproc > 1 else []) + [program]


def _iteration_numbers(names: Sequence[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for n in names if (m := rx.fullmatch(n))})


def _continue_after(params: RefineParams, done: list[int]) -> dict | None:
    """Another cycle when fewer iterations than asked exist (the program stopped early, e.g. at walltime)."""
    if not done:
        raise CycleError(f"the refinement in {params.rundir} wrote no iteration output")
    last = max(done)
    if last >= params.iterations:
        return None
    return {**dataclasses.asdict(params), "start_iteration": last + 1}


# ---------------------------------------------------------------- RELION
def _relion_commands(p: RefineParams) -> list[list[str]]:
    out = f"{p.rundir}/{p.output_root}"
    argv = _mpi(p, "relion_refine", "relion_refine_mpi")
    if p.start_iteration > 1:
        argv += ["--continue", f"{out}_it{p.start_iteration - 1:03d}_optimiser.star"]
    else:
        argv += ["--i", p.stack, "--ref", p.model, "--ini_high", f"{p.lowpass_A:g}", "--sym", p.symmetry,
                 "--angpix", f"{p.apix:g}", "--particle_diameter", f"{2 * p.mask_radius_px * p.apix:g}",
                 "--K", "1", "--flatten_solvent", "--zero_mask", "--oversampling", "1",
                 "--healpix_order", str(max(0, min(4, int(round(60 / p.angle_deg)) // 3))),
                 "--offset_range", "5", "--offset_step", "2"]
    argv += ["--o", out, "--iter", str(p.iterations), "--j", "1"]
    return [argv]


def _relion_next(p: RefineParams, names: Sequence[str]) -> dict | None:
    return _continue_after(p, _iteration_numbers(names, rf"{re.escape(p.output_root)}_it(\d+)_class001\.mrc"))


# ---------------------------------------------------------------- EMAN (1): refine N in the run directory
def _eman_commands(p: RefineParams) -> list[list[str]]:
    # EMAN1's refine reads start.hed/start.img and threed.0a.mrc from the working directory and
    # runs all iterations itself; appion runs one `refine 1` per remaining iteration so a cycle can resume.
    out = []
    for it in range(p.start_iteration, p.iterations + 1):
        out.append(_mpi(p, "refine", "refine") + ["1", f"mask={p.mask_radius_px}", f"ang={p.angle_deg:g}",
                                                    f"sym={p.symmetry}", f"proc={p.nproc}", "pad=" + str(
                                                        int(1.25 * p.boxsize) if p.boxsize else 0),
                                                    "hard=25", "classkeep=0.8", "classiter=3", "median",
                                                    f"iter={it}"])
    return out


def _eman_next(p: RefineParams, names: Sequence[str]) -> dict | None:
    return _continue_after(p, [i for i in _iteration_numbers(names, r"threed\.(\d+)a\.mrc") if i > 0])


# ---------------------------------------------------------------- Frealign (9.x driver)
def _frealign_files(p: RefineParams) -> dict[str, str]:
    """Frealign 9's `frealign_run_refine` reads all settings from `mparameters` in the working directory."""
    rows = [("cluster_type", "none"), ("nprocessor_ref", p.nproc), ("nprocessor_rec", p.nproc),
            ("MODE", 1), ("start_process", p.start_iteration + 1), ("end_process", p.iterations + 1),
            ("res_high_refinement", f"{max(2 * p.apix, p.lowpass_A / 3):.1f}"), ("res_high_class", p.lowpass_A),
            ("thresh_reconst", 0.0), ("nclasses", 1), ("pix_size", f"{p.apix:g}"), ("sym", p.symmetry.upper()),
            ("data_input", p.output_root), ("raw_images", p.stack), ("first_particle", 1), ("outer_radius",
             f"{p.mask_radius_px * p.apix:g}"), ("mol_mass", 0), ("Cs", 2.7), ("kV", 300), ("AmpC", 0.07),
            ("XSTD", 0), ("PBC", 100), ("parameter_mask", "1 1 1 1 1"), ("delta", f"{p.angle_deg:g}")]
    return {"mparameters": "\n".join(f"{k:<24}{v}" for k, v in rows) + "\n"}


def _frealign_commands(p: RefineParams) -> list[list[str]]:
    return [[p.program or "frealign_run_refine"]]


def _frealign_next(p: RefineParams, names: Sequence[str]) -> dict | None:
    done = [i - 1 for i in _iteration_numbers(names, rf"{re.escape(p.output_root)}_(\d+)_r1\.mrc") if i > 1]
    return _continue_after(p, done)


# ---------------------------------------------------------------- Xmipp (3): projection matching and ML3D
def _xmipp_commands(p: RefineParams) -> list[list[str]]:
    out = []
    for it in range(p.start_iteration, p.iterations + 1):
        ref = p.model if it == 1 else f"{p.rundir}/{p.output_root}_iter{it - 1:03d}.vol"
        gallery = f"{p.rundir}/gallery_iter{it:03d}.stk"
        matched = f"{p.rundir}/{p.output_root}_iter{it:03d}.xmd"
        out.append(_mpi(p, "xmipp_angular_project_library", "xmipp_mpi_angular_project_library")
                   + ["-i", ref, "-o", gallery, "--sampling_rate", f"{p.angle_deg:g}", "--sym", p.symmetry])
        out.append(_mpi(p, "xmipp_angular_projection_matching", "xmipp_mpi_angular_projection_matching")
                   + ["-i", p.stack, "-o", matched, "--ref", gallery, "--Ri", "0", "--Ro", str(p.mask_radius_px),
                      "--max_shift", "5"])
        out.append(_mpi(p, "xmipp_reconstruct_fourier", "xmipp_mpi_reconstruct_fourier")
                   + ["-i", matched, "-o", f"{p.rundir}/{p.output_root}_iter{it:03d}.vol", "--sym", p.symmetry])
    if p.program:  # a single program (stand-in or site wrapper) replaces the three steps
        out = [[p.program, "--i", p.stack, "--ref", p.model, "--o", f"{p.rundir}/{p.output_root}",
                "--iter", str(p.iterations), "--first_iter", str(p.start_iteration)]]
    return out


def _xmipp_next(p: RefineParams, names: Sequence[str]) -> dict | None:
    return _continue_after(p, _iteration_numbers(names, rf"{re.escape(p.output_root)}_iter(\d+)\.vol"))


def _ml3d_commands(p: RefineParams) -> list[list[str]]:
    argv = _mpi(p, "xmipp_ml_refine3d", "xmipp_mpi_ml_refine3d")
    argv += ["-i", p.stack, "--ref", p.model, "--oroot", f"{p.rundir}/{p.output_root}", "--iter", str(p.iterations),
             "--sym", p.symmetry, "--ang", f"{p.angle_deg:g}"]
    if p.start_iteration > 1:
        argv += ["--restart", f"{p.rundir}/{p.output_root}_it{p.start_iteration - 1:06d}_img.xmd"]
    return [argv]


def _ml3d_next(p: RefineParams, names: Sequence[str]) -> dict | None:
    return _continue_after(p, _iteration_numbers(names, rf"{re.escape(p.output_root)}_it(\d+)_vols\.xmd"))


register_job_type(JobType("generic", "any command line, run as given (classic generic Appion job)",
                          _parse_generic, lambda p: [list(p.command)]))
register_job_type(JobType("relionrecon", "RELION 3D refinement (relion_refine / relion_refine_mpi)",
                          _parser("relionrecon", RefineParams), _relion_commands, next_cycle=_relion_next))
register_job_type(JobType("emanrecon", "EMAN 1 refine, one iteration per command",
                          _parser("emanrecon", RefineParams), _eman_commands, next_cycle=_eman_next))
register_job_type(JobType("frealignrecon", "Frealign 9 refinement (frealign_run_refine reading mparameters)",
                          _parser("frealignrecon", RefineParams), _frealign_commands, files=_frealign_files,
                          next_cycle=_frealign_next))
register_job_type(JobType("xmipprecon", "Xmipp 3 projection matching (library, matching, Fourier reconstruction)",
                          _parser("xmipprecon", RefineParams), _xmipp_commands, next_cycle=_xmipp_next))
register_job_type(JobType("xmippml3d", "Xmipp 3 maximum-likelihood 3D refinement",
                          _parser("xmippml3d", RefineParams), _ml3d_commands, next_cycle=_ml3d_next))
