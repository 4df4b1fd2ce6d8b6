"""Job types of workflows and what a Dask worker runs for a job: no Django here.

Job functions are sent to workers by reference (module and name), so a worker imports the module
that defines them; such a module can register its job types through this module (or
appion.workflow.core, which re-exports these names) without the worker touching the database.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from appion.workflow.calc import canonical_json


class WorkflowError(RuntimeError):
    """Misuse of a workflow: unknown job type or label, bad parameters, a result read too early."""


# ---------------------------------------------------------------- job types

@dataclass(frozen=True)
class JobType:
    """A named job function; `version` and `programs` take part in the memo key.

    programs: external program versions, e.g. {"ctffind": "4.1.14"}, or a callable returning
    them (so a job type can ask the installed program at run time).
    """

    name: str
    func: Callable[[dict, list[str]], object]
    version: str = "1"
    programs: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None

    def program_versions(self) -> dict[str, str]:
        found = self.programs() if callable(self.programs) else (self.programs or {})
        return {str(k): str(v) for k, v in found.items()}


_JOBTYPES: dict[str, JobType] = {}


def register_jobtype(name: str, func: Callable[[dict, list[str]], object], version: str = "1",
                     programs: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None) -> JobType:
    """Register (or replace) the job type `name` in this process."""
    if not name or not isinstance(name, str):
        raise WorkflowError(f"job type name must be a non-empty string, got {name!r}")
    if not callable(func):
        raise WorkflowError(f"job type {name!r}: {func!r} is not callable")
    jobtype = JobType(name, func, str(version), programs)
    _JOBTYPES[name] = jobtype
    return jobtype


def unregister_jobtype(name: str) -> None:
    _JOBTYPES.pop(name, None)


def get_jobtype(name: str) -> JobType:
    try:
        return _JOBTYPES[name]
    except KeyError:
        raise WorkflowError(f"job type {name!r} is not registered in this process "
                            f"(registered: {sorted(_JOBTYPES) or 'none'})") from None


def run_job(func: Callable, params: dict, inputs: list[str]):
    """Executed on a Dask worker: call the job function, return its result as canonical JSON."""
    result = func(params, inputs)
    try:
        return canonical_json(result)
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"result is not JSON-serialisable: {exc}") from None
