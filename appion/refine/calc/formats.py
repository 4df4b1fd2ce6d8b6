"""The input files each refinement program reads, as tables, text or bytes (pure: no I/O).

* RELION: particle tables for 3.1 and later (a `data_optics` table with the optics group's pixel
  size, image size, voltage, Cs and amplitude contrast, and `data_particles` naming each image
  `N@stack.mrcs` with its optics group and, when known, its defocus) and for 3.0 and earlier (one
  table, the optics per particle, the pixel size as detector pixel size and magnification);
  written with the starfile package (appion.refine.store).
* Frealign 9: the particle parameter file (`<data_input>_1_r1.par`) in Frealign 9's fixed columns,
  defocus per particle.
* Xmipp 3: metadata (`# XMIPP_STAR_1 *`, `_image`, `_enabled`, Xmipp's CTF labels).
* IMAGIC-5 (EMAN 1 reads `start.hed`/`start.img`): one 1024-byte header record per image
  (256 four-byte words) and float32 image data, see `calc_imagic_files`.

Units: Å, kV, mm, degrees.  Defocus follows RELION/CTFFIND: U ≥ V is not required, positive = underfocus,
angle counter-clockwise from x.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd


class FormatError(ValueError):
    """Values a program's file format cannot hold (names the value)."""


@dataclass(frozen=True)
class Optics:
    """One optics group (what RELION 3.1 keeps in `data_optics`)."""

    pixel_size_A: float
    image_size_px: int
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float | None  # None: not known (only allowed without CTF columns)


@dataclass(frozen=True)
class ParticleCtf:
    defocus_u_A: float
    defocus_v_A: float
    angle_deg: float
    phase_shift_deg: float = 0.0


def calc_version_tuple(text: str) -> tuple[int, ...]:
    """'3.1.3' / 'RELION version: 3.1.3' / '4.0-beta' → (3, 1, 3) / (4, 0); refused when no number is found."""
    match = re.search(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if not match:
        raise FormatError(f"no version number in {text!r}")
    return tuple(int(g) for g in match.groups() if g is not None)


def calc_relion_has_optics(version: tuple[int, ...]) -> bool:
    """RELION 3.1 introduced optics groups (and dropped --angpix and per-particle optics)."""
    return tuple(version[:2]) >= (3, 1)


def parse_help_options(text: str) -> set[str]:
    """The `--option` names a program lists in its `--help` text (RELION: `  --name (default) : help`)."""
    return set(re.findall(r"^\s*(--[A-Za-z0-9_][A-Za-z0-9_-]*)", text, flags=re.M))


def _check_ctf(ctf: list[ParticleCtf] | None, n: int) -> None:
    if ctf is not None and len(ctf) != n:
        raise FormatError(f"{len(ctf)} CTF records for {n} particles")


def calc_relion_tables(image_names: list[str], optics: Optics, ctf: list[ParticleCtf] | None,
                       micrographs: list[str] | None, version: tuple[int, ...]) -> dict[str, pd.DataFrame]:
    """RELION particle tables: {'optics': ..., 'particles': ...} (3.1+) or {'particles': ...} (older).

    image_names: `N@/path/stack.mrcs` per particle; ctf: per particle or None (no CTF columns).
    """
    n = len(image_names)
    _check_ctf(ctf, n)
    if ctf is not None and optics.amplitude_contrast is None:
        raise FormatError("particles with CTF need the amplitude contrast")
    cols: dict[str, object] = {"rlnImageName": image_names}
    if micrographs is not None:
        cols["rlnMicrographName"] = micrographs
    if ctf is not None:
        cols["rlnDefocusU"] = [round(c.defocus_u_A, 2) for c in ctf]
        cols["rlnDefocusV"] = [round(c.defocus_v_A, 2) for c in ctf]
        cols["rlnDefocusAngle"] = [round(c.angle_deg, 3) for c in ctf]
        if any(c.phase_shift_deg for c in ctf):
            cols["rlnPhaseShift"] = [round(c.phase_shift_deg, 3) for c in ctf]
    if calc_relion_has_optics(version):
        cols["rlnOpticsGroup"] = [1] * n
        group = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                 "rlnImagePixelSize": [optics.pixel_size_A], "rlnImageSize": [optics.image_size_px],
                 "rlnImageDimensionality": [2], "rlnVoltage": [optics.voltage_kV],
                 "rlnSphericalAberration": [optics.cs_mm]}
        if optics.amplitude_contrast is not None:
            group["rlnAmplitudeContrast"] = [optics.amplitude_contrast]
        return {"optics": pd.DataFrame(group), "particles": pd.DataFrame(cols)}
    # RELION ≤ 3.0: optics on every particle; pixel size = detector pixel (µm) × 10⁴ / magnification
    cols.update({"rlnVoltage": [optics.voltage_kV] * n, "rlnSphericalAberration": [optics.cs_mm] * n,
                 "rlnMagnification": [10000.0] * n, "rlnDetectorPixelSize": [optics.pixel_size_A] * n})
    if optics.amplitude_contrast is not None:
        cols["rlnAmplitudeContrast"] = [optics.amplitude_contrast] * n
    return {"particles": pd.DataFrame(cols)}


