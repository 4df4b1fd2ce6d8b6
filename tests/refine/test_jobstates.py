"""Job lifecycle rules (pure)."""
from __future__ import annotations

import pytest

from appion.base import jobstates as js
from appion.base.jobstates import JobState as S


def test_main_line_and_cycle():
    assert js.calc_transition(S.INCOMING, S.PREPROCESSING).to_state is S.PREPROCESSING
    assert js.calc_transition(S.POSTPROCESSING, S.RUNNING).to_state is S.RUNNING  # another cycle
    with pytest.raises(js.TransitionError):
        js.calc_transition(S.INCOMING, S.COMPLETED)
    with pytest.raises(js.TransitionError):
        js.calc_transition(S.COMPLETED, S.RUNNING)
    with pytest.raises(js.TransitionError):
        js.calc_transition(S.EXPIRED, S.FAILED, "x")


def test_failed_from_any_live_state_needs_a_reason():
    for state in (S.INCOMING, S.PREPROCESSING, S.RUNNING, S.POSTPROCESSING, S.FINALIZING, S.COMPLETED, S.ARCHIVED):
        with pytest.raises(js.TransitionError, match="reason"):
            js.calc_transition(state, S.FAILED)
        assert js.calc_transition(state, S.FAILED, "exit 1").reason == "exit 1"


def test_path_fills_in_unseen_states():
    steps = js.calc_path(S.INCOMING, S.POSTPROCESSING, "exit 0")
    assert [(t.from_state, t.to_state) for t in steps] == [(S.INCOMING, S.PREPROCESSING),
                                                            (S.PREPROCESSING, S.RUNNING),
                                                            (S.RUNNING, S.POSTPROCESSING)]
    assert steps[-1].reason == "exit 0" and steps[0].reason == ""
    assert js.calc_path(S.RUNNING, S.RUNNING) == []
    with pytest.raises(js.TransitionError):
        js.calc_path(S.FINALIZING, S.RUNNING)
    assert [t.to_state for t in js.calc_path(S.COMPLETED, S.EXPIRED)] == [S.ARCHIVED, S.EXPIRED]


def test_classic_letters():
    letters = {s: js.calc_classic_status(s) for s in S}
    assert letters[S.INCOMING] == "Q"
    assert {letters[s] for s in (S.PREPROCESSING, S.RUNNING, S.POSTPROCESSING, S.FINALIZING)} == {"R"}
    assert {letters[s] for s in (S.COMPLETED, S.ARCHIVED, S.EXPIRED)} == {"D"}
    assert letters[S.FAILED] == "E"


def test_ageing():
    assert js.calc_age_target(S.COMPLETED, 5, 10, 20) is None
    assert js.calc_age_target(S.COMPLETED, 10, 10, 20) is S.ARCHIVED
    assert js.calc_age_target(S.COMPLETED, 25, 10, 20) is S.EXPIRED
    assert js.calc_age_target(S.ARCHIVED, 15, 10, 20) is None
    assert js.calc_age_target(S.ARCHIVED, 20, 10, 20) is S.EXPIRED
    assert js.calc_age_target(S.FAILED, 20, 10, 20) is S.EXPIRED
    assert js.calc_age_target(S.COMPLETED, 1e9, None, None) is None
    assert js.calc_age_target(S.RUNNING, 1e9, 1, 1) is None


def test_phase():
    assert js.calc_state_for_phase("RUNNING\n") is S.RUNNING
    assert js.calc_state_for_phase("PREPROCESSING") is S.PREPROCESSING
    assert js.calc_state_for_phase(None) is S.PREPROCESSING
