"""appion.base.fft: the engines' 2-D real FFTs agree with scipy.fft, whichever library serves them."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.fft

from appion.base import fft


@pytest.fixture(params=["installed", "scipy"])
def backend(request, monkeypatch):
    """Each test runs with the library this machine has and again with the scipy.fft fallback."""
    if request.param == "scipy":
        monkeypatch.setattr(fft, "_mkl_fft", None)
    return request.param


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_batched_forward_and_inverse_match_scipy(backend, workers):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((5, 96, 130)).astype(np.float32)
    spectra = fft.calc_rfft2(images, workers)
    assert spectra.dtype == np.complex64 and spectra.shape == (5, 96, 66)
    expected = scipy.fft.rfft2(images.astype(np.float64))
    assert np.abs(spectra - expected).max() < 1e-5 * np.abs(expected).max()
    back = fft.calc_irfft2(spectra, (96, 130), workers)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, images, atol=2e-5)


def test_views_crops_and_out(backend):
    rng = np.random.default_rng(2)
    image = rng.standard_normal((120, 150)).astype(np.float32)
    view = image[7:101, 3:131]  # not contiguous
    out = np.empty((94, 65), np.complex64)
    assert fft.calc_rfft2(view, out=out) is out
    expected = scipy.fft.rfft2(view.astype(np.float64))
    assert np.abs(out - expected).max() < 1e-5 * np.abs(expected).max()
    # Inverse to a smaller / larger / odd size: numpy's crop-or-pad rule.
    for shape in [(80, 100), (128, 170), (94, 129)]:
        got = fft.calc_irfft2(out, shape, workers=2)
        np.testing.assert_allclose(got, scipy.fft.irfft2(expected, s=shape), atol=1e-4)
    with pytest.raises(ValueError, match="needs complex64"):
        fft.calc_rfft2(view, out=np.empty((94, 64), np.complex64))


def test_error_in_a_worker_thread_reaches_the_caller(monkeypatch):
    calls = []

    def failing(start, stop):
        calls.append(start)
        if start > 0:
            raise RuntimeError("share failed")

    with pytest.raises(RuntimeError, match="share failed"):
        fft._run_split(4, 2, failing)
    assert sorted(calls) == [0, 2]


def test_backend_choice_and_scipy_override():
    """mkl_fft serves the transforms where it is installed; APPION_FFT=scipy forces scipy.fft."""
    code = "from appion.base import fft; print(fft.FFT_BACKEND)"
    env = {**os.environ, "APPION_FFT": "scipy"}
    forced = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert forced.stdout.strip() == "scipy"
    try:
        import mkl_fft  # noqa: F401
        expected = "mkl"
    except ImportError:
        expected = "scipy"
    env.pop("APPION_FFT")
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.strip() == expected
