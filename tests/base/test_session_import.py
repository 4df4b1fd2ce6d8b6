"""`appion session import`: exposures registered Leginon-style, idempotent, robust to bad and half-written files."""
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from appion.base.db import models as m
from appion.base.simulate import MovieParams, calc_movie
from appion.base.simulate_store import write_movie_tiff, write_simulated_session
from appion.cli import main as appion_main
from tests.conftest import SHARED

SMALL = MovieParams(shape=(128, 160), n_frames=6, dose_per_frame_e_per_A2=1.5, drift_total_px=3.0, gain_sigma=0.1,
                    pixel_size_A=1.0)


@pytest.fixture(scope="module")
def sim20(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim20")
    write_simulated_session(out, 20, SMALL, fmt="both", name="s20")
    return out


def _import(frames_dir, name="s20", apix="1.0", extra=()):
    return appion_main(["session", "import", "--name", name, "--frames-dir", str(frames_dir), "--apix", apix,
                        "--kv", "300", "--cs", "2.7", "--dose", "9", *extra])


def _exposures(name):
    session = m.SessionData.objects.get(name=name)
    return session, list(m.AcquisitionImageData.objects.filter(session_id=session.id).order_by("id"))


def test_twenty_movies_become_twenty_exposures(db, sim20, tmp_path):
    frames = tmp_path / "frames"
    shutil.copytree(sim20 / "frames", frames)
    assert _import(frames, extra=["--gain", str(sim20 / "gain.mrc")]) == 0
    session, images = _exposures("s20")
    assert len(images) == 20
    assert session.frame_path == str(frames)
    for img in images:
        cam = m.CameraEMData.objects.get(id=img.camera_id)
        preset = m.PresetData.objects.get(id=img.preset_id)
        scope = m.ScopeEMData.objects.get(id=img.scope_id)
        cal = m.PixelSizeCalibrationData.objects.filter(magnification=preset.magnification, tem_id=preset.tem_id,
                                                        ccdcamera_id=preset.ccdcamera_id).order_by("-id").first()
        tem = m.InstrumentData.objects.get(id=scope.tem_id)
        assert cal.pixelsize == pytest.approx(1.0e-10)
        assert preset.dose == pytest.approx(9 * 1e20)  # e/Å² stored per m²
        assert scope.high_tension == 300000
        assert tem.cs == pytest.approx(2.7e-3)
        assert cam.nframes == 6 and (cam.dimension_x, cam.dimension_y) == (160, 128)
        assert (frames / cam.frames_name).exists() and cam.frames_name.startswith(img.filename + ".frames.")
        norm = m.NormImageData.objects.get(id=img.norm_id)
        gain_copy = Path(session.image_path) / norm.image
        with mrcfile.open(gain_copy) as g, mrcfile.open(sim20 / "gain.mrc") as orig:
            np.testing.assert_array_equal(g.data, orig.data)
    # Importing again registers nothing twice.
    assert _import(frames, extra=["--gain", str(sim20 / "gain.mrc")]) == 0
    assert len(_exposures("s20")[1]) == 20
    assert m.SessionData.objects.filter(name="s20").count() == 1
    assert m.NormImageData.objects.count() == 1


def test_file_metadata_wins_over_flags(db, tmp_path):
    frames = tmp_path / "frames"
    write_simulated_session(tmp_path, 2, SMALL, fmt="both", name="meta")  # MRC header says 1.0 Å
    tif = sorted(frames.glob("*.tif"))[0]
    mrc = sorted(frames.glob("*.mrc"))[0]
    (frames / f"{tif.name}.mdoc").write_text("Voltage = 200\n\n[FrameSet = 0]\nExposureDose = 33.5\n"
                                             "PixelSpacing = 0.83\nNumSubFrames = 6\nDefocus = -1.5\n")
    assert _import(frames, name="meta", apix="1.7") == 0
    _, images = _exposures("meta")
    by_name = {m.CameraEMData.objects.get(id=i.camera_id).frames_name: i for i in images}

    def facts(img):
        preset = m.PresetData.objects.get(id=img.preset_id)
        scope = m.ScopeEMData.objects.get(id=img.scope_id)
        cal = m.PixelSizeCalibrationData.objects.filter(magnification=preset.magnification).order_by("-id").first()
        return cal.pixelsize * 1e10, preset.dose / 1e20, scope.high_tension, scope.defocus

    apix, dose, ht, defocus = facts(by_name[tif.name])
    assert (apix, dose, ht) == (pytest.approx(0.83), pytest.approx(33.5), 200000)
    assert defocus == pytest.approx(-1.5e-6)
    apix, dose, ht, _ = facts(by_name[mrc.name])
    assert (apix, dose, ht) == (pytest.approx(1.0), pytest.approx(9.0), 300000)  # MRC header beats --apix 1.7


def test_epu_xml_next_to_movie(db, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    stem = "FoilHole_9028219_Data_9017354_50_20250109_062624"
    frames_arr, _ = calc_movie(replace(SMALL, gain_sigma=0.0))
    write_movie_tiff(frames / f"{stem}_fractions.tiff", frames_arr)
    shutil.copy(SHARED / "fixtures" / "epu" / f"{stem}.xml", frames / f"{stem}.xml")
    assert _import(frames, name="epu", apix="2.0") == 0
    _, images = _exposures("epu")
    assert len(images) == 1 and images[0].filename == f"{stem}_fractions"
    preset = m.PresetData.objects.get(id=images[0].preset_id)
    cal = m.PixelSizeCalibrationData.objects.filter(magnification=preset.magnification).order_by("-id").first()
    assert preset.magnification == 165000
    assert cal.pixelsize * 1e10 == pytest.approx(1.0558814, abs=1e-6)
    assert preset.dose / 1e20 == pytest.approx(14.1539, abs=1e-3)


def test_bad_files_are_reported_by_name_and_skipped(db, tmp_path, capsys):
    write_simulated_session(tmp_path, 3, SMALL, fmt="tiff", name="bad")
    frames = tmp_path / "frames"
    good = sorted(frames.glob("*.tif"))[0].read_bytes()
    (frames / "bad_00090en.frames.tif").write_bytes(good[: len(good) // 2])  # truncated
    (frames / "bad_00091en.frames.mrc").write_bytes(b"this is not an MRC file at all" * 40)  # unreadable
    assert _import(frames, name="bad") == 0
    err = capsys.readouterr().err
    assert "bad_00090en.frames.tif" in err and "bad_00091en.frames.mrc" in err
    _, images = _exposures("bad")
    assert sorted(i.filename for i in images) == ["bad_00001en", "bad_00002en", "bad_00003en"]


def _count_exposures(home: Path) -> int:
    con = sqlite3.connect(home / "appion.sqlite3", timeout=30)
    try:
        return con.execute("SELECT COUNT(*) FROM AcquisitionImageData").fetchone()[0]
    finally:
        con.close()


def _wait_for(predicate, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_watch_registers_new_and_never_half_written(fresh_home, tmp_path):
    home, env = fresh_home
    frames = tmp_path / "frames"
    frames.mkdir()
    proc = subprocess.Popen(["appion", "session", "import", "--name", "w", "--frames-dir", str(frames), "--apix", "1",
                             "--kv", "300", "--cs", "2.7", "--dose", "9", "--watch", "--interval", "0.2",
                             "--settle", "1.0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        movie, _ = calc_movie(replace(SMALL, gain_sigma=0.0, shape=(256, 256), n_frames=8))
        write_movie_tiff(frames / "w_00001en.frames.tif", movie)
        assert _wait_for(lambda: _count_exposures(home) == 1, 20), "a movie written after the watcher started"
        # A slow writer: pauses longer than --settle while the file is incomplete.
        buf = io.BytesIO()
        with tifffile.TiffWriter(buf) as tif:
            for frame in movie:
                tif.write(frame, compression="lzw", contiguous=False)
        data = buf.getvalue()
        target = frames / "w_00002en.frames.tif"
        cuts = [len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data)]
        with open(target, "wb") as fh:
            start = 0
            for cut in cuts[:-1]:
                fh.write(data[start:cut])
                fh.flush()
                os.fsync(fh.fileno())
                start = cut
                time.sleep(2.0)
                assert _count_exposures(home) == 1, f"half-written movie registered at {cut} of {len(data)} bytes"
            fh.write(data[start:])
        assert _wait_for(lambda: _count_exposures(home) == 2, 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "registered" in out
