"""Relative ice thickness ranks simulated ice by thickness; crystalline ice is flagged, vitreous ice is not."""
import numpy as np
import pytest
from scipy import stats

from appion.base.simulate.calc import CRYSTAL_ICE_LINES_A, MicrographParams, calc_micrograph
from appion.quality.calc.internal.ice import calc_crystalline_spots, calc_ice

THICKNESS_NM = (0.0, 15.0, 30.0, 60.0, 120.0)


@pytest.mark.parametrize("pixel_A,dose", [(1.0, 40.0), (1.3, 30.0)])
def test_ice_thickness_ranking_matches_simulated_order(pixel_A, dose):
    rng = np.random.default_rng(int(pixel_A * 10))
    order = rng.permutation(len(THICKNESS_NM))  # images made in a shuffled order, each at its own defocus
    measured = {}
    for i in order:
        defocus = float(rng.uniform(8000, 30000))
        image, _ = calc_micrograph(MicrographParams(shape=(1024, 1024), pixel_size_A=pixel_A, dose_e_per_A2=dose,
                                                    defocus1_A=defocus + 200, defocus2_A=defocus - 200,
                                                    ice_thickness_nm=THICKNESS_NM[i], seed=100 + int(i)))
        ice = calc_ice(image, pixel_A)
        assert not ice.crystalline, ice
        measured[THICKNESS_NM[i]] = ice.relative_thickness
    values = [measured[t] for t in THICKNESS_NM]
    assert values == sorted(values), measured
    assert stats.spearmanr(THICKNESS_NM, values).statistic == pytest.approx(1.0)
    assert 0.95 < values[0] < 1.05  # no ice ring: the band is what its neighbours predict
    assert values[-1] > 1.5


def test_no_ice_measure_without_the_band():
    image, _ = calc_micrograph(MicrographParams(shape=(512, 512), pixel_size_A=2.0, ice_thickness_nm=60, seed=1))
    assert calc_ice(image, 2.0).relative_thickness is None


def test_crystalline_ice_flagged_vitreous_not():
    for seed in range(3):
        crystal, _ = calc_micrograph(MicrographParams(shape=(1024, 1024), crystalline_ice=0.02, ice_thickness_nm=30,
                                                      defocus1_A=12000 + 5000 * seed, defocus2_A=11800 + 5000 * seed,
                                                      seed=seed))
        found = calc_ice(crystal, 1.0)
        assert found.crystalline and "Å" in found.evidence, found
    for seed, thickness in enumerate((0.0, 20.0, 60.0, 120.0, 200.0, 40.0)):
        vitreous, _ = calc_micrograph(MicrographParams(shape=(1024, 1024), ice_thickness_nm=thickness,
                                                       defocus1_A=9000 + 3000 * seed, defocus2_A=8700 + 3000 * seed,
                                                       pixel_size_A=(1.0, 0.85, 1.2)[seed % 3], seed=50 + seed))
        found = calc_ice(vitreous, (1.0, 0.85, 1.2)[seed % 3])
        assert not found.crystalline, (thickness, found)


def test_crystalline_ice_spots():
    """A few larger crystals: Bragg spots (plane waves) at 3.67 Å, not rings."""
    image, _ = calc_micrograph(MicrographParams(shape=(1024, 1024), ice_thickness_nm=30, seed=7))
    plain = calc_ice(image, 1.0)
    y, x = np.mgrid[0:1024, 0:1024]
    k = 1.0 / CRYSTAL_ICE_LINES_A[1]
    spots = image.copy()
    for angle in (0.4, 1.9):
        spots += 1.5 * np.cos(2 * np.pi * k * (x * np.cos(angle) + y * np.sin(angle))).astype(np.float32)
    found = calc_ice(spots, 1.0)
    assert not plain.crystalline
    assert found.crystalline and "spot at 3.6" in found.evidence, found
    from appion.ctfestimation.calc.internal import calc_power_spectrum

    assert calc_crystalline_spots(calc_power_spectrum(spots, 512), 1.0, 4)[0]
    assert not calc_crystalline_spots(calc_power_spectrum(image, 512), 1.0, 4)[0]
