"""The loop's own rows: loop runs, their step runs (with memo keys), and per exposure × step bookkeeping.

Loop process only (imported after appion.base.db.bootstrap()).
"""
from __future__ import annotations

import socket

from django.db import transaction

from appion.base.db import models as m
from appion.base.db.models.loop import QUEUED
from appion.base.db.router import alias_for
from appion.base.session.store import store_path


def store_loop_run(runname: str, session_id: int, steps: str, params_hash: str, params_json: str, rundir,
                   pid: int, started: float):
    """The loop run row (get-or-create by run name + session + parameter hash); marks it running."""
    row = (m.ApLoopRunData.objects.filter(runname=runname, session_id=session_id, params_hash=params_hash)
           .order_by("-id").first())
    fields = dict(status="R", hostname=socket.gethostname(), pid=pid, heartbeat=started)
    if row is None:
        return m.ApLoopRunData.objects.create(runname=runname, session_id=session_id, steps=steps,
                                              params_hash=params_hash, params=params_json, path=store_path(rundir),
                                              started=started, **fields)
    m.ApLoopRunData.objects.filter(id=row.id).update(**fields)
    row.refresh_from_db()
    return row


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
