"""CTFFIND 4.1 and Gctf wrappers (appion.ctfestimation.calc.external).

CTFFIND 4.1 and Gctf are not installable here (closed / GPU-only), so every test that runs a
program runs the faithful stand-ins in tests/standins (see its README): they ask CTFFIND
4.1.14's questions in its order with its branches, take Gctf 1.06's flags, and write the real
file formats.  These tests check protocol and formats, never the accuracy of the numbers.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from appion.base.simulate.calc import MicrographParams, calc_micrograph
from appion.base.simulate.store import write_mrc
from appion.ctfestimation.calc.external import (Ctffind4Params, CtffindDialogueError, CtffindError,
                                                CtffindTimeoutError, GctfError, GctfParams, KnownDefocus,
                                                calc_classic_defocus_range_A, calc_ctffind4_answers,
                                                calc_ctffind4_optional_answers, calc_ctffind4_params_from_classic,
                                                calc_ctffind_version, calc_gctf_command,
                                                calc_gctf_params_from_classic, calc_prompt_text, parse_gctf_log,
                                                run_ctffind4, run_gctf)

STANDINS = Path(__file__).resolve().parents[1] / "standins"
CTFFIND = str(STANDINS / "ctffind4")
GCTF = str(STANDINS / "gctf")
PIXEL_A = 1.0


@pytest.fixture(scope="module")
def micrograph(tmp_path_factory) -> Path:
    """A 512² simulated micrograph at 1 Å/px, 300 kV, 1.5 µm underfocus."""
    path = tmp_path_factory.mktemp("mic") / "mic.mrc"
    image, _ = calc_micrograph(MicrographParams(shape=(512, 512), pixel_size_A=PIXEL_A, defocus1_A=15200.0,
                                                defocus2_A=14800.0, astig_angle_deg=30.0, dose_e_per_A2=40.0),
                               np.random.default_rng(3))
    write_mrc(path, image, PIXEL_A)
    return path


@pytest.fixture(scope="module")
def movie(tmp_path_factory) -> Path:
    """A 6-frame stack (each frame an independent low-dose exposure of the same CTF)."""
    path = tmp_path_factory.mktemp("movie") / "movie_st.mrc"
    frames = [calc_micrograph(MicrographParams(shape=(384, 384), pixel_size_A=PIXEL_A, defocus1_A=15000.0,
                                               defocus2_A=15000.0, dose_e_per_A2=8.0, seed=i),
                              np.random.default_rng(i))[0] for i in range(6)]
    write_mrc(path, np.stack(frames).astype(np.float32), PIXEL_A)
    return path


def _params(**changes) -> Ctffind4Params:
    base = dict(pixel_size_A=PIXEL_A, voltage_kV=300.0, cs_mm=2.7, defocus_min_A=8000.0, defocus_max_A=25000.0,
                defocus_step_A=200.0, box_size_px=256, resmin_A=30.0, resmax_A=5.0)
    base.update(changes)
    return Ctffind4Params(**base)


def _questions(steps):
    """Plain question texts of a dialogue (the regexes are escaped texts)."""
    return [re.sub(r"\\(.)", r"\1", pattern) for pattern, _ in steps]


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_dialogue_matches(log: list[dict], steps) -> None:
    """The stand-in saw exactly the wrapper's dialogue: same questions, same order, same answers."""
    assert len(log) == len(steps), ([e["question"] for e in log], _questions(steps))
    for entry, (pattern, answer) in zip(log, steps):
        assert re.fullmatch(pattern, entry["question"]), (entry["question"], pattern)
        assert entry["answer"] == answer


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".part" in p.name)


# ----------------------------------------------------------------------------------------------
# pure: dialogue, parameters, prompt parsing
# ----------------------------------------------------------------------------------------------

