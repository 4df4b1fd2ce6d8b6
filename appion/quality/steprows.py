"""The quality step's database side in the loop process: its run row, judging and storing one exposure,
what is done, its columns, and a person's verdict.

Judging happens here, not on the worker: the thresholds in force are the command line's overridden by the
config file's [curation] table, read again whenever the file changes (appion.quality.curation), so a
change applies to every exposure stored after it.  The motion numbers come from what the motion step
stored (its classic log, else its trajectory row), the CTF numbers from the CTF step's output.
Imported only after appion.base.db.bootstrap() (the loop process), never on workers.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence

from appion.base.config import find_config_path
from appion.base.exposure import ExposureInput
from appion.base.steps import StepInput, StepRun
from appion.quality import retrieve as qr
from appion.quality import store as qs
from appion.quality.calc.internal.motion import calc_drift_A
from appion.quality.calc.internal.verdict import calc_rejection
from appion.quality.curation import LiveThresholds
from appion.quality.records import Metrics, QualityOutput, QualityRecord, QualitySettings, Thresholds

store_manual_verdict = qs.store_manual_verdict  # for the exposure page: (image_id, accepted, reason, user=None)
NO_FIT_RESOLUTION_A = 100000.0  # classic ApCtfData.ctffind4_resolution for "no fit"


def store_quality_run(run: StepRun) -> int:
    """ApQualityRunData of this run; returns its id.  A config [curation] table with a mistake stops the
    loop here, at its start (CurationError, one line)."""
    s: QualitySettings = run.settings
    LiveThresholds(s.thresholds, find_config_path(), _config_curation())
    return qs.store_quality_run(run.session_id, run.runname, run.rundir, s.hashed()).id


def _config_curation() -> dict | None:
    from appion.base.db import current_config

    return current_config().extra.get("curation")


def live_thresholds(run: StepRun) -> LiveThresholds:
    """This run's thresholds in force (created once per run; see appion.quality.curation)."""
    live = run.cache.get("quality.thresholds")
    if live is None:
        s: QualitySettings = run.settings
        live = LiveThresholds(s.thresholds, find_config_path(), _config_curation())
        run.cache["quality.thresholds"] = live
    return live


def calc_motion_metrics(task: StepInput) -> dict:
    """total/early/late drift (Å) from what the motion step stored for this exposure ({} without motion)."""
    aligned = task.upstream.get("motion")
    if aligned is None or not hasattr(aligned, "image_id"):
        return {}
    inp: ExposureInput = task.exposure
    result_id = aligned.sum_image_id or aligned.image_id
    traj = qr.retrieve_motion_trajectory(inp.image_id, result_id, inp.filename, aligned.pixel_size_A)
    if traj is None:
        return {}
    # the movie's dose per frame (a trajectory row's first positions are its first frames, so the early part
    # stays right when only the first 20 positions and the last are known)
    dose = inp.dose_e_per_A2 / inp.n_frames if inp.dose_e_per_A2 and inp.n_frames else None
    drift = calc_drift_A(traj.positions_px, traj.pixel_size_A, dose)
    return {"total_drift_A": drift.total_A, "early_drift_A": drift.early_A, "late_drift_A": drift.late_A}


def calc_ctf_metrics(task: StepInput) -> dict:
    """fit resolution, astigmatism and mean defocus (Å) from the CTF step's output."""
    ctf = task.upstream.get("ctf")
    if ctf is None:
        return {}
    fit = getattr(ctf, "fit_resolution_A", None)
    if fit is not None and not math.isfinite(fit):
        fit = NO_FIT_RESOLUTION_A
    d1, d2 = getattr(ctf, "defocus1_A", None), getattr(ctf, "defocus2_A", None)
    out = {"ctf_resolution_A": fit}
    if d1 and d2:
        out.update(astigmatism_A=abs(d1 - d2), defocus_A=0.5 * (d1 + d2))
    return out


def calc_metrics(record: QualityRecord, task: StepInput) -> Metrics:
    return Metrics(**calc_motion_metrics(task), **calc_ctf_metrics(task), tilt_deg=record.tilt_deg,
                   tilt_axis_deg=record.tilt_axis_deg, ice_thickness=record.ice_thickness,
                   crystalline_ice=record.crystalline_ice, image_problem=record.image_problem)


