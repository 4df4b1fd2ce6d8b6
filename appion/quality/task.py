"""The quality step's worker side: measure one exposure's image (sanity, sample tilt, ice), return a record.

Runs on Dask workers: no Django here.  The motion and CTF numbers (drift, fit resolution, astigmatism) are
what those steps stored; they are joined with these measurements and judged in the loop process
(appion.quality.steprows), where the thresholds in force are known.
"""
from __future__ import annotations

import time

import numpy as np

from appion.base.exposure import ExposureInput
from appion.base.imagecheck import calc_image_problem
from appion.base.steps import StepInput
from appion.quality.inputs import calc_measured_image, read_image
from appion.quality.records import QualityRecord, QualitySettings

TILE_FIELD_A = 550.0  # automatic tiling: about one tile per this many Å of the shorter side (3 to 5 tiles)
TILT_MAX_FIT_RESOLUTION_A = 15.0  # a CTF fit worse than this has too few rings for per-tile defoci


def calc_tile_count(shape: tuple[int, int], pixel_size_A: float, tiles: int) -> int:
    """Tiles per side of the tilt fit: `tiles` when given (> 0), else 3-5 from the field of view."""
    if tiles > 0:
        return tiles
    return int(np.clip(int(min(shape) * pixel_size_A / TILE_FIELD_A), 3, 5))


def calc_tilt(image: np.ndarray, pixel_size_A: float, inp: ExposureInput, ctf, settings: QualitySettings):
    """(tilt deg, axis deg, note): the sample tilt, or None and why it could not be fitted."""
    from appion.quality.calc.internal.tilt import TiltError, TiltParams, calc_tilt_fit

    d1, d2 = getattr(ctf, "defocus1_A", None), getattr(ctf, "defocus2_A", None)
    if not d1 or not d2:
        return None, None, "no CTF fit to start from"
    fit = getattr(ctf, "fit_resolution_A", None)
    if fit is None or not fit < TILT_MAX_FIT_RESOLUTION_A:
        return None, None, f"CTF fit resolution {fit} Å is too poor for a tilt fit"
    params = TiltParams(pixel_size_A=pixel_size_A, voltage_kV=inp.voltage_kV, cs_mm=inp.cs_mm,
                        amplitude_contrast=settings.amplitude_contrast, defocus1_A=d1, defocus2_A=d2,
                        n_tiles=calc_tile_count(image.shape, pixel_size_A, settings.tiles),
                        resmax_A=max(4.0, float(fit)))
    try:
        result = calc_tilt_fit(image, params, workers=settings.threads)
    except TiltError as exc:
        return None, None, str(exc)
    return result.tilt_deg, result.tilt_axis_deg, None


def calc_ice_measure(image: np.ndarray, pixel_size_A: float, workers: int = 1):
    """(relative ice thickness, crystalline flag, note: the crystalline-ice evidence and/or why there is no
    thickness)."""
    from appion.quality.calc.internal.ice import HIGH_NEIGHBOUR_A, calc_ice

    try:
        ice = calc_ice(image, pixel_size_A, workers=workers)
    except ValueError as exc:
        return None, None, str(exc)
    notes = [ice.evidence] if ice.evidence else []
    if ice.relative_thickness is None:
        notes.append(f"pixel {pixel_size_A:.2f} Å: the image does not reach {HIGH_NEIGHBOUR_A[1]} Å, "
                     "no relative ice thickness")
    return ice.relative_thickness, ice.crystalline, "; ".join(notes) or None


def run_quality_task(task: StepInput, settings: QualitySettings) -> QualityRecord:
    """Measure the image CTF estimation used (see module doc)."""
    from appion.motioncorrection.task import worker_name

    start = time.perf_counter()
    inp: ExposureInput = task.exposure
    measured = calc_measured_image(task)
    image = read_image(measured.path)
    problem = calc_image_problem(image)
    if problem:
        return QualityRecord(inp.image_id, measured.image_id, problem, None, None, None, None, None, None,
                             time.perf_counter() - start, worker_name())
    image = image.astype(np.float32, copy=False)
    tilt, axis, tilt_note = calc_tilt(image, measured.pixel_size_A, inp, task.upstream.get("ctf"), settings)
    ice, crystalline, ice_note = calc_ice_measure(image, measured.pixel_size_A, settings.threads)
    return QualityRecord(inp.image_id, measured.image_id, None, tilt, axis, tilt_note, ice, crystalline, ice_note,
                         time.perf_counter() - start, worker_name())


def describe_quality_record(record: QualityRecord) -> str:
    if record.image_problem:
        return f"quality {record.seconds:.1f} s ({record.image_problem})"
    tilt = "-" if record.tilt_deg is None else f"{record.tilt_deg:.1f}°"
    ice = "-" if record.ice_thickness is None else f"{record.ice_thickness:.2f}"
    return f"quality {record.seconds:.1f} s (tilt {tilt}, ice {ice}{', crystalline' if record.crystalline_ice else ''})"
