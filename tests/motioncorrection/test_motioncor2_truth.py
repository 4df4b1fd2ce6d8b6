"""The MotionCor2 path's trajectory against the simulator's truth, for TIFF, MRC and EER movies.

MotionCor2 is closed source and needs a CUDA GPU, so these tests run the wrapper
(`run_motioncor2`, `MotionCorOutput.displacement_px`) against tests/standins/motioncor2, which
reads each format in the real program's orientation: MRC rows as stored, TIFF rows bottom-up
(upside down relative to tifffile), EER rows in stream order; and prints MotionCor's shifts (the
correction, relative to its reference frame).  The sources for those facts are in
docs/conventions.md, "MotionCor2 orientation".  Movies are small (512² × 8 frames, a few seconds
in all); "within 0.1 px" is the RMS over frames of the error after removing the constant offset
between the two origins (MotionCor's reference frame is the middle one, the truth's the first).
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from appion.base.simulate.calc import MovieParams, calc_movie
from appion.base.simulate.store import write_simulated_session
from appion.motioncorrection.calc.external import (
    MotionCor2Params,
    calc_displacement_from_motioncor_shifts,
    calc_displacement_from_relion_shifts,
    run_motioncor2,
)

REPO = Path(__file__).resolve().parents[2]
STANDIN = str(REPO / "tests" / "standins" / "motioncor2")
# 512² × 8 frames at 5 e/Å² per frame (1 Å pixels): enough signal for the stand-in's global
# alignment to land well inside 0.1 px; session seed 1 drifts ~5 px in x and ~6 px in y, so a sign or
# orientation error on either axis is several pixels.
MOVIE = MovieParams(shape=(512, 512), n_frames=8, dose_per_frame_e_per_A2=5.0, drift_total_px=8.0,
                    pixel_size_A=1.0)
TOLERANCE_PX = 0.1


def _rms_after_offset(estimate: np.ndarray, truth: np.ndarray) -> float:
    """RMS over frames of |estimate - truth| once the best constant offset (the origin) is removed."""
    e = np.asarray(estimate, float) - np.asarray(truth, float)
    return float(np.sqrt(np.mean(np.sum((e - e.mean(axis=0)) ** 2, axis=1))))


@pytest.fixture
def standin_version(monkeypatch):
    monkeypatch.setenv("MOTIONCOR_STANDIN_VERSION", "MotionCor2 version 1.6.4")
    monkeypatch.delenv("MOTIONCOR_STANDIN_FAIL", raising=False)
    monkeypatch.delenv("MOTIONCOR_STANDIN_ARGV_JSON", raising=False)


def _simulated(tmp_path: Path, fmt: str) -> tuple[Path, np.ndarray]:
    """One movie written by the session simulator (`appion simulate session --format fmt`) and its truth."""
    (movie,) = write_simulated_session(tmp_path / fmt, 1, MOVIE, fmt=fmt, name="truth", seed=1)
    truth = json.loads(movie.with_name(movie.name.split(".frames.")[0] + ".truth.json").read_text())
    d = np.asarray(truth["shifts_px"], float)
    assert np.ptp(d[:, 0]) > 2.0 and np.ptp(d[:, 1]) > 2.0  # both axes move: an error on either shows
    return movie, d


@pytest.mark.parametrize("fmt, frame_ref", [("tiff", None), ("mrc", None), ("tiff", 0)])
def test_motioncor2_path_recovers_the_simulated_trajectory(tmp_path, standin_version, fmt, frame_ref):
    """TIFF and MRC through run_motioncor2: displacement within 0.1 px of the truth, and the
    alternatives (TIFF read the other way up; the opposite sign) are clearly wrong."""
    movie, d = _simulated(tmp_path, fmt)
    out = run_motioncor2(STANDIN, movie, tmp_path / "out" / "truth-a.mrc",
                         MotionCor2Params(pixel_size_A=1.0, frame_ref=frame_ref), timeout_s=300)
    assert out.movie_kind == fmt
    ref = 0 if frame_ref == 0 else len(d) // 2  # MotionCor's reference frame prints (0, 0)
    assert out.shifts_px[ref].tolist() == [0.0, 0.0]
    estimate = out.displacement_px
    assert estimate.shape == d.shape and estimate[0].tolist() == [0.0, 0.0]
    assert _rms_after_offset(estimate, d) < TOLERANCE_PX
    assert _rms_after_offset(estimate * [1.0, -1.0], d) > 2.0  # the other y orientation
    assert _rms_after_offset(-estimate, d) > 2.0  # the other sign
    # RELION copies MotionCor2's shifts unchanged and reads TIFF the same way up: same conversion
    assert np.allclose(calc_displacement_from_relion_shifts(out.shifts_px - out.shifts_px[0], fmt), estimate)


def test_tiff_sum_is_written_upside_down_relative_to_the_same_frames_as_mrc(tmp_path, standin_version):
    """MotionCor writes the aligned sum in its own orientation: for a TIFF movie that is the MRC
    movie's sum of the same frames, upside down; the printed y shifts change sign."""
    movie_tif, _ = _simulated(tmp_path, "tiff")
    movie_mrc, _ = _simulated(tmp_path, "mrc")  # same seed: the same frames
    params = MotionCor2Params(pixel_size_A=1.0)
    o_tif = run_motioncor2(STANDIN, movie_tif, tmp_path / "t" / "a.mrc", params, timeout_s=300)
    o_mrc = run_motioncor2(STANDIN, movie_mrc, tmp_path / "m" / "a.mrc", params, timeout_s=300)
    assert np.allclose(o_tif.shifts_px, o_mrc.shifts_px * [1.0, -1.0], atol=2e-3)
    assert np.allclose(o_tif.displacement_px, o_mrc.displacement_px, atol=2e-3)
    sum_tif, sum_mrc = mrcfile.read(o_tif.aligned_mrc_path), mrcfile.read(o_mrc.aligned_mrc_path)
    # equal up to the Fourier shift's Nyquist row (the sub-pixel shift treats +½ and −½ cycles alike)
    corr = lambda a, b: float(np.corrcoef(a.ravel(), b.ravel())[0, 1])  # noqa: E731
    assert corr(sum_tif, sum_mrc[::-1, :]) > 0.98
    assert corr(sum_tif, sum_mrc) < 0.2


