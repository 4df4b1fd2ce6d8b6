"""Appion's own frame-alignment engine: pure numerics, no I/O.

Conventions (shared with appion.base.simulate.calc): frame i shows specimen(r − d_i); a
trajectory is d_i = (dx, dy) in pixels (x = numpy axis 1, y = axis 0), relative to the
first frame used.  The aligned sum is out(r) = Σ frame_i(r + d_i): the first frame's
position.  RELION's STAR shifts are −d (see appion.motioncorrection.store).

Why it is fast: alignment runs on box-binned copies of the frames (the B-factor filter
removes the high frequencies anyway; large frames are binned to ~800 px), with CC maps
computed only over the frequencies the filter keeps; shifts are applied once, at full size,
as Fourier phase ramps while the frames are summed (and exposure weighted) in Fourier space.
For global alignment of integer TIFF movies the command keeps the frames as stored (8/16-bit,
1/4 or 1/2 of a float32 copy) and applies the gain inside the binning and the FFT padding
(calc_binned_raw_frame, calc_raw_frame_spectrum: the same float32 arithmetic as the corrected
frames, so the results are identical); one frame per thread is transformed once the shifts are
known.  For other global cases the full-size FFT of each frame does not depend on the shifts, so
the command computes it while the next frames are decoded and keeps the spectra instead of the
frames (the one full-size copy of the movie).

Methods
- Global: iterative cross-correlation of each frame against the sum of all other
  (already shifted) frames, filtered by exp(−B k²/2) (= exp(−B k²/4) on each image, B in
  Å²), peak searched near the origin, sub-pixel position by a 3-point Gaussian fit per axis
  (parabola as fallback).  Because every iteration re-shifts the frames exactly in Fourier
  space, the residual measured by the next iteration goes to zero, so the fit's small bias
  for off-centre peaks disappears.  Two stages: the global B-factor (robust, wide search)
  until the RMS update < 0.25 px, then a refinement with the local B-factor (±3 binned px)
  until it is < tolerance (0.02 px).  Trajectory relative to the first frame used.
- Local: after global alignment the binned, aligned frames are cut into cols × rows
  patches (cosine-tapered edges) and each patch stack is aligned with the same routine
  (B-factor --bfactor-local).  The patch trajectories are fitted by MotionCor2/RELION's
  smooth model: 18 terms {1, x, x², y, y², xy} × {t, t², t³} (x, y normalised to
  [−0.5, 0.5), t = frame index), with one free offset per patch, then one robust refit
  without outlier patches.  The model is 0 at t = 0, so it adds to the global trajectory.
- Locally corrected sum: the image is cut into tiles (≈512 px core + 32 px margin, the outer
  part blended to the tile mean so the FFT's periodic wrap has no jump); each tile of each
  frame is shifted by the total (global + model) displacement at the tile centre — integer
  part by choosing the source window, fractional part by a Fourier phase ramp — accumulated
  in Fourier space, and the tile cores are put together at the end.
- Global sum: each frame padded with its mean to a fast FFT size, shifted by a phase ramp
  (numpy's frequency convention: the Nyquist row counts as negative), summed in Fourier space.
- Exposure weighting: appion.base.physics.calc_exposure_weights on a fine 1-D table of
  |k|, looked up per Fourier pixel; the weighted sum is scaled by √n so its mean equals
  the unweighted sum's.
- Binning: Fourier cropping of the summed spectrum (mean per pixel preserved).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numba import njit, prange

from appion.base.physics import calc_exposure_weights

N_POLY_TERMS = 18
TILE_CORE_PX = 512
TILE_MARGIN_PX = 32
K_TABLE_SIZE = 4096


# ----------------------------------------------------------------------------------------
# Preparation: binning for alignment
# ----------------------------------------------------------------------------------------

def calc_alignment_binning(shape_yx: tuple[int, int], pixel_size_A: float, bfactor_A2: float,
                           min_size_px: int = 512, large_size_px: int = 800) -> int:
    """Integer box-binning factor for alignment.

    The CC filter exp(−B k²/2) is below 1e-3 beyond k_max = sqrt(2·ln(1000)/B); pixels of
    1/(2 k_max) Å keep everything the filter lets through.  Large frames are binned further,
    down to about large_size_px on the shorter side (K3: 4092 -> 818): precision grows with the
    number of pixels, so they can afford it, and it is what keeps alignment cheap.  The binned
    image keeps at least min_size_px along its shorter side so patches still hold enough pixels.
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

    Edge rows/columns that do not fill a whole box are dropped.
    """
    c, ny, nx = frames.shape
    by, bx = ny // factor, nx // factor
    out = np.empty((c, by, bx), np.float32)
    scale = np.float32(1.0 / (factor * factor))
    for job in prange(c * by):
        i = job // by
        y = job % by
        for x in range(bx):
            acc = np.float32(0.0)
            for yy in range(y * factor, y * factor + factor):
                for xx in range(x * factor, x * factor + factor):
                    acc += frames[i, yy, xx]
            out[i, y, x] = acc * scale
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
        for x in range(bx):
            acc = np.float32(0.0)
            for yy in range(y * factor, y * factor + factor):
                for xx in range(x * factor, x * factor + factor):
                    v = np.float32(raw[yy, xx])
                    if has_gain:
                        v = v * gain[yy, xx]
                    acc += v
            out[y, x] = acc * scale
    return out


@njit(cache=True, nogil=True)
def _pad_raw_with_mean(raw, gain, has_gain, mean, out):
    """out[:y, :x] = float32(raw) · gain, the rest of out (py ≥ y, px ≥ x) = mean.

    Serial on purpose: it runs in several Python threads at once (one frame each).
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


