"""Which alerts a stream of loop snapshots raises (appion.notify.calc, pure): each condition once while it holds,
again after it cleared and came back."""
from __future__ import annotations

from dataclasses import replace

from appion.notify.calc import WatchState, calc_events
from appion.notify.config import Limits
from appion.notify.events import (EXPOSURE_FAILED, FAILURE_RATE, FALLING_BEHIND, MICROSCOPE_IDLE, SESSION_FINISHED,
                                  ExposureFailure, LoopSnapshot)

LIMITS = Limits(failure_rate=0.5, failure_window=6, backlog_minutes=5, backlog_growth=3, idle_minutes=10)
T0 = 1_700_000_000.0


class Stream:
    """Feeds snapshots through calc_events, keeping the state; returns the kinds each poll raised."""

    def __init__(self, limits: Limits = LIMITS):
        self.state = WatchState()
        self.limits = limits
        self.events = []

    def poll(self, **fields) -> list[str]:
        snap = LoopSnapshot(session="s1", runname="loop1", **fields)
        self.state, events = calc_events(self.state, snap, self.limits)
        self.events += events
        return [e.kind for e in events]


def test_failure_alerts_each_exposure_once():
    s = Stream()
    f3 = {3: ExposureFailure("s1_00003en", "motion", "MovieError: truncated movie (frame 7 of 16 unreadable)")}
    assert s.poll(time=T0, failures=f3) == [EXPOSURE_FAILED]
    for k in range(5):  # the same failure seen at every later poll
        assert s.poll(time=T0 + 2 * k + 2, failures=f3) == []
    both = {**f3, 5: ExposureFailure("s1_00005en", "ctf", "CtfError: no Thon rings")}
    assert s.poll(time=T0 + 20, failures=both) == [EXPOSURE_FAILED]
    event = s.events[-1]
    assert event.subject == "[appion] s1: exposure s1_00005en failed (ctf)"
    assert "s1_00005en (image 5): ctf: CtfError: no Thon rings" in event.body and "s1_00003en" not in event.body
    # only the new ones given: still once each
    assert s.poll(time=T0 + 22, failures={7: ExposureFailure("a", "motion", "x"), 8: ExposureFailure("b", "ctf", "y")}
                  ) == [EXPOSURE_FAILED]
    assert s.events[-1].subject == "[appion] s1: 2 exposures failed"
    assert s.poll(time=T0 + 24, failures={7: ExposureFailure("a", "motion", "x")}) == []


def test_failure_rate_alerts_once_and_rearms():
    s = Stream()
    assert s.poll(time=T0, recent_failed=(True, True, True, True)) == []  # too few finished to judge
    assert s.poll(time=T0 + 1, recent_failed=(False, True, True, True, False)) == [FAILURE_RATE]  # 3 of 5
    assert s.events[-1].subject == "[appion] s1: 3 of the last 5 exposures failed (60 % > 50 %)"
    assert s.poll(time=T0 + 2, recent_failed=(False, True, True, True, False, True)) == []  # still high: no repeat
    # exactly the limit is not above it: cleared (the last 6: T T F T F F → 3 of 6)
    assert s.poll(time=T0 + 3, recent_failed=(False, True, True, True, False, True, False, False)) == []
    assert s.state.rate_active is False
    assert s.poll(time=T0 + 4, recent_failed=(True, True, False, False, True, True, True)) == [FAILURE_RATE]


def test_falling_behind_once_per_episode():
    s = Stream()
    assert s.poll(time=T0, backlog=2) == []
    for k, backlog in enumerate((4, 3, 5, 6, 6), start=1):  # never back down to 2, for 5 minutes by k = 5
        kinds = s.poll(time=T0 + 60 * k, backlog=backlog)
        assert kinds == ([FALLING_BEHIND] if k == 5 else []), (k, kinds)
    assert s.events[-1].subject == "[appion] s1: falling behind, backlog 6 (up from 2 over 5 min)"
    assert s.poll(time=T0 + 400, backlog=9) == []  # still behind: no repeat
    assert s.poll(time=T0 + 460, backlog=2) == []  # caught up: cleared
    assert s.poll(time=T0 + 470, backlog=3) == []
    assert s.poll(time=T0 + 470 + 300, backlog=7) == [FALLING_BEHIND]  # again, a new episode


