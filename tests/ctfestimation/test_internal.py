"""appion's own CTF estimator (appion.ctfestimation.calc.internal) on simulated micrographs.

Micrographs come from appion.base.simulate.calc.calc_micrograph, whose truth follows CTFFIND's
conventions (defocus1 along astig_angle_deg, CCW from x = numpy axis 1).  The images are
2048² (a quarter of the benchmark's 4096², so ~2× noisier estimates); the acceptance bounds
asserted per case are the issue's worst-case ones: |error of mean defocus| ≤ 10 Å, RMS error
of the defocus-versus-direction profile ≤ 10 Å, phase shift within 0.05 rad.  The full table
with medians is benchmarks/ctf.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from appion.base.physics import calc_chi, calc_defocus_at_azimuth_A
from appion.base.simulate.calc import MicrographParams, calc_micrograph
from appion.ctfestimation.calc import internal
from appion.ctfestimation.calc.internal import CtfSearchParams, calc_ctf_fit


def _params(case: MicrographParams, **kw) -> CtfSearchParams:
    return CtfSearchParams(pixel_size_A=case.pixel_size_A, voltage_kV=case.voltage_kV, cs_mm=case.cs_mm,
                           amplitude_contrast=case.amplitude_contrast, **kw)


def _profile_rms_A(result, case: MicrographParams) -> float:
    theta = np.linspace(0.0, np.pi, 360, endpoint=False)
    fit = calc_defocus_at_azimuth_A(result.defocus1_A, result.defocus2_A, result.astig_angle_deg, theta)
    true = calc_defocus_at_azimuth_A(case.defocus1_A, case.defocus2_A, case.astig_angle_deg, theta)
    return float(np.sqrt(np.mean((fit - true) ** 2)))


CASES = [
    MicrographParams(shape=(2048, 2048), pixel_size_A=1.05, voltage_kV=300, cs_mm=2.7, defocus1_A=15400,
                     defocus2_A=14600, astig_angle_deg=35.0, dose_e_per_A2=40, seed=11),
    MicrographParams(shape=(2048, 2048), pixel_size_A=0.85, voltage_kV=200, cs_mm=2.7, defocus1_A=30300,
                     defocus2_A=29700, astig_angle_deg=-62.0, dose_e_per_A2=50, seed=12),
    MicrographParams(shape=(2048, 2048), pixel_size_A=1.25, voltage_kV=300, cs_mm=2.7, defocus1_A=9000,
                     defocus2_A=8100, astig_angle_deg=118.0, dose_e_per_A2=60, seed=13),
]


@pytest.fixture(scope="module")
def simulated():
    return [calc_micrograph(case)[0] for case in CASES]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_defocus_and_astigmatism_within_acceptance(simulated, index):
    case = CASES[index]
    result = calc_ctf_fit(simulated[index], _params(case)).result
    mean_true = 0.5 * (case.defocus1_A + case.defocus2_A)
    assert abs(result.mean_defocus_A - mean_true) <= 10.0
    assert _profile_rms_A(result, case) <= 10.0
    assert result.defocus1_A >= result.defocus2_A
    assert -90.0 < result.astig_angle_deg <= 90.0
    assert result.cross_correlation > 0.3
    assert result.fit_resolution_A < 8.0


def test_transposed_image_mirrors_the_astigmatism_angle(simulated):
    """Convention check: swapping x and y maps the azimuth θ to 90° − θ."""
    case = CASES[0]
    result = calc_ctf_fit(np.ascontiguousarray(simulated[0].T), _params(case)).result
    mirrored = MicrographParams(**{**case.__dict__, "astig_angle_deg": 90.0 - case.astig_angle_deg})
    assert _profile_rms_A(result, mirrored) <= 10.0
    assert _profile_rms_A(result, case) > 100.0


def test_astigmatism_restraint_pulls_the_fit_towards_the_tolerance(simulated):
    case = CASES[2]                                       # true |Δf1 − Δf2| = 900 Å
    free = calc_ctf_fit(simulated[2], _params(case)).result
    held = calc_ctf_fit(simulated[2], _params(case, astig_restraint_A=200.0)).result
    assert abs((free.defocus1_A - free.defocus2_A) - 900.0) <= 20.0
    assert held.defocus1_A - held.defocus2_A < 450.0


def test_phase_shift_is_found():
    case = MicrographParams(shape=(2048, 2048), pixel_size_A=1.0, voltage_kV=300, cs_mm=2.7, defocus1_A=8300,
                            defocus2_A=7900, astig_angle_deg=20.0, phase_shift_rad=1.3, dose_e_per_A2=50, seed=21)
    image, _ = calc_micrograph(case)
    result = calc_ctf_fit(image, _params(case, find_phase_shift=True)).result
    dphase = (result.phase_shift_rad - case.phase_shift_rad + math.pi / 2) % math.pi - math.pi / 2
    assert abs(dphase) <= 0.05
    assert abs(result.mean_defocus_A - 8100.0) <= 10.0
    assert _profile_rms_A(result, case) <= 10.0


def test_fit_resolution_worsens_with_bfactor():
    base = dict(shape=(2048, 2048), pixel_size_A=1.0, voltage_kV=300, cs_mm=2.7, defocus1_A=15200,
                defocus2_A=14800, astig_angle_deg=10.0, dose_e_per_A2=40, seed=5)
    sharp = calc_ctf_fit(calc_micrograph(MicrographParams(**base, bfactor_A2=30.0))[0],
                         CtfSearchParams(1.0, 300, 2.7, 0.07)).result
    blurred = calc_ctf_fit(calc_micrograph(MicrographParams(**base, bfactor_A2=250.0))[0],
                           CtfSearchParams(1.0, 300, 2.7, 0.07)).result
    assert blurred.fit_resolution_A > sharp.fit_resolution_A + 0.5
    assert blurred.resolution_50_percent_A > sharp.resolution_50_percent_A
    assert blurred.cross_correlation < sharp.cross_correlation


def test_pure_noise_gets_a_low_score_and_a_poor_resolution():
    rng = np.random.default_rng(3)
    image = rng.poisson(40.0, size=(2048, 2048)).astype(np.float32)
    result = calc_ctf_fit(image, CtfSearchParams(1.0, 300, 2.7, 0.07)).result
    assert result.cross_correlation < 0.1
    assert result.fit_resolution_A > 10.0
    assert result.resolution_80_percent_A >= 20.0


def test_real_micrograph_scores_far_above_noise(simulated):
    case = CASES[0]
    real = calc_ctf_fit(simulated[0], _params(case)).result
    rng = np.random.default_rng(4)
    noise = rng.poisson(float(simulated[0].mean()), size=simulated[0].shape).astype(np.float32)
    fake = calc_ctf_fit(noise, _params(case)).result
    assert real.cross_correlation > 5 * fake.cross_correlation
    assert real.fit_resolution_A < fake.fit_resolution_A


def test_movie_frame_groups_are_accepted_as_a_stack(simulated):
    case = CASES[0]
    stack = np.stack([simulated[0][:, :1024], simulated[0][:, 1024:]])
    result = calc_ctf_fit(stack, _params(case)).result
    assert abs(result.mean_defocus_A - 15000.0) <= 15.0


@pytest.mark.parametrize("change, image_kind, message", [
    ({}, "blank", "blank"),
    ({}, "nan", "NaN"),
    ({}, "small", "smaller than the box"),
    ({"pixel_size_A": 0.0}, "ok", "pixel size"),
    ({"resmax_A": 30.0}, "ok", "resmax"),
    ({"resmax_A": 40.0}, "ok", "resmax"),
    ({"resmax_A": 1.5}, "ok", "Nyquist"),
    ({"dfmin_A": 60000.0}, "ok", "dfmin"),
])
def test_bad_input_raises_a_clear_error(change, image_kind, message):
    rng = np.random.default_rng(0)
    image = rng.normal(10.0, 1.0, size=(600, 600)).astype(np.float32)
    if image_kind == "blank":
        image[:] = 7.0
    elif image_kind == "nan":
        image[5, 7] = np.nan
    elif image_kind == "small":
        image = image[:300, :]
    params = CtfSearchParams(**{**dict(pixel_size_A=1.0, voltage_kV=300, cs_mm=2.7, amplitude_contrast=0.07), **change})
    with pytest.raises(ValueError, match=message):
        calc_ctf_fit(image, params)


def test_tile_origins_cover_the_image():
    for size, box, overlap in [(4096, 512, 0.0), (5760, 512, 0.0), (1000, 512, 0.5), (512, 512, 0.0)]:
        origins = internal.calc_tile_origins(size, box, overlap)
        assert origins[0] == 0 and origins[-1] == size - box
        assert np.all(np.diff(origins) <= box * (1 - overlap) + 1)
        assert np.all(np.diff(origins) > 0) or len(origins) == 1


def test_power_spectrum_puts_a_wave_at_its_frequency():
    """A plane wave with 8 periods per 256-px tile along y (axis 0) and 20 along x lands at bin (8, 20)."""
    y, x = np.mgrid[0:1024, 0:1024]
    image = np.cos(2 * np.pi * (8 * y / 256 + 20 * x / 256)).astype(np.float32)
    power = internal.calc_power_spectrum(image, 256)
    assert power.shape == (256, 129)
    assert np.unravel_index(np.argmax(power), power.shape) == (8, 20)


def test_equiphase_radius_matches_the_ctf_phase():
    """Pixels mapped to k_e have the phase a non-astigmatic CTF at the mean defocus has at k_e."""
    power = np.ones((256, 129))
    spec = internal.calc_spectrum_data(power, 1.0)
    d1, d2, ang = 16000.0, 15000.0, 25.0
    lam, cs_A, _ = internal._optics(CtfSearchParams(1.0, 300, 2.7, 0.07))
    ke = internal.calc_equiphase_radius(spec, d1, d2, ang, lam, cs_A)
    theta = np.arctan2(spec.sin2, spec.cos2) / 2
    chi_pixel = calc_chi(spec.k, theta, d1, d2, ang, 300e3, 2.7)
    chi_mean = calc_chi(ke, 0.0, 15500.0, 15500.0, 0.0, 300e3, 2.7)
    np.testing.assert_allclose(chi_mean, chi_pixel, atol=1e-6)


def test_warm_up_runs_the_whole_estimator_on_a_tiny_micrograph(tmp_path):
    """estimate.warm_up_engines: both cases (with and without the phase search) run, outputs removed."""
    from appion.ctfestimation import estimate

    seconds = estimate.warm_up_engines(work_dir=tmp_path)
    assert set(seconds) == {"plain", "phase"} and all(s > 0 for s in seconds.values())
    assert list(tmp_path.iterdir()) == []


def test_diagnostic_png_is_drawn_with_the_fit(tmp_path):
    """The Pillow-drawn diagnostic: 990×432 RGB, the half-and-half spectrum panel where it belongs."""
    from PIL import Image

    from appion.ctfestimation import outputs

    case = MicrographParams(shape=(1024, 1024), pixel_size_A=1.0, defocus1_A=15000.0, defocus2_A=14500.0,
                            astig_angle_deg=20.0, seed=5)
    image, _ = calc_micrograph(case)
    fit = calc_ctf_fit(image.astype(np.float32), _params(case, box=256))
    path = outputs.write_diagnostic_png(tmp_path / "d.png", fit, 5.0, title="d.mrc")
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (432, 990, 3)
    panel = picture[60:360, 120:420].astype(float).mean(axis=2)
    assert panel.std() > 30  # rings and noise, not a blank panel
    assert outputs.calc_ticks(-1.5, 2.5, 8)[1] == 0.5 and outputs.format_tick(-0.2, 0.1) == "\u22120.2"
