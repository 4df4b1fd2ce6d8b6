"""The loop's own rows: loop runs, their step runs (with memo keys), and per exposure × step bookkeeping.

Loop process only (imported after appion.base.db.bootstrap()).
"""
from __future__ import annotations

import socket
from collections.abc import Callable

from django.db import transaction

from appion.base.db import models as m
from appion.base.db.models.loop import QUEUED, RUNNING
from appion.base.db.router import alias_for
from appion.base.db.sinedon import serialised_inserts
from appion.base.session.store import store_path
from appion.loop.runlock import RunLocked


def store_loop_run(runname: str, session_id: int, session_name: str, steps: str, params_hash: str,
                   params_json: str, rundir, pid: int, started: float, holder_state: Callable) -> tuple:
    """Take the run (session + run name) for this process, atomically; returns (row, [holders taken over]).

    Under the database's insert lock (serialised_inserts): every row of this run name marked running is
    asked `holder_state(hostname, pid, heartbeat, started) -> (alive, description)`; a live holder other
    than this process refuses the run (RunLocked naming it), a dead one is taken over (its row set to E
    unless it is the row this run continues).  Then the row of this run name + session + parameter hash is
    got or created and marked running by this host and pid.
    """
    me = socket.gethostname()
    with serialised_inserts(alias_for(m.ApLoopRunData)):
        taken = []
        holders = m.ApLoopRunData.objects.filter(runname=runname, session_id=session_id, status="R").order_by("id")
        for held in holders:
            if held.hostname == me and held.pid == pid:
                continue
            alive, holder = holder_state(held.hostname, held.pid, held.heartbeat, held.started)
            if alive:
                raise RunLocked(f"run {runname} of session {session_name} is being processed by {holder}; "
                                "stop that loop first, or use another --runname")
            taken.append((held.id, holder))
        row = (m.ApLoopRunData.objects.filter(runname=runname, session_id=session_id, params_hash=params_hash)
               .order_by("-id").first())
        stale = [row_id for row_id, _ in taken if row is None or row_id != row.id]
        if stale:
            m.ApLoopRunData.objects.filter(id__in=stale).update(status="E")
        fields = dict(status="R", hostname=me, pid=pid, heartbeat=started, started=started)
        if row is None:
            row = m.ApLoopRunData.objects.create(runname=runname, session_id=session_id, steps=steps,
                                                 params_hash=params_hash, params=params_json,
                                                 path=store_path(rundir), **fields)
        else:
            m.ApLoopRunData.objects.filter(id=row.id).update(**fields)
            row.refresh_from_db()
    return row, [holder for _, holder in taken]


def store_interrupted_exposures_queued(looprun_id: int) -> int:
    """Rows of this loop run left `running` by a loop that died: queued again (they are redone)."""
    return m.ApLoopExposureData.objects.filter(looprun_id=looprun_id, status=RUNNING).update(status=QUEUED)


def store_stuck_jobs_error(session_id: int, name: str, jobtype: str, rundirs, exclude_ids=()) -> list[str]:
    """ApAppionJobData rows of earlier starts of this run still at R (their loop died; not this start's own
    `exclude_ids`): set to E.  Returns their cluster kinds (one per row)."""
    path_ids = [store_path(d).id for d in rundirs]
    rows = (m.ApAppionJobData.objects.filter(session_id=session_id, name=name, jobtype=jobtype, status="R",
                                             path_id__in=path_ids).exclude(id__in=list(exclude_ids)))
    found = list(rows.values_list("id", "cluster"))
    m.ApAppionJobData.objects.filter(id__in=[row_id for row_id, _ in found]).update(status="E")
    return [cluster or "" for _, cluster in found]


def store_loop_run_fields(looprun_id: int, **fields) -> None:
    m.ApLoopRunData.objects.filter(id=looprun_id).update(**fields)


def retrieve_memo_step_run(session_id: int, step: str, memo_key: str):
    """The earliest step run of this session that answers to memo_key (its results can be reused), or None."""
    return (m.ApLoopStepRunData.objects.filter(session_id=session_id, step=step, memo_key=memo_key)
            .exclude(run_id=None).order_by("id").first())


def store_step_run(looprun_id: int, session_id: int, step: str, memo_key: str, run_id: int | None, rundir: str,
                   settings_json: str, versions_json: str, reused: bool):
    """This loop run's row for one step (get-or-create on loop run + step)."""
    row = m.ApLoopStepRunData.objects.filter(looprun_id=looprun_id, step=step).order_by("id").first()
    fields = dict(session_id=session_id, memo_key=memo_key, run_id=run_id, rundir=rundir, settings=settings_json,
                  versions=versions_json, reused=reused)
    if row is None:
        return m.ApLoopStepRunData.objects.create(looprun_id=looprun_id, step=step, **fields)
    m.ApLoopStepRunData.objects.filter(id=row.id).update(**fields)
    row.refresh_from_db()
    return row


def store_loop_exposures(looprun_id: int, items: list[tuple[int, str, float]]) -> dict[tuple[int, str], int]:
    """Queued rows for new (image id, step, arrived) pairs; returns their ids by (image id, step)."""
    with transaction.atomic(using=alias_for(m.ApLoopExposureData)):
        rows = [m.ApLoopExposureData(looprun_id=looprun_id, image_id=i, step=s, status=QUEUED, attempts=0,
                                     arrived=a) for i, s, a in items]
        m.ApLoopExposureData.objects.bulk_create(rows)
        found = (m.ApLoopExposureData.objects.filter(looprun_id=looprun_id, image_id__in=[i for i, _, _ in items])
                 .values_list("image_id", "step", "id"))
        return {(i, s): row_id for i, s, row_id in found}


def retrieve_loop_exposures(looprun_id: int, image_ids: list[int]) -> dict[tuple[int, str], tuple[int, str, int]]:
    """(image id, step) → (row id, status, attempts) of this loop run's bookkeeping rows."""
    rows = (m.ApLoopExposureData.objects.filter(looprun_id=looprun_id, image_id__in=image_ids)
            .values_list("id", "image_id", "step", "status", "attempts"))
    return {(image_id, step): (row_id, status, attempts or 0) for row_id, image_id, step, status, attempts in rows}


def store_loop_exposure_fields(row_id: int, **fields) -> None:
    m.ApLoopExposureData.objects.filter(id=row_id).update(**fields)


def store_loop_exposures_status(row_ids: list[int], status: str, **fields) -> None:
    if row_ids:
        m.ApLoopExposureData.objects.filter(id__in=row_ids).update(status=status, **fields)
