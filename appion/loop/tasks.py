"""The worker side of the loop: run one step's task for one exposure, holding the services it needs.

Workers never touch the database (no Django import here or in anything this module imports): they
read a movie or an image, write files into the run directories and return the step's record, which
the loop process stores.  GPUs and licensed programs are leased per task from lease files shared by
every loop and worker (appion.workflow.services), so two tasks never use the same GPU at once.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass

from appion.base.steps import Lazy, StepInput


@dataclass(frozen=True)
class TaskSpec:
    """How to run one step's task: the function, the services to lease, where leases live."""

    step: str
    task: Lazy
    needs: tuple[str, ...] = ()
    services_dir: str | None = None
    lease_wait_s: float = 3600.0  # how long a task waits for a free GPU/licence before failing (retried)


def _holder(spec: TaskSpec, task: StepInput) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{spec.step}:{getattr(task.exposure, 'image_id', '?')}"


def run_step_task(spec: TaskSpec, task: StepInput, settings):
    """Run `spec.task(task, settings)` on this worker, with a lease on each service the engine needs."""
    if not spec.needs:
        return spec.task(task, settings)
    from pathlib import Path

    from appion.workflow.services import acquire_service

    leases = []
    try:
        for name in spec.needs:
            leases.append(acquire_service(name, Path(spec.services_dir), holder=_holder(spec, task),
                                          wait_s=spec.lease_wait_s))
        leased = dataclasses.replace(task, lease={**task.lease, **{n: lease.slot for n, lease in
                                                                     zip(spec.needs, leases)}})
        return spec.task(leased, settings)
    finally:
        for lease in reversed(leases):
            lease.release()


def calc_worker_index(name) -> int:
    """A Dask worker's index from its name: LocalCluster names workers 0, 1, ...; dask-jobqueue
    "<Cluster>-<n>[-<k>]"; anything else counts as 0."""
    import re

    found = re.search(r"(\d+)(?:-\d+)?$", str(name))
    return int(found.group(1)) if found else 0


def warm_up_worker(modules: tuple[str, ...], warm_ups: tuple[tuple[Lazy, ...], ...] = (),
                   index: int = 0) -> dict[str, float]:
    """Prepare a fresh worker before its first exposure: import the engines' heavy modules (numba/scipy imports
    take seconds), then run the engines' warm-ups (compiling their numba functions, or loading them from the
    shared NUMBA_CACHE_DIR): every engine's first stage (its common path), then every engine's second, ....

    warm_ups: per engine, its stages (appion.base.steps.Engine.warm_up), in step order.  Worker 0 goes in step
    order, each further worker starts one engine later: on a fresh install the workers compile different engines
    at the same time, and the engines' warm-up locks let the others load what one compiled; a single worker
    compiles the first step's common path first.  A failing warm-up is only logged (the first task that needs
    the engine reports the problem).  Returns the seconds spent per warm-up function."""
    import importlib
    import logging
    import time

    log = logging.getLogger("appion.loop.worker")
    for name in dict.fromkeys(modules):
        try:
            importlib.import_module(name)
        except ImportError:  # reported properly by the first task that needs it
            pass
    engines = [stages for stages in dict.fromkeys(map(tuple, warm_ups)) if stages]
    if engines:
        k = index % len(engines)
        engines = engines[k:] + engines[:k]
    seconds: dict[str, float] = {}
    for stage in range(max((len(stages) for stages in engines), default=0)):
        for stages in engines:
            if stage >= len(stages):
                continue
            warm_up = stages[stage]
            t0 = time.perf_counter()
            try:
                warm_up()
            except Exception as exc:  # only an optimisation
                log.warning("warming up %s.%s failed: %s", warm_up.module, warm_up.name,
                            " ".join(str(exc).split()) or type(exc).__name__)
                continue
            key = f"{warm_up.module}:{warm_up.name}"
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t0
    if seconds:
        log.info("worker %d warmed up in %.1f s", os.getpid(), sum(seconds.values()))
    return seconds


def warm_up_plugin(modules: tuple[str, ...], warm_ups: tuple[tuple[Lazy, ...], ...] = ()):
    """A worker plugin that warms up every worker, including ones adaptive scaling starts later.  The warm-up
    runs in a thread of its own so the worker keeps answering the scheduler (heartbeats) while it compiles."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class WarmUp(WorkerPlugin):
        name = "appion-warm-up"

        async def setup(self, worker):
            import asyncio

            await asyncio.get_running_loop().run_in_executor(None, warm_up_worker, modules, warm_ups,
                                                             calc_worker_index(worker.name))

    return WarmUp()


def start_warm_up(client, plugin):
    """Register the workers' warm-up plugin from a thread (loop side): registering waits until every worker has
    warmed up (tens of seconds on a fresh install), and the loop meanwhile finds and submits exposures."""
    import logging
    import threading

    def register():
        try:
            client.register_plugin(plugin)
        except Exception as exc:  # only an optimisation (and the client may close first)
            logging.getLogger("appion.loop").info("worker warm-up not registered: %s",
                                                  " ".join(str(exc).split()) or type(exc).__name__)

    thread = threading.Thread(target=register, name="appion-warm-up", daemon=True)
    thread.start()
    return thread
