"""The finished session's summary read from a loop run's rows (appion.notify.retrieve): rejections by reason,
each exposure once, and the medians of the steps' columns."""
from __future__ import annotations

import statistics

import pytest

from tests.web.synthetic import insert_session


def test_run_summary(db, tmp_path):
    from appion.base.db import models as m
    from appion.notify.retrieve import retrieve_run_summary

    s = insert_session("sm", 10, tmp_path / "img", tmp_path / "runs", n_failed=1)
    m.ApLoopStepRunData.objects.create(looprun_id=s.looprun_id, session_id=s.session_id, step="motion",
                                       run_id=s.ddstackrun_id, memo_key="m", reused=False)
    m.ApLoopStepRunData.objects.create(looprun_id=s.looprun_id, session_id=s.session_id, step="ctf",
                                       run_id=s.acerun_id, memo_key="c", reused=False)
    ctf_reason = "rejected by quality: CTF fit resolution above 6 Å"
    reasons = {0: ctf_reason, 1: ctf_reason, 2: "rejected by quality: total drift above 80 Å"}
    for k, reason in reasons.items():  # both later steps carry the reason: the exposure counts once
        m.ApLoopExposureData.objects.filter(looprun_id=s.looprun_id, image_id=s.source_ids[k]).update(
            status="failed", last_error=f"not run: {reason}")
    rejected, medians = retrieve_run_summary(s.looprun_id)
    assert rejected == {"rejected by quality: CTF fit resolution above 6 Å": 2,
                        "rejected by quality: total drift above 80 Å": 1}
    done = [sid for sid, t in s.truth.items() if t["status"] == "done"]
    assert medians["ctf: CTF fit Å"] == pytest.approx(statistics.median(s.truth[i]["resolution_A"] for i in done))
    assert medians["ctf: defocus µm"] == pytest.approx(statistics.median(s.truth[i]["defocus_mean_um"] for i in done))
