"""1D search over mean defocus (and phase shift) on the rotational average of the spectrum."""
from __future__ import annotations

import numpy as np

from appion.ctfestimation.calc.internal.common import SMOOTH_PASSES, CtfSearchParams, SearchStart, SpectrumData
from appion.ctfestimation.calc.internal.phase import (_calc_k_at_phase, _calc_phase_windows, _optics,
                                                      _radial_profile, _window_smooth)


# ----------------------------------------------------------------------------- 1D search

def calc_defocus_search(spec: SpectrumData, params: CtfSearchParams) -> SearchStart:
    """Best mean defocus (and phase shift) for the rotational average in [1/resmin, 1/resmax].

    Each candidate defocus gets its own background (the profile smoothed over its CTF²
    period, see _window_smooth) and normalisation (smoothed RMS of the residual); the score is
    the count-weighted correlation of that residual with the model's CTF², detrended the same way.  Candidates
    come from dfmin..dfmax in dfstep (and phase_min..phase_max in phase_step), then a
    finer local search (step/10) around the best.
    """
    lam, cs_A, w = _optics(params)
    # bins up to 1/resmax plus room for the background windows (SMOOTH_PASSES × ±π/2 in phase)
    n_all = int(np.ceil(params.box / 2 * np.sqrt(2))) + 2
    a_min = np.pi * lam * params.dfmin_A
    k_edge = _calc_k_at_phase(a_min / params.resmax_A**2 + SMOOTH_PASSES * np.pi, a_min, 0.0)
    n_bins = int(min(n_all, np.ceil(float(k_edge) / spec.dk) + 8))
    radius = np.minimum(np.rint(spec.k / spec.dk).astype(np.int64), n_all - 1)
    prof, counts = _radial_profile(spec.power, radius, n_all, spec.fit_mask)
    prof, counts = prof[:n_bins], counts[:n_bins]
    kj = np.arange(n_bins) * spec.dk
    sel = (kj >= 1.0 / params.resmin_A) & (kj <= 1.0 / params.resmax_A) & (counts > 0)
    phases = (np.arange(params.phase_min_rad, params.phase_max_rad + 1e-9, params.phase_step_rad)
              if params.find_phase_shift else np.array([0.0]))

    def score(defoci, phis):
        # sin²(χ+φ+w) = ½ − ½cos2φ·cos(2χ+2w) + ½sin2φ·sin(2χ+2w): the detrended model is a
        # linear combination of two detrended basis rows, so every φ costs a few scalars.
        lo, hi = _calc_phase_windows(defoci, n_bins, spec.dk, lam, cs_A)
        wts = np.broadcast_to(counts, lo.shape)
        bg = _window_smooth(np.broadcast_to(prof, lo.shape), wts, lo, hi)
        resid = prof[None, :] - bg
        rms = np.sqrt(_window_smooth(resid**2, wts, lo, hi))
        ws = counts[sel]
        sw = ws.sum()

        def centred(x):
            x = x[:, sel]
            return x - ((x * ws).sum(axis=1) / sw)[:, None]

        data = centred(resid / np.maximum(rms, 1e-300))                                  # (m, s)
        chi = (np.pi * lam * np.asarray(defoci)[:, None] * kj[None, :] ** 2
               - 0.5 * np.pi * cs_A * lam**3 * kj[None, :] ** 4) + w
        cos_b = np.cos(2 * chi)
        sin_b = np.sin(2 * chi)
        cos_b = centred(cos_b - _window_smooth(cos_b, wts, lo, hi))
        sin_b = centred(sin_b - _window_smooth(sin_b, wts, lo, hi))
        dd = (data * data * ws).sum(axis=1)
        dc = (data * cos_b * ws).sum(axis=1)
        ds = (data * sin_b * ws).sum(axis=1)
        cc = (cos_b * cos_b * ws).sum(axis=1)
        cs = (cos_b * sin_b * ws).sum(axis=1)
        ss = (sin_b * sin_b * ws).sum(axis=1)
        alpha = -np.cos(2 * np.asarray(phis))[None, :]
        beta = np.sin(2 * np.asarray(phis))[None, :]
        num = alpha * dc[:, None] + beta * ds[:, None]
        model_norm2 = alpha**2 * cc[:, None] + 2 * alpha * beta * cs[:, None] + beta**2 * ss[:, None]
        den = np.sqrt(np.maximum(model_norm2, 1e-300) * dd[:, None])
        r = num / np.maximum(den, 1e-300)                                                # (m, n_phi)
        best = np.argmax(r, axis=1)
        return r[np.arange(len(defoci)), best], np.asarray(phis)[best]

    grid = np.arange(params.dfmin_A, params.dfmax_A + 0.5 * params.dfstep_A, params.dfstep_A)
    grid_score, grid_phi = score(grid, phases)
    i = int(np.argmax(grid_score))
    fine = grid[i] + np.arange(-10, 11) * params.dfstep_A / 10.0
    fine = fine[(fine > 0)]
    fine_phases = (grid_phi[i] + np.arange(-5, 6) * params.phase_step_rad / 5.0
                   if params.find_phase_shift else phases)
    fine_score, fine_phi = score(fine, fine_phases)
    j = int(np.argmax(fine_score))
    return SearchStart(defocus_A=float(fine[j]), phase_shift_rad=float(fine_phi[j]), score=float(fine_score[j]),
                       defocus_grid_A=grid, score_grid=grid_score)
