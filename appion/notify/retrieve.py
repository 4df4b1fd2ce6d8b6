"""The session summary of a finished loop run, read from the database (loop process, after bootstrap()).

    rejected, medians = retrieve_run_summary(looprun_id)
    LoopSnapshot(..., finished=True, rejected=rejected, medians=medians)
"""
from __future__ import annotations

import statistics

from appion.base.db import models as m
from appion.base.steps import StepError, get_step

REJECTED_MARK = "rejected by "  # what the loop records on the steps a curation step turned down


def retrieve_run_summary(looprun_id: int) -> tuple[dict[str, int], dict[str, float]]:
    """(reason → exposures rejected, "step: column label" → median) of one loop run.

    Rejections are the loop's records of a curation step turning an exposure down (each exposure counted once,
    with its first reason); medians are over every column of every step of the run (appion.base.steps).
    """
    rows = list(m.ApLoopExposureData.objects.filter(looprun_id=looprun_id).order_by("id")
                .values_list("image_id", "last_error"))
    image_ids = sorted({image_id for image_id, _ in rows})
    first: dict[int, str] = {}
    for image_id, error in rows:
        if error and REJECTED_MARK in error and image_id not in first:
            first[image_id] = REJECTED_MARK + error.split(REJECTED_MARK, 1)[1].strip()
    rejected: dict[str, int] = {}
    for reason in first.values():
        rejected[reason] = rejected.get(reason, 0) + 1
    medians: dict[str, float] = {}
    run_ids = dict(m.ApLoopStepRunData.objects.filter(looprun_id=looprun_id).order_by("id")
                   .values_list("step", "run_id"))
    for name, run_id in run_ids.items():
        try:
            step = get_step(name)
        except StepError:  # a step whose plugin is not installed here any more
            continue
        for column in step.columns:
            if run_id is None or not image_ids:
                continue
            values = [v for v in column.read(run_id, image_ids).values() if isinstance(v, (int, float))]
            if values:
                medians[f"{name}: {column.label}"] = float(statistics.median(values))
    return rejected, medians
