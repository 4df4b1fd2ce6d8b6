"""Prepare numerics: band-pass spectra, Fourier binning, particle subsets (simulated stacks)."""
from __future__ import annotations

import numpy as np
import pytest

from appion.refine.calc import internal as I

APIX = 2.0
BOX = 64


def _power(stack: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.rfft2(stack)) ** 2


def _stack(n=6, seed=0):
    """White noise plus a blob: every frequency present, so filters can be checked shell by shell."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * 6.0**2))
    return (rng.normal(size=(n, BOX, BOX)) + 3 * blob).astype(np.float32)


def test_lowpass_spectrum():
    x = _stack()
    y = I.calc_fourier_filtered(x, APIX, lowpass_A=10.0)
    k = I.calc_frequency_magnitude((BOX, BOX), APIX)
    edge = 2.0 / (BOX * APIX)
    ratio = _power(y) / _power(x)
    assert ratio[:, k >= 0.1 + edge / 2].max() < 1e-8  # stopped
    np.testing.assert_allclose(ratio[:, k <= 0.1 - edge / 2], 1.0, rtol=1e-4)  # passed unchanged
    edge_band = np.abs(k - 0.1) < edge / 2  # raised-cosine edge: amplitude ½(1 + cos(π (k − k0) / w))
    expected = (0.5 * (1 + np.cos(np.pi * (k[edge_band] - (0.1 - edge / 2)) / edge))) ** 2
    assert edge_band.sum() > 10
    np.testing.assert_allclose(ratio[:, edge_band], np.broadcast_to(expected, ratio[:, edge_band].shape),
                               rtol=1e-3, atol=1e-6)
    assert y.dtype == np.float32 and y.shape == x.shape


def test_highpass_and_band():
    x = _stack(seed=1)
    k = I.calc_frequency_magnitude((BOX, BOX), APIX)
    edge = 2.0 / (BOX * APIX)
    y = I.calc_fourier_filtered(x, APIX, highpass_A=40.0)
    ratio = _power(y) / _power(x)
    assert ratio[:, k <= 1 / 40 - edge / 2].max() < 1e-8
    assert abs(float(y.mean())) < 1e-5  # the mean (k = 0) is gone
    np.testing.assert_allclose(ratio[:, k >= 1 / 40 + edge / 2], 1.0, rtol=1e-4)
    band = I.calc_fourier_filtered(x, APIX, lowpass_A=10.0, highpass_A=40.0)
    rb = _power(band) / _power(x)
    inside = (k >= 1 / 40 + edge / 2) & (k <= 0.1 - edge / 2)
    np.testing.assert_allclose(rb[:, inside], 1.0, rtol=1e-4)
    assert rb[:, (k <= 1 / 40 - edge / 2) | (k >= 0.1 + edge / 2)].max() < 1e-8
    with pytest.raises(ValueError, match="coarser"):
        I.calc_fourier_filtered(x, APIX, lowpass_A=40.0, highpass_A=10.0)


def test_volume_filter_3d():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(32, 32, 32)).astype(np.float32)
    y = I.calc_fourier_filtered(v, APIX, lowpass_A=12.0, ndim=3)
    k = I.calc_frequency_magnitude((32, 32, 32), APIX)
    ratio = np.abs(np.fft.rfftn(y)) ** 2 / np.abs(np.fft.rfftn(v)) ** 2
    assert ratio[k >= 1 / 12 + 1 / 64].max() < 1e-8
    np.testing.assert_allclose(ratio[k <= 1 / 12 - 1 / 64], 1.0, rtol=1e-4)


def test_binning_samples_band_limited_signal_exactly():
    yy, xx = np.mgrid[:BOX, :BOX]
    # frequencies below the binned Nyquist (16 cycles per box after bin 2)
    img = (np.cos(2 * np.pi * (3 * xx + 5 * yy) / BOX) + 0.5 * np.sin(2 * np.pi * (7 * xx - 11 * yy) / BOX) + 2.0)
    stack = np.stack([img, 2 * img]).astype(np.float32)
    b = I.calc_fourier_binned(stack, 2)
    assert b.shape == (2, BOX // 2, BOX // 2)
    np.testing.assert_allclose(b, stack[:, ::2, ::2], atol=2e-5)
    # at bin 4 (16 px, Nyquist 8 cycles) the 11-cycle component is removed, the rest sampled exactly
    low = (np.cos(2 * np.pi * (3 * xx + 5 * yy) / BOX) + 2.0).astype(np.float32)
    b4 = I.calc_fourier_binned(stack, 4)
    np.testing.assert_allclose(b4, np.stack([low, 2 * low])[:, ::4, ::4], atol=2e-5)


def test_binning_removes_frequencies_above_new_nyquist_and_keeps_mean():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, BOX, BOX)).astype(np.float32) + 5
    b = I.calc_fourier_binned(x, 2)
    np.testing.assert_allclose(b.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5)
    # the binned spectrum equals the low-frequency part of the original (scaled by the pixel ratio)
    fx = np.fft.fft2(x)
    fb = np.fft.fft2(b)
    low = np.r_[0:15, BOX - 15:BOX]
    lowb = np.r_[0:15, 32 - 15:32]
    np.testing.assert_allclose(fb[:, lowb][:, :, lowb] * 4, fx[:, low][:, :, low], rtol=1e-3, atol=1e-2)
    v = rng.normal(size=(32, 32, 32)).astype(np.float32)
    assert I.calc_fourier_binned(v, 2, ndim=3).shape == (16, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        I.calc_fourier_binned(np.zeros((1, 30, 30), np.float32), 4)


def test_particle_count():
    assert I.calc_particle_count(100, None) == 100
    assert I.calc_particle_count(100, 40) == 40
    with pytest.raises(ValueError, match="beyond"):
        I.calc_particle_count(100, 101)
    with pytest.raises(ValueError):
        I.calc_particle_count(100, 0)
