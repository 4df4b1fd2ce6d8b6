"""Relative ice thickness and crystalline ice from a micrograph's power spectrum.

Relative ice thickness (as cryoSPARC Live reports it): vitreous ice scatters into a diffuse ring around
3.7 Å, stronger the thicker the ice, so the power in the 3.9–3.5 Å band divided by the power the
neighbouring frequencies predict there is a thickness measure without units (1 = no ring, thicker ice
gives more).  Here the prediction is a straight line in log(power) against k through the bands just below
(4.5–3.9 Å) and above (3.5–3.2 Å), so the slope of the spectrum does not count as ice.  It needs the image
to reach 3.2 Å (pixel ≤ 1.6 Å), else None.

Crystalline ice (hexagonal or cubic) diffracts sharply at 3.90, 3.67 and 3.44 Å: either as rings (many
small crystals) or as spots (a few larger ones).  Rings: a radial-profile bin at one of those spacings
stands out from a local quadratic through its neighbourhood (Savitzky-Golay, ±CRYSTAL_RING_WINDOW_BINS
bins: it follows the broad vitreous ring, not a one- or two-bin peak) by CRYSTAL_RING_Z robust standard
deviations and CRYSTAL_RING_EXCESS of that background.  Spots: a spectrum pixel at those spacings exceeds
its ring's mean by more than noise allows (the mean of n tile periodograms is Gamma(n, 1/n) distributed in
units of its mean; threshold at a false-alarm rate of CRYSTAL_SPOT_FALSE_RATE per image, and at least
CRYSTAL_SPOT_MIN_RATIO).

Pure numerics: numpy/scipy, no I/O.  Units: Å, k in 1/Å.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal
import scipy.stats

from appion.ctfestimation.calc.internal import calc_power_spectrum

ICE_BAND_A = (3.9, 3.5)
LOW_NEIGHBOUR_A = (4.5, 3.9)
HIGH_NEIGHBOUR_A = (3.5, 3.2)
CRYSTAL_LINES_A = (3.90, 3.67, 3.44)
CRYSTAL_LINE_TOLERANCE = 0.012  # relative: a peak within ±1.2 % of a line's spacing counts
CRYSTAL_RING_Z = 8.0
CRYSTAL_RING_EXCESS = 0.03
CRYSTAL_RING_WINDOW_BINS = 5  # half-width of the local quadratic (Savitzky-Golay) that is a bin's neighbourhood
CRYSTAL_SPOT_FALSE_RATE = 1e-3
CRYSTAL_SPOT_MIN_RATIO = 4.0
ICE_BOX_PX = 512


@dataclass(frozen=True)
class IceMeasure:
    """relative_thickness: band power ÷ neighbour prediction (None: the image does not reach 3.2 Å).
    crystalline: sharp rings or spots at the crystalline-ice spacings; evidence says which (or "")."""

    relative_thickness: float | None
    crystalline: bool
    evidence: str = ""


def calc_radial_profile(power: np.ndarray, pixel_size_A: float):
    """Mean power per radius bin of an rfft-layout spectrum (box, box//2+1), axes left out.

    Returns (k (n,) 1/Å at the bin centres, profile (n,), counts (n,)) with n = box//2 + 1.
    """
    box = power.shape[0]
    ky = np.fft.fftfreq(box)[:, None] * box
    kx = np.arange(power.shape[1])[None, :]
    radius = np.hypot(ky, kx)
    rbin = np.rint(radius).astype(np.int64)
    mask = (rbin <= box // 2) & (kx > 0) & (ky != 0)
    n = box // 2 + 1
    counts = np.bincount(rbin[mask], minlength=n)[:n].astype(np.float64)
    sums = np.bincount(rbin[mask], weights=power[mask], minlength=n)[:n]
    k = np.arange(n) / (box * pixel_size_A)
    return k, sums / np.maximum(counts, 1.0), counts


def _band(k: np.ndarray, low_res_A: float, high_res_A: float) -> np.ndarray:
    return (k >= 1.0 / low_res_A) & (k <= 1.0 / high_res_A)


def calc_relative_ice_thickness(k: np.ndarray, profile: np.ndarray, counts: np.ndarray) -> float | None:
    """Power in ICE_BAND_A ÷ the log-linear fit through LOW/HIGH_NEIGHBOUR_A evaluated there (see module doc).

    k, profile, counts: (n,) from calc_radial_profile.  None when the spectrum does not reach
    HIGH_NEIGHBOUR_A's high-resolution end or a band has no pixels.
    """
    if k[-1] < 1.0 / HIGH_NEIGHBOUR_A[1]:
        return None
    band = _band(k, *ICE_BAND_A) & (counts > 0) & (profile > 0)
    side = (_band(k, *LOW_NEIGHBOUR_A) | _band(k, *HIGH_NEIGHBOUR_A)) & ~band & (counts > 0) & (profile > 0)
    if band.sum() < 2 or side.sum() < 4:
        return None
    slope, offset = np.polyfit(k[side], np.log(profile[side]), 1, w=np.sqrt(counts[side]))
    predicted = np.exp(offset + slope * k[band])
    return float(np.sum(profile[band] * counts[band]) / np.sum(predicted * counts[band]))


def calc_crystalline_ring(k: np.ndarray, profile: np.ndarray, counts: np.ndarray) -> tuple[bool, str]:
    """(sharp ring at a crystalline-ice spacing, evidence text) from the radial profile (see module doc)."""
    near = _band(k, 4.6, 3.0) & (counts > 0) & (profile > 0)
    if near.sum() < 4 * CRYSTAL_RING_WINDOW_BINS + 2:
        return False, ""
    idx = np.flatnonzero(near)
    values = profile[idx]
    background = scipy.signal.savgol_filter(values, 2 * CRYSTAL_RING_WINDOW_BINS + 1, 2, mode="interp")
    excess = values / background - 1.0
    sigma = 1.4826 * float(np.median(np.abs(excess - np.median(excess))))
    best = (0.0, 0.0, 0.0)
    for line in CRYSTAL_LINES_A:
        at = np.abs(1.0 / np.maximum(k[idx], 1e-12) - line) <= CRYSTAL_LINE_TOLERANCE * line
        if not at.any():
            continue
        j = int(np.argmax(np.where(at, excess, -np.inf)))
        z = excess[j] / max(sigma, 1e-12)
        if z > best[0]:
            best = (z, float(excess[j]), line)
    z, rel, line = best
    if z >= CRYSTAL_RING_Z and rel >= CRYSTAL_RING_EXCESS:
        return True, f"sharp ring at {line:.2f} Å ({rel * 100:.0f} % over its neighbours, {z:.0f} σ)"
    return False, ""


def calc_crystalline_spots(power: np.ndarray, pixel_size_A: float, n_averaged: int) -> tuple[bool, str]:
    """(bright spot at a crystalline-ice spacing, evidence) in an rfft-layout spectrum averaged over
    n_averaged independent tiles (see module doc)."""
    box = power.shape[0]
    k_pix = np.hypot(np.fft.fftfreq(box)[:, None] * box, np.arange(power.shape[1])[None, :])
    rbin = np.rint(k_pix).astype(np.int64)
    k = k_pix / (box * pixel_size_A)
    k_prof, profile, counts = calc_radial_profile(power, pixel_size_A)
    ring_mean = profile[np.minimum(rbin, profile.size - 1)]
    usable = (np.arange(power.shape[1])[None, :] > 0) & (np.fft.fftfreq(box)[:, None] != 0) & (ring_mean > 0)
    at_line = np.zeros(power.shape, dtype=bool)
    for line in CRYSTAL_LINES_A:
        at_line |= np.abs(1.0 / np.maximum(k, 1e-12) - line) <= CRYSTAL_LINE_TOLERANCE * line
    sel = at_line & usable
    m = int(sel.sum())
    if m == 0:
        return False, ""
    ratio = power[sel] / ring_mean[sel]
    n = max(1, int(n_averaged))
    threshold = max(float(scipy.stats.gamma.isf(CRYSTAL_SPOT_FALSE_RATE / m, n, scale=1.0 / n)),
                    CRYSTAL_SPOT_MIN_RATIO)
    j = int(np.argmax(ratio))
    if ratio[j] > threshold:
        spacing = 1.0 / k[sel][j]
        return True, f"spot at {spacing:.2f} Å ({ratio[j]:.0f}× its ring's mean power)"
    return False, ""


def calc_ice(image: np.ndarray, pixel_size_A: float, box: int = ICE_BOX_PX, workers: int = 1) -> IceMeasure:
    """Relative ice thickness and crystalline-ice flag of one micrograph.

    image: (y, x) real, finite, at least 128 px each way; workers: FFT threads.  Tiles of `box` (or the
    image's shorter side, even) without overlap, so the averaged tiles are independent for the spot test.
    """
    b = min(box, min(image.shape) // 2 * 2)
    if b < 128:
        raise ValueError(f"image ({image.shape[1]}×{image.shape[0]} px) too small for the ice measures")
    power = calc_power_spectrum(image, b, 0.0, workers)
    n_tiles = (image.shape[0] // b) * (image.shape[1] // b)
    k, profile, counts = calc_radial_profile(power, pixel_size_A)
    thickness = calc_relative_ice_thickness(k, profile, counts)
    ring, ring_text = calc_crystalline_ring(k, profile, counts)
    spot, spot_text = calc_crystalline_spots(power, pixel_size_A, max(1, n_tiles))
    evidence = "; ".join(t for t in (ring_text, spot_text) if t)
    return IceMeasure(thickness, ring or spot, evidence)
