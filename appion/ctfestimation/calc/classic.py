"""Classic file formats and the classic Appion database mapping of a CTF fit (pure, no I/O).

Three things downstream tools and the classic Appion web viewer depend on:

* CTFFIND's results text (``<diag>.txt``, classic ``<short>-pow.txt``): ``#`` comment lines,
  then one line per micrograph of 7 columns (CTFFIND 4.1) or 10 columns (CTFFIND 5 adds tilt
  axis, tilt angle and sample thickness).
* CTFFIND's rotational-average text (``<diag>_avrot.txt``): the same header style, then
  6 lines per micrograph.
* The ApCtfData row classic Appion writes for a fit (meters, |defocus1| ≤ |defocus2|, angle
  in (−90, 90], ``inf`` resolution stored as 100000).

The header lines below follow what CTFFIND 4.1.14 and 5.0.2 write (checked against the
format strings in cisTEM's ``src/programs/ctffind/ctffind.cpp`` and against real output
files: the fixture in /work/shared/fixtures/ctffind and published 4.1.14 outputs).
Note CTFFIND's own quirk, kept on purpose: the defocus search limits are in Å but the
header labels them "um".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from appion.base.physics import calc_wrapped_angle_deg
from appion.ctfestimation.calc.result import CtfResult

RESULTS_COLUMNS_LINE_41 = (
    "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
    "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; "
    "#7 - spacing (in Angstroms) up to which CTF rings were fit successfully"
)
AVROT_COLUMNS_LINE = (
    "# 6 lines per micrograph: #1 - spatial frequency (1/Angstroms); "
    "#2 - 1D rotational average of spectrum (assuming no astigmatism); "
    "#3 - 1D rotational average of spectrum; #4 - CTF fit; "
    "#5 - cross-correlation between spectrum and CTF fit; "
    "#6 - 2sigma of expected cross correlation of noise"
)
# Classic Appion stores CTFFIND's "inf" fit resolution as this number (MySQL DOUBLE cannot hold inf).
CLASSIC_INF_RESOLUTION_A = 100000.0
N_AVROT_LINES = 6


class CtffindFormatError(ValueError):
    """A CTFFIND results / avrot text that does not have the expected layout."""


@dataclass(frozen=True)
class CtffindHeader:
    """What CTFFIND writes in the comment header of its results and avrot files.

    Lengths in Å (the defocus limits too, although CTFFIND labels them "um"), kV, mm.
    n_micrographs None means "number of result lines" when formatting.
    """

    version: str
    run_on: str
    input_file: str
    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float
    box_size_px: int
    resmin_A: float
    resmax_A: float
    defocus_min_A: float
    defocus_max_A: float
    n_frames_averaged: int = 1
    n_micrographs: int | None = None


@dataclass(frozen=True)
class AvrotData:
    """One micrograph's block of ``_avrot.txt``: six curves over the same frequency bins.

    All arrays (n_bins,) float64; spatial_frequency_per_A in 1/Å.
    """

    spatial_frequency_per_A: np.ndarray
    rotational_average_no_astig: np.ndarray
    rotational_average: np.ndarray
    ctf_fit: np.ndarray
    cross_correlation: np.ndarray
    noise_2sigma: np.ndarray

    def as_rows(self) -> tuple[np.ndarray, ...]:
        return (self.spatial_frequency_per_A, self.rotational_average_no_astig, self.rotational_average,
                self.ctf_fit, self.cross_correlation, self.noise_2sigma)


def _format_header_lines(header: CtffindHeader, n_micrographs: int, with_frames: bool) -> list[str]:
    box = (f"# Box size: {header.box_size_px:d} pixels ; min. res.: {header.resmin_A:0.1f} Angstroms ; "
           f"max. res.: {header.resmax_A:0.1f} Angstroms ; min. def.: {header.defocus_min_A:0.1f} um; "
           f"max. def. {header.defocus_max_A:0.1f} um")
    if with_frames:
        box += f"; num. frames averaged: {header.n_frames_averaged:d}"
    n = header.n_micrographs if header.n_micrographs is not None else n_micrographs
    return [
        f"# Output from CTFFind version {header.version}, run on {header.run_on}",
        f"# Input file: {header.input_file} ; Number of micrographs: {n:d}",
        f"# Pixel size: {header.pixel_size_A:0.3f} Angstroms ; acceleration voltage: {header.voltage_kV:0.1f} keV ; "
        f"spherical aberration: {header.cs_mm:0.2f} mm ; amplitude contrast: {header.amplitude_contrast:0.2f}",
        box,
    ]


def format_ctffind_results(results: list[CtfResult], header: CtffindHeader) -> str:
    """CTFFIND 4.1's results text: header comments then 7 ``%f`` columns per micrograph."""
    lines = _format_header_lines(header, len(results), with_frames=False)
    lines.append(RESULTS_COLUMNS_LINE_41)
    for number, r in enumerate(results, start=1):
        values = (float(number), r.defocus1_A, r.defocus2_A, r.astig_angle_deg, r.phase_shift_rad,
                  r.cross_correlation, r.fit_resolution_A)
        lines.append(" ".join(f"{v:f}" for v in values))
    return "\n".join(lines) + "\n"


