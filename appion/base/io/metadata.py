"""Exposure metadata written next to movies by SerialEM (.mdoc) and EPU (.xml); pure parsing.

Values are converted to appion's units on the way in (Å, volts, e/Å², seconds, radians,
defocus in meters with Leginon's sign: negative = underfocus).  Anything absent stays None.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class ExposureMetadata:
    pixel_size_A: float | None = None
    voltage_V: float | None = None
    dose_e_per_A2: float | None = None
    n_frames: int | None = None
    magnification: int | None = None
    defocus_m: float | None = None
    tilt_rad: float | None = None
    exposure_time_s: float | None = None
    gain_name: str | None = None
    camera_name: str | None = None
    source: str | None = None

    def overlay(self, other: "ExposureMetadata") -> "ExposureMetadata":
        """Values from `other` win where they are known."""
        known = {f.name: getattr(other, f.name) for f in fields(other) if getattr(other, f.name) is not None}
        return replace(self, **known)


class MetadataError(ValueError):
    """A sidecar file cannot be parsed (the message names the file); the import ignores that file."""


def _num(value: str | None, kind=float, positive: bool = False):
    """The first number in a metadata value; None when absent, not a finite number, or (positive) <= 0."""
    if value is None:
        return None
    try:
        number = float(value.split()[0])
    except (ValueError, IndexError):
        return None
    if not math.isfinite(number) or (positive and number <= 0):
        return None
    return kind(number)


def parse_mdoc(text: str, source: str = "mdoc") -> ExposureMetadata:
    """SerialEM `.mdoc`: global `key = value` lines then `[FrameSet = n]`/`[ZValue = n]` sections.

    The first section describes the exposure; global keys (Voltage) fill in what it lacks.
    `[T = ...]` lines (titles, as in tilt-series mdocs) are comments, not sections.
    """
    globals_: dict[str, str] = {}
    section: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            if line[1:].split("=", 1)[0].strip() == "T":
                continue
            if section is not None:
                break
            section = {}
            continue
        if "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        (section if section is not None else globals_)[key] = value
    d = {**globals_, **(section or {})}
    voltage_kV = _num(d.get("Voltage"), positive=True)
    dose = _num(d.get("ExposureDose"), positive=True)
    defocus_um = _num(d.get("Defocus"))
    tilt_deg = _num(d.get("TiltAngle"))
    exposure_s = _num(d.get("ExposureTime"), positive=True)
    gain = d.get("GainReference")
    return ExposureMetadata(
        pixel_size_A=_num(d.get("PixelSpacing"), positive=True),
        voltage_V=voltage_kV * 1e3 if voltage_kV else None,
        dose_e_per_A2=dose,
        n_frames=_num(d.get("NumSubFrames"), int, positive=True),
        magnification=_num(d.get("Magnification"), int, positive=True),
        defocus_m=defocus_um * 1e-6 if defocus_um is not None else None,
        tilt_rad=math.radians(tilt_deg) if tilt_deg is not None else None,
        exposure_time_s=exposure_s,
        gain_name=gain.replace("\\", "/").rsplit("/", 1)[-1] if gain else None,
        source=source,
    )


def _strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_epu_xml(text: str | bytes, source: str = "epu") -> ExposureMetadata:
    """EPU's per-exposure `MicroscopeImage` XML (SI units: meters, volts, electrons per m²).

    Give bytes when reading a file, so the XML declaration's encoding is honoured.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise MetadataError(f"{source}: not valid EPU XML ({exc})") from None
    paths: dict[str, str] = {}
    custom: dict[str, str] = {}

    def walk(node, path):
        kids = list(node)
        name = _strip_ns(node.tag)
        here = f"{path}/{name}"
        if name == "KeyValueOfstringanyType":
            key = next((k.text for k in kids if _strip_ns(k.tag) == "Key"), None)
            val = next((k for k in kids if _strip_ns(k.tag) == "Value"), None)
            if key is not None and val is not None:
                if len(list(val)) == 0:
                    custom[key] = (val.text or "").strip()
                else:
                    for sub in val.iter():
                        if len(list(sub)) == 0 and sub.text and sub.text.strip():
                            custom[f"{key}.{_strip_ns(sub.tag)}"] = sub.text.strip()
            return
        if not kids and node.text and node.text.strip():
            paths[here] = node.text.strip()
        for k in kids:
            walk(k, here)

    walk(root, "")

    def find(suffix):
        return next((v for p, v in paths.items() if p.endswith(suffix)), None)

    pixel_m = _num(find("/SpatialScale/pixelSize/x/numericValue"), positive=True)
    dose_m2 = _num(custom.get("Dose"), positive=True)
    tilt = _num(find("/stage/Position/A"))
    return ExposureMetadata(
        pixel_size_A=pixel_m * 1e10 if pixel_m else None,
        voltage_V=_num(find("/gun/AccelerationVoltage"), positive=True),
        dose_e_per_A2=dose_m2 / 1e20 if dose_m2 else None,
        n_frames=_num(custom.get("FractionationSettings.NumberOffractions"), int, positive=True),
        magnification=_num(find("/TemMagnification/NominalMagnification"), int, positive=True),
        defocus_m=_num(custom.get("AppliedDefocus")),
        tilt_rad=tilt,
        exposure_time_s=_num(find("/camera/ExposureTime"), positive=True),
        camera_name=custom.get("DetectorCommercialName"),
        source=source,
    )


_EPU_SUFFIX = re.compile(r"_(fractions|Fractions|EER|eer)$")


def calc_sidecar_names(movie_name: str) -> list[str]:
    """File names that may hold a movie's metadata, most specific first.

    SerialEM: `<movie>.mdoc` or `<stem>.mdoc`; EPU: `<stem>.xml` with `_fractions`/`_EER` removed.
    """
    stem = movie_name
    for ext in (".tiff", ".tif", ".mrcs", ".mrc", ".eer"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    bare = _EPU_SUFFIX.sub("", stem)
    names = [f"{movie_name}.mdoc", f"{stem}.mdoc", f"{stem}.xml"]
    if bare != stem:
        names.append(f"{bare}.xml")
    return names
