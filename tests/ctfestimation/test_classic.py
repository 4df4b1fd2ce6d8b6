"""Classic CTFFIND formats and the classic ApCtfData mapping (appion.ctfestimation.calc.classic)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from appion.base.physics import calc_ctf, calc_defocus_at_azimuth_A
from appion.ctfestimation.calc.classic import (CLASSIC_INF_RESOLUTION_A, AvrotData, CtffindFormatError,
                                               CtffindHeader, calc_apctfdata_fields, format_avrot,
                                               format_ctffind_results, parse_avrot, parse_ctffind_header,
                                               parse_ctffind_results)
from appion.ctfestimation.calc.result import CtfResult

# Shared real-format fixtures sit next to the repository (as in tests/conftest.py), else in /work/shared.
_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FIXTURES = (_SHARED if _SHARED.exists() else Path("/work/shared")) / "fixtures" / "ctffind"
RESULTS_5 = FIXTURES / "ctffind5_output.txt"
AVROT_5 = FIXTURES / "ctffind5_output_avrot.txt"
# Truth of the simulated micrograph behind the CTFFIND 5.0.2 fixture (fixtures/README.md).
TRUTH = {"defocus1_A": 31346.8, "defocus2_A": 30946.8, "angle_deg": 49.96, "voltage_kV": 200.0, "cs_mm": 2.0,
         "pixel_size_A": 1.06}

# Every column of classic Appion's ApCtfData (appionlib/appiondata.py), so a typo in a key fails.
APCTFDATA_COLUMNS = {
    "acerun", "image", "cs", "defocusinit", "amplitude_contrast", "defocus1", "defocus2", "angle_astigmatism",
    "ctffind4_resolution", "confidence", "confidence_d", "confidence_30_10", "confidence_5_peak",
    "overfocus_conf_30_10", "overfocus_conf_5_peak", "resolution_80_percent", "resolution_50_percent",
    "graph1", "graph2", "graph3", "graph4", "localplot", "localCTFstarfile", "ctfvalues_file",
    "cross_correlation", "tilt_angle", "tilt_axis_angle", "mat_file", "extra_phase_shift",
}


def _header(**changes) -> CtffindHeader:
    base = dict(version="4.1.14", run_on="2026-11-21 10:00:00", input_file="mic.mrc", pixel_size_A=1.0,
                voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.07, box_size_px=512, resmin_A=30.0, resmax_A=5.0,
                defocus_min_A=5000.0, defocus_max_A=50000.0)
    base.update(changes)
    return CtffindHeader(**base)


# ----------------------------------------------------------------------------------------------
# results file
# ----------------------------------------------------------------------------------------------

def test_parse_ctffind5_fixture_maps_columns_to_the_truth():
    """The real CTFFIND 5.0.2 file (10 columns) parses, and its columns land in the right fields."""
    results = parse_ctffind_results(RESULTS_5.read_text())
    assert len(results) == 1
    r = results[0]
    # defocus 1 and 2 differ by 400 Å in the truth, so a column swap cannot pass these tolerances
    assert abs(r.defocus1_A - TRUTH["defocus1_A"]) < 50
    assert abs(r.defocus2_A - TRUTH["defocus2_A"]) < 50
    assert abs(r.astig_angle_deg - TRUTH["angle_deg"]) < 1.0
    assert r.phase_shift_rad == 0.0
    assert 0.0 < r.cross_correlation < 1.0
    assert 2.0 < r.fit_resolution_A < 5.0  # the fit resolution column, not the tilt/thickness zeros


def test_parse_ctffind5_header():
    header = parse_ctffind_header(RESULTS_5.read_text())
    assert header.version == "5.0.2"
    assert header.input_file == "mic00.mrc"
    assert (header.pixel_size_A, header.voltage_kV, header.cs_mm) == (1.06, 200.0, 2.0)
    assert (header.box_size_px, header.resmin_A, header.resmax_A) == (512, 30.0, 5.0)
    assert (header.defocus_min_A, header.defocus_max_A) == (5000.0, 50000.0)


def test_format_reproduces_real_header_and_first_seven_columns():
    """Formatting the fixture's own values gives CTFFIND's text (header lines 1-4, data columns 1-7)."""
    text = RESULTS_5.read_text()
    out = format_ctffind_results(parse_ctffind_results(text), parse_ctffind_header(text))
    real_lines, out_lines = text.splitlines(), out.splitlines()
    assert out_lines[:4] == real_lines[:4]
    assert out_lines[4].startswith("# Columns: #1 - micrograph number;")
    assert real_lines[4].startswith(out_lines[4])  # CTFFIND 5 only appends its three extra columns
    assert out_lines[5].split() == real_lines[5].split()[:7]
    assert len(out_lines) == 6


def test_results_round_trip_with_inf_negative_angle_and_several_micrographs():
    results = [CtfResult(10588.083984, 9956.6875, -44.710212, 0.0, 0.494779, 4.102857),
               CtfResult(20000.5, 21000.25, 135.0, 1.570796, -0.05, math.inf)]
    text = format_ctffind_results(results, _header())
    assert "Number of micrographs: 2" in text
    data = [line for line in text.splitlines() if not line.startswith("#")]
    assert data[0] == "1.000000 10588.083984 9956.687500 -44.710212 0.000000 0.494779 4.102857"
    assert data[1].split()[0] == "2.000000" and data[1].split()[-1] == "inf"
    back = parse_ctffind_results(text)
    assert back == results


def test_parse_rejects_wrong_column_count_naming_the_line():
    text = "# Output from CTFFind version 4.1.14, run on x\n1.0 2.0 3.0 4.0 5.0\n"
    with pytest.raises(CtffindFormatError, match="line 2 has 5 columns"):
        parse_ctffind_results(text)


def test_parse_rejects_non_numbers_and_empty():
    with pytest.raises(CtffindFormatError, match="'abc' is not a number"):
        parse_ctffind_results("1 2 3 abc 5 6 7\n")
    with pytest.raises(CtffindFormatError, match="no result lines"):
        parse_ctffind_results("# only a comment\n\n")


def test_header_parse_reports_missing_lines():
    with pytest.raises(CtffindFormatError, match="optics"):
        parse_ctffind_header("# Output from CTFFind version 4.1.14, run on x\n"
                             "# Input file: a.mrc ; Number of micrographs: 1\n"
                             "# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; "
                             "min. def.: 5000.0 um; max. def. 50000.0 um\n1 2 3 4 5 6 7\n")


# ----------------------------------------------------------------------------------------------
# avrot file
# ----------------------------------------------------------------------------------------------

def test_avrot_fixture_round_trips_exactly():
    """parse then format gives back the real CTFFIND 5.0.2 file byte for byte (incl. the %14.5f line)."""
    text = AVROT_5.read_text()
    avrots = parse_avrot(text)
    header = parse_ctffind_header(text)
    assert header.n_frames_averaged == 1
    assert format_avrot(avrots, header) == text


def test_avrot_fixture_rows_are_in_ctffind_order():
    """Row 1 is a uniform frequency axis; row 4 (CTF fit) follows CTF² of the truth, rows 5-6 do not."""
    (avrot,) = parse_avrot(AVROT_5.read_text())
    k = avrot.spatial_frequency_per_A
    assert k.shape == (363,)  # box 512: int(256·√2) + 1 bins, out to the corner
    assert k[0] == 0.0 and np.allclose(np.diff(k), k[1], atol=2e-6)
    in_fit = (k > 1 / 30) & (k < 1 / 5)
    mean_df = 0.5 * (TRUTH["defocus1_A"] + TRUTH["defocus2_A"])
    ctf2 = calc_ctf(k, np.zeros_like(k), mean_df, mean_df, 0.0, TRUTH["voltage_kV"] * 1e3, TRUTH["cs_mm"]) ** 2

    def corr(row):
        return np.corrcoef(row[in_fit], ctf2[in_fit])[0, 1]

    assert corr(avrot.ctf_fit) > 0.9
    assert abs(corr(avrot.cross_correlation)) < 0.3
    assert abs(corr(avrot.noise_2sigma)) < 0.3
    assert np.all(np.abs(avrot.cross_correlation) <= 1.0)


def test_avrot_rejects_ragged_blocks():
    good = " ".join(["0.1"] * 4)
    text = "\n".join([good] * 5 + ["0.1 0.2"]) + "\n"
    with pytest.raises(CtffindFormatError, match="line 6 has 2 values"):
        parse_avrot(text)
    with pytest.raises(CtffindFormatError, match="multiple of 6"):
        parse_avrot("\n".join([good] * 5) + "\n")


def test_format_avrot_two_micrographs_and_frames_averaged():
    rng = np.random.default_rng(1)
    blocks = [AvrotData(*[rng.random(10) for _ in range(6)]) for _ in range(2)]
    text = format_avrot(blocks, _header(n_frames_averaged=7))
    assert "; num. frames averaged: 7" in text
    back = parse_avrot(text)
    assert len(back) == 2
    for block, parsed in zip(blocks, back):
        for a, b in zip(block.as_rows(), parsed.as_rows()):
            assert np.allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# classic ApCtfData mapping
# ----------------------------------------------------------------------------------------------

def test_apctfdata_worked_example_from_the_fixture():
    """Classic ctffind4.py + ctfinsert.py steps, by hand, for the fixture's fit."""
    (r,) = parse_ctffind_results(RESULTS_5.read_text())
    fields = calc_apctfdata_fields(r, cs_mm=2.0, amplitude_contrast=0.07, defocus_init_m=3.1e-6)
    # column 3 (the smaller) becomes defocus1; angle + 90 = 139.901193 wraps to -40.098807
    assert fields["defocus1"] == pytest.approx(30952.908203e-10, rel=1e-12)
    assert fields["defocus2"] == pytest.approx(31346.078125e-10, rel=1e-12)
    assert fields["angle_astigmatism"] == pytest.approx(49.901193 + 90 - 180)
    assert fields["cross_correlation"] == fields["confidence"] == 0.538313
    assert fields["confidence_d"] == round(math.sqrt(0.538313), 5)
    assert fields["ctffind4_resolution"] == 3.894347
    assert fields["extra_phase_shift"] == 0.0
    assert fields["defocusinit"] == 3.1e-6
    assert (fields["cs"], fields["amplitude_contrast"]) == (2.0, 0.07)
    assert set(fields) <= APCTFDATA_COLUMNS


