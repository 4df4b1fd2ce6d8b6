"""Classic Appion command names as drop-ins: makeDDAlignMotionCor2_UCSF.py, ctffind4.py, gctf.py.

Each is one run of the loop (appion.loop.core) for one registered step, with classic option names and
defaults (optparse style: a unique prefix of a long option is accepted, as argparse's allow_abbrev
does).  They write what classic wrote: the run rows, per-image rows, ScriptProgramRun/ScriptParam
rows and ApAppionJobData, and files in the classic run directory.  `--engine` picks appion's own
engine (default) or the external program the classic script drove.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from appion.ctfestimation.records import CtfSettings
from appion.loop.cluster import ClusterSettings
from appion.motioncorrection.records import MotionSettings

log = logging.getLogger("appion.dropin")

TILTS = ("notilt", "hightilt", "lowtilt", "minustilt", "plustilt", "all")


def calc_common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Options every classic appionLoop script takes."""
    p = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=True)
    p.add_argument("-n", "--runname", help="run name (must equal the last component of --rundir)")
    p.add_argument("-d", "--description")
    p.add_argument("-p", "--projectid", type=int, help="project id (selects the project's appion database)")
    p.add_argument("-R", "--rundir", "--outdir", dest="rundir", help="run directory")
    p.add_argument("-C", "--commit", dest="commit", action="store_true", default=True,
                   help="write results to the database (default)")
    p.add_argument("--no-commit", dest="commit", action="store_false", help="write nothing to the database")
    p.add_argument("--expid", type=int, help="session id")
    p.add_argument("-s", "--session", help="session name")
    p.add_argument("--preset", help="only images of this preset")
    p.add_argument("-m", "--mrclist", help="only these images: comma-separated filenames")
    p.add_argument("--limit", type=int, help="process at most this many images")
    p.add_argument("--tiltangle", choices=TILTS, default="all")
    p.add_argument("--startimgid", type=int)
    p.add_argument("--endimgid", type=int)
    p.add_argument("--continue", dest="continue_run", action="store_true", default=True,
                   help="skip images already done in this run (default)")
    p.add_argument("--no-continue", dest="continue_run", action="store_false", help="redo every image")
    p.add_argument("--no-wait", dest="wait", action="store_false", default=True,
                   help="stop when all images are done instead of waiting for new ones")
    p.add_argument("--no-rejects", dest="norejects", action="store_true", default=False,
                   help="do not process hidden or rejected images")
    p.add_argument("--reverse", action="store_true", help="process the newest images first")
    p.add_argument("--shuffle", action="store_true", help="accepted for compatibility (order is by --reverse)")
    p.add_argument("--parallel", action="store_true", help="accepted for compatibility (the loop is parallel)")
    p.add_argument("--nproc", type=int, help="worker processes on this machine")
    p.add_argument("--jobtype")
    g = p.add_argument_group("appion loop")
    g.add_argument("--cluster", default="local", choices=("local", "slurm", "pbs", "sge", "lsf"))
    g.add_argument("--queue")
    g.add_argument("--maximum", type=int, help="batch clusters: at most this many jobs")
    g.add_argument("--retries", type=int, default=2)
    g.add_argument("--idle", type=float, default=5.0, help="with --no-wait: seconds without new images before exit")
    g.add_argument("--poll", type=float, default=2.0)
    g.add_argument("--threads-per-task", type=int, default=1)
    g.add_argument("--dashboard-address", default=":8787")
    return p


def calc_script_params(argv: list[str], args: argparse.Namespace) -> tuple[tuple[str, str, str], ...]:
    """(name, value, usage) per option as classic ScriptParam rows hold them (usage like `--bin=2`)."""
    out = []
    for name, value in sorted(vars(args).items()):
        if value is None or value is False and name not in ("commit", "wait", "continue_run"):
            continue
        flag = {"continue_run": "continue", "norejects": "no-rejects"}.get(name, name)
        usage = f"--{flag}" if value is True else f"--{flag}={value}"
        out.append((name, str(value), usage))
    return tuple(out)


def _check_runname(args) -> tuple[str, str | None]:
    """Classic rule: the run name is the run directory's last component."""
    if args.rundir and args.runname and Path(args.rundir).name != args.runname:
        raise SystemExit(f"error: --runname {args.runname!r} must equal the last component of --rundir "
                         f"({Path(args.rundir).name!r})")
    runname = args.runname or (Path(args.rundir).name if args.rundir else None)
    if not runname:
        raise SystemExit("error: give -n/--runname (or -R/--rundir)")
    return runname, str(Path(args.rundir).resolve()) if args.rundir else None


