"""2D refinement of defocus 1, defocus 2, astigmatism angle (and phase shift): numba BFGS on the 2D spectrum."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from appion.ctfestimation.calc.internal.common import (ASTIG_PENALTY, DEFAULT_ASTIG_SEARCH_A, SMOOTH_PASSES,
                                                       STAGE1_RESMAX_A, CtfSearchParams, Refined, SearchStart,
                                                       SpectrumData)
from appion.ctfestimation.calc.internal.phase import (_calc_k_at_phase, _calc_phase_windows, _optics,
                                                      _radial_profile, _window_smooth, calc_equiphase_radius)


# ----------------------------------------------------------------------------- 2D refinement

@njit(cache=True, fastmath=True)
def _score_and_gradient(p, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase):
    """Weighted correlation of data with sin²(χ + w) and its gradient in the scaled parameters.

    p: (4,) scaled (mean defocus, a_x, a_y, phase); scale: (4,) units → Å/rad.
    k2, k4, c2, s2, data, wts: (n,) float64 per pixel; data is pre-centred (weighted mean 0).
    Returns (r, grad (4,)).
    """
    f = p[0] * scale[0]
    ax = p[1] * scale[1]
    ay = p[2] * scale[2]
    phi = p[3] * scale[3]
    n = k2.shape[0]
    sw = 0.0
    sa = 0.0
    sq = 0.0
    sl = 0.0
    sdd = 0.0
    da = np.zeros(4)
    dq = np.zeros(4)
    dl = np.zeros(4)
    for i in range(n):
        wi = wts[i]
        df = f + ax * c2[i] + ay * s2[i]
        chi = pi_lam * k2[i] * df - half_pi_cs_lam3 * k4[i] + phi + w_amp
        s = math.sin(chi)
        m = s * s
        dm = 2.0 * s * math.cos(chi)          # d sin²/dχ
        g0 = dm * pi_lam * k2[i]
        d = data[i]
        sw += wi
        sa += wi * d * m
        sq += wi * m * m
        sl += wi * m
        sdd += wi * d * d
        t = wi * d
        u = wi * 2.0 * m
        da[0] += t * g0
        da[1] += t * g0 * c2[i]
        da[2] += t * g0 * s2[i]
        dq[0] += u * g0
        dq[1] += u * g0 * c2[i]
        dq[2] += u * g0 * s2[i]
        dl[0] += wi * g0
        dl[1] += wi * g0 * c2[i]
        dl[2] += wi * g0 * s2[i]
        if fit_phase:
            da[3] += t * dm
            dq[3] += u * dm
            dl[3] += wi * dm
    var = sq - sl * sl / sw
    if var <= 0.0 or sdd <= 0.0:
        return 0.0, np.zeros(4)
    s_m = math.sqrt(var)
    nd = math.sqrt(sdd)
    r = sa / (nd * s_m)
    grad = np.zeros(4)
    for j in range(4):
        dvar = dq[j] - 2.0 * sl * dl[j] / sw
        grad[j] = (da[j] / s_m - sa * dvar / (2.0 * s_m * var)) / nd * scale[j]
    return r, grad


@njit(cache=True)
def _objective(q, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase, restraint):
    """−(correlation − astigmatism penalty) and its gradient in scaled parameters.

    restraint: tolerated |Δf1 − Δf2| in Å (≤ 0: none); beyond it the score loses
    ASTIG_PENALTY × (excess / restraint)².
    """
    r, g = _score_and_gradient(q, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase)
    f = -r
    grad = -g
    if restraint > 0.0:
        ax = q[1] * scale[1]
        ay = q[2] * scale[2]
        astig = 2.0 * math.sqrt(ax * ax + ay * ay)
        if astig > restraint:
            excess = (astig - restraint) / restraint
            f += ASTIG_PENALTY * excess * excess
            dpen = 2.0 * ASTIG_PENALTY * excess / restraint          # d penalty / d astig
            grad[1] += dpen * 4.0 * ax / astig * scale[1]
            grad[2] += dpen * 4.0 * ay / astig * scale[2]
    return f, grad


@njit(cache=True)
def _minimise_bfgs(q0, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase, restraint):
    """BFGS with a backtracking (Armijo) line search on _objective; 4 parameters, plain loops.

    Written out (instead of scipy.optimize) because L-BFGS-B's BLAS calls wake OpenBLAS's
    thread pool, which costs milliseconds per iteration on a busy machine.
    """
    n = 4 if fit_phase else 3
    q = q0.copy()
    f, g = _objective(q, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase, restraint)
    h = np.eye(4)
    for _ in range(100):
        d = np.zeros(4)
        for i in range(n):
            for j in range(n):
                d[i] -= h[i, j] * g[j]
        slope = 0.0
        for i in range(n):
            slope += d[i] * g[i]
        if slope >= 0.0:                      # not a descent direction: restart from steepest descent
            h = np.eye(4)
            for i in range(n):
                d[i] = -g[i]
            slope = 0.0
            for i in range(n):
                slope += d[i] * g[i]
        # never move more than ~0.5 rad of phase at kmax in one step
        norm = 0.0
        for i in range(n):
            norm = max(norm, abs(d[i]))
        step = 1.0 if norm <= 0.5 else 0.5 / norm
        accepted = False
        for _ls in range(30):
            qn = q + step * d
            fn, gn = _objective(qn, scale, k2, k4, c2, s2, data, wts, pi_lam, half_pi_cs_lam3, w_amp, fit_phase,
                                restraint)
            if fn <= f + 1e-4 * step * slope:
                accepted = True
                break
            step *= 0.5
        if not accepted:
            break
        sv = qn - q
        yv = gn - g
        q = qn
        df_ = f - fn
        f = fn
        g = gn
        sy = 0.0
        for i in range(n):
            sy += sv[i] * yv[i]
        if sy > 1e-18:
            hy = np.zeros(4)
            for i in range(n):
                for j in range(n):
                    hy[i] += h[i, j] * yv[j]
            yhy = 0.0
            for i in range(n):
                yhy += yv[i] * hy[i]
            for i in range(n):
                for j in range(n):
                    h[i, j] += ((sy + yhy) * sv[i] * sv[j] / (sy * sy) - (hy[i] * sv[j] + sv[i] * hy[j]) / sy)
        smax = 0.0
        for i in range(n):
            smax = max(smax, abs(sv[i]))
        if smax < 1e-7 or df_ < 1e-13:
            break
    return q


@dataclass(frozen=True)
class _FitPixels:
    """Flattened pixels used by the 2D score: all (n,) float64."""

    k2: np.ndarray
    k4: np.ndarray
    c2: np.ndarray
    s2: np.ndarray
    data: np.ndarray
    wts: np.ndarray


def calc_normalised_spectrum(spec: SpectrumData, defocus1_A: float, defocus2_A: float, astig_angle_deg: float,
                             lam: float, cs_A: float):
    """Background-subtracted, locally normalised spectrum for a CTF estimate.

    The background at each pixel is the average of the equiphase profile over one CTF²
    period around its equiphase radius; the normalisation is the RMS of the residual over
    the same window.  Returns (normalised (box, box//2+1) float64 (0 where not usable),
    equiphase radius (same shape), background profile (n_bins,), rms profile (n_bins,)).
    """
    n_bins = int(np.ceil(float(spec.k.max()) / spec.dk)) + 2
    ke = calc_equiphase_radius(spec, defocus1_A, defocus2_A, astig_angle_deg, lam, cs_A)
    rbin = np.minimum(np.rint(ke / spec.dk).astype(np.int64), n_bins - 1)
    prof, counts = _radial_profile(spec.power, rbin, n_bins, spec.fit_mask)
    mean = 0.5 * (defocus1_A + defocus2_A)
    lo, hi = _calc_phase_windows(np.array([mean]), n_bins, spec.dk, lam, cs_A)
    bg = _window_smooth(prof[None], counts[None], lo, hi)[0]
    # interpolate the background at each pixel's continuous equiphase radius
    kj = np.arange(n_bins) * spec.dk
    resid = spec.power - np.interp(ke, kj, bg)
    sq, _ = _radial_profile(resid**2, rbin, n_bins, spec.fit_mask)
    rms = np.sqrt(_window_smooth(sq[None], counts[None], lo, hi)[0])
    norm = resid / np.maximum(np.interp(ke, kj, rms), 1e-300)
    norm[~spec.fit_mask] = 0.0
    return norm, ke, bg, rms


def _select_pixels(spec: SpectrumData, norm: np.ndarray, kmin: float, kmax: float, mean_defocus_A: float,
                   lam: float, cs_A: float) -> _FitPixels:
    """Pixels in the fit range, equally weighted, data centred.

    The range is kmin..kmax, but starting no lower than where χ = π at the current mean
    defocus: below that the background windows (±π in phase) are cut off at k = 0 and lose
    their symmetry, which leaves a quadrature ripple (a ring shift) in the residual.  (A
    smooth taper of the weights at the ends was tried and made the bias slightly worse.)
    """
    a = math.pi * lam * mean_defocus_A
    b = 0.5 * math.pi * cs_A * lam**3
    k_pi = float(_calc_k_at_phase(math.pi, a, b))
    chi_hi = a * kmax**2 - b * kmax**4
    if math.isfinite(k_pi) and chi_hi - math.pi >= 2 * math.pi:     # keep at least two rings
        kmin = max(kmin, k_pi)
    sel = spec.fit_mask & (spec.k >= kmin) & (spec.k <= kmax)
    k2 = spec.k[sel] ** 2
    data = norm[sel].astype(np.float64)
    data = data - data.mean()
    return _FitPixels(k2=k2, k4=k2 * k2, c2=spec.cos2[sel].astype(np.float64), s2=spec.sin2[sel].astype(np.float64),
                      data=data, wts=np.ones_like(data))


def _to_ctffind(mean: float, ax: float, ay: float) -> tuple[float, float, float]:
    """(defocus1 ≥ defocus2, angle in (−90, 90]) from the mean and the astigmatism vector."""
    half = math.hypot(ax, ay)
    ang = 0.5 * math.degrees(math.atan2(ay, ax)) if half > 0 else 0.0
    if ang <= -90.0:
        ang += 180.0
    return float(mean + half), float(mean - half), float(ang)


def _fit_stage(pix: _FitPixels, start: np.ndarray, params: CtfSearchParams, lam: float, cs_A: float, w: float,
               kmax: float, grid_half_astig: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Optional coarse astigmatism grid, then L-BFGS-B on −(correlation − restraint penalty).

    start: (4,) (mean Å, a_x Å, a_y Å, phase rad).  Returns (best (4,), correlation).
    """
    pi_lam = math.pi * lam
    b = 0.5 * math.pi * cs_A * lam**3
    # one scaled unit ≈ one radian of phase at kmax
    unit_df = 1.0 / (pi_lam * kmax**2)
    scale = np.array([unit_df, unit_df, unit_df, 1.0])
    fit_phase = bool(params.find_phase_shift)

    restraint = -1.0 if params.astig_restraint_A is None else float(params.astig_restraint_A)
    args = (scale, pix.k2, pix.k4, pix.c2, pix.s2, pix.data, pix.wts, pi_lam, b, w, fit_phase, restraint)
    best = np.asarray(start, dtype=np.float64) / scale
    if grid_half_astig is not None:
        candidates = [best.copy()]
        for h in grid_half_astig:
            for t in np.deg2rad(np.arange(0.0, 180.0, 22.5)):
                c = best.copy()
                c[1] = h * math.cos(2 * t) / scale[1]
                c[2] = h * math.sin(2 * t) / scale[2]
                candidates.append(c)
        vals = [_objective(c, *args)[0] for c in candidates]
        best = candidates[int(np.argmin(vals))]
    q = _minimise_bfgs(best, *args)
    r, _ = _score_and_gradient(q, scale, pix.k2, pix.k4, pix.c2, pix.s2, pix.data, pix.wts, pi_lam, b, w, fit_phase)
    return q * scale, float(r)


def calc_cropped_spectrum(spec: SpectrumData, k_limit: float) -> SpectrumData:
    """The part of an rfft-layout spectrum with |ky|, kx ≤ k_limit (same dk, smaller arrays).

    The fit only needs frequencies up to 1/resmax and its background windows; cropping makes
    every per-pixel pass proportionally cheaper.
    """
    r = int(min(spec.box // 2, math.ceil(k_limit / spec.dk) + 1))
    if r >= spec.box // 2:
        return spec
    rows = np.r_[0:r + 1, spec.box - r:spec.box]
    cols = slice(0, r + 1)

    def crop(a):
        return a[rows, cols]

    return SpectrumData(power=crop(spec.power), k=crop(spec.k), cos2=crop(spec.cos2), sin2=crop(spec.sin2),
                        fit_mask=crop(spec.fit_mask), dk=spec.dk, box=spec.box)


def _calc_crop_limit(k_fit: float, defocus_A: float, lam: float, cs_A: float, dk: float) -> float:
    """Frequency up to which the background windows around k_fit reach (+SMOOTH_PASSES·π/2, + 8 bins)."""
    a = math.pi * lam * defocus_A
    b = 0.5 * math.pi * cs_A * lam**3
    k_edge = float(_calc_k_at_phase(a * k_fit**2 - b * k_fit**4 + SMOOTH_PASSES * math.pi / 2, a, b))
    return (k_edge if math.isfinite(k_edge) else 2 * k_fit) + 8 * dk


def calc_refinement(spec: SpectrumData, params: CtfSearchParams, start: SearchStart,
                    spec_fine: SpectrumData | None = None) -> Refined:
    """2D refinement of defocus 1, defocus 2, angle (and phase shift) from the 1D start.

    Stage 1 (to STAGE1_RESMAX_A or resmax if lower, on spec): coarse astigmatism grid + local
    fit with a rotational-average background.  Stage 2 (to resmax, on spec_fine when given):
    background re-estimated along the stage-1 equiphase ellipses, local fit; repeated once
    with the updated background.  Returns CTFFIND's form; cross_correlation is the final one.

    Why spec_fine (the spectrum of 2·box tiles, see calc_power_spectra): a tile-averaged
    spectrum is the true one blurred by a kernel as wide as one frequency bin, and where the
    signal envelope slopes that blur shifts the apparent rings (the ring at k pairs with image
    detail λ·Δf·k away: at 3.5 µm, 0.8 Å/px, 200 kV the mean defocus came out 16 Å low from
    512 tiles).  The shift scales with the bin width, so finer sampling removes most of it.
    """
    lam, cs_A, w = _optics(params)
    kmin = 1.0 / params.resmin_A
    kmax = 1.0 / params.resmax_A
    k1 = min(kmax, 1.0 / STAGE1_RESMAX_A) if 1.0 / STAGE1_RESMAX_A > kmin * 1.5 else kmax
    max_astig = params.astig_restraint_A if params.astig_restraint_A is not None else DEFAULT_ASTIG_SEARCH_A
    grid = np.array([0.125, 0.25, 0.5, 0.75, 1.0]) * max_astig / 2.0
    q = np.array([start.defocus_A, 0.0, 0.0, start.phase_shift_rad])
    coarse = calc_cropped_spectrum(spec, _calc_crop_limit(k1, params.dfmin_A, lam, cs_A, spec.dk))
    norm, _, _, _ = calc_normalised_spectrum(coarse, q[0], q[0], 0.0, lam, cs_A)
    q, r = _fit_stage(_select_pixels(coarse, norm, kmin, k1, q[0], lam, cs_A), q, params, lam, cs_A, w, k1, grid)
    fine_full = spec if spec_fine is None else spec_fine
    fine = calc_cropped_spectrum(fine_full, _calc_crop_limit(kmax, params.dfmin_A, lam, cs_A, fine_full.dk))
    for _ in range(2):
        d1, d2, ang = _to_ctffind(q[0], q[1], q[2])
        norm, _, _, _ = calc_normalised_spectrum(fine, d1, d2, ang, lam, cs_A)
        pix = _select_pixels(fine, norm, kmin, kmax, q[0], lam, cs_A)
        q, r = _fit_stage(pix, q, params, lam, cs_A, w, kmax, None)
    d1, d2, ang = _to_ctffind(q[0], q[1], q[2])
    # CTF² has period π in the phase shift: report it in [0, π)
    phase = float(q[3]) % math.pi if params.find_phase_shift else 0.0
    return Refined(defocus1_A=d1, defocus2_A=d2, astig_angle_deg=ang, phase_shift_rad=phase, cross_correlation=r,
                   n_fit_pixels=int(pix.data.size))
