"""The records of notifications: what the loop reports each poll, and one event to send (pure data)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

EXPOSURE_FAILED = "exposure_failed"
FAILURE_RATE = "failure_rate"
FALLING_BEHIND = "falling_behind"
MICROSCOPE_IDLE = "microscope_idle"
SESSION_FINISHED = "session_finished"
JOB_COMPLETED = "job_completed"
JOB_FAILED = "job_failed"
TEST = "test"


@dataclass(frozen=True)
class ExposureFailure:
    """A permanent failure of one exposure: the step that failed and why."""

    filename: str
    step: str
    reason: str


@dataclass(frozen=True)
class LoopSnapshot:
    """What the loop knows at one poll.  Times are Unix seconds.

    failures: this run's permanent failures (image id → ExposureFailure), all so far or only the new ones
      (each image id alerts once either way); not rejections, which are not failures.
    recent_failed: for the exposures that finished most recently (every step done, or failed), oldest first,
      whether each failed; only the last `failure_window` are used.
    backlog: exposures taken on but neither finished nor failed.  last_arrival: when the newest exposure
      arrived (None: none yet; the first snapshot's time is used).  waiting: the loop is caught up and waits for
      new exposures.  finished: the run is over (its last snapshot); rejected (reason → exposures) and medians
      (label → value) are used only then, for the summary.
    """

    time: float
    session: str
    runname: str = ""
    seen: int = 0
    done: int = 0
    failed: int = 0
    failures: Mapping[int, ExposureFailure] = field(default_factory=dict)
    recent_failed: tuple[bool, ...] = ()
    backlog: int = 0
    last_arrival: float | None = None
    waiting: bool = False
    finished: bool = False
    rejected: Mapping[str, int] = field(default_factory=dict)
    medians: Mapping[str, float] = field(default_factory=dict)
    started: float | None = None


@dataclass(frozen=True)
class Event:
    """One notification.  mail_to None: the staff list (`[notify] to`); () : no mail (the webhook only)."""

    kind: str
    subject: str
    body: str
    time: float
    session: str = ""
    data: Mapping = field(default_factory=dict)  # JSON-able details for the webhook
    mail_to: tuple[str, ...] | None = None
