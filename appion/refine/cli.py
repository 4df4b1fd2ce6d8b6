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
                                description="write a job file for a processing host, submit it, record the job; "
                                            "the rest of the command line is the program and its options (classic "
                                            "refinement jobs: the refinement options, --startIter/--endIter ...)")
    p.add_argument("--jobtype", default="generic",
                   help="the job's type: generic, a classic command type the web interface submits "
                        "(makeddrawframestack, ctfestimate, gctf, ...), or a refinement (emanrecon, frealignrecon, "
                        "relionrecon, xmipprecon, xmippml3d); any other name runs as a generic job with a warning")
    p.add_argument("--host", help="processing host from the site config (default: the first)")
    p.add_argument("--nodes", type=int, default=1, help="nodes to ask for")
    p.add_argument("--ppn", type=int, default=1, help="processors per node to ask for")
    p.add_argument("--rpn", type=int, help="refinement processes per node (classic; default --ppn): MPI processes = "
                                           "nodes × rpn, threads per process = ppn / rpn")
    p.add_argument("--walltime", type=float, help="wall-clock limit, hours")
    p.add_argument("--cput", type=float, help="CPU time, hours")
    p.add_argument("--mem", type=float, help="memory, GB")
    p.add_argument("--pmem", type=float, help="memory per process, MB")
    p.add_argument("--queue", help="queue / partition (default: the host's)")
    p.add_argument("--account", help="account to charge (default: the host's)")
    p.add_argument("--jobid", type=int, help="an ApAppionJobData row created by the web interface")
    p.add_argument("--setuponly", action="store_true",
                   help="write the job file (and the job's input files) and stop: nothing is submitted or recorded")
    p.add_argument("--wait", action="store_true", help="track the job here until it finishes")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between polls with --wait")
    return p


def main_runjob(argv: list[str] | None = None) -> int:
    """Classic runJob.py: `runJob.py <appion program> <its options> --jobtype=... --nodes=... ...`."""
    argv = take_config(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=os.environ.get("APPION_LOG_LEVEL", "INFO"), format="runJob.py: %(message)s")
    args, rest = _runjob_parser().parse_known_args(argv)
    args.argv = argv

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


def _prep_parser(prog: str, kind: str) -> argparse.ArgumentParser:
    """Every option of classic prepRefine<kind>.py (appionScript → Prep3DRefinement → the program) plus --apix."""
    # Classic optparse accepts a unique prefix of a long option; argparse's allow_abbrev does the same.
    p = argparse.ArgumentParser(prog=prog, description="prepare a particle stack and an initial model for refinement")
    g = p.add_argument_group("run (classic appionScript options)")
    g.add_argument("-n", "--runname", required=True, help="run name (= the run directory's last component)")
    g.add_argument("-R", "--rundir", "--outdir", dest="rundir", help="run directory (default <appion_base>/<session>/"
                                                                     "recon/<runname>)")
    g.add_argument("-p", "--projectid", type=int, help="project: its appion database records the run")
    g.add_argument("-d", "--description", default="", help="description recorded with the run")
    g.add_argument("-C", "--commit", dest="commit", action="store_true", default=True, help="record the run (default)")
    g.add_argument("--no-commit", dest="commit", action="store_false", help="record nothing in the database")
    g.add_argument("--expid", "--expId", dest="expid", type=int, help="session id (SessionData): the run's session; "
                                                                       "its microscope and CTF runs give the optics")
    g.add_argument("--session", "--sessionname", dest="session", help="session name (instead of --expid)")
    g.add_argument("--nproc", type=int, help="classic: processors to use (no effect: preparation runs in this process)")
    g.add_argument("--jobtype", help="classic: the job type runJob.py was given (no effect here)")
    g = p.add_argument_group("particles and model")
    g.add_argument("-s", "--stackid", "--stack", dest="stack", required=True,
                   help="ApStackData id, an MRC stack (.mrcs/.mrc) or a RELION particle STAR file")
    g.add_argument("--modelid", "--model", dest="model", required=True,
                   help="ApInitialModelData id or an MRC volume (classic accepts a comma-separated list; these "
                        "refinements take one)")
    g.add_argument("-N", "--lastParticle", "--last-particle", dest="last_particle", type=int,
                   help="use particles 1..N")
    g.add_argument("--lowpass", type=float, help="low-pass filter, Å (0: none)")
    g.add_argument("--highpass", type=float, help="high-pass filter, Å (0: none)")
    g.add_argument("--bin", type=int, default=1, help="Fourier binning factor")
    g.add_argument("--apix", type=float, help="pixel size in Å when the files lack it")
    if kind == "xmipp":
        g.add_argument("--method", help="refinement method the inputs are for: xmipprecon (default) or xmippml3d")
        g.add_argument("--maskVolId", type=str, help="mask volume (ApInitialModelData id or MRC file, 1 inside, 0 "
                                                     "outside), prepared like the model as maskvol.mrc and applied "
                                                     "to each iteration's reconstruction")
    if kind in ("frealign", "relion"):
        g = p.add_argument_group("CTF and parameters")
        g.add_argument("--ctfmethod", choices=("ace2", "ctffind"),
                       help="take each micrograph's CTF only from runs of this method")
        g.add_argument("--paramonly", action="store_true",
                       help="write only the parameter file, naming the stack's images as they are (no filtering or "
                            "binning)")
        g.add_argument("--reconiterid", type=int, help="classic: orientations from a refinement iteration (no "
                                                       "effect: appion has no refinement iteration records)")
    if kind == "frealign":
        g.add_argument("--noctf", action="store_true", help="no CTF correction (classic: defocus 0.1 Å in the "
                                                            "parameter file)")
        g.add_argument("--ctftilt", action="store_true", help="classic: CTFTILT values (no effect: the micrograph's "
                                                              "CTF estimate is used)")
        g.add_argument("--program_version", help="Frealign version the parameters are for (appion prepares for 9)")
    if kind == "relion":
        g.add_argument("--xmipp-normalize", dest="xmipp_normalize", type=float,
                       help="classic: Xmipp dust-removal threshold (no effect: the stack is not re-normalised)")
        g.add_argument("--relion_version", help="RELION version the STAR file is for (default: the installed "
                                                "relion_refine's, else 3.1): 3.1+ writes an optics table")
    p.add_argument("--chunk", type=int, default=256, help=argparse.SUPPRESS)
    return p


