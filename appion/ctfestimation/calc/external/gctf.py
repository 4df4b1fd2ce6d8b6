"""Gctf: parameters (also from classic gctf.py options), command line, log parsing, running it.

Gctf's (Defocus_U, Defocus_V, Angle) are CTFFIND's (defocus 1, defocus 2, azimuth): see the
package docstring (appion.ctfestimation.calc.external).
"""
from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from appion.ctfestimation.calc.external.common import _num, _tail, calc_classic_defocus_range_A
from appion.ctfestimation.calc.result import CtfResult


# ----------------------------------------------------------------------------------------------
# Gctf
# ----------------------------------------------------------------------------------------------


class GctfError(RuntimeError):
    """Gctf could not be run to a result."""


@dataclass(frozen=True)
class GctfParams:
    """Gctf options in Gctf's units (Å, kV, mm, degrees for phase shift).

    Flag names are Gctf 1.06's: --apix --kV --cs --ac --defL --defH --defS --astm --resL
    --resH --boxsize --do_EPA --do_Hres_ref --do_local_refine (--boxsuffix --local_radius
    --local_boxsize --local_overlap) --mdef_aveN --phase_shift_L/H/S/T --gid --ctfstar.
    """

    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    defocus_min_A: float
    defocus_max_A: float
    defocus_step_A: float
    amplitude_contrast: float = 0.07
    box_size_px: int = 1024
    resmin_A: float = 50.0
    resmax_A: float = 4.0
    astigmatism_A: float = 1000.0
    do_EPA: bool = False
    do_Hres_ref: bool = False
    do_local_refine: bool = False
    box_suffix: str | None = None
    local_radius_px: int | None = None
    local_boxsize_px: int | None = None
    local_overlap: float | None = None
    mdef_aveN: int = 1
    find_phase_shift: bool = False
    min_phase_shift_deg: float = 0.0
    max_phase_shift_deg: float = 180.0
    phase_shift_step_deg: float = 10.0
    phase_shift_target: int = 1  # 1 = CCC, 2 = resolution limit
    gpu_id: int = 0
    ctfstar: str = "NONE"  # no shared micrographs_all_gctf.star (parallel workers would race on it)


def calc_gctf_params_from_classic(*, pixel_size_A: float, voltage_kV: float, cs_mm: float, start_defocus_A: float,
                                  ampcontrast: float = 0.07, fieldsize: int = 1024, resmin: float = 50.0,
                                  resmax: float = 4.0, defstep_um: float = 0.05, numstep: int = 25,
                                  dast_um: float = 1000.0, do_EPA: bool = False, do_local_refine: bool = False,
                                  local_radius: int | None = None, local_boxsize: int | None = None,
                                  local_overlap: float | None = None, do_Hres_ref: bool = False,
                                  mdef_aveN: int = 1, gpu_id: int = 0) -> GctfParams:
    """GctfParams from classic gctf.py options (its names, units and defaults).

    Classic sends --astm as dast × 1e4 (µm → Å; the classic default 1000 µm is 10,000,000 Å)
    and searches start ∓ defstep × numstep like ctffind4.py.
    """
    defocus_min_A, defocus_max_A = calc_classic_defocus_range_A(start_defocus_A, defstep_um, numstep)
    return GctfParams(pixel_size_A=pixel_size_A, voltage_kV=voltage_kV, cs_mm=cs_mm,
                      defocus_min_A=defocus_min_A, defocus_max_A=defocus_max_A, defocus_step_A=defstep_um * 1e4,
                      amplitude_contrast=ampcontrast, box_size_px=fieldsize, resmin_A=resmin, resmax_A=resmax,
                      astigmatism_A=dast_um * 1e4, do_EPA=do_EPA, do_Hres_ref=do_Hres_ref,
                      do_local_refine=do_local_refine, local_radius_px=local_radius, local_boxsize_px=local_boxsize,
                      local_overlap=local_overlap, mdef_aveN=mdef_aveN, gpu_id=gpu_id)


