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


def warm_up_worker(modules: tuple[str, ...]) -> None:
    """Import the engines in a fresh worker before its first movie (numba/scipy imports take seconds)."""
    import importlib

    for name in dict.fromkeys(modules):
        try:
            importlib.import_module(name)
        except ImportError:  # reported properly by the first task that needs it
            pass


def warm_up_plugin(modules: tuple[str, ...]):
    """A worker plugin that warms up every worker, including ones adaptive scaling starts later."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class WarmUp(WorkerPlugin):
        name = "appion-warm-up"

        def setup(self, worker):
            warm_up_worker(modules)

    return WarmUp()
