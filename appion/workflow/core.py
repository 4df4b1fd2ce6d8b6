"""Workflows: jobs that wait on each other with conditions, run on Dask, and are memoised.

    wf = Workflow("session42")
    a = wf.submit("align", {"binning": 2}, inputs=["movie.tif"])
    b = wf.submit("ctf", {"box": 512}, inputs=["movie_sum.mrc"], when=a.completed)
    c = wf.submit("report", {}, when=b.completed | b.failed)
    summary = wf.run()          # returns when nothing more can run

Why: users chain steps, want a failure to cancel exactly what depends on it, and want a rerun
of the whole script after fixing one step to redo only that step and what follows.  So every
job's definition and state live in the database (a new process reloads them), and a job whose
memo key (job type and its version, program versions, appion version, parameters, input file
contents, prerequisites' keys) matches a completed job takes that job's result instead of running.

Re-submitting a label (re-executing the same script) redefines that job and sets it WAITING;
unchanged jobs then complete from the memo.  Job functions take (params: dict, inputs: list[str])
and return a JSON-serialisable result.
"""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import appion
from appion.workflow import store as store
from appion.workflow.calc import (
    CANCELLED,
    COMPLETED,
    FAILED,
    RUNNING,
    WAITING,
    Condition,
    ConditionError,
    Is,
    MemoParts,
    calc_cycle,
    calc_decision,
    calc_labels,
    calc_memo_key,
    calc_upstream_key_sets,
    canonical_json,
)
# re-exported: part of the public API of workflows
from appion.workflow.jobtypes import (  # noqa: F401
    JobType,
    WorkflowError,
    get_jobtype,
    register_jobtype,
    run_job,
    unregister_jobtype,
)

__all__ = ["Workflow", "JobHandle", "JobType", "RunSummary", "WorkflowError", "Condition", "ConditionError",
           "register_jobtype", "get_jobtype", "unregister_jobtype",
           "WAITING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- handles and summaries

class JobHandle:
    """A job of a workflow, by label.  `.completed`, `.failed`, `.cancelled` are conditions;
    `.state`, `.result`, `.reason` read the database."""

    def __init__(self, workflow: Workflow, label: str) -> None:
        self.workflow = workflow
        self.label = label

    def __repr__(self) -> str:
        return f"JobHandle({self.workflow.name!r}, {self.label!r})"

    @property
    def completed(self) -> Condition:
        return Is(self.label, COMPLETED)

    @property
    def failed(self) -> Condition:
        return Is(self.label, FAILED)

    @property
    def cancelled(self) -> Condition:
        return Is(self.label, CANCELLED)

    def record(self) -> store.JobRecord:
        rec = store.read_job(self.workflow.id, self.label)
        if rec is None:
            raise WorkflowError(f"workflow {self.workflow.name!r} has no job {self.label!r}")
        return rec

    @property
    def state(self) -> str:
        return self.record().state

    @property
    def reason(self) -> str | None:
        return self.record().reason

    @property
    def memo_hit(self) -> bool:
        return self.record().memo_hit

    @property
    def result(self):
        """The job's result; raises WorkflowError unless it COMPLETED."""
        rec = self.record()
        if rec.state != COMPLETED:
            raise WorkflowError(f"job {self.label!r} of workflow {self.workflow.name!r} is {rec.state}"
                                + (f": {rec.reason}" if rec.reason else ""))
        return rec.result


@dataclass
class RunSummary:
    """What one run() did: labels executed, taken from the memo, reclaimed; final state of every job."""

    executed: list[str] = field(default_factory=list)
    memo_hits: list[str] = field(default_factory=list)
    reclaimed: list[str] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)

    def labels(self, state: str) -> list[str]:
        return [label for label, s in self.states.items() if s == state]


# ---------------------------------------------------------------- workflow