def test_apctfdata_swaps_when_first_defocus_is_smaller():
    """A fit with defocus 1 < defocus 2 (as Gctf often reports U < V) keeps defocus1 and its angle."""
    r = CtfResult(22195.93, 22722.04, 47.05, 0.0, 0.039181, 3.972)
    fields = calc_apctfdata_fields(r, cs_mm=2.7, amplitude_contrast=0.1)
    assert fields["defocus1"] == pytest.approx(22195.93e-10)
    assert fields["defocus2"] == pytest.approx(22722.04e-10)
    assert fields["angle_astigmatism"] == pytest.approx(47.05)


def test_apctfdata_preserves_the_astigmatism_physically():
    """For any fit, the stored (defocus1, defocus2, angle) gives the same defocus at every azimuth."""
    rng = np.random.default_rng(7)
    theta = np.linspace(0, 2 * np.pi, 73)
    for _ in range(200):
        df1, df2 = rng.uniform(3000, 40000, size=2)
        angle = rng.uniform(-400, 400)
        fields = calc_apctfdata_fields(CtfResult(df1, df2, angle, 0.0, 0.3, 4.0), cs_mm=2.7, amplitude_contrast=0.07)
        d1, d2, a = fields["defocus1"] * 1e10, fields["defocus2"] * 1e10, fields["angle_astigmatism"]
        assert abs(d1) <= abs(d2)
        assert -90.0 < a <= 90.0
        np.testing.assert_allclose(calc_defocus_at_azimuth_A(d1, d2, a, theta),
                                   calc_defocus_at_azimuth_A(df1, df2, angle, theta), rtol=1e-9)


