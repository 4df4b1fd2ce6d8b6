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
from appion.refine import hosts, retrieve, store, tracker
from appion.refine.calc import external, internal

log = logging.getLogger("appion.jobs")

# ================================================================ runJob.py
# Options of the Appion command line that runJob reads (without removing them).
_COMMON = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
_COMMON.add_argument("-n", "--runname")
_COMMON.add_argument("-R", "--rundir", "--outdir", dest="rundir")
_COMMON.add_argument("-p", "--projectid", type=int)
_COMMON.add_argument("-s", "--session")
_COMMON.add_argument("--expid", type=int)

# Classic option names of refinement programs → job-type parameter names.
_PARAM_ALIASES = {"numiter": "iterations", "iter": "iterations", "sym": "symmetry", "symm": "symmetry",
                  "ang": "angle_deg", "angle": "angle_deg", "diameter": "diameter_A", "lowpass": "lowpass_A",
                  "preprefineid": "prepid", "modelfile": "model", "stackfile": "stack", "outroot": "output_root"}


def calc_program_params(argv: list[str]) -> dict:
    """`--key=value`, `--key value` and `--flag` options of a classic command line → parameters."""
    params: dict = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and len(a) > 2:
            key, eq, value = a[2:].partition("=")
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                    value = argv[i + 1]
                    i += 1
                else:
                    value = "true"
            key = key.replace("-", "_")
            params[_PARAM_ALIASES.get(key, key)] = value
        i += 1
    return params


def _default_rundir(config, runname: str, session: str | None) -> Path:
    return config.appion_base / (session or "jobs") / "recon" / runname


def calc_checked_rundir_arg(given: str | None, default: Path, roots: tuple[str, ...]) -> Path:
    """The run directory from -R/--rundir (or the default): no '..', below a configured root after
    resolving symbolic links (a link must not lead a job file or an expiry outside the roots)."""
    if given and ".." in Path(given).parts:
        raise hosts.RunDirError(f"run directory {given!r} contains '..'")
    path = os.path.realpath(os.path.abspath(given) if given else default)
    return Path(str(hosts.calc_checked_rundir(path, list(roots))))


def _refine_params(jobtype: str, args, rest: list[str], rundir: str) -> dict:
    params = calc_program_params(rest)
    params["rundir"] = rundir
    params.setdefault("nproc", args.nodes * args.ppn)
    prep_id = params.pop("prepid", None)
    if prep_id is not None:
        prep = retrieve.retrieve_prepared_refinement(int(prep_id))
        params.setdefault("stack", prep.stack_path)
        params.setdefault("model", prep.model_path)
        params.setdefault("apix", prep.apix)
        params.setdefault("boxsize", prep.boxsize)
        if prep.method != jobtype:
            log.warning("prepared refinement %s was prepared for %s, running it as %s", prep_id, prep.method, jobtype)
    return params


def _use_project_database(config, project_id: int | None) -> None:
    """Classic -p/--projectid: with per-project appion databases (no [database] appion), record there."""
    if project_id is not None and not config.embedded and config.appion is None:
        use_appion_database(project_id)