def calc_prep_warnings(args) -> list[str]:
    """One line per classic option that has no effect here (so nothing is silently ignored)."""
    out = []
    if args.nproc is not None:
        out.append(f"--nproc {args.nproc} has no effect: preparation runs in this process")
    if args.jobtype:
        out.append(f"--jobtype {args.jobtype} has no effect: it names the job for runJob.py")
    if getattr(args, "reconiterid", None):
        out.append("--reconiterid has no effect: appion keeps no refinement iterations; particles start without "
                   "orientations")
    if getattr(args, "ctftilt", False):
        out.append("--ctftilt has no effect: each micrograph's CTF estimate is used (appion stores no CTFTILT values)")
    if getattr(args, "xmipp_normalize", None) is not None:
        out.append("--xmipp-normalize has no effect: the stack is not re-normalised")
    version = getattr(args, "program_version", None)
    if version and not str(version).strip().startswith("9"):
        out.append(f"--program_version {version}: appion prepares for Frealign 9 (frealign_run_refine)")
    if getattr(args, "paramonly", False) and (args.bin != 1 or args.lowpass or args.highpass):
        out.append("--paramonly: --bin/--lowpass/--highpass are not applied (the stack is used as it is)")
    return out


def _main_prep(kind: str, argv: list[str] | None) -> int:
    argv = take_config(list(sys.argv[1:] if argv is None else argv))
    prog = f"prepRefine{kind.capitalize()}.py"
    args = _prep_parser(prog, kind).parse_args(argv)
    method = getattr(args, "method", None) or PREP_METHODS[kind][0]
    if method not in PREP_METHODS[kind]:
        print(f"{prog}: --method must be one of {', '.join(PREP_METHODS[kind])}", file=sys.stderr)
        return 2
    for line in calc_prep_warnings(args):
        print(f"{prog}: warning: {line}", file=sys.stderr)
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
    print(f"{prog}: {summary['particles']} particles{' with CTF' if summary['ctf'] else ''}, box {summary['boxsize']} "
          f"at {summary['apix']:g} Å in {summary['rundir']}" + (f"; prepared refinement id {summary['prep_id']}"
                                                               if summary['prep_id'] else " (not recorded: --no-commit)"))
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
