"""Sample tilt: the simulator's tilted specimens are real (the CTF estimator sees the defocus change), and the
per-tile fit recovers tilt and axis.

The fit's precision is set by the number of Fourier pixels per tile (the specimen's own speckle), i.e. by
the field of view: these cases are 1024² at 1.6 Å (a 1640 Å field; a 4k micrograph at 0.83 Å has 3400 Å).
Measured on 12 random cases (tilt 0-40°, defocus 0.8-3 µm, astigmatism ≤ 1000 Å): rms 0.7°, max 1.3°
at 1.6 Å/px; at 1 Å/px (a 1024 Å field) rms 1.9°, max 3.4°.
"""
import math

import numpy as np
import pytest

from appion.base.simulate.calc import MicrographParams, calc_defocus_map_A, calc_micrograph
from appion.ctfestimation.calc.internal import CtfSearchParams, calc_ctf_fit
from appion.quality.calc.internal.tilt import (TiltError, TiltParams, calc_plane_fit, calc_tilt_fit,
                                               calc_tilt_from_gradient)


def test_defocus_map_follows_the_stated_axis():
    offset = calc_defocus_map_A((101, 101), 2.0, 20.0, 30.0)
    assert offset[50, 50] == pytest.approx(0.0, abs=1e-9)
    # along the axis (30° from x) nothing changes; towards 120° the defocus grows by tan(20°) per Å
    step = 10
    along = offset[50 + round(step * math.sin(math.radians(30))), 50 + round(step * math.cos(math.radians(30)))]
    assert abs(along) < 0.5 * 2.0 * math.tan(math.radians(20.0)) * 2
    assert offset[100, 50] == pytest.approx(math.tan(math.radians(20)) * math.cos(math.radians(30)) * 100.0)
    assert offset[50, 0] == pytest.approx(math.tan(math.radians(20)) * math.sin(math.radians(30)) * 100.0)


def test_plane_and_gradient_round_trip():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-500, 500, 9), rng.uniform(-500, 500, 9)
    for tilt, axis in ((12.0, 0.0), (30.0, 135.0), (5.0, 300.0)):
        a = math.radians(axis)
        d = 20000.0 + math.tan(math.radians(tilt)) * (-math.sin(a) * x + math.cos(a) * y)
        d0, gx, gy, resid = calc_plane_fit(x, y, d)
        got_tilt, got_axis = calc_tilt_from_gradient(gx, gy)
        assert d0 == pytest.approx(20000.0) and np.abs(resid).max() < 1e-6
        assert got_tilt == pytest.approx(tilt) and got_axis == pytest.approx(axis)
    assert calc_tilt_from_gradient(0.0, 0.0) == (0.0, None)


def test_simulated_tilt_is_seen_by_the_ctf_estimator():
    """Left and right halves of a specimen tilted 30° about the y axis differ by tan 30° × 512 Å in defocus."""
    image, _ = calc_micrograph(MicrographParams(shape=(1024, 1024), defocus1_A=15000, defocus2_A=15000,
                                                tilt_deg=30.0, tilt_axis_deg=90.0, seed=4))
    params = CtfSearchParams(pixel_size_A=1.0, voltage_kV=300, cs_mm=2.7, amplitude_contrast=0.07, box=256,
                             resmax_A=4.5, dfmin_A=12000, dfmax_A=18000)
    left = calc_ctf_fit(np.ascontiguousarray(image[:, :512]), params).result
    right = calc_ctf_fit(np.ascontiguousarray(image[:, 512:]), params).result
    mean = lambda r: 0.5 * (r.defocus1_A + r.defocus2_A)  # noqa: E731
    # axis 90°: the defocus grows towards 180°, i.e. to the left
    assert mean(left) - mean(right) == pytest.approx(math.tan(math.radians(30)) * 512, abs=60)
    assert 0.5 * (mean(left) + mean(right)) == pytest.approx(15000, abs=60)


CASES = [  # tilt, axis, mean defocus, astigmatism, astigmatism angle
    (0.0, 0.0, 16000.0, 400.0, 20.0),
    (8.0, 200.0, 24000.0, 700.0, -60.0),
    (15.0, 40.0, 12000.0, 300.0, 75.0),
    (25.0, 310.0, 19000.0, 900.0, 5.0),
    (35.0, 120.0, 28000.0, 200.0, -30.0),
]


@pytest.mark.parametrize("tilt,axis,defocus,astig,angle", CASES)
def test_tilt_recovered_within_3_degrees(tilt, axis, defocus, astig, angle):
    p = MicrographParams(shape=(1024, 1024), pixel_size_A=1.6, defocus1_A=defocus + astig / 2,
                         defocus2_A=defocus - astig / 2, astig_angle_deg=angle, tilt_deg=tilt, tilt_axis_deg=axis,
                         seed=int(tilt * 10 + axis))
    image, _ = calc_micrograph(p)
    # the CTF step's output order (defocus2 first here) and its lack of an angle must not matter
    fit = calc_tilt_fit(image, TiltParams(pixel_size_A=1.6, voltage_kV=300, cs_mm=2.7, amplitude_contrast=0.07,
                                          defocus1_A=p.defocus2_A, defocus2_A=p.defocus1_A))
    assert abs(fit.tilt_deg - tilt) < 3.0, fit
    if tilt >= 8:
        assert abs((fit.tilt_axis_deg - axis + 180) % 360 - 180) < 10.0, fit
    assert fit.defocus_centre_A == pytest.approx(defocus, abs=100)
    assert fit.tile_used.sum() >= 8


def test_no_rings_no_tilt():
    rng = np.random.default_rng(2)
    noise = rng.poisson(64.0, size=(1024, 1024)).astype(np.float32)
    with pytest.raises(TiltError, match="tiles show Thon rings"):
        calc_tilt_fit(noise, TiltParams(pixel_size_A=1.6, voltage_kV=300, cs_mm=2.7, amplitude_contrast=0.07,
                                        defocus1_A=15000, defocus2_A=15000))


def test_small_field_gives_no_tilt_rather_than_a_wrong_one():
    """512 Å of field: the tiles' scatter makes |gradient| meaningless (it would read 10-40° on a flat
    specimen); the fit says so instead of reporting it."""
    for seed in range(3):
        image, _ = calc_micrograph(MicrographParams(shape=(512, 512), dose_e_per_A2=32.0, defocus1_A=15200,
                                                    defocus2_A=14800, seed=seed))
        with pytest.raises(TiltError, match="too uncertain|Thon rings"):
            calc_tilt_fit(image, TiltParams(pixel_size_A=1.0, voltage_kV=300, cs_mm=2.7, amplitude_contrast=0.07,
                                            defocus1_A=15200, defocus2_A=14800))
