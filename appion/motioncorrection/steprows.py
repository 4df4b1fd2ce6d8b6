"""The motion step's database side in the loop process: its run row, storing one result, what is done.

Imported only after appion.base.db.bootstrap() (the loop process), never on workers.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from appion.base.db import models as m
from appion.base.db.fields import parse_seq
from appion.base.exposure import ExposureInput
from appion.base.session.retrieve import retrieve_images_by_filename
from appion.base.session.viewer import REJECTED_VIEWER_STATUS, retrieve_viewer_status, store_viewer_hidden
from appion.base.steps import StepInput, StepRun
from appion.motioncorrection import store as mstore
from appion.motioncorrection.calc.rows import calc_align_stats_fields, calc_total_drift_px, calc_trajectory_fields
from appion.motioncorrection.records import AlignedImage, MotionRecord, MotionSettings


def store_motion_run(run: StepRun) -> int:
    """ApDDStackRunData (+ params) of this run; returns its id."""
    s: MotionSettings = run.settings
    method = "appion" if s.engine == "builtin" else s.engine
    row = mstore.store_ddstack_run(run.session_id, run.preset_id, run.runname, run.rundir, s.bin, method)
    return row.id


def store_motion_result(record: MotionRecord, run: StepRun, task: StepInput,
                        inside: Callable[[], None] | None = None) -> AlignedImage:
    """Register the aligned images and write the trajectory, stats and pair rows (idempotent)."""
    s: MotionSettings = run.settings
    result_id, dw_id = mstore.store_aligned_images(task.exposure.image_id, record.sum_filename, record.dw_filename,
                                                   record.out_shape_yx, record.bin, s.alignlabel, run.cache)
    mstore.store_motion_rows(run.run_id, task.exposure.image_id, result_id,
                             calc_trajectory_fields(record.log_positions),
                             calc_align_stats_fields(record.log_positions, record.out_pixel_size_A), inside=inside)
    name = record.dw_filename or record.sum_filename
    rejected = None
    if getattr(record, "problem", None):  # an unusable sum: hidden in the classic viewer, later steps skip it
        rejected = f"unusable aligned sum: {record.problem}"
        store_viewer_hidden(run.session_id, [i for i in (task.exposure.image_id, result_id, dw_id) if i])
    return AlignedImage(task.exposure.image_id, dw_id or result_id, name, record.out_pixel_size_A,
                        result_id if dw_id else None, rejected)


def retrieve_motion_outputs(run: StepRun, exposure_ids: Sequence[int],
                            inputs: Mapping[int, ExposureInput]) -> dict[int, AlignedImage]:
    """The exposures this ddstack run has finished, with the aligned image later steps use."""
    s: MotionSettings = run.settings
    pairs = dict(m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=run.run_id, source_id__in=list(exposure_ids))
                 .values_list("source_id", "result_id"))
    if not pairs:
        return {}
    names = dict(m.AcquisitionImageData.objects.filter(id__in=list(pairs.values())).values_list("id", "filename"))
    dw = (retrieve_images_by_filename(run.session_id, [f"{n}-DW" for n in names.values()]) if s.doseweight else {})
    out = {}
    for source, result in pairs.items():
        name = names.get(result)
        if name is None:
            continue
        pixel = inputs[source].pixel_size_A * s.bin if source in inputs else 0.0
        if f"{name}-DW" in dw:
            out[source] = AlignedImage(source, dw[f"{name}-DW"], f"{name}-DW", pixel, result)
        else:
            out[source] = AlignedImage(source, result, name, pixel)
    hidden = retrieve_viewer_status([a.image_id for a in out.values()])
    for source, aligned in list(out.items()):
        if hidden.get(aligned.image_id) in REJECTED_VIEWER_STATUS:
            out[source] = dataclasses.replace(aligned, rejected=f"{aligned.filename} is hidden in the viewer")
    return out


def read_total_drift_A(run_id: int, exposure_ids: Sequence[int]) -> dict[int, float]:
    """Total drift (Å) per movie from its stored trajectory (the classic log's per-frame positions)."""
    pairs = dict(m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=run_id, source_id__in=list(exposure_ids))
                 .values_list("result_id", "source_id"))
    out = {}
    rows = (m.ApDDAlignStatsData.objects.filter(ddstackrun_id=run_id, image_id__in=list(pairs))
            .select_related("trajectory"))
    for stats in rows:
        traj = stats.trajectory
        if traj is None or not stats.apix:
            continue
        xs, ys = parse_seq(traj.pos_x) or [], parse_seq(traj.pos_y) or []
        out[pairs[stats.image_id]] = calc_total_drift_px(list(zip(xs, ys))) * stats.apix
    return out
