"""The CTF step's worker side: estimate one image's CTF with the chosen engine, write diagnostics, return a record.

Runs on Dask workers: no Django here or in anything imported at the top.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from appion.base.exposure import ExposureInput
from appion.base.steps import StepInput
from appion.base.versions import calc_executable_version
from appion.ctfestimation.records import CtfInput, CtfRecord, CtfSettings

PROGRAMS = {"ctffind4": "ctffind4", "gctf": "gctf"}
MIN_BOX_PX = 64  # the smallest spectrum box any engine accepts

log = logging.getLogger("appion.ctf")


@dataclass(frozen=True)
class CtfRecordWithNotes(CtfRecord):
    """A CtfRecord with warnings about how the fit was made (e.g. a smaller box than asked); shown in the
    loop's line for the exposure."""

    notes: tuple[str, ...] = ()


def calc_box_that_fits(box_px: int, shape_yx: tuple[int, int], minimum_px: int = MIN_BOX_PX) -> int | None:
    """The spectrum box to use on an image of shape_yx: box_px when it fits, else the largest power of two that
    fits (even, as every engine needs); None when not even minimum_px fits."""
    side = min(int(shape_yx[0]), int(shape_yx[1]))
    if box_px <= side:
        return box_px
    fit = 1 << (side.bit_length() - 1) if side > 0 else 0
    return fit if fit >= minimum_px else None


def read_image_shape(path: str) -> tuple[int, int]:
    """(ny, nx) of an MRC image from its header."""
    import mrcfile

    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        return int(mrc.header.ny), int(mrc.header.nx)


def calc_fitting_settings(inp: CtfInput, settings: CtfSettings) -> tuple[CtfSettings, tuple[str, ...]]:
    """The settings with a box (--fieldsize) that fits the image, and a note when it had to shrink; ValueError
    naming the image when even the smallest box does not fit."""
    shape = read_image_shape(inp.image_path)
    box = calc_box_that_fits(settings.fieldsize, shape)
    if box is None:
        raise ValueError(f"{inp.image_path}: the image ({shape[1]}×{shape[0]} px) is smaller than the smallest CTF "
                         f"box ({MIN_BOX_PX} px)")
    if box == settings.fieldsize:
        return settings, ()
    note = (f"CTF box (--fieldsize) {settings.fieldsize} px is larger than the {shape[1]}×{shape[0]} px image "
            f"{Path(inp.image_path).name}: used {box} px")
    log.warning("%s", note)
    return dataclasses.replace(settings, fieldsize=box), (note,)


def calc_engine_version(settings: CtfSettings) -> str:
    return calc_executable_version(settings.executable or PROGRAMS[settings.engine])


def calc_ctf_input(task: StepInput) -> CtfInput:
    """The image to estimate: the motion step's aligned image when motion is upstream, else the exposure's own."""
    inp: ExposureInput = task.exposure
    aligned = task.upstream.get("motion")
    if aligned is not None:
        if not hasattr(aligned, "filename"):
            raise ValueError(f"{inp.filename}: the motion step gave no aligned image to estimate the CTF on")
        return CtfInput(inp.image_id, aligned.image_id, aligned.filename,
                        str(Path(inp.image_dir) / f"{aligned.filename}.mrc"), aligned.pixel_size_A, inp.voltage_kV,
                        inp.cs_mm, inp.nominal_defocus_m)
    return CtfInput(inp.image_id, inp.image_id, inp.filename, str(Path(inp.image_dir) / f"{inp.filename}.mrc"),
                    inp.pixel_size_A, inp.voltage_kV, inp.cs_mm, inp.nominal_defocus_m)


def worker_name() -> str:
    from appion.motioncorrection.task import worker_name as name

    return name()


def run_ctf_task(task: StepInput, settings: CtfSettings) -> CtfRecord:
    """Estimate the CTF of one image; diagnostic files go into the run directory."""
    start = time.perf_counter()
    run = Path(task.rundir)
    run.mkdir(parents=True, exist_ok=True)
    inp = calc_ctf_input(task)
    if not Path(inp.image_path).exists():
        raise FileNotFoundError(f"{inp.image_path}: image to CTF-estimate does not exist")
    settings, notes = calc_fitting_settings(inp, settings)
    out = run_ctf_engine(inp, settings, run, task.lease.get("gpu"))
    r = out["result"]
    graphs = tuple(os.path.relpath(p, run) if p else None for p in out["graphs"])
    return CtfRecordWithNotes(inp.source_id, inp.image_id, r.defocus1_A, r.defocus2_A, r.astig_angle_deg,
                              r.phase_shift_rad, r.cross_correlation, r.fit_resolution_A, r.confidence_30_10,
                              r.confidence_5_peak, r.resolution_80_percent_A, r.resolution_50_percent_A, graphs,
                              time.perf_counter() - start, worker_name(), notes)