def _as_condition(when) -> Condition | None:
    if when is None or isinstance(when, Condition):
        return when
    if isinstance(when, JobHandle):
        return when.completed
    if isinstance(when, (list, tuple)):
        conds = [_as_condition(w) for w in when]
        if not conds:
            return None
        out = conds[0]
        for c in conds[1:]:
            out = out & c
        return out
    raise WorkflowError(f"`when` must be a condition, a job handle or a list of them, not {type(when).__name__}")


class Workflow:
    """A named, persistent set of jobs (created on first use, reloaded from the database after)."""

    def __init__(self, name: str) -> None:
        if not name or not isinstance(name, str):
            raise WorkflowError(f"workflow name must be a non-empty string, got {name!r}")
        self.name = name
        self.id = store.store_workflow(name)
        self._submitted = 0
        self._token = uuid.uuid4().hex[:12]

    def __repr__(self) -> str:
        return f"Workflow({self.name!r})"

    def jobs(self) -> list[store.JobRecord]:
        """Every job of this workflow (fresh from the database), in submission order."""
        return store.read_jobs(self.id)

    def job(self, label: str) -> JobHandle:
        handle = JobHandle(self, label)
        handle.record()  # raises if unknown
        return handle

    def submit(self, jobtype: str, params: Mapping | None = None, inputs: Iterable[str | os.PathLike] = (),
               when=None, name: str | None = None) -> JobHandle:
        """Define a job (or redefine the job with this label) and return its handle.

        when: a condition over earlier jobs (`a.completed & ~b.failed`), a handle (= its
        .completed), a list (all of them), or None to run as soon as run() is called.
        name: the job's label; default "<jobtype>-<n>" with n counting submissions of this
        Workflow object, so re-executing the same script addresses the same jobs.
        """
        get_jobtype(jobtype)
        self._submitted += 1
        label = name or f"{jobtype}-{self._submitted}"
        params = dict(params or {})
        try:
            params = _json_roundtrip(params)
        except (TypeError, ValueError) as exc:
            raise WorkflowError(f"parameters of job {label!r} are not JSON-serialisable: {exc}") from None
        input_paths = [os.path.abspath(os.fspath(p)) for p in inputs]
        cond = _as_condition(when)
        existing = {rec.label: rec for rec in self.jobs()}
        missing = sorted(calc_labels(cond) - set(existing))
        if missing:
            raise WorkflowError(f"job {label!r} waits on {missing}, which workflow {self.name!r} does not have")
        cycle = calc_cycle(label, cond, {k: r.condition for k, r in existing.items()})
        if cycle:
            raise WorkflowError(f"job {label!r} would wait on itself: {' -> '.join(cycle)}")
        old = existing.get(label)
        if old is not None and old.state == RUNNING:
            store.store_reclaimed_orphans(self.id, self._token)
            if store.read_job(self.id, label).state == RUNNING:
                raise WorkflowError(f"job {label!r} is running ({old.owner}); cannot redefine it now")
        store.store_job_definition(self.id, label, jobtype, params, input_paths, cond)
        return JobHandle(self, label)

    def run(self, client=None) -> RunSummary:
        """Run every job that can run, on `client` (a distributed.Client) or on a threaded local one.

        Returns when nothing more can run: every job finished, was cancelled, or waits on a job
        another live process is running.
        """
        from distributed import Client

        own_client = client is None
        if own_client:
            client = Client(processes=False, dashboard_address=":0")
        summary = RunSummary(reclaimed=store.store_reclaimed_orphans(self.id, self._token))
        owner = store.make_owner(self._token)
        running: dict = {}  # distributed.Future -> (record, memo_key, monotonic start)
        try:
            self._check_jobtypes()
            while True:
                self._start_ready(client, owner, running, summary)
                if not running:
                    break
                self._collect(running)
        finally:
            for fut, (rec, _key, _t0) in running.items():
                fut.cancel()
                store.store_outcome(rec.id, WAITING, reason="interrupted: its run() stopped before it finished")
            if own_client:
                client.close()
        summary.states = {rec.label: rec.state for rec in self.jobs()}
        return summary

    # -- internals

    def _check_jobtypes(self) -> None:
        for rec in self.jobs():
            if rec.state == WAITING:
                get_jobtype(rec.jobtype)

    def _start_ready(self, client, owner: str, running: dict, summary: RunSummary) -> None:
        """Decide every waiting job in submission order; cancellations and memo hits cascade in one pass."""
        records = self.jobs()
        states = {r.label: r.state for r in records}
        reasons = {r.label: r.reason for r in records}
        keys = {r.label: r.memo_key for r in records}
        for rec in records:
            if rec.state != WAITING:
                continue
            decision = calc_decision(rec.condition, states, reasons)
            if decision.action == "wait":
                continue
            if decision.action == "cancel":
                if store.store_cancelled(rec.id, decision.reason):
                    states[rec.label], reasons[rec.label] = CANCELLED, decision.reason
                    log.info("workflow %s: cancelled %s: %s", self.name, rec.label, decision.reason)
                continue
            if not store.claim_job(rec.id, owner):
                continue
            states[rec.label] = RUNNING
            jobtype = get_jobtype(rec.jobtype)
            try:
                digests = [store.read_input_digest(p) for p in rec.inputs]
                programs = jobtype.program_versions()
                # the first key is this run's; the others are those an earlier run may have started it
                # under, with fewer prerequisites finished (an `|` of prerequisites: calc_upstream_key_sets)
                candidates = [calc_memo_key(MemoParts(rec.jobtype, jobtype.version, programs, appion.__version__,
                                                      rec.params, digests, upstream))
                              for upstream in calc_upstream_key_sets(rec.condition, states, keys)]
            except Exception as exc:  # noqa: BLE001 - a bad input or version probe fails this job only
                reason = f"job {rec.label!r}: {_describe(exc)}"
                store.store_outcome(rec.id, FAILED, reason=reason)
                states[rec.label], reasons[rec.label] = FAILED, reason
                continue
            found = store.read_first_memo(candidates)
            key = candidates[0] if found is None else found[0]
            keys[rec.label] = key
            if found is not None:
                memo = found[1]
                store.store_outcome(rec.id, COMPLETED, result_json=memo, memo_key=key, memo_hit=True)
                states[rec.label] = COMPLETED
                summary.memo_hits.append(rec.label)
                continue
            fut = client.submit(run_job, jobtype.func, rec.params, rec.inputs, pure=False,
                                key=f"appion-workflow-{rec.id}-{uuid.uuid4().hex[:8]}")
            running[fut] = (rec, key, time.monotonic())
            summary.executed.append(rec.label)

    def _collect(self, running: dict) -> None:
        """Wait for at least one running job and record how it ended."""
        from distributed import wait

        done, _ = wait(list(running), return_when="FIRST_COMPLETED")
        for fut in done:
            rec, key, t0 = running.pop(fut)
            elapsed = time.monotonic() - t0
            if fut.status == "finished":
                result_json = fut.result()
                store.store_outcome(rec.id, COMPLETED, result_json=result_json, memo_key=key, executed=True,
                                    elapsed_s=elapsed)
                store.store_memo(key, rec.jobtype, result_json, rec.id)
            else:
                exc = fut.exception() if fut.status == "error" else None
                reason = _describe(exc) if exc is not None else f"Dask future ended {fut.status}"
                if exc is not None:
                    log.warning("workflow %s: job %s failed:\n%s", self.name, rec.label,
                                "".join(traceback.format_exception(exc)))
                store.store_outcome(rec.id, FAILED, reason=reason, memo_key=key, executed=True, elapsed_s=elapsed)
            fut.release()


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()


def _json_roundtrip(value):
    """The value as it will come back from the database (tuples become lists, keys strings)."""
    return json.loads(canonical_json(value))
