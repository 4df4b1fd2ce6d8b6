"""CTF estimation output files: CTFFIND-format text files and the diagnostic PNG.

Worker side: no Django here (the database rows are appion.ctfestimation.store).

Every file is written to a temporary name in the same directory and moved into place with
os.replace, so a reader never sees a partial file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from appion.base.io.files import write_atomic, write_text_atomic
from appion.ctfestimation.calc.classic import AvrotData, CtffindHeader, format_avrot, format_ctffind_results
from appion.ctfestimation.calc.internal import CtfFit
from appion.ctfestimation.calc.result import CtfResult


def write_ctffind_results(path, results: list[CtfResult], header: CtffindHeader) -> Path:
    """CTFFIND 4.1 results text (comment header, 7 columns per micrograph)."""
    text = format_ctffind_results(results, header)
    return write_text_atomic(path, text)


def write_avrot(path, fit: CtfFit, header: CtffindHeader) -> Path:
    """CTFFIND-style ``_avrot.txt``: 6 lines (frequency, two rotational averages, fit, score, noise)."""
    avrot = AvrotData(spatial_frequency_per_A=fit.frequencies_per_A, rotational_average_no_astig=fit.rotavg_no_astig,
                      rotational_average=fit.rotavg, ctf_fit=fit.ctf_fit, cross_correlation=fit.ring_score,
                      noise_2sigma=fit.ring_score_noise)
    text = format_avrot([avrot], header)
    return write_text_atomic(path, text)


def write_diagnostic_png(path, fit: CtfFit, resmax_A: float, title: str = "") -> Path:
    """Left: the 2D spectrum (background subtracted) with the fitted CTF² in its right half.
    Right: the astigmatism-corrected 1D average, the fitted CTF², the per-frequency fit score
    and the fit-resolution marker.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    r = fit.result
    box = fit.spectrum_2d.shape[0]
    dk = 1.0 / (box * fit.spectrum_pixel_size_A)
    nyquist = 0.5 / fit.spectrum_pixel_size_A
    k_show = min(nyquist, 1.3 / resmax_A)
    half = max(8, int(k_show / dk))
    c = box // 2
    data = fit.spectrum_2d[c - half:c + half, c - half:c + half].astype(np.float64)
    model = fit.model_2d[c - half:c + half, c - half:c + half].astype(np.float64)
    lo, hi = np.percentile(data, [2, 98])
    shown = np.clip(data, lo, hi)
    shown[:, half:] = lo + (hi - lo) * model[:, half:]
    fig = Figure(figsize=(11, 4.8), dpi=90)
    ax0 = fig.add_subplot(1, 2, 1)
    extent = (-half * dk, half * dk, -half * dk, half * dk)
    ax0.imshow(shown, cmap="gray", origin="lower", extent=extent, interpolation="nearest")
    ax0.set_xlabel("spatial frequency kx (1/Å)")
    ax0.set_ylabel("spatial frequency ky (1/Å)")
    ax0.set_title("spectrum | fitted CTF²", fontsize=9)
    ax1 = fig.add_subplot(1, 2, 2)
    k = fit.frequencies_per_A
    sel = (k > 0) & (k <= nyquist)
    ax1.plot(k[sel], fit.rotavg[sel], lw=0.8, color="tab:blue", label="spectrum (astigmatism-corrected average)")
    ax1.plot(k[sel], fit.ctf_fit[sel], lw=0.8, color="tab:orange", label="fitted CTF²")
    ax1.plot(k[sel], fit.ring_score[sel], lw=0.8, color="tab:green", label="fit score")
    ax1.plot(k[sel], fit.ring_score_noise[sel], lw=0.6, ls=":", color="tab:green", label="score noise (2σ)")
    if np.isfinite(r.fit_resolution_A) and r.fit_resolution_A > 0:
        ax1.axvline(1.0 / r.fit_resolution_A, color="tab:red", lw=1,
                    label=f"fit resolution {r.fit_resolution_A:.2f} Å")
    ax1.set_xlim(0, nyquist)
    ax1.set_ylim(-1.5, 2.5)
    ax1.set_xlabel("spatial frequency (1/Å)")
    ax1.set_ylabel("normalised amplitude / correlation")
    ax1.legend(fontsize=7, loc="upper right")
    ax1.set_title(f"df1 {r.defocus1_A:.0f} Å, df2 {r.defocus2_A:.0f} Å, angle {r.astig_angle_deg:.1f}°, "
                  f"phase {r.phase_shift_rad:.2f} rad, cc {r.cross_correlation:.3f}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
