"""Which alerts a stream of loop snapshots raises, each once per condition (pure: no I/O, no clock).

The loop hands `LoopSnapshot`s (one per poll) to `calc_events` with the previous `WatchState`; the result
is the new state and the events to send.  A condition alerts when it starts to hold, not on every poll
while it holds; when it clears, it is armed again and alerts anew if it comes back.

Conditions (limits from appion.notify.config.Limits):
- exposure failed: every exposure of `failures` once (those new at one poll go out as one event);
- failure rate: more than `failure_rate` of the last `failure_window` finished exposures failed (at least
  MIN_OUTCOMES of them finished); clears when the rate is back at or below the limit;
- falling behind: the backlog has stayed above its level at some moment for `backlog_minutes` and is now
  at least `backlog_growth` higher; clears when the backlog is back down to that level (caught up);
- microscope stopped: the loop is waiting and no exposure arrived for `idle_minutes`; clears when one
  arrives;
- session finished: once, with the summary.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from appion.notify import messages
from appion.notify.config import Limits
from appion.notify.events import Event, LoopSnapshot

MIN_OUTCOMES = 5  # a failure rate is judged on at least this many finished exposures (or the window, if smaller)

@dataclass(frozen=True)
class WatchState:
    """What has been alerted: the dedupe memory of one loop run."""

    first_time: float | None = None
    alerted_failures: frozenset[int] = frozenset()
    rate_active: bool = False
    backlog_base: int | None = None  # the level the backlog has stayed above since backlog_since
    backlog_since: float | None = None
    backlog_active: bool = False
    idle_alerted_for: float | None = None  # the arrival time the idle alert was sent for
    finished_sent: bool = False


def calc_failure_rate(recent_failed: tuple[bool, ...], window: int) -> tuple[int, int] | None:
    """(failed, finished) over the last `window` outcomes, or None when too few finished to judge."""
    last = recent_failed[-window:]
    if len(last) < min(MIN_OUTCOMES, window):
        return None
    return sum(1 for x in last if x), len(last)


def calc_events(state: WatchState, snap: LoopSnapshot, limits: Limits) -> tuple[WatchState, list[Event]]:
    """The new state and the events this snapshot raises (see the module docstring)."""
    if state.finished_sent:
        return state, []
    events: list[Event] = []
    first = state.first_time if state.first_time is not None else snap.time
    state = replace(state, first_time=first)

    new = {i: f for i, f in snap.failures.items() if i not in state.alerted_failures}
    if new:
        events.append(messages.exposures_failed(snap, dict(sorted(new.items()))))
        state = replace(state, alerted_failures=state.alerted_failures | frozenset(new))

    rate = calc_failure_rate(snap.recent_failed, limits.failure_window)
    high = rate is not None and rate[0] > limits.failure_rate * rate[1]
    if high and not state.rate_active:
        events.append(messages.failure_rate(snap, rate[0], rate[1], limits.failure_rate))
    state = replace(state, rate_active=high)

    if snap.finished:
        events.append(messages.session_finished(snap, first))
        return replace(state, finished_sent=True), events

    if state.backlog_base is None or snap.backlog <= state.backlog_base:
        state = replace(state, backlog_base=snap.backlog, backlog_since=snap.time, backlog_active=False)
    elif (not state.backlog_active and snap.time - state.backlog_since >= limits.backlog_minutes * 60
          and snap.backlog - state.backlog_base >= limits.backlog_growth):
        events.append(messages.falling_behind(snap, state.backlog_base, state.backlog_since))
        state = replace(state, backlog_active=True)

    arrival = snap.last_arrival if snap.last_arrival is not None else first
    if (snap.waiting and state.idle_alerted_for != arrival and snap.time - arrival >= limits.idle_minutes * 60):
        events.append(messages.microscope_idle(snap, arrival))
        state = replace(state, idle_alerted_for=arrival)
    return state, events