def calc_raw_frame_spectrum(raw: np.ndarray, gain: np.ndarray, has_gain: bool, frame_mean: float,
                            padded_yx: tuple[int, int]) -> np.ndarray:
    """calc_frame_spectrum of a stored frame: raw (y, x) integer counts × gain (y, x) float32, padded
    with frame_mean to padded_yx -> (1, py, px//2+1) complex64.

    One thread per frame (no numba pool, one scipy worker), so several frames transform at once.
    """
    buffer = np.empty((1,) + tuple(padded_yx), np.float32)
    _pad_raw_with_mean(raw, gain, has_gain, np.float32(frame_mean), buffer[0])
    return scipy.fft.rfft2(buffer, axes=(-2, -1), workers=1, overwrite_x=True).astype(np.complex64, copy=False)


def calc_spectra(frames: np.ndarray, workers: int = 1) -> np.ndarray:
    """rfft2 of each frame with its mean removed: (n, y, x) float32 -> (n, y, x//2+1) complex64."""
    spectra = scipy.fft.rfft2(frames, axes=(-2, -1), workers=workers)
    spectra[:, 0, 0] = 0.0
    return spectra.astype(np.complex64, copy=False)


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
def _apply_phase_vectors_inplace(spectra, py, px):
    """spectra[i, y, x] *= py[i, y] · px[i, x]  (spectra: (n, y, x//2+1) complex64)."""
    n, ny, nxh = spectra.shape
    for job in prange(n * ny):
        i = job // ny
        y = job % ny
        a = py[i, y]
        for x in range(nxh):
            spectra[i, y, x] *= a * px[i, x]


def calc_shifted_spectra_inplace(spectra: np.ndarray, shifts_px: np.ndarray, nx: int) -> None:
    """Move each frame i of rfft2 spectra (n, y, x//2+1) by −shifts_px[i] (in place)."""
    py, px = calc_phase_vectors(shifts_px, spectra.shape[1], nx)
    _apply_phase_vectors_inplace(spectra, py, px)


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