def _load_eer_writer():
    spec = importlib.util.spec_from_file_location("eer_writer", REPO / "tests" / "base" / "eer_writer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_motioncor2_path_recovers_the_simulated_trajectory_from_eer(tmp_path, standin_version):
    """EER (read in stream order, not flipped): each of the 8 simulated fractions is spread over 12
    raw EER frames (at most one electron per pixel per raw frame, as the camera records), MotionCor
    integrates them back with the wrapper's FmIntFile, and the trajectory matches the truth."""
    eer = _load_eer_writer()
    group = 12
    frames, truth = calc_movie(replace(MOVIE, seed=4))
    d = np.asarray(truth["shifts_px"], float)
    assert np.ptp(d[:, 0]) > 2.0 and np.ptp(d[:, 1]) > 2.0
    rng = np.random.default_rng(11)
    counts = np.minimum(frames.astype(np.int64), group)  # P(count > 12) at 5 e/px is ~0.2 %
    raw_events = []
    for fraction in counts:
        # each electron of the fraction goes to a different raw frame of its group
        rank = rng.random((group,) + fraction.shape).argsort(axis=0)
        for j in range(group):
            y, x = np.nonzero(rank[j] < fraction)
            raw_events.append(np.stack([y * eer.SUBPIXELS + 2, x * eer.SUBPIXELS + 2], axis=1))
    movie = tmp_path / "truth_00001en.frames.eer"
    eer.write_eer(movie, raw_events, MOVIE.shape)
    params = MotionCor2Params(pixel_size_A=1.0, rendered_frame_size=group, eer_sampling=1)
    out = run_motioncor2(STANDIN, movie, tmp_path / "out" / "truth-a.mrc", params, timeout_s=300)
    assert out.movie_kind == "eer" and out.shifts_px.shape == d.shape
    assert _rms_after_offset(out.displacement_px, d) < TOLERANCE_PX
    assert _rms_after_offset(out.displacement_px * [1.0, -1.0], d) > 2.0  # EER is not flipped


def test_displacement_from_motioncor_shifts_per_format():
    """Pure conversion: minus the shift, relative to the first frame, y reversed for TIFF only."""
    shifts = np.array([[1.0, -2.0], [0.0, 0.0], [-1.5, 3.0]])  # reference frame = the second
    assert calc_displacement_from_motioncor_shifts(shifts, "mrc").tolist() == [[0.0, 0.0], [1.0, -2.0], [2.5, -5.0]]
    assert calc_displacement_from_motioncor_shifts(shifts, "eer").tolist() == [[0.0, 0.0], [1.0, -2.0], [2.5, -5.0]]
    assert calc_displacement_from_motioncor_shifts(shifts, "tiff").tolist() == [[0.0, 0.0], [1.0, 2.0], [2.5, 5.0]]
    with pytest.raises(ValueError, match="unknown movie kind"):
        calc_displacement_from_motioncor_shifts(shifts, "dm4")
