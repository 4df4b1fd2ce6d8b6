"""`appion status` and the demo's table: what a session's loop runs did, read back from the database.

Only reads (loop process side, after bootstrap).  Every step's rows and columns come from the step
registry (appion.base.steps), so a step added by a site package shows up here without a change.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from django.db import DatabaseError

from appion.base.db import models as m
from appion.base.db.fields import parse_seq
from appion.base.db.models.loop import DONE, FAILED, QUEUED, RETRY, RUNNING
from appion.base.session import retrieve as r
from appion.base.steps import StepError, get_step
from appion.loop.calc import LoopError, calc_epoch, calc_percentile
from appion.loop.runlock import calc_holder_state



def retrieve_step_run_ids(looprun_id: int) -> dict[str, int | None]:
    """step name → the step's own run row id for one loop run."""
    return dict(m.ApLoopStepRunData.objects.filter(looprun_id=looprun_id).order_by("id")
                .values_list("step", "run_id"))


def calc_column_values(looprun_id: int, steps: list[str], image_ids: list[int]) -> list[tuple[str, object, dict]]:
    """(label, column, {image id: value}) for every column of every registered step of the run."""
    run_ids = retrieve_step_run_ids(looprun_id)
    out = []
    for name in steps:
        try:
            step = get_step(name)
        except StepError:  # a step whose plugin is not installed here any more
            continue
        run_id = run_ids.get(name)
        for column in step.columns:
            values = column.read(run_id, image_ids) if run_id is not None and image_ids else {}
            out.append((f"{name}: {column.label}", column, values))
    return out