def _data_lines(text: str) -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-empty, non-comment line."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append((lineno, stripped.split()))
    return out


def _to_float(field: str, lineno: int) -> float:
    try:
        return float(field)  # also accepts CTFFIND's "inf" / "nan"
    except ValueError:
        raise CtffindFormatError(f"line {lineno}: {field!r} is not a number") from None


def parse_ctffind_results(text: str) -> list[CtfResult]:
    """CtfResults from a CTFFIND 4.1 (7 columns) or CTFFIND 5 (10 columns) results text.

    CTFFIND 5's extra columns (tilt axis, tilt angle, sample thickness) are not part of
    CtfResult and are dropped.  Raises CtffindFormatError naming the offending line.
    """
    results = []
    for lineno, fields in _data_lines(text):
        if len(fields) not in (7, 10):
            raise CtffindFormatError(
                f"line {lineno} has {len(fields)} columns; expected 7 (CTFFIND 4.1) or 10 (CTFFIND 5)")
        v = [_to_float(f, lineno) for f in fields]
        results.append(CtfResult(defocus1_A=v[1], defocus2_A=v[2], astig_angle_deg=v[3], phase_shift_rad=v[4],
                                 cross_correlation=v[5], fit_resolution_A=v[6]))
    if not results:
        raise CtffindFormatError("no result lines (only comments or empty)")
    return results


_HEADER_PATTERNS = {
    "version_run": re.compile(r"^# Output from CTFFind version (?P<version>\S+), run on (?P<run_on>.*)$"),
    "input": re.compile(r"^# Input file: (?P<input_file>.*) ; Number of micrographs: (?P<n>\d+)\s*$"),
    "optics": re.compile(r"^# Pixel size: (?P<px>\S+) Angstroms ; acceleration voltage: (?P<kv>\S+) keV ; "
                         r"spherical aberration: (?P<cs>\S+) mm ; amplitude contrast: (?P<ac>\S+)\s*$"),
    "box": re.compile(r"^# Box size: (?P<box>\d+) pixels ; min\. res\.: (?P<resmin>\S+) Angstroms ; "
                      r"max\. res\.: (?P<resmax>\S+) Angstroms ; min\. def\.: (?P<dfmin>\S+) um; "
                      r"max\. def\. (?P<dfmax>\S+) um(?:; num\. frames averaged: (?P<frames>\d+))?\s*$"),
}


def parse_ctffind_header(text: str) -> CtffindHeader:
    """The CtffindHeader of a results or avrot text (the first header block if repeated)."""
    found: dict[str, re.Match] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            if found:
                break
            continue
        for key, pattern in _HEADER_PATTERNS.items():
            if key not in found:
                match = pattern.match(line.rstrip())
                if match:
                    found[key] = match
    missing = [k for k in _HEADER_PATTERNS if k not in found]
    if missing:
        raise CtffindFormatError(f"CTFFIND header lines missing or malformed: {', '.join(missing)}")
    vr, inp, opt, box = (found[k] for k in ("version_run", "input", "optics", "box"))
    return CtffindHeader(
        version=vr["version"], run_on=vr["run_on"].strip(), input_file=inp["input_file"],
        pixel_size_A=float(opt["px"]), voltage_kV=float(opt["kv"]), cs_mm=float(opt["cs"]),
        amplitude_contrast=float(opt["ac"]), box_size_px=int(box["box"]), resmin_A=float(box["resmin"]),
        resmax_A=float(box["resmax"]), defocus_min_A=float(box["dfmin"]), defocus_max_A=float(box["dfmax"]),
        n_frames_averaged=int(box["frames"]) if box["frames"] else 1, n_micrographs=int(inp["n"]),
    )


def format_avrot(avrots: list[AvrotData], header: CtffindHeader) -> str:
    """CTFFIND's ``_avrot.txt``: header comments then 6 lines of values per micrograph.

    Numbers are written as CTFFIND's NumericTextFile writes them: ``%f`` for the double
    arrays and ``%14.5f`` for line 2 (a float array), separated by one space.
    """
    lines = _format_header_lines(header, len(avrots), with_frames=True)
    lines.append(AVROT_COLUMNS_LINE)
    for avrot in avrots:
        rows = avrot.as_rows()
        n_bins = rows[0].shape[0]
        for index, row in enumerate(rows):
            if row.shape != (n_bins,):
                raise CtffindFormatError(f"avrot curves must all have shape ({n_bins},), got {row.shape}")
            # CTFFIND keeps line 2 as a float array, written "%14.5f"; the double arrays are "%f".
            spec = "14.5f" if index == 1 else "f"
            lines.append(" ".join(format(float(v), spec) for v in row))
    return "\n".join(lines) + "\n"


