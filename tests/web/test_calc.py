"""Pure helpers of the viewer: status roll-up, drift length, thumbnails, paging, read-only guard."""
from __future__ import annotations

import math

import numpy as np
import pytest

from appion.web import calc
from appion.web.retrieve import calc_dashboard, calc_loop_state
from appion.web.server import calc_allowed_hosts, calc_is_read


def st(step, status, error=None, attempts=0):
    return calc.StepState(step, status, attempts, error, 1.0, 2.0, 3.0)


@pytest.mark.parametrize("states, expected", [
    ([], ("new", None)),
    ([st("motion", "done"), st("ctf", "done")], ("done", None)),
    ([st("motion", "done"), st("ctf", "queued")], ("queued", None)),
    ([st("motion", "done"), st("ctf", "running")], ("running", None)),
    ([st("motion", "retry", "OSError: disk full"), st("ctf", "queued")], ("retry", "motion: OSError: disk full")),
    ([st("motion", "failed", "MovieError: bad"), st("ctf", "queued")], ("failed", "motion: MovieError: bad")),
    ([st("motion", "done"), st("ctf", "failed", None)], ("failed", "ctf: failed (no reason recorded)")),
    ([st("motion", "done")], ("queued", None)),  # ctf row not written yet
])
def test_exposure_status_rollup(states, expected):
    assert calc.calc_exposure_status(states, ["motion", "ctf"]) == expected


def test_path_length_uses_every_step_and_the_last_position_when_truncated():
    xs, ys = [0.0, 3.0, 3.0], [0.0, 4.0, 10.0]
    assert calc.calc_path_length_px(xs, ys) == pytest.approx(5.0 + 6.0)
    # 40 frames stored as the first 3 plus last (3, 20): the last segment is added
    assert calc.calc_path_length_px(xs, ys, 3.0, 20.0, 40) == pytest.approx(5.0 + 6.0 + 10.0)
    assert calc.calc_path_length_px(xs, ys, 3.0, 20.0, 3) == pytest.approx(11.0)
    assert calc.calc_path_length_px(None, None) is None
    assert calc.calc_path_length_px([1.0], [2.0]) == 0.0


def test_thumbnail_bins_and_stretches_contrast():
    y, x = np.mgrid[0:1000, 0:600]
    image = (x / 600.0).astype(np.float32)
    image[10, 10] = 1e6  # a hot pixel must not flatten the picture
    thumb = calc.calc_thumbnail(image, 100)
    assert thumb.dtype == np.uint8
    assert thumb.shape == (100, 60)
    row = thumb[50].astype(int)
    assert row[0] <= 5 and row[-1] >= 250
    assert np.all(np.diff(row) >= 0)
    assert calc.calc_thumbnail(np.zeros((64, 64), np.float32), 32).shape == (32, 32)
    with pytest.raises(ValueError, match="2-D"):
        calc.calc_thumbnail(np.zeros((2, 8, 8)), 4)


def test_paging_and_rates():
    assert calc.calc_page_count(0, 100) == 1
    assert calc.calc_page_count(5000, 100) == 50
    assert calc.calc_page_count(5001, 100) == 51
    assert calc.calc_page_number("3", 50) == 3
    assert calc.calc_page_number("999", 50) == 50
    assert calc.calc_page_number("-2", 50) == 1
    assert calc.calc_page_number("x", 50) == 1
    assert calc.calc_page_number(None, 50) == 1
    assert calc.calc_rate_per_hour(30, 3600.0) == 30.0
    assert calc.calc_span_rate_per_hour(11, 0.0, 600.0) == pytest.approx(60.0)
    assert calc.calc_span_rate_per_hour(1, 0.0, 600.0) is None


def test_resolution_and_astigmatism_units():
    assert calc.calc_resolution_A(100000.0) is None
    assert calc.calc_resolution_A(math.inf) is None
    assert calc.calc_resolution_A(3.7) == 3.7
    assert calc.calc_astigmatism_A(1.0e-6, 1.05e-6) == pytest.approx(500.0)


def test_read_only_guard_classifies_statements():
    assert calc_is_read("  SELECT 1")
    assert calc_is_read("PRAGMA journal_mode=WAL")
    assert calc_is_read("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    for sql in ("INSERT INTO x VALUES (1)", "UPDATE x SET a=1", "DELETE FROM x", "DROP TABLE x",
                "CREATE TABLE y (a int)"):
        assert not calc_is_read(sql)


def test_allowed_hosts_and_loop_state_and_dashboard():
    assert calc_allowed_hosts("0.0.0.0") == ["*"]
    assert "localhost" in calc_allowed_hosts("127.0.0.1")
    assert calc_loop_state("R", 100.0, 150.0) == "running"
    assert calc_loop_state("R", 100.0, 1000.0) == "silent"
    assert calc_loop_state("D", None, 0.0) == "done"
    assert calc_dashboard('{"dashboard": "http://127.0.0.1:8787/status"}') == "http://127.0.0.1:8787/status"
    assert calc_dashboard('{"steps": ["motion"]}') is None
    assert calc_dashboard("not json") is None


def test_a_step_skipped_because_the_exposure_was_rejected_is_not_a_failure():
    skipped = st("export", "failed", "not run: rejected by quality: tilt 18.0° > 15°")
    done = [st("motion", "done"), st("ctf", "done"), st("quality", "done")]
    steps = ["motion", "ctf", "quality", "export"]
    assert calc.calc_exposure_status(done + [skipped], steps) == ("done", None)
    assert calc.calc_exposure_status(done + [st("export", "failed", "OSError: disk full")], steps) == (
        "failed", "export: OSError: disk full")


