"""`appion motion align` end to end on simulated movies: outputs, conventions, bad input, gain.

RELION (Debian package `relion`) is a real program here: the comparison test runs
relion_run_motioncorr --use_own on the same movie (it fails in CI if RELION is missing).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import scipy.fft
import starfile

from appion.base.physics import calc_exposure_weights, calc_frequency_grid
from appion.base.simulate.calc import MovieParams, calc_local_shifts_px, calc_movie
from appion.base.simulate.store import write_movie_tiff, write_mrc
from appion.motioncorrection import align, cli
from appion.motioncorrection.calc import internal as I

RELION = shutil.which("relion_run_motioncorr")
REPO = Path(__file__).resolve().parents[2]


def shifted_sum(frames: np.ndarray, displacements: np.ndarray) -> np.ndarray:
    """Reference: Σ frame_i(r + d_i) by exact Fourier shifts (what a perfect aligner would sum)."""
    ny, nx = frames.shape[1:]
    fy, fx = np.fft.fftfreq(ny)[:, None], np.fft.rfftfreq(nx)[None, :]
    total = np.zeros((ny, nx // 2 + 1), np.complex128)
    for frame, (dx, dy) in zip(frames.astype(np.float64), displacements):
        total += scipy.fft.rfft2(frame) * np.exp(2j * np.pi * (fx * dx + fy * dy))
    return scipy.fft.irfft2(total, s=(ny, nx))


@pytest.fixture(scope="module")
def tiff_movie(tmp_path_factory):
    d = tmp_path_factory.mktemp("movie")
    params = MovieParams(shape=(1024, 1024), n_frames=16, dose_per_frame_e_per_A2=1.5, drift_total_px=18.0, seed=21)
    frames, truth = calc_movie(params)
    path = d / "sim_00001en.frames.tif"
    write_movie_tiff(path, frames)
    return path, frames, truth


def run_main(argv: list[str]) -> int:
    return cli.main(["motion", "align", *argv])


def test_command_writes_sum_dw_star_plot_and_classic_log(tiff_movie, tmp_path):
    path, frames, truth = tiff_movie
    out = tmp_path / "aligned.mrc"
    code = run_main([str(path), "--apix", "1.0", "--bin", "2", "--dose-per-frame", "1.5", "--kv", "300",
                     "--threads", "2", "--appion-log", "-o", str(out)])
    assert code == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["aligned.mrc", "aligned.star", "aligned_DW.mrc", "aligned_shifts.png", "aligned_st_Log.txt"]

    d_true = np.asarray(truth["shifts_px"])
    star = starfile.read(tmp_path / "aligned.star", always_dict=True)
    general, table = star["general"], star["global_shift"]
    assert general["rlnImageSizeX"] == 1024 and general["rlnImageSizeZ"] == 16
    assert general["rlnMicrographBinning"] == 2.0 and general["rlnMicrographOriginalPixelSize"] == 1.0
    assert general["rlnMicrographDoseRate"] == 1.5 and general["rlnMotionModelVersion"] == 0
    assert general["rlnMicrographStartFrame"] == 1
    assert list(table["rlnMicrographFrameNumber"]) == list(range(1, 17))
    # RELION's convention: shift = −displacement, unbinned px, frame 1 = (0, 0); TIFF pages are read
    # upside down by RELION, so Y keeps the displacement's sign in tifffile's coordinates.
    relion = np.stack([table["rlnMicrographShiftX"], table["rlnMicrographShiftY"]], axis=1)
    assert np.all(relion[0] == 0.0)
    as_displacement = relion * np.array([-1.0, 1.0])
    assert I.calc_trajectory_rms_error(as_displacement, d_true) <= 0.10

    with mrcfile.open(out) as mrc:
        image = mrc.data.copy()
        assert float(mrc.voxel_size.x) == pytest.approx(2.0)
    with mrcfile.open(tmp_path / "aligned_DW.mrc") as mrc:
        dw = mrc.data.copy()
        assert float(mrc.voxel_size.x) == pytest.approx(2.0)
    assert image.shape == dw.shape == (512, 512)
    # The sum equals a perfectly aligned sum (same photons) up to the small shift error.
    ref = shifted_sum(frames, d_true - d_true[0])
    ref_binned = scipy.fft.irfft2(I.calc_fourier_crop(scipy.fft.rfft2(ref).astype(np.complex64), ref.shape,
                                                      (512, 512)), s=(512, 512))
    corr = np.corrcoef(image[16:-16, 16:-16].ravel(), ref_binned[16:-16, 16:-16].ravel())[0, 1]
    assert corr > 0.99
    assert image.mean() == pytest.approx(frames.sum(axis=0).mean(), rel=1e-3)
    # Exposure weighting: same mean as the plain sum, and equal to an independent weighted sum with the
    # true shifts and appion.base.physics.calc_exposure_weights (scaled by √n).
    assert dw.mean() == pytest.approx(image.mean(), rel=1e-3)
    k, _ = calc_frequency_grid((1024, 1024), 1.0, rfft=True)
    weights = calc_exposure_weights(k, 1.5, 16) * 4.0
    fy, fx = np.fft.fftfreq(1024)[:, None], np.fft.rfftfreq(1024)[None, :]
    total = np.zeros((1024, 513), np.complex128)
    for w, frame, (dx, dy) in zip(weights, frames, d_true - d_true[0]):
        total += w * scipy.fft.rfft2(frame.astype(np.float64)) * np.exp(2j * np.pi * (fx * dx + fy * dy))
    ref_dw = scipy.fft.irfft2(I.calc_fourier_crop(total.astype(np.complex64), (1024, 1024), (512, 512)), s=(512, 512))
    assert np.corrcoef(dw[16:-16, 16:-16].ravel(), ref_dw[16:-16, 16:-16].ravel())[0, 1] > 0.99
    assert np.corrcoef(dw[16:-16, 16:-16].ravel(), ref_binned[16:-16, 16:-16].ravel())[0, 1] < 0.99

    # Classic Appion log: middle frame reference, negated MotionCor2/RELION shifts / binning.
    lines = (tmp_path / "aligned_st_Log.txt").read_text().splitlines()
    assert lines[0] == "Sum Frame #000 - #016 (Reference Frame #008):"
    assert len(lines) == 17
    pattern = re.compile(r"^\.\.\.\.\.\.Add Frame #(\d{3}) with xy shift: (-?\d+\.\d{5}) (-?\d+\.\d{5})$")
    values = []
    for i, line in enumerate(lines[1:]):
        m = pattern.match(line)
        assert m, line
        assert int(m.group(1)) == i
        values.append((float(m.group(2)), float(m.group(3))))
    values = np.array(values)
    expected = -(relion - relion[8]) / 2.0
    np.testing.assert_allclose(values, expected, atol=1e-5)
    assert (tmp_path / "aligned_shifts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_patches_frame_range_and_local_model_in_star(tmp_path):
    params = MovieParams(shape=(768, 768), n_frames=14, dose_per_frame_e_per_A2=2.0, drift_total_px=10.0,
                         local_deformation_px=5.0, seed=5)
    frames, truth = calc_movie(params)
    movie = tmp_path / "local.mrc"
    write_mrc(movie, frames.astype(np.uint16), 1.0)
    options = align.MotionOptions(pixel_size_A=1.0, patch_cols=3, patch_rows=3, first_frame=2, last_frame=12, threads=2)
    outcome = align.align_movie_file(movie, tmp_path / "out.mrc", options)
    assert outcome.n_frames == 11 and outcome.shifts_px.shape == (11, 2)
    assert outcome.local_model is not None
    star = starfile.read(outcome.star_path, always_dict=True)
    assert star["general"]["rlnMicrographStartFrame"] == 3
    assert star["general"]["rlnMotionModelVersion"] == 1
    assert list(star["global_shift"]["rlnMicrographFrameNumber"]) == list(range(3, 14))
    assert list(star["local_motion_model"]["rlnMotionModelCoeffsIdx"]) == list(range(36))
    # MRC input: RELION's shifts are −displacement on both axes.
    relion = star["global_shift"][["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
    np.testing.assert_allclose(relion, -(outcome.shifts_px - outcome.shifts_px[0]), atol=1e-5)
    # Global + local model follows the true motion at off-centre points better than global alone.
    errs_g, errs_l = [], []
    for x, y in [(128.0, 128.0), (640.0, 128.0), (128.0, 640.0), (640.0, 640.0)]:
        true = calc_local_shifts_px(truth, x, y)[2:13]
        errs_g.append(I.calc_trajectory_rms_error(outcome.shifts_px, true))
        local = outcome.shifts_px + I.calc_local_shifts_at(outcome.local_model, x, y, (768, 768), 11)
        errs_l.append(I.calc_trajectory_rms_error(local, true))
    assert np.sqrt(np.mean(np.square(errs_l))) < 0.6 * np.sqrt(np.mean(np.square(errs_g))), (errs_l, errs_g)
    # RELION's model coefficients describe the same field (−displacement) at RELION's positions.
    coeffs = star["local_motion_model"]["rlnMotionModelCoeff"].to_numpy()
    basis = I.calc_poly_basis(640.0 / 768 - 0.5, 128.0 / 768 - 0.5, np.arange(11))
    relion_local = np.stack([basis @ coeffs[:18], basis @ coeffs[18:]], axis=1)
    np.testing.assert_allclose(relion_local, -I.calc_local_shifts_at(outcome.local_model, 640.0, 128.0, (768, 768), 11),
                               atol=1e-4)


@pytest.mark.skipif(RELION is None and not os.environ.get("CI"), reason="relion_run_motioncorr not installed")
def test_accuracy_no_worse_than_relion_on_the_same_movie(tiff_movie, tmp_path):
    from appion.motioncorrection.calc.external import (RelionMotionParams, calc_displacement_from_relion_shifts,
                                                       run_relion_motioncorr)
    path, _, truth = tiff_movie
    outcome = align.align_movie_file(path, tmp_path / "ours.mrc", align.MotionOptions(pixel_size_A=1.0, threads=2))
    # RELION turns dots in a movie's stem into underscores in its output names; a dot-free copy avoids that.
    link = tmp_path / "movie.tif"
    shutil.copyfile(path, link)
    relion = run_relion_motioncorr(link, tmp_path / "relion", RelionMotionParams(), threads=2)
    relion_d = calc_displacement_from_relion_shifts(relion.shifts_px, "tiff")
    ours = I.calc_trajectory_rms_error(outcome.shifts_px, truth["shifts_px"])
    theirs = I.calc_trajectory_rms_error(relion_d, truth["shifts_px"])
    assert ours <= 0.10
    assert ours <= theirs, f"appion {ours:.3f} px, RELION {theirs:.3f} px"
    # Same convention: our STAR shifts and RELION's agree to within RELION's own error.
    ours_star = starfile.read(outcome.star_path, always_dict=True)["global_shift"]
    ours_relion = ours_star[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
    assert np.sqrt(np.mean(np.sum((ours_relion - relion.shifts_px) ** 2, axis=1))) < 3 * theirs + 0.1


# ------------------------------------------------------------------------------------------ bad input

def _small_frames(n=6, shape=(128, 160), seed=0):
    frames, _ = calc_movie(MovieParams(shape=shape, n_frames=n, dose_per_frame_e_per_A2=2.0, drift_total_px=3.0,
                                       seed=seed))
    return frames


def _bad_truncated_tiff(d: Path) -> tuple[Path, list[str]]:
    path = d / "cut.tif"
    write_movie_tiff(path, _small_frames())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path, []


def _bad_zero_frames(d: Path) -> tuple[Path, list[str]]:
    path = d / "empty.mrc"
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((0, 64, 64), np.uint16))
    return path, []


def _bad_nan(d: Path) -> tuple[Path, list[str]]:
    path = d / "nan.mrc"
    frames = _small_frames().astype(np.float32)
    frames[3, 10, 20] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about the NaN we want
        write_mrc(path, frames, 1.0)
    return path, []


def _bad_gain_size(d: Path) -> tuple[Path, list[str]]:
    path = d / "movie.tif"
    write_movie_tiff(path, _small_frames())
    gain = d / "gain.mrc"
    write_mrc(gain, np.ones((100, 100), np.float32), 1.0)
    return gain, [str(path), "--gain", str(gain)]


def _bad_unreadable(d: Path) -> tuple[Path, list[str]]:
    path = d / "garbage.tif"
    path.write_bytes(os.urandom(5000))
    return path, []


def _bad_missing(d: Path) -> tuple[Path, list[str]]:
    return d / "nothere.mrc", []


@pytest.mark.parametrize("make", [_bad_truncated_tiff, _bad_zero_frames, _bad_nan, _bad_gain_size, _bad_unreadable,
                                  _bad_missing], ids=lambda f: f.__name__[5:])
def test_bad_input_gives_one_line_naming_the_file_and_no_output(make, tmp_path, capsys):
    named, argv = make(tmp_path)
    before = set(tmp_path.iterdir())
    code = run_main((argv or [str(named)]) + ["--apix", "1.0", "--dose-per-frame", "1", "--kv", "300",
                                               "--appion-log", "-o", str(tmp_path / "out.mrc")])
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert str(named) in err
    assert "Traceback" not in err
    assert set(tmp_path.iterdir()) == before  # nothing written, no temporary files left


def test_bad_input_through_a_real_process_exits_nonzero_without_traceback(tmp_path):
    named, _ = _bad_truncated_tiff(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "appion.motioncorrection.cli", "motion", "align", str(named),
                           "--apix", "1", "-o", str(tmp_path / "o.mrc")], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and str(named) in proc.stderr and "truncated" in proc.stderr
    assert not (tmp_path / "o.mrc").exists()


def test_failure_while_writing_leaves_no_partial_outputs(tiff_movie, tmp_path, monkeypatch):
    path, _, _ = tiff_movie

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(align.outputs, "write_png", broken)
    with pytest.raises(OSError):
        align.align_movie_file(path, tmp_path / "o.mrc", align.MotionOptions(pixel_size_A=1.0, appion_log=True))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ gain

ORIENTATIONS = [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (3, 1)]  # the 8 distinct ones


@pytest.mark.parametrize("rotate, flip", ORIENTATIONS)
def test_gain_in_each_orientation_is_applied_when_told_how(rotate, flip, tmp_path):
    params = MovieParams(shape=(384, 512), n_frames=8, dose_per_frame_e_per_A2=4.0, drift_total_px=5.0,
                         gain_sigma=0.25, gain_rotate=rotate, gain_flip=flip, seed=40 + 2 * rotate + flip)
    frames, truth = calc_movie(params)
    movie = tmp_path / "g.tif"
    write_movie_tiff(movie, frames)
    gain_file = tmp_path / "gain.mrc"
    write_mrc(gain_file, truth["gain_on_disk"], 1.0)
    options = align.MotionOptions(pixel_size_A=1.0, gain_path=str(gain_file), gain_rotate=rotate, gain_flip=flip)
    outcome = align.align_movie_file(movie, tmp_path / "o.mrc", options)
    # A fixed gain pattern left in the frames would pull the alignment towards zero shift.
    assert I.calc_trajectory_rms_error(outcome.shifts_px, truth["shifts_px"]) <= 0.15
    d = outcome.shifts_px
    reference = shifted_sum(frames * truth["gain"], d)  # the correctly flat-fielded frames, same shifts
    inner = (slice(12, -12), slice(12, -12))

    def rel_diff(image):
        return np.sqrt(np.mean((image - reference)[inner] ** 2)) / reference[inner].std()
    assert rel_diff(shifted_sum(frames.astype(np.float64), d)) > 0.3  # the gain matters a lot in this movie
    with mrcfile.open(outcome.sum_path) as mrc:
        image = mrc.data.astype(np.float64)
    assert rel_diff(image) < 0.01


def test_gain_flip_bare_flag_means_upside_down():
    parser = cli.argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["motion", "align", "m.tif", "--apix", "1", "-o", "o.mrc", "--gain-flip"])
    assert align.calc_options(args).gain_flip == 1
    args = parser.parse_args(["motion", "align", "m.tif", "--apix", "1", "-o", "o.mrc", "--gain-flip", "2"])
    assert align.calc_options(args).gain_flip == 2
    args = parser.parse_args(["motion", "align", "m.tif", "--apix", "1", "-o", "o.mrc", "--patch", "5", "4"])
    options = align.calc_options(args)
    assert (options.patch_cols, options.patch_rows, options.gain_flip) == (5, 4, 0)


def test_defect_map_removes_hot_lines_from_alignment_and_sum(tmp_path):
    params = MovieParams(shape=(384, 512), n_frames=10, dose_per_frame_e_per_A2=2.0, drift_total_px=8.0,
                         bad_cols=(100, 101), bad_rows=(200,), seed=77)
    frames, truth = calc_movie(params)
    movie = tmp_path / "hot.tif"
    write_movie_tiff(movie, frames)
    defects = tmp_path / "defects.mrc"
    mask = np.zeros((384, 512), np.int8)
    mask[:, [100, 101]] = 1
    mask[200, :] = 1
    with mrcfile.new(defects) as mrc:
        mrc.set_data(mask)
    fixed = align.align_movie_file(movie, tmp_path / "fixed.mrc", align.MotionOptions(pixel_size_A=1.0,
                                                                                   defects_path=str(defects)))
    assert I.calc_trajectory_rms_error(fixed.shifts_px, truth["shifts_px"]) <= 0.15
    with mrcfile.open(fixed.sum_path) as mrc:
        image = mrc.data.astype(np.float64)
    columns = image[20:-20, 20:-20].mean(axis=0)
    assert np.abs(columns - np.median(columns)).max() < 6 * columns.std()  # no hot line left
    plain = align.align_movie_file(movie, tmp_path / "plain.mrc", align.MotionOptions(pixel_size_A=1.0))
    with mrcfile.open(plain.sum_path) as mrc:
        hot = mrc.data.astype(np.float64)[20:-20, 20:-20].mean(axis=0)
    assert np.abs(hot - np.median(hot)).max() > 6 * np.abs(columns - np.median(columns)).max()