def calc_ctf_search_range_A(inp: CtfInput, settings: CtfSettings) -> tuple[float, float]:
    """Defocus search range: classic start ∓ defstep × numstep around the nominal defocus when --defstep is
    given and the nominal defocus is known, else [defocus_min, defocus_max]."""
    nominal_A = (settings.nominal_defocus_um * 1e4 if settings.nominal_defocus_um
                 else abs(inp.nominal_defocus_m or 0.0) * 1e10)
    if settings.defstep_um and nominal_A:
        from appion.ctfestimation.calc.external import calc_classic_defocus_range_A

        return calc_classic_defocus_range_A(nominal_A, settings.defstep_um, settings.numstep)
    return settings.defocus_min_A, settings.defocus_max_A


def run_ctf_engine(inp: CtfInput, settings: CtfSettings, rundir: Path, gpu: str | None = None) -> dict:
    """Run the chosen CTF engine on one image; returns result (CtfResult) and graphs (4 paths or None)."""
    low, high = calc_ctf_search_range_A(inp, settings)
    step_A = (settings.defstep_um or 0.05) * 1e4
    diag = rundir / f"{inp.filename}-pow.mrc"
    if settings.engine == "builtin":
        from appion.ctfestimation import estimate

        options = calc_builtin_options(estimate.CtfOptions, inp, settings, low, high)
        out = estimate.estimate_ctf_file(inp.image_path, rundir / f"{inp.filename}-pow.txt", options)
        return {"result": out.result, "graphs": (getattr(out, "png_path", None), None, None, None)}
    from appion.ctfestimation.calc import external as ext

    if settings.engine == "ctffind4":
        params = ext.Ctffind4Params(
            pixel_size_A=inp.pixel_size_A, voltage_kV=inp.voltage_kV, cs_mm=inp.cs_mm, defocus_min_A=low,
            defocus_max_A=high, defocus_step_A=step_A, amplitude_contrast=settings.amplitude_contrast,
            box_size_px=settings.fieldsize, resmin_A=settings.resmin_A, resmax_A=settings.resmax_A,
            exhaustive_search=settings.exhaustive,
            astigmatism_restraint_A=settings.dast_um * 1e4 if settings.dast_um else None,
            find_phase_shift=settings.phase_plate, min_phase_shift_rad=math.radians(settings.min_phase_shift_deg),
            max_phase_shift_rad=math.radians(settings.max_phase_shift_deg),
            phase_shift_step_rad=math.radians(settings.phase_search_step_deg))
        out = ext.run_ctffind4(settings.executable or "ctffind4", inp.image_path, diag, params)
        return {"result": out.result, "graphs": (out.diag_path, out.avrot_path, None, None)}
    if settings.engine == "gctf":
        link = rundir / f"{inp.filename}.mrc"  # Gctf writes next to its input: give it one in the run directory
        if not link.exists():
            tmp = link.with_name(f".{link.name}.link")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(Path(inp.image_path).resolve())
            os.replace(tmp, link)
        extra = dict(settings.extra)
        if gpu is not None:
            extra["gpu_id"] = int(gpu)
        params = ext.GctfParams(
            pixel_size_A=inp.pixel_size_A, voltage_kV=inp.voltage_kV, cs_mm=inp.cs_mm, defocus_min_A=low,
            defocus_max_A=high, defocus_step_A=step_A, amplitude_contrast=settings.amplitude_contrast,
            box_size_px=settings.fieldsize, resmin_A=settings.resmin_A, resmax_A=settings.resmax_A,
            astigmatism_A=(settings.dast_um or 1000.0) * 1e4, find_phase_shift=settings.phase_plate,
            min_phase_shift_deg=settings.min_phase_shift_deg, max_phase_shift_deg=settings.max_phase_shift_deg,
            phase_shift_step_deg=settings.phase_search_step_deg, **extra)
        out = ext.run_gctf(settings.executable or "gctf", link, params)
        return {"result": out.result, "graphs": (out.ctf_path, out.log_path, None, None)}
    raise ValueError(f"unknown CTF engine {settings.engine!r} (choose from builtin, {', '.join(PROGRAMS)})")


def calc_builtin_options(options_type, inp: CtfInput, settings: CtfSettings, low: float, high: float):
    """The built-in engine's options from the loop's settings."""
    return options_type(
        pixel_size_A=inp.pixel_size_A, voltage_kV=inp.voltage_kV, cs_mm=inp.cs_mm,
        amplitude_contrast=settings.amplitude_contrast, box=settings.fieldsize, resmin_A=settings.resmin_A,
        resmax_A=settings.resmax_A, dfmin_A=low, dfmax_A=high,
        dfstep_A=(settings.defstep_um * 1e4) if settings.defstep_um else 100.0,
        astig_restraint_A=(settings.dast_um * 1e4) if settings.dast_um else None,
        find_phase_shift=settings.phase_plate, phase_min_rad=math.radians(settings.min_phase_shift_deg),
        phase_max_rad=math.radians(settings.max_phase_shift_deg),
        phase_step_rad=math.radians(settings.phase_search_step_deg), threads=settings.threads)


def describe_ctf_record(record: CtfRecord) -> str:
    text = (f"ctf {record.seconds:.1f} s (defocus {record.defocus1_A / 1e4:.3f}/{record.defocus2_A / 1e4:.3f} µm,"
            f" fit to {record.fit_resolution_A:.1f} Å)")
    return "".join([text, *(f" [warning: {note}]" for note in getattr(record, "notes", ()))])
