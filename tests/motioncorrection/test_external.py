"""Tests of the MotionCor2/MotionCor3 and RELION motion-correction wrappers.

MotionCor2 is closed source and MotionCor2/3 need a CUDA GPU, so the MotionCor tests run the
wrapper against tests/standins/motioncor2, a stand-in that speaks the same protocol (flags and
their value counts, --version, the parameter echo, FmIntFile, MRC outputs, the shift lines of the
real logs) and records its exact argv; the log parser is tested on real MotionCor2 1.5.0 and 1.6.4
logs (/work/shared/fixtures/motioncor2).  RELION (Debian package `relion`, 3.1.x) is real and is
run for real: it must be installed in CI (the RELION test fails there rather than skip).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import tifffile

from appion.base.simulate.calc import MovieParams, calc_movie
from appion.base.simulate.store import write_movie_tiff, write_mrc
from appion.motioncorrection.calc.external import (
    MotionCor2Params,
    MotionCorError,
    MotionCorVersion,
    RelionError,
    RelionMotionParams,
    calc_displacement_from_relion_shifts,
    calc_fmintfile_path,
    calc_fmintfile_text,
    calc_motioncor2_command,
    calc_motioncor_version,
    calc_motioncor_work_dir,
    calc_n_rendered_frames,
    calc_relion_motioncorr_command,
    detect_motioncor_version,
    parse_motioncor2_shifts,
    parse_relion_shifts_star,
    run_motioncor2,
    run_relion_motioncorr,
    write_relion_movies_star,
)

REPO = Path(__file__).resolve().parents[2]
STANDIN = str(REPO / "tests" / "standins" / "motioncor2")
FIXTURES = Path("/work/shared/fixtures/motioncor2")
if not FIXTURES.is_dir():  # the repository's copy when /work/shared is not mounted
    FIXTURES = REPO / "tests" / "fixtures" / "motioncor2"
RELION = shutil.which("relion_run_motioncorr")


def _argv_pairs(argv: list[str]) -> dict[str, list[str]]:
    """Tag → its values, in order, exactly as on the command line; a repeated tag is an error."""
    pairs: dict[str, list[str]] = {}
    tag = None
    for token in argv[1:]:
        if re.match(r"^--?[A-Za-z]", token):
            assert token not in pairs, f"{token} given twice in {argv}"
            tag = token
            pairs[tag] = []
        else:
            assert tag is not None, f"value {token!r} before any tag in {argv}"
            pairs[tag].append(token)
    return pairs


@pytest.fixture
def standin_env(tmp_path, monkeypatch):
    """Point the stand-in at a JSON file that receives its argv; returns a reader for it."""
    record = tmp_path / "argv.json"
    monkeypatch.setenv("MOTIONCOR_STANDIN_ARGV_JSON", str(record))
    monkeypatch.delenv("MOTIONCOR_STANDIN_FAIL", raising=False)

    def set_version(text: str) -> None:
        monkeypatch.setenv("MOTIONCOR_STANDIN_VERSION", text)

    def read_argv() -> list[str]:
        return json.loads(record.read_text())

    return set_version, read_argv


def _load_eer_writer():
    spec = importlib.util.spec_from_file_location("eer_writer", REPO / "tests" / "base" / "eer_writer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- FmIntFile and helpers

def test_fmintfile_text_puts_leftover_first_and_covers_every_raw_frame():
    text = calc_fmintfile_text(1539, 96, 0.02)
    assert text == "3 3 0.02\n1536 96 0.02\n"
    rows = [tuple(map(float, line.split())) for line in text.splitlines()]
    assert sum(r[0] for r in rows) == 1539
    assert all(r[0] % r[1] == 0 for r in rows)
    assert calc_n_rendered_frames(1539, 96) == sum(r[0] // r[1] for r in rows) == 17
    assert calc_fmintfile_text(1500, 50, 0.0267) == "1500 50 0.0267\n"
    with pytest.raises(ValueError):
        calc_fmintfile_text(0, 10, 0.1)


# --------------------------------------------------------------------------- exact command lines

def test_tiff_command_exact_flags_with_gain_dark_defects_and_dose(tmp_path, standin_env):
    set_version, read_argv = standin_env
    set_version("MotionCor2 version 1.6.4")
    movie = MovieParams(shape=(96, 128), n_frames=10, dose_per_frame_e_per_A2=3.0, drift_total_px=4.0,
                        gain_sigma=0.05, gain_rotate=1, gain_flip=1, seed=5)
    frames, truth = calc_movie(movie)
    movie_path = tmp_path / "sq01_00012en.frames.tif"
    write_movie_tiff(movie_path, frames)
    gain_path, dark_path, defect_path = tmp_path / "norm.mrc", tmp_path / "dark.mrc", tmp_path / "defects.mrc"
    write_mrc(gain_path, truth["gain_on_disk"], 1.0)
    write_mrc(dark_path, np.zeros_like(truth["gain_on_disk"]), 1.0)
    defects = np.zeros((96, 128), np.int8)
    defects[:, 17] = 1
    write_mrc(defect_path, defects, 1.0)
    params = MotionCor2Params(pixel_size_A=1.06, voltage_kV=300, start_frame=1, n_frames_sum=6, bin_factor=2,
                              group_global=2, group_patch=4, frame_ref=0, patch_cols=5, patch_rows=4,
                              gpu_ids=(0, 1), dose_weight=True, total_dose_e_per_A2=30.0,
                              gain_path=str(gain_path), dark_path=str(dark_path), defect_map_path=str(defect_path),
                              gain_rotate=1, gain_flip=1)
    out = tmp_path / "run" / "sq01_00012ma.mrc"
    result = run_motioncor2(STANDIN, movie_path, out, params, timeout_s=120)

    argv = read_argv()
    work = calc_motioncor_work_dir(out)
    assert argv[0] == STANDIN
    assert _argv_pairs(argv) == {
        "-InTiff": [str(movie_path)], "-OutMrc": [str(work / out.name)],
        "-Gain": [str(gain_path)], "-Dark": [str(dark_path)], "-DefectMap": [str(defect_path)],
        "-RotGain": ["1"], "-FlipGain": ["1"], "-Patch": ["5", "4"], "-Iter": ["7"], "-Tol": ["0.5"],
        "-Bft": ["500", "150"], "-FtBin": ["2"], "-Throw": ["1"], "-Trunc": ["3"], "-Group": ["2", "4"],
        "-FmRef": ["0"], "-FmDose": ["3"], "-PixSize": ["1.06"], "-kV": ["300"], "-Gpu": ["0", "1"],
        "-LogDir": [str(work)],
    }
    # what the run left behind: sums moved into place, no work directory, shifts of the 6 summed frames
    assert result.aligned_mrc_path == out and out.is_file()
    assert result.dose_weighted_mrc_path == out.with_name("sq01_00012ma_DW.mrc")
    assert (out.parent / "sq01_00012ma-Patch-Full.log").is_file()
    assert not work.exists()
    assert result.shifts_px.shape == (6, 2)
    assert result.version == MotionCorVersion("MotionCor2", 1, 6, 4)
    with mrcfile.open(out) as mrc:
        assert mrc.data.shape == (48, 64)  # -FtBin 2
        assert mrc.voxel_size.x == pytest.approx(2.12)


@pytest.mark.parametrize("version_text, log_flag", [
    ("MotionCor2 version 1.5.0", "-LogDir"),
    ("MotionCor2 version 1.4.7", "-LogFile"),
])
def test_mrc_command_exact_flags_minimal(tmp_path, standin_env, version_text, log_flag):
    set_version, read_argv = standin_env
    set_version(version_text)
    frames, _ = calc_movie(MovieParams(shape=(64, 64), n_frames=6, dose_per_frame_e_per_A2=4.0, seed=2))
    movie_path = tmp_path / "a_00001en.frames.mrc"
    write_mrc(movie_path, frames, 0.83)
    out = tmp_path / "a_00001en-a.mrc"
    result = run_motioncor2(STANDIN, movie_path, out, MotionCor2Params(pixel_size_A=0.83), timeout_s=120)
    work = calc_motioncor_work_dir(out)
    log_value = str(work) if log_flag == "-LogDir" else str(work / "a_00001en-a")
    assert _argv_pairs(read_argv()) == {
        "-InMrc": [str(movie_path)], "-OutMrc": [str(work / out.name)], "-RotGain": ["0"], "-FlipGain": ["0"],
        "-Iter": ["7"], "-Tol": ["0.5"], "-Bft": ["500", "150"], "-Group": ["1"], "-PixSize": ["0.83"],
        "-kV": ["300"], "-Gpu": ["0"], log_flag: [log_value],
    }
    assert result.dose_weighted_mrc_path is None
    assert result.shifts_px.shape == (6, 2)
    assert "...... Frame (  1) shift:" in result.log_path.read_text()  # ≤1.5 log format parsed


def test_eer_command_exact_flags_and_fmintfile(tmp_path, standin_env):
    set_version, read_argv = standin_env
    set_version("MotionCor3 version 1.1.2")
    eer = _load_eer_writer()
    rng = np.random.default_rng(7)
    movie_path = tmp_path / "falcon_00003.frames.eer"
    eer.write_eer(movie_path, eer.calc_random_events(rng, (64, 64), 30, 300), (64, 64))
    params = MotionCor2Params(pixel_size_A=0.73, rendered_frame_size=7, eer_sampling=2, dose_weight=True,
                              total_dose_e_per_A2=30.0, patch_cols=5, patch_rows=5, bfactor_local=100)
    out = tmp_path / "falcon_00003-a.mrc"
    result = run_motioncor2(STANDIN, movie_path, out, params, timeout_s=120)
    work = calc_motioncor_work_dir(out)
    fmint = calc_fmintfile_path(out)
    assert _argv_pairs(read_argv()) == {
        "-InEer": [str(movie_path)], "-OutMrc": [str(work / out.name)], "-RotGain": ["0"], "-FlipGain": ["0"],
        "-Patch": ["5", "5"], "-Iter": ["7"], "-Tol": ["0.5"], "-Bft": ["500", "100"], "-FtBin": ["2"],
        "-Group": ["1"], "-FmIntFile": [str(fmint)], "-EerSampling": ["2"], "-FmDose": ["7"],
        "-PixSize": ["0.73"], "-kV": ["300"], "-Gpu": ["0"], "-LogDir": [str(work)],
    }
    # 30 raw frames grouped by 7: 2 leftover frames first, then 4 groups of 7, 1 e/Å² per raw frame
    assert fmint.read_text() == "2 2 1\n28 7 1\n"
    assert result.shifts_px.shape == (5, 2)
    with mrcfile.open(out) as mrc:
        assert mrc.data.shape == (64, 64)  # rendered at 2x (128), Fourier-binned by 2


def test_command_refuses_options_the_version_lacks_and_impossible_frame_ranges():
    v15, v164 = MotionCorVersion("MotionCor2", 1, 5, 0), MotionCorVersion("MotionCor2", 1, 6, 4)
    kw = dict(n_movie_frames=10)
    with pytest.raises(ValueError, match="one -Group value"):
        calc_motioncor2_command("mc", "m.tif", "o.mrc", MotionCor2Params(1.0, group_patch=4), v15, **kw)
    with pytest.raises(ValueError, match="MaskCent"):
        calc_motioncor2_command("mc", "m.tif", "o.mrc", MotionCor2Params(1.0, mask_center=(10, 10)), v164, **kw)
    with pytest.raises(ValueError, match="has 10 frames"):
        calc_motioncor2_command("mc", "m.tif", "o.mrc", MotionCor2Params(1.0, start_frame=4, n_frames_sum=7), v164, **kw)
    with pytest.raises(ValueError, match="FmIntFile"):
        calc_motioncor2_command("mc", "m.eer", "o.mrc", MotionCor2Params(1.0), v164, **kw)
    with pytest.raises(ValueError, match="total dose"):
        calc_motioncor2_command("mc", "m.mrc", "o.mrc", MotionCor2Params(1.0, dose_weight=True), v164, **kw)
    with pytest.raises(ValueError, match="unknown movie format"):
        calc_motioncor2_command("mc", "m.dm4", "o.mrc", MotionCor2Params(1.0), v164, **kw)
    # the old mask options are still passed to MotionCor2 1.4
    cmd = calc_motioncor2_command("mc", "m.mrc", "o.mrc", MotionCor2Params(1.0, mask_center=(0, 0), mask_size=(1, 0.5)),
                                  MotionCorVersion("MotionCor2", 1, 4, 0), **kw)
    assert _argv_pairs(cmd)["-MaskCent"] == ["0", "0"] and _argv_pairs(cmd)["-MaskSize"] == ["1", "0.5"]


# --------------------------------------------------------------------------- versions

@pytest.mark.parametrize("text, expected", [
    ("MotionCor2 version 1.4.0\nBuilt on ...", MotionCorVersion("MotionCor2", 1, 4, 0)),
    ("MotionCor2 version 1.5.0", MotionCorVersion("MotionCor2", 1, 5, 0)),
    ("MotionCor2 version 1.6.4", MotionCorVersion("MotionCor2", 1, 6, 4)),
    ("MotionCor3 version 1.1.2\nBuilt on Jun 11 2024", MotionCorVersion("MotionCor3", 1, 1, 2)),
    ("MotionCor3 1.0.1", MotionCorVersion("MotionCor3", 1, 0, 1)),
])
def test_detect_version_accepts_supported(standin_env, text, expected):
    set_version, _ = standin_env
    set_version(text)
    assert detect_motioncor_version(STANDIN) == expected


@pytest.mark.parametrize("text, shown", [
    ("MotionCor2 version 1.3.1", "1.3.1"),
    ("MotionCor2 version 1.7.0", "1.7.0"),
    ("this is not motioncor", "this is not motioncor"),
])
def test_detect_version_refuses_others_naming_executable_and_version(standin_env, text, shown):
    set_version, _ = standin_env
    set_version(text)
    with pytest.raises(MotionCorError) as info:
        detect_motioncor_version(STANDIN)
    assert STANDIN in str(info.value) and shown in str(info.value)


def test_missing_executable_is_a_clear_error(tmp_path):
    with pytest.raises(MotionCorError, match="not found"):
        detect_motioncor_version(str(tmp_path / "no-such-motioncor"))
    assert calc_motioncor_version("x", "MotionCor2 v1.5.0") == MotionCorVersion("MotionCor2", 1, 5, 0)


# --------------------------------------------------------------------------- failures

def test_failing_run_raises_with_log_tail_and_leaves_no_outputs(tmp_path, standin_env, monkeypatch):
    set_version, _ = standin_env
    set_version("MotionCor2 version 1.5.0")
    monkeypatch.setenv("MOTIONCOR_STANDIN_FAIL", "Error: cudaMalloc failed on GPU 0 (stand-in)")
    frames, _ = calc_movie(MovieParams(shape=(64, 64), n_frames=5, seed=1))
    movie_path = tmp_path / "m.mrc"
    write_mrc(movie_path, frames, 1.0)
    out = tmp_path / "out" / "m-a.mrc"
    with pytest.raises(MotionCorError) as info:
        run_motioncor2(STANDIN, movie_path, out, MotionCor2Params(1.0), timeout_s=120)
    message = str(info.value)
    assert "cudaMalloc failed on GPU 0" in message and "exit status 1" in message and str(movie_path) in message
    assert not out.exists() and not calc_motioncor_work_dir(out).exists()
    assert "cudaMalloc failed" in (tmp_path / "out" / "m-a_motioncor.log").read_text()


def test_wrongly_oriented_gain_fails_with_the_programs_message(tmp_path, standin_env):
    set_version, _ = standin_env
    set_version("MotionCor2 version 1.6.4")
    frames, truth = calc_movie(MovieParams(shape=(48, 80), n_frames=4, gain_sigma=0.05, gain_rotate=1, seed=3))
    movie_path, gain_path = tmp_path / "m.tif", tmp_path / "gain.mrc"
    write_movie_tiff(movie_path, frames)
    write_mrc(gain_path, truth["gain_on_disk"], 1.0)
    with pytest.raises(MotionCorError, match="does not match"):
        run_motioncor2(STANDIN, movie_path, tmp_path / "o.mrc", MotionCor2Params(1.0, gain_path=str(gain_path)), 120)


def _gain_corrected_spread(tmp_path, name, movie_path, gain_path, rotate) -> float:
    """Relative spread of the stand-in's sum for one gain file and -RotGain (flat when the gain fits)."""
    out = run_motioncor2(STANDIN, movie_path, tmp_path / name / "o.mrc",
                         MotionCor2Params(1.0, gain_path=str(gain_path), gain_rotate=rotate, n_iter=1), 120)
    image = mrcfile.read(out.aligned_mrc_path)
    return float(np.std(image) / np.mean(image))


