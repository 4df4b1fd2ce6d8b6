"""Command lines: `runJob.py`, `prepRefine{Eman,Frealign,Relion,Xmipp}.py`, and `appion jobs ...`.

The parsers and entry points (light); the implementations are appion.refine.commands, imported
after --config is read and appion.base.db.bootstrap() has run.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from appion.base.config import ConfigError
from appion.base.entry import Command, is_configuration_error, is_database_error, one_line, take_config


# ================================================================ runJob.py
def _runjob_parser() -> argparse.ArgumentParser:
    # No abbreviations: a prefix of one of our options (e.g. --no) may be an option of the wrapped program.
    p = argparse.ArgumentParser(prog="runJob.py", allow_abbrev=False,
                                description="write a job file for a processing host, submit it, record the job")
    p.add_argument("--jobtype", default="generic", help="generic, emanrecon, frealignrecon, relionrecon, xmipprecon, "
                                                         "xmippml3d (or any registered type)")
    p.add_argument("--host", help="processing host from the site config (default: the first)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--ppn", type=int, default=1)
    p.add_argument("--walltime", type=float, help="hours")
    p.add_argument("--cput", type=float, help="CPU time, hours")
    p.add_argument("--mem", type=float, help="memory, GB")
    p.add_argument("--pmem", type=float, help="memory per process, MB")
    p.add_argument("--queue")
    p.add_argument("--account")
    p.add_argument("--jobid", type=int, help="an ApAppionJobData row created by the web interface")
    p.add_argument("--wait", action="store_true", help="track the job here until it finishes")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between polls with --wait")
    return p


def main_runjob(argv: list[str] | None = None) -> int:
    """Classic runJob.py: `runJob.py <appion program> <its options> --jobtype=... --nodes=... ...`."""
    argv = take_config(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=os.environ.get("APPION_LOG_LEVEL", "INFO"), format="runJob.py: %(message)s")
    args, rest = _runjob_parser().parse_known_args(argv)

    def body() -> int:
        from appion.base.db import bootstrap

        bootstrap()
        from appion.refine.commands import run_job

        return run_job(args, rest)

    return _run_entry("runJob.py", body)


def _run_entry(prog: str, body) -> int:
    """Run a console command's body; every expected failure becomes one line and an exit status."""
    try:
        return body()
    except ConfigError as exc:
        print(f"{prog}: configuration error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if is_configuration_error(exc):  # e.g. the MySQL driver is not installed
            print(f"{prog}: configuration error: {one_line(exc)}", file=sys.stderr)
            return 2
        if is_database_error(exc):
            print(f"{prog}: database error: {one_line(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, (ValueError, OSError)):  # refused requests, bad parameters, run directories, inputs
            print(f"{prog}: {one_line(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, RuntimeError):  # scheduler problems
            print(f"{prog}: {one_line(exc)}", file=sys.stderr)
            return 3
        raise


# ================================================================ prepRefine*.py
# The refinement methods each prepRefine program prepares for (the first is the default).
PREP_METHODS = {"eman": ("emanrecon",), "frealign": ("frealignrecon",), "relion": ("relionrecon",),
                "xmipp": ("xmipprecon", "xmippml3d")}


def _prep_parser(prog: str) -> argparse.ArgumentParser:
    # Classic optparse accepts a unique prefix of a long option; argparse's allow_abbrev does the same.
    p = argparse.ArgumentParser(prog=prog, description="prepare a particle stack and an initial model for refinement")
    p.add_argument("--stackid", "--stack", dest="stack", required=True,
                   help="ApStackData id, or an MRC stack file (.mrcs/.mrc)")
    p.add_argument("--modelid", "--model", dest="model", required=True,
                   help="ApInitialModelData id, or an MRC volume")
    p.add_argument("-N", "--lastParticle", "--last-particle", dest="last_particle", type=int,
                   help="use particles 1..N")
    p.add_argument("--lowpass", type=float, help="low-pass filter, Å")
    p.add_argument("--highpass", type=float, help="high-pass filter, Å")
    p.add_argument("--bin", type=int, default=1, help="Fourier binning factor")
    p.add_argument("--apix", type=float, help="pixel size in Å when a file's header lacks it")
    p.add_argument("--method", help="refinement method the inputs are for (prepRefineXmipp.py: xmipprecon or "
                                    "xmippml3d)")
    p.add_argument("-n", "--runname", required=True)
    p.add_argument("-R", "--rundir", "--outdir", dest="rundir")
    p.add_argument("-p", "--projectid", type=int)
    p.add_argument("-d", "--description", default="")
    p.add_argument("-s", "--session")
    p.add_argument("--expid", type=int)
    p.add_argument("-C", "--commit", dest="commit", action="store_true", default=True)
    p.add_argument("--no-commit", dest="commit", action="store_false")
    p.add_argument("--chunk", type=int, default=256, help=argparse.SUPPRESS)
    return p


def _main_prep(kind: str, argv: list[str] | None) -> int:
    argv = take_config(list(sys.argv[1:] if argv is None else argv))
    prog = f"prepRefine{kind.capitalize()}.py"
    args = _prep_parser(prog).parse_args(argv)
    method = args.method or PREP_METHODS[kind][0]
    if method not in PREP_METHODS[kind]:
        print(f"{prog}: --method must be one of {', '.join(PREP_METHODS[kind])}", file=sys.stderr)
        return 2
    summary = {}

    def body() -> int:
        from appion.base.db import bootstrap

        bootstrap()
        from appion.refine.commands import prepare_refinement

        summary.update(prepare_refinement(args, method))
        return 0

    status = _run_entry(prog, body)
    if status:
        return status
    print(f"{prog}: {summary['particles']} particles, box {summary['boxsize']} at {summary['apix']:g} Å "
          f"in {summary['rundir']}" + (f"; prepared refinement id {summary['prep_id']}" if summary['prep_id'] else
                                       " (not recorded: --no-commit)"))
    return 0


def main_prep_eman(argv: list[str] | None = None) -> int:
    return _main_prep("eman", argv)


def main_prep_frealign(argv: list[str] | None = None) -> int:
    return _main_prep("frealign", argv)


def main_prep_relion(argv: list[str] | None = None) -> int:
    return _main_prep("relion", argv)


def main_prep_xmipp(argv: list[str] | None = None) -> int:
    return _main_prep("xmipp", argv)


# ================================================================ appion jobs ...
def add_parser(subparsers) -> None:
    jobs = subparsers.add_parser("jobs", help="cluster jobs: track, list, show, cancel").add_subparsers(
        dest="jobs_cmd", required=True)
    w = jobs.add_parser("watch", help="poll the schedulers and move job states along (until SIGTERM)")
    w.add_argument("--once", action="store_true", help="one pass, then exit")
    w.add_argument("--interval", type=float, help="seconds between polls (default [jobs] poll_interval_s or 10)")
    w.add_argument("--until-idle", action="store_true", help="exit when no job is queued, running or post-processing")
    w.add_argument("--max-seconds", type=float)
    w.add_argument("--job", type=int, help="only this ApAppionJobData id")
    w.set_defaults(func=Command("appion.refine.commands:cmd_jobs_watch"))
    ls = jobs.add_parser("list", help="jobs and their states")
    ls.add_argument("--all", action="store_true", help="include expired jobs")
    ls.set_defaults(func=Command("appion.refine.commands:cmd_jobs_list"))
    sh = jobs.add_parser("show", help="one job's transitions")
    sh.add_argument("job", type=int)
    sh.set_defaults(func=Command("appion.refine.commands:cmd_jobs_show"))
    c = jobs.add_parser("cancel", help="cancel a job at its scheduler")
    c.add_argument("job", type=int)
    c.set_defaults(func=Command("appion.refine.commands:cmd_jobs_cancel"))
