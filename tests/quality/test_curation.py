"""Curation: thresholds from options and [curation], verdicts with reasons, limits changed while running;
early/late drift."""
import os
import time

import pytest

from appion.quality.calc.internal.motion import calc_drift_A
from appion.quality.calc.internal.verdict import (CurationError, calc_rejection, calc_thresholds_from_table,
                                                  calc_thresholds_text)
from appion.quality.curation import LiveThresholds
from appion.quality.records import Metrics, Thresholds

LIMITS = Thresholds(max_ctf_resolution_A=6.0, max_total_drift_A=80.0, max_astigmatism_A=1500.0,
                    max_ice_thickness=1.2, max_tilt_deg=20.0)
GOOD = Metrics(total_drift_A=20.0, early_drift_A=8.0, late_drift_A=12.0, ctf_resolution_A=3.5, astigmatism_A=300.0,
               defocus_A=15000.0, tilt_deg=4.0, tilt_axis_deg=80.0, ice_thickness=1.05, crystalline_ice=False)


def test_verdicts_name_every_failed_limit():
    assert calc_rejection(GOOD, LIMITS) is None
    assert calc_rejection(GOOD, Thresholds()) is None
    bad = Metrics(**{**GOOD.__dict__, "ctf_resolution_A": 9.25, "total_drift_A": 120.0, "tilt_deg": 31.0})
    assert calc_rejection(bad, LIMITS) == \
        "CTF fit resolution 9.2 Å > 6 Å; total drift 120.0 Å > 80 Å; tilt 31.0° > 20°"
    assert calc_rejection(Metrics(**{**GOOD.__dict__, "ice_thickness": 1.31}), LIMITS) == \
        "relative ice thickness 1.310 > 1.2"
    assert calc_rejection(Metrics(**{**GOOD.__dict__, "astigmatism_A": 2000.0}), LIMITS) == \
        "astigmatism 2000 Å > 1500 Å"
    crystalline = Metrics(**{**GOOD.__dict__, "crystalline_ice": True})
    assert calc_rejection(crystalline, LIMITS) is None
    assert calc_rejection(crystalline, Thresholds(reject_crystalline_ice=True)) == "crystalline ice"
    # an unusable image is rejected whatever the limits; unmeasured metrics fail no limit
    broken = Metrics(image_problem="blank image: every pixel is 0 (an all-black sum)")
    assert calc_rejection(broken, Thresholds()) == "image: blank image: every pixel is 0 (an all-black sum)"
    assert calc_rejection(Metrics(ctf_resolution_A=5.0), LIMITS) is None


def test_curation_table():
    t = calc_thresholds_from_table({"max-ctf-resolution": 5, "max_total_drift": 50.5, "max_tilt": False,
                                    "reject_crystalline_ice": True}, LIMITS)
    assert (t.max_ctf_resolution_A, t.max_total_drift_A, t.max_tilt_deg, t.reject_crystalline_ice) == \
        (5.0, 50.5, None, True)
    assert t.max_ice_thickness == 1.2  # not named: the base value stays
    assert calc_thresholds_text(t) == "CTF fit ≤ 5 Å, drift ≤ 50.5 Å, astigmatism ≤ 1500 Å, ice ≤ 1.2, " \
                                      "no crystalline ice"
    for bad in ({"max_ctf": 5}, {"max_tilt": "20"}, {"max_tilt": -1}, {"max_tilt": True},
                {"reject_crystalline_ice": 1}):
        with pytest.raises(CurationError):
            calc_thresholds_from_table(bad)


def _write(path, text):
    path.write_text(text)
    stamp = time.time() + (getattr(_write, "n", 0) + 1)  # distinct modification times even on coarse clocks
    _write.n = getattr(_write, "n", 0) + 1
    os.utime(path, (stamp, stamp))


def test_thresholds_follow_the_config_file_while_running(tmp_path):
    config = tmp_path / "config.toml"
    _write(config, "[curation]\nmax_total_drift = 80\n")
    live = LiveThresholds(Thresholds(max_ctf_resolution_A=6.0, max_tilt_deg=20.0), config, {"max_total_drift": 80})
    assert live.current() == Thresholds(max_ctf_resolution_A=6.0, max_total_drift_A=80.0, max_tilt_deg=20.0)
    _write(config, "[database]\n\n[curation]\nmax_total_drift = 40\nmax_tilt = false\n")
    assert live.current() == Thresholds(max_ctf_resolution_A=6.0, max_total_drift_A=40.0)
    _write(config, "[curation\nmax_total_drift = ")  # half-saved: the limits in force stay
    assert live.current().max_total_drift_A == 40.0
    _write(config, "[curation]\nmax_totl_drift = 1\n")  # a typo: the limits in force stay
    assert live.current().max_total_drift_A == 40.0
    _write(config, "[paths]\n")  # the table removed: the command line's values again
    assert live.current() == Thresholds(max_ctf_resolution_A=6.0, max_tilt_deg=20.0)
    config.unlink()
    assert live.current() == Thresholds(max_ctf_resolution_A=6.0, max_tilt_deg=20.0)
    with pytest.raises(CurationError, match="config file"):
        LiveThresholds(Thresholds(), config, {"max_drift": 3})


def test_early_and_late_drift():
    # 6 frames of 2 e/Å²: steps 1-2 start at ≤ 4 e/Å² (early), steps 3-5 are late
    positions = [(0, 0), (3, 4), (6, 8), (6, 9), (6, 10), (7, 10)]
    d = calc_drift_A(positions, 0.5, 2.0)
    assert (d.total_A, d.early_A, d.late_A) == pytest.approx((6.5, 5.0, 1.5))
    assert calc_drift_A(positions, 0.5, None).early_A is None
    assert calc_drift_A([(1, 1)], 1.0, 1.0).total_A == 0.0
