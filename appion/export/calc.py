"""RELION's view of appion's results (pure: no Django, no I/O).

Classic ApCtfData rows hold meters with |defocus1| ≤ |defocus2| and angle_astigmatism the azimuth of the
defocus1 axis (docs/conventions.md).  RELION, like CTFFIND, writes (DefocusU, DefocusV, DefocusAngle) in Å
with DefocusU ≥ DefocusV along DefocusAngle (degrees counter-clockwise from x), so the defocus in every
direction θ is the same: ½[U + V + (U − V)·cos 2(θ − angle)].  _rlnCtfAstigmatism is U − V.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from appion.base.physics import calc_major_defocus_axis

# Suffixes of MRC files RELION must be told the type of (CTFFIND's power spectrum is `.ctf`).
MRC_BY_NAME = (".ctf",)
MICROGRAPHS_DIR = "Micrographs"
CTF_IMAGES_DIR = "CtfImages"


class ExportError(Exception):
    """Something a person must fix before the export can be written (shown as one line)."""


@dataclass(frozen=True)
class CtfValues:
    """One ApCtfData row as stored: meters, degrees, radians; resolution in Å (100000: none)."""

    defocus1_m: float
    defocus2_m: float
    angle_deg: float
    cross_correlation: float | None
    resolution_A: float | None
    phase_shift_rad: float | None
    cs_mm: float | None
    amplitude_contrast: float | None
    image: Path | None  # the diagnostic image (graph1), absolute


@dataclass(frozen=True)
class Micrograph:
    """One exposure to export: its aligned sums, optics and CTF as the database holds them."""

    source_id: int
    filename: str  # the movie's
    micrograph: Path  # the sum RELION uses: dose-weighted when there is one
    micrograph_nodw: Path | None  # the plain sum, when micrograph is the dose-weighted one
    pixel_size_A: float  # of the aligned sum
    original_pixel_size_A: float  # of the movie
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float
    total_motion_A: float | None
    ctf: CtfValues | None
    image_ids: tuple[int, ...] = ()  # the movie's and its aligned sums' AcquisitionImageData ids
    rejected: str | None = None  # why the exposure is rejected (None: accepted)


@dataclass(frozen=True)
class RelionCtf:
    defocus_u_A: float
    defocus_v_A: float
    angle_deg: float
    astigmatism_A: float


def calc_relion_ctf(defocus1_m: float, defocus2_m: float, angle_deg: float) -> RelionCtf:
    """RELION's (DefocusU ≥ DefocusV, DefocusAngle of U) from a classic row (defocus1 along angle_deg)."""
    u, v, angle = calc_major_defocus_axis(defocus1_m, defocus2_m, angle_deg)
    return RelionCtf(u, v, angle, abs(u - v))


def calc_defocus_at_A(u_A: float, v_A: float, angle_deg: float, theta_deg: float) -> float:
    """Defocus in direction theta of an astigmatic CTF (docs/conventions.md): both conventions must agree."""
    return 0.5 * (u_A + v_A + (u_A - v_A) * math.cos(2.0 * math.radians(theta_deg - angle_deg)))


def calc_optics_key(mic: Micrograph) -> tuple:
    return (round(mic.original_pixel_size_A, 6), round(mic.pixel_size_A, 6), round(mic.voltage_kV, 4),
            round(mic.cs_mm, 6), round(mic.amplitude_contrast, 6))


def calc_optics_groups(mics: list[Micrograph]) -> tuple[dict[str, list], dict[int, int]]:
    """RELION's optics table (one group per distinct pixel sizes, voltage, Cs, amplitude contrast, in order of
    first appearance) and source id → group number."""
    keys: dict[tuple, int] = {}
    group_of: dict[int, int] = {}
    for mic in mics:
        group_of[mic.source_id] = keys.setdefault(calc_optics_key(mic), len(keys) + 1)
    table: dict[str, list] = {"rlnOpticsGroupName": [], "rlnOpticsGroup": [], "rlnMicrographOriginalPixelSize": [],
                              "rlnVoltage": [], "rlnSphericalAberration": [], "rlnAmplitudeContrast": [],
                              "rlnMicrographPixelSize": []}
    for (original, pixel, kv, cs, ac), number in keys.items():
        table["rlnOpticsGroupName"].append(f"opticsGroup{number}")
        table["rlnOpticsGroup"].append(number)
        table["rlnMicrographOriginalPixelSize"].append(original)
        table["rlnVoltage"].append(kv)
        table["rlnSphericalAberration"].append(cs)
        table["rlnAmplitudeContrast"].append(ac)
        table["rlnMicrographPixelSize"].append(pixel)
    return table, group_of


