"""Global alignment: binning for alignment, frame spectra, Fourier phase shifts, iterative CC alignment.

Shapes and conventions as in the package docstring (appion.motioncorrection.calc.internal).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numba import njit, prange

from appion.base.fft import calc_irfft2, calc_rfft2


# ----------------------------------------------------------------------------------------
# Preparation: binning for alignment
# ----------------------------------------------------------------------------------------

def calc_alignment_binning(shape_yx: tuple[int, int], pixel_size_A: float, bfactor_A2: float,
                           min_size_px: int = 512, large_size_px: int = 800) -> int:
    """Integer binning factor of the coarse alignment work: the patches of local alignment are cut from the
    aligned frames resampled to it, and the global search runs on them resampled at least this far.

    The CC filter exp(−B k²/2) (global B) is below 1e-3 beyond k_max = sqrt(2·ln(1000)/B); pixels of
    1/(2 k_max) Å keep everything the filter lets through.  Large frames are binned further, down to
    about large_size_px on the shorter side (K3: 4092 -> 818), which keeps patch alignment cheap.  The
    binned image keeps at least min_size_px along its shorter side so patches still hold enough pixels.
    The sub-pixel refinement runs on finer frames (refine.calc_refinement_binning).
    """
    if bfactor_A2 <= 0:
        return 1
    k_max = math.sqrt(2.0 * math.log(1000.0) / bfactor_A2)
    factor = int(math.floor((1.0 / (2.0 * k_max)) / pixel_size_A))
    factor = max(1, factor, int(round(min(shape_yx) / large_size_px)))
    while factor > 1 and min(shape_yx) // factor < min_size_px:
        factor -= 1
    return factor


@njit(cache=True, parallel=True, nogil=True)
def calc_binned_frames(frames, factor):
    """Box-binned mean of each frame: frames (c, y, x) float32 -> (c, y//f, x//f) float32.

    Edge rows/columns that do not fill a whole box are dropped.  Each output row sums its `factor` input
    rows first (contiguous, vectorised), then the columns of that sum.
    """
    c, ny, nx = frames.shape
    by, bx = ny // factor, nx // factor
    out = np.empty((c, by, bx), np.float32)
    scale = np.float32(1.0 / (factor * factor))
    for job in prange(c * by):
        i = job // by
        y = job % by
        acc = np.zeros(bx * factor, np.float32)
        for yy in range(y * factor, y * factor + factor):
            for x in range(bx * factor):
                acc[x] += frames[i, yy, x]
        for x in range(bx):
            s = np.float32(0.0)
            for xx in range(x * factor, x * factor + factor):
                s += acc[xx]
            out[i, y, x] = s * scale
    return out


@njit(cache=True, parallel=True, nogil=True)
def calc_binned_raw_frame(raw, gain, has_gain, factor):
    """Box-binned mean of one stored frame × gain: raw (y, x) integer counts, gain (y, x) float32
    (ignored unless has_gain; pass a (1, 1) dummy) -> (y//f, x//f) float32.

    Same arithmetic, in the same order, as calc_binned_frames on the float32 corrected frame
    (float32(raw) · gain), so both paths give identical binned frames.
    """
    ny, nx = raw.shape
    by, bx = ny // factor, nx // factor
    out = np.empty((by, bx), np.float32)
    scale = np.float32(1.0 / (factor * factor))
    for y in prange(by):
        acc = np.zeros(bx * factor, np.float32)
        for yy in range(y * factor, y * factor + factor):
            if has_gain:
                for x in range(bx * factor):
                    acc[x] += np.float32(raw[yy, x]) * gain[yy, x]
            else:
                for x in range(bx * factor):
                    acc[x] += np.float32(raw[yy, x])
        for x in range(bx):
            s = np.float32(0.0)
            for xx in range(x * factor, x * factor + factor):
                s += acc[xx]
            out[y, x] = s * scale
    return out


@njit(cache=True, nogil=True)
def _pad_raw_with_mean(raw, gain, has_gain, mean, out):
    """out[:y, :x] = float32(raw) · gain, the rest of out (py ≥ y, px ≥ x) = mean.

    Serial on purpose: it runs in several Python threads at once (one frame each, sums.calc_add_raw_frames).
    """
    ny, nx = raw.shape
    py, px = out.shape
    for y in range(ny):
        if has_gain:
            for x in range(nx):
                out[y, x] = np.float32(raw[y, x]) * gain[y, x]
        else:
            for x in range(nx):
                out[y, x] = np.float32(raw[y, x])
        for x in range(nx, px):
            out[y, x] = mean
    for y in range(ny, py):
        for x in range(px):
            out[y, x] = mean


def calc_spectra(frames: np.ndarray, workers: int = 1) -> np.ndarray:
    """rfft2 of each frame with its mean removed: (n, y, x) float32 -> (n, y, x//2+1) complex64."""
    spectra = calc_rfft2(frames, workers)
    spectra[:, 0, 0] = 0.0
    return spectra


def calc_phase_vectors(shifts_px: np.ndarray, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable phase ramps exp(+2πi f·d) that move an image by −d (undo a displacement d).

    shifts_px: (m, 2) [dx, dy].  Returns (py (m, ny), px (m, nx//2+1)) complex64 on numpy's
    fftfreq/rfftfreq grids (the Nyquist row counts as negative, like numpy).
    """
    shifts_px = np.asarray(shifts_px, np.float64).reshape(-1, 2)
    fy = np.fft.fftfreq(ny)
    fx = np.fft.rfftfreq(nx)
    py = np.exp(2j * np.pi * fy[None, :] * shifts_px[:, 1:2]).astype(np.complex64)
    px = np.exp(2j * np.pi * fx[None, :] * shifts_px[:, 0:1]).astype(np.complex64)
    return py, px


@njit(cache=True, parallel=True, nogil=True)
def _shift_and_sum(spectra, py, px, total):
    """spectra[i, y, x] *= py[i, y] · px[i, x] in place, and total = Σ_i spectra[i] (one pass).

    spectra: (n, y, x//2+1) complex64; py (n, y), px (n, x//2+1) complex64; total (y, x//2+1) complex64.
    """
    n, ny, nxh = spectra.shape
    for y in prange(ny):
        for x in range(nxh):
            total[y, x] = 0
        for i in range(n):
            a = py[i, y]
            for x in range(nxh):
                g = spectra[i, y, x] * (a * px[i, x])
                spectra[i, y, x] = g
                total[y, x] += g


def calc_shifted_spectra_inplace(spectra: np.ndarray, shifts_px: np.ndarray, nx: int,
                                 total: np.ndarray | None = None) -> np.ndarray:
    """Move each frame i of rfft2 spectra (n, y, x//2+1) by −shifts_px[i] (in place); returns their sum
    (y, x//2+1), written into `total` when given."""
    py, px = calc_phase_vectors(shifts_px, spectra.shape[1], nx)
    if total is None:
        total = np.empty(spectra.shape[1:], np.complex64)
    _shift_and_sum(spectra, py, px, total)
    return total


@njit(cache=True, parallel=True, nogil=True)
def _calc_cross_spectra(spectra, total, filt, first, count, out):
    """out[j] = (total − G_f) · conj(G_f) · filt for frames f = first + j (j < count).

    out: (count, cy, cx//2+1) with cy ≤ y, cx//2+1 ≤ x//2+1: only the lowest frequencies are kept
    (a Fourier crop: the B-factor filter has removed the rest), so the CC map is computed on a
    coarser grid of the same field of view.  filt has out's (cy, cx//2+1) shape.
    """
    _, ny, nxh = spectra.shape
    _, cy, cxh = out.shape
    half = cy // 2
    for job in prange(count * cy):
        j = job // cy
        v = job % cy
        y = v if v < half else v - cy + ny
        f = first + j
        for x in range(cxh):
            g = spectra[f, y, x]
            out[j, v, x] = (total[y, x] - g) * np.conj(g) * filt[v, x]


def calc_cc_shape(shape_yx: tuple[int, int], pixel_size_A: float, bfactor_A2: float) -> tuple[int, int]:
    """Smallest fast even CC grid (cy, cx) that keeps every frequency where exp(−B k²/2) ≥ 1e-4."""
    if bfactor_A2 <= 0:
        return tuple(shape_yx)
    k_max = math.sqrt(2.0 * math.log(1e4) / bfactor_A2)
    out = []
    for n in shape_yx:
        m = int(math.ceil(2.0 * k_max * pixel_size_A * n)) + 2
        m = scipy.fft.next_fast_len(m + (m % 2), real=True)
        m += m % 2
        out.append(n if m >= n else m)
    return tuple(out)


def calc_cropped_bfactor_filter(shape_yx: tuple[int, int], cc_shape_yx: tuple[int, int], pixel_size_A: float,
                                bfactor_A2: float) -> np.ndarray:
    """exp(−B k²/2) on the lowest (cy, cx//2+1) frequencies of a (y, x) image's rfft grid (DC = 0)."""
    (ny, nx), (cy, cx) = shape_yx, cc_shape_yx
    ky = np.fft.fftfreq(cy) * cy / (ny * pixel_size_A)
    kx = np.fft.rfftfreq(cx) * cx / (nx * pixel_size_A)
    filt = np.exp(-0.5 * bfactor_A2 * (ky[:, None] ** 2 + kx[None, :] ** 2)).astype(np.float32)
    filt[0, 0] = 0.0
    return filt


def calc_fast_size_below(n: int) -> int:
    """Largest even n' ≤ n that FFTs fast (5-smooth): crop alignment images to it."""
    m = n - (n % 2)
    while m > 2 and scipy.fft.next_fast_len(m, real=True) != m:
        m -= 2
    return max(m, 2)


@njit(cache=True)
def _fit_peak_1d(vm, v0, vp):
    """Sub-pixel offset of a peak from three samples: Gaussian (log-parabola) fit, parabola fallback."""
    if vm > 0.0 and v0 > 0.0 and vp > 0.0:
        lm, l0, lp = math.log(vm), math.log(v0), math.log(vp)
        den = lm - 2.0 * l0 + lp
        if den < 0.0:
            d = 0.5 * (lm - lp) / den
            if abs(d) <= 1.0:
                return d
    den = vm - 2.0 * v0 + vp
    if den < 0.0:
        d = 0.5 * (vm - vp) / den
        if abs(d) <= 1.0:
            return d
    return 0.0


@njit(cache=True, nogil=True)
def _find_peaks(cc, radius, out):
    """Sub-pixel peak position (dx, dy) of each CC map within |d| ≤ radius of the origin.

    cc: (m, y, x) float32 with the origin at [0, 0] (wrapped); out: (m, 2) float64.
    """
    m, ny, nx = cc.shape
    ry = min(radius, ny // 2 - 1)
    rx = min(radius, nx // 2 - 1)
    for j in range(m):  # a few small windows: not worth a parallel loop (nor its compile time)
        best = -np.inf
        by = 0
        bx = 0
        for dy in range(-ry, ry + 1):
            yy = dy % ny
            for dx in range(-rx, rx + 1):
                v = cc[j, yy, dx % nx]
                if v > best:
                    best = v
                    by = dy
                    bx = dx
        y0 = by % ny
        x0 = bx % nx
        sx = _fit_peak_1d(cc[j, y0, (bx - 1) % nx], best, cc[j, y0, (bx + 1) % nx])
        sy = _fit_peak_1d(cc[j, (by - 1) % ny, x0], best, cc[j, (by + 1) % ny, x0])
        out[j, 0] = bx + sx
        out[j, 1] = by + sy


@dataclass(frozen=True)
class AlignmentResult:
    """Trajectory of a frame stack: shifts_px (n, 2) [dx, dy] relative to frame 0, in the
    stack's pixels; rms_updates_px per iteration; converged when the last update < tolerance."""

    shifts_px: np.ndarray
    rms_updates_px: tuple[float, ...]
    converged: bool


def calc_frame_shifts(spectra: np.ndarray, shape_yx: tuple[int, int], pixel_size_A: float,
                      bfactor_A2: float, max_iterations: int = 10, tolerance_px: float = 0.01,
                      max_shift_px: int | None = None, workers: int = 1,
                      chunk_frames: int = 8) -> AlignmentResult:
    """Iterative alignment of each frame to the sum of the others.

    spectra: (n, y, x//2+1) complex64 rfft2 of the frames (mean removed); modified in place:
    on return each holds its frame shifted by −d_i (aligned).  shape_yx: the real (y, x).
    pixel_size_A: pixel size of these frames (for the B-factor).  tolerance_px is in these
    pixels.  Returns AlignmentResult with shifts relative to frame 0.
    """
    n = spectra.shape[0]
    ny, nx = shape_yx
    if n < 2:
        return AlignmentResult(np.zeros((n, 2)), (), True)
    cy, cx = calc_cc_shape(shape_yx, pixel_size_A, bfactor_A2)
    scale = np.array([nx / cx, ny / cy])
    filt = calc_cropped_bfactor_filter(shape_yx, (cy, cx), pixel_size_A, bfactor_A2)
    radius = int(max_shift_px) if max_shift_px else max(2, min(ny, nx) // 4)
    shifts = np.zeros((n, 2), np.float64)
    rms_history = []
    converged = False
    chunk = max(1, min(chunk_frames, n))
    cross = np.empty((chunk, cy, cx // 2 + 1), np.complex64)
    total = spectra.sum(axis=0)
    for _ in range(max_iterations):
        update = np.empty((n, 2), np.float64)
        search = max(2, int(math.ceil(radius / scale.min())))
        for first in range(0, n, chunk):
            count = min(chunk, n - first)
            _calc_cross_spectra(spectra, total, filt, first, count, cross)
            cc = calc_irfft2(cross[:count], (cy, cx), workers)
            peaks = np.empty((count, 2), np.float64)
            _find_peaks(cc, search, peaks)
            # The reference (all others) sits at +peak relative to the frame: the frame is
            # still displaced by −peak from where the others are.
            update[first:first + count] = -peaks * scale
        update -= update.mean(axis=0)  # keep the reference where it is
        shifts += update
        calc_shifted_spectra_inplace(spectra, update, nx, total)
        rms = float(np.sqrt(np.mean(np.sum(update * update, axis=1))))
        rms_history.append(rms)
        radius = max(2, min(radius, int(math.ceil(4.0 * np.abs(update).max())) + 2))
        if rms < tolerance_px:
            converged = True
            break
    return AlignmentResult(shifts - shifts[0], tuple(rms_history), converged)