def build_settings(args, argv, *, steps, program, jobtype, motion=None, ctf=None, image_ids=None, gpu_ids="0"):
    """LoopSettings for one classic run (after bootstrap: the session and image ids are looked up)."""
    from appion.loop.core import LoopSettings
    from appion.loop.dropindb import retrieve_image_ids, retrieve_session_name

    runname, rundir = _check_runname(args)
    session = retrieve_session_name(args)
    cluster = ClusterSettings(kind=args.cluster, threads_per_task=args.threads_per_task, workers=args.nproc,
                              queue=args.queue, maximum=args.maximum, dashboard_address=args.dashboard_address)
    return LoopSettings(
        session=session, preset=args.preset, steps=steps, runname=runname, wait=args.wait, idle_s=args.idle,
        poll_s=args.poll, retries=args.retries, order="newest" if args.reverse else "oldest", limit=args.limit,
        skip_rejected=args.norejects, tilt=args.tiltangle, commit=args.commit, continue_run=args.continue_run,
        step_settings={k: v for k, v in (("motion", motion), ("ctf", ctf)) if v is not None and k in steps},
        rundirs={step: rundir for step in steps if rundir}, cluster=cluster, gpu_ids=gpu_ids,
        program=program, jobtype=args.jobtype or jobtype, script_params=calc_script_params(argv, args),
        project_id=args.projectid, start_image_id=args.startimgid, end_image_id=args.endimgid,
        image_ids=retrieve_image_ids(session, args.mrclist, image_ids))