@dataclass(frozen=True)
class LinkNames:
    """Where an exposure's files are linked under the output directory (relative names)."""

    micrograph: str
    micrograph_nodw: str | None
    ctf_image: str | None


def calc_link_names(mic: Micrograph) -> LinkNames:
    return LinkNames(f"{MICROGRAPHS_DIR}/{mic.micrograph.name}",
                     f"{MICROGRAPHS_DIR}/{mic.micrograph_nodw.name}" if mic.micrograph_nodw else None,
                     f"{CTF_IMAGES_DIR}/{mic.ctf.image.name}" if mic.ctf and mic.ctf.image else None)


def calc_image_name(path: str) -> str:
    """A file name as RELION reads it: CTFFIND's `.ctf` spectra are MRC files RELION must be told about."""
    return f"{path}:mrc" if path.lower().endswith(MRC_BY_NAME) else path


def calc_corrected_table(mics: list[Micrograph], names: dict[int, dict[str, str]],
                         group_of: dict[int, int]) -> dict[str, list]:
    """corrected_micrographs.star's micrographs table.  names: source id → the paths as written
    ("micrograph", and "nodw" / "ctf" when linked)."""
    table: dict[str, list] = {"rlnMicrographName": [], "rlnOpticsGroup": []}
    if mics and all(names[mic.source_id].get("nodw") for mic in mics):
        table["rlnMicrographNameNoDW"] = []
    if mics and all(mic.total_motion_A is not None for mic in mics):
        table["rlnAccumMotionTotal"] = []
    for mic in mics:
        table["rlnMicrographName"].append(names[mic.source_id]["micrograph"])
        table["rlnOpticsGroup"].append(group_of[mic.source_id])
        if "rlnMicrographNameNoDW" in table:
            table["rlnMicrographNameNoDW"].append(names[mic.source_id]["nodw"])
        if "rlnAccumMotionTotal" in table:
            table["rlnAccumMotionTotal"].append(mic.total_motion_A)
    return table


def calc_ctf_table(mics: list[Micrograph], names: dict[int, dict[str, str]],
                   group_of: dict[int, int]) -> dict[str, list]:
    """micrographs_ctf.star's micrographs table (exposures with a CTF fit only)."""
    with_ctf = [mic for mic in mics if mic.ctf is not None]
    table: dict[str, list] = {k: [] for k in ("rlnMicrographName", "rlnOpticsGroup", "rlnCtfImage", "rlnDefocusU",
                                              "rlnDefocusV", "rlnCtfAstigmatism", "rlnDefocusAngle",
                                              "rlnCtfFigureOfMerit", "rlnCtfMaxResolution")}
    phase = any(mic.ctf.phase_shift_rad for mic in with_ctf)
    if phase:
        table["rlnPhaseShift"] = []
    for mic in with_ctf:
        ctf = mic.ctf
        relion = calc_relion_ctf(ctf.defocus1_m, ctf.defocus2_m, ctf.angle_deg)
        table["rlnMicrographName"].append(names[mic.source_id]["micrograph"])
        table["rlnOpticsGroup"].append(group_of[mic.source_id])
        table["rlnCtfImage"].append(calc_image_name(names[mic.source_id]["ctf"]) if names[mic.source_id].get("ctf")
                                    else "None")
        table["rlnDefocusU"].append(relion.defocus_u_A)
        table["rlnDefocusV"].append(relion.defocus_v_A)
        table["rlnCtfAstigmatism"].append(relion.astigmatism_A)
        table["rlnDefocusAngle"].append(relion.angle_deg)
        table["rlnCtfFigureOfMerit"].append(ctf.cross_correlation if ctf.cross_correlation is not None else 0.0)
        table["rlnCtfMaxResolution"].append(ctf.resolution_A if ctf.resolution_A is not None else 100000.0)
        if phase:
            table["rlnPhaseShift"].append(math.degrees(ctf.phase_shift_rad or 0.0))
    return table