# ---------------------------------------------------------------- Frealign 9
FREALIGN_MAGNIFICATION = 10000  # with dstep = pixel size (µm), Frealign's pixel = dstep·10⁴/MAG = pixel size (Å)
FREALIGN_PAR_HEADER = ("C           PSI   THETA     PHI       SHX       SHY     MAG  INCLUDE   DF1      DF2  ANGAST"
                       "  PSHIFT     OCC      LogP      SIGMA   SCORE  CHANGE")


def calc_frealign_par(ctf: list[ParticleCtf]) -> str:
    """Frealign 9 parameter file, one line per particle (Fortran format
    I7,3F8.2,2F10.2,I8,I6,2F9.1,2F8.2,F8.2,I10,F11.4,2F8.2): no orientation yet (0, 0, 0), no shift,
    MAG 10000, film 1, the defocus, occupancy 100, LogP 0, sigma 1, score 0, change 0."""
    lines = [FREALIGN_PAR_HEADER]
    for i, c in enumerate(ctf, start=1):
        for name, value, width in (("DF1", c.defocus_u_A, 9), ("DF2", c.defocus_v_A, 9)):
            if not math.isfinite(value) or len(f"{value:.1f}") > width:
                raise FormatError(f"particle {i}: {name} {value} does not fit Frealign's column")
        lines.append(f"{i:7d}{0.0:8.2f}{0.0:8.2f}{0.0:8.2f}{0.0:10.2f}{0.0:10.2f}{FREALIGN_MAGNIFICATION:8d}{1:6d}"
                     f"{c.defocus_u_A:9.1f}{c.defocus_v_A:9.1f}{c.angle_deg:8.2f}{c.phase_shift_deg:8.2f}"
                     f"{100.0:8.2f}{0:10d}{1.0:11.4f}{0.0:8.2f}{0.0:8.2f}")
    return "\n".join(lines) + "\n"