MICROGRAPH_QUESTIONS = [
    "Input image file name", "Output diagnostic image file name", "Pixel size", "Acceleration voltage",
    "Spherical aberration", "Amplitude contrast", "Size of amplitude spectrum to compute", "Minimum resolution",
    "Maximum resolution", "Minimum defocus", "Maximum defocus", "Defocus search step",
    "Do you know what astigmatism is present?", "Slower, more exhaustive search?",
    "Use a restraint on astigmatism?", "Find additional phase shift?", "Do you want to set expert options?",
]


def test_dialogue_of_a_micrograph():
    steps = calc_ctffind4_answers(_params(), "in.mrc", "out-pow.mrc")
    assert _questions(steps) == MICROGRAPH_QUESTIONS
    answers = dict(zip(_questions(steps), (a for _, a in steps)))
    assert answers["Input image file name"] == "in.mrc"
    assert answers["Output diagnostic image file name"] == "out-pow.mrc"
    assert float(answers["Minimum defocus"]) == 8000.0 and answers["Size of amplitude spectrum to compute"] == "256"
    assert answers["Use a restraint on astigmatism?"] == "no"
    assert answers["Do you want to set expert options?"] == "no"


def test_dialogue_of_a_movie_restraint_and_phase_plate():
    params = _params(is_movie=True, n_frames_to_average=3, astigmatism_restraint_A=500.0, find_phase_shift=True,
                     min_phase_shift_rad=0.2, max_phase_shift_rad=2.9, phase_shift_step_rad=0.1)
    steps = calc_ctffind4_answers(params, "st.mrc", "pow.mrc", n_sections=8)
    q = _questions(steps)
    assert q[:4] == ["Input image file name", "Input is a movie (stack of frames)",
                     "Number of frames to average together", "Output diagnostic image file name"]
    i = q.index("Use a restraint on astigmatism?")
    assert q[i + 1] == "Expected (tolerated) astigmatism"
    j = q.index("Find additional phase shift?")
    assert q[j + 1:j + 4] == ["Minimum phase shift (rad)", "Maximum phase shift (rad)", "Phase shift search step"]
    assert [float(a) for _, a in steps[j + 1:j + 4]] == [0.2, 2.9, 0.1]
    assert q[-1] == "Do you want to set expert options?"


def test_dialogue_not_a_movie_still_answers_the_stack_question():
    steps = calc_ctffind4_answers(_params(), "st.mrc", "pow.mrc", n_sections=5)
    assert steps[1] == (re.escape("Input is a movie (stack of frames)"), "no")
    assert _questions(steps)[2] == "Output diagnostic image file name"


def test_dialogue_known_astigmatism_and_expert_options():
    params = _params(known_astigmatism_A=300.0, known_astigmatism_angle_deg=-20.0, n_threads=4,
                     known_defocus=KnownDefocus(15000.0, 14500.0, 10.0), resample_if_pixel_too_small=False)
    q = _questions(calc_ctffind4_answers(params, "a.mrc", "b.mrc"))
    i = q.index("Do you know what astigmatism is present?")
    assert q[i + 1:i + 4] == ["Known astigmatism", "Known astigmatism angle", "Find additional phase shift?"]
    assert q[q.index("Do you want to set expert options?") + 1:] == [
        "Resample micrograph if pixel size too small?", "Do you already know the defocus?", "Known defocus 1",
        "Known defocus 2", "Known astigmatism angle", "Desired number of parallel threads"]


def test_optional_questions_cover_other_builds():
    optional = dict(calc_ctffind4_optional_answers(_params(exhaustive_search=True)))
    assert any(re.fullmatch(p, "Determine sample tilt?") for p in optional)
    assert any(re.fullmatch(p, "Determine samnple thickness?") for p in optional)  # CTFFIND 5.0.2's spelling
    assert optional[re.escape("Slower, more exhaustive search?")] == "yes"