def calc_status_report(session_name: str, runname: str | None = None, now: float | None = None) -> str:
    """`appion status`: per loop run and step: done / running / queued / failed (with reasons), rates, backlog."""
    now = time.time() if now is None else now
    session = r.retrieve_session(session_name)
    if session is None:
        raise LoopError(f"session {session_name!r} not found")
    runs = m.ApLoopRunData.objects.filter(session_id=session.id).order_by("id")
    if runname:
        runs = runs.filter(runname=runname)
    lines = [f"session {session.name}"]
    try:
        refusals = r.retrieve_import_refusals(session.id)
    except DatabaseError as exc:  # a database from before the refusals table: say so, go on
        refusals = []
        lines.append(f"  (import refusals not available: {' '.join(str(exc).split())[:120]}; run `appion db init`)")
    if refusals:
        lines.append(f"  {len(refusals)} movie(s) refused by session import (not registered):")
        for x in refusals[:20]:
            lines.append(f"    refused {x.path}: {x.reason}" + (f" ({x.count} times)" if x.count > 1 else ""))
        if len(refusals) > 20:
            lines.append(f"    ... and {len(refusals) - 20} more")
    if not runs.exists():
        lines.append("  no loop runs yet (start one with `appion loop --session NAME`)")
        return "\n".join(lines)
    hour_ago = now - 3600
    for run in runs:
        params = json.loads(run.params or "{}")
        preset = params.get("preset")
        images = m.AcquisitionImageData.objects.filter(session_id=session.id)
        if preset:
            images = images.filter(preset_id__in=r.retrieve_preset_ids(session.id, preset))
        else:
            cams = set(m.CameraEMData.objects.filter(session_id=session.id, align_frames=True)
                       .values_list("id", flat=True))
            images = images.exclude(camera_id__in=cams)
        stamps = [calc_epoch(t) for t in images.values_list("timestamp", flat=True)]
        total = len(stamps)
        arrived_last_hour = sum(1 for t in stamps if t >= hour_ago)
        alive, why = (calc_holder_state(run.hostname, run.pid, run.heartbeat, run.started, now)
                      if run.status == "R" else (False, ""))
        state = {"R": "running" if alive else f"not running (killed? {why.split(': ', 1)[-1]})", "D": "finished",
                 "E": "ended with an error"}.get(run.status or "", run.status or "?")
        lines.append(f"run {run.runname} ({run.steps}; {state}; host {run.hostname} pid {run.pid})")
        rows = list(m.ApLoopExposureData.objects.filter(looprun_id=run.id)
                    .values("image_id", "step", "status", "attempts", "last_error", "arrived", "finished"))
        names = dict(m.AcquisitionImageData.objects.filter(id__in={x["image_id"] for x in rows})
                     .values_list("id", "filename"))
        steps = (run.steps or "").split(",")
        medians = {}
        for label, column, values in calc_column_values(run.id, steps, list({x["image_id"] for x in rows})):
            med = calc_percentile([v for v in values.values() if isinstance(v, (int, float))], 50)
            medians.setdefault(label.split(":")[0], []).append(f"{column.label} {column.format(med)}")
        reused = dict(m.ApLoopStepRunData.objects.filter(looprun_id=run.id, reused=True).values_list("step", "run_id"))
        for step in steps:
            mine = [x for x in rows if x["step"] == step]
            if step in reused and not mine:
                lines.append(f"  {step:<6} reused: the results of an earlier run with the same parameters and program "
                             f"versions (its run row {reused[step]})")
                if medians.get(step):
                    lines.append(f"         median {', '.join(medians[step])}")
                continue
            count = {k: sum(1 for x in mine if x["status"] == k) for k in (DONE, RUNNING, QUEUED, RETRY, FAILED)}
            if not alive:  # rows a loop that is gone left running or retrying are redone by its next start
                count[QUEUED] += count[RUNNING] + count[RETRY]
                count[RUNNING] = count[RETRY] = 0
            done_times = [x["finished"] for x in mine if x["status"] == DONE and x["finished"]]
            out_last_hour = sum(1 for t in done_times if t >= hour_ago)
            backlog = total - count[DONE] - count[FAILED]
            lines.append(f"  {step:<6} done {count[DONE]:>5}  running {count[RUNNING]:>3}  queued {count[QUEUED]:>4}  "
                         f"retrying {count[RETRY]:>3}  failed {count[FAILED]:>3}  backlog {backlog:>4}  "
                         f"in {arrived_last_hour}/h  out {out_last_hour}/h")
            latencies = [x["finished"] - x["arrived"] for x in mine
                         if x["status"] == DONE and x["finished"] and x["arrived"]]
            if medians.get(step):
                lines.append(f"         median {', '.join(medians[step])}")
            if latencies and step == steps[-1]:
                lines.append(f"         latency from registration: p50 {calc_percentile(latencies, 50):.1f} s, "
                             f"p95 {calc_percentile(latencies, 95):.1f} s")
            for x in mine:
                if x["status"] in (FAILED, RETRY):
                    what = "FAILED" if x["status"] == FAILED else "retrying"
                    lines.append(f"    {what} {names.get(x['image_id'], x['image_id'])} {step} "
                                 f"after {x['attempts']} attempt(s): {x['last_error']}")
    return "\n".join(lines)


