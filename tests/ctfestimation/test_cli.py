"""`appion ctf estimate` (appion.ctfestimation.cli) end to end on simulated files."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appion.base.physics import calc_defocus_at_azimuth_A
from appion.base.simulate.calc import MicrographParams, MovieParams, calc_micrograph, calc_movie
from appion.base.simulate.store import write_movie_tiff, write_mrc
from appion.ctfestimation import cli, estimate
from appion.ctfestimation.calc.classic import parse_avrot, parse_ctffind_header, parse_ctffind_results

REPO = Path(__file__).resolve().parents[2]
MIC = MicrographParams(shape=(2048, 2048), pixel_size_A=1.1, voltage_kV=300, cs_mm=2.7, defocus1_A=12300,
                       defocus2_A=11700, astig_angle_deg=-40.0, dose_e_per_A2=45, seed=7)
OPTICS = ["--apix", "1.1", "--kv", "300", "--cs", "2.7", "--ac", "0.07"]


@pytest.fixture(scope="module")
def micrograph(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mic") / "mic.mrc"
    write_mrc(path, calc_micrograph(MIC)[0], MIC.pixel_size_A)
    return path


def _profile_rms_A(r, d1, d2, ang) -> float:
    theta = np.linspace(0, np.pi, 360, endpoint=False)
    fit = calc_defocus_at_azimuth_A(r.defocus1_A, r.defocus2_A, r.astig_angle_deg, theta)
    true = calc_defocus_at_azimuth_A(d1, d2, ang, theta)
    return float(np.sqrt(np.mean((fit - true) ** 2)))


def test_estimate_writes_ctffind_files(micrograph, tmp_path, capsys):
    out = tmp_path / "mic_ctf.txt"
    code = cli.main(["ctf", "estimate", str(micrograph), *OPTICS, "-o", str(out)])
    assert code == 0
    assert "defocus1" in capsys.readouterr().out
    [result] = parse_ctffind_results(out.read_text())
    assert abs(result.mean_defocus_A - 12000.0) <= 10.0
    assert _profile_rms_A(result, MIC.defocus1_A, MIC.defocus2_A, MIC.astig_angle_deg) <= 10.0
    header = parse_ctffind_header(out.read_text())
    assert header.pixel_size_A == pytest.approx(1.1) and header.box_size_px == 512
    assert header.input_file == str(micrograph)
    data_lines = [l for l in out.read_text().splitlines() if not l.startswith("#")]
    assert len(data_lines) == 1 and len(data_lines[0].split()) == 7
    [avrot] = parse_avrot((tmp_path / "mic_ctf_avrot.txt").read_text())
    assert avrot.spatial_frequency_per_A.shape == (363,)    # CTFFIND's count for box 512
    assert avrot.spatial_frequency_per_A[1] == pytest.approx(1 / (512 * 1.1), abs=1e-6)   # written as %f
    assert np.all(np.diff(avrot.spatial_frequency_per_A) > 0)
    assert np.isfinite(np.stack(avrot.as_rows())).all()
    png = tmp_path / "mic_ctf.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mic_ctf.png", "mic_ctf.txt", "mic_ctf_avrot.txt"]


def test_estimate_ctf_file_reports_timings_and_options(micrograph, tmp_path):
    options = estimate.CtfOptions(pixel_size_A=1.1, voltage_kV=300, cs_mm=2.7, amplitude_contrast=0.07,
                             astig_restraint_A=1000.0, write_png=False, threads=2)
    outcome = estimate.estimate_ctf_file(micrograph, tmp_path / "o.txt", options)
    assert set(outcome.seconds) >= {"read", "spectrum", "search", "refine", "write"}
    assert all(v >= 0 for v in outcome.seconds.values())
    assert outcome.png_path is None and not (tmp_path / "o.png").exists()
    assert outcome.avrot_path == tmp_path / "o_avrot.txt" and outcome.avrot_path.exists()
    assert abs(outcome.result.mean_defocus_A - 12000.0) <= 10.0
    assert outcome.result.confidence_30_10 is not None and outcome.result.resolution_50_percent_A is not None


def test_movie_input_averages_frame_groups(tmp_path):
    params = MovieParams(shape=(1024, 1024), pixel_size_A=1.0, voltage_kV=300, cs_mm=2.7, defocus1_A=15300,
                         defocus2_A=14700, astig_angle_deg=25.0, n_frames=12, dose_per_frame_e_per_A2=4.0,
                         drift_total_px=12.0, seed=3)
    frames, _ = calc_movie(params)
    movie = tmp_path / "movie.tif"
    write_movie_tiff(movie, frames)
    out = tmp_path / "movie.txt"
    code = cli.main(["ctf", "estimate", str(movie), "--apix", "1.0", "--kv", "300", "--cs", "2.7", "--ac", "0.07",
                     "--num-frame-avg", "4", "--no-png", "-o", str(out)])
    assert code == 0
    [result] = parse_ctffind_results(out.read_text())
    # a 1024² movie holds 1/16 of the benchmark's micrograph area
    assert abs(result.mean_defocus_A - 15000.0) <= 30.0
    assert "num. frames averaged: 4" in (tmp_path / "movie_avrot.txt").read_text()


def test_movie_with_fewer_frames_than_a_group_is_refused(tmp_path, capsys):
    frames, _ = calc_movie(MovieParams(shape=(600, 600), n_frames=3, seed=1))
    movie = tmp_path / "short.tif"
    write_movie_tiff(movie, frames)
    code = cli.main(["ctf", "estimate", str(movie), *OPTICS, "--num-frame-avg", "4", "-o", str(tmp_path / "o.txt")])
    err = capsys.readouterr().err
    assert code == 2 and str(movie) in err and "fewer than" in err


@pytest.mark.parametrize("extra, fill, expected", [
    ([], "blank", "blank"),
    ([], "nan", "NaN"),
    (["--box", "1024"], "ok", "smaller than the box"),
    (["--resmax", "40"], "ok", "resmax"),
])
def test_bad_input_gives_exit_2_and_one_line(tmp_path, capsys, extra, fill, expected):
    image = np.random.default_rng(0).normal(10, 1, (700, 700)).astype(np.float32)
    if fill == "blank":
        image[:] = 3.0
    elif fill == "nan":
        image[10, 10] = np.nan
    path = tmp_path / "bad.mrc"
    write_mrc(path, image, 1.1)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = cli.main(["ctf", "estimate", str(path), *OPTICS, *extra, "-o", str(out_dir / "bad.txt")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(path) in err and expected in err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []          # nothing written, not even a partial file


def test_missing_file_and_zero_pixel_size(tmp_path, capsys):
    code = cli.main(["ctf", "estimate", str(tmp_path / "nope.mrc"), *OPTICS, "-o", str(tmp_path / "o.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.mrc" in err and "does not exist" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["ctf", "estimate", str(tmp_path / "x.mrc"), "--apix", "0", "--kv", "300", "--cs", "2.7",
                  "--ac", "0.07", "-o", str(tmp_path / "o.txt")])
    assert exc.value.code == 2
    assert "--apix" in capsys.readouterr().err


def test_module_entry_point_runs(micrograph, tmp_path):
    out = tmp_path / "sub.txt"
    proc = subprocess.run([sys.executable, "-m", "appion.ctfestimation.cli", "ctf", "estimate", str(micrograph),
                           *OPTICS, "--no-png", "--threads", "2", "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [result] = parse_ctffind_results(out.read_text())
    assert math.isfinite(result.fit_resolution_A) and abs(result.mean_defocus_A - 12000.0) <= 10.0


def test_output_paths_follow_ctffind_naming(tmp_path):
    txt, avrot, png = estimate.calc_output_paths(tmp_path / "a" / "img-pow.txt")
    assert (txt.name, avrot.name, png.name) == ("img-pow.txt", "img-pow_avrot.txt", "img-pow.png")
