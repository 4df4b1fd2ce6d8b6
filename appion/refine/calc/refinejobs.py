"""Refinement job types: RELION, EMAN 1, Frealign 9, Xmipp 3 (pure: parameters → commands and files).

Each job runs in its own run directory and reads what prepRefine*.py prepared (paths in the
parameters).  Iterations `start_iteration..iterations` are classic's --startIter/--endIter; when
a program stops early (walltime) the lifecycle submits another cycle from the last iteration written.

* relionrecon: `relion_refine` (`relion_refine_mpi` under mpirun) in 3D classification mode with one
  class, `--iter N`, continued with `--continue <root>_itNNN_optimiser.star`.  RELION 3.1 and later
  read the pixel size from the particle file's optics table and refuse `--angpix`; older versions need
  it (`relion_version`).  With CTF columns in the particle file: `--ctf`.  The options used are the
  ones `relion_refine --help` lists (checked by the tests against the installed RELION).
* emanrecon: EMAN 1 `refine N mask=R proc=P ang=A sym=S pad=B hard=25 classkeep=0.8 classiter=3
  median` in the run directory, which must hold start.hed/start.img and threed.0a.mrc (linked from the
  prepared run); EMAN 1's refine picks up from the last threed.<n>a.mrc it finds.
* frealignrecon: Frealign 9.11 `frealign_run_refine`, all settings in `mparameters` (its key names);
  the prepared parameter file and model are linked as `<root>_1_r1.par` / `<root>_1_r1.mrc`.
  Voltage, Cs and amplitude contrast come from the prepared particles (the session's instrument and
  CTF run) or from --kv/--cs/--wgh; a missing one is an error naming it.
* xmipprecon: Xmipp 3 projection matching (library, matching, Fourier reconstruction per iteration,
  then the mask volume when one was prepared); xmippml3d: `xmipp_ml_refine3d`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Sequence

from appion.refine.calc.external import CycleError, JobParamsError, JobType, _parser, register_job_type
from appion.refine.calc.formats import calc_frealign_mparameters, calc_relion_has_optics, calc_version_tuple

_SYM = re.compile(r"^(c\d+|d\d+|t|o|i\d?)$", re.I)


@dataclass(frozen=True)
class RefineParams:
    """What every refinement job type needs; paths are the prepared inputs."""

    rundir: str = ""
    stack: str = ""  # prepared particles (MRC stack; RELION: its STAR file; Xmipp: its metadata; EMAN: start.hed)
    model: str = ""  # prepared initial model (MRC)
    apix: float = 0.0  # Å per pixel of the prepared inputs
    iterations: int = 1  # last iteration (classic --endIter)
    start_iteration: int = 1  # first iteration (classic --startIter; > 1 continues an earlier cycle)
    symmetry: str = "c1"
    diameter_A: float = 0.0  # particle diameter (masking); 0: from mask_radius_px, else 0.8 × box
    mask_radius_px: float = 0.0  # classic --outerMaskRadius (pixels)
    inner_mask_px: float = 0.0  # classic --innerMaskRadius (pixels)
    boxsize: int = 0
    angle_deg: float = 10.0  # angular sampling
    lowpass_A: float = 30.0  # initial low-pass of the reference / high-resolution limit
    highpass_A: float = 0.0  # low-resolution limit (Frealign); 0: program default
    offset_range_px: float = 5.0
    offset_step_px: float = 2.0
    nproc: int = 1  # total MPI processes (nodes × processes per node)
    threads: int = 1  # threads per process (RELION --j)
    program: str = ""  # override the executable
    output_root: str = "run"  # output name prefix inside the run directory
    ctf: bool = False  # CTF correction (RELION --ctf: the particle file has defocus columns)
    ctf_intact_first_peak: bool = False
    ctf_corrected_ref: bool = False
    ctf_phase_flipped: bool = False
    relion_version: str = "3.1"  # the installed RELION's version (decides --angpix and the STAR layout)
    voltage_kV: float | None = None
    cs_mm: float | None = None
    amp_contrast: float | None = None
    parfile: str = ""  # Frealign: the prepared particle parameter file
    mask: str = ""  # Xmipp: prepared mask volume (classic --MaskVol)

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
        if self.nproc < 1 or self.threads < 1:
            problems.append("nproc and threads must be at least 1")
        if not self.angle_deg > 0 or self.offset_step_px <= 0 or self.offset_range_px < 0:
            problems.append("angle_deg and offset_step_px must be positive, offset_range_px not negative")
        if not (self.boxsize > 0 or self.diameter_A > 0 or self.mask_radius_px > 0):
            problems.append("the mask needs boxsize, diameter_A or mask_radius_px")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.output_root):
            problems.append(f"output_root {self.output_root!r} must be a plain file name")
        try:
            calc_version_tuple(self.relion_version)
        except ValueError:
            problems.append(f"relion_version {self.relion_version!r} is not a version number")
        if problems:
            raise JobParamsError(f"job type {jobtype!r}: " + "; ".join(problems))

    @property
    def radius_px(self) -> float:
        if self.mask_radius_px > 0:
            return self.mask_radius_px
        diameter = self.diameter_A or 0.8 * self.boxsize * self.apix
        return max(1.0, diameter / (2 * self.apix))


REFINE_PARAM_NAMES = frozenset(f.name for f in dataclasses.fields(RefineParams))


def _mpi(params: RefineParams, serial: str, parallel: str) -> list[str]:
    """The program, under mpirun when more than one process is asked for."""
    program = params.program or (parallel if params.nproc > 1 else serial)
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


def _link(source: str, rundir: str, name: str) -> list[str]:
    return ["ln", "-sfn", source, f"{rundir}/{name}"]


def calc_healpix_order(angle_deg: float) -> int:
    """RELION's HEALPix order for an angular sampling: order n samples 60°/2ⁿ (hp2 = 15°, hp3 = 7.5°)."""
    return max(0, min(8, int(round(math.log2(60.0 / angle_deg)))))


