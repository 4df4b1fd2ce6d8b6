"""What a processing step is, and the one registry that finds them.

A step (motion correction, CTF estimation, a site's own) is data: a `Step` names its settings type,
its engines, the worker-side task, the store function, the query of exposures already done and the
columns it shows.  The loop, `appion status`, the live page and the drop-ins only ever go through
`load_steps()` / `get_step()`; none of them knows a step by name.

Steps are found through the Python entry-point group ``appion.steps`` (appion's own are declared in
its pyproject.toml; a site package declares its own the same way):

    [project.entry-points."appion.steps"]
    quality = "mysite.quality:STEP"

Extra engines for an existing step come through the group ``appion.engines`` (an `EngineSpec`).

The heavy parts of a step (its task, store, queries) are `Lazy` references, so reading the
registry for `--help` imports nothing but this module and each step's small declaration module.
This module imports no step package and no Django.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

log = logging.getLogger("appion.steps")

STEP_GROUP = "appion.steps"
ENGINE_GROUP = "appion.engines"


class StepError(ValueError):
    """A step or engine cannot be used as asked (unknown name, missing dependency, bad plugin)."""


@dataclass(frozen=True)
class Lazy:
    """A picklable reference to a function `module:name`, imported on first call (on the worker too)."""

    module: str
    name: str

    @classmethod
    def of(cls, path: str) -> Lazy:
        module, _, name = path.partition(":")
        if not module or not name:
            raise StepError(f"{path!r} is not 'module:function'")
        return cls(module, name)

    def resolve(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class Engine:
    """One way of computing a step.

    version: the declared program version (a string, or a Lazy returning one, called once per run in
    the loop process, e.g. asking an installed program); it enters the memo key, so a new version
    recomputes this step and what follows it.  needs: services a task of this engine leases (e.g.
    "gpu").  test_only: an engine for tests and benchmarks (no real computation): its results are
    never stored in the classic tables.  modules, warm_up: what a worker does before its first task.
    """

    name: str
    description: str
    version: str | Lazy = "1"
    needs: tuple[str, ...] = ()
    test_only: bool = False
    modules: tuple[str, ...] = ()  # heavy modules a worker imports before its first task (warm-up)
    # Run once in each worker before its first task, stage after stage (`() -> {case: seconds}` each), compiling
    # (or loading from the shared numba cache) what the engine's task runs: the first stage the common path, so
    # the first exposure pays no compilation; a worker runs every engine's first stage before any second one.
    warm_up: tuple[Lazy, ...] = ()

    def calc_version(self, settings) -> str:
        if isinstance(self.version, Lazy):
            return str(self.version(settings))
        return str(self.version)


@dataclass(frozen=True)
class EngineSpec:
    """An engine added to an existing step by a plugin (entry-point group ``appion.engines``)."""

    step: str
    engine: Engine
    task: Lazy  # replaces the step's task for this engine: (StepInput, settings) -> record


@dataclass(frozen=True)
class Column:
    """A value a step shows per exposure in `appion status --exposures` and on the session page.

    read: Lazy `(run_id, exposure_ids) -> {exposure_id: value}` (run_id: the step's run row id).
    """

    key: str
    label: str
    read: Lazy
    unit: str = ""
    fmt: str = "{:.2f}"

    def format(self, value) -> str:
        if value is None:
            return "-"
        try:
            return self.fmt.format(value)
        except (TypeError, ValueError):
            return str(value)


@dataclass(frozen=True)
class StepInput:
    """What a worker gets for one exposure and step: the exposure, its upstream outputs, the run directory.

    upstream: output records of the steps this one depends on, by step name (dataclasses, no Django).
    """

    exposure: Any  # appion.base.exposure.ExposureInput
    upstream: Mapping[str, Any]
    rundir: str
    lease: Mapping[str, str] = field(default_factory=dict)  # service name -> leased slot (e.g. gpu -> "1")


@dataclass(frozen=True)
class StepRun:
    """One step's run as the loop process sees it when storing and querying."""

    step: str
    run_id: int | None  # the step's own run row (e.g. ApDDStackRunData.DEF_id); None when not committing
    rundir: Path
    session_id: int
    session_name: str
    runname: str
    settings: Any
    commit: bool = True
    preset_id: int | None = None  # the run's first preset (classic run rows name one), None: every preset
    cache: dict = field(default_factory=dict)  # per-run cache of rows the store function reuses


@dataclass(frozen=True)
class Step:
    """A processing step, as data.

    settings_type: a frozen dataclass with an `engine` field and a `hashed()` method (the fields that
      change results); built from the command line by `settings_from_args`.
    task: Lazy `(StepInput, settings) -> record` run on a worker (never imports Django).
    store: Lazy `(record, StepRun, StepInput) -> output` run in the loop process (database, idempotent).
    done: Lazy `(StepRun, exposure_ids, inputs) -> {exposure_id: output}`: what this run already stored.
    store_run: Lazy `(StepRun) -> run_id` creating the step's run row (classic tables where they exist).
    output: what downstream steps receive in `StepInput.upstream[name]` (from `store` or `done`).  An output
      with a true `rejected` attribute (the reason, text) turns the exposure down: the steps after it are
      not run for that exposure, and the reason is recorded.
    depends_on: steps that must complete for an exposure before this one runs (their order decides the
      loop's order).  optional_upstream: steps whose output is used when they are part of the run.
    rundir_kind: the classic run folder kind (<appion_base>/<session>/<kind>/<runname>).
    input_kind: "movie" when the step reads an exposure's frames (the loop then leaves out the aligned
      images it registers itself), "image" when any image of the session will do.
    """

    name: str
    title: str
    settings_type: type
    engines: Mapping[str, Engine]
    task: Lazy
    store: Lazy
    done: Lazy
    store_run: Lazy
    rundir_kind: str
    input_kind: str = "image"
    depends_on: tuple[str, ...] = ()
    optional_upstream: tuple[str, ...] = ()
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    settings_from_args: Callable[[argparse.Namespace], Any] | None = None
    columns: tuple[Column, ...] = ()
    describe: Lazy | None = None  # (record) -> short text for the loop's one line per exposure
    task_overrides: Mapping[str, Lazy] = field(default_factory=dict)  # engine name -> task

    def engine(self, name: str) -> Engine:
        try:
            return self.engines[name]
        except KeyError:
            raise StepError(f"step {self.name!r} has no engine {name!r} "
                            f"(choose from {', '.join(self.user_engines())})") from None

    def user_engines(self) -> tuple[str, ...]:
        return tuple(n for n, e in self.engines.items() if not e.test_only)

    def task_for(self, engine: str) -> Lazy:
        return self.task_overrides.get(engine, self.task)

    def default_settings(self):
        return self.settings_type()


def calc_hashed_settings(settings, unhashed: tuple[str, ...]) -> dict:
    """A settings dataclass as a dict without the fields that do not change results (threads, program paths)."""
    d = dataclasses.asdict(settings)
    for k in unhashed:
        d.pop(k, None)
    return d


# ---------------------------------------------------------------- the registry

_cache: dict[str, Step] | None = None


def _load_entry_points(group: str):
    return sorted(entry_points(group=group), key=lambda ep: ep.name)


def load_steps(refresh: bool = False) -> dict[str, Step]:
    """Every registered step by name (entry points ``appion.steps``, plus engines from ``appion.engines``)."""
    global _cache
    if _cache is not None and not refresh:
        return _cache
    steps: dict[str, Step] = {}
    for ep in _load_entry_points(STEP_GROUP):
        try:
            step = ep.load()
        except Exception as exc:  # a broken site plugin must not take the whole command down
            log.warning("step plugin %s (%s) could not be loaded: %s", ep.name, ep.value, exc)
            continue
        if not isinstance(step, Step):
            log.warning("step plugin %s (%s) is not an appion.base.steps.Step; ignored", ep.name, ep.value)
            continue
        if step.name in steps:
            log.warning("two steps named %r; keeping the first (%s)", step.name, ep.value)
            continue
        steps[step.name] = step
    for ep in _load_entry_points(ENGINE_GROUP):
        try:
            spec = ep.load()
        except Exception as exc:
            log.warning("engine plugin %s (%s) could not be loaded: %s", ep.name, ep.value, exc)
            continue
        if not isinstance(spec, EngineSpec) or spec.step not in steps:
            log.warning("engine plugin %s (%s) names no known step; ignored", ep.name, ep.value)
            continue
        base = steps[spec.step]
        steps[spec.step] = dataclasses.replace(
            base, engines={**base.engines, spec.engine.name: spec.engine},
            task_overrides={**base.task_overrides, spec.engine.name: spec.task})
    _cache = steps
    return steps


def get_step(name: str) -> Step:
    steps = load_steps()
    try:
        return steps[name]
    except KeyError:
        raise StepError(f"unknown step {name!r} (choose from {', '.join(steps) or 'none registered'})") from None


def calc_step_order(names: Sequence[str], steps: Mapping[str, Step]) -> tuple[str, ...]:
    """The named steps in an order their dependencies allow (ties keep the order given).

    Every dependency must itself be named: a run of `ctf` alone is allowed because motion is only an
    optional upstream of CTF; a step that depends on a step not in the run is an error.
    """
    unknown = [n for n in names if n not in steps]
    if unknown:
        raise StepError(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(steps)}")
    if len(set(names)) != len(names):
        raise StepError(f"a step is named twice in {','.join(names)}")
    wanted = list(names)
    for n in wanted:
        missing = [d for d in steps[n].depends_on if d not in wanted]
        if missing:
            raise StepError(f"step {n!r} needs step(s) {', '.join(missing)} in the same run")
    order: list[str] = []
    pending = list(wanted)
    while pending:
        for n in pending:
            deps = set(steps[n].depends_on) | {d for d in steps[n].optional_upstream if d in wanted}
            if deps <= set(order):
                order.append(n)
                pending.remove(n)
                break
        else:
            raise StepError(f"steps {', '.join(pending)} depend on each other in a cycle")
    return tuple(order)


def calc_upstream(step: Step, run_steps: Sequence[str]) -> tuple[str, ...]:
    """The steps of this run whose outputs `step` receives."""
    return tuple(d for d in (*step.depends_on, *step.optional_upstream) if d in run_steps)