def test_backlog_that_does_not_grow_enough_or_returns_is_not_behind():
    s = Stream()
    s.poll(time=T0, backlog=0)
    for k in range(1, 30):  # a steady state: one or two in flight (never 3 above the level it started from)
        assert s.poll(time=T0 + 60 * k, backlog=1 + k % 2) == []
    s = Stream()
    s.poll(time=T0, backlog=500)  # a bulk import is not falling behind: the backlog only shrinks
    for k in range(1, 30):
        assert s.poll(time=T0 + 60 * k, backlog=500 - 10 * k) == []
    s = Stream()
    s.poll(time=T0, backlog=1)
    for k in range(1, 30):  # grows, but comes back down to 1 every 4 minutes
        assert s.poll(time=T0 + 60 * k, backlog=1 if k % 4 == 0 else 1 + 3 * (k % 4)) == []


def test_microscope_idle_once_per_arrival():
    s = Stream()
    assert s.poll(time=T0, last_arrival=T0 - 30, waiting=True) == []
    assert s.poll(time=T0 + 9 * 60, last_arrival=T0 - 30, waiting=True) == []
    assert s.poll(time=T0 + 10 * 60, last_arrival=T0 - 30, waiting=True) == [MICROSCOPE_IDLE]
    event = s.events[-1]
    assert event.subject == "[appion] s1: no new exposure for 10 min (microscope stopped?)"
    for k in range(11, 40):
        assert s.poll(time=T0 + k * 60, last_arrival=T0 - 30, waiting=True) == []
    # a new exposure arrives (cleared); nothing while the loop is busy with it, then idle again later
    assert s.poll(time=T0 + 41 * 60, last_arrival=T0 + 41 * 60, waiting=False) == []
    assert s.poll(time=T0 + 60 * 60, last_arrival=T0 + 41 * 60, waiting=False) == []  # busy: not waiting
    assert s.poll(time=T0 + 61 * 60, last_arrival=T0 + 41 * 60, waiting=True) == [MICROSCOPE_IDLE]
    # without any arrival yet, the first snapshot's time counts
    s = Stream()
    assert s.poll(time=T0, waiting=True) == []
    assert s.poll(time=T0 + 600, waiting=True) == [MICROSCOPE_IDLE]


def test_session_finished_once_with_summary_and_then_silence():
    s = Stream()
    s.poll(time=T0, seen=3, backlog=3, started=T0 - 60)
    snap = dict(time=T0 + 3600, seen=120, done=110, failed=4, backlog=0, finished=True, started=T0 - 60,
                failures={9: ExposureFailure("s1_00009en", "motion", "MovieError: truncated")},
                rejected={"rejected by quality: CTF fit resolution above 6 Å": 5,
                          "rejected by quality: total drift above 80 Å": 1},
                medians={"motion: drift Å": 12.34, "ctf: CTF fit Å": 3.9})
    kinds = s.poll(**snap)
    assert kinds == [EXPOSURE_FAILED, SESSION_FINISHED]
    event = s.events[-1]
    assert event.subject == "[appion] s1: session finished: 110 done, 4 failed, 6 rejected"
    for text in ("exposures taken on: 120", "motion: drift Å: 12.34", "ctf: CTF fit Å: 3.9",
                 "5 × rejected by quality: CTF fit resolution above 6 Å", "1 × rejected by quality: total drift",
                 "s1_00009en: motion: MovieError: truncated", "61 min"):
        assert text in event.body, (text, event.body)
    assert event.data["rejected"]["rejected by quality: total drift above 80 Å"] == 1
    assert s.poll(**{**snap, "time": T0 + 3700}) == []
    assert s.poll(time=T0 + 99999, waiting=True, backlog=50) == []


def test_nothing_raised_by_a_quiet_session():
    s = Stream()
    base = LoopSnapshot(time=T0, session="s1", seen=10, done=10, backlog=0, last_arrival=T0, waiting=True,
                        recent_failed=(False,) * 10)
    for k in range(100):
        snap = replace(base, time=T0 + 5 * k, last_arrival=T0 + 5 * k)
        s.state, events = calc_events(s.state, snap, LIMITS)
        assert events == [], k
