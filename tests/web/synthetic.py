"""Insert a processed session directly (bulk rows shaped like the loop's), for viewer tests and benchmarks/web.py.

Rows mirror what appion.loop.core writes: aligned sums `<movie>-a` and `<movie>-a-DW` as new images
with an align-frames camera, trajectory and stats on the aligned sum, the CTF row on the
dose-weighted sum, pair rows, and one ApLoopExposureData per exposure and step.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from appion.base.db import models as m
from appion.base.db.fields import format_seq


@dataclass
class Synthetic:
    session_id: int
    looprun_id: int
    ddstackrun_id: int
    acerun_id: int
    source_ids: list[int]
    result_ids: list[int]
    dw_ids: list[int]
    truth: dict[int, dict] = field(default_factory=dict)  # source id -> expected displayed values
    name: str = ""
    camera_id: int = 0
    aligned_camera_id: int = 0
    preset_id: int = 0
    apix: float = 1.0


def calc_trajectory(k: int, n_frames: int = 16) -> tuple[list[float], list[float]]:
    """A deterministic drift track in pixels (different per exposure)."""
    xs = [round(0.6 * i + 0.05 * k % 7, 5) for i in range(n_frames)]
    ys = [round(-0.3 * i * (1 + (k % 3) * 0.5), 5) for i in range(n_frames)]
    return xs, ys


def insert_session(name: str, n: int, image_dir: Path, run_dir: Path, n_failed: int = 0, n_pending: int = 0,
                   apix: float = 1.0, now: float | None = None) -> Synthetic:
    """A session of n exposures: n - n_failed - n_pending fully processed, n_failed failed in motion,
    the newest n_pending still queued.  Times are spread over the last n * 5 seconds."""
    now = time.time() if now is None else now
    session = m.SessionData.objects.create(name=name, image_path=str(image_dir), frame_path=str(image_dir))
    tem = m.InstrumentData.objects.create(name="tem", cs=2.7e-3)
    cam = m.CameraEMData.objects.create(session=session, save_frames=True, align_frames=False, nframes=16,
                                        dimension_x=512, dimension_y=512)
    acam = m.CameraEMData.objects.create(session=session, save_frames=False, align_frames=True,
                                         dimension_x=512, dimension_y=512)
    preset = m.PresetData.objects.create(session=session, tem=tem, name="en", magnification=100000, dose=24e20)
    sources = m.AcquisitionImageData.objects.bulk_create(
        [m.AcquisitionImageData(session=session, filename=f"{name}_{k:05d}en", image=f"{name}_{k:05d}en.mrc",
                                camera=cam, preset=preset) for k in range(n)])
    source_ids = [s.id for s in sources]
    processed = list(range(0, n - n_failed - n_pending))
    failed = list(range(n - n_failed - n_pending, n - n_pending))
    results = m.AcquisitionImageData.objects.bulk_create(
        [m.AcquisitionImageData(session=session, filename=f"{name}_{k:05d}en-a", image=f"{name}_{k:05d}en-a.mrc",
                                camera=acam) for k in processed])
    dws = m.AcquisitionImageData.objects.bulk_create(
        [m.AcquisitionImageData(session=session, filename=f"{name}_{k:05d}en-a-DW",
                                image=f"{name}_{k:05d}en-a-DW.mrc", camera=acam) for k in processed])
    dd_path = m.ApPathData.objects.create(path=str(run_dir / "ddstack" / "run1"))
    ace_path = m.ApPathData.objects.create(path=str(run_dir / "ctf" / "run1"))
    ddrun = m.ApDDStackRunData.objects.create(runname="run1", session_id=session.id, path=dd_path)
    acerun = m.ApAceRunData.objects.create(name="run1", session_id=session.id, path=ace_path, hidden=False)
    looprun = m.ApLoopRunData.objects.create(runname="run1", session_id=session.id, steps="motion,ctf",
                                             params='{"steps": ["motion", "ctf"], "preset": null}',
                                             ddstackrun=ddrun, acerun=acerun, path=dd_path, status="R",
                                             hostname="testhost", pid=1, started=now - 5 * n - 60, heartbeat=now)
    pairs, trajs, stats, ctfs, loops = [], [], [], [], []
    synthetic = Synthetic(session.id, looprun.id, ddrun.id, acerun.id, source_ids, [r.id for r in results],
                          [d.id for d in dws], name=name, camera_id=cam.id, aligned_camera_id=acam.id,
                          preset_id=preset.id, apix=apix)
    for j, k in enumerate(processed):
        sid, rid, did = source_ids[k], results[j].id, dws[j].id
        xs, ys = calc_trajectory(k)
        trajs.append(m.ApDDFrameTrajectoryData(image_id=rid, ddstackrun=ddrun, pos_x=format_seq(xs),
                                               pos_y=format_seq(ys), last_x=xs[-1], last_y=ys[-1],
                                               number_of_positions=len(xs), reference_index=len(xs) // 2))
        stats.append(m.ApDDAlignStatsData(image_id=rid, ddstackrun=ddrun, apix=apix, median_shift_value=0.5))
        pairs.append(m.ApDDAlignImagePairData(source_id=sid, result_id=rid, ddstackrun=ddrun))
        d1, d2 = 1.0e-6 + 1e-8 * (k % 50), 1.05e-6 + 1e-8 * (k % 50)
        res = 3.5 + (k % 10) * 0.25
        ctfs.append(m.ApCtfData(acerun=acerun, image_id=did, defocus1=d1, defocus2=d2, angle_astigmatism=30.0 + k % 40,
                                ctffind4_resolution=res, cross_correlation=0.1 + (k % 5) * 0.01, cs=2.7,
                                amplitude_contrast=0.07, graph1=f"{name}_{k:05d}en-a-DW.png"))
        path = sum(math.hypot(xs[i + 1] - xs[i], ys[i + 1] - ys[i]) for i in range(len(xs) - 1))
        # shown in CTFFIND's convention: defocus 1 the larger (classic stores it as defocus2), its angle 90° off
        synthetic.truth[sid] = {"drift": f"{path * apix:.1f}", "defocus1": f"{d2 * 1e6:.3f}",
                                "astig": f"{(d2 - d1) * 1e10:.0f} Å @ {30.0 + k % 40 - 90.0:.0f}°",
                                "defocus2": f"{d1 * 1e6:.3f}", "resolution": f"{res:.1f}",
                                "score": f"{0.1 + (k % 5) * 0.01:.3f}", "status": "done",
                                "drift_A": path * apix, "resolution_A": res, "defocus_mean_um": (d1 + d2) * 0.5e6}
    t0 = now - 5 * n
    for k, sid in enumerate(source_ids):
        arrived = t0 + 5 * k
        if k in failed:
            loops.append(m.ApLoopExposureData(looprun=looprun, image_id=sid, step="motion", status="failed",
                                              attempts=3, last_error=f"MovieError: {name}_{k:05d}en.tif: truncated "
                                              "movie (frame 7 of 16 unreadable)", arrived=arrived,
                                              submitted=arrived + 1, finished=arrived + 9))
            loops.append(m.ApLoopExposureData(looprun=looprun, image_id=sid, step="ctf", status="queued",
                                              attempts=0, arrived=arrived))
            synthetic.truth[sid] = {"status": "failed",
                                    "reason": f"motion: MovieError: {name}_{k:05d}en.tif: truncated movie"}
        elif k in processed:
            for step, dt in (("motion", 3.0), ("ctf", 6.0)):
                loops.append(m.ApLoopExposureData(looprun=looprun, image_id=sid, step=step, status="done",
                                                  attempts=0, arrived=arrived, submitted=arrived + 1,
                                                  finished=arrived + dt, seconds=2.0))
        else:
            for step in ("motion", "ctf"):
                loops.append(m.ApLoopExposureData(looprun=looprun, image_id=sid, step=step, status="queued",
                                                  attempts=0, arrived=arrived))
            synthetic.truth[sid] = {"status": "queued"}
    for model, rows in ((m.ApDDFrameTrajectoryData, trajs), (m.ApDDAlignStatsData, stats),
                        (m.ApDDAlignImagePairData, pairs), (m.ApCtfData, ctfs), (m.ApLoopExposureData, loops)):
        model.objects.bulk_create(rows, batch_size=2000)
    return synthetic


def add_queued_exposure(s: Synthetic, k: int, now: float | None = None) -> int:
    """A new movie registered and queued by the loop (no results yet); returns its image id."""
    now = time.time() if now is None else now
    image = m.AcquisitionImageData.objects.create(session_id=s.session_id, filename=f"{s.name}_{k:05d}en",
                                                  image=f"{s.name}_{k:05d}en.mrc", camera_id=s.camera_id,
                                                  preset_id=s.preset_id)
    for step in ("motion", "ctf"):
        m.ApLoopExposureData.objects.create(looprun_id=s.looprun_id, image_id=image.id, step=step, status="queued",
                                            attempts=0, arrived=now)
    s.source_ids.append(image.id)
    s.truth[image.id] = {"status": "queued"}
    return image.id


def complete_exposure(s: Synthetic, image_id: int, k: int, now: float | None = None) -> dict:
    """Write the results of a queued exposure the way the loop does (pair row last); returns its truth."""
    now = time.time() if now is None else now
    result = m.AcquisitionImageData.objects.create(session_id=s.session_id, filename=f"{s.name}_{k:05d}en-a",
                                                   image=f"{s.name}_{k:05d}en-a.mrc", camera_id=s.aligned_camera_id)
    dw = m.AcquisitionImageData.objects.create(session_id=s.session_id, filename=f"{s.name}_{k:05d}en-a-DW",
                                               image=f"{s.name}_{k:05d}en-a-DW.mrc", camera_id=s.aligned_camera_id)
    xs, ys = calc_trajectory(k)
    m.ApDDFrameTrajectoryData.objects.create(image_id=result.id, ddstackrun_id=s.ddstackrun_id, pos_x=format_seq(xs),
                                             pos_y=format_seq(ys), last_x=xs[-1], last_y=ys[-1],
                                             number_of_positions=len(xs), reference_index=len(xs) // 2)
    m.ApDDAlignStatsData.objects.create(image_id=result.id, ddstackrun_id=s.ddstackrun_id, apix=s.apix)
    m.ApDDAlignImagePairData.objects.create(source_id=image_id, result_id=result.id, ddstackrun_id=s.ddstackrun_id)
    m.ApCtfData.objects.create(acerun_id=s.acerun_id, image_id=dw.id, defocus1=2.345e-6, defocus2=2.456e-6,
                               angle_astigmatism=-12.0, ctffind4_resolution=4.321, cross_correlation=0.2346)
    m.ApLoopExposureData.objects.filter(looprun_id=s.looprun_id, image_id=image_id).update(
        status="done", submitted=now - 5, finished=now)
    path = sum(math.hypot(xs[i + 1] - xs[i], ys[i + 1] - ys[i]) for i in range(len(xs) - 1))
    truth = {"drift": f"{path * s.apix:.1f}", "defocus1": "2.456", "defocus2": "2.345", "astig": "1110 Å @ 78°",
             "resolution": "4.3",
             "score": "0.235", "status": "done"}
    s.truth[image_id] = truth
    return truth


THRESHOLDS = {"max_ctf_resolution_A": 5.0, "max_total_drift_A": None, "max_astigmatism_A": None,
              "max_ice_thickness": 1.08, "max_tilt_deg": 15.0, "reject_crystalline_ice": False}


def calc_quality_metrics(k: int, truth: dict) -> dict:
    """Deterministic quality metrics of processed exposure k (drift, resolution and defocus as its other rows)."""
    return {"total_drift_A": truth["drift_A"], "early_drift_A": truth["drift_A"] * 0.4,
            "late_drift_A": truth["drift_A"] * 0.6, "ctf_resolution_A": truth["resolution_A"],
            "astigmatism_A": 500.0, "defocus_A": truth["defocus_mean_um"] * 1e4, "tilt_deg": (k % 7) * 3.0,
            "tilt_axis_deg": 10.0 * (k % 4), "ice_thickness": round(1.02 + 0.01 * (k % 9), 4),
            "crystalline_ice": False}


def calc_rejection(metrics: dict, thresholds: dict) -> str | None:
    """The quality step's own verdict on these metrics under these limits."""
    from appion.quality.calc.internal.verdict import calc_rejection as judge
    from appion.quality.records import Metrics, Thresholds

    return judge(Metrics(**metrics), Thresholds(**thresholds))


