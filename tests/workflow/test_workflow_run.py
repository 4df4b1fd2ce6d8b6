"""Workflows against the in-process SQLite database and a threaded Dask client.

Executions are counted from the lines the job functions append to executions.log, so memo
hits (no line) and real runs are told apart by what actually ran.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from distributed import Client

import appion
from appion.workflow.core import (
    CANCELLED,
    COMPLETED,
    FAILED,
    WAITING,
    Workflow,
    WorkflowError,
    register_jobtype,
)
from tests.workflow.wf_jobs import CHAIN, read_executions, register, submit_chain


@pytest.fixture(scope="module")
def client():
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as c:
        yield c


@pytest.fixture(autouse=True)
def chain_jobtype():
    register()
    yield
    register()


def test_four_job_chain_failure_cancels_exactly_its_dependents(db, client, tmp_path):
    wf = Workflow("chain-fail")
    jobs = submit_chain(wf, tmp_path)
    # a sibling of c that only needs a: must not be cancelled by b's failure
    side = wf.submit(CHAIN, {"workdir": str(tmp_path), "name": "side"}, inputs=[tmp_path / "a.out"],
                     when=jobs["a"].completed, name="side")
    (tmp_path / "b.fail").touch()
    summary = wf.run(client)
    assert summary.states == {"a": COMPLETED, "b": FAILED, "c": CANCELLED, "d": CANCELLED, "side": COMPLETED}
    assert sorted(read_executions(tmp_path)) == ["a", "b", "side"]
    assert "RuntimeError: step b told to fail" in jobs["b"].reason
    assert jobs["c"].reason.startswith("condition `b.completed` can no longer be true: b FAILED (RuntimeError")
    assert "c CANCELLED" in jobs["d"].reason
    assert jobs["a"].result == {"out": str(tmp_path / "a.out"), "text": "a"}
    assert side.result["text"] == "aside"
    with pytest.raises(WorkflowError, match="is CANCELLED"):
        jobs["d"].result


def test_or_runs_when_either_prerequisite_completes(db, client, tmp_path):
    wf = Workflow("or")
    step = lambda name, **kw: wf.submit(CHAIN, {"workdir": str(tmp_path), "name": name}, name=name, **kw)  # noqa: E731
    x, y, w = step("x"), step("y"), step("w")
    (tmp_path / "x.fail").touch()
    (tmp_path / "w.fail").touch()
    either = step("either", when=x.completed | y.completed)
    neither = step("neither", when=x.completed | w.completed)
    late = step("late", when=x.completed | either.completed)  # second alternative completes only later
    summary = wf.run(client)
    assert summary.states["either"] == COMPLETED
    assert summary.states["late"] == COMPLETED
    assert summary.states["neither"] == CANCELLED
    assert "x FAILED" in neither.reason and "w FAILED" in neither.reason
    assert sorted(read_executions(tmp_path)) == sorted(["x", "y", "w", "either", "late"])
    assert either.state == COMPLETED and late.state == COMPLETED


def test_not_and_failure_handlers(db, client, tmp_path):
    wf = Workflow("not")
    step = lambda name, **kw: wf.submit(CHAIN, {"workdir": str(tmp_path), "name": name}, name=name, **kw)  # noqa: E731
    ok, bad = step("ok"), step("bad")
    (tmp_path / "bad.fail").touch()
    after_ok = step("after_ok", when=~ok.failed)
    after_bad = step("after_bad", when=~bad.failed)
    cleanup = step("cleanup", when=bad.failed)
    skipped = step("skipped", when=after_bad.cancelled & ok.completed)
    summary = wf.run(client)
    assert summary.states == {"ok": COMPLETED, "bad": FAILED, "after_ok": COMPLETED, "after_bad": CANCELLED,
                              "cleanup": COMPLETED, "skipped": COMPLETED}
    assert after_bad.reason.startswith("condition `~bad.failed` can no longer be true: bad FAILED")
    assert cleanup.result["text"] == "cleanup" and skipped.state == COMPLETED


def test_rerun_after_fix_executes_only_the_failed_job_and_its_dependents(db, client, tmp_path):
    (tmp_path / "c.fail").touch()
    first = Workflow("rerun")
    submit_chain(first, tmp_path)
    s1 = first.run(client)
    assert s1.states == {"a": COMPLETED, "b": COMPLETED, "c": FAILED, "d": CANCELLED}
    (tmp_path / "c.fail").unlink()
    second = Workflow("rerun")  # the same script run again
    jobs = submit_chain(second, tmp_path)
    s2 = second.run(client)
    assert s2.states == {"a": COMPLETED, "b": COMPLETED, "c": COMPLETED, "d": COMPLETED}
    assert s2.memo_hits == ["a", "b"] and s2.executed == ["c", "d"]
    assert read_executions(tmp_path) == ["a", "b", "c", "c", "d"]
    assert jobs["a"].memo_hit and not jobs["c"].memo_hit
    assert jobs["d"].result["text"] == "abcd"
    # everything memoised now: a third run executes nothing
    third = Workflow("rerun")
    submit_chain(third, tmp_path)
    s3 = third.run(client)
    assert s3.executed == [] and s3.memo_hits == ["a", "b", "c", "d"]
    assert read_executions(tmp_path) == ["a", "b", "c", "c", "d"]


def test_changed_upstream_parameters_redo_what_follows(db, client, tmp_path):
    wf = Workflow("upstream-change")
    submit_chain(wf, tmp_path)
    wf.run(client)
    wf2 = Workflow("upstream-change")
    a = wf2.submit(CHAIN, {"workdir": str(tmp_path), "name": "a", "extra": 1}, name="a")
    b = wf2.submit(CHAIN, {"workdir": str(tmp_path), "name": "b"}, inputs=[tmp_path / "a.out"], when=a.completed,
                   name="b")
    summary = wf2.run(client)
    assert summary.executed == ["a", "b"]
    assert read_executions(tmp_path) == ["a", "b", "c", "d", "a", "b"]
    assert b.result["text"] == "ab"


def test_version_changes_invalidate_the_memo(db, client, tmp_path, monkeypatch):
    def run_once():
        wf = Workflow("versions")
        wf.submit(CHAIN, {"workdir": str(tmp_path), "name": "v"}, name="v")
        return wf.run(client)

    register(version="1", programs={"ctffind": "4.1.14"})
    assert run_once().executed == ["v"]
    assert run_once().memo_hits == ["v"]
    register(version="1", programs={"ctffind": "4.1.15"})  # external program upgraded
    assert run_once().executed == ["v"]
    assert run_once().memo_hits == ["v"]
    register(version="2", programs={"ctffind": "4.1.15"})  # job type's own code changed
    assert run_once().executed == ["v"]
    monkeypatch.setattr(appion, "__version__", appion.__version__ + ".post1")
    assert run_once().executed == ["v"]
    register(version="2", programs=lambda: {"ctffind": "4.1.15"})  # probed at run time: same versions
    assert run_once().memo_hits == ["v"]
    assert read_executions(tmp_path) == ["v"] * 4


def test_inputs_are_keyed_by_content_not_name(db, client, tmp_path):
    register_jobtype("test-readsize", lambda params, inputs: sum(os.path.getsize(p) for p in inputs))
    one, two = tmp_path / "one.dat", tmp_path / "two.dat"
    one.write_bytes(b"12345")
    two.write_bytes(b"12345")

    def run_with(path):
        wf = Workflow("content")
        job = wf.submit("test-readsize", {}, inputs=[path], name="size")
        return wf.run(client), job

    s, job = run_with(one)
    assert s.executed == ["size"] and job.result == 5
    s, _ = run_with(two)
    assert s.memo_hits == ["size"]
    two.write_bytes(b"1234567")
    s, job = run_with(two)
    assert s.executed == ["size"] and job.result == 7
    s, job = run_with(tmp_path / "missing.dat")
    assert s.states == {"size": FAILED} and "missing.dat does not exist" in job.reason


def test_state_survives_a_new_workflow_object(db, client, tmp_path):
    (tmp_path / "c.fail").touch()
    wf = Workflow("persist")
    submit_chain(wf, tmp_path)
    wf.run(client)
    reloaded = Workflow("persist")
    records = {r.label: r for r in reloaded.jobs()}
    assert [r.label for r in reloaded.jobs()] == ["a", "b", "c", "d"]
    assert {k: r.state for k, r in records.items()} == {"a": COMPLETED, "b": COMPLETED, "c": FAILED,
                                                        "d": CANCELLED}
    assert records["b"].result["text"] == "ab" and records["b"].attempts == 1
    assert records["d"].condition == reloaded.job("c").completed
    assert "told to fail" in reloaded.job("c").reason
    summary = reloaded.run(client)  # nothing left that can run
    assert summary.executed == [] and summary.memo_hits == []
    assert read_executions(tmp_path) == ["a", "b", "c"]


def test_run_creates_its_own_client_when_none_is_given(db, tmp_path):
    wf = Workflow("own-client")
    jobs = submit_chain(wf, tmp_path, names=("p", "q"))
    summary = wf.run()
    assert summary.states == {"p": COMPLETED, "q": COMPLETED}
    assert jobs["q"].result["text"] == "pq"


def test_submit_refuses_bad_definitions(db, tmp_path):
    wf = Workflow("bad")
    a = wf.submit(CHAIN, {"workdir": str(tmp_path), "name": "a"}, name="a")
    with pytest.raises(WorkflowError, match="not registered"):
        wf.submit("no-such-type", {})
    with pytest.raises(WorkflowError, match="not JSON-serialisable"):
        wf.submit(CHAIN, {"x": object()})
    other = Workflow("other")
    with pytest.raises(WorkflowError, match="does not have"):
        other.submit(CHAIN, {}, when=a.completed)
    b = wf.submit(CHAIN, {"workdir": str(tmp_path), "name": "b"}, when=a, name="b")
    with pytest.raises(WorkflowError, match="wait on itself: a -> b -> a"):
        wf.submit(CHAIN, {"workdir": str(tmp_path), "name": "a"}, when=b.completed, name="a")
    assert wf.job("a").state == WAITING


def test_unserialisable_result_fails_the_job(db, client):
    register_jobtype("test-badresult", lambda params, inputs: {"value": {1, 2}})
    wf = Workflow("badresult")
    job = wf.submit("test-badresult", {})
    assert wf.run(client).states == {job.label: FAILED}
    assert "not JSON-serialisable" in job.reason



def or_step(params: dict, inputs: list[str]) -> str:
    """Logs its name; "slow" waits (polling, at most 60 s) until the OR job has started."""
    workdir = Path(params["workdir"])
    with open(workdir / "executions.log", "a") as fh:
        fh.write(params["name"] + "\n")
    if params["name"] == "either":
        (workdir / "either.started").touch()
    if params["name"] == "slow":
        deadline = time.monotonic() + 60
        while not (workdir / "either.started").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the OR job never started while slow was running")
            time.sleep(0.01)
    return params["name"]


def test_or_joined_job_is_memoised_on_an_identical_rerun(db, client, tmp_path):
    """`slow.completed | fast.completed`: on the first run the OR job starts as soon as `fast` completes,
    while `slow` still runs (slow waits for the OR job to start, so the order is certain).  On an
    identical rerun every prerequisite comes from the memo before the OR job is decided, so both are
    completed by then; the OR job must still come from the memo (it used to run once more: its key then
    took both prerequisites' keys instead of the one it had started on)."""
    register_jobtype("test-orstep", or_step)

    def run_script():
        (tmp_path / "either.started").unlink(missing_ok=True)
        wf = Workflow("or-rerun")
        step = lambda name, **kw: wf.submit("test-orstep", {"workdir": str(tmp_path), "name": name},  # noqa: E731
                                            name=name, **kw)
        slow, fast = step("slow"), step("fast")
        either = step("either", when=slow.completed | fast.completed)
        after = step("after", when=either.completed)
        return wf.run(client), either, after

    first, either, after = run_script()
    assert first.states == {"slow": COMPLETED, "fast": COMPLETED, "either": COMPLETED, "after": COMPLETED}
    assert sorted(first.executed) == ["after", "either", "fast", "slow"]
    executed_once = read_executions(tmp_path)
    assert sorted(executed_once) == ["after", "either", "fast", "slow"]
    for _ in range(2):  # identical reruns: nothing executes, every job from the memo
        again, either, after = run_script()
        assert again.executed == [] and again.memo_hits == ["slow", "fast", "either", "after"]
        assert either.memo_hit and after.memo_hit and either.result == "either"
    assert read_executions(tmp_path) == executed_once
