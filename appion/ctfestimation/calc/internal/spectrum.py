"""Tile-averaged power spectra (rfft half plane) and their frequency coordinates."""
from __future__ import annotations

import math

import numpy as np
import scipy.signal
from numba import njit

from appion.base.fft import calc_rfft2
from appion.base.physics import calc_frequency_grid
from appion.ctfestimation.calc.internal.common import MAX_FINE_TILE, TILE_TAPER, SpectrumData


# ----------------------------------------------------------------------------- spectrum

def calc_tile_origins(size: int, box: int, overlap: float) -> np.ndarray:
    """Evenly spaced tile start positions covering [0, size): (n,) int64."""
    step = max(1, int(round(box * (1.0 - overlap))))
    n = int(math.ceil((size - box) / step)) + 1
    return np.rint(np.linspace(0, size - box, n)).astype(np.int64)


@njit(cache=True)
def _accumulate_power(spectra, out):
    """out += Σ_i |spectra[i]|²; spectra: (n, y, x) complex64, out: (y, x) float64."""
    n, ny, nx = spectra.shape
    for i in range(n):
        for y in range(ny):
            for x in range(nx):
                v = spectra[i, y, x]
                out[y, x] += v.real * v.real + v.imag * v.imag


def calc_power_spectrum(images: np.ndarray, box: int, overlap: float = 0.0, workers: int = 1,
                        chunk_px: int = 1 << 22) -> np.ndarray:
    """Mean power spectrum of mean-subtracted box×box tiles over one image or a stack.

    images: (y, x) or (n, y, x), any real dtype.  Tiles are copied in chunks into one reused
    float32 buffer and transformed together (appion.base.fft.calc_rfft2, `workers` threads).
    Returns (box, box//2+1) float64 in unshifted rfft layout.
    """
    stack = images[None] if images.ndim == 2 else images
    ny, nx = stack.shape[-2:]
    ys = calc_tile_origins(ny, box, overlap)
    xs = calc_tile_origins(nx, box, overlap)
    origins = [(i, y, x) for i in range(stack.shape[0]) for y in ys for x in xs]
    buf = np.empty((max(1, min(chunk_px // (box * box), len(origins))), box, box), dtype=np.float32)
    w1 = scipy.signal.windows.tukey(box, TILE_TAPER, sym=False).astype(np.float32)
    window = w1[:, None] * w1[None, :]
    out = np.zeros((box, box // 2 + 1), dtype=np.float64)
    for start in range(0, len(origins), buf.shape[0]):
        part = origins[start:start + buf.shape[0]]
        tiles = buf[:len(part)]
        for j, (i, y, x) in enumerate(part):
            tiles[j] = stack[i, y:y + box, x:x + box]
        tiles -= tiles.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
        tiles *= window
        spectra = calc_rfft2(tiles, workers)
        _accumulate_power(spectra, out)
    out /= len(origins) * float(np.sum(window.astype(np.float64) ** 2))
    return out


def calc_binned_spectrum(fine: np.ndarray) -> np.ndarray:
    """Halve the sampling of an rfft-layout power spectrum (2B, B+1) → (B, B//2+1).

    Each coarse bin is the (¼, ½, ¼)² weighted mean of the fine bins around the same
    frequency (symmetric, so no frequency shift).  Larger tiles binned this way blur the rings
    with a kernel that is smooth in real space, unlike the tile edge of a B-sized tile.
    """
    n2 = fine.shape[0]
    b = n2 // 2
    neg = (-np.arange(n2)) % n2                       # P(ky, −kx) = P(−ky, kx)
    ext = np.concatenate([fine[neg, 1:2], fine, fine[neg, b - 1:b]], axis=1)
    rows = 0.5 * ext + 0.25 * (np.roll(ext, 1, axis=0) + np.roll(ext, -1, axis=0))
    cols = 0.5 * rows[:, 1:-1] + 0.25 * (rows[:, :-2] + rows[:, 2:])
    return np.ascontiguousarray(cols[0::2, 0::2])


def calc_power_spectra(images: np.ndarray, box: int, overlap: float = 0.0, workers: int = 1):
    """(spectrum at box sampling, spectrum of 2·box tiles or None) from one pass of FFTs.

    When the image holds 2·box tiles, they are transformed once: binned 2× they give the
    box-sampled spectrum (search, diagnostics), unbinned they serve the 2D refinement (see
    calc_refinement).  Smaller images, and boxes above MAX_FINE_TILE/2 (already finely
    sampled; larger tiles would make the 2D fit slow), use box tiles only.
    images: (y, x) or (n, y, x).  Returns float64 arrays in rfft layout.
    """
    if min(images.shape[-2:]) >= 2 * box and 2 * box <= MAX_FINE_TILE:
        fine = calc_power_spectrum(images, 2 * box, overlap, workers)
        return calc_binned_spectrum(fine), fine
    return calc_power_spectrum(images, box, overlap, workers), None


def calc_spectrum_data(power: np.ndarray, pixel_size_A: float) -> SpectrumData:
    """Frequency coordinates of an rfft-layout power spectrum (box, box//2+1)."""
    box = power.shape[0]
    k, theta = calc_frequency_grid((box, box), pixel_size_A, rfft=True)
    iy = np.fft.fftfreq(box, d=1.0 / box)
    mask = np.ones(power.shape, dtype=bool)
    mask[:, 0] = False
    mask[iy == 0, :] = False
    return SpectrumData(power=power, k=k, cos2=np.cos(2 * theta), sin2=np.sin(2 * theta), fit_mask=mask,
                        dk=1.0 / (box * pixel_size_A), box=box)