def add_quality(s: Synthetic, thresholds_of=lambda k: THRESHOLDS, later_step: bool = False) -> int:
    """Turn the session's loop run into a motion,ctf,quality run as the loop stores one: step run rows, a quality
    run, one ApQualityData per processed exposure judged under thresholds_of(k) (rejected ones also hidden in
    ViewerImageStatus, as the quality step does) and a loop row per exposure for the quality step.  With
    later_step, a fourth step 'export' follows, recorded as not run for the rejected exposures (as the loop does).
    Sets truth[...]["verdict"] / ["verdict_reason"]; returns the quality run id."""
    steps = ("motion", "ctf", "quality") + (("export",) if later_step else ())
    looprun = m.ApLoopRunData.objects.get(id=s.looprun_id)
    looprun.steps = ",".join(steps)
    looprun.save(update_fields=["steps"])
    qrun = m.ApQualityRunData.objects.create(runname="run1", session_id=s.session_id, params="{}")
    for step, run_id in (("motion", s.ddstackrun_id), ("ctf", s.acerun_id), ("quality", qrun.id)):
        m.ApLoopStepRunData.objects.create(looprun_id=s.looprun_id, session_id=s.session_id, step=step, run_id=run_id,
                                           memo_key=f"{step}-key", reused=False)
    loops = {(i, st): r for i, st, r in m.ApLoopExposureData.objects.filter(looprun_id=s.looprun_id)
             .values_list("image_id", "step", "arrived")}
    rows, status, hidden = [], [], []
    for k, sid in enumerate(s.source_ids):
        truth = s.truth[sid]
        arrived = loops.get((sid, "motion"))
        if truth["status"] != "done":
            for step in steps[2:]:
                status.append(m.ApLoopExposureData(looprun_id=s.looprun_id, image_id=sid, step=step, status="queued",
                                                   attempts=0, arrived=arrived))
            continue
        metrics = calc_quality_metrics(k, truth)
        thresholds = thresholds_of(k)
        reason = calc_rejection(metrics, thresholds)
        rows.append(m.ApQualityData(qualityrun_id=qrun.id, image_id=sid, rejected=reason is not None, reason=reason,
                                    thresholds=json.dumps(thresholds, sort_keys=True), **metrics))
        status.append(m.ApLoopExposureData(looprun_id=s.looprun_id, image_id=sid, step="quality", status="done",
                                           attempts=0, arrived=arrived, submitted=arrived + 6, finished=arrived + 8))
        if later_step:
            status.append(m.ApLoopExposureData(
                looprun_id=s.looprun_id, image_id=sid, step="export", attempts=0, arrived=arrived,
                status="failed" if reason else "done", finished=arrived + 9,
                last_error=f"not run: rejected by quality: {reason}" if reason else None))
        if reason:
            hidden.append(m.ViewerImageStatus(session_id=s.session_id, image_id=sid, status="hidden"))
        truth.update(verdict="rejected" if reason else "accepted", verdict_reason=reason, metrics=metrics,
                     thresholds=thresholds)
    m.ApQualityData.objects.bulk_create(rows)
    m.ApLoopExposureData.objects.bulk_create(status)
    m.ViewerImageStatus.objects.bulk_create(hidden)
    return qrun.id
