"""SerialEM .mdoc and EPU .xml parsing against real files."""
import math

import pytest

from appion.base.metadata import calc_sidecar_names, parse_epu_xml, parse_mdoc
from tests.conftest import SHARED

FIX = SHARED / "fixtures"


def test_serialem_frame_set_mdoc():
    meta = parse_mdoc((FIX / "serialem" / "frame_set_single.mdoc").read_text())
    assert meta.pixel_size_A == pytest.approx(1.2827)
    assert meta.voltage_V == 300000
    assert meta.dose_e_per_A2 == pytest.approx(7.65892)
    assert meta.n_frames == 12 and meta.magnification == 33000
    assert meta.defocus_m == pytest.approx(-5.08286e-6)
    assert meta.tilt_rad == pytest.approx(math.radians(32.984))
    assert meta.exposure_time_s == pytest.approx(1.07856)
    assert meta.gain_name == "SuperRef_s_mmm_00000_-15.0_Oct08_01.59.24.dm4"


def test_mdoc_with_zero_dose_leaves_dose_unknown():
    meta = parse_mdoc((FIX / "serialem" / "SEMTest_000_03.35.19.mrc.mdoc").read_text())
    assert meta.dose_e_per_A2 is None and meta.n_frames == 15


def test_epu_xml():
    meta = parse_epu_xml((FIX / "epu" / "FoilHole_9028219_Data_9017354_50_20250109_062624.xml").read_text())
    assert meta.pixel_size_A == pytest.approx(1.0558814239614023)
    assert meta.voltage_V == 300000
    assert meta.dose_e_per_A2 == pytest.approx(14.153900519147831)
    assert meta.n_frames == 50 and meta.magnification == 165000
    assert meta.defocus_m == pytest.approx(-1.5e-6)
    assert meta.camera_name == "BioQuantum K3"


def test_sidecar_names():
    assert calc_sidecar_names("a.tif") == ["a.tif.mdoc", "a.mdoc", "a.xml"]
    assert "FoilHole_1_Data_2.xml" in calc_sidecar_names("FoilHole_1_Data_2_fractions.tiff")
    assert "FoilHole_1_Data_2.xml" in calc_sidecar_names("FoilHole_1_Data_2_EER.eer")
