"""Fit diagnostics: CTFFIND-style 1D outputs, per-frequency fit score, fit resolution, Appion's confidences."""
from __future__ import annotations

import math

import numpy as np

from appion.base.physics import calc_ctf, calc_frequency_grid
from appion.ctfestimation.calc.internal.common import (NOISE_CC_FACTOR, SCORE_MIN_HALF_BINS, CtfFit,
                                                       CtfSearchParams, Refined, SpectrumData)
from appion.ctfestimation.calc.internal.phase import _calc_k_at_phase, _optics, _radial_profile
from appion.ctfestimation.calc.internal.refine import calc_normalised_spectrum
from appion.ctfestimation.calc.result import CtfResult


# ----------------------------------------------------------------------------- diagnostics

def _window_correlation(data, model, lo, hi, valid):
    """Pearson correlation of data and model over each index window [lo, hi) of valid bins: (n,)."""
    v = valid.astype(np.float64)

    def csum(x):
        return np.concatenate([[0.0], np.cumsum(x * v)])

    n = csum(np.ones_like(data))
    sx, sy = csum(data), csum(model)
    sxx, syy, sxy = csum(data * data), csum(model * model), csum(data * model)

    def win(c):
        return c[hi] - c[lo]

    cnt = win(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = win(sxy) - win(sx) * win(sy) / cnt
        vx = win(sxx) - win(sx) ** 2 / cnt
        vy = win(syy) - win(sy) ** 2 / cnt
        r = cov / np.sqrt(vx * vy)
    return np.where((cnt >= 3) & np.isfinite(r), r, 0.0), cnt


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1D arrays (0 when undefined); no BLAS (see _minimise_bfgs)."""
    am = a - a.mean()
    bm = b - b.mean()
    den = math.sqrt(float(np.sum(am * am)) * float(np.sum(bm * bm)))
    return float(np.sum(am * bm)) / den if den > 0 else 0.0


def _calc_ctf_peaks_k(mean_defocus_A: float, phase_rad: float, lam: float, cs_A: float, w: float,
                      n: int) -> np.ndarray:
    """Frequencies (1/Å) of the first n maxima of CTF² (χ + φ + w = π/2 + mπ) at the mean defocus."""
    a = np.pi * lam * mean_defocus_A
    b = 0.5 * np.pi * cs_A * lam**3
    offset = phase_rad + w
    m0 = math.ceil((offset - np.pi / 2) / np.pi)
    targets = np.pi / 2 + np.pi * (m0 + np.arange(n)) - offset
    targets = targets[targets > 0][:n]
    return _calc_k_at_phase(targets, a, b)


def calc_appion_confidences(k: np.ndarray, data: np.ndarray, ctf2: np.ndarray, valid: np.ndarray,
                            peaks_k: np.ndarray):
    """Appion's quality figures from a 1D (astigmatism-corrected) profile and the fitted CTF².

    k: (n,) 1/Å; data: (n,) background-subtracted, envelope-normalised profile; ctf2: (n,)
    fitted CTF²; valid: (n,) bool; peaks_k: CTF² maxima (1/Å), at least two.
    Definitions (as in classic Appion's ctfdisplay/ctfres, reimplemented):
    - confidence_30_10: Pearson correlation of profile and CTF² over 1/30–1/10 Å⁻¹.
    - confidence_5_peak: the same from the first CTF² maximum to the sixth.
    - resolution_80_percent / resolution_50_percent: a correlation profile is computed in
      windows of width 1.8 × (k²(2nd max) − k²(1st max)) in k², stepped by a quarter window,
      starting at the first maximum; the resolution is the spacing (Å) where it first falls
      below 0.8 / 0.5 (linear interpolation).  100 Å when it never reaches the limit in its
      first points, the highest frequency analysed when it never falls below.
    Returns (conf_30_10, conf_5_peak, res80_A, res50_A).
    """
    def pearson(lo_k, hi_k):
        s = valid & (k >= lo_k) & (k < hi_k)
        if s.sum() < 3:
            return 0.0
        return _pearson(data[s], ctf2[s])

    conf3010 = pearson(1 / 30.0, 1 / 10.0)
    conf5 = pearson(peaks_k[0], peaks_k[min(5, len(peaks_k) - 1)]) if len(peaks_k) >= 2 else 0.0
    kk = k[valid]
    dd = data[valid]
    cc = ctf2[valid]
    if len(peaks_k) < 2 or kk.size < 8:
        return conf3010, conf5, 100.0, 100.0
    k2 = kk**2
    width = 1.8 * (peaks_k[1] ** 2 - peaks_k[0] ** 2)
    centres = []
    confs = []
    x = peaks_k[0] ** 2 + width / 2
    while x < k2[-1] - width / 2:
        s = (k2 >= x - width / 2) & (k2 < x + width / 2)
        if s.sum() >= 4:
            centres.append(math.sqrt(x))
            confs.append(_pearson(dd[s], cc[s]))
        x += width / 4
    centres = np.array(centres)
    confs = np.array(confs)

    def res_at(limit):
        if confs.size < 3 or confs[:3].max() < limit:
            return 100.0
        for i in range(1, confs.size):
            if confs[i] < limit <= confs[i - 1]:
                f = (confs[i - 1] - limit) / (confs[i - 1] - confs[i])
                return float(1.0 / (centres[i - 1] + f * (centres[i] - centres[i - 1])))
            if confs[i] < limit:
                return float(1.0 / centres[i - 1]) if i > 0 else 100.0
        return float(1.0 / kk[-1])

    return conf3010, conf5, res_at(0.8), res_at(0.5)


def calc_fit_diagnostics(spec: SpectrumData, params: CtfSearchParams, refined: Refined) -> CtfFit:
    """1D outputs, fit resolution and Appion's confidences for a refined fit.

    The per-frequency score is the correlation of the equiphase average with the fitted CTF²
    over a window of ±π in χ (two CTF² periods; at least ±SCORE_MIN_HALF_BINS bins) around
    each frequency; its noise level is 2/√(number of bins in the window).  The fit resolution
    (CTFFIND's "spacing up to which CTF rings were fit successfully") is the spacing at the
    first frequency where the score falls below that noise level, looking from the CTF²
    maximum that follows the first zero above 1/resmin; if it never does, the Nyquist
    frequency; if it does before the next CTF² maximum (not even one ring fitted), or if the
    2D correlation is no better than a fit to pure noise reaches (NOISE_CC_FACTOR/√N), resmin.
    """
    lam, cs_A, w = _optics(params)
    d1, d2, ang, phi = refined.defocus1_A, refined.defocus2_A, refined.astig_angle_deg, refined.phase_shift_rad
    mean = 0.5 * (d1 + d2)
    n_bins = int(spec.box / 2 * np.sqrt(2)) + 1          # CTFFIND's count: 363 for a 512 box
    kj = np.arange(n_bins) * spec.dk

    norm, ke, _, _ = calc_normalised_spectrum(spec, d1, d2, ang, lam, cs_A)
    rbin = np.minimum(np.rint(ke / spec.dk).astype(np.int64), n_bins - 1)
    rotavg, counts = _radial_profile(norm, rbin, n_bins, spec.fit_mask)
    # Plain rotational average with the background of a non-astigmatic fit at the mean defocus.
    norm0, _, _, _ = calc_normalised_spectrum(spec, mean, mean, 0.0, lam, cs_A)
    rbin0 = np.minimum(np.rint(spec.k / spec.dk).astype(np.int64), n_bins - 1)
    rotavg0, _ = _radial_profile(norm0, rbin0, n_bins, spec.fit_mask)

    ctf_fit = calc_ctf(kj, 0.0, mean, mean, 0.0, params.voltage_kV * 1e3, params.cs_mm,
                       params.amplitude_contrast, phi) ** 2
    valid = (counts > 0) & (kj <= 0.5 / params.pixel_size_A)
    a = np.pi * lam * mean
    b = 0.5 * np.pi * cs_A * lam**3
    chi = a * kj**2 - b * kj**4
    k_lo = _calc_k_at_phase(chi - np.pi, a, b)
    k_hi = _calc_k_at_phase(chi + np.pi, a, b)
    jj = np.arange(n_bins)
    lo = np.clip(np.minimum(np.ceil(np.minimum(k_lo / spec.dk, n_bins)), jj - SCORE_MIN_HALF_BINS), 0, n_bins)
    hi = np.clip(np.maximum(np.floor(np.minimum(k_hi / spec.dk, n_bins - 1)) + 1, jj + SCORE_MIN_HALF_BINS + 1),
                 0, n_bins)
    score, cnt = _window_correlation(rotavg, ctf_fit, lo.astype(np.int64), hi.astype(np.int64), valid)
    noise = 2.0 / np.sqrt(np.maximum(cnt, 1.0))
    noise = np.minimum(noise, 1.0)

    peaks = _calc_ctf_peaks_k(mean, phi, lam, cs_A, w, 12)
    peaks = peaks[np.isfinite(peaks)]
    zeros = _calc_ctf_peaks_k(mean, phi - np.pi / 2, lam, cs_A, w, 12)      # CTF² minima
    zeros = zeros[np.isfinite(zeros) & (zeros > 1.0 / params.resmin_A)]
    # the lobe below the first zero is where background and signal cannot be told apart
    k_start = float(zeros[0]) if zeros.size else 1.0 / params.resmin_A
    after = peaks[peaks > k_start]
    k_start = float(after[0]) if after.size else k_start
    j0 = int(np.searchsorted(kj, k_start))
    k_last = kj[valid][-1]
    fit_res = 1.0 / k_last
    below = np.nonzero((score[j0:] < noise[j0:]) & valid[j0:])[0]
    if below.size:
        fit_res = 1.0 / kj[max(j0 + below[0], 1)]
        # failing within the first full ring after the start means no ring was fitted at all
        later = peaks[peaks > k_start * (1 + 1e-9)]
        if later.size and kj[j0 + below[0]] < later[0]:
            fit_res = max(fit_res, params.resmin_A)

    # A fit of pure noise still finds "rings": the best of many candidate patterns correlates
    # ~√(2 ln M / N) with N independent pixels, and averaging along the fitted ellipses then
    # makes those rings look real bin by bin.  Below NOISE_CC_FACTOR/√N nothing was fitted.
    if refined.n_fit_pixels and refined.cross_correlation < NOISE_CC_FACTOR / math.sqrt(refined.n_fit_pixels):
        fit_res = max(fit_res, params.resmin_A)

    conf = calc_appion_confidences(kj, rotavg, ctf_fit, valid & (kj > 0), peaks)
    result = CtfResult(defocus1_A=float(d1), defocus2_A=float(d2), astig_angle_deg=float(ang),
                       phase_shift_rad=float(phi), cross_correlation=float(refined.cross_correlation),
                       fit_resolution_A=float(fit_res), confidence_30_10=float(conf[0]),
                       confidence_5_peak=float(conf[1]), resolution_80_percent_A=float(conf[2]),
                       resolution_50_percent_A=float(conf[3]))

    spectrum_2d, model_2d = _calc_display(spec, norm, d1, d2, ang, phi, params)
    return CtfFit(result=result, frequencies_per_A=kj, rotavg_no_astig=rotavg0, rotavg=rotavg, ctf_fit=ctf_fit,
                  ring_score=score, ring_score_noise=noise, spectrum_2d=spectrum_2d, model_2d=model_2d,
                  spectrum_pixel_size_A=params.pixel_size_A)


def _calc_display(spec: SpectrumData, norm: np.ndarray, d1: float, d2: float, ang: float, phi: float,
                  params: CtfSearchParams):
    """Full centred (box, box) images of the normalised spectrum and the fitted CTF²."""
    box = spec.box
    full = np.empty((box, box), dtype=np.float32)
    nh = box // 2 + 1
    full[:, :nh] = norm
    # Hermitian symmetry: P(−ky, −kx) = P(ky, kx)
    iy = (-np.arange(box)) % box
    full[:, nh:] = norm[iy][:, box - np.arange(nh, box)]
    spectrum_2d = np.fft.fftshift(full)
    k, theta = calc_frequency_grid((box, box), params.pixel_size_A)
    model = calc_ctf(k, theta, d1, d2, ang, params.voltage_kV * 1e3, params.cs_mm, params.amplitude_contrast, phi) ** 2
    return spectrum_2d, np.fft.fftshift(model).astype(np.float32)
