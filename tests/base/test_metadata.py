"""SerialEM .mdoc and EPU .xml parsing against real files."""
import math

import pytest

from appion.base.io.metadata import MetadataError, calc_sidecar_names, parse_epu_xml, parse_mdoc
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


# A tilt-series style mdoc (SerialEM writes `[T = ...]` title lines before the first [ZValue] section).
TILT_SERIES_MDOC = """PixelSpacing = 5.4
ImageFile = TS_09.mrc
DataMode = 1

[T = SerialEM: Digitized on some Krios    30-Nov-15  15:14:20    ]

[T =     Tilt axis angle = 85.3, binning = 4  spot = 8  camera = 2]

[ZValue = 0]
TiltAngle = -3.0
Magnification = 105000
ExposureDose = 2.5
PixelSpacing = 1.35
Defocus = -2.5
NumSubFrames = 8

[ZValue = 1]
TiltAngle = 3.0
ExposureDose = 9.9
"""


def test_title_lines_are_not_sections():
    meta = parse_mdoc(TILT_SERIES_MDOC)
    assert meta.pixel_size_A == pytest.approx(1.35)  # from the first ZValue section, not the global 5.4
    assert meta.dose_e_per_A2 == pytest.approx(2.5) and meta.n_frames == 8 and meta.magnification == 105000
    assert meta.tilt_rad == pytest.approx(math.radians(-3.0)) and meta.defocus_m == pytest.approx(-2.5e-6)


def test_nonsense_values_are_unknown_not_stored():
    meta = parse_mdoc("Voltage = nan\n[FrameSet = 0]\nPixelSpacing = -1\nExposureDose = inf\nNumSubFrames = 0\n"
                      "Magnification = lots\nExposureTime = 1e400\n")
    assert (meta.voltage_V, meta.pixel_size_A, meta.dose_e_per_A2, meta.n_frames, meta.magnification,
            meta.exposure_time_s) == (None, None, None, None, None, None)


def test_epu_xml_bytes_with_declaration_and_broken_xml():
    data = (FIX / "epu" / "FoilHole_9028219_Data_9017354_50_20250109_062624.xml").read_bytes()
    if not data.lstrip().startswith(b"<?xml"):
        data = b'<?xml version="1.0" encoding="utf-8"?>\n' + data
    assert parse_epu_xml(data).pixel_size_A == pytest.approx(1.0558814239614023)
    with pytest.raises(MetadataError, match="broken.xml: not valid EPU XML"):
        parse_epu_xml(data[: len(data) // 2], source="broken.xml")