def test_classic_ctffind4_options_mapping():
    params = calc_ctffind4_params_from_classic(pixel_size_A=1.1, voltage_kV=300.0, cs_mm=2.7, start_defocus_A=20000.0,
                                               defstep_um=0.01, numstep=25, dast_um=0.05, phaseplate=True,
                                               min_phase_shift_deg=10.0, max_phase_shift_deg=170.0,
                                               phase_search_step_deg=10.0, num_frame_avg=7)
    assert (params.defocus_min_A, params.defocus_max_A, params.defocus_step_A) == (17500.0, 22500.0, 100.0)
    assert params.astigmatism_restraint_A == pytest.approx(500.0)
    assert params.min_phase_shift_rad == pytest.approx(math.radians(10))
    assert params.max_phase_shift_rad == pytest.approx(math.radians(170))
    assert params.phase_shift_step_rad == pytest.approx(math.radians(10))
    assert params.is_movie and params.n_frames_to_average == 7
    assert (params.amplitude_contrast, params.box_size_px, params.resmin_A, params.resmax_A) == (0.07, 1024, 50.0, 15.0)


def test_classic_defocus_range_never_negative():
    assert calc_classic_defocus_range_A(3000.0, 0.005, 25) == (1750.0, 4250.0)
    assert calc_classic_defocus_range_A(3000.0, 0.2, 25) == (2000.0, 53000.0)


def test_prompt_text_same_line_and_wrapped():
    assert calc_prompt_text("0.07\r\nPixel size ") == "Pixel size"
    assert calc_prompt_text("x\r\nOutput diagnostic image file name\r\n") == "Output diagnostic image file name"


def test_version_from_banner():
    assert calc_ctffind_version("**   Welcome to Ctffind   **\r\n   Version : 4.1.14\r\n") == "4.1.14"
    assert calc_ctffind_version("Version : 5.0.2\n") == "5.0.2"
    with pytest.raises(CtffindError, match="4.0.17 is not supported"):
        calc_ctffind_version("Version : 4.0.17\n")
    with pytest.raises(CtffindError, match="no CTFFIND banner"):
        calc_ctffind_version("Input image file name ")


# ----------------------------------------------------------------------------------------------
# CTFFIND stand-in runs
# ----------------------------------------------------------------------------------------------

def test_ctffind_micrograph_run(micrograph, tmp_path, monkeypatch):
    """Micrograph prompt order against the CTFFIND 4.1.14 stand-in (the real program is not installable
    here; this is a faithful stand-in)."""
    log = tmp_path / "dialogue.jsonl"
    monkeypatch.setenv("CTFFIND_STANDIN_LOG", str(log))
    params = _params(astigmatism_restraint_A=1000.0)
    diag = tmp_path / "mic-pow.mrc"
    out = run_ctffind4(CTFFIND, micrograph, diag, params, timeout_s=60)
    entries = _read_log(log)
    # CTFFIND writes under a temporary name next to the final one; the wrapper renames afterwards
    work_diag = Path(entries[1]["answer"])
    assert work_diag.parent == tmp_path and work_diag.name != diag.name and ".part" in work_diag.name
    _assert_dialogue_matches(entries, calc_ctffind4_answers(params, str(micrograph), str(work_diag), 1))
    assert out.version == "4.1.14"
    assert (out.diag_path, out.results_path, out.avrot_path) == (diag, tmp_path / "mic-pow.txt",
                                                                 tmp_path / "mic-pow_avrot.txt")
    for path in (out.diag_path, out.results_path, out.avrot_path):
        assert path.is_file()
    assert _leftovers(tmp_path) == []
    assert out.header.box_size_px == 256 and out.header.pixel_size_A == PIXEL_A
    assert (out.header.defocus_min_A, out.header.defocus_max_A) == (8000.0, 25000.0)
    assert params.defocus_min_A <= out.result.defocus1_A <= params.defocus_max_A
    assert out.avrot.spatial_frequency_per_A.shape == (int(128 * math.sqrt(2)) + 1,)
    with mrcfile.open(out.diag_path, permissive=True) as mrc:
        assert mrc.data.shape == (256, 256)
    assert "Welcome to Ctffind" in out.transcript


