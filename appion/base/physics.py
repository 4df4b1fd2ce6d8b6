"""Electron-optics conventions shared by the simulator and both engines.

Everything here follows CTFFIND's conventions (docs/conventions.md):
defocus in Å, positive = underfocus; astigmatism azimuth in degrees counter-clockwise
from the image x axis (numpy axis 1 = x, axis 0 = y, as the MRC array is read);
spatial frequency k in 1/Å.  Keeping one copy of these formulas is what makes the
simulator's truth and the estimators' answers comparable.
"""
from __future__ import annotations

import math

import numpy as np


def calc_wavelength_A(voltage_V: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in volts."""
    return 12.2643 / np.sqrt(voltage_V * (1.0 + 0.978466e-6 * voltage_V))


def calc_amplitude_phase(amplitude_contrast: float) -> float:
    """Phase term w = atan(A / sqrt(1 - A²)) equivalent to an amplitude-contrast fraction A."""
    return float(np.arctan(amplitude_contrast / np.sqrt(1.0 - amplitude_contrast**2)))


def calc_frequency_grid(shape: tuple[int, int], pixel_size_A: float, rfft: bool = False):
    """Spatial-frequency magnitude k (1/Å) and azimuth θ (radians, CCW from x) of an FFT grid.

    shape: (ny, nx).  Returns (k, theta) with shape (ny, nx) or (ny, nx//2+1) when rfft,
    in numpy's unshifted FFT order.
    """
    ny, nx = shape
    fy = np.fft.fftfreq(ny, d=pixel_size_A)
    fx = np.fft.rfftfreq(nx, d=pixel_size_A) if rfft else np.fft.fftfreq(nx, d=pixel_size_A)
    ky, kx = np.meshgrid(fy, fx, indexing="ij")
    return np.hypot(kx, ky), np.arctan2(ky, kx)


def calc_defocus_at_azimuth_A(defocus1_A: float, defocus2_A: float, astig_angle_deg: float, theta_rad):
    """Δf(θ) = ½[Δf1 + Δf2 + (Δf1 − Δf2)·cos 2(θ − θ_ast)]."""
    ast = np.deg2rad(astig_angle_deg)
    return 0.5 * (defocus1_A + defocus2_A + (defocus1_A - defocus2_A) * np.cos(2.0 * (theta_rad - ast)))


def calc_chi(k, theta, defocus1_A, defocus2_A, astig_angle_deg, voltage_V, cs_mm, phase_shift_rad=0.0):
    """Phase aberration χ(k, θ) = π λ k² Δf(θ) − ½ π Cs λ³ k⁴ + φ (radians)."""
    lam = calc_wavelength_A(voltage_V)
    cs_A = cs_mm * 1e7
    df = calc_defocus_at_azimuth_A(defocus1_A, defocus2_A, astig_angle_deg, theta)
    k2 = k * k
    return np.pi * lam * k2 * df - 0.5 * np.pi * cs_A * lam**3 * k2 * k2 + phase_shift_rad


def calc_ctf(k, theta, defocus1_A, defocus2_A, astig_angle_deg, voltage_V, cs_mm,
             amplitude_contrast=0.07, phase_shift_rad=0.0):
    """CTF(k, θ) = −sin(χ + w); same shape as k."""
    chi = calc_chi(k, theta, defocus1_A, defocus2_A, astig_angle_deg, voltage_V, cs_mm, phase_shift_rad)
    return -np.sin(chi + calc_amplitude_phase(amplitude_contrast))


def calc_critical_exposure(k):
    """Grant & Grigorieff (2015) critical exposure N_e(k) = 0.245 k^−1.665 + 2.81 (e/Å², k in 1/Å).

    k = 0 gives +inf (the DC term never fades).
    """
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 0.245 * np.power(k, -1.665) + 2.81


def calc_exposure_weights(k, dose_per_frame_e_per_A2: float, n_frames: int, pre_exposure_e_per_A2: float = 0.0):
    """Per-frame exposure weights exp(−N/(2 N_e(k))), N = accumulated exposure at each frame's middle.

    k: any shape.  Returns (n_frames, *k.shape) float32, normalised per frequency so
    that the sum of squares over frames is 1.
    """
    ne = calc_critical_exposure(k)
    mid = pre_exposure_e_per_A2 + (np.arange(n_frames) + 0.5) * dose_per_frame_e_per_A2
    w = np.exp(-mid.reshape((-1,) + (1,) * np.ndim(k)) / (2.0 * ne))
    w /= np.sqrt(np.sum(w * w, axis=0, keepdims=True))
    return w.astype(np.float32)


def calc_oriented_gain(gain, rotate_quarter_turns: int, flip: int):
    """Orient a gain reference like the frames: MotionCor2's -RotGain then -FlipGain.

    gain: (y, x).  rotate_quarter_turns: 0-3, counter-clockwise (np.rot90).
    flip: 0 none, 1 upside down (flip rows), 2 left-right (flip columns).
    """
    out = np.rot90(gain, k=int(rotate_quarter_turns) % 4)
    if flip == 1:
        out = out[::-1, :]
    elif flip == 2:
        out = out[:, ::-1]
    elif flip != 0:
        raise ValueError(f"gain flip must be 0, 1 or 2, not {flip}")
    return np.ascontiguousarray(out)


def calc_unoriented_gain(oriented, rotate_quarter_turns: int, flip: int):
    """Inverse of calc_oriented_gain: the gain as stored on disk given how it must be oriented."""
    out = oriented
    if flip == 1:
        out = out[::-1, :]
    elif flip == 2:
        out = out[:, ::-1]
    return np.ascontiguousarray(np.rot90(out, k=-(int(rotate_quarter_turns) % 4)))


def calc_wrapped_angle_deg(angle_deg: float) -> float:
    """An axis direction in (−90, 90] (an astigmatism axis is defined modulo 180°)."""
    wrapped = math.fmod(angle_deg, 180.0)
    if wrapped > 90.0:
        wrapped -= 180.0
    elif wrapped <= -90.0:
        wrapped += 180.0
    return wrapped


def calc_major_defocus_axis(defocus1_m: float, defocus2_m: float, angle_deg: float) -> tuple[float, float, float]:
    """(larger defocus Å, smaller defocus Å, azimuth of the larger one in (−90, 90] degrees) from a classic
    ApCtfData triple (defocus1 along angle_deg; positive = underfocus): CTFFIND's defocus 1/2/angle and
    RELION's DefocusU/V/Angle.  Classic rows store the smaller defocus as defocus1, so the larger one lies 90°
    from the stored angle; a row already ordered the other way is kept (equal defoci: defocus2's axis)."""
    d1_A, d2_A = defocus1_m * 1e10, defocus2_m * 1e10
    if abs(d2_A) >= abs(d1_A):
        return d2_A, d1_A, calc_wrapped_angle_deg(angle_deg + 90.0)
    return d1_A, d2_A, calc_wrapped_angle_deg(angle_deg)
