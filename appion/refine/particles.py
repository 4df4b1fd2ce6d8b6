"""Reads for prepRefine*.py: which particle images to use, and their CTF.

A particle source is an MRC stack (`.mrcs`/`.mrc`: images only) or a RELION particle STAR file
(3.1+ with `data_optics`, or older single-table files): `rlnImageName` = `N@stack.mrcs` per particle,
and possibly `rlnMicrographName`, defocus columns and the optics.  The CTF of each particle comes from
the STAR file's own columns, else from the database: the micrograph named by `rlnMicrographName` is
the AcquisitionImageData of that file name (in the session when one is given), its newest ApCtfData
estimate (only from CTFFIND runs with --ctfmethod=ctffind, only from other runs with ace2); the voltage
from the image's ScopeEMData, Cs from the CTF estimate (else the session's microscope, InstrumentData),
the amplitude contrast from the CTF estimate (else its CTFFIND run parameters).  A value none of them
holds is an error naming the field: there are no default optics.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import mrcfile
import numpy as np
import starfile

from appion.refine.calc.formats import ParticleCtf
from appion.refine.retrieve import InputError

_IMAGE_SUFFIX = re.compile(r"\.(mrcs?|tiff?|eer|st|spi|hed|img)$", re.I)


@dataclass(frozen=True)
class ParticleSet:
    """The particles to prepare, in order."""

    sources: tuple[tuple[str, int], ...]  # (stack file, 0-based image index) per particle
    box: int
    pixel_size_A: float
    micrographs: tuple[str, ...] | None = None
    ctf: tuple[ParticleCtf, ...] | None = None
    voltage_kV: float | None = None
    cs_mm: float | None = None
    amp_contrast: float | None = None

    def first(self, n: int) -> "ParticleSet":
        return replace(self, sources=self.sources[:n],
                       micrographs=None if self.micrographs is None else self.micrographs[:n],
                       ctf=None if self.ctf is None else self.ctf[:n])


def _mrc_header(path: Path) -> tuple[int, int, int, float]:
    """(images, ny, nx, pixel size) of an MRC stack (a single 2D image counts as one)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            if mrc.data is None:
                raise InputError(f"{path}: not a readable MRC file")
            shape = mrc.data.shape
            voxel = float(mrc.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or shape[1] != shape[2]:
        raise InputError(f"{path}: a particle stack must hold square images (n, y, x); shape is {shape}")
    return shape[0], shape[1], shape[2], voxel


def read_mrc_particles(path: Path, apix: float | None) -> ParticleSet:
    n, ny, _, voxel = _mrc_header(path)
    pixel = apix or voxel
    if not pixel or pixel <= 0:
        raise InputError(f"{path}: the header has no pixel size; give --apix")
    return ParticleSet(sources=tuple((str(path), i) for i in range(n)), box=ny, pixel_size_A=pixel)


def _uniform(values, what: str, path: Path) -> float | None:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return None
    if np.ptp(arr) > 1e-6 * max(1.0, abs(arr).max()):
        raise InputError(f"{path}: {what} differs between particles; prepare one optics group at a time")
    return float(arr[0])


def _resolve_stack(name: str, star: Path) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    beside = star.parent / p
    return beside if beside.exists() else Path.cwd() / p


def read_star_particles(path: Path, apix: float | None) -> ParticleSet:
    """A RELION particle STAR file (any version) → particles, their micrographs, CTF and optics if present."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises pandas/parser errors of many kinds
        raise InputError(f"{path}: not a readable STAR file ({exc})") from None
    tables = [t for t in blocks.values() if hasattr(t, "columns")]
    particles = next((t for t in tables if "rlnImageName" in t.columns), None)
    if particles is None or len(particles) == 0:
        raise InputError(f"{path}: no particle table with rlnImageName")
    optics = blocks.get("optics")
    if optics is not None and hasattr(optics, "columns") and "rlnOpticsGroup" in particles.columns:
        merged = particles.merge(optics, on="rlnOpticsGroup", how="left", suffixes=("", "_optics"))
    else:
        merged = particles
    sources = []
    for name in merged["rlnImageName"]:
        index, at, stack = str(name).partition("@")
        if not at or not index.strip().isdigit() or int(index) < 1:
            raise InputError(f"{path}: image name {name!r} is not N@stack")
        sources.append((str(_resolve_stack(stack, path)), int(index) - 1))
    counts: dict[str, tuple] = {}
    for stack, index in sources:
        if stack not in counts:
            counts[stack] = _mrc_header(Path(stack))
        if index >= counts[stack][0]:
            raise InputError(f"{path}: image {index + 1}@{stack} is beyond the {counts[stack][0]} images there")
    boxes = {h[1] for h in counts.values()}
    if len(boxes) != 1:
        raise InputError(f"{path}: the particle stacks have different box sizes {sorted(boxes)}")
    cols = merged.columns
    pixel = apix
    if not pixel and "rlnImagePixelSize" in cols:
        pixel = _uniform(merged["rlnImagePixelSize"], "rlnImagePixelSize", path)
    if not pixel and {"rlnDetectorPixelSize", "rlnMagnification"} <= set(cols):
        pixel = _uniform(merged["rlnDetectorPixelSize"] * 1e4 / merged["rlnMagnification"], "pixel size", path)
    if not pixel:
        pixel = next(iter(counts.values()))[3]
    if not pixel or pixel <= 0:
        raise InputError(f"{path}: no pixel size (rlnImagePixelSize, or the stacks' headers); give --apix")
    ctf = None
    if {"rlnDefocusU", "rlnDefocusV"} <= set(cols):
        angle = merged["rlnDefocusAngle"] if "rlnDefocusAngle" in cols else [0.0] * len(merged)
        phase = merged["rlnPhaseShift"] if "rlnPhaseShift" in cols else [0.0] * len(merged)
        ctf = tuple(ParticleCtf(float(u), float(v), float(a), float(s))
                    for u, v, a, s in zip(merged["rlnDefocusU"], merged["rlnDefocusV"], angle, phase))
    get = (lambda label: _uniform(merged[label], label, path) if label in cols else None)
    return ParticleSet(sources=tuple(sources), box=boxes.pop(), pixel_size_A=float(pixel),
                       micrographs=tuple(str(m) for m in merged["rlnMicrographName"])
                       if "rlnMicrographName" in cols else None,
                       ctf=ctf, voltage_kV=get("rlnVoltage"), cs_mm=get("rlnSphericalAberration"),
                       amp_contrast=get("rlnAmplitudeContrast"))


@dataclass(frozen=True)
class StarSummary:
    has_optics: bool
    has_ctf: bool
    voltage_kV: float | None
    cs_mm: float | None
    amp_contrast: float | None


def read_star_summary(path: Path) -> StarSummary:
    """What a job needs to know of a prepared particle STAR file: its layout, CTF columns and optics."""
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises pandas/parser errors of many kinds
        raise InputError(f"{path}: not a readable STAR file ({exc})") from None
    tables = [t for t in blocks.values() if hasattr(t, "columns")]
    particles = next((t for t in tables if "rlnImageName" in t.columns), None)
    if particles is None:
        raise InputError(f"{path}: no particle table with rlnImageName")
    optics = blocks.get("optics") if hasattr(blocks.get("optics"), "columns") else None
    source = optics if optics is not None else particles

    def value(label):
        return _uniform(source[label], label, path) if label in source.columns else None

    return StarSummary(has_optics=optics is not None, has_ctf="rlnDefocusU" in particles.columns,
                       voltage_kV=value("rlnVoltage"), cs_mm=value("rlnSphericalAberration"),
                       amp_contrast=value("rlnAmplitudeContrast"))


def read_particles(path: Path, apix: float | None) -> ParticleSet:
    return read_star_particles(path, apix) if path.suffix.lower() == ".star" else read_mrc_particles(path, apix)


def read_particle_images(particles: ParticleSet, start: int, stop: int) -> np.ndarray:
    """Images start..stop-1 of the set: float32 (k, y, x), read stack by stack."""
    chosen = particles.sources[start:stop]
    out = np.empty((len(chosen), particles.box, particles.box), dtype=np.float32)
    by_stack: dict[str, list[tuple[int, int]]] = {}
    for k, (stack, index) in enumerate(chosen):
        by_stack.setdefault(stack, []).append((k, index))
    for stack, pairs in by_stack.items():
        with mrcfile.mmap(stack, mode="r", permissive=True) as mrc:
            data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
            ks, indices = zip(*pairs)
            out[list(ks)] = np.asarray(data[list(indices)], dtype=np.float32)
    return out


# ---------------------------------------------------------------- CTF from the database
@dataclass(frozen=True)
class MicrographCtf:
    ctf: ParticleCtf
    voltage_kV: float
    cs_mm: float
    amp_contrast: float


def _image_name(micrograph: str) -> str:
    return _IMAGE_SUFFIX.sub("", Path(micrograph).name)


def retrieve_micrograph_ctf(micrograph: str, session_id: int | None, ctfmethod: str | None) -> MicrographCtf:
    """The CTF and optics of one micrograph from the database (see the module docstring)."""
    from appion.base.db import models as m

    name = _image_name(micrograph)
    images = m.AcquisitionImageData.objects.filter(filename=name)
    if session_id is not None:
        images = images.filter(session_id=session_id)
    image = images.order_by("-id").first()
    if image is None:
        where = f" in session {session_id}" if session_id is not None else ""
        raise InputError(f"micrograph {micrograph!r}: no AcquisitionImageData with filename {name!r}{where}")
    estimates = m.ApCtfData.objects.filter(image_id=image.id)
    if ctfmethod == "ctffind":
        runs = m.ApAceRunData.objects.filter(ctffind4_params__isnull=False).values_list("id", flat=True)
        estimates = estimates.filter(acerun_id__in=list(runs))
    elif ctfmethod == "ace2":
        runs = m.ApAceRunData.objects.filter(ctffind4_params__isnull=True).values_list("id", flat=True)
        estimates = estimates.filter(acerun_id__in=list(runs))
    est = estimates.order_by("-id").first()
    if est is None:
        which = f" from {ctfmethod} runs" if ctfmethod else ""
        raise InputError(f"micrograph {micrograph!r} (image {image.id}): no CTF estimate (ApCtfData){which}")
    for field in ("defocus1", "defocus2"):
        if getattr(est, field) is None:
            raise InputError(f"micrograph {micrograph!r}: ApCtfData {est.id} has no {field}")
    scope = m.ScopeEMData.objects.filter(id=image.scope_id).first() if image.scope_id else None
    if scope is None or not scope.high_tension:
        raise InputError(f"micrograph {micrograph!r} (image {image.id}): no accelerating voltage "
                         "(ScopeEMData 'high tension')")
    cs_mm = est.cs
    if cs_mm is None and scope.tem_id:
        tem = m.InstrumentData.objects.filter(id=scope.tem_id).first()
        cs_mm = None if tem is None or tem.cs is None else tem.cs * 1e3
    if cs_mm is None:
        raise InputError(f"micrograph {micrograph!r}: no spherical aberration (ApCtfData.cs {est.id}, "
                         "InstrumentData.cs of the microscope)")
    amp = est.amplitude_contrast
    if amp is None:
        run = m.ApAceRunData.objects.filter(id=est.acerun_id).first()
        params = m.ApCtfFind4ParamsData.objects.filter(id=run.ctffind4_params_id).first() \
            if run is not None and run.ctffind4_params_id else None
        amp = None if params is None else params.ampcontrast
    if amp is None:
        raise InputError(f"micrograph {micrograph!r}: no amplitude contrast (ApCtfData.amplitude_contrast "
                         f"{est.id}, ApCtfFind4ParamsData.ampcontrast)")
    shift_deg = float(np.degrees(est.extra_phase_shift)) if est.extra_phase_shift else 0.0
    ctf = ParticleCtf(est.defocus1 * 1e10, est.defocus2 * 1e10, float(est.angle_astigmatism or 0.0), shift_deg)
    return MicrographCtf(ctf, scope.high_tension / 1e3, float(cs_mm), float(amp))


def retrieve_particle_ctf(particles: ParticleSet, session_id: int | None, ctfmethod: str | None) -> ParticleSet:
    """Particles with the CTF of their micrographs from the database (one optics group: the micrographs
    must share voltage, Cs and amplitude contrast)."""
    if particles.micrographs is None:
        raise InputError("the particles name no micrographs (rlnMicrographName): no CTF can be found for them")
    found: dict[str, MicrographCtf] = {}
    for name in particles.micrographs:
        if name not in found:
            found[name] = retrieve_micrograph_ctf(name, session_id, ctfmethod)
    optics = {(f.voltage_kV, f.cs_mm, f.amp_contrast) for f in found.values()}
    if len(optics) > 1:
        raise InputError(f"the micrographs were taken with different optics {sorted(optics)} (voltage, Cs, "
                         "amplitude contrast); prepare one optics group at a time")
    kv, cs, amp = optics.pop()
    return replace(particles, ctf=tuple(found[n].ctf for n in particles.micrographs), voltage_kV=kv, cs_mm=cs,
                   amp_contrast=amp)


def retrieve_session_optics(session_id: int) -> tuple[float | None, float | None, float | None]:
    """(voltage kV, Cs mm, amplitude contrast) of a session: its newest ScopeEMData's high tension and
    microscope (InstrumentData.cs), and its newest CTF run's amplitude contrast; None for what is not recorded."""
    from appion.base.db import models as m

    kv = cs = amp = None
    scope = m.ScopeEMData.objects.filter(session_id=session_id, high_tension__isnull=False).order_by("-id").first()
    if scope is not None:
        kv = scope.high_tension / 1e3
        tem = m.InstrumentData.objects.filter(id=scope.tem_id).first() if scope.tem_id else None
        cs = None if tem is None or tem.cs is None else tem.cs * 1e3
    run = m.ApAceRunData.objects.filter(session_id=session_id).order_by("-id").first()
    if run is not None:
        est = m.ApCtfData.objects.filter(acerun_id=run.id, amplitude_contrast__isnull=False).order_by("-id").first()
        params = m.ApCtfFind4ParamsData.objects.filter(id=run.ctffind4_params_id).first() \
            if run.ctffind4_params_id else None
        amp = est.amplitude_contrast if est is not None else (None if params is None else params.ampcontrast)
    return kv, cs, amp