def test_ctffind_movie_run(movie, tmp_path, monkeypatch):
    """Movie prompt order (stack question, frames to average) against the CTFFIND 4.1.14 stand-in
    (the real program is not installable here; this is a faithful stand-in)."""
    log = tmp_path / "dialogue.jsonl"
    monkeypatch.setenv("CTFFIND_STANDIN_LOG", str(log))
    params = _params(is_movie=True, n_frames_to_average=2, n_threads=2)
    out = run_ctffind4(CTFFIND, movie, tmp_path / "movie-pow.mrc", params, timeout_s=60)
    entries = _read_log(log)
    _assert_dialogue_matches(entries, calc_ctffind4_answers(params, str(movie), entries[3]["answer"], 6))
    questions = [e["question"] for e in entries]
    assert questions[1:3] == ["Input is a movie (stack of frames)", "Number of frames to average together"]
    assert "Movie is gain-corrected?" in questions and "Desired number of parallel threads" in questions
    assert out.header.n_micrographs == 1
    assert "num. frames averaged: 2" in out.avrot_path.read_text()


def test_ctffind_phase_plate_run(micrograph, tmp_path, monkeypatch):
    """Phase-plate prompt order (min/max/step in radians) against the CTFFIND 4.1.14 stand-in
    (the real program is not installable here; this is a faithful stand-in)."""
    log = tmp_path / "dialogue.jsonl"
    monkeypatch.setenv("CTFFIND_STANDIN_LOG", str(log))
    params = calc_ctffind4_params_from_classic(pixel_size_A=PIXEL_A, voltage_kV=300.0, cs_mm=2.7,
                                               start_defocus_A=15000.0, defstep_um=0.02, numstep=25,
                                               fieldsize=256, resmin=30.0, resmax=5.0, phaseplate=True,
                                               min_phase_shift_deg=10.0, max_phase_shift_deg=170.0,
                                               phase_search_step_deg=20.0)
    out = run_ctffind4(CTFFIND, micrograph, tmp_path / "pp-pow.mrc", params, timeout_s=60)
    entries = _read_log(log)
    _assert_dialogue_matches(entries, calc_ctffind4_answers(params, str(micrograph), entries[1]["answer"], 1))
    by_question = {e["question"]: e["answer"] for e in entries}
    assert float(by_question["Minimum phase shift (rad)"]) == pytest.approx(math.radians(10))
    assert float(by_question["Maximum phase shift (rad)"]) == pytest.approx(math.radians(170))
    assert float(by_question["Expected (tolerated) astigmatism"]) == pytest.approx(1e6)  # classic dast 100 µm
    assert math.radians(10) - 1e-6 <= out.result.phase_shift_rad <= math.radians(170) + 1e-6


def test_ctffind_cistem_build_extra_questions_are_answered(micrograph, tmp_path, monkeypatch):
    """A cisTEM-built 4.1.14 stand-in asks the exhaustive-search question in the known-astigmatism
    branch and 'Determine sample tilt?': both are known optional questions, so the run succeeds.
    The real program is not installable here; this is a faithful stand-in."""
    monkeypatch.setenv("CTFFIND_STANDIN_CISTEM", "1")
    log = tmp_path / "dialogue.jsonl"
    monkeypatch.setenv("CTFFIND_STANDIN_LOG", str(log))
    params = _params(known_astigmatism_A=200.0, known_astigmatism_angle_deg=30.0)
    out = run_ctffind4(CTFFIND, micrograph, tmp_path / "c-pow.mrc", params, timeout_s=60)
    questions = [e["question"] for e in _read_log(log)]
    assert "Determine sample tilt?" in questions
    assert questions.index("Slower, more exhaustive search?") < questions.index("Known astigmatism")
    assert out.result.defocus1_A - out.result.defocus2_A == pytest.approx(200.0)


