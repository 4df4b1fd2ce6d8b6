"""runJob.py, prepRefine*.py and `appion jobs ...`: the implementations (run after appion.base.db.bootstrap()).

The parsers and console entry points are appion.refine.cli.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from appion.base import jobstates as js
from appion.base.db import models as m
from appion.base.db.setup import current_config, use_appion_database
from appion.base.jobstates import JobState
from appion.refine import hosts, prepare, retrieve, store, tracker
from appion.refine import particles as P
from appion.refine.calc import classic, external, formats, refinejobs
from appion.refine.programs import detect_relion_version

log = logging.getLogger("appion.jobs")

# ================================================================ runJob.py
# Options of the Appion command line that runJob reads (without removing them).  Classic refinement
# jobs use -s for --stackname, so -s is the session only for command types.
def _common_parser(session_short: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("-n", "--runname")
    p.add_argument("-R", "--rundir", "--outdir", dest="rundir")
    p.add_argument("-p", "--projectid", type=int)
    p.add_argument(*(("-s",) if session_short else ()), "--session", "--sessionname", dest="session")
    p.add_argument("--expid", "--expId", dest="expid", type=int)
    return p


# Options of a classic command line consumed by runJob itself (no "not used" warning for them).
_CONSUMED = {"runname", "rundir", "outdir", "projectid", "session", "sessionname", "expid", "expId", "jobtype",
             "setuponly"}


def default_rundir(config, runname: str, session: str | None) -> Path:
    return config.appion_base / (session or "jobs") / "recon" / runname


def calc_checked_rundir_arg(given: str | None, default: Path, roots: tuple[str, ...]) -> Path:
    """The run directory from -R/--rundir (or the default): no '..', below a configured root after
    resolving symbolic links (a link must not lead a job file or an expiry outside the roots)."""
    if given and ".." in Path(given).parts:
        raise hosts.RunDirError(f"run directory {given!r} contains '..'")
    path = os.path.realpath(os.path.abspath(given) if given else default)
    return Path(str(hosts.calc_checked_rundir(path, list(roots))))


def _relion_version(params: dict, star_layout: str | None) -> None:
    """relion_version: given, else the installed relion_refine's, else the prepared STAR file's layout."""
    if "relion_version" in params:
        return
    installed = detect_relion_version(params.get("program") or "relion_refine")
    if installed is not None:
        if star_layout == "3.1" and not formats.calc_relion_has_optics(installed):
            raise ValueError(f"the particles are in RELION 3.1's layout but relion_refine here is "
                             f"{'.'.join(map(str, installed))}: prepare them with --relion_version="
                             f"{'.'.join(map(str, installed[:2]))}")
        params["relion_version"] = ".".join(map(str, installed))
    elif star_layout:
        params["relion_version"] = star_layout


def _refine_params(jobtype: str, args, rest: list[str], rundir: str) -> dict:
    """A classic refinement command line (+ the prepared refinement it names) → job parameters."""
    argv = [a for a in rest if a.lstrip("-").split("=", 1)[0] not in _CONSUMED]
    params, warnings = classic.calc_refine_params(argv, set(refinejobs.REFINE_PARAM_NAMES))
    for line in warnings:
        log.warning("%s", line)
    params["rundir"] = rundir
    per_node = args.rpn or args.ppn
    params.setdefault("nproc", args.nodes * per_node)
    params.setdefault("threads", max(1, args.ppn // args.rpn) if args.rpn else 1)
    prep_id = params.pop("prepid", None)
    if prep_id is not None:
        prep = retrieve.retrieve_prepared_refinement(int(prep_id))
        params.setdefault("stack", prep.stack_path)
        params.setdefault("model", prep.model_path)
        params.setdefault("apix", prep.apix)
        params.setdefault("boxsize", prep.boxsize)
        prep_dir = Path(prep.rundir)
        if jobtype == "frealignrecon":
            params.setdefault("parfile", str(prep_dir / prepare.FRATE_PAR))
        if (prep_dir / "maskvol.mrc").exists():
            params.setdefault("mask", str(prep_dir / "maskvol.mrc"))
        if prep.method != jobtype:
            log.warning("prepared refinement %s was prepared for %s, running it as %s", prep_id, prep.method, jobtype)
        star = prep_dir / "particles.star"
    else:
        stack = str(params.get("stack", ""))
        star = Path(stack) if stack.endswith(".star") else None
    layout = None
    if star is not None and star.is_file():
        info = P.read_star_summary(star)
        layout = "3.1" if info.has_optics else "3.0"
        params.setdefault("ctf", info.has_ctf)
        for key, value in (("voltage_kV", info.voltage_kV), ("cs_mm", info.cs_mm), ("amp_contrast", info.amp_contrast)):
            if value is not None:
                params.setdefault(key, value)
    if jobtype == "relionrecon":
        _relion_version(params, layout)
    return params


def use_project_database(config, project_id: int | None) -> None:
    """Classic -p/--projectid: with per-project appion databases (no [database] appion), record there."""
    if project_id is not None and not config.embedded and config.appion is None:
        use_appion_database(project_id)


def run_job(args, rest: list[str]) -> int:
    """runJob.py after its own options are parsed (rest: the program and its options)."""
    if not rest:
        raise ValueError("no command given: runJob.py <program> [options] --jobtype=...")
    jobtype = args.jobtype
    if jobtype not in external.JOB_TYPES:
        log.warning("unknown job type %r: running the command line as a generic job (as classic runJob.py does)",
                    jobtype)
    run_as = external.resolve_job_type(jobtype)
    command_type = external.calc_is_command_type(run_as)
    config = current_config()
    common, _ = _common_parser(session_short=command_type).parse_known_args(rest)
    if not common.runname:
        raise ValueError("the command line needs -n/--runname")
    use_project_database(config, common.projectid)
    runname = hosts.calc_checked_runname(common.runname)
    settings = retrieve.retrieve_jobs_settings(config)
    rundir = str(calc_checked_rundir_arg(common.rundir, default_rundir(config, runname, common.session),
                                         settings.rundir_roots))
    if Path(rundir).name != runname:
        raise ValueError(f"run name {runname!r} must equal the last component of the run directory {rundir}")
    host = hosts.calc_pick_host(retrieve.retrieve_hosts(config), args.host)
    if args.cput is not None and host.scheduler == "slurm":
        log.warning("Slurm has no CPU-time limit; --cput is not written to the job file")
    files = hosts.JobFiles(rundir, runname)
    request = hosts.calc_checked_request(host, hosts.JobRequest(
        name=runname, nodes=args.nodes, ppn=args.ppn, walltime_h=args.walltime, cputime_h=args.cput,
        mem_gb=args.mem, pmem_mb=args.pmem, queue=args.queue or "", account=args.account or "",
        output_path=files.output))
    params = {"command": list(rest)} if command_type else _refine_params(run_as, args, rest, rundir)
    external.parse_job_params(run_as, params)  # refuse bad parameters before anything is written
    Path(rundir).mkdir(parents=True, exist_ok=True)
    store.append_command_log(rundir, list(args.argv))
    tracker.write_job(host, request, files, jobtype, params)
    if args.setuponly:
        print(f"runJob.py: --setuponly: {jobtype} job prepared in {files.job_file}, not submitted", file=sys.stderr)
        return 0
    session_id = None
    if common.session:
        session = m.SessionData.objects.filter(name=common.session).order_by("-id").first()
        session_id = session.id if session else None
    elif common.expid:
        session_id = common.expid
    job, lifecycle = store.store_job(name=Path(files.job_file).name, files=files, jobtype=jobtype,
                                     host=host.name, params=params, request=tracker.request_as_dict(request),
                                     session_id=session_id, job_id=args.jobid)
    try:
        cluster_id = tracker.submit_job_file(host, files)
    except (tracker.SchedulerError, hosts.SchedulerOutputError) as exc:
        store.store_transitions(lifecycle, [js.calc_transition(lifecycle.state, js.JobState.FAILED,
                                                               f"submission failed: {exc}")])
        raise RuntimeError(str(exc)) from None
    store.store_cluster_job_id(lifecycle, cluster_id)
    print(cluster_id, flush=True)
    print(f"runJob.py: {jobtype} job {job.id} submitted to {host.name} ({host.scheduler}) as {cluster_id}; "
          f"job file {files.job_file}", file=sys.stderr)
    if args.wait:
        tracker.watch_jobs(args.poll, until_idle=True, job_id=job.id)
        lifecycle = retrieve.retrieve_lifecycle(job.id)
        print(f"runJob.py: job {job.id} ended {lifecycle.state}: {lifecycle.reason}", file=sys.stderr)
        return 0 if lifecycle.state == "COMPLETED" else 1
    return 0


# ================================================================ prepRefine*.py
def prepare_refinement(args, method: str) -> dict:
    return prepare.prepare_refinement(args, method)


# ================================================================ appion jobs ...
def cmd_jobs_watch(args) -> int:
    if args.once:
        changed = tracker.poll_jobs_once(job_id=args.job)
        print(f"{changed} state changes")
        return 0
    interval = args.interval or retrieve.retrieve_jobs_settings(current_config()).poll_interval_s
    stopping = {"flag": False}

    def _stop(signum, frame):
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    tracker.watch_jobs(interval, until_idle=args.until_idle, max_seconds=args.max_seconds, job_id=args.job,
                       stop=lambda: stopping["flag"])
    return 0


def cmd_jobs_list(args) -> int:
    rows = m.ApJobLifecycleData.objects.order_by("id")
    if not args.all:
        rows = rows.exclude(state=JobState.EXPIRED.value)
    print(f"{'job':>5} {'cluster id':>10} {'st':>2} {'state':<15} {'cyc':>3} {'type':<14} {'host':<12} reason")
    for lc in rows:
        job = m.ApAppionJobData.objects.filter(id=lc.job_id).first()
        print(f"{lc.job_id:>5} {job.clusterjobid or '-':>10} {job.status:>2} {lc.state:<15} {lc.cycle or 1:>3} "
              f"{lc.jobtype:<14} {lc.host:<12} {lc.reason or ''}")
    return 0


def cmd_jobs_show(args) -> int:
    lc = retrieve.retrieve_lifecycle(args.job)
    if lc is None:
        print(f"appion jobs: no job {args.job}", file=sys.stderr)
        return 1
    print(f"job {args.job} {lc.jobtype} on {lc.host}: {lc.state} ({lc.reason}) in {lc.rundir}")
    for t in retrieve.retrieve_transitions(lc.id):
        print(f"  cycle {t.cycle} {t.from_state or '-':>14} -> {t.to_state:<14} {t.reason or ''}")
    return 0


def cmd_jobs_cancel(args) -> int:
    lc = retrieve.retrieve_lifecycle(args.job)
    job = m.ApAppionJobData.objects.filter(id=args.job).first()
    if lc is None or job is None or not job.clusterjobid:
        print(f"appion jobs: no submitted job {args.job}", file=sys.stderr)
        return 1
    host = hosts.calc_pick_host(retrieve.retrieve_hosts(current_config()), lc.host)
    tracker.cancel_job(host, job.clusterjobid)
    print(f"cancel sent for cluster job {job.clusterjobid}; the tracker records the end")
    return 0
