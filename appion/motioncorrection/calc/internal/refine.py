"""Global alignment in two resolutions: a coarse cross-correlation search, then a Newton refinement.

Shapes and conventions as in the package docstring (appion.motioncorrection.calc.internal).

Why two resolutions: precision grows with the high frequencies the cross-correlation sees, but a CC map
(an inverse FFT per frame and iteration) costs in proportion to the pixels it covers.  The search for the
peak (wide, robust) runs on a Fourier crop of the frames (~800 px, calc_alignment_binning's factor); the
refinement runs on frames binned only as far as the local B-factor allows (calc_refinement_binning: about
2.5 Å pixels for B = 150 Å², 3× on a 0.83 Å K3 instead of 5×) and needs no CC map at all: at the current
estimate d = 0 the CC of a frame with the sum of the others, CC(d) = Σ_k w(k) Re[(T − G)(k) G*(k)
e^{2πi k·d}], has gradient −2π Σ w k Im X and Hessian −4π² Σ w k kᵀ Re X (X = (T − G) G*), so a Newton
step d = −H⁻¹∇ moves it to the CC maximum; every frame is re-shifted exactly in Fourier space after each
step, so the next step measures what is left (quadratic convergence, 2–3 iterations).  One pass over the
spectra per iteration computes all frames' sums; one more shifts the frames and re-forms their sum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from appion.motioncorrection.calc.internal.align import (AlignmentResult, calc_fast_size_below, calc_frame_shifts,
                                                         calc_shifted_spectra_inplace)

# Largest filter value left at the Nyquist frequency of the refinement's binned frames (see
# calc_refinement_binning): 5 % of exp(−B k²/2) is where little signal is left to gain.
REFINE_FILTER_AT_NYQUIST = 0.05
# Largest refinement image (pixels): bounds its memory (n × this × 4 bytes of spectra) on large frames.
REFINE_MAX_PIXELS = 3.0e6
# Largest Newton step (refinement pixels) per iteration: the coarse search leaves far less.
NEWTON_MAX_STEP_PX = 1.0
# Shorter side (pixels) of the search's Fourier crop: it only has to bring every frame within the
# refinement's reach (a fraction of a pixel), which ~500 pixels of a movie do at half the cost of 800.
SEARCH_SIZE_PX = 512


def calc_refinement_binning(shape_yx: tuple[int, int], pixel_size_A: float, bfactor_A2: float,
                            coarse_factor: int, max_pixels: float = REFINE_MAX_PIXELS) -> int:
    """Integer box-binning factor of the refinement's frames (≤ coarse_factor).

    The pixel is the one whose Nyquist frequency k_N has exp(−B k_N²/2) = REFINE_FILTER_AT_NYQUIST (2.5 Å
    for B = 150 Å²), binned further until the image has at most max_pixels.
    """
    if bfactor_A2 <= 0:
        factor = 1
    else:
        k_nyquist = math.sqrt(2.0 * math.log(1.0 / REFINE_FILTER_AT_NYQUIST) / bfactor_A2)
        factor = max(1, int(math.floor(1.0 / (2.0 * k_nyquist) / pixel_size_A)))
    ny, nx = shape_yx
    while factor < coarse_factor and (ny // factor) * (nx // factor) > max_pixels:
        factor += 1
    return max(1, min(factor, coarse_factor))


def calc_coarse_shape(fine_shape_yx: tuple[int, int], fine_factor: int, coarse_factor: float) -> tuple[int, int]:
    """Fast even (y, x) of the Fourier crop that samples the fine frames like coarse_factor binning would."""
    if coarse_factor <= fine_factor:
        return tuple(fine_shape_yx)
    ratio = coarse_factor / fine_factor
    return tuple(min(n, calc_fast_size_below(max(8, int(round(n / ratio))))) for n in fine_shape_yx)


def calc_crop_scale(shape_yx: tuple[int, int], crop_yx: tuple[int, int]) -> np.ndarray:
    """(sx, sy): pixels of (y, x) images per pixel of their Fourier crop to crop_yx (same field of view)."""
    return np.array([shape_yx[1] / crop_yx[1], shape_yx[0] / crop_yx[0]])


def calc_fourier_crop_spectra(spectra: np.ndarray, shape_yx: tuple[int, int],
                              out_yx: tuple[int, int]) -> np.ndarray:
    """The lowest (oy, ox//2+1) frequencies of rfft2 spectra (n, y, x//2+1) of (y, x) images: the spectra of
    the images resampled to (oy, ox) (same field of view, mean per pixel kept).  Even oy, ox ≤ y, x."""
    (ny, nx), (oy, ox) = shape_yx, out_yx
    if (oy, ox) == (ny, nx):
        return spectra.copy()
    half = oy // 2
    scale = np.float32(oy * ox / (ny * nx))
    out = np.empty((spectra.shape[0], oy, ox // 2 + 1), np.complex64)
    np.multiply(spectra[:, :half, :ox // 2 + 1], scale, out=out[:, :half])
    np.multiply(spectra[:, ny - half:, :ox // 2 + 1], scale, out=out[:, half:])
    return out


def calc_weighted_filter(shape_yx: tuple[int, int], pixel_size_A: float, bfactor_A2: float) -> np.ndarray:
    """exp(−B k²/2) on the rfft grid of (y, x) images (y, x//2+1) float32, times 2 on the columns that stand
    for two (every column but the first and, for even x, the last), 0 at DC and on the Nyquist row/column."""
    ny, nx = shape_yx
    ky = np.fft.fftfreq(ny) / pixel_size_A
    kx = np.fft.rfftfreq(nx) / pixel_size_A
    filt = np.exp(-0.5 * bfactor_A2 * (ky[:, None] ** 2 + kx[None, :] ** 2))
    filt[:, 1:] *= 2.0
    if nx % 2 == 0:
        filt[:, -1] = 0.0
    if ny % 2 == 0:
        filt[ny // 2, :] = 0.0
    filt[0, 0] = 0.0
    return filt.astype(np.float32)


@njit(cache=True, parallel=True, nogil=True)
def _calc_cc_derivative_sums(spectra, total, filt, fy, fx, out):
    """Per frame f: Σ w·fx·Im X, Σ w·fy·Im X, Σ w·fx²·Re X, Σ w·fy²·Re X, Σ w·fx·fy·Re X with
    X = (total − G_f)·conj(G_f).  spectra (n, y, x//2+1) complex64, total (y, x//2+1), filt (y, x//2+1)
    float32, fy (y,) / fx (x//2+1,) float64 in cycles per pixel; out (n, 5) float64."""
    n, ny, nxh = spectra.shape
    for f in prange(n):
        sx = 0.0
        sy = 0.0
        sxx = 0.0
        syy = 0.0
        sxy = 0.0
        for y in range(ny):
            ky = fy[y]
            rx = 0.0
            ix = 0.0
            re_row = 0.0
            im_row = 0.0
            rxx = 0.0
            for x in range(nxh):
                w = filt[y, x]
                g = spectra[f, y, x]
                t = total[y, x]
                rr = t.real - g.real
                ri = t.imag - g.imag
                re = (rr * g.real + ri * g.imag) * w
                im = (ri * g.real - rr * g.imag) * w
                kx = fx[x]
                ix += kx * im
                rx += kx * re
                rxx += kx * kx * re
                re_row += re
                im_row += im
            sx += ix
            sy += ky * im_row
            sxx += rxx
            syy += ky * ky * re_row
            sxy += ky * rx
        out[f, 0] = sx
        out[f, 1] = sy
        out[f, 2] = sxx
        out[f, 3] = syy
        out[f, 4] = sxy


def calc_newton_steps(sums: np.ndarray, max_step_px: float = NEWTON_MAX_STEP_PX) -> tuple[np.ndarray, np.ndarray]:
    """Newton steps to each frame's CC maximum from _calc_cc_derivative_sums' (n, 5): (steps (n, 2) [dx, dy]
    in pixels, each component clipped to ±max_step_px; ok (n,) bool: the Hessian was negative definite —
    where it is not, the step is 0)."""
    gx, gy = -2.0 * np.pi * sums[:, 0], -2.0 * np.pi * sums[:, 1]
    hxx, hyy, hxy = (-4.0 * np.pi ** 2 * sums[:, k] for k in (2, 3, 4))
    det = hxx * hyy - hxy * hxy
    ok = (hxx < 0) & (det > 0)
    safe = np.where(ok, det, 1.0)
    steps = np.stack([-(hyy * gx - hxy * gy) / safe, -(hxx * gy - hxy * gx) / safe], axis=1)
    steps[~ok] = 0.0
    return np.clip(steps, -max_step_px, max_step_px), ok


def calc_newton_shifts(spectra: np.ndarray, shape_yx: tuple[int, int], pixel_size_A: float, bfactor_A2: float,
                       max_iterations: int = 10, tolerance_px: float = 0.005,
                       keep_aligned: bool = True) -> AlignmentResult:
    """Newton refinement of each frame against the sum of the others (see the module docstring).

    spectra: (n, y, x//2+1) complex64 rfft2 of nearly aligned frames (mean removed); modified in place: on
    return each holds its frame shifted by −d_i (keep_aligned=False: except for the last, converged update, for
    a caller that only wants the shifts — one pass over the spectra less).  Returns AlignmentResult (shifts
    relative to frame 0, in these pixels; converged when the RMS update < tolerance_px).
    """
    n, ny, nxh = spectra.shape
    nx = shape_yx[1]
    if n < 2:
        return AlignmentResult(np.zeros((n, 2)), (), True)
    filt = calc_weighted_filter(shape_yx, pixel_size_A, bfactor_A2)
    fy = np.fft.fftfreq(ny)
    fx = np.fft.rfftfreq(nx)
    total = spectra.sum(axis=0)
    sums = np.empty((n, 5), np.float64)
    shifts = np.zeros((n, 2), np.float64)
    history = []
    converged = False
    for _ in range(max_iterations):
        _calc_cc_derivative_sums(spectra, total, filt, fy, fx, sums)
        peaks, _ = calc_newton_steps(sums)
        update = -peaks  # the others sit at +peak relative to the frame (as in calc_frame_shifts)
        update -= update.mean(axis=0)  # keep the reference where it is
        shifts += update
        rms = float(np.sqrt(np.mean(np.sum(update * update, axis=1))))
        history.append(rms)
        converged = rms < tolerance_px
        if keep_aligned or not converged:
            calc_shifted_spectra_inplace(spectra, update, nx, total)
        if converged:
            break
    return AlignmentResult(shifts - shifts[0], tuple(history), converged)


@dataclass(frozen=True)
class GlobalAlignment:
    """Global shifts of a movie from its refinement-binned spectra.

    shifts_px: (n, 2) [dx, dy] unbinned pixels relative to frame 0; search_shape_yx: the search's Fourier
    crop; converged: both stages converged."""

    shifts_px: np.ndarray
    search_shape_yx: tuple[int, int]
    converged: bool
    search: AlignmentResult
    refinement: AlignmentResult


def calc_global_alignment(spectra: np.ndarray, shape_yx: tuple[int, int], factor: int, coarse_factor: int,
                          pixel_size_A: float, bfactor_global_A2: float, bfactor_local_A2: float,
                          max_iterations: int = 10, tolerance_px: float = 0.02, workers: int = 1,
                          search_size_px: int = SEARCH_SIZE_PX, keep_aligned: bool = True) -> GlobalAlignment:
    """Two-stage global alignment (module docstring) of frames binned by `factor`.

    spectra: (n, y, x//2+1) complex64 rfft2 of the binned frames (y, x) = shape_yx, mean removed; modified in
    place: on return the frames are aligned (keep_aligned=False: to within the last, converged Newton update; see
    calc_newton_shifts).  pixel_size_A: unbinned.  tolerance_px: unbinned pixels.
    The search runs with the global B-factor (wide search, until the RMS update < 0.25 unbinned px) on a
    Fourier crop to search_size_px along the shorter side, or to coarse_factor binning (calc_alignment_binning)
    where that is coarser; the refinement on the spectra themselves with the local B-factor.
    """
    ratio = max(coarse_factor / factor, min(shape_yx) / search_size_px)
    coarse_shape = calc_coarse_shape(shape_yx, factor, factor * ratio)
    scale = calc_crop_scale(shape_yx, coarse_shape)
    coarse_apix = pixel_size_A * factor * float(np.sqrt(scale[0] * scale[1]))
    coarse = calc_fourier_crop_spectra(spectra, shape_yx, coarse_shape)
    unbinned_per_coarse = factor * float(scale.min())
    search = calc_frame_shifts(coarse, coarse_shape, coarse_apix, bfactor_global_A2, max_iterations,
                               max(tolerance_px, 0.25) / unbinned_per_coarse, workers=workers)
    del coarse
    start = search.shifts_px * scale  # refinement pixels
    calc_shifted_spectra_inplace(spectra, start, shape_yx[1])
    refinement = calc_newton_shifts(spectra, shape_yx, pixel_size_A * factor, bfactor_local_A2, max_iterations,
                                    tolerance_px / factor, keep_aligned)
    shifts = (start + refinement.shifts_px) * factor
    return GlobalAlignment(shifts - shifts[0], coarse_shape, search.converged and refinement.converged, search,
                           refinement)
