"""Exposure weights and the (tiled) Fourier-space sums of shifted frames, binned at the end."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numba import njit, prange

from appion.base.fft import calc_irfft2, calc_rfft2, run_in_threads
from appion.base.physics import calc_exposure_weights
from appion.motioncorrection.calc.internal.align import _pad_raw_with_mean, calc_phase_vectors
from appion.motioncorrection.calc.internal.local import calc_poly_basis

TILE_CORE_PX = 512
TILE_MARGIN_PX = 32
K_TABLE_SIZE = 4096
# Frames each thread of calc_add_raw_frames transforms before adding them to its sums in one pass, without and
# with exposure-weighted sums (measured on a K3 movie, 2 threads: 2 saves 0.2 s of 2.7 with weighting and costs
# 0.1 s of 1.9 without, the extra spectrum buffer's page faults outweighing one less read and write of one sum).
FRAMES_PER_PASS = 1
FRAMES_PER_PASS_WEIGHTED = 2


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


def calc_written_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.zeros(shape, dtype) with every page written now, for accumulators that are read and then written.

    np.zeros of fresh memory leaves the pages unmapped; the first read maps the kernel's shared zero page and the
    first write then replaces it (a copy-on-write fault that flushes the TLB of every core running one of this
    process's threads: an interrupt to each).  Writing the zeros up front makes each page an ordinary first-write
    fault instead (measured on a K3 movie, 2 cores: ~0.4 s of CPU time less).
    """
    out = np.empty(shape, dtype)
    out.fill(0)
    return out


