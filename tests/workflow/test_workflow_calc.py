"""Pure workflow logic: condition expressions, their JSON form, Kleene readiness, memo keys."""
from __future__ import annotations

import json

import pytest

from appion.workflow.calc import (
    CANCELLED,
    COMPLETED,
    FAILED,
    RUNNING,
    WAITING,
    AllOf,
    AnyOf,
    ConditionError,
    Is,
    MemoParts,
    Not,
    calc_cycle,
    calc_decision,
    calc_labels,
    calc_memo_key,
    calc_truth,
    calc_upstream_key_sets,
    condition_from_json,
    condition_from_text,
    condition_to_json,
    condition_to_text,
)

a_done, b_done, c_failed = Is("a", COMPLETED), Is("b", COMPLETED), Is("c", FAILED)


def test_operators_build_flat_immutable_trees():
    cond = a_done & b_done & ~c_failed
    assert cond == AllOf((a_done, b_done, Not(c_failed)))
    assert (a_done | b_done | c_failed) == AnyOf((a_done, b_done, c_failed))
    assert str((a_done | b_done) & ~c_failed) == "(a.completed | b.completed) & ~c.failed"
    with pytest.raises(Exception):
        cond.terms = ()  # frozen
    with pytest.raises(TypeError, match="not a boolean"):
        bool(a_done)
    with pytest.raises(TypeError):
        a_done & True


def test_json_round_trip_and_text_column():
    cond = (a_done | ~Is("b", CANCELLED)) & ~(c_failed & b_done)
    data = condition_to_json(cond)
    assert json.loads(json.dumps(data)) == data
    assert condition_from_json(data) == cond
    assert condition_from_text(condition_to_text(cond)) == cond
    assert condition_to_json(None) is None and condition_from_text(None) is None
    assert calc_labels(cond) == {"a", "b", "c"}


@pytest.mark.parametrize("bad", [
    "__import__('os').system('true')",
    {"job": "a", "is": "exploded"},
    {"job": "", "is": "completed"},
    {"job": 3, "is": "completed"},
    {"and": [{"job": "a", "is": "completed"}]},
    {"or": "a"},
    {"not": {"job": "a", "is": "completed"}, "extra": 1},
    {"xor": []},
    [],
])
def test_malformed_json_is_refused(bad):
    with pytest.raises(ConditionError):
        condition_from_json(bad)


def test_stored_text_that_is_not_json_is_refused():
    with pytest.raises(ConditionError, match="not JSON"):
        condition_from_text("a.completed & b.completed")


def test_deep_nesting_is_refused():
    data = {"job": "a", "is": "completed"}
    for _ in range(100):
        data = {"not": data}
    with pytest.raises(ConditionError, match="deeper"):
        condition_from_json(data)


@pytest.mark.parametrize("state,expected", [
    (WAITING, None), (RUNNING, None), (COMPLETED, True), (FAILED, False), (CANCELLED, False)])
def test_predicate_is_unknown_until_the_job_ends(state, expected):
    assert calc_truth(a_done, {"a": state}) is expected
    assert calc_truth(~a_done, {"a": state}) is (None if expected is None else not expected)


def test_kleene_and_or():
    cond_or = a_done | b_done
    assert calc_truth(cond_or, {"a": COMPLETED, "b": RUNNING}) is True
    assert calc_truth(cond_or, {"a": FAILED, "b": RUNNING}) is None
    assert calc_truth(cond_or, {"a": FAILED, "b": CANCELLED}) is False
    cond_and = a_done & b_done
    assert calc_truth(cond_and, {"a": FAILED, "b": RUNNING}) is False
    assert calc_truth(cond_and, {"a": COMPLETED, "b": RUNNING}) is None
    assert calc_truth(cond_and, {"a": COMPLETED, "b": COMPLETED}) is True
    with pytest.raises(ConditionError, match="unknown job"):
        calc_truth(Is("zz", COMPLETED), {"a": COMPLETED})