def test_ctffind_5_extra_questions_and_ten_columns(micrograph, tmp_path, monkeypatch):
    """A CTFFIND 5.0.2 stand-in asks tilt, thickness and extra expert questions (known optional
    questions) and writes 10-column results; the run succeeds and reports version 5.0.2.
    The real program is not installable here; this is a faithful stand-in."""
    monkeypatch.setenv("CTFFIND_STANDIN_VERSION", "5.0.2")
    log = tmp_path / "dialogue.jsonl"
    monkeypatch.setenv("CTFFIND_STANDIN_LOG", str(log))
    out = run_ctffind4(CTFFIND, micrograph, tmp_path / "five-pow.mrc", _params(n_threads=2), timeout_s=60)
    questions = [e["question"] for e in _read_log(log)]
    for extra in ("Determine sample tilt?", "Determine samnple thickness?", "Target pixel size after resampling",
                  "Weight down low resolution signal?"):
        assert extra in questions
    assert out.version == "5.0.2"
    assert len(out.results_path.read_text().splitlines()[-1].split()) == 10


@pytest.mark.slow
def test_ctffind_standin_with_appion_engine(micrograph, tmp_path, monkeypatch):
    """The stand-in's opt-in mode that computes its numbers with appion's own estimator (used by
    demos for realistic values) still speaks the protocol and writes parseable files.
    The real program is not installable here; this is a faithful stand-in."""
    monkeypatch.setenv("CTFFIND_STANDIN_ENGINE", "appion")
    out = run_ctffind4(CTFFIND, micrograph, tmp_path / "eng-pow.mrc", _params(), timeout_s=120)
    assert out.result.defocus1_A != out.result.defocus2_A  # the built-in 1D fit never reports astigmatism
    assert out.avrot.spatial_frequency_per_A.shape == out.avrot.ctf_fit.shape


def test_ctffind_unexpected_question_is_named(micrograph, tmp_path, monkeypatch):
    """A CTFFIND stand-in that asks a question the wrapper does not know: the error names that
    question and nothing is left behind.
    The real program is not installable here; this is a faithful stand-in."""
    monkeypatch.setenv("CTFFIND_STANDIN_EXTRA_QUESTION", "Use the new GPU code path?")
    with pytest.raises(CtffindDialogueError, match=re.escape("'Use the new GPU code path?'")) as info:
        run_ctffind4(CTFFIND, micrograph, tmp_path / "u-pow.mrc", _params(), timeout_s=60)
    assert "Do you know what astigmatism is present?" in str(info.value)  # what was expected instead
    assert list(tmp_path.iterdir()) == []


def test_ctffind_timeout(micrograph, tmp_path, monkeypatch):
    """A CTFFIND stand-in that hangs after the dialogue times out cleanly within the given limit,
    leaving no files.
    The real program is not installable here; this is a faithful stand-in."""
    monkeypatch.setenv("CTFFIND_STANDIN_SLEEP_S", "30")
    t0 = time.monotonic()
    with pytest.raises(CtffindTimeoutError, match="did not finish in time"):
        run_ctffind4(CTFFIND, micrograph, tmp_path / "t-pow.mrc", _params(), timeout_s=2.0)
    assert time.monotonic() - t0 < 10
    assert list(tmp_path.iterdir()) == []


def test_ctffind_nonzero_exit(micrograph, tmp_path, monkeypatch):
    """A CTFFIND stand-in failing after the dialogue.
    The real program is not installable here; this is a faithful stand-in."""
    monkeypatch.setenv("CTFFIND_STANDIN_EXIT", "3")
    with pytest.raises(CtffindError, match="exited with status 3"):
        run_ctffind4(CTFFIND, micrograph, tmp_path / "e-pow.mrc", _params(), timeout_s=60)
    assert list(tmp_path.iterdir()) == []


def test_ctffind_unsupported_version(micrograph, tmp_path, monkeypatch):
    """The CTFFIND stand-in announcing version 4.0.17 is refused.
    The real program is not installable here; this is a faithful stand-in."""
    monkeypatch.setenv("CTFFIND_STANDIN_VERSION", "4.0.17")
    with pytest.raises(CtffindError, match="4.0.17 is not supported"):
        run_ctffind4(CTFFIND, micrograph, tmp_path / "v-pow.mrc", _params(), timeout_s=60)


