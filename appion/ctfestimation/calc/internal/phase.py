"""Phase helpers: optics constants, frequencies at a given CTF phase, phase windows and their smoothing."""
from __future__ import annotations

import numpy as np

from appion.base.physics import calc_amplitude_phase, calc_wavelength_A
from appion.ctfestimation.calc.internal.common import SMOOTH_PASSES, CtfSearchParams, SpectrumData


# ----------------------------------------------------------------------------- phase helpers

def _optics(params: CtfSearchParams) -> tuple[float, float, float]:
    """(λ Å, Cs Å, amplitude phase w rad)."""
    return (float(calc_wavelength_A(params.voltage_kV * 1e3)), params.cs_mm * 1e7,
            calc_amplitude_phase(params.amplitude_contrast))


def _calc_k_at_phase(target, a, b):
    """Smallest k ≥ 0 with a·k² − b·k⁴ = target (χ without offsets); inf when none exists.

    a = πλΔf, b = ½πCsλ³; target and a broadcast together.
    """
    target = np.asarray(target, dtype=np.float64)
    disc = a * a - 4.0 * b * np.maximum(target, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # k² = (a − √disc)/(2b), written in the cancellation-free form 2t/(a + √disc).
        k2 = 2.0 * np.maximum(target, 0.0) / (a + np.sqrt(np.maximum(disc, 0.0)))
    k = np.sqrt(k2)
    return np.where(disc < 0, np.inf, k)


def _calc_phase_windows(defocus_A, n_bins: int, dk: float, lam: float, cs_A: float, min_half_bins: int = 2):
    """Index windows [lo, hi) of 1D bins within ±π/2 in χ of each bin (one CTF² period).

    defocus_A: (m,) → lo, hi: (m, n_bins) int64.  Windows are at least ±min_half_bins wide.
    """
    a = np.pi * lam * np.asarray(defocus_A, dtype=np.float64)[:, None]
    b = 0.5 * np.pi * cs_A * lam**3
    kj = np.arange(n_bins) * dk
    chi = a * kj**2 - b * kj**4
    k_lo = _calc_k_at_phase(chi - np.pi / 2, a, b)
    k_hi = _calc_k_at_phase(chi + np.pi / 2, a, b)
    j = np.arange(n_bins)[None, :]
    lo = np.ceil(np.minimum(k_lo / dk, n_bins)).astype(np.int64)
    hi = np.floor(np.minimum(k_hi / dk, n_bins - 1)).astype(np.int64) + 1
    lo = np.clip(np.minimum(lo, j - min_half_bins), 1, n_bins)
    hi = np.clip(np.maximum(hi, j + min_half_bins + 1), 1, n_bins)
    return lo, hi


def _window_mean(values, weights, lo, hi):
    """Weighted mean of values over index windows [lo, hi) along the last axis (prefix sums)."""
    wv = np.concatenate([np.zeros(values.shape[:-1] + (1,)), np.cumsum(values * weights, axis=-1)], axis=-1)
    ww = np.concatenate([np.zeros(weights.shape[:-1] + (1,)), np.cumsum(weights, axis=-1)], axis=-1)
    num = np.take_along_axis(wv, hi, -1) - np.take_along_axis(wv, lo, -1)
    den = np.take_along_axis(np.broadcast_to(ww, wv.shape), hi, -1) - np.take_along_axis(
        np.broadcast_to(ww, wv.shape), lo, -1)
    return num / np.maximum(den, 1e-300)


def _window_smooth(values, weights, lo, hi):
    """SMOOTH_PASSES passes of the window mean: a smooth kernel ±SMOOTH_PASSES·π/2 wide in phase.

    One box pass of width π removes the CTF² oscillation but, where the envelope slopes,
    leaves a quadrature ripple ∝ dln(envelope)/dχ that shifts the apparent rings (a defocus
    bias of tens of Å); n passes give a kernel with an n-fold zero at the CTF² frequency.
    """
    out = values
    for _ in range(SMOOTH_PASSES):
        out = _window_mean(out, weights, lo, hi)
    return out


def _radial_profile(values: np.ndarray, radius_bins: np.ndarray, n_bins: int, mask: np.ndarray):
    """Mean of values per integer radius bin over mask: (profile (n_bins,), counts (n_bins,))."""
    idx = radius_bins[mask]
    counts = np.bincount(idx, minlength=n_bins)[:n_bins].astype(np.float64)
    sums = np.bincount(idx, weights=values[mask], minlength=n_bins)[:n_bins]
    return sums / np.maximum(counts, 1.0), counts


def calc_equiphase_radius(spec: SpectrumData, defocus1_A: float, defocus2_A: float, astig_angle_deg: float,
                          lam: float, cs_A: float) -> np.ndarray:
    """Frequency k_e (1/Å) at which a non-astigmatic CTF at the mean defocus has the same χ.

    Averaging the spectrum in bins of k_e is CTFFIND's astigmatism-corrected rotational
    average: the fitted rings become circles.  Returns the shape of spec.k.
    """
    mean = 0.5 * (defocus1_A + defocus2_A)
    half = 0.5 * (defocus1_A - defocus2_A)
    ang = np.deg2rad(astig_angle_deg)
    df = mean + half * (spec.cos2 * np.cos(2 * ang) + spec.sin2 * np.sin(2 * ang))
    a_pix = np.pi * lam * df
    b = 0.5 * np.pi * cs_A * lam**3
    k2 = spec.k**2
    chi = a_pix * k2 - b * k2 * k2
    ke = _calc_k_at_phase(chi, np.pi * lam * mean, b)
    return np.where(np.isfinite(ke), ke, spec.k)