def test_apctfdata_angle_minus_90_is_stored_as_90():
    fields = calc_apctfdata_fields(CtfResult(20000.0, 19000.0, -180.0, 0.0, 0.2, 5.0), cs_mm=2.7,
                                   amplitude_contrast=0.07)
    assert fields["angle_astigmatism"] == 90.0


def test_apctfdata_inf_resolution_negative_defoci_and_negative_cc():
    r = CtfResult(-21000.0, -20000.0, 10.0, 0.5, -0.04, math.inf)
    fields = calc_apctfdata_fields(r, cs_mm=2.7, amplitude_contrast=0.07)
    assert fields["ctffind4_resolution"] == CLASSIC_INF_RESOLUTION_A == 100000.0
    assert fields["defocus1"] == pytest.approx(20000e-10) and fields["defocus2"] == pytest.approx(21000e-10)
    assert fields["confidence"] == -0.04 and fields["confidence_d"] == round(math.sqrt(0.04), 5)
    assert fields["extra_phase_shift"] == 0.5
    assert "defocusinit" not in fields


def test_apctfdata_copies_appion_confidences_only_when_present():
    bare = calc_apctfdata_fields(CtfResult(1e4, 1.1e4, 0.0, 0.0, 0.3, 4.0), cs_mm=2.7, amplitude_contrast=0.07)
    for key in ("confidence_30_10", "confidence_5_peak", "resolution_80_percent", "resolution_50_percent"):
        assert key not in bare
    full = calc_apctfdata_fields(CtfResult(1e4, 1.1e4, 0.0, 0.0, 0.3, 4.0, confidence_30_10=0.81,
                                           confidence_5_peak=0.77, resolution_80_percent_A=6.5,
                                           resolution_50_percent_A=4.9), cs_mm=2.7, amplitude_contrast=0.07)
    assert (full["confidence_30_10"], full["confidence_5_peak"]) == (0.81, 0.77)
    assert (full["resolution_80_percent"], full["resolution_50_percent"]) == (6.5, 4.9)
    assert full["confidence"] == 0.3  # classic keeps the cross correlation as "confidence"
    assert set(full) <= APCTFDATA_COLUMNS