def test_ctffind_input_checks(micrograph, tmp_path):
    """Bad inputs are refused before any program runs (no stand-in needed)."""
    with pytest.raises(CtffindError, match="does not exist"):
        run_ctffind4(CTFFIND, tmp_path / "missing.mrc", tmp_path / "x-pow.mrc", _params())
    with pytest.raises(CtffindError, match="cannot start"):
        run_ctffind4(str(tmp_path / "no-such-ctffind"), micrograph, tmp_path / "x-pow.mrc", _params())
    with pytest.raises(CtffindError, match="single section"):
        run_ctffind4(CTFFIND, micrograph, tmp_path / "x-pow.mrc", _params(is_movie=True, n_frames_to_average=2))


# ----------------------------------------------------------------------------------------------
# Gctf
# ----------------------------------------------------------------------------------------------

def _gctf_params(**changes) -> GctfParams:
    base = dict(pixel_size_A=PIXEL_A, voltage_kV=300.0, cs_mm=2.7, defocus_min_A=8000.0, defocus_max_A=25000.0,
                defocus_step_A=250.0, box_size_px=256, resmin_A=30.0, resmax_A=5.0)
    base.update(changes)
    return GctfParams(**base)


def test_gctf_command_flags():
    cmd = calc_gctf_command("/opt/Gctf", "/data/mic.mrc", _gctf_params(do_EPA=True, gpu_id=1))
    assert cmd[0] == "/opt/Gctf" and cmd[-1] == "/data/mic.mrc"
    flags = dict(zip(cmd[1:-1:2], cmd[2:-1:2]))
    assert flags == {"--apix": "1.0", "--kV": "300.0", "--cs": "2.7", "--ac": "0.07", "--defL": "8000.0",
                     "--defH": "25000.0", "--defS": "250.0", "--astm": "1000.0", "--resL": "30.0", "--resH": "5.0",
                     "--boxsize": "256", "--do_EPA": "1", "--do_Hres_ref": "0", "--mdef_aveN": "1", "--gid": "1",
                     "--ctfstar": "NONE"}


def test_gctf_command_local_refine_and_phase_shift():
    cmd = calc_gctf_command("Gctf", "m.mrc", _gctf_params(do_local_refine=True, box_suffix="_automatch.star",
                                                          local_radius_px=1024, local_boxsize_px=512,
                                                          local_overlap=0.5, find_phase_shift=True,
                                                          min_phase_shift_deg=0.0, max_phase_shift_deg=180.0,
                                                          phase_shift_step_deg=10.0))
    flags = dict(zip(cmd[1:-1:2], cmd[2:-1:2]))
    assert flags["--do_local_refine"] == "1" and flags["--boxsuffix"] == "_automatch.star"
    assert (flags["--local_radius"], flags["--local_boxsize"], flags["--local_overlap"]) == ("1024", "512", "0.5")
    assert (flags["--phase_shift_L"], flags["--phase_shift_H"], flags["--phase_shift_S"]) == ("0.0", "180.0", "10.0")
    assert flags["--phase_shift_T"] == "1"


def test_gctf_params_from_classic():
    p = calc_gctf_params_from_classic(pixel_size_A=1.0, voltage_kV=300.0, cs_mm=2.7, start_defocus_A=20000.0,
                                      dast_um=0.05, do_EPA=True)
    assert (p.defocus_min_A, p.defocus_max_A, p.defocus_step_A) == (7500.0, 32500.0, 500.0)
    assert (p.resmin_A, p.resmax_A, p.astigmatism_A, p.do_EPA) == (50.0, 4.0, 500.0, True)


GCTF_LOG = """\
   Defocus_U   Defocus_V       Angle         CCC
    21000.00    21500.00       40.00    0.020000
**************************************   LAST CYCLE    ************************************************************ *

   Defocus_U   Defocus_V       Angle         CCC
    22195.93    22722.04       47.05    0.039181  Final Values

Resolution limit estimated by EPA: RES_LIMIT \x1b[1;31m3.972\x1b[0m
Estimated Bfactor: B_FACTOR  5.09

......................................  VALIDATION  ......................................
Differences from Original Values:
  RESOLUTION   Defocus_U   Defocus_V     Angle       CCC      CONVERGENCE
  20-08A       -50.77       11.77        0.10     0.00     GOOD
"""


