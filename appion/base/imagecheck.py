"""Is an image usable at all?  Catches the broken sums a program can write without failing: empty, NaN/Inf,
constant (the all-black output some MotionCor3 users report), mostly zero, or saturated.

Pure numpy, no I/O: the motion task calls it on each aligned sum it writes (before CTF runs) and the
quality step on the image it measures.
"""
from __future__ import annotations

import numpy as np

# More than this fraction of pixels exactly 0: the sum is mostly missing.  A real sum of even a short
# low-dose movie has ≥ ~10 e/px, so a zero pixel has probability e^-10 (and a dose-weighted sum is
# interpolated floats): half the image at exactly 0 is never a real exposure.
MAX_ZERO_FRACTION = 0.5
# Saturation: at least MAX_SATURATED_FRACTION of the pixels sit on one bright plateau.  The plateau's value
# is the brightest MAX_SATURATED_FRACTION's lower edge v; pixels within SATURATION_TOLERANCE × (v − median)
# of it count as on it; and it must be the top of the image: the maximum lies at most
# PLATEAU_OVERSHOOT × (v − median) above it.  (An aligned sum shifts a clipped region by sub-pixel amounts
# with Fourier shifts, whose ringing leaves the plateau a few % uneven and overshoots its edges by ~10 %.)
# A real sum's brightest pixels are a tail of its count distribution, spread far above the 99th percentile.
MAX_SATURATED_FRACTION = 0.01
SATURATION_TOLERANCE = 0.02
PLATEAU_OVERSHOOT = 0.2


def calc_image_problem(image: np.ndarray) -> str | None:
    """Why the image cannot be a usable micrograph, or None when it can.

    image: any real array (normally (y, x)); integer and float types are judged as stored.  Checks, in
    order: no pixels; NaN or infinite pixels; every pixel the same value; more than MAX_ZERO_FRACTION
    of pixels exactly 0; at least MAX_SATURATED_FRACTION of pixels on one plateau at the top of the values
    (saturated; see the constants).
    """
    a = np.asarray(image)
    if a.size == 0:
        return f"empty image (shape {a.shape}, no pixels)"
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        return f"not a real-valued image (dtype {a.dtype})"
    n = a.size
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        bad = n - int(np.count_nonzero(finite))
        if bad:
            n_nan = int(np.count_nonzero(np.isnan(a)))
            return (f"{bad} of {n} pixels are not finite ({n_nan} NaN, {bad - n_nan} infinite)")
    low, high = a.min(), a.max()
    if low == high:
        if low == 0:
            return "blank image: every pixel is 0 (an all-black sum)"
        return f"constant image: every pixel is {float(low):g}"
    zeros = n - int(np.count_nonzero(a))
    if zeros > MAX_ZERO_FRACTION * n:
        return f"mostly zero: {100.0 * zeros / n:.1f} % of the pixels are exactly 0"
    flat = a.ravel()
    k_top = min(n - 1, int((1.0 - MAX_SATURATED_FRACTION) * n))
    part = np.partition(flat, (n // 2, k_top))
    median, top = float(part[n // 2]), float(part[k_top])
    if float(high) - top <= PLATEAU_OVERSHOOT * (top - median):
        band = SATURATION_TOLERANCE * (top - median)
        on = int(np.count_nonzero(np.abs(flat.astype(np.float64) - top) <= band))
        if on >= MAX_SATURATED_FRACTION * n:
            return f"saturated: {100.0 * on / n:.1f} % of the pixels sit at the top value {top:g}"
    return None