def test_bulk_imports_and_wall_time_rates():
    # 1000 movies registered within 2 s: no microscope does that
    assert calc.calc_is_bulk_import(1000, 100.0, 102.0)
    assert calc.calc_is_bulk_import(5, 100.0, 100.0)
    # a movie every 5 s (720/h) is a fast microscope, not an import; one movie is neither
    assert not calc.calc_is_bulk_import(100, 0.0, 99 * 5.0)
    assert not calc.calc_is_bulk_import(1, 100.0, 100.0)
    assert calc.calc_wall_rate_per_hour(50, 0.0, 1800.0) == pytest.approx(100.0)
    assert calc.calc_wall_rate_per_hour(50, 0.0, 30.0) is None  # under a minute of wall time
    assert calc.calc_wall_rate_per_hour(50, None, 30.0) is None
    assert calc.fmt_duration(2.0) == "2 s" and calc.fmt_duration(600) == "10 min" and calc.fmt_duration(9000) == "2.5 h"


@pytest.mark.parametrize("stored, shown", [
    ((1.0e-6, 1.05e-6, 30.0), (10500.0, 10000.0, -60.0)),   # classic order: the larger is defocus2
    ((1.0e-6, 1.05e-6, -45.0), (10500.0, 10000.0, 45.0)),
    ((1.0e-6, 1.05e-6, 90.0), (10500.0, 10000.0, 0.0)),
    ((1.0e-6, 1.05e-6, -89.0), (10500.0, 10000.0, 1.0)),
    ((1.05e-6, 1.0e-6, 20.0), (10500.0, 10000.0, 20.0)),   # a row already in CTFFIND's order is kept
])
def test_ctffind_convention_from_classic_rows(stored, shown):
    df1, df2, angle = calc.calc_ctffind_defocus(*stored)
    assert (df1, df2, angle) == pytest.approx(shown)
    assert calc.calc_ctffind_defocus(None, 1e-6, 3.0) == (None, None, None)
    assert calc.calc_ctffind_defocus(1e-6, 2e-6, None) == pytest.approx((20000.0, 10000.0, None))
    from appion.base.physics import calc_wrapped_angle_deg

    assert calc_wrapped_angle_deg(270.0) == pytest.approx(90.0)
    assert calc_wrapped_angle_deg(-90.0) == pytest.approx(90.0)


def test_thresholds_text_and_limits():
    thresholds = {"max_ctf_resolution_A": 6.0, "max_total_drift_A": None, "max_astigmatism_A": 1500.0,
                  "max_ice_thickness": 1.2, "max_tilt_deg": 20.0, "reject_crystalline_ice": True}
    assert calc.fmt_thresholds(thresholds) == ("CTF fit resolution ≤ 6 Å, astigmatism ≤ 1500 Å, relative ice "
                                               "thickness ≤ 1.2, tilt ≤ 20°, no crystalline ice")
    assert calc.fmt_thresholds({"max_tilt_deg": None}) == "no limits"
    assert calc.fmt_thresholds(None) == "–"
    assert calc.calc_limit(thresholds, "max_tilt_deg") == 20.0
    assert calc.calc_limit(thresholds, "max_total_drift_A") is None
    assert calc.calc_limit({"max_tilt_deg": True}, "max_tilt_deg") is None
    assert calc.calc_limit(thresholds, None) is None


def test_form_token_and_same_origin():
    secret = b"s" * 32
    token = calc.calc_form_token(secret, "verdict:7")
    assert calc.calc_form_token_ok(secret, "verdict:7", token)
    assert not calc.calc_form_token_ok(secret, "verdict:8", token)
    assert not calc.calc_form_token_ok(b"t" * 32, "verdict:7", token)
    assert not calc.calc_form_token_ok(secret, "verdict:7", "")
    assert not calc.calc_form_token_ok(secret, "verdict:7", None)
    host = "viewer.lab:8000"
    assert calc.calc_is_same_origin(host, "http://viewer.lab:8000", None, "same-origin")
    assert calc.calc_is_same_origin(host, None, "http://viewer.lab:8000/exposure/7/", None)
    assert calc.calc_is_same_origin(host, None, None, None)  # not a browser: the token decides
    assert not calc.calc_is_same_origin(host, "http://evil.example", None, None)
    assert not calc.calc_is_same_origin(host, "null", None, None)
    assert not calc.calc_is_same_origin(host, "http://viewer.lab:8000", None, "cross-site")
    assert not calc.calc_is_same_origin(host, None, "http://evil.example/page", None)
    assert not calc.calc_is_same_origin(None, None, None, None)


def test_backlog_series():
    # arrived, finished, done: one waiting since before the start, one failed, one not finished
    exposures = [(90.0, 160.0, True), (110.0, 170.0, False), (130.0, None, False), (None, None, False)]
    backlog, lag = calc.calc_backlog_series(exposures, 100.0, 220.0)
    assert backlog == [[0.0, 1], [round(10 / 60, 4), 2], [0.5, 3], [1.0, 2], [round(70 / 60, 4), 1], [2.0, 1]]
    assert lag == [[1.0, 70.0]]  # the failed one has no lag
