"""Curation: thresholds from a [curation] table, and the verdict on one exposure's metrics.

Pure: no I/O (reading the config file is appion.quality.curation).
"""
from __future__ import annotations

import dataclasses
import math

from appion.base.steps import StepError
from appion.quality.records import THRESHOLD_KEYS, Metrics, Thresholds


class CurationError(StepError):
    """A [curation] table a person must fix (unknown key, value of the wrong type): the loop says so in one
    line (a StepError) when it starts."""


def calc_thresholds_from_table(table, base: Thresholds | None = None) -> Thresholds:
    """base with the keys of a [curation] table applied.

    table: {name: value} with names of THRESHOLD_KEYS (`-` or `_`); a number sets a limit, `false` removes
    it (reject_crystalline_ice: true/false).  Raises CurationError for an unknown key or a bad value.
    """
    base = base or Thresholds()
    if not isinstance(table, dict):
        raise CurationError(f"[curation] must be a table, not {type(table).__name__}")
    changes = {}
    for raw, value in table.items():
        key = str(raw).replace("-", "_")
        if key not in THRESHOLD_KEYS:
            raise CurationError(f"unknown key {raw!r} in [curation] (known: {', '.join(THRESHOLD_KEYS)})")
        name = THRESHOLD_KEYS[key]
        if name == "reject_crystalline_ice":
            if not isinstance(value, bool):
                raise CurationError(f"[curation] {raw} must be true or false, not {value!r}")
            changes[name] = value
        elif value is False:
            changes[name] = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            changes[name] = float(value)
        else:
            raise CurationError(f"[curation] {raw} must be a positive number (or false for no limit), not {value!r}")
    return dataclasses.replace(base, **changes)


def calc_thresholds_text(t: Thresholds) -> str:
    """One line naming the limits in force, e.g. 'CTF ≤ 6 Å, drift ≤ 80 Å' ('none' when there are none)."""
    parts = []
    for label, value, unit in (("CTF fit", t.max_ctf_resolution_A, " Å"), ("drift", t.max_total_drift_A, " Å"),
                               ("astigmatism", t.max_astigmatism_A, " Å"), ("ice", t.max_ice_thickness, ""),
                               ("tilt", t.max_tilt_deg, "°")):
        if value is not None:
            parts.append(f"{label} ≤ {value:g}{unit}")
    if t.reject_crystalline_ice:
        parts.append("no crystalline ice")
    return ", ".join(parts) or "none"


def calc_rejection(m: Metrics, t: Thresholds) -> str | None:
    """The reason an exposure is rejected (every failed limit, '; '-joined), or None when it passes.

    An unusable image is always rejected.  A metric that could not be measured (None) fails no limit:
    the image problem or the CTF fit resolution says what is wrong then.
    """
    reasons = []
    if m.image_problem:
        reasons.append(f"image: {m.image_problem}")
    checks = (
        ("CTF fit resolution", m.ctf_resolution_A, t.max_ctf_resolution_A, "Å", "{:.1f}"),
        ("total drift", m.total_drift_A, t.max_total_drift_A, "Å", "{:.1f}"),
        ("astigmatism", m.astigmatism_A, t.max_astigmatism_A, "Å", "{:.0f}"),
        ("relative ice thickness", m.ice_thickness, t.max_ice_thickness, "", "{:.3f}"),
        ("tilt", m.tilt_deg, t.max_tilt_deg, "°", "{:.1f}"),
    )
    for label, value, limit, unit, fmt in checks:
        if value is not None and limit is not None and value > limit:
            space = " " if unit == "Å" else ""
            reasons.append(f"{label} {fmt.format(value)}{space}{unit} > {limit:g}{space}{unit}")
    if t.reject_crystalline_ice and m.crystalline_ice:
        reasons.append("crystalline ice")
    return "; ".join(reasons) or None
