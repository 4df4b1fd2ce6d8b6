"""What `appion loop`, `appion status` and `appion demo` do (imported when one of them runs)."""
from __future__ import annotations

import argparse
import sys

from appion.base.names import BadNameError, check_name
from appion.base.steps import StepError, get_step
from appion.loop.calc import LoopError, calc_percentile
from appion.loop.cluster import ClusterSettings


def calc_script_params(args: argparse.Namespace, skip=("func", "command", "config")) -> tuple:
    """(name, value, usage) for every option set, for ScriptParamName/Value rows."""
    out = []
    for name, value in sorted(vars(args).items()):
        if name in skip or value is None or callable(value):
            continue
        flag = "--" + name.replace("_", "-")
        out.append((name, str(value), f"{flag}={value}"))
    return tuple(out)


def calc_step_names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def settings_from_args(args: argparse.Namespace):
    """LoopSettings from `appion loop` options; each named step builds its own settings from its options."""
    from appion.loop.core import LoopSettings

    check_name("--runname", args.runname)
    steps = calc_step_names(args.steps)
    step_settings = {}
    for name in steps:
        step = get_step(name)
        step_settings[name] = (step.settings_from_args(args) if step.settings_from_args is not None
                               else step.default_settings())
    cluster = ClusterSettings(kind=args.cluster, threads_per_task=args.threads_per_task, workers=args.workers,
                              minimum=args.minimum, maximum=args.maximum, cores=args.cores, memory=args.memory,
                              queue=args.queue, account=args.account, walltime=args.walltime,
                              lifetime=args.lifetime, lifetime_stagger=args.lifetime_stagger, gpus=args.gpus,
                              interface=args.interface, log_directory=args.log_directory,
                              dashboard_address=args.dashboard_address)
    return LoopSettings(session=args.session, preset=args.preset, steps=steps, step_settings=step_settings,
                        runname=args.runname, wait=args.wait, idle_s=args.idle, poll_s=args.poll,
                        retries=args.retries, backoff_s=args.backoff, retry_failed=args.retry_failed,
                        db_start_wait_s=args.db_start_wait, grace_s=args.grace, order=args.order,
                        max_in_flight=args.max_in_flight, limit=args.limit, skip_rejected=args.skip_rejected,
                        tilt=args.tiltangle, reuse=args.reuse, cluster=cluster, gpu_ids=args.gpuids,
                        services_dir=args.services_dir, lease_timeout_s=args.lease_timeout,
                        script_params=calc_script_params(args), project_id=args.project_id)


def print_summary(summary) -> None:
    lat = list(summary.latency_s.values())
    text = f"done {len(summary.done)} exposures"
    if lat:
        text += f" (latency p50 {calc_percentile(lat, 50):.1f} s, p95 {calc_percentile(lat, 95):.1f} s)"
    if summary.failed:
        text += f"; {len(summary.failed)} permanently failed"
    if summary.stopped_by_signal:
        text += "; stopped by signal"
    print(text, flush=True)
    ran = ", ".join(f"{step} {count}" for step, count in summary.executed.items())
    reused = ", ".join(step for step, flag in summary.reused.items() if flag)
    print(f"tasks run: {ran or 'none'}" + (f"; results reused for: {reused}" if reused else ""), flush=True)
    for (image_id, step), reason in sorted(summary.failed.items()):
        print(f"  failed: exposure {image_id} {step}: {reason}", flush=True)


def run_and_report(settings, error_prefix: str) -> int:
    """Run one loop and print its summary (exit 0).  A person's error (no such session, a bad name, the run held
    by another loop), a file system error (a full disk) or a database that does not answer ends it with one
    line `PREFIX: message` and exit 2 (the run, when registered, is marked E)."""
    from appion.loop.calc import one_line
    from appion.loop.core import run_loop, user_errors
    from appion.loop.db import db_errors

    try:
        summary = run_loop(settings)
    except user_errors() as exc:
        print(f"{error_prefix}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{error_prefix}: {one_line(exc)}", file=sys.stderr)
        return 2
    except db_errors() as exc:
        print(f"{error_prefix}: the database did not answer: {one_line(exc)}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


def cmd_loop(args) -> int:
    try:
        settings = settings_from_args(args)
    except (LoopError, StepError, BadNameError) as exc:  # e.g. a malformed --patches, an unknown step, --runname ../x
        print(f"appion: {exc}", file=sys.stderr)
        return 2
    return run_and_report(settings, "appion")


def cmd_status(args) -> int:
    from appion.loop.status import calc_exposure_table, calc_status_report

    try:
        print(calc_status_report(args.session, args.runname))
        if args.exposures:
            print(calc_exposure_table(args.session, args.runname))
    except LoopError as exc:
        print(f"appion: {exc}", file=sys.stderr)
        return 2
    return 0


def run_demo(session_name: str) -> int:
    """Process the demo session on this machine and show what the database now holds."""
    from appion.loop.core import LoopSettings, run_loop, user_errors
    from appion.loop.status import calc_demo_table

    settings = LoopSettings(session=session_name, runname="demo", wait=False, idle_s=0.0, poll_s=0.5,
                            cluster=ClusterSettings(dashboard_address=":0"),
                            script_params=(("session", session_name, f"--session={session_name}"),))
    try:
        summary = run_loop(settings)
    except user_errors() as exc:
        print(f"appion: {exc}", file=sys.stderr)
        return 2
    print()
    print(calc_demo_table(session_name, "demo"))
    print()
    print_summary(summary)
    print(f"see also: appion status {session_name}")
    return 0 if not summary.failed else 1


def cmd_demo(args) -> int:
    """`appion demo`: simulate a small session, import it and process it on the embedded defaults."""
    from appion.base.db import current_config
    from appion.base.db.commands import cmd_db_init
    from appion.base.session.commands import cmd_session_import
    from appion.base.simulate.commands import cmd_simulate_session

    config = current_config()
    out = config.home / "demo"
    frames = out / "frames"
    if not frames.exists() or not any(frames.glob("*.frames.*")):
        print(f"simulating {args.n} movies in {out}", flush=True)
        sim = argparse.Namespace(out=out, n=args.n, size=args.size, apix=1.0, kv=300.0, cs=2.7, frames=args.frames,
                                 dose_per_frame=1.5, drift=12.0, gain_sigma=0.0, bfactor=60.0, format="both",
                                 name=args.name, micrographs=False, seed=1)
        cmd_simulate_session(sim)
    cmd_db_init(args)
    imp = argparse.Namespace(name=args.name, frames_dir=str(frames), apix=1.0, kv=300.0, cs=2.7,
                             dose=1.5 * args.frames, gain=None, preset="en", frame_rotate=0, frame_flip=0,
                             watch=False, interval=1.0, settle=2.0)
    status = cmd_session_import(imp)
    if status:
        return status
    return run_demo(args.name)