# ---------------------------------------------------------------- RELION
def _relion_commands(p: RefineParams) -> list[list[str]]:
    out = f"{p.rundir}/{p.output_root}"
    argv = _mpi(p, "relion_refine", "relion_refine_mpi")
    if p.start_iteration > 1:
        argv += ["--continue", f"{out}_it{p.start_iteration - 1:03d}_optimiser.star"]
    else:
        argv += ["--i", p.stack, "--ref", p.model, "--ini_high", f"{p.lowpass_A:g}", "--sym", p.symmetry,
                 "--particle_diameter", f"{2 * p.radius_px * p.apix:g}", "--K", "1", "--flatten_solvent",
                 "--zero_mask", "--oversampling", "1", "--healpix_order", str(calc_healpix_order(p.angle_deg)),
                 "--offset_range", f"{p.offset_range_px:g}", "--offset_step", f"{p.offset_step_px:g}"]
        if not calc_relion_has_optics(calc_version_tuple(p.relion_version)):
            argv += ["--angpix", f"{p.apix:g}"]  # RELION ≤ 3.0 (3.1 reads it from the optics table)
        for flag in ("ctf", "ctf_intact_first_peak", "ctf_corrected_ref", "ctf_phase_flipped"):
            if getattr(p, flag):
                argv.append(f"--{flag}")
    argv += ["--o", out, "--iter", str(p.iterations), "--j", str(p.threads)]
    return [argv]


def _relion_next(p: RefineParams, names: Sequence[str]) -> dict | None:
    return _continue_after(p, _iteration_numbers(names, rf"{re.escape(p.output_root)}_it(\d+)_class001\.mrc"))


# ---------------------------------------------------------------- EMAN 1
def _eman_commands(p: RefineParams) -> list[list[str]]:
    out = []
    if p.start_iteration == 1:
        hed = p.stack if p.stack.endswith(".hed") else p.stack.rsplit(".", 1)[0] + ".hed"
        out += [_link(hed, p.rundir, "start.hed"), _link(hed[:-4] + ".img", p.rundir, "start.img"),
                _link(p.model, p.rundir, "threed.0a.mrc")]
    argv = [p.program or "refine", str(p.iterations), f"mask={int(round(p.radius_px))}", f"ang={p.angle_deg:g}",
            f"sym={p.symmetry}", f"proc={p.nproc}", "hard=25", "classkeep=0.8", "classiter=3", "median"]
    if p.boxsize:
        argv.insert(5, f"pad={int(1.25 * p.boxsize)}")
    return out + [argv]


def _eman_next(p: RefineParams, names: Sequence[str]) -> dict | None:
    return _continue_after(p, [i for i in _iteration_numbers(names, r"threed\.(\d+)a\.mrc") if i > 0])


# ---------------------------------------------------------------- Frealign 9.11
def _frealign_physics(p: RefineParams) -> tuple[float, float, float]:
    missing = [label for label, value in (("voltage_kV (--kv)", p.voltage_kV), ("cs_mm (--cs)", p.cs_mm),
                                          ("amp_contrast (--wgh)", p.amp_contrast)) if value is None]
    if missing:
        raise JobParamsError(f"job type 'frealignrecon' needs the microscope's {', '.join(missing)}: prepare the "
                             "stack with CTF data from the session or give them on the command line")
    return float(p.voltage_kV), float(p.cs_mm), float(p.amp_contrast)