def calc_frealign_mparameters(rows: list[tuple[str, object]]) -> str:
    """Frealign 9's `mparameters`: `key value` lines (its scripts read them with grep/awk).

    Values are single words, except the quoted parameter mask; a value with white space elsewhere
    would be read as its first word only, so it is refused."""
    out = []
    for key, value in rows:
        text = str(value)
        if key not in ("parameter_mask", "focus_mask") and (not text or re.search(r"\s", text)):
            raise FormatError(f"Frealign parameter {key} must be one word, not {text!r}")
        out.append(f"{key:<24}{text}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- Xmipp 3
def calc_xmipp_metadata(image_names: list[str], optics: Optics | None, ctf: list[ParticleCtf] | None) -> str:
    """Xmipp 3 metadata (`XMIPP_STAR_1`): one row per image, Xmipp's CTF labels when the CTF is known."""
    _check_ctf(ctf, len(image_names))
    labels = ["_image", "_enabled"]
    if ctf is not None:
        if optics is None:
            raise FormatError("Xmipp CTF columns need the optics (voltage, Cs, amplitude contrast)")
        labels += ["_ctfDefocusU", "_ctfDefocusV", "_ctfDefocusAngle", "_ctfVoltage", "_ctfSphericalAberration",
                   "_ctfQ0", "_ctfSamplingRate"]
    rows = []
    for i, name in enumerate(image_names):
        if re.search(r"\s", name):
            raise FormatError(f"Xmipp image name {name!r} may not contain white space")
        row = [name, "1"]
        if ctf is not None:
            c = ctf[i]
            row += [f"{c.defocus_u_A:.2f}", f"{c.defocus_v_A:.2f}", f"{c.angle_deg:.3f}", f"{optics.voltage_kV:g}",
                    f"{optics.cs_mm:g}", f"{optics.amplitude_contrast:g}", f"{optics.pixel_size_A:g}"]
        rows.append(" " + " ".join(row))
    return "# XMIPP_STAR_1 *\n#\ndata_noname\nloop_\n" + "".join(f" {label}\n" for label in labels) \
        + "\n".join(rows) + "\n"


# ---------------------------------------------------------------- IMAGIC-5 (EMAN 1)
IMAGIC_HEADER_WORDS = 256
IMAGIC_MACHINE_STAMP_LITTLE_ENDIAN = 33686018  # REALTYPE (word 69): 0x02020202, little-endian IEEE floats


def calc_imagic_files(images: np.ndarray, when: time.struct_time | None = None, first: int = 1,
                      total: int | None = None) -> tuple[bytes, bytes]:
    """(.hed bytes, .img bytes) of 2D images (k, y, x) of an IMAGIC-5 stack, little-endian.

    first: the number of the first image (1-based), total: images in the whole stack (default k), so a
    stack can be written a chunk at a time.

    Header words (1-based, IMAGIC-5): 1 IMN image number (1…n), 2 IFOL images following (n−1 in the
    first record, 0 in the others), 3 IERROR 0, 4 NHFR header records per image (1), 5–10 creation
    day, month, year, hour, minute, second, 11 NPIX2 and 12 NPIXEL pixels per image, 13 IXLP lines
    per image (y), 14 IYLP pixels per line (x), 15 TYPE 'REAL', 18 AVDENS, 19 SIGMA, 20 VARIAN,
    22 DENSMAX, 23 DENSMIN, 61 IZLP planes (1), 62 I4LP (1), 69 REALTYPE machine stamp.
    IMAGIC stores an image's lines from the top down, MRC from the bottom up, so each image's lines
    are written in reverse y order (what EMAN's and Appion's IMAGIC readers expect).
    """
    data = np.asarray(images, dtype="<f4")
    if data.ndim != 3 or data.shape[0] < 1:
        raise FormatError(f"an IMAGIC stack needs images (n, y, x), not shape {data.shape}")
    n, ny, nx = data.shape
    total = n if total is None else total
    if first < 1 or first + n - 1 > total:
        raise FormatError(f"images {first}..{first + n - 1} are outside a stack of {total}")
    when = when or time.localtime()
    headers = np.zeros((n, IMAGIC_HEADER_WORDS), dtype="<i4")
    floats = headers.view("<f4")
    headers[:, 0] = np.arange(first, first + n)
    if first == 1:
        headers[0, 1] = total - 1
    headers[:, 3] = 1
    headers[:, 4:10] = [when.tm_mday, when.tm_mon, when.tm_year, when.tm_hour, when.tm_min, when.tm_sec]
    headers[:, 10] = headers[:, 11] = nx * ny
    headers[:, 12], headers[:, 13] = ny, nx
    headers[:, 14] = np.frombuffer(b"REAL", dtype="<i4")[0]
    flat = data.reshape(n, -1).astype(np.float64)
    floats[:, 17] = flat.mean(axis=1)
    floats[:, 18] = flat.std(axis=1)
    floats[:, 19] = flat.var(axis=1)
    floats[:, 21] = flat.max(axis=1)
    floats[:, 22] = flat.min(axis=1)
    headers[:, 60] = 1
    headers[:, 61] = 1
    headers[:, 68] = IMAGIC_MACHINE_STAMP_LITTLE_ENDIAN
    return headers.tobytes(), np.ascontiguousarray(data[:, ::-1, :]).tobytes()


def read_imagic_bytes(hed: bytes, img: bytes) -> np.ndarray:
    """Images (n, y, x) float32 back from IMAGIC bytes (the inverse of calc_imagic_files; for checks)."""
    words = np.frombuffer(hed, dtype="<i4").reshape(-1, IMAGIC_HEADER_WORDS)
    ny, nx = int(words[0, 12]), int(words[0, 13])
    return np.frombuffer(img, dtype="<f4").reshape(words.shape[0], ny, nx)[:, ::-1, :].copy()