@njit(cache=True, parallel=True, nogil=True)
def _find_peaks(cc, radius, out):
    """Sub-pixel peak position (dx, dy) of each CC map within |d| ≤ radius of the origin.

    cc: (m, y, x) float32 with the origin at [0, 0] (wrapped); out: (m, 2) float64.
    """
    m, ny, nx = cc.shape
    ry = min(radius, ny // 2 - 1)
    rx = min(radius, nx // 2 - 1)
    for j in prange(m):
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
    for _ in range(max_iterations):
        total = spectra.sum(axis=0)
        update = np.empty((n, 2), np.float64)
        search = max(2, int(math.ceil(radius / scale.min())))
        for first in range(0, n, chunk):
            count = min(chunk, n - first)
            _calc_cross_spectra(spectra, total, filt, first, count, cross)
            cc = scipy.fft.irfft2(cross[:count], s=(cy, cx), axes=(-2, -1), workers=workers)
            peaks = np.empty((count, 2), np.float64)
            _find_peaks(cc.astype(np.float32, copy=False), search, peaks)
            # The reference (all others) sits at +peak relative to the frame: the frame is
            # still displaced by −peak from where the others are.
            update[first:first + count] = -peaks * scale
        update -= update.mean(axis=0)  # keep the reference where it is
        shifts += update
        calc_shifted_spectra_inplace(spectra, update, nx)
        rms = float(np.sqrt(np.mean(np.sum(update * update, axis=1))))
        rms_history.append(rms)
        radius = max(2, min(radius, int(math.ceil(4.0 * np.abs(update).max())) + 2))
        if rms < tolerance_px:
            converged = True
            break
    return AlignmentResult(shifts - shifts[0], tuple(rms_history), converged)


# ----------------------------------------------------------------------------------------
# Local (patch) alignment and the smooth model
# ----------------------------------------------------------------------------------------

def calc_patch_boxes(shape_yx: tuple[int, int], cols: int, rows: int) -> np.ndarray:
    """Patch boxes of a cols × rows grid: (cols·rows, 4) int [y0, y1, x0, x1], even sizes."""
    ny, nx = shape_yx
    ys = np.linspace(0, ny, rows + 1).astype(int)
    xs = np.linspace(0, nx, cols + 1).astype(int)
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y0, y1, x0, x1 = ys[r], ys[r + 1], xs[c], xs[c + 1]
            y1 -= (y1 - y0) % 2
            x1 -= (x1 - x0) % 2
            boxes.append((y0, y1, x0, x1))
    return np.array(boxes, dtype=np.int64)


def calc_taper(shape_yx: tuple[int, int], edge_fraction: float = 0.15) -> np.ndarray:
    """Separable cosine edge taper (y, x) float32, 1 inside, smoothly 0 at the border."""
    def one(n):
        w = np.ones(n, np.float32)
        m = max(1, int(n * edge_fraction))
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
        w[:m] = ramp
        w[n - m:] = ramp[::-1]
        return w
    return np.outer(one(shape_yx[0]), one(shape_yx[1])).astype(np.float32)


def calc_patch_trajectories(aligned_frames: np.ndarray, cols: int, rows: int, pixel_size_A: float,
                            bfactor_A2: float, max_iterations: int = 10, tolerance_px: float = 0.01,
                            workers: int = 1):
    """Residual trajectory of each patch of globally aligned frames.

    aligned_frames: (n, y, x) float32 (binned, globally aligned).  Returns (centres (p, 2)
    [x, y] in these pixels, pixel-centre convention; shifts (p, n, 2) [dx, dy] relative to
    each patch's first frame; converged (p,) bool).
    """
    n, ny, nx = aligned_frames.shape
    boxes = calc_patch_boxes((ny, nx), cols, rows)
    centres = np.empty((len(boxes), 2))
    trajectories = np.zeros((len(boxes), n, 2))
    converged = np.zeros(len(boxes), bool)
    for p, (y0, y1, x0, x1) in enumerate(boxes):
        patch = aligned_frames[:, y0:y1, x0:x1]
        patch = patch - patch.mean(axis=(1, 2), keepdims=True)
        patch *= calc_taper(patch.shape[1:])
        spectra = calc_spectra(patch.astype(np.float32), workers)
        res = calc_frame_shifts(spectra, patch.shape[1:], pixel_size_A, bfactor_A2, max_iterations,
                                tolerance_px, max_shift_px=max(2, min(patch.shape[1:]) // 6), workers=workers)
        centres[p] = ((x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0)
        trajectories[p] = res.shifts_px
        converged[p] = res.converged
    return centres, trajectories, converged


def calc_poly_basis(x_norm, y_norm, t) -> np.ndarray:
    """RELION/MotionCor2 third-order model terms, order as RELION's ThirdOrderPolynomialModel.

    x_norm, y_norm: positions normalised as x/nx − 0.5; t: frame index (0 = first frame used).
    Broadcast inputs -> (..., 18): {1, x, x², y, y², xy} × {t, t², t³}.
    """
    x_norm, y_norm, t = np.broadcast_arrays(np.asarray(x_norm, float), np.asarray(y_norm, float),
                                            np.asarray(t, float))
    spatial = [np.ones_like(x_norm), x_norm, x_norm ** 2, y_norm, y_norm ** 2, x_norm * y_norm]
    temporal = [t, t ** 2, t ** 3]
    return np.stack([s * q for s in spatial for q in temporal], axis=-1)


def calc_local_model(centres_px: np.ndarray, trajectories_px: np.ndarray, shape_yx: tuple[int, int],
                     outlier_factor: float = 3.0) -> np.ndarray:
    """Least-squares fit of the 18-term model to patch trajectories, one free offset per patch.

    centres_px: (p, 2) [x, y]; trajectories_px: (p, n, 2) [dx, dy] (any per-patch origin);
    shape_yx: the frame size in the same pixels.  Returns coeffs (2, 18) [x, y] in pixels.
    A second fit leaves out patches whose RMS misfit exceeds outlier_factor × the median.
    """
    p, n, _ = trajectories_px.shape
    ny, nx = shape_yx
    keep = np.ones(p, bool)
    coeffs = np.zeros((2, N_POLY_TERMS))
    for _ in range(2):
        idx = np.nonzero(keep)[0]
        xn = centres_px[idx, 0] / nx - 0.5
        yn = centres_px[idx, 1] / ny - 0.5
        t = np.arange(n, dtype=float)
        basis = calc_poly_basis(xn[:, None], yn[:, None], t[None, :]).reshape(len(idx) * n, N_POLY_TERMS)
        offsets = np.zeros((len(idx) * n, len(idx)))
        offsets[np.arange(len(idx) * n), np.repeat(np.arange(len(idx)), n)] = 1.0
        design = np.concatenate([basis, offsets], axis=1)
        scale = np.maximum(np.abs(design).max(axis=0), 1e-12)
        rhs = trajectories_px[idx].reshape(len(idx) * n, 2)
        sol, *_ = np.linalg.lstsq(design / scale, rhs, rcond=None)
        sol /= scale[:, None]
        coeffs = sol[:N_POLY_TERMS].T.copy()
        misfit = (design @ sol - rhs).reshape(len(idx), n, 2)
        rms = np.sqrt(np.mean(np.sum(misfit ** 2, axis=2), axis=1))
        bad = rms > outlier_factor * max(np.median(rms), 1e-6)
        if not bad.any() or len(idx) - bad.sum() < 4:
            break
        keep[idx[bad]] = False
    return coeffs


def calc_local_shifts_at(coeffs: np.ndarray, x_px, y_px, shape_yx: tuple[int, int], n_frames: int) -> np.ndarray:
    """Model displacement at one position for every frame: (n_frames, 2) [dx, dy] pixels."""
    ny, nx = shape_yx
    basis = calc_poly_basis(float(x_px) / nx - 0.5, float(y_px) / ny - 0.5, np.arange(n_frames))
    return basis @ coeffs.T


# ----------------------------------------------------------------------------------------
# Exposure weights
# ----------------------------------------------------------------------------------------

def calc_weight_table(pixel_size_A: float, dose_per_frame_e_per_A2: float, n_frames: int,
                      pre_exposure_e_per_A2: float, n_samples: int = K_TABLE_SIZE):
    """Exposure weights on a fine |k| table: (table (n_frames, n_samples) float32, step in cycles/px).

    Covers |f| up to √2·0.5 cycles/pixel (the corner of the 2-D spectrum); weights follow
    appion.base.physics.calc_exposure_weights (sum of squares over frames = 1), times √n.
    """
    f_max = math.sqrt(0.5) + 1e-6
    step = f_max / (n_samples - 1)
    k = np.arange(n_samples) * step / pixel_size_A
    table = calc_exposure_weights(k, dose_per_frame_e_per_A2, n_frames, pre_exposure_e_per_A2)
    return (table * np.float32(math.sqrt(n_frames))).astype(np.float32), step


@njit(cache=True, parallel=True, nogil=True)
def _accumulate_tiles(spectra, py, px, full_ny, full_nx, wrow, wstep, total, total_dw, do_dw):
    """total[t] += G_t and total_dw[t] += w(|f|)·G_t, with G_t = spectra[t] · py[t, y] · px[t, x].

    spectra: (m, y, x//2+1) complex64 of (y, x) = (full_ny, full_nx) images; py (m, y), px (m, x//2+1)
    from calc_phase_vectors.  wrow: (n_samples,) weights of this frame on the |f| table (step wstep).
    """
    m, ny, nxh = spectra.shape
    nsamp = wrow.shape[0]
    for job in prange(m * ny):
        t = job // ny
        y = job % ny
        fy = (y if y < (full_ny + 1) // 2 else y - full_ny) / full_ny  # as numpy fftfreq
        a = py[t, y]
        if not do_dw:
            for x in range(nxh):
                total[t, y, x] += spectra[t, y, x] * (a * px[t, x])
            continue
        fy2 = fy * fy
        for x in range(nxh):
            g = spectra[t, y, x] * (a * px[t, x])
            total[t, y, x] += g
            fx = x / full_nx
            pos = math.sqrt(fx * fx + fy2) / wstep
            i0 = int(pos)
            if i0 >= nsamp - 1:
                w = wrow[nsamp - 1]
            else:
                frac = pos - i0
                w = wrow[i0] * (1.0 - frac) + wrow[i0 + 1] * frac
            total_dw[t, y, x] += g * np.float32(w)


@dataclass
class SumState:
    """Running Fourier-space sums of shifted frames (one 'tile' = the whole frame when global)."""

    total: np.ndarray            # (m, py, px//2+1) complex64
    total_dw: np.ndarray | None  # same, exposure weighted
    tile_origins: np.ndarray     # (m, 2) [y0, x0] of each tile core in the frame
    tile_cores: np.ndarray       # (m, 2) [cy, cx] core sizes
    padded_yx: tuple[int, int]   # FFT size of a tile (a fast size ≥ core + 2 margin)
    margin: int
    buffer: np.ndarray           # (m, py, px) float32 work space for the cut/padded tiles


def calc_sum_plan(shape_yx: tuple[int, int], tiled: bool, with_dw: bool,
                  core_px: int = TILE_CORE_PX, margin_px: int = TILE_MARGIN_PX) -> SumState:
    """Empty accumulators: one full-frame 'tile' (global shifts) or a tile grid (local model)."""
    ny, nx = shape_yx
    if not tiled:
        origins = np.zeros((1, 2), np.int64)
        cores = np.array([[ny, nx]], np.int64)
        padded = (scipy.fft.next_fast_len(ny, real=True), scipy.fft.next_fast_len(nx, real=True))
        margin = 0
    else:
        nty, ntx = max(1, math.ceil(ny / core_px)), max(1, math.ceil(nx / core_px))
        cy, cx = math.ceil(ny / nty), math.ceil(nx / ntx)
        cy += cy % 2
        cx += cx % 2
        origins = np.array([(ty * cy, tx * cx) for ty in range(nty) for tx in range(ntx)], np.int64)
        cores = np.array([(min(cy, ny - y0), min(cx, nx - x0)) for y0, x0 in origins], np.int64)
        padded = (scipy.fft.next_fast_len(cy + 2 * margin_px, real=True),
                  scipy.fft.next_fast_len(cx + 2 * margin_px, real=True))
        margin = margin_px
    m = len(origins)
    total = np.zeros((m, padded[0], padded[1] // 2 + 1), np.complex64)
    total_dw = np.zeros_like(total) if with_dw else None
    return SumState(total, total_dw, origins, cores, padded, margin, np.empty((m,) + padded, np.float32))


def calc_edge_taper(n: int, margin: int) -> np.ndarray:
    """1-D weights (n,): 0 → 1 over the outer 2/3 of `margin` at both ends, 1 elsewhere (float32).

    Tiles are blended towards their mean there, so the periodic wrap of the FFT sees no jump and
    the sub-pixel phase ramp does not ring into the tile core.
    """
    w = np.ones(n, np.float32)
    ramp = (2 * margin) // 3
    if ramp > 0:
        r = (0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)).astype(np.float32)
        w[:ramp] = r
        w[n - ramp:] = r[::-1]
    return w


@njit(cache=True, parallel=True, nogil=True)
def _pad_with_mean(frame, mean, out):
    """out[:y, :x] = frame, the rest of out (py ≥ y, px ≥ x) = mean (no jump at the border)."""
    ny, nx = frame.shape
    py, px = out.shape
    for y in prange(ny):
        for x in range(nx):
            out[y, x] = frame[y, x]
    for y in prange(py):
        start = nx if y < ny else 0
        for x in range(start, px):
            out[y, x] = mean


@njit(cache=True, parallel=True, nogil=True)
def _cut_tiles(frame, starts, wy, wx, out):
    """out[t] = frame[starts[t,0] : +py, starts[t,1] : +px] (edge-clamped), edges blended to the tile mean.

    wy (py,), wx (px,): edge weights (all ones = no blending).
    """
    m, py, px = out.shape
    ny, nx = frame.shape
    for t in prange(m):
        acc = 0.0
        for v in range(py):
            yy = min(max(starts[t, 0] + v, 0), ny - 1)
            for u in range(px):
                xx = min(max(starts[t, 1] + u, 0), nx - 1)
                val = frame[yy, xx]
                out[t, v, u] = val
                acc += val
        mean = np.float32(acc / (py * px))
        for v in range(py):
            for u in range(px):
                w = wy[v] * wx[u]
                if w < 1.0:
                    out[t, v, u] = mean + w * (out[t, v, u] - mean)


def calc_frame_spectrum(state: SumState, frame: np.ndarray, frame_mean: float, workers: int = 1) -> np.ndarray:
    """Global-shift sums only: rfft2 of a frame (y, x) padded with its mean to the plan's fast size.

    Returns (1, py, px//2+1) complex64.  Independent of the shifts, so it can be computed while
    the movie is still being decoded (and stored instead of the frame: same memory).
    """
    _pad_with_mean(frame, np.float32(frame_mean), state.buffer[0])
    return scipy.fft.rfft2(state.buffer, axes=(-2, -1), workers=workers).astype(np.complex64, copy=False)


def calc_add_spectra(state: SumState, spectra: np.ndarray, shifts_px: np.ndarray,
                     weight_row: np.ndarray | None, weight_step: float) -> None:
    """Add spectra (m, py, px//2+1) of the plan's m tiles, each moved by −shifts_px[t], to the sums."""
    py, px = state.padded_yx
    do_dw = state.total_dw is not None and weight_row is not None
    dw_target = state.total if state.total_dw is None else state.total_dw  # unused when not do_dw
    wrow = weight_row if weight_row is not None else np.ones(2, np.float32)
    phase_y, phase_x = calc_phase_vectors(shifts_px, py, px)
    _accumulate_tiles(spectra, phase_y, phase_x, py, px, wrow, weight_step, state.total, dw_target, do_dw)


def calc_add_frame(state: SumState, frame: np.ndarray, tile_shifts_px: np.ndarray,
                   weight_row: np.ndarray | None, weight_step: float, workers: int = 1,
                   frame_mean: float | None = None) -> None:
    """Add one frame (y, x) float32, shifted by −d per tile, to the running sums (in place).

    tile_shifts_px: (m, 2) [dx, dy] displacement of the specimen at each tile (global: m = 1).
    frame_mean: fills the FFT padding (default: computed; the binned frame's mean is as good).
    """
    m = len(state.tile_origins)
    py, px = state.padded_yx
    if m == 1 and state.margin == 0:
        mean = float(frame.mean(dtype=np.float64)) if frame_mean is None else float(frame_mean)
        spectra = calc_frame_spectrum(state, frame, mean, workers)
        shifts = np.asarray(tile_shifts_px, np.float64).reshape(1, 2)
    else:
        whole = np.round(tile_shifts_px).astype(np.int64)
        starts = state.tile_origins - state.margin + whole[:, ::-1]
        _cut_tiles(frame, starts, calc_edge_taper(py, state.margin), calc_edge_taper(px, state.margin), state.buffer)
        spectra = scipy.fft.rfft2(state.buffer, axes=(-2, -1), workers=workers).astype(np.complex64, copy=False)
        shifts = np.asarray(tile_shifts_px, np.float64) - whole
    calc_add_spectra(state, spectra, shifts, weight_row, weight_step)


def calc_output_shape(shape_yx: tuple[int, int], bin_factor: float) -> tuple[int, int]:
    """Size after Fourier binning: round(n / bin) made even (unchanged for bin 1)."""
    if bin_factor == 1:
        return tuple(shape_yx)
    out = []
    for n in shape_yx:
        m = int(round(n / bin_factor))
        m -= m % 2
        out.append(max(2, m))
    return tuple(out)


def calc_fourier_crop(spectrum: np.ndarray, shape_yx: tuple[int, int], out_yx: tuple[int, int]) -> np.ndarray:
    """Crop an rfft2 spectrum of a (y, x) image to that of an (oy, ox) image (oy ≤ y, ox ≤ x).

    Rescaled so that irfft2 of the result keeps the mean per pixel.
    """
    ny, nx = shape_yx
    oy, ox = out_yx
    if (oy, ox) == (ny, nx):
        return spectrum
    out = np.empty((oy, ox // 2 + 1), np.complex64)
    h = oy // 2
    out[:h] = spectrum[:h, :ox // 2 + 1]
    out[h:] = spectrum[ny - (oy - h):, :ox // 2 + 1]
    out *= np.float32((oy * ox) / (ny * nx))
    return out


def calc_finished_sums(state: SumState, shape_yx: tuple[int, int], bin_factor: float = 1.0,
                       workers: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Real-space sums (and exposure-weighted sums) at the output size: (oy, ox) float32 each."""
    ny, nx = shape_yx
    out_yx = calc_output_shape(shape_yx, bin_factor)
    results = []
    for acc in (state.total, state.total_dw):
        if acc is None:
            results.append(None)
            continue
        if len(state.tile_origins) == 1 and state.margin == 0:
            padded = state.padded_yx
            out_padded = calc_output_shape(padded, bin_factor)
            spec = calc_fourier_crop(acc[0], padded, out_padded)
            image = scipy.fft.irfft2(spec, s=out_padded, workers=workers).astype(np.float32)
            results.append(np.ascontiguousarray(image[:out_yx[0], :out_yx[1]]))
            continue
        image = np.empty((ny, nx), np.float32)
        tiles = scipy.fft.irfft2(acc, s=state.padded_yx, axes=(-2, -1), workers=workers)
        g = state.margin
        for (y0, x0), (cy, cx), tile in zip(state.tile_origins, state.tile_cores, tiles):
            image[y0:y0 + cy, x0:x0 + cx] = tile[g:g + cy, g:g + cx]
        if out_yx != (ny, nx):
            spec = calc_fourier_crop(scipy.fft.rfft2(image, workers=workers).astype(np.complex64), shape_yx, out_yx)
            image = scipy.fft.irfft2(spec, s=out_yx, workers=workers).astype(np.float32)
        results.append(image)
    return results[0], results[1]


def calc_tile_shifts(state: SumState, global_shift_px: np.ndarray, coeffs: np.ndarray | None,
                     shape_yx: tuple[int, int], frame_index: int) -> np.ndarray:
    """Total displacement (global + model) at each tile centre for one frame: (m, 2)."""
    m = len(state.tile_origins)
    shifts = np.repeat(np.asarray(global_shift_px, float).reshape(1, 2), m, axis=0)
    if coeffs is None:
        return shifts
    ny, nx = shape_yx
    cy = state.tile_origins[:, 0] + (state.tile_cores[:, 0] - 1) / 2.0
    cx = state.tile_origins[:, 1] + (state.tile_cores[:, 1] - 1) / 2.0
    basis = calc_poly_basis(cx / nx - 0.5, cy / ny - 0.5, float(frame_index))
    return shifts + basis @ coeffs.T


# ----------------------------------------------------------------------------------------
# Trajectory summaries
# ----------------------------------------------------------------------------------------

def calc_trajectory_rms_error(estimate_px: np.ndarray, truth_px: np.ndarray) -> float:
    """RMS distance between two trajectories (n, 2) after removing their mean difference."""
    diff = np.asarray(estimate_px, float) - np.asarray(truth_px, float)
    diff -= diff.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(diff * diff, axis=1))))


def calc_motion_summary(shifts_px: np.ndarray, early_frames: int = 4) -> tuple[float, float, float]:
    """(total, early, late) path length in pixels: early = the first `early_frames` steps."""
    steps = np.linalg.norm(np.diff(np.asarray(shifts_px, float), axis=0), axis=1)
    early = float(steps[:early_frames].sum())
    return float(steps.sum()), early, float(steps[early_frames:].sum())
