"""Local (patch) alignment and MotionCor2/RELION's smooth 18-term polynomial model."""
from __future__ import annotations

import numpy as np

from appion.motioncorrection.calc.internal.align import calc_frame_shifts, calc_spectra

N_POLY_TERMS = 18


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
