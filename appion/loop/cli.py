"""`appion loop`, `appion status` and `appion demo`: the parsers (light: argparse and the step registry only).

Each step adds its own option group (appion.base.steps); the work is imported when a command runs.
"""
from __future__ import annotations

import argparse

from appion.base.entry import Command
from appion.base.steps import calc_step_order, load_steps

TILT_CHOICES = ("all", "notilt", "hightilt", "lowtilt", "minustilt", "plustilt")
CLUSTERS = ("local", "slurm", "pbs", "sge", "lsf")


def add_loop_options(p: argparse.ArgumentParser) -> None:
    """Options of `appion loop` and `python loop.py`: the loop's own, then each registered step's."""
    steps = load_steps()
    p.add_argument("--session", required=True, help="session name (Leginon or imported)")
    p.add_argument("--preset", help="only exposures of this preset (default: every movie of the session)")
    p.add_argument("--steps", default="motion,ctf",
                   help=f"comma-separated steps (registered: {', '.join(steps) or 'none'}); dependencies decide "
                        "the order")
    p.add_argument("--runname", default="loop1", help="run name: the same name resumes the run")
    p.add_argument("--cluster", default="local", choices=CLUSTERS)
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="exit once caught up and no exposure arrived for --idle seconds")
    p.add_argument("--idle", type=float, default=10.0, help="seconds without new exposures before --no-wait exits")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between database polls")
    p.add_argument("--retries", type=int, default=6,
                   help="retries of an exposure step after a transient failure (disk full, I/O error, lost worker, "
                        "database, a movie still being written) before giving up; bad input (an unreadable movie, "
                        "a gain that does not fit, missing pixel size) fails at once")
    p.add_argument("--backoff", type=float, default=10.0,
                   help="seconds before the first retry (doubling, at most 5 minutes)")
    p.add_argument("--retry-failed", action="store_true",
                   help="try again the exposures that failed permanently in earlier starts of this run")
    p.add_argument("--db-start-wait", type=float, default=60.0,
                   help="seconds to wait for a database that has not answered since the start before giving up "
                        "(outages after it answered are waited out)")
    p.add_argument("--grace", type=float, default=120.0, help="seconds in-flight tasks may finish after SIGTERM")
    p.add_argument("--order", choices=("oldest", "newest"), default="oldest")
    p.add_argument("--max-in-flight", type=int, help="tasks submitted at once (default 2 per task slot)")
    p.add_argument("--limit", type=int, help="process at most this many exposures")
    p.add_argument("--tiltangle", default="all", choices=TILT_CHOICES)
    p.add_argument("--include-rejects", dest="skip_rejected", action="store_false",
                   help="also process hidden/trashed/assessment-rejected exposures")
    p.add_argument("--no-reuse", dest="reuse", action="store_false",
                   help="recompute every step even when an earlier run of the session has identical parameters and "
                        "program versions (default: reuse those results)")
    p.add_argument("--project-id", type=int, help="project whose appion database to use (MySQL)")
    g = p.add_argument_group("services (GPUs and licensed programs leased per task)")
    g.add_argument("--gpuids", default="0", help="GPU ids of each node that GPU engines lease, one per task, e.g. 0,1")
    g.add_argument("--services-dir", help="lease directory shared by every loop and node (default $APPION_HOME/services)")
    g.add_argument("--lease-timeout", type=float, default=60.0,
                   help="seconds after which the lease of a holder that died is freed")
    try:
        ordered = [steps[n] for n in calc_step_order(tuple(steps), steps)]
    except ValueError:  # a plugin's dependencies are broken: still offer every step's options
        ordered = list(steps.values())
    for step in ordered:
        if step.add_options is not None:
            step.add_options(p)
    g = p.add_argument_group("cluster (unset values come from the Dask configuration, e.g. jobqueue.yaml)")
    g.add_argument("--threads-per-task", type=int, default=1, help="numba/FFT threads one task uses")
    g.add_argument("--workers", type=int, help="local: worker processes (default cores / threads-per-task)")
    g.add_argument("--minimum", type=int, default=0, help="batch: adapt minimum jobs")
    g.add_argument("--maximum", type=int, help="batch: adapt maximum jobs (default 2)")
    g.add_argument("--cores", type=int, help="batch: cores per job")
    g.add_argument("--memory", help="batch: memory per job, e.g. 8GB")
    g.add_argument("--queue", help="batch: queue / partition")
    g.add_argument("--account", help="batch: account to charge")
    g.add_argument("--walltime", help="batch: job walltime [D-]HH:MM:SS")
    g.add_argument("--lifetime", help="batch: worker lifetime (default: walltime minus a margin)")
    g.add_argument("--lifetime-stagger", default="60s", help="batch: spread of worker lifetimes")
    g.add_argument("--gpus", type=int, default=0, help="GPU resource per worker (external GPU engines)")
    g.add_argument("--interface", help="network interface the workers listen on")
    g.add_argument("--log-directory", help="batch: where job logs go")
    g.add_argument("--dashboard-address", default=":8787", help="Dask dashboard address (:0 = any free port)")


def add_parser(subparsers) -> None:
    loop = subparsers.add_parser("loop", help="process a session's exposures as they arrive (Dask)")
    add_loop_options(loop)
    loop.set_defaults(func=Command("appion.loop.commands:cmd_loop"))
    status = subparsers.add_parser("status", help="what a session's loop runs have done, are doing and failed")
    status.add_argument("session")
    status.add_argument("--runname", help="only this loop run")
    status.add_argument("--exposures", action="store_true", help="also list each exposure with every step's values")
    status.set_defaults(func=Command("appion.loop.commands:cmd_status"))
    demo = subparsers.add_parser("demo", help="simulate, import and process a small session on the embedded defaults")
    demo.add_argument("--name", default="demo", help="session name")
    demo.add_argument("--n", type=int, default=8, help="number of movies")
    demo.add_argument("--size", type=int, default=1024, help="frame size (pixels, square)")
    demo.add_argument("--frames", type=int, default=16, help="frames per movie")
    demo.set_defaults(func=Command("appion.loop.commands:cmd_demo"))
