"""The loop's records: a run's settings, what a task in flight is, what a run did."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from appion.base.names import BadNameError
from appion.base.session.store import RunConflict
from appion.base.steps import StepError, StepInput
from appion.loop.calc import LoopError


@dataclass(frozen=True)
class LoopSettings:
    """One loop run: which session and steps, how to schedule and retry, each step's settings, where to run.

    step_settings: step name → that step's settings (default: the step's defaults).  rundirs: step name →
    explicit run directory (classic --rundir).  services_dir: where leases of GPUs and licensed programs
    are kept (default <APPION_HOME>/services; must be shared by the nodes of a cluster).
    """

    session: str
    preset: str | None = None
    steps: tuple[str, ...] = ("motion", "ctf")
    step_settings: dict = field(default_factory=dict)
    rundirs: dict = field(default_factory=dict)
    runname: str = "loop1"
    wait: bool = True
    idle_s: float = 10.0
    poll_s: float = 2.0
    retries: int = 6  # retries of a transient failure (back-off doubling from backoff_s to 5 min: ~10 min in all)
    backoff_s: float = 10.0
    retry_failed: bool = False  # re-run exposures that failed permanently in earlier starts of this run
    db_start_wait_s: float = 60.0  # a database that never answered since the start is given up after this
    grace_s: float = 120.0
    order: str = "oldest"
    max_in_flight: int | None = None
    limit: int | None = None
    skip_rejected: bool = True
    tilt: str = "all"
    commit: bool = True
    continue_run: bool = True
    reuse: bool = True  # reuse results of identical step runs of earlier loop runs (memo keys)
    cluster: object = None  # ClusterSettings (None: local defaults)
    gpu_ids: str = "0"  # GPUs per node that tasks of GPU engines lease one at a time
    services_dir: str | None = None
    lease_timeout_s: float = 60.0
    program: str = "appion loop"
    jobtype: str = "appionloop"
    script_params: tuple[tuple[str, str, str], ...] = ()
    project_id: int | None = None
    start_image_id: int | None = None
    end_image_id: int | None = None
    image_ids: tuple[int, ...] | None = None  # only these (classic --mrclist)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are a person's to fix (no such session, run name clash or lock, bad name, bad step): printed
    as one line."""
    return (LoopError, RunConflict, StepError, BadNameError)


@dataclass
class Work:
    image_id: int
    step: str
    attempt: int
    key: str
    submitted: float
    future: object
    task: StepInput


@dataclass
class LoopSummary:
    done: list[int] = field(default_factory=list)  # exposures with every step done (this run)
    failed: dict[tuple[int, str], str] = field(default_factory=dict)
    latency_s: dict[int, float] = field(default_factory=dict)
    executed: Counter = field(default_factory=Counter)  # tasks run per step (every attempt)
    reused: dict[str, bool] = field(default_factory=dict)  # step → results taken from an earlier run
    stopped_by_signal: bool = False
    db_outages: int = 0
    taken_over: list[str] = field(default_factory=list)  # stale holders of the run this loop took over
    cleaned: list[str] = field(default_factory=list)  # leftover temporaries removed