@pytest.mark.parametrize("kind", ["mrc", "tiff"])
def test_standin_orients_the_gain_as_motioncor2_does(tmp_path, standin_env, kind):
    """-RotGain 1 turns the gain 90° clockwise as numpy shows it (np.rot90(gain, -1); MotionCor3's
    G90Rotate2D, RELION's "clockwise in relion_display ... same as -RotGain in MotionCor2"), and the
    gain multiplies the frames as MotionCor holds them: a TIFF movie upside down relative to tifffile.
    A gain that fits flattens the sum; the same gain turned the other way (same shape) does not."""
    set_version, _ = standin_env
    set_version("MotionCor2 version 1.6.4")
    frames, truth = calc_movie(MovieParams(shape=(64, 96), n_frames=4, dose_per_frame_e_per_A2=40.0,
                                           drift_total_px=0.0, gain_sigma=0.3, seed=8))
    movie_path = tmp_path / ("m.mrc" if kind == "mrc" else "m.tif")
    if kind == "mrc":
        write_mrc(movie_path, frames.astype(np.uint16), 1.0)
        gain_as_read = truth["gain"]  # MRC rows as stored
    else:
        write_movie_tiff(movie_path, frames)
        gain_as_read = truth["gain"][::-1, :]  # MotionCor holds the TIFF frames bottom-up
    fits, turned_wrong = tmp_path / "fits.mrc", tmp_path / "wrong.mrc"
    write_mrc(fits, np.ascontiguousarray(np.rot90(gain_as_read, 1)), 1.0)  # -RotGain 1 undoes this
    write_mrc(turned_wrong, np.ascontiguousarray(np.rot90(gain_as_read, -1)), 1.0)
    good = _gain_corrected_spread(tmp_path, "fits", movie_path, fits, 1)
    bad = _gain_corrected_spread(tmp_path, "wrong", movie_path, turned_wrong, 1)
    assert good < 0.75 * bad
    if kind == "tiff":  # a TIFF gain file is read bottom-up too, like the movie
        tiff_gain = tmp_path / "gain.tif"
        tifffile.imwrite(tiff_gain, np.ascontiguousarray(np.rot90(truth["gain"][::-1, :], 1)[::-1, :]))
        assert _gain_corrected_spread(tmp_path, "tiffgain", movie_path, tiff_gain, 1) == pytest.approx(good, rel=1e-3)


