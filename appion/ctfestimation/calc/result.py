"""The one record every CTF engine and wrapper returns, in CTFFIND's conventions."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CtfResult:
    """A CTF fit of one micrograph.

    Defocus in Å, positive = underfocus; defocus1_A is the defocus along azimuth
    astig_angle_deg (degrees counter-clockwise from the image x axis); no ordering between
    defocus1 and defocus2 is implied here (the classic database mapping sorts them).
    fit_resolution_A is CTFFIND's "spacing up to which CTF rings were fit successfully"
    (may be float('inf')).  The Appion confidences are None when an engine does not compute them.
    """

    defocus1_A: float
    defocus2_A: float
    astig_angle_deg: float
    phase_shift_rad: float
    cross_correlation: float
    fit_resolution_A: float
    confidence_30_10: float | None = None
    confidence_5_peak: float | None = None
    resolution_80_percent_A: float | None = None
    resolution_50_percent_A: float | None = None

    @property
    def mean_defocus_A(self) -> float:
        return 0.5 * (self.defocus1_A + self.defocus2_A)