@njit(cache=True, parallel=True, nogil=True)
def _calc_weight_positions(full_ny, full_nx, wstep, n_samples):
    """Where each element of a (full_ny, full_nx) image's rfft2 falls on the |f| weight table (step wstep,
    n_samples): (index (y, x//2+1) int16, fraction (y, x//2+1) float32), so that the weight is
    table[index]·(1 − fraction) + table[index + 1]·fraction; beyond the table, the last sample.  The same for
    every frame: computed once per movie instead of a square root per element and frame."""
    nxh = full_nx // 2 + 1
    index = np.empty((full_ny, nxh), np.int16)
    fraction = np.empty((full_ny, nxh), np.float32)
    for y in prange(full_ny):
        fy = (y if y < (full_ny + 1) // 2 else y - full_ny) / full_ny  # as numpy fftfreq
        for x in range(nxh):
            fx = x / full_nx
            pos = math.sqrt(fx * fx + fy * fy) / wstep
            i0 = int(pos)
            if i0 >= n_samples - 1:
                index[y, x] = n_samples - 2
                fraction[y, x] = 1.0
            else:
                index[y, x] = i0
                fraction[y, x] = pos - i0
    return index, fraction


@njit(cache=True, nogil=True)
def _accumulate_frames(spectra, py, px, total):
    """total += Σ_b G_b, G_b = spectra[b] · py[b, y] · px[b, x], serial; one or two frames per read and write
    of total (the pass is bound by memory traffic).  spectra (b, y, x//2+1), py (b, y), px (b, x//2+1) complex64."""
    nb, ny, nxh = spectra.shape
    for y in range(ny):
        a0 = py[0, y]
        if nb == 1:
            for x in range(nxh):
                total[y, x] += spectra[0, y, x] * (a0 * px[0, x])
        else:
            a1 = py[1, y]
            for x in range(nxh):
                total[y, x] += spectra[0, y, x] * (a0 * px[0, x]) + spectra[1, y, x] * (a1 * px[1, x])


@njit(cache=True, nogil=True)
def _accumulate_frames_weighted(spectra, py, px, wrows, index, fraction, total, total_dw):
    """_accumulate_frames with exposure weights: also total_dw += Σ_b w_b·G_b, w_b from table row wrows[b] at
    _calc_weight_positions' (index, fraction) (y, x//2+1)."""
    nb, ny, nxh = spectra.shape
    one = np.float32(1.0)
    w0 = wrows[0]
    w1 = wrows[nb - 1]
    for y in range(ny):
        a0 = py[0, y]
        if nb == 1:
            for x in range(nxh):
                g0 = spectra[0, y, x] * (a0 * px[0, x])
                i = index[y, x]
                f = fraction[y, x]
                total[y, x] += g0
                total_dw[y, x] += g0 * (w0[i] * (one - f) + w0[i + 1] * f)
        else:
            a1 = py[1, y]
            for x in range(nxh):
                g0 = spectra[0, y, x] * (a0 * px[0, x])
                g1 = spectra[1, y, x] * (a1 * px[1, x])
                i = index[y, x]
                f = fraction[y, x]
                g = one - f
                total[y, x] += g0 + g1
                total_dw[y, x] += g0 * (w0[i] * g + w0[i + 1] * f) + g1 * (w1[i] * g + w1[i + 1] * f)


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
    total = calc_written_zeros((m, padded[0], padded[1] // 2 + 1), np.complex64)
    total_dw = calc_written_zeros(total.shape, np.complex64) if with_dw else None
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
    return calc_rfft2(state.buffer, workers)


def calc_add_spectra(state: SumState, spectra: np.ndarray, shifts_px: np.ndarray,
                     weight_row: np.ndarray | None, weight_step: float) -> None:
    """Add spectra (m, py, px//2+1) of the plan's m tiles, each moved by −shifts_px[t], to the sums."""
    py, px = state.padded_yx
    do_dw = state.total_dw is not None and weight_row is not None
    dw_target = state.total if state.total_dw is None else state.total_dw  # unused when not do_dw
    wrow = weight_row if weight_row is not None else np.ones(2, np.float32)
    phase_y, phase_x = calc_phase_vectors(shifts_px, py, px)
    _accumulate_tiles(spectra, phase_y, phase_x, py, px, wrow, weight_step, state.total, dw_target, do_dw)


def calc_add_raw_frames(state: SumState, raw: np.ndarray, gain: np.ndarray, has_gain: bool, means: list[float],
                        shifts_px: np.ndarray, weight_table: np.ndarray | None, weight_step: float,
                        threads: int = 1) -> None:
    """Add stored frames to a global-shift plan's sums: raw (n, y, x) integer counts × gain (y, x) float32
    (a (1, 1) dummy unless has_gain), frame j padded with means[j] and moved by −shifts_px[j] ((n, 2) [dx, dy]),
    weighted by weight_table[j] (calc_weight_table) when the plan has exposure-weighted sums.

    Thread w of `threads` takes frames w, w + threads, ...: it pads each into its own buffer, transforms it (one
    FFT thread) into its own spectrum buffers and adds FRAMES_PER_PASS of them at a time to its own partial sums
    (thread 0 to the plan's), so nothing waits for anything but the cores; the partial sums are added at the
    end, in thread order (the same movie and thread count always give the same bits).  Memory per thread: one
    float32 and one or two complex64 frame-sized buffers, and for each thread but the first its partial sums.
    """
    if len(state.tile_origins) != 1 or state.margin != 0:
        raise ValueError("calc_add_raw_frames: the plan must be a global (untiled) one")
    n = len(raw)
    py, px = state.padded_yx
    do_dw = state.total_dw is not None and weight_table is not None
    phase_y, phase_x = calc_phase_vectors(np.asarray(shifts_px, np.float64).reshape(n, 2), py, px)
    workers = max(1, min(int(threads), n))
    partials: list[tuple[np.ndarray, np.ndarray]] = []
    for w in range(workers):
        if w == 0:
            total = state.total[0]
            total_dw = state.total_dw[0] if do_dw else total
        else:
            total = calc_written_zeros(state.total[0].shape, np.complex64)
            total_dw = calc_written_zeros(total.shape, np.complex64) if do_dw else total
        partials.append((total, total_dw))
    per_pass = FRAMES_PER_PASS_WEIGHTED if do_dw else FRAMES_PER_PASS
    if do_dw:
        index, fraction = _calc_weight_positions(py, px, weight_step, weight_table.shape[1])

    def run(w: int) -> None:
        total, total_dw = partials[w]
        buffer = np.empty((py, px), np.float32)
        spectra = np.empty((per_pass, py, px // 2 + 1), np.complex64)
        mine = list(range(w, n, workers))
        for start in range(0, len(mine), per_pass):
            frames = mine[start:start + per_pass]
            for b, j in enumerate(frames):
                _pad_raw_with_mean(raw[j], gain, has_gain, np.float32(means[j]), buffer)
                calc_rfft2(buffer, out=spectra[b])
            k = len(frames)
            if do_dw:
                _accumulate_frames_weighted(spectra[:k], phase_y[frames], phase_x[frames], weight_table[frames],
                                            index, fraction, total, total_dw)
            else:
                _accumulate_frames(spectra[:k], phase_y[frames], phase_x[frames], total)

    run_in_threads(workers, run, name="frame-sum")
    for total, total_dw in partials[1:]:
        state.total[0] += total
        if do_dw:
            state.total_dw[0] += total_dw


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
        spectra = calc_rfft2(state.buffer, workers)
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
            image = calc_irfft2(spec, out_padded, workers)
            results.append(np.ascontiguousarray(image[:out_yx[0], :out_yx[1]]))
            continue
        image = np.empty((ny, nx), np.float32)
        tiles = calc_irfft2(acc, state.padded_yx, workers)
        g = state.margin
        for (y0, x0), (cy, cx), tile in zip(state.tile_origins, state.tile_cores, tiles):
            image[y0:y0 + cy, x0:x0 + cx] = tile[g:g + cy, g:g + cx]
        if out_yx != (ny, nx):
            spec = calc_fourier_crop(calc_rfft2(image, workers), shape_yx, out_yx)
            image = calc_irfft2(spec, out_yx, workers)
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
