"""Pure numerics for preparing a refinement: Fourier filters, Fourier binning, particle subsets.

Everything works on the last `ndim` axes so one function serves a particle stack
(`(n, y, x)`, ndim=2) and a model (`(z, y, x)`, ndim=3).  Filters have a raised-cosine edge
a few Fourier pixels wide: a hard edge rings in real space, which a refinement would then
fit.  Binning crops the Fourier transform (no real-space averaging, so no aliasing and
no loss below the new Nyquist frequency).
"""
from __future__ import annotations

import numpy as np
import scipy.fft
from numba import njit


def calc_frequency_magnitude(shape: tuple[int, ...], pixel_size_A: float) -> np.ndarray:
    """|k| in 1/Å on an rfftn grid of `shape` (last axis halved): float64 (..., shape[-1]//2+1)."""
    axes = [np.fft.fftfreq(n, d=pixel_size_A) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1], d=pixel_size_A)]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(sum(g * g for g in grids))


@njit(cache=True)
def _cosine_band_mask(k, low_k, high_k, width_k):
    """Pass band [low_k, high_k] with raised-cosine edges of width width_k (0 disables a side).

    k: float64 (m,) flattened |k|; low_k 0 = no high-pass; high_k 0 = no low-pass.  Returns float32 (m,).
    """
    out = np.ones(k.shape[0], dtype=np.float32)
    half = 0.5 * width_k
    for i in range(k.shape[0]):
        v = 1.0
        f = k[i]
        if high_k > 0.0:
            if f >= high_k + half:
                v = 0.0
            elif f > high_k - half:
                v *= 0.5 * (1.0 + np.cos(np.pi * (f - (high_k - half)) / width_k))
        if low_k > 0.0:
            if f <= low_k - half:
                v = 0.0
            elif f < low_k + half:
                v *= 0.5 * (1.0 - np.cos(np.pi * (f - (low_k - half)) / width_k))
        out[i] = v
    return out


def calc_band_mask(shape: tuple[int, ...], pixel_size_A: float, lowpass_A: float | None, highpass_A: float | None,
                   edge_px: float = 2.0) -> np.ndarray:
    """Multiplicative mask on the rfftn grid of `shape`: float32 (..., shape[-1]//2+1).

    lowpass_A: keep detail coarser than this resolution (Å); highpass_A: remove features larger
    than this (Å); None or 0 disables either.  edge_px: edge width in Fourier pixels of the
    largest dimension.
    """
    k = calc_frequency_magnitude(shape, pixel_size_A)
    width_k = edge_px / (max(shape) * pixel_size_A)
    high_k = 1.0 / lowpass_A if lowpass_A else 0.0
    low_k = 1.0 / highpass_A if highpass_A else 0.0
    if high_k and low_k and low_k >= high_k:
        raise ValueError(f"high-pass {highpass_A} Å must be coarser (larger) than low-pass {lowpass_A} Å")
    return _cosine_band_mask(k.ravel(), low_k, high_k, width_k).reshape(k.shape)


def calc_fourier_filtered(data: np.ndarray, pixel_size_A: float, lowpass_A: float | None = None,
                          highpass_A: float | None = None, ndim: int = 2, edge_px: float = 2.0) -> np.ndarray:
    """Band-pass filter the last `ndim` axes: data (..., y, x) or (..., z, y, x) → float32, same shape."""
    if not lowpass_A and not highpass_A:
        return np.asarray(data, dtype=np.float32)
    shape = data.shape[-ndim:]
    axes = tuple(range(-ndim, 0))
    mask = calc_band_mask(shape, pixel_size_A, lowpass_A, highpass_A, edge_px)
    spectrum = scipy.fft.rfftn(np.asarray(data, dtype=np.float32), axes=axes, workers=-1)
    spectrum *= mask
    return scipy.fft.irfftn(spectrum, s=shape, axes=axes, workers=-1).astype(np.float32)


def calc_binned_shape(shape: tuple[int, ...], bin_factor: int) -> tuple[int, ...]:
    """Shape after Fourier binning; every binned axis must divide exactly (pixel size stays exact)."""
    if bin_factor < 1 or int(bin_factor) != bin_factor:
        raise ValueError(f"bin factor must be a positive integer, not {bin_factor}")
    bad = [n for n in shape if n % bin_factor]
    if bad:
        raise ValueError(f"box size {shape} is not divisible by bin factor {bin_factor}")
    return tuple(n // bin_factor for n in shape)


def _crop_index(n: int, m: int) -> np.ndarray:
    """FFT-order indices of the m lowest frequencies of an n-point transform."""
    pos = (m + 1) // 2
    return np.concatenate([np.arange(pos), np.arange(n - (m - pos), n)])


def _crop_rfft(spectrum: np.ndarray, shape: tuple[int, ...], new: tuple[int, ...]) -> np.ndarray:
    """Keep the lowest frequencies of an rfftn spectrum (last `len(shape)` axes; last axis halved)."""
    index = [_crop_index(n, m) for n, m in zip(shape[:-1], new[:-1])] + [np.arange(new[-1] // 2 + 1)]
    return spectrum[(Ellipsis,) + np.ix_(*index)]


def calc_fourier_binned(data: np.ndarray, bin_factor: int, ndim: int = 2) -> np.ndarray:
    """Shrink the last `ndim` axes by bin_factor by cropping the Fourier transform.

    data: (..., y, x) float → float32 (..., y/bin, x/bin); the mean is preserved, and a
    signal band-limited below the new Nyquist frequency is sampled exactly at every
    bin_factor-th pixel.
    """
    return calc_prepared(data, 1.0, None, None, bin_factor, ndim)


def calc_prepared(data: np.ndarray, pixel_size_A: float, lowpass_A: float | None, highpass_A: float | None,
                  bin_factor: int, ndim: int, edge_px: float = 2.0) -> np.ndarray:
    """Band-pass at the input pixel size, then bin — in one forward and one (smaller) inverse FFT.

    data: (..., y, x) (ndim=2, a stack) or (..., z, y, x) (ndim=3, a model) → float32 with the
    last ndim axes divided by bin_factor.  Filtering before shrinking is the order classic
    prepRefine uses.
    """
    shape = data.shape[-ndim:]
    new = calc_binned_shape(shape, bin_factor)
    if bin_factor == 1 and not lowpass_A and not highpass_A:
        return np.asarray(data, dtype=np.float32)
    axes = tuple(range(-ndim, 0))
    spectrum = scipy.fft.rfftn(np.asarray(data, dtype=np.float32), axes=axes, workers=-1)
    if lowpass_A or highpass_A:
        spectrum *= calc_band_mask(shape, pixel_size_A, lowpass_A, highpass_A, edge_px)
    if bin_factor > 1:
        spectrum = _crop_rfft(spectrum, shape, new) * (np.prod(new) / np.prod(shape))
    return scipy.fft.irfftn(spectrum, s=new, axes=axes, workers=-1).astype(np.float32)


def calc_particle_count(n_total: int, last_particle: int | None) -> int:
    """How many particles (from the first) a refinement uses: classic -N/--lastParticle, 1-based inclusive."""
    if last_particle is None:
        return n_total
    if last_particle < 1:
        raise ValueError(f"last particle must be at least 1, not {last_particle}")
    if last_particle > n_total:
        raise ValueError(f"last particle {last_particle} is beyond the {n_total} particles of the stack")
    return last_particle