def calc_gctf_command(executable: str, image_path, params: GctfParams) -> list[str]:
    """Gctf's argument list (program first); the micrograph comes last as Gctf expects."""
    p = params
    cmd = [str(executable),
           "--apix", _num(p.pixel_size_A), "--kV", _num(p.voltage_kV), "--cs", _num(p.cs_mm),
           "--ac", _num(p.amplitude_contrast),
           "--defL", _num(p.defocus_min_A), "--defH", _num(p.defocus_max_A), "--defS", _num(p.defocus_step_A),
           "--astm", _num(p.astigmatism_A), "--resL", _num(p.resmin_A), "--resH", _num(p.resmax_A),
           "--boxsize", str(int(p.box_size_px)),
           "--do_EPA", str(int(p.do_EPA)), "--do_Hres_ref", str(int(p.do_Hres_ref)),
           "--mdef_aveN", str(int(p.mdef_aveN)), "--gid", str(int(p.gpu_id)), "--ctfstar", p.ctfstar]
    if p.do_local_refine:
        cmd += ["--do_local_refine", "1"]
        if p.box_suffix is not None:
            cmd += ["--boxsuffix", p.box_suffix]
        if p.local_radius_px is not None:
            cmd += ["--local_radius", str(int(p.local_radius_px))]
        if p.local_boxsize_px is not None:
            cmd += ["--local_boxsize", str(int(p.local_boxsize_px))]
        if p.local_overlap is not None:
            cmd += ["--local_overlap", _num(p.local_overlap)]
    if p.find_phase_shift:
        cmd += ["--phase_shift_L", _num(p.min_phase_shift_deg), "--phase_shift_H", _num(p.max_phase_shift_deg),
                "--phase_shift_S", _num(p.phase_shift_step_deg), "--phase_shift_T", str(int(p.phase_shift_target))]
    cmd.append(str(image_path))
    return cmd


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RES_LIMIT_RE = re.compile(r"RES_LIMIT\s+(\S+)")


def parse_gctf_log(text: str) -> CtfResult:
    """CtfResult from a Gctf log: the last ``... Final Values`` line and its column header.

    The header line (``Defocus_U Defocus_V Angle [Phase_shift] CCC``) names the columns of
    the line after it; the fit resolution is the EPA ``RES_LIMIT`` (inf when Gctf printed none).
    Raises GctfError when there is no final line.
    """
    lines = [_ANSI_RE.sub("", line).strip() for line in text.splitlines()]
    final = None
    for i, line in enumerate(lines):
        if line.endswith("Final Values") and i > 0 and lines[i - 1].startswith("Defocus_U"):
            final = (lines[i - 1].split(), line[: -len("Final Values")].split())
    if final is None:
        raise GctfError("no 'Defocus_U ... CCC' header followed by a '... Final Values' line")
    names, values = final
    if len(names) != len(values):
        raise GctfError(f"Gctf final line has {len(values)} values for the {len(names)} columns {names}")
    try:
        row = {name: float(value) for name, value in zip(names, values)}
    except ValueError as exc:
        raise GctfError(f"Gctf final line is not numeric: {' '.join(values)!r}") from exc
    for needed in ("Defocus_U", "Defocus_V", "Angle", "CCC"):
        if needed not in row:
            raise GctfError(f"Gctf final header lacks the column {needed}: {names}")
    resolution = math.inf
    for line in lines:
        match = _RES_LIMIT_RE.search(line)
        if match:
            resolution = float(match.group(1))
    phase_deg = row.get("Phase_shift", 0.0)
    return CtfResult(defocus1_A=row["Defocus_U"], defocus2_A=row["Defocus_V"], astig_angle_deg=row["Angle"],
                     phase_shift_rad=math.radians(phase_deg), cross_correlation=row["CCC"],
                     fit_resolution_A=resolution)


@dataclass(frozen=True)
class GctfOutput:
    """A finished Gctf run: the fit and the files Gctf wrote next to the micrograph."""

    result: CtfResult
    log_path: Path
    ctf_path: Path | None
    stdout: str = field(repr=False)


def calc_gctf_output_paths(image_path: Path) -> tuple[Path, Path]:
    """(``<root>_gctf.log``, ``<root>.ctf``): where Gctf 1.06 writes next to the micrograph."""
    root = image_path.with_suffix("")
    return root.with_name(root.name + "_gctf.log"), root.with_suffix(".ctf")


def run_gctf(executable: str, image_path, params: GctfParams, timeout_s: float = 600.0) -> GctfOutput:
    """Run Gctf on one micrograph and parse its log.  Runs in the micrograph's directory."""
    image_path = Path(image_path).absolute()  # Gctf runs in the micrograph's directory
    if not image_path.is_file():
        raise GctfError(f"Gctf input {image_path} does not exist")
    log_path, ctf_path = calc_gctf_output_paths(image_path)
    cmd = calc_gctf_command(executable, image_path, params)
    try:
        proc = subprocess.run(cmd, cwd=image_path.parent, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise GctfError(f"{executable} did not finish {image_path.name} within {timeout_s:g} s; "
                        f"last output: {_tail(out)!r}") from None
    except OSError as exc:
        raise GctfError(f"cannot start {executable}: {exc}") from exc
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise GctfError(f"{executable} exited with status {proc.returncode} on {image_path}; "
                        f"last output: {_tail(output)!r}")
    if not log_path.is_file():
        raise GctfError(f"{executable} did not write {log_path}; last output: {_tail(output)!r}")
    try:
        result = parse_gctf_log(log_path.read_text(errors="replace"))
    except GctfError as exc:
        raise GctfError(f"{log_path}: {exc}") from None
    return GctfOutput(result=result, log_path=log_path, ctf_path=ctf_path if ctf_path.is_file() else None,
                      stdout=output)
