"""Workflow state in the database, and content hashes of input files (the side effects of workflows).

State changes that two processes could race on (claiming a waiting job, cancelling it) are
compare-and-set updates on the state column, so only one process ever runs a given job.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appion.base.db import models as m
from appion.base.db.sinedon import insert
from appion.workflow.calc import (
    CANCELLED,
    RUNNING,
    WAITING,
    Condition,
    canonical_json,
    condition_from_text,
    condition_to_text,
)


class InputError(ValueError):
    """An input of a job is missing or unreadable."""


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one workflow job row, with its JSON columns parsed."""

    id: int
    label: str
    ordinal: int
    jobtype: str
    params: dict
    inputs: list[str]
    condition: Condition | None
    state: str
    memo_key: str | None
    memo_hit: bool
    result: object
    reason: str | None
    owner: str | None
    attempts: int


def _record(row: m.ApWorkflowJobData) -> JobRecord:
    return JobRecord(
        id=row.id, label=row.label, ordinal=row.ordinal or 0, jobtype=row.jobtype,
        params=json.loads(row.params or "{}"), inputs=json.loads(row.inputs or "[]"),
        condition=condition_from_text(row.condition), state=row.state, memo_key=row.memo_key,
        memo_hit=bool(row.memo_hit), result=None if row.result is None else json.loads(row.result),
        reason=row.reason, owner=row.owner, attempts=row.attempts or 0)


def store_workflow(name: str) -> int:
    """The id of the workflow called `name` (created on first use)."""
    row, _ = insert(m.ApWorkflowData, name=name)
    return row.id


def read_jobs(workflow_id: int) -> list[JobRecord]:
    """All jobs of a workflow in submission order."""
    rows = m.ApWorkflowJobData.objects.filter(workflow_id=workflow_id).order_by("ordinal", "id")
    return [_record(r) for r in rows]


def read_job(workflow_id: int, label: str) -> JobRecord | None:
    row = m.ApWorkflowJobData.objects.filter(workflow_id=workflow_id, label=label).order_by("-id").first()
    return None if row is None else _record(row)


def store_job_definition(workflow_id: int, label: str, jobtype: str, params: dict, inputs: list[str],
                         condition: Condition | None) -> JobRecord:
    """Create the job, or redefine an existing one with that label and set it WAITING again."""
    values = dict(jobtype=jobtype, params=canonical_json(params), inputs=canonical_json(inputs),
                  condition=condition_to_text(condition), state=WAITING, memo_key=None, memo_hit=False,
                  result=None, reason=None, owner=None, elapsed_s=None)
    row = m.ApWorkflowJobData.objects.filter(workflow_id=workflow_id, label=label).order_by("-id").first()
    if row is None:
        last = m.ApWorkflowJobData.objects.filter(workflow_id=workflow_id).order_by("-ordinal").first()
        ordinal = 1 if last is None else (last.ordinal or 0) + 1
        row = m.ApWorkflowJobData.objects.create(workflow_id=workflow_id, label=label, ordinal=ordinal,
                                                 attempts=0, **values)
    else:
        for key, value in values.items():
            setattr(row, key, value)
        row.save()
    return _record(row)


def claim_job(job_id: int, owner: str) -> bool:
    """WAITING → RUNNING for this owner; False if another process got there first."""
    return m.ApWorkflowJobData.objects.filter(id=job_id, state=WAITING).update(
        state=RUNNING, owner=owner, reason=None) == 1


def store_cancelled(job_id: int, reason: str) -> bool:
    """WAITING → CANCELLED with the reason; False if the job was claimed meanwhile."""
    return m.ApWorkflowJobData.objects.filter(id=job_id, state=WAITING).update(
        state=CANCELLED, reason=reason, owner=None) == 1


def store_outcome(job_id: int, state: str, *, result_json: str | None = None, reason: str | None = None,
                  memo_key: str | None = None, memo_hit: bool = False, executed: bool = False,
                  elapsed_s: float | None = None) -> None:
    """Record how a claimed job ended (COMPLETED, FAILED, or back to WAITING)."""
    row = m.ApWorkflowJobData.objects.get(id=job_id)
    row.state, row.result, row.reason, row.memo_key, row.memo_hit = state, result_json, reason, memo_key, memo_hit
    row.elapsed_s = elapsed_s
    if executed:
        row.attempts = (row.attempts or 0) + 1
    if state == WAITING:
        row.owner = None
    row.save()


def read_memo(memo_key: str) -> str | None:
    """The result JSON of the newest completed job with this key, or None."""
    row = m.ApWorkflowMemoData.objects.filter(memo_key=memo_key).order_by("-id").first()
    return None if row is None else row.result


def read_first_memo(memo_keys: Sequence[str]) -> tuple[str, str] | None:
    """(key, result JSON) for the first of memo_keys (in the given order) that has a memo, or None."""
    rows = m.ApWorkflowMemoData.objects.filter(memo_key__in=list(dict.fromkeys(memo_keys))).order_by("-id")
    newest: dict[str, str] = {}
    for key, result in rows.values_list("memo_key", "result"):
        newest.setdefault(key, result)
    for key in memo_keys:
        if key in newest:
            return key, newest[key]
    return None


def store_memo(memo_key: str, jobtype: str, result_json: str, job_id: int) -> None:
    m.ApWorkflowMemoData.objects.create(memo_key=memo_key, jobtype=jobtype, result=result_json, job_id=job_id)


def make_owner(token: str) -> str:
    """host:pid:token, enough to tell later whether the claiming run is still alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{token}"


def _owner_is_gone(owner: str | None, token: str) -> bool:
    """Whether the run that claimed a job can no longer finish it (only decidable on this host)."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text, _, their_token = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return their_token != token  # an earlier run() of this process that did not finish
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def store_reclaimed_orphans(workflow_id: int, token: str) -> list[str]:
    """Put RUNNING jobs whose run died (crash, kill) back to WAITING; returns their labels."""
    reclaimed = []
    for row in m.ApWorkflowJobData.objects.filter(workflow_id=workflow_id, state=RUNNING):
        if _owner_is_gone(row.owner, token):
            changed = m.ApWorkflowJobData.objects.filter(id=row.id, state=RUNNING, owner=row.owner).update(
                state=WAITING, owner=None, reason=f"reclaimed: the run that claimed it ({row.owner}) stopped")
            if changed:
                reclaimed.append(row.label)
    return reclaimed


def read_input_digest(path: str) -> str:
    """SHA-256 of a file's contents, or of a directory's relative names and file contents."""
    p = Path(path)
    try:
        if p.is_dir():
            h = hashlib.sha256(b"dir\0")
            for sub in sorted(q for q in p.rglob("*") if q.is_file()):
                h.update(sub.relative_to(p).as_posix().encode() + b"\0")
                h.update(_file_digest(sub).encode() + b"\0")
            return h.hexdigest()
        return _file_digest(p)
    except FileNotFoundError:
        raise InputError(f"input {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"input {path} cannot be read: {exc.strerror or exc}") from None


def _file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


__all__ = ["InputError", "JobRecord", "make_owner", "claim_job", "read_input_digest", "read_job",
           "read_jobs", "read_first_memo", "read_memo", "store_cancelled", "store_job_definition", "store_memo",
           "store_outcome", "store_reclaimed_orphans", "store_workflow"]