def test_parse_gctf_log_final_values_and_res_limit():
    r = parse_gctf_log(GCTF_LOG)
    assert (r.defocus1_A, r.defocus2_A, r.astig_angle_deg, r.cross_correlation) == (22195.93, 22722.04, 47.05,
                                                                                    0.039181)
    assert r.fit_resolution_A == 3.972 and r.phase_shift_rad == 0.0


def test_parse_gctf_log_phase_shift_in_degrees_becomes_radians():
    text = ("   Defocus_U   Defocus_V       Angle Phase_shift         CCC\n"
            "    15000.00    14000.00      -12.50       90.00    0.051000  Final Values\n")
    r = parse_gctf_log(text)
    assert r.phase_shift_rad == pytest.approx(math.pi / 2)
    assert r.cross_correlation == 0.051 and math.isinf(r.fit_resolution_A)


def test_parse_gctf_log_without_final_values():
    with pytest.raises(GctfError, match="Final Values"):
        parse_gctf_log(GCTF_LOG.replace("Final Values", ""))


def test_gctf_run(micrograph, tmp_path):
    """Gctf 1.06 stand-in: flags in, log / .ctf / _EPA.log out.
    The real program is not installable here; this is a faithful stand-in."""
    mic = tmp_path / "g.mrc"
    mic.symlink_to(micrograph)
    params = _gctf_params(do_EPA=True)
    out = run_gctf(GCTF, mic, params, timeout_s=60)
    assert out.log_path == tmp_path / "g_gctf.log" and out.log_path.is_file()
    assert out.ctf_path == tmp_path / "g.ctf"
    assert (tmp_path / "g_EPA.log").is_file()
    assert not (tmp_path / "micrographs_all_gctf.star").exists()  # --ctfstar NONE
    assert params.defocus_min_A <= out.result.defocus1_A <= params.defocus_max_A
    assert "Final Values" in out.stdout
    assert math.isfinite(out.result.fit_resolution_A)


def test_gctf_run_phase_shift_and_ansi(micrograph, tmp_path, monkeypatch):
    """Gctf stand-in with a phase-shift search and coloured output.
    The real program is not installable here; this is a faithful stand-in."""
    monkeypatch.setenv("GCTF_STANDIN_ANSI", "1")
    mic = tmp_path / "p.mrc"
    mic.symlink_to(micrograph)
    out = run_gctf(GCTF, mic, _gctf_params(find_phase_shift=True, min_phase_shift_deg=20.0,
                                           max_phase_shift_deg=160.0, phase_shift_step_deg=20.0), timeout_s=60)
    assert math.radians(20) - 1e-6 <= out.result.phase_shift_rad <= math.radians(160) + 1e-6
    assert "\x1b[" in out.log_path.read_text() and math.isfinite(out.result.fit_resolution_A)


def test_gctf_failures(micrograph, tmp_path, monkeypatch):
    """Gctf stand-in: non-zero exit and timeout become GctfError.
    The real program is not installable here; this is a faithful stand-in."""
    mic = tmp_path / "f.mrc"
    mic.symlink_to(micrograph)
    monkeypatch.setenv("GCTF_STANDIN_EXIT", "2")
    with pytest.raises(GctfError, match="exited with status 2"):
        run_gctf(GCTF, mic, _gctf_params(), timeout_s=60)
    monkeypatch.delenv("GCTF_STANDIN_EXIT")
    monkeypatch.setenv("GCTF_STANDIN_SLEEP_S", "30")
    t0 = time.monotonic()
    with pytest.raises(GctfError, match="did not finish"):
        run_gctf(GCTF, mic, _gctf_params(), timeout_s=1.5)
    assert time.monotonic() - t0 < 10
    with pytest.raises(GctfError, match="does not exist"):
        run_gctf(GCTF, tmp_path / "missing.mrc", _gctf_params())
