"""Running a drop-in: parse its classic command line, warn about options without effect, look the session and the
images up, and run the loop for its step (imported only when a drop-in runs, never for --help)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from appion.base.names import BadNameError, check_name
from appion.loop.dropin.options import DropinError, Group, calc_given, calc_script_params, calc_warnings

log = logging.getLogger("appion.dropin")


@dataclass(frozen=True)
class Program:
    prog: str  # the classic program name (ScriptProgramName)
    jobtype: str  # ApAppionJobData.jobtype unless --jobtype is given (classic: the program name, lower case)
    steps: tuple[str, ...]
    groups: tuple[Group, ...]
    parser: Callable[[], argparse.ArgumentParser]
    param_names: dict


def calc_run_names(args: argparse.Namespace) -> tuple[str, str | None]:
    """(runname, explicit run directory or None).  Classic rules: the run name is the last component of --rundir;
    a run name is a plain name.  An explicit --rundir is taken as given (classic accepts any)."""
    rundir = args.rundir
    if rundir and args.runname and Path(rundir).name != args.runname:
        raise BadNameError(f"--runname {args.runname!r} must equal the last component of --rundir "
                           f"({Path(rundir).name!r})")
    runname = args.runname or (Path(rundir).name if rundir else None)
    if not runname:
        raise BadNameError("give -n/--runname NAME (or -R/--rundir PATH)")
    check_name("--runname", runname)
    return runname, str(Path(rundir).resolve()) if rundir else None


def calc_gpu_ids(args: argparse.Namespace, given_names: set[str]) -> str:
    """--gpuids, else the one GPU of --gpuid (classic MotionCor2 UCSF: the first of --gpuids is the log's gpuid)."""
    if "--gpuids" not in given_names and "--gpuid" in given_names:
        return str(args.gpuid)
    return getattr(args, "gpuids", "0") or "0"


def _start(argv: list[str] | None) -> list[str]:
    """Logging; a `--config FILE` anywhere selects the config (taken out of argv)."""
    from appion.base.entry import take_config

    logging.basicConfig(level=os.environ.get("APPION_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return take_config(list(sys.argv[1:] if argv is None else argv))


def run_program(program: Program, argv: list[str] | None, step_settings: Callable) -> int:
    """Parse, warn, look up, run the loop; exit status 0 done, 2 a person's error (one line)."""
    argv = _start(argv)
    parser = program.parser()
    args = parser.parse_args(argv)
    given = calc_given(program.prog, program.groups, argv)
    for line in calc_warnings(given, args):
        log.warning("%s", line)
    if args.background:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        runname, rundir = calc_run_names(args)
        given_names = {flag for opt in given for flag in opt.flags}
        settings = build_settings(program, args, given_names, runname, rundir, step_settings(args, given))
    except (BadNameError, DropinError) as exc:
        parser.error(str(exc))
    from appion.loop.commands import run_and_report

    return run_and_report(settings, f"{program.prog}: error")


def build_settings(program: Program, args: argparse.Namespace, given_names: set[str], runname: str,
                   rundir: str | None, step_settings: dict):
    """LoopSettings of one classic run (starts the database: the session and the images are looked up)."""
    from appion.base.db import bootstrap

    bootstrap()
    from appion.loop.cluster import ClusterSettings
    from appion.loop.dropindb import calc_image_selection, retrieve_session_name
    from appion.loop.records import LoopSettings

    session = retrieve_session_name(args.sessionname, args.expid)
    if rundir is None:
        check_name("--session", session)  # it becomes part of the default run directory
    selection = calc_image_selection(session, mrclist=args.mrcnames, ddstackid=getattr(args, "ddstackid", None),
                                     best_images=args.bestimages, reprocess=getattr(args, "reprocess", None),
                                     uncorrected=getattr(args, "uncorrected", False))
    cluster = ClusterSettings(kind=args.cluster, threads_per_task=args.threads_per_task, workers=args.nproc,
                              queue=args.queue, maximum=args.maximum, dashboard_address=args.dashboard_address)
    return LoopSettings(
        session=session, preset=args.preset, steps=program.steps, step_settings=step_settings,
        rundirs={step: rundir for step in program.steps} if rundir else {}, runname=runname, wait=args.wait,
        idle_s=args.idle, poll_s=args.poll, retries=args.retries, order="newest" if args.reverse else "oldest",
        limit=args.limit, skip_rejected=args.norejects, tilt=args.tiltangle, commit=args.commit,
        continue_run=args.continue_run, reuse=False, cluster=cluster, gpu_ids=calc_gpu_ids(args, given_names),
        program=program.prog, jobtype=args.jobtype or program.jobtype,
        script_params=calc_script_params(program.groups, args, program.param_names), project_id=args.projectid,
        start_image_id=args.startimgid, end_image_id=args.endimgid, image_ids=selection)
