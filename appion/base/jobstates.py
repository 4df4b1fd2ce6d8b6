"""Job lifecycle states and the rules for moving between them (pure: no I/O, no clock).

A job is INCOMING (accepted, waiting at the scheduler), PREPROCESSING (started on a node,
staging its inputs), RUNNING (the main program), POSTPROCESSING (outputs checked; may ask
for another cycle, which goes back to RUNNING), FINALIZING (results recorded), COMPLETED,
then ARCHIVED after a configurable age and EXPIRED (directory removed, database row kept).
FAILED can be entered from any live state and always carries a reason.  Classic Appion
only knows the letters Q/R/D/E; they are derived here so both views always agree.

Transitions are stored by the caller (appion.refine.store), so a restarted tracker reads
the current state and continues from there.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class JobState(str, Enum):
    INCOMING = "INCOMING"
    PREPROCESSING = "PREPROCESSING"
    RUNNING = "RUNNING"
    POSTPROCESSING = "POSTPROCESSING"
    FINALIZING = "FINALIZING"
    COMPLETED = "COMPLETED"
    ARCHIVED = "ARCHIVED"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"


S = JobState

# The main line, in order; a job walks it from left to right (POSTPROCESSING may go back to RUNNING).
MAIN_LINE: tuple[JobState, ...] = (S.INCOMING, S.PREPROCESSING, S.RUNNING, S.POSTPROCESSING, S.FINALIZING,
                                   S.COMPLETED, S.ARCHIVED, S.EXPIRED)

ALLOWED: dict[JobState, frozenset[JobState]] = {
    S.INCOMING: frozenset({S.PREPROCESSING, S.FAILED}),
    S.PREPROCESSING: frozenset({S.RUNNING, S.FAILED}),
    S.RUNNING: frozenset({S.POSTPROCESSING, S.FAILED}),
    S.POSTPROCESSING: frozenset({S.RUNNING, S.FINALIZING, S.FAILED}),
    S.FINALIZING: frozenset({S.COMPLETED, S.FAILED}),
    S.COMPLETED: frozenset({S.ARCHIVED, S.FAILED}),
    S.ARCHIVED: frozenset({S.EXPIRED, S.FAILED}),
    S.FAILED: frozenset({S.EXPIRED}),  # a failed job's directory also ages out
    S.EXPIRED: frozenset(),
}

# The scheduler still owns the job in these states (the tracker must poll it).
SCHEDULED = frozenset({S.INCOMING, S.PREPROCESSING, S.RUNNING})
# The tracker itself has work to do in these states (no scheduler involved).
TRACKER_WORK = frozenset({S.POSTPROCESSING, S.FINALIZING})
# Only age can move these on.
AGEING = frozenset({S.COMPLETED, S.ARCHIVED, S.FAILED})
LIVE = SCHEDULED | TRACKER_WORK


class TransitionError(ValueError):
    """A requested state change is not allowed by the lifecycle rules."""


@dataclass(frozen=True)
class Transition:
    """One stored step of a job's life."""

    from_state: JobState
    to_state: JobState
    reason: str = ""


def calc_transition(current: JobState | str, target: JobState | str, reason: str = "") -> Transition:
    """Check one step against the rules; FAILED needs a reason (a user must learn why)."""
    current, target = JobState(current), JobState(target)
    if target not in ALLOWED[current]:
        raise TransitionError(f"job cannot go from {current.value} to {target.value}")
    if target is S.FAILED and not reason.strip():
        raise TransitionError(f"job going from {current.value} to FAILED needs a reason")
    return Transition(current, target, reason)


def calc_path(current: JobState | str, target: JobState | str, reason: str = "") -> list[Transition]:
    """The steps from current to a later state of the main line (e.g. INCOMING → RUNNING

    gives INCOMING → PREPROCESSING → RUNNING), so a tracker that polled too slowly to see an
    intermediate state still stores every step.  Empty when already there.  FAILED is one step.
    """
    current, target = JobState(current), JobState(target)
    if current is target:
        return []
    if target is S.FAILED or current is S.FAILED:
        return [calc_transition(current, target, reason)]
    if current is S.POSTPROCESSING and target is S.RUNNING:
        return [calc_transition(current, target, reason)]
    i, j = MAIN_LINE.index(current), MAIN_LINE.index(target)
    if j < i:
        raise TransitionError(f"job cannot go back from {current.value} to {target.value}")
    steps = []
    for a, b in zip(MAIN_LINE[i:j], MAIN_LINE[i + 1:j + 1]):
        steps.append(calc_transition(a, b, reason if b is target else ""))
    return steps


def calc_classic_status(state: JobState | str) -> str:
    """Classic ApAppionJobData.status: Q queued, R running, D done, E error."""
    state = JobState(state)
    if state is S.INCOMING:
        return "Q"
    if state in (S.PREPROCESSING, S.RUNNING, S.POSTPROCESSING, S.FINALIZING):
        return "R"
    if state in (S.COMPLETED, S.ARCHIVED, S.EXPIRED):
        return "D"
    return "E"


def calc_state_for_phase(phase: str | None) -> JobState:
    """The state a running job reports through its phase file (written by the job file)."""
    if phase and phase.strip().upper() == S.RUNNING.value:
        return S.RUNNING
    return S.PREPROCESSING


def calc_age_target(state: JobState | str, age_s: float, archive_after_s: float | None,
                    expire_after_s: float | None) -> JobState | None:
    """Where age moves a finished job: COMPLETED → ARCHIVED → EXPIRED; FAILED → EXPIRED.

    age_s: seconds since the job finished (entered COMPLETED or FAILED).  None ages disable the step.
    """
    state = JobState(state)
    expire = expire_after_s is not None and age_s >= expire_after_s
    if state is S.COMPLETED:
        if expire:
            return S.EXPIRED  # via ARCHIVED (calc_path walks it)
        if archive_after_s is not None and age_s >= archive_after_s:
            return S.ARCHIVED
    if state in (S.ARCHIVED, S.FAILED) and expire:
        return S.EXPIRED
    return None