# --------------------------------------------------------------------------- shifts

def test_standin_run_returns_motioncor_sign_shifts(tmp_path, standin_env):
    """The stand-in prints the correction (-displacement) relative to the middle frame, like MotionCor2."""
    set_version, _ = standin_env
    set_version("MotionCor2 version 1.5.0")
    frames, truth = calc_movie(MovieParams(shape=(192, 192), n_frames=8, dose_per_frame_e_per_A2=4.0,
                                           drift_total_px=8.0, seed=3))
    movie_path = tmp_path / "m.mrc"
    write_mrc(movie_path, frames, 1.0)
    result = run_motioncor2(STANDIN, movie_path, tmp_path / "o.mrc", MotionCor2Params(1.0), 120)
    d = np.asarray(truth["shifts_px"])
    expected = -(d - d[len(d) // 2])
    assert np.sqrt(np.mean(np.sum((result.shifts_px - expected) ** 2, axis=1))) < 0.5
    assert np.abs(expected).max() > 3.0


def test_parse_real_motioncor2_150_log():
    text = (FIXTURES / "motioncor2_1.5.0_log.txt").read_text()
    shifts = parse_motioncor2_shifts(text)
    assert shifts.shape == (sum(1 for ln in text.splitlines() if ln.startswith("...... Frame (")), 2) == (16, 2)
    assert shifts[0].tolist() == [2.46, 8.51]
    assert shifts[8].tolist() == [0.0, 0.0]  # -FmRef -1: the middle frame is the reference
    assert shifts[15].tolist() == [-1.32, -4.6]


def test_parse_real_motioncor2_164_table_not_the_patch_table():
    text = (FIXTURES / "motioncor2_1.6.4_log.txt").read_text()
    shifts = parse_motioncor2_shifts(text)
    assert shifts.shape == (16, 2)  # the following 15-row, 4-column per-patch table is not taken
    assert shifts[0].tolist() == [0.0, 0.0]
    assert shifts[1].tolist() == [-0.61, -2.32]
    assert shifts[15].tolist() == [-3.79, -13.12]
    # the same movie aligned by 1.5.0: same trajectory up to the reference frame
    old = parse_motioncor2_shifts((FIXTURES / "motioncor2_1.5.0_log.txt").read_text())
    assert np.abs((old - old[0]) - (shifts - shifts[0])).max() < 0.5


@pytest.mark.parametrize("name, n_frames, first, last", [
    ("29123499.motioncor2.log", 28, [-2.55, 5.76], [1.39, -1.61]),
    ("30117940.motioncor2.log", 40, [-1.18, 0.39], [0.25, 0.27]),
])
def test_parse_real_k3_logs_with_patch_output(name, n_frames, first, last):
    text = (FIXTURES / name).read_text()
    shifts = parse_motioncor2_shifts(text)
    n_lines = sum(1 for ln in text.splitlines() if ln.startswith("...... Frame ("))
    assert shifts.shape == (n_lines, 2) == (n_frames, 2)  # the per-patch tables after it are not taken
    assert shifts[0].tolist() == first
    assert shifts[-1].tolist() == last
    assert np.any(np.all(shifts == 0.0, axis=1))  # the reference frame


def test_parse_without_shifts_raises():
    with pytest.raises(MotionCorError, match="no full-frame"):
        parse_motioncor2_shifts("GPU 0 memory: 8107 MB\nError: cannot open file\n")


# --------------------------------------------------------------------------- RELION (pure parts)

def test_relion_movies_star_round_trip(tmp_path):
    path = tmp_path / "movies.star"
    write_relion_movies_star(path, ["Movies/a.tif", "Movies/b.tif"], 0.83, 300.0, cs_mm=2.7)
    blocks = starfile.read(path, always_dict=True)
    assert set(blocks) == {"optics", "movies"}
    optics = blocks["optics"]
    assert optics["rlnMicrographOriginalPixelSize"].tolist() == [0.83]
    assert optics["rlnVoltage"].tolist() == [300.0] and optics["rlnOpticsGroup"].tolist() == [1]
    assert blocks["movies"]["rlnMicrographMovieName"].tolist() == ["Movies/a.tif", "Movies/b.tif"]
    assert blocks["movies"]["rlnOpticsGroup"].tolist() == [1, 1]
    assert not list(tmp_path.glob(".*part"))


def test_relion_command_exact_flags():
    params = RelionMotionParams(bin_factor=2, bfactor_A2=150, dose_weighting=True, dose_per_frame_e_per_A2=1.2,
                                voltage_kV=200, pre_exposure_e_per_A2=0.5, patch_x=5, patch_y=4,
                                first_frame_sum=2, last_frame_sum=30, gain_path="gain.mrc", gain_rot=1, gain_flip=2)
    cmd = calc_relion_motioncorr_command("movies.star", "MotionCorr/job002", params, threads=2)
    assert cmd[0] == "relion_run_motioncorr"
    flags = _argv_pairs(cmd)
    assert flags == {
        "--i": ["movies.star"], "--o": ["MotionCorr/job002/"], "--use_own": [], "--j": ["2"],
        "--bin_factor": ["2"], "--bfactor": ["150"], "--patch_x": ["5"], "--patch_y": ["4"],
        "--group_frames": ["1"], "--first_frame_sum": ["2"], "--last_frame_sum": ["30"], "--max_iter": ["5"],
        "--dose_per_frame": ["1.2"], "--voltage": ["200"], "--preexposure": ["0.5"], "--dose_weighting": [],
        "--save_noDW": [], "--gainref": ["gain.mrc"], "--gain_rot": ["1"], "--gain_flip": ["2"],
    }


RELION_STAR_TEXT = """
# version 30001

data_general

_rlnImageSizeX                                      256
_rlnImageSizeY                                      256
_rlnImageSizeZ                                        4
_rlnMicrographMovieName                    mov.mrc
_rlnMicrographBinning                          1.000000
_rlnMicrographOriginalPixelSize                1.000000
_rlnMicrographDoseRate                         1.000000
_rlnMicrographPreExposure                      0.000000
_rlnVoltage                                  300.000000
_rlnMicrographStartFrame                              1
_rlnMotionModelVersion                                0

# version 30001

data_global_shift

loop_
_rlnMicrographFrameNumber #1
_rlnMicrographShiftX #2
_rlnMicrographShiftY #3
           1     0.000000     0.000000
           2     -1.43586     0.880112
           3     -2.88172     1.688813
           4     -4.38084     2.442830
"""


def test_parse_relion_shifts_from_text_and_file(tmp_path):
    from_text = parse_relion_shifts_star(RELION_STAR_TEXT)
    assert from_text.shape == (4, 2)
    assert from_text[1].tolist() == [-1.43586, 0.880112]
    path = tmp_path / "mov.star"
    path.write_text(RELION_STAR_TEXT)
    assert np.array_equal(parse_relion_shifts_star(path), from_text)
    bad = tmp_path / "bad.star"
    bad.write_text(RELION_STAR_TEXT.split("data_global_shift")[0])
    with pytest.raises(ValueError, match="data_global_shift"):
        parse_relion_shifts_star(bad)


def test_displacement_from_relion_shifts_flips_y_for_tiff_only():
    shifts = np.array([[0.0, 0.0], [-1.0, 2.0]])
    assert calc_displacement_from_relion_shifts(shifts, "mrc").tolist() == [[0.0, 0.0], [1.0, -2.0]]
    assert calc_displacement_from_relion_shifts(shifts, "tiff").tolist() == [[0.0, 0.0], [1.0, 2.0]]


# --------------------------------------------------------------------------- RELION (real program)

needs_relion = pytest.mark.skipif(RELION is None and not os.environ.get("CI"),
                                  reason="relion_run_motioncorr not installed (CI installs it: there it must run)")


@needs_relion
@pytest.mark.parametrize("kind", ["mrc", "tiff"])
def test_real_relion_recovers_known_drift_and_sign(tmp_path, kind):
    """RELION 3.1's _rlnMicrographShiftX/Y is the correction (-displacement), first frame = 0; for TIFF
    input its y axis is reversed relative to tifffile (measured here, see calc_displacement_from_relion_shifts)."""
    movie = MovieParams(shape=(384, 384), n_frames=12, dose_per_frame_e_per_A2=3.0, drift_total_px=10.0, seed=1)
    frames, truth = calc_movie(movie)
    d = np.asarray(truth["shifts_px"])
    assert np.ptp(d[:, 0]) > 2.0 and np.ptp(d[:, 1]) > 2.0  # both axes move: a sign error on either shows
    # Leginon-style names carry dots in the stem, which RELION would turn into underscores.
    movie_path = tmp_path / ("movie.frames.mrc" if kind == "mrc" else "movie.frames.tif")
    if kind == "mrc":
        write_mrc(movie_path, frames, 1.0)
    else:
        write_movie_tiff(movie_path, frames)
    out_dir = tmp_path / "MotionCorr" / "job002"
    params = RelionMotionParams(dose_weighting=True, dose_per_frame_e_per_A2=3.0, voltage_kV=300)
    result = run_relion_motioncorr(movie_path, out_dir, params, threads=2, pixel_size_A=1.0)

    assert result.shifts_px.shape == (12, 2) and result.first_frame == 1
    assert result.shifts_px[0].tolist() == [0.0, 0.0]
    estimate = calc_displacement_from_relion_shifts(result.shifts_px, kind)
    rms = lambda e: float(np.sqrt(np.mean(np.sum((e - e.mean(axis=0)) ** 2, axis=1))))  # noqa: E731
    assert rms(estimate - d) < 0.6
    assert rms(-estimate - d) > 3.0  # the opposite sign is clearly wrong
    if kind == "tiff":  # without the y flip, TIFF y would be wrong
        assert rms(estimate * np.array([1.0, -1.0]) - d) > 3.0
    assert np.array_equal(parse_relion_shifts_star(result.star_path), result.shifts_px)
    assert result.aligned_mrc_path == out_dir / "movie.frames.mrc" and result.star_path == out_dir / "movie.frames.star"
    with mrcfile.open(result.aligned_mrc_path) as mrc:
        assert mrc.data.shape == (384, 384)
    assert result.non_dose_weighted_mrc_path is not None and result.non_dose_weighted_mrc_path.is_file()
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # temporary project removed


@needs_relion
def test_real_relion_failure_raises_with_its_message(tmp_path):
    frames, _ = calc_movie(MovieParams(shape=(64, 64), n_frames=2, seed=0))
    movie_path = tmp_path / "short.mrc"
    write_mrc(movie_path, frames, 1.0)
    with pytest.raises(RelionError, match="too few frames"):
        run_relion_motioncorr(movie_path, tmp_path / "out", RelionMotionParams(), threads=1)
    assert not (tmp_path / "out" / "short.mrc").exists()
