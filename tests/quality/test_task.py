"""The worker side: the image CTF used is measured (sanity, tilt, ice); a broken sum is reported, not measured."""
import numpy as np

from appion.base.exposure import ExposureInput
from appion.base.simulate.calc import MicrographParams, calc_micrograph
from appion.base.simulate.store import write_mrc
from appion.base.steps import StepInput
from appion.ctfestimation.records import CtfDone
from appion.motioncorrection.records import AlignedImage
from appion.quality.records import QualitySettings
from appion.quality.task import calc_tile_count, describe_quality_record, run_quality_task


def _task(tmp_path, name, pixel_A, ctf):
    inp = ExposureInput(image_id=7, filename=name, movie_path="", image_dir=str(tmp_path), preset_name="en",
                        pixel_size_A=pixel_A, voltage_kV=300, cs_mm=2.7, dose_e_per_A2=40.0, n_frames=40,
                        gain_path=None, dark_path=None, frame_rotate=0, frame_flip=0, defects=(None, None, None),
                        nominal_defocus_m=None, tilt_deg=0.0, arrived=0.0)
    return StepInput(inp, {"motion": AlignedImage(7, 8, f"{name}-a-DW", pixel_A, 9), "ctf": ctf}, str(tmp_path))


def test_measures_the_aligned_image(tmp_path):
    p = MicrographParams(shape=(1024, 1024), pixel_size_A=1.5, defocus1_A=18300, defocus2_A=17700,
                         tilt_deg=22.0, tilt_axis_deg=70.0, ice_thickness_nm=60.0, seed=3)
    image, _ = calc_micrograph(p)
    write_mrc(tmp_path / "t1-a-DW.mrc", image, 1.5)
    record = run_quality_task(_task(tmp_path, "t1", 1.5, CtfDone(7, 8, 18300.0, 17700.0, 4.5)), QualitySettings())
    assert record.source_id == 7 and record.image_id == 8 and record.image_problem is None
    assert abs(record.tilt_deg - 22.0) < 3.0 and abs((record.tilt_axis_deg - 70.0 + 180) % 360 - 180) < 10
    assert 1.2 < record.ice_thickness < 1.6 and record.crystalline_ice is False
    assert record.tilt_note is None and record.ice_note is None
    assert "tilt 2" in describe_quality_record(record)
    # no usable CTF fit: no tilt, and why
    poor = run_quality_task(_task(tmp_path, "t1", 1.5, CtfDone(7, 8, 18300.0, 17700.0, 100000.0)), QualitySettings())
    assert poor.tilt_deg is None and "too poor" in poor.tilt_note and poor.ice_thickness is not None


def test_broken_sum_is_reported(tmp_path):
    write_mrc(tmp_path / "t2-a-DW.mrc", np.zeros((512, 512), np.float32), 1.0)
    record = run_quality_task(_task(tmp_path, "t2", 1.0, None), QualitySettings())
    assert record.image_problem == "blank image: every pixel is 0 (an all-black sum)"
    assert record.tilt_deg is None and record.ice_thickness is None
    assert "all-black" in describe_quality_record(record)


def test_tile_count():
    assert calc_tile_count((1024, 1024), 1.0, 0) == 3
    assert calc_tile_count((4092, 5760), 0.83, 0) == 5
    assert calc_tile_count((1024, 1024), 1.0, 4) == 4
