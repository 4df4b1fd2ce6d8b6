"""Dose per aligned frame for dose weighting: stored frames for TIFF/MRC, grouped fractions for EER."""
from __future__ import annotations

import pytest

from appion.base.exposure import ExposureInput
from appion.motioncorrection.records import MotionSettings
from appion.motioncorrection.task import calc_dose_per_frame, calc_total_dose


def exposure(movie_path: str, n_frames: int | None, dose: float | None) -> ExposureInput:
    return ExposureInput(image_id=1, filename="x", movie_path=movie_path, image_dir="/tmp", preset_name="enn",
                         pixel_size_A=0.8, voltage_kV=300.0, cs_mm=2.7, dose_e_per_A2=dose, n_frames=n_frames,
                         gain_path=None, dark_path=None, frame_rotate=0, frame_flip=0, defects=(None, None, None),
                         nominal_defocus_m=None, tilt_deg=0.0, arrived=0.0)


def test_tiff_dose_per_stored_frame():
    inp = exposure("/d/x.frames.tif", 40, 50.0)
    assert calc_dose_per_frame(inp, MotionSettings()) == pytest.approx(1.25)
    assert calc_dose_per_frame(inp, MotionSettings(rendered_frame_size=20)) == pytest.approx(1.25)  # EER only


def test_eer_dose_per_fraction_of_grouped_raw_frames():
    """A Falcon 4i EER of 1,200 raw frames, 50 e/Å², grouped by 30: 40 fractions of 1.25 e/Å² each (the raw
    frame's dose would be 0.0417: dose weighting would then barely weight anything)."""
    inp = exposure("/d/x.eer", 1200, 50.0)
    assert calc_dose_per_frame(inp, MotionSettings(rendered_frame_size=30)) == pytest.approx(1.25)
    assert calc_dose_per_frame(inp, MotionSettings(rendered_frame_size=1)) == pytest.approx(50.0 / 1200)
    assert calc_total_dose(inp, MotionSettings(rendered_frame_size=30)) == pytest.approx(50.0)


def test_no_dose_no_weighting():
    assert calc_dose_per_frame(exposure("/d/x.eer", 1200, None), MotionSettings(rendered_frame_size=30)) is None
    assert calc_dose_per_frame(exposure("/d/x.tif", 40, 50.0), MotionSettings(doseweight=False)) is None
    assert calc_dose_per_frame(exposure("/d/x.tif", None, 50.0), MotionSettings()) is None
    assert calc_dose_per_frame(exposure("/d/x.tif", 40, 10.0), MotionSettings(total_dose_e_per_A2=80.0)) == 2.0


def test_loop_options_set_eer_grouping_and_sampling():
    import argparse

    from appion.base.steps import StepError
    from appion.motioncorrection.step import add_options, settings_from_args

    parser = argparse.ArgumentParser()
    add_options(parser)
    settings = settings_from_args(parser.parse_args(["--eer-grouping", "30", "--eer-sampling", "2"]))
    assert (settings.rendered_frame_size, settings.eer_sampling) == (30, 2)
    assert "rendered_frame_size" in settings.hashed() and "eer_sampling" in settings.hashed()
    with pytest.raises(StepError, match="--eer-grouping 0"):
        settings_from_args(parser.parse_args(["--eer-grouping", "0"]))


@pytest.mark.parametrize("kind", ["tiff", "eer", "mrc"])
def test_star_shifts_read_back_as_written(kind):
    """The motion STAR file's shifts (written by appion, in RELION's convention) read back through the RELION
    reader give the displacements again: TIFF is y-flipped in RELION's reading, EER and MRC are not."""
    import numpy as np

    from appion.motioncorrection.calc.external.relion import calc_displacement_from_relion_shifts
    from appion.motioncorrection.outputs import calc_relion_shifts

    d = np.array([[0.0, 0.0], [1.5, -0.5], [2.25, 1.0]])
    shifts = calc_relion_shifts(d, kind)
    assert np.allclose(calc_displacement_from_relion_shifts(shifts, kind), d)
    assert np.allclose(shifts[:, 1], d[:, 1] if kind == "tiff" else -d[:, 1])