def parse_avrot(text: str) -> list[AvrotData]:
    """One AvrotData per micrograph from a ``_avrot.txt`` text (6 equal-length lines each)."""
    data = _data_lines(text)
    if not data or len(data) % N_AVROT_LINES:
        raise CtffindFormatError(f"{len(data)} data lines; expected a non-zero multiple of {N_AVROT_LINES}")
    blocks = []
    for start in range(0, len(data), N_AVROT_LINES):
        block = data[start:start + N_AVROT_LINES]
        n_bins = len(block[0][1])
        rows = []
        for lineno, fields in block:
            if len(fields) != n_bins:
                raise CtffindFormatError(f"line {lineno} has {len(fields)} values; the block's first line has {n_bins}")
            rows.append(np.array([_to_float(f, lineno) for f in fields], dtype=np.float64))
        blocks.append(AvrotData(*rows))
    return blocks


def calc_classic_resolution_A(fit_resolution_A: float) -> float:
    """CTFFIND's fit resolution as classic stores it: inf (no good fit) becomes 100000 Å."""
    return fit_resolution_A if math.isfinite(fit_resolution_A) else CLASSIC_INF_RESOLUTION_A


def calc_apctfdata_fields(result: CtfResult, *, cs_mm: float, amplitude_contrast: float,
                          defocus_init_m: float | None = None) -> dict[str, float]:
    """The ApCtfData column values classic Appion writes for one fit (keys = column names).

    Rules followed (classic Appion, leginon-org/leginon; SEMC's nysbc/appion ctffind4.py is identical here):
    * appion/bin/ctffind4.py reads CTFFIND's column 2 (defocus 1) into ``defocus2`` and
      column 3 (defocus 2) into ``defocus1``, both ×1e-10 (Å → m), and adds 90° to the
      azimuth ("bug #4047" there) so that the angle belongs to the axis now called defocus1;
      it stores the cross correlation as both ``cross_correlation`` and ``confidence``, and
      ``confidence_d`` = √|cc| rounded to 5 decimals; an ``inf`` fit resolution becomes 100000.
    * appion/appionlib/apCtf/ctfinsert.py (convertDefociToConvention) then swaps the two
      defoci if |defocus1| > |defocus2|, adding 90° to the angle, takes absolute values when
      both are negative, and wraps the angle by ±180° into −90..90.  Its comment says
      −90 < angle ≤ 90; its loops would leave exactly −90 unchanged, we store it as +90
      (the same axis) so the documented range holds.
    The net effect: defocus1 is the smaller defocus and angle_astigmatism is the azimuth
    (CCW from x) of that axis, so the stored triple describes the same astigmatism as the
    CTFFIND triple.  Appion's own confidences (confidence_30_10, confidence_5_peak,
    resolution_80/50_percent) are copied when the engine computed them.
    """
    defocus1_m = result.defocus2_A * 1e-10
    defocus2_m = result.defocus1_A * 1e-10
    angle = result.astig_angle_deg + 90.0
    if abs(defocus1_m) > abs(defocus2_m):
        defocus1_m, defocus2_m = defocus2_m, defocus1_m
        angle += 90.0
    if defocus1_m < 0 and defocus2_m < 0:
        defocus1_m, defocus2_m = abs(defocus1_m), abs(defocus2_m)
    cc = result.cross_correlation
    fields: dict[str, float] = {
        "cs": cs_mm,
        "amplitude_contrast": amplitude_contrast,
        "defocus1": defocus1_m,
        "defocus2": defocus2_m,
        "angle_astigmatism": calc_wrapped_angle_deg(angle),
        "extra_phase_shift": result.phase_shift_rad,
        "cross_correlation": cc,
        "confidence": cc,
        "confidence_d": round(math.sqrt(abs(cc)), 5),
        "ctffind4_resolution": calc_classic_resolution_A(result.fit_resolution_A),
    }
    if defocus_init_m is not None:
        fields["defocusinit"] = defocus_init_m
    optional = {
        "confidence_30_10": result.confidence_30_10,
        "confidence_5_peak": result.confidence_5_peak,
        "resolution_80_percent": result.resolution_80_percent_A,
        "resolution_50_percent": result.resolution_50_percent_A,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    return fields