def _frealign_files(p: RefineParams) -> dict[str, str]:
    """Frealign 9.11's `frealign_run_refine` reads all settings from `mparameters` in the working directory."""
    kv, cs, ampc = _frealign_physics(p)
    rows = [("cluster_type", "none"), ("nprocessor_ref", p.nproc), ("nprocessor_rec", p.nproc), ("MODE", 1),
            ("start_process", p.start_iteration + 1), ("end_process", p.iterations + 1),
            ("res_high_refinement", f"{max(2 * p.apix, p.lowpass_A / 3):.1f}"),
            ("res_high_class", f"{p.lowpass_A:g}"), ("nclasses", 1), ("data_input", p.output_root),
            ("raw_images", p.stack), ("image_contrast", "N"), ("outer_radius", f"{p.radius_px * p.apix:g}"),
            ("inner_radius", f"{p.inner_mask_px * p.apix:g}"), ("mol_mass", 0), ("Symmetry", p.symmetry.upper()),
            ("pix_size", f"{p.apix:g}"), ("dstep", f"{p.apix:g}"),  # dstep µm at MAG 10000 = pix_size Å
            ("Aberration", f"{cs:g}"), ("Voltage", f"{kv:g}"), ("Amp_contrast", f"{ampc:g}"),
            ("XSTD", 0), ("PBC", 100), ("parameter_mask", '"1 1 1 1 1"'), ("refineangleinc", 4),
            ("refineshiftinc", 4), ("res_reconstruction", 0), ("res_low_refinement", f"{p.highpass_A:g}"),
            ("thresh_reconst", 0), ("thresh_refine", 50), ("DANG", f"{p.angle_deg:g}"), ("ITMAX", 200),
            ("FMAG", "F"), ("FDEF", "F"), ("FASTIG", "F"), ("FPART", "F"), ("FFILT", "T"), ("FBEAUT", "F"),
            ("FMATCH", "F"), ("FBOOST", "F"), ("RBfactor", 0)]
    return {"mparameters": calc_frealign_mparameters(rows)}


def _frealign_commands(p: RefineParams) -> list[list[str]]:
    _frealign_physics(p)
    out = []
    if p.start_iteration == 1:
        if not p.parfile:
            raise JobParamsError("job type 'frealignrecon' needs parfile (the prepared particle parameters)")
        out += [_link(p.parfile, p.rundir, f"{p.output_root}_1_r1.par"),
                _link(p.model, p.rundir, f"{p.output_root}_1_r1.mrc")]
    return out + [[p.program or "frealign_run_refine"]]


def _frealign_next(p: RefineParams, names: Sequence[str]) -> dict | None:
    done = [i - 1 for i in _iteration_numbers(names, rf"{re.escape(p.output_root)}_(\d+)_r1\.mrc") if i > 1]
    return _continue_after(p, done)


# ---------------------------------------------------------------- Xmipp 3
def _xmipp_commands(p: RefineParams) -> list[list[str]]:
    if p.program:  # a single program (site wrapper) replaces the steps
        return [[p.program, "--i", p.stack, "--ref", p.model, "--o", f"{p.rundir}/{p.output_root}",
                 "--iter", str(p.iterations), "--first_iter", str(p.start_iteration)]]
    out = []
    for it in range(p.start_iteration, p.iterations + 1):
        ref = p.model if it == 1 else f"{p.rundir}/{p.output_root}_iter{it - 1:03d}.vol"
        gallery = f"{p.rundir}/gallery_iter{it:03d}.stk"
        matched = f"{p.rundir}/{p.output_root}_iter{it:03d}.xmd"
        volume = f"{p.rundir}/{p.output_root}_iter{it:03d}.vol"
        out.append(_mpi(p, "xmipp_angular_project_library", "xmipp_mpi_angular_project_library")
                   + ["-i", ref, "-o", gallery, "--sampling_rate", f"{p.angle_deg:g}", "--sym", p.symmetry])
        out.append(_mpi(p, "xmipp_angular_projection_matching", "xmipp_mpi_angular_projection_matching")
                   + ["-i", p.stack, "-o", matched, "--ref", gallery, "--Ri", f"{p.inner_mask_px:g}",
                      "--Ro", f"{p.radius_px:g}", "--max_shift", f"{p.offset_range_px:g}"])
        out.append(_mpi(p, "xmipp_reconstruct_fourier", "xmipp_mpi_reconstruct_fourier")
                   + ["-i", matched, "-o", volume, "--sym", p.symmetry])
        if p.mask:
            out.append(["xmipp_transform_mask", "-i", volume, "--mask", "binary_file", p.mask])
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


REFINE_TYPES = ("relionrecon", "emanrecon", "frealignrecon", "xmipprecon", "xmippml3d")
register_job_type(JobType("relionrecon", "RELION 3D refinement (relion_refine / relion_refine_mpi)",
                          _parser("relionrecon", RefineParams), _relion_commands, next_cycle=_relion_next))
register_job_type(JobType("emanrecon", "EMAN 1 refine in the run directory (start.hed, threed.0a.mrc)",
                          _parser("emanrecon", RefineParams), _eman_commands, next_cycle=_eman_next))
register_job_type(JobType("frealignrecon", "Frealign 9.11 refinement (frealign_run_refine reading mparameters)",
                          _parser("frealignrecon", RefineParams), _frealign_commands, files=_frealign_files,
                          next_cycle=_frealign_next))
register_job_type(JobType("xmipprecon", "Xmipp 3 projection matching (library, matching, Fourier reconstruction)",
                          _parser("xmipprecon", RefineParams), _xmipp_commands, next_cycle=_xmipp_next))
register_job_type(JobType("xmippml3d", "Xmipp 3 maximum-likelihood 3D refinement",
                          _parser("xmippml3d", RefineParams), _ml3d_commands, next_cycle=_ml3d_next))