def _start(argv):
    """Logging, and the database started once (a `--config FILE` anywhere selects the config first)."""
    from appion.cli import _take_config

    logging.basicConfig(level=os.environ.get("APPION_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _take_config(list(sys.argv[1:] if argv is None else argv))


def _run(settings) -> int:
    from appion.loop.commands import run_and_report

    return run_and_report(settings, f"{settings.program}: error")


def _bootstrap() -> None:
    from appion.base.db import bootstrap

    bootstrap()


# ---------------------------------------------------------------- makeDDAlignMotionCor2_UCSF.py
def calc_makeddalign_parser() -> argparse.ArgumentParser:
    p = calc_common_parser("makeDDAlignMotionCor2_UCSF.py", "align movie frames (classic Appion drop-in)")
    p.add_argument("--ddstartframe", type=int, default=0)
    p.add_argument("--ddnframe", type=int)
    p.add_argument("--alignlabel", default="a")
    p.add_argument("--bin", type=float, default=1.0)
    p.add_argument("--doseweight", action="store_true", help="also write the dose-weighted sum (-DW)")
    p.add_argument("--totaldose", type=float, help="e/Å² (default: the preset's dose)")
    p.add_argument("--keepstack", dest="keepstack", action="store_true", default=False)
    p.add_argument("--no-keepstack", dest="keepstack", action="store_false")
    p.add_argument("--tempdir")
    p.add_argument("--framepath", help="directory of the movies (default: the session's frame path)")
    p.add_argument("--refimgid", type=int)
    p.add_argument("--square", action="store_true")
    p.add_argument("--trim", type=int, default=0)
    p.add_argument("--align", action="store_true", default=True)
    p.add_argument("--defergpu", action="store_true")
    p.add_argument("--gpuid", type=int, default=0)
    p.add_argument("--gpuids", default="0")
    p.add_argument("--nrw", type=int, default=1)
    p.add_argument("--FmRef", type=int, default=0)
    p.add_argument("--Iter", type=int, default=7)
    p.add_argument("--Tol", type=float, default=0.5)
    p.add_argument("--Patchrows", type=int, default=0)
    p.add_argument("--Patchcols", type=int, default=0)
    p.add_argument("--MaskCentrow", type=float, default=0.0)
    p.add_argument("--MaskCentcol", type=float, default=0.0)
    p.add_argument("--MaskSizecols", type=float, default=1.0)
    p.add_argument("--MaskSizerows", type=float, default=1.0)
    p.add_argument("--Bft_global", type=float, default=500.0)
    p.add_argument("--Bft_local", type=float, default=150.0)
    p.add_argument("--force_cpu_flat", action="store_true")
    p.add_argument("--rendered_frame_size", type=int, default=1)
    p.add_argument("--eer_sampling", type=int, default=1)
    p.add_argument("--engine", default="builtin", choices=("builtin", "motioncor2", "motioncor3", "relion"),
                   help="appion's own alignment (default) or the external program")
    p.add_argument("--engine-exe", help="path of the external program")
    return p


def main_makeddalign(argv: list[str] | None = None) -> int:
    argv = _start(argv)
    args = calc_makeddalign_parser().parse_args(argv)
    if args.framepath:
        log.warning("--framepath is taken from the session's frame path; %s ignored", args.framepath)
    motion = MotionSettings(engine=args.engine, bin=args.bin, doseweight=args.doseweight, alignlabel=args.alignlabel,
                            ddstartframe=args.ddstartframe, ddnframe=args.ddnframe,
                            total_dose_e_per_A2=args.totaldose, patches=(args.Patchcols, args.Patchrows),
                            bfactor_global_A2=args.Bft_global, bfactor_local_A2=args.Bft_local, iterations=args.Iter,
                            tolerance_px=args.Tol, group=args.nrw, eer_sampling=args.eer_sampling,
                            rendered_frame_size=args.rendered_frame_size, executable=args.engine_exe,
                            frame_ref=args.FmRef,
                            mask_center=(args.MaskCentcol, args.MaskCentrow)
                            if (args.MaskCentcol, args.MaskCentrow) != (0.0, 0.0) else None,
                            mask_size=(args.MaskSizecols, args.MaskSizerows)
                            if (args.MaskSizecols, args.MaskSizerows) != (1.0, 1.0) else None,
                            threads=args.threads_per_task)
    _bootstrap()
    settings = build_settings(args, argv, steps=("motion",), program="makeDDAlignMotionCor2_UCSF.py",
                              jobtype="makeddalignmotioncor2_ucsf", motion=motion, gpu_ids=args.gpuids)
    return _run(settings)


# ---------------------------------------------------------------- ctffind4.py / gctf.py
def calc_ctf_parser(prog: str, engines: tuple[str, ...], resmax: float, defstep: float, dast: float):
    p = calc_common_parser(prog, "estimate the CTF of images (classic Appion drop-in)")
    p.add_argument("--ampcontrast", type=float, default=0.07)
    p.add_argument("--fieldsize", type=int, default=1024)
    p.add_argument("--nominal", type=float, help="nominal defocus in µm (default: from the image)")
    p.add_argument("--resmin", type=float, default=50.0, help="Å")
    p.add_argument("--resmax", type=float, default=resmax, help="Å")
    p.add_argument("--defstep", type=float, default=defstep, help="defocus search step, µm")
    p.add_argument("--numstep", type=int, default=25, help="search nominal ∓ defstep × numstep")
    p.add_argument("--dast", type=float, default=dast, help="tolerated astigmatism, µm")
    p.add_argument("--min_phase_shift", type=float, default=10.0, help="degrees")
    p.add_argument("--max_phase_shift", type=float, default=170.0, help="degrees")
    p.add_argument("--phase_search_step", type=float, default=10.0, help="degrees")
    p.add_argument("--ddstackid", type=int, help="estimate on the aligned images of this ddstack run")
    p.add_argument("--num_frame_avg", type=int, default=7)
    p.add_argument("--bestdb", action="store_true")
    p.add_argument("--phaseplate", action="store_true")
    p.add_argument("--exhaust", action="store_true")
    p.add_argument("--engine", default="builtin", choices=engines,
                   help="appion's own estimator (default) or the external program")
    p.add_argument("--engine-exe", help="path of the external program")
    return p


def _ctf_settings(args, engine: str, extra=()):
    return CtfSettings(engine=engine, amplitude_contrast=args.ampcontrast, fieldsize=args.fieldsize,
                       resmin_A=args.resmin, resmax_A=args.resmax, defstep_um=args.defstep, numstep=args.numstep,
                       dast_um=args.dast, phase_plate=args.phaseplate, min_phase_shift_deg=args.min_phase_shift,
                       max_phase_shift_deg=args.max_phase_shift, phase_search_step_deg=args.phase_search_step,
                       bestdb=args.bestdb, exhaustive=args.exhaust, executable=args.engine_exe,
                       nominal_defocus_um=args.nominal, extra=tuple(extra), threads=args.threads_per_task)


def main_ctffind4(argv: list[str] | None = None) -> int:
    argv = _start(argv)
    args = calc_ctf_parser("ctffind4.py", ("builtin", "ctffind4"), resmax=15.0, defstep=0.1, dast=100.0).parse_args(argv)
    _bootstrap()
    from appion.loop.dropindb import retrieve_ddstack_images

    settings = build_settings(args, argv, steps=("ctf",), program="ctffind4.py", jobtype="ctfestimate",
                              ctf=_ctf_settings(args, args.engine), image_ids=retrieve_ddstack_images(args.ddstackid))
    return _run(settings)


def main_gctf(argv: list[str] | None = None) -> int:
    argv = _start(argv)
    p = calc_ctf_parser("gctf.py", ("builtin", "gctf"), resmax=4.0, defstep=0.05, dast=1000.0)
    p.add_argument("--local_raster", action="store_true")
    p.add_argument("--local_radius", type=int)
    p.add_argument("--local_boxsize", type=int)
    p.add_argument("--local_overlap", type=float)
    p.add_argument("--do_EPA", action="store_true")
    p.add_argument("--do_local_refine", action="store_true")
    p.add_argument("--do_Hres_ref", action="store_true")
    p.add_argument("--fastmode", dest="fastmode", action="store_true", default=True)
    p.add_argument("--slowmode", dest="fastmode", action="store_false")
    p.add_argument("--mdef_aveN", type=int, default=1)
    args = p.parse_args(argv)
    extra = []
    if args.engine == "gctf":
        extra = [("do_EPA", args.do_EPA), ("do_local_refine", args.do_local_refine), ("do_Hres_ref", args.do_Hres_ref),
                 ("mdef_aveN", args.mdef_aveN)]
        extra += [(k, v) for k, v in (("local_radius_px", args.local_radius), ("local_boxsize_px", args.local_boxsize),
                                      ("local_overlap", args.local_overlap)) if v is not None]
    _bootstrap()
    from appion.loop.dropindb import retrieve_ddstack_images

    settings = build_settings(args, argv, steps=("ctf",), program="gctf.py", jobtype="ctfestimate",
                              ctf=_ctf_settings(args, args.engine, extra), image_ids=retrieve_ddstack_images(args.ddstackid))
    return _run(settings)