def calc_exposure_table(session_name: str, runname: str | None = None) -> str:
    """Per exposure of the newest (or named) loop run: every step's status and columns."""
    session = r.retrieve_session(session_name)
    if session is None:
        raise LoopError(f"session {session_name!r} not found")
    runs = m.ApLoopRunData.objects.filter(session_id=session.id)
    run = (runs.filter(runname=runname) if runname else runs).order_by("-id").first()
    if run is None:
        return "no loop run"
    steps = (run.steps or "").split(",")
    rows = list(m.ApLoopExposureData.objects.filter(looprun_id=run.id).values("image_id", "step", "status"))
    status = {(x["image_id"], x["step"]): x["status"] for x in rows}
    image_ids = sorted({x["image_id"] for x in rows})
    names = dict(m.AcquisitionImageData.objects.filter(id__in=image_ids).values_list("id", "filename"))
    columns = calc_column_values(run.id, steps, image_ids)
    head = [f"{'exposure':<24}"] + [f"{s:>8}" for s in steps] + [f"{label:>18}" for label, _, _ in columns]
    lines = [f"run {run.runname}", " ".join(head)]
    for image_id in image_ids:
        cells = [f"{names.get(image_id, image_id)!s:<24}"]
        cells += [f"{status.get((image_id, s), 'done'):>8}" for s in steps]
        cells += [f"{column.format(values.get(image_id)):>18}" for _, column, values in columns]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def calc_demo_table(session_name: str, runname: str) -> str:
    """Per exposure, from the database rows of a run: drift, CTF fit (with the simulated truth when known), time."""
    from appion.motioncorrection.calc.rows import calc_total_drift_px

    session = r.retrieve_session(session_name)
    looprun = m.ApLoopRunData.objects.filter(session_id=session.id, runname=runname).order_by("-id").first()
    if looprun is None:
        return f"no run {runname!r} in session {session_name!r}"
    run_ids = retrieve_step_run_ids(looprun.id)
    ddstackrun_id, acerun_id = run_ids.get("motion"), run_ids.get("ctf")
    pairs = dict(m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=ddstackrun_id)
                 .values_list("source_id", "result_id"))
    trajectories = {t.image_id: t for t in m.ApDDFrameTrajectoryData.objects.filter(ddstackrun_id=ddstackrun_id)}
    ctf_by_image = {c.image_id: c for c in m.ApCtfData.objects.filter(acerun_id=acerun_id)}
    seconds: dict[int, float] = {}
    for image_id, secs in m.ApLoopExposureData.objects.filter(looprun_id=looprun.id).values_list("image_id", "seconds"):
        seconds[image_id] = seconds.get(image_id, 0.0) + (secs or 0.0)
    names = dict(m.AcquisitionImageData.objects.filter(session_id=session.id).values_list("id", "filename"))
    dw_ids = r.retrieve_images_by_filename(session.id, [f"{names[x]}-DW" for x in pairs.values() if x in names])
    head = (f"{'exposure':<18} {'drift px':>8} {'defocus1 µm':>11} {'defocus2 µm':>11} {'astig °':>7} "
            f"{'truth µm':>15} {'fit Å':>6} {'time s':>6}")
    lines = [head, "-" * len(head)]
    for source in sorted(pairs):
        result = pairs[source]
        traj = trajectories.get(result)
        drift = "-"
        if traj is not None:
            xs, ys = parse_seq(traj.pos_x) or [], parse_seq(traj.pos_y) or []
            drift = f"{calc_total_drift_px(list(zip(xs, ys))):.1f}"
        ctf = ctf_by_image.get(dw_ids.get(f"{names.get(result)}-DW")) or ctf_by_image.get(result)
        if ctf is not None:
            fit = ctf.ctffind4_resolution
            cols = (f"{ctf.defocus1 * 1e6:11.3f} {ctf.defocus2 * 1e6:11.3f} {ctf.angle_astigmatism:7.1f}",
                    f"{fit:6.1f}" if fit < 1e4 else f"{'none':>6}")
        else:
            cols = (f"{'-':>11} {'-':>11} {'-':>7}", f"{'-':>6}")
        truth = _read_truth(session, names.get(source, ""))
        tr = f"{min(truth) / 1e4:7.3f}/{max(truth) / 1e4:7.3f}" if truth else f"{'-':>15}"
        lines.append(f"{names.get(source, source)!s:<18} {drift:>8} {cols[0]} {tr} {cols[1]} "
                     f"{seconds.get(source, 0.0):6.1f}")
    lines.append("(defocus as stored for the Appion viewer: defocus1 ≤ defocus2; drift from the trajectory rows; "
                 "time = motion + CTF compute)")
    return "\n".join(lines)


def _read_truth(session, filename: str):
    """(defocus1_A, defocus2_A) from a simulated movie's `<stem>.truth.json`, when there is one."""
    path = Path(session.frame_path or "") / f"{filename}.truth.json"
    try:
        truth = json.loads(path.read_text())
        return float(truth["defocus1_A"]), float(truth["defocus2_A"])
    except (OSError, ValueError, KeyError):
        return None
