"""The quality step's rows: judged with the thresholds in force (changed in the config file between two
exposures), hidden in ViewerImageStatus when rejected, idempotent, what `done` reports, columns, and a
person's verdict overriding the automatic one."""
import math

import pytest

from appion.base.exposure import ExposureInput
from appion.base.steps import StepInput, StepRun
from appion.ctfestimation.records import CtfDone
from appion.motioncorrection.calc.rows import calc_align_stats_fields, calc_trajectory_fields
from appion.motioncorrection.records import AlignedImage
from appion.quality.records import QualityRecord, QualitySettings, Thresholds

N_FRAMES = 25
DOSE = 25.0  # e/Å² in 25 frames: steps 1-4 are early


def _positions(scale: float):
    """A zigzag: every step is scale·√2 long."""
    return [(scale * i, scale * (i % 2)) for i in range(N_FRAMES)]


def _exposure(m, mstore, session, rundir, name: str, scale: float):
    src = m.AcquisitionImageData.objects.create(session=session, filename=name, image=f"{name}.mrc")
    ddrun = mstore.store_ddstack_run(session.id, None, "r1", rundir, 1.0, "appion")
    sum_id, dw_id = mstore.store_aligned_images(src.id, f"{name}-a", f"{name}-a-DW", (1024, 1024), 1.0, "a")
    positions = _positions(scale)
    (rundir / f"{name}_st_Log.txt").write_text("Sum Frame #000 - #024 (Reference Frame #012):\n" + "".join(
        f"......Add Frame #{i:03d} with xy shift: {x:.5f} {y:.5f}\n" for i, (x, y) in enumerate(positions)))
    mstore.store_motion_rows(ddrun.id, src.id, sum_id, calc_trajectory_fields(positions),
                             calc_align_stats_fields(positions, 1.25))
    inp = ExposureInput(image_id=src.id, filename=name, movie_path="", image_dir=str(rundir), preset_name="en",
                        pixel_size_A=1.25, voltage_kV=300, cs_mm=2.7, dose_e_per_A2=DOSE, n_frames=N_FRAMES,
                        gain_path=None, dark_path=None, frame_rotate=0, frame_flip=0, defects=(None, None, None),
                        nominal_defocus_m=None, tilt_deg=0.0, arrived=0.0)
    upstream = {"motion": AlignedImage(src.id, dw_id, f"{name}-a-DW", 1.25, sum_id),
                "ctf": CtfDone(src.id, dw_id, 15400.0, 14600.0, 4.2)}
    return StepInput(inp, upstream, str(rundir)), {src.id, sum_id, dw_id}


def _record(task, tilt):
    return QualityRecord(task.exposure.image_id, task.upstream["motion"].image_id, None, tilt, 10.0, None, 1.08, False,
                         None, 0.5, "worker")


def _hidden(m, ids):
    return {i for i, s in m.ViewerImageStatus.objects.filter(image_id__in=ids).values_list("image_id", "status")
            if s == "hidden"}


