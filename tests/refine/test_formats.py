"""The refinement programs' input formats (pure)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from appion.refine.calc import formats as F

OPTICS = F.Optics(pixel_size_A=2.0, image_size_px=8, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)


def test_versions_and_help_options():
    assert F.calc_version_tuple("RELION version: 3.1.3 \nPrecision: BASE=double") == (3, 1, 3)
    assert F.calc_version_tuple("4.0-beta-2") == (4, 0)
    assert F.calc_relion_has_optics((3, 1)) and F.calc_relion_has_optics((5, 0, 1))
    assert not F.calc_relion_has_optics((3, 0, 8)) and not F.calc_relion_has_optics((2,))
    with pytest.raises(F.FormatError):
        F.calc_version_tuple("unknown")
    text = "  --i () : Input images\n   --iter (50) : Maximum\n====== x =====\n --ctf (false) : CTF\n"
    assert F.parse_help_options(text) == {"--i", "--iter", "--ctf"}


def test_relion_tables():
    names = ["000001@/s.mrcs", "000002@/s.mrcs"]
    ctf = [F.ParticleCtf(15000.0, 14500.0, 30.0), F.ParticleCtf(16000.0, 15500.0, -10.0, 45.0)]
    new = F.calc_relion_tables(names, OPTICS, ctf, ["m1.mrc", "m1.mrc"], (3, 1, 3))
    assert list(new["optics"].columns) == ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize",
                                           "rlnImageSize", "rlnImageDimensionality", "rlnVoltage",
                                           "rlnSphericalAberration", "rlnAmplitudeContrast"]
    assert new["particles"]["rlnPhaseShift"].tolist() == [0.0, 45.0]
    assert new["particles"]["rlnOpticsGroup"].tolist() == [1, 1]
    old = F.calc_relion_tables(names, OPTICS, None, None, (3, 0))
    assert list(old) == ["particles"] and "rlnDefocusU" not in old["particles"]
    assert old["particles"]["rlnDetectorPixelSize"].tolist() == [2.0, 2.0]
    no_amp = F.Optics(2.0, 8, 300.0, 2.7, None)
    assert "rlnAmplitudeContrast" not in F.calc_relion_tables(names, no_amp, None, None, (3, 1))["optics"]
    with pytest.raises(F.FormatError, match="amplitude contrast"):
        F.calc_relion_tables(names, no_amp, ctf, None, (3, 1))
    with pytest.raises(F.FormatError, match="1 CTF records for 2"):
        F.calc_relion_tables(names, OPTICS, ctf[:1], None, (3, 1))


def test_imagic_chunks_equal_the_whole_and_read_back():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 6, 6)).astype(np.float32)
    when = time.localtime(0)
    hed, img = F.calc_imagic_files(images, when)
    h1, i1 = F.calc_imagic_files(images[:2], when, first=1, total=5)
    h2, i2 = F.calc_imagic_files(images[2:], when, first=3, total=5)
    assert (h1 + h2, i1 + i2) == (hed, img)
    np.testing.assert_array_equal(F.read_imagic_bytes(hed, img), images)
    words = np.frombuffer(hed, "<i4").reshape(5, 256)
    assert words[:, 1].tolist() == [4, 0, 0, 0, 0] and set(words[:, 68]) == {F.IMAGIC_MACHINE_STAMP_LITTLE_ENDIAN}
    assert np.frombuffer(hed, "<f4").reshape(5, 256)[2, 17] == pytest.approx(images[2].mean(), abs=1e-6)
    first_line = np.frombuffer(img[:24], "<f4")
    np.testing.assert_array_equal(first_line, images[0, -1])  # IMAGIC lines run top-down: MRC's last row first
    with pytest.raises(F.FormatError, match="outside a stack of 5"):
        F.calc_imagic_files(images[:2], when, first=5, total=5)


def test_frealign_and_xmipp_text():
    text = F.calc_frealign_mparameters([("Voltage", 300), ("parameter_mask", '"1 1 1 1 1"')])
    assert text.splitlines() == ["Voltage                 300", 'parameter_mask          "1 1 1 1 1"']
    with pytest.raises(F.FormatError, match="raw_images must be one word"):
        F.calc_frealign_mparameters([("raw_images", "/a b/c.mrc")])
    with pytest.raises(F.FormatError, match="DF1"):
        F.calc_frealign_par([F.ParticleCtf(1e12, 1.0, 0.0)])
    xmd = F.calc_xmipp_metadata(["1@/s.mrcs"], OPTICS, [F.ParticleCtf(15000.0, 14000.0, 10.0)])
    assert xmd.splitlines()[-1].split() == ["1@/s.mrcs", "1", "15000.00", "14000.00", "10.000", "300", "2.7", "0.1",
                                            "2"]
    with pytest.raises(F.FormatError, match="white space"):
        F.calc_xmipp_metadata(["1@/a b.mrcs"], None, None)