def calc_output(source_id: int, metrics: Metrics, auto_reason: str | None,
                manual: tuple[bool, str | None] | None) -> QualityOutput:
    """The verdict later steps and pages see: a person's newest verdict wins over the automatic one."""
    if manual is None:
        return QualityOutput(source_id, auto_reason, metrics)
    accepted, reason = manual
    return QualityOutput(source_id, None if accepted else f"by hand: {reason or 'rejected'}", metrics, manual=True)


def store_quality_result(record: QualityRecord, run: StepRun, task: StepInput,
                         inside: Callable[[], None] | None = None) -> QualityOutput:
    """Judge one exposure under the thresholds in force, write its row and, when rejected (and no person
    has accepted it), hide it and its aligned images in Leginon's ViewerImageStatus.  Idempotent: a second
    call writes nothing and returns the first call's verdict."""
    inp: ExposureInput = task.exposure
    thresholds: Thresholds = live_thresholds(run).current()
    metrics = calc_metrics(record, task)
    reason = calc_rejection(metrics, thresholds)
    notes = "; ".join(n for n in (record.tilt_note, record.ice_note) if n) or None
    fields = {**dataclasses.asdict(metrics), "measured_image_id": record.image_id, "notes": notes,
              "rejected": reason is not None, "reason": reason,
              "thresholds": json.dumps(dataclasses.asdict(thresholds), sort_keys=True)}
    manual = qr.retrieve_manual_verdicts([inp.image_id]).get(inp.image_id)
    hide = _images_of(task, record) if reason is not None and manual is None else set()
    if qs.store_quality_row(run.run_id, inp.image_id, fields, inside=inside, session_id=run.session_id, hide=hide):
        return calc_output(inp.image_id, metrics, reason, manual)
    stored = qr.retrieve_quality_rows(run.run_id, [inp.image_id])[inp.image_id]  # stored before: its verdict
    return calc_output(inp.image_id, _metrics_of(stored), stored["reason"] if stored["rejected"] else None, manual)


def _images_of(task: StepInput, record: QualityRecord) -> set[int]:
    """The exposure and the images made from it in this run (aligned sums, the measured image)."""
    ids = {task.exposure.image_id}
    aligned = task.upstream.get("motion")
    for value in (getattr(aligned, "image_id", None), getattr(aligned, "sum_image_id", None), record.image_id):
        if value:
            ids.add(value)
    return ids


def _metrics_of(row: dict) -> Metrics:
    return Metrics(**{f.name: row.get(f.name) for f in dataclasses.fields(Metrics)})


def retrieve_quality_outputs(run: StepRun, exposure_ids: Sequence[int],
                             inputs: Mapping[int, ExposureInput]) -> dict[int, QualityOutput]:
    """The exposures this quality run has judged, with their verdicts (a person's newest wins)."""
    rows = qr.retrieve_quality_rows(run.run_id, exposure_ids)
    manual = qr.retrieve_manual_verdicts(list(rows))
    return {source: calc_output(source, _metrics_of(row), row["reason"] if row["rejected"] else None,
                                manual.get(source))
            for source, row in rows.items()}


# ------------------------------------------------------------------ columns (appion status, session page)

def _column(run_id: int, exposure_ids: Sequence[int], name: str) -> dict:
    return {i: row[name] for i, row in qr.retrieve_quality_rows(run_id, exposure_ids).items()
            if row[name] is not None}


def read_total_drift_A(run_id: int, exposure_ids: Sequence[int]) -> dict[int, float]:
    return _column(run_id, exposure_ids, "total_drift_A")


def read_ctf_resolution_A(run_id: int, exposure_ids: Sequence[int]) -> dict[int, float]:
    return _column(run_id, exposure_ids, "ctf_resolution_A")


def read_tilt_deg(run_id: int, exposure_ids: Sequence[int]) -> dict[int, float]:
    return _column(run_id, exposure_ids, "tilt_deg")


def read_ice_thickness(run_id: int, exposure_ids: Sequence[int]) -> dict[int, float]:
    return _column(run_id, exposure_ids, "ice_thickness")


def read_rejected_reason(run_id: int, exposure_ids: Sequence[int]) -> dict[int, str]:
    """The effective verdict per exposure: its rejection reason, 'accepted by hand', or nothing (accepted)."""
    rows = qr.retrieve_quality_rows(run_id, exposure_ids)
    manual = qr.retrieve_manual_verdicts(list(rows))
    out = {}
    for source, row in rows.items():
        verdict = calc_output(source, _metrics_of(row), row["reason"] if row["rejected"] else None,
                              manual.get(source))
        if verdict.rejected:
            out[source] = verdict.rejected
        elif verdict.manual:
            out[source] = "accepted by hand"
    return out