def test_decisions_cancel_only_when_condition_can_no_longer_hold():
    cond = Is("x", COMPLETED) | Is("y", COMPLETED)
    assert calc_decision(cond, {"x": FAILED, "y": RUNNING}).action == "wait"
    assert calc_decision(cond, {"x": FAILED, "y": COMPLETED}).action == "run"
    d = calc_decision(cond, {"x": FAILED, "y": CANCELLED}, {"x": "RuntimeError: boom\ntrace", "y": "upstream"})
    assert d.action == "cancel"
    assert "x FAILED (RuntimeError: boom)" in d.reason and "y CANCELLED (upstream)" in d.reason
    assert "`x.completed | y.completed`" in d.reason
    assert calc_decision(None, {}).action == "run"
    not_failed = ~Is("z", FAILED)
    assert calc_decision(not_failed, {"z": RUNNING}).action == "wait"
    assert calc_decision(not_failed, {"z": COMPLETED}).action == "run"
    assert calc_decision(not_failed, {"z": CANCELLED}).action == "run"
    assert calc_decision(not_failed, {"z": FAILED}).action == "cancel"


def test_cycle_detection():
    conditions = {"a": None, "b": Is("a", COMPLETED), "c": Is("b", COMPLETED)}
    assert calc_cycle("d", Is("c", COMPLETED), conditions) is None
    assert calc_cycle("a", Is("c", COMPLETED), conditions) == ["a", "c", "b", "a"]
    assert calc_cycle("a", Is("a", FAILED), conditions) == ["a", "a"]


def _parts(**changes) -> MemoParts:
    base = dict(jobtype="t", jobtype_version="1", program_versions={"ctffind": "4.1.14"}, appion_version="1.0",
                params={"x": 1, "y": [1, 2]}, input_digests=["d1", "d2"], upstream_keys=["k1", "k2"])
    base.update(changes)
    return MemoParts(**base)


def test_memo_key_depends_on_every_part_and_not_on_dict_order():
    key = calc_memo_key(_parts())
    assert len(key) == 64
    assert calc_memo_key(_parts(params={"y": [1, 2], "x": 1})) == key
    assert calc_memo_key(_parts(upstream_keys=["k2", "k1"])) == key
    variants = [
        _parts(jobtype="u"), _parts(jobtype_version="2"), _parts(program_versions={"ctffind": "4.1.13"}),
        _parts(program_versions={}), _parts(appion_version="1.1"), _parts(params={"x": 2, "y": [1, 2]}),
        _parts(params={"x": 1, "y": [2, 1]}), _parts(input_digests=["d2", "d1"]), _parts(input_digests=["d1"]),
        _parts(upstream_keys=["k1"]),
    ]
    keys = {calc_memo_key(v) for v in variants}
    assert key not in keys and len(keys) == len(variants)


def test_upstream_key_sets_offer_every_group_of_finished_prerequisites_that_decides_the_condition():
    """The first set is every completed prerequisite's key (a new execution's); the others are the smaller
    groups that by themselves already made the condition true (when an `|` job may have started before),
    largest first, then by label; prerequisites that did not complete contribute no key."""
    keys = {"a": "ka", "b": "kb", "c": "kc"}
    both = {"a": COMPLETED, "b": COMPLETED, "c": COMPLETED}
    assert calc_upstream_key_sets(None, both, keys) == [()]
    assert calc_upstream_key_sets(a_done | b_done, both, keys) == [("ka", "kb"), ("ka",), ("kb",)]
    assert calc_upstream_key_sets(a_done | b_done, {**both, "b": RUNNING}, keys) == [("ka",)]
    assert calc_upstream_key_sets(a_done & b_done, both, keys) == [("ka", "kb")]  # no group smaller than both
    # ~c.failed is only decided once c has finished: c's key is always part of it
    assert calc_upstream_key_sets(a_done & ~c_failed, both, keys) == [("ka", "kc")]
    # started on b's failure alone: no upstream key at all
    assert calc_upstream_key_sets(a_done | Is("b", FAILED), {**both, "b": FAILED}, keys) == [("ka",), ()]
    three = Is("c", COMPLETED) | (a_done & b_done)
    assert calc_upstream_key_sets(three, both, keys) == [("ka", "kb", "kc"), ("ka", "kb"), ("ka", "kc"),
                                                          ("kb", "kc"), ("kc",)]