def run_job(args, rest: list[str]) -> int:
    """runJob.py after its own options are parsed (rest: the program and its options)."""
    if not rest:
        raise ValueError("no command given: runJob.py <program> [options] --jobtype=...")
    config = current_config()
    common, _ = _COMMON.parse_known_args(rest)
    if not common.runname:
        raise ValueError("the command line needs -n/--runname")
    _use_project_database(config, common.projectid)
    runname = hosts.calc_checked_runname(common.runname)
    settings = retrieve.retrieve_jobs_settings(config)
    rundir = str(calc_checked_rundir_arg(common.rundir, _default_rundir(config, runname, common.session),
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
    if args.jobtype == "generic":
        params = {"command": list(rest)}
    else:
        params = _refine_params(args.jobtype, args, rest, rundir)
    external.parse_job_params(args.jobtype, params)  # refuse bad parameters before anything is written
    Path(rundir).mkdir(parents=True, exist_ok=True)
    session_id = None
    if common.session:
        session = m.SessionData.objects.filter(name=common.session).order_by("-id").first()
        session_id = session.id if session else None
    elif common.expid:
        session_id = common.expid
    tracker.write_job(host, request, files, args.jobtype, params)
    job, lifecycle = store.store_job(name=Path(files.job_file).name, files=files, jobtype=args.jobtype,
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
    print(f"runJob.py: {args.jobtype} job {job.id} submitted to {host.name} ({host.scheduler}) as {cluster_id}; "
          f"job file {files.job_file}", file=sys.stderr)
    if args.wait:
        tracker.watch_jobs(args.poll, until_idle=True, job_id=job.id)
        lifecycle = retrieve.retrieve_lifecycle(job.id)
        print(f"runJob.py: job {job.id} ended {lifecycle.state}: {lifecycle.reason}", file=sys.stderr)
        return 0 if lifecycle.state == "COMPLETED" else 1
    return 0


# ================================================================ prepRefine*.py
def _resolve_input(text: str, kind: str, apix: float | None):
    """(path, pixel size from DB or None, row id) for an id or a file name."""
    if text.isdigit():
        path, db_apix = (retrieve.retrieve_stack_file if kind == "stack" else retrieve.retrieve_model_file)(int(text))
        return path, apix or db_apix, int(text)
    return Path(text).expanduser().resolve(), apix, None


def prepare_refinement(args, method: str) -> dict:
    """Filter, bin and subset the stack and model into the run directory; record them. Returns a summary."""
    config = current_config()
    _use_project_database(config, args.projectid)
    runname = hosts.calc_checked_runname(args.runname)
    rundir = calc_checked_rundir_arg(args.rundir, _default_rundir(config, runname, args.session),
                                     retrieve.retrieve_jobs_settings(config).rundir_roots)
    if rundir.name != runname:
        raise ValueError(f"run name {runname!r} must equal the last component of the run directory {rundir}")
    stack_path, stack_apix, stack_id = _resolve_input(args.stack, "stack", args.apix)
    model_path, model_apix, model_id = _resolve_input(args.model, "model", args.apix)
    stack = retrieve.read_mrc_info(stack_path, stack_apix, want_ndim=2)
    model = retrieve.read_mrc_info(model_path, model_apix, want_ndim=3)
    n_total, box = stack.shape[0], stack.shape[1]
    if abs(model.pixel_size_A - stack.pixel_size_A) > 1e-3 * stack.pixel_size_A or model.shape[0] != box:
        raise retrieve.InputError(f"model {model_path} ({model.shape[0]} px at {model.pixel_size_A:g} Å) does not "
                                  f"match stack {stack_path} ({box} px at {stack.pixel_size_A:g} Å)")
    n = internal.calc_particle_count(n_total, args.last_particle)
    new_box = internal.calc_binned_shape((box,), args.bin)[0]
    apix = stack.pixel_size_A * args.bin
    rundir.mkdir(parents=True, exist_ok=True)
    layout = {"emanrecon": ("start.mrcs", "threed.0a.mrc"), "frealignrecon": ("particles.mrc", "run_1_r1.mrc"),
              "relionrecon": ("particles.mrcs", "model.mrc"), "xmipprecon": ("particles.mrcs", "model.mrc"),
              "xmippml3d": ("particles.mrcs", "model.mrc")}
    stack_name, model_name = layout[method]
    with store.StackWriter(rundir / stack_name, n, new_box, apix) as writer:
        for start in range(0, n, args.chunk):
            stop = min(n, start + args.chunk)
            chunk = retrieve.read_mrc_chunk(stack.path, start, stop)
            writer.write(start, internal.calc_prepared(chunk, stack.pixel_size_A, args.lowpass, args.highpass,
                                                       args.bin, ndim=2))
    volume = internal.calc_prepared(retrieve.read_mrc_volume(model.path), model.pixel_size_A, args.lowpass,
                                    args.highpass, args.bin, ndim=3)
    store.write_mrc_atomic(rundir / model_name, volume, apix)
    particles_file = stack_name
    if method == "relionrecon":
        particles_file = "particles.star"
        rows = "".join(f"{i:06d}@{rundir / stack_name}\n" for i in range(1, n + 1))
        store.write_text_atomic(rundir / particles_file, "\ndata_particles\n\nloop_\n_rlnImageName #1\n" + rows)
    elif method in ("xmipprecon", "xmippml3d"):
        particles_file = "particles.xmd"
        rows = "".join(f" {i:06d}@{rundir / stack_name} 1\n" for i in range(1, n + 1))
        store.write_text_atomic(rundir / particles_file,
                                "# XMIPP_STAR_1 *\n#\ndata_noname\nloop_\n _image\n _enabled\n" + rows)
    summary = {"rundir": str(rundir), "stack": str(rundir / particles_file), "model": str(rundir / model_name),
               "apix": apix, "boxsize": new_box, "particles": n, "prep_id": None}
    if args.commit:
        stack_row = store.store_stack_row(stack.path, stack.pixel_size_A, box, n_total) if stack_id is None else \
            _row("ApStackData", stack_id)
        model_row = store.store_model_row(model.path, model.pixel_size_A, box) if model_id is None else \
            _row("ApInitialModelData", model_id)
        session_id = args.expid
        if args.session:
            s = m.SessionData.objects.filter(name=args.session).order_by("-id").first()
            session_id = s.id if s else None
        prep = store.store_prepared_refinement(
            runname=runname, rundir=str(rundir), method=method, description=args.description, stack_row=stack_row,
            model_row=model_row, stack_file=particles_file, model_file=model_name, last_part=n, lowpass=args.lowpass,
            highpass=args.highpass, bin_factor=args.bin, apix=apix, boxsize=new_box,
            fmt={"relionrecon": "relion-star", "xmipprecon": "xmipp-xmd", "xmippml3d": "xmipp-xmd"}.get(method, "mrc"), session_id=session_id)
        summary["prep_id"] = prep.id
    return summary


def _row(model_name: str, row_id: int):
    return getattr(m, model_name).objects.get(id=row_id)


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