def test_judge_store_hide_done_and_manual(db, tmp_path, monkeypatch):
    from appion.base.db import models as m
    from appion.motioncorrection import store as mstore
    from appion.quality import steprows

    config = tmp_path / "config.toml"
    monkeypatch.setenv("APPION_CONFIG", str(config))  # the loop's config file (absent at the start)
    session = m.SessionData.objects.create(name="q1")
    rundir = tmp_path / "ddstack" / "r1"
    rundir.mkdir(parents=True)
    first, first_ids = _exposure(m, mstore, session, rundir, "q1_00001en", 1.0)
    second, second_ids = _exposure(m, mstore, session, rundir, "q1_00002en", 1.0)
    third, third_ids = _exposure(m, mstore, session, rundir, "q1_00003en", 6.0)

    settings = QualitySettings(thresholds=Thresholds(max_ctf_resolution_A=6.0, max_total_drift_A=80.0,
                                                     max_tilt_deg=20.0))
    run = StepRun("quality", None, tmp_path / "quality" / "r1", session.id, "q1", "r1", settings)
    run = StepRun("quality", steprows.store_quality_run(run), run.rundir, session.id, "q1", "r1", settings)
    assert steprows.store_quality_run(run) == run.run_id  # identical: reused

    calls = []
    out = steprows.store_quality_result(_record(first, 25.0), run, first, inside=lambda: calls.append(1))
    assert out.rejected == "tilt 25.0° > 20°" and calls == [1]
    row = m.ApQualityData.objects.get(qualityrun_id=run.run_id, image_id=first.exposure.image_id)
    step_A = math.sqrt(2) * 1.25  # every frame from the classic log, in Å of the aligned sum
    assert row.total_drift_A == pytest.approx(24 * step_A) and row.early_drift_A == pytest.approx(4 * step_A)
    assert row.late_drift_A == pytest.approx(20 * step_A)
    assert (row.ctf_resolution_A, row.astigmatism_A, row.defocus_A) == (4.2, 800.0, 15000.0)
    assert row.rejected and row.reason == "tilt 25.0° > 20°" and '"max_tilt_deg": 20.0' in row.thresholds
    assert _hidden(m, first_ids) == first_ids  # the exposure and its aligned sums
    # storing again (a restart) writes nothing and gives the same verdict
    again = steprows.store_quality_result(_record(first, 25.0), run, first, inside=lambda: calls.append(2))
    assert again.rejected == out.rejected and calls == [1]
    assert m.ApQualityData.objects.filter(image_id=first.exposure.image_id).count() == 1
    assert m.ViewerImageStatus.objects.filter(image_id__in=first_ids).count() == 3

    # a person loosens the tilt limit in the config file while the loop runs: the next exposure passes
    config.write_text("[curation]\nmax_tilt = 30\n")
    assert steprows.store_quality_result(_record(second, 25.0), run, second).rejected is None
    assert not _hidden(m, second_ids)
    # and tightens the drift limit: the trajectory row is used when the log is gone (first 20 positions + last)
    (rundir / "q1_00003en_st_Log.txt").unlink()
    config.write_text("[curation]\nmax_tilt = 30\nmax_total_drift = 100\n")
    out3 = steprows.store_quality_result(_record(third, 5.0), run, third)
    fallback_A = (19 * math.sqrt(2) + math.hypot(5, 1)) * 6 * 1.25  # frames 0-19, then straight to frame 24
    assert out3.metrics.total_drift_A == pytest.approx(fallback_A)
    assert out3.rejected == f"total drift {fallback_A:.1f} Å > 100 Å"

    ids = [first.exposure.image_id, second.exposure.image_id, third.exposure.image_id]
    done = steprows.retrieve_quality_outputs(run, ids, {})
    assert {i: o.rejected is not None for i, o in done.items()} == {ids[0]: True, ids[1]: False, ids[2]: True}
    assert steprows.read_tilt_deg(run.run_id, ids) == {ids[0]: 25.0, ids[1]: 25.0, ids[2]: 5.0}
    assert steprows.read_rejected_reason(run.run_id, ids) == {ids[0]: "tilt 25.0° > 20°", ids[2]: out3.rejected}
    assert steprows.read_ice_thickness(run.run_id, ids)[ids[1]] == 1.08

    # a person's verdicts win: the first accepted (shown again in the viewer), the second rejected (hidden)
    steprows.store_manual_verdict(ids[0], True, "tilt is fine for this project")
    steprows.store_manual_verdict(ids[1], False, "thick ice at the edge")
    assert not _hidden(m, first_ids) and _hidden(m, second_ids) == second_ids
    done = steprows.retrieve_quality_outputs(run, ids, {})
    assert done[ids[0]].rejected is None and done[ids[0]].manual
    assert done[ids[1]].rejected == "by hand: thick ice at the edge"
    assert steprows.read_rejected_reason(run.run_id, ids)[ids[0]] == "accepted by hand"
    assert not _hidden(m, first_ids)  # `done` reads, it never hides again what a person showed
    # a person's acceptance given before the quality step runs: stored as rejected, but not hidden
    fourth, fourth_ids = _exposure(m, mstore, session, rundir, "q1_00004en", 1.0)
    steprows.store_manual_verdict(fourth.exposure.image_id, True, "keep")
    out4 = steprows.store_quality_result(_record(fourth, 40.0), run, fourth)
    assert out4.rejected is None and out4.manual and not _hidden(m, fourth_ids)
    assert m.ApQualityData.objects.get(image_id=fourth.exposure.image_id).reason == "tilt 40.0° > 30°"
    with pytest.raises(ValueError, match="no image"):
        steprows.store_manual_verdict(999999, False, "x")
