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
from appion.base.simulate.calc import MovieParams, calc_movie
from appion.base.simulate.store import write_movie_tiff, write_mrc, write_simulated_session
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
    # The XML says 50 fractions: a movie holding 50 frames is registered (the frame count matches its metadata).
    frames_arr, _ = calc_movie(replace(SMALL, gain_sigma=0.0, shape=(64, 64), n_frames=50))
    write_movie_tiff(frames / f"{stem}_fractions.tiff", frames_arr)
    shutil.copy(SHARED / "fixtures" / "epu" / f"{stem}.xml", frames / f"{stem}.xml")
    assert _import(frames, name="epu", apix="2.0") == 0
    _, images = _exposures("epu")
    assert m.CameraEMData.objects.get(id=images[0].camera_id).nframes == 50
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
    """--watch: a movie written after it started is registered, one written slowly is not registered half-written;
    one renamed into place is registered; one deleted before settling causes no error; a stable undecodable file is
    reported once (not on every pass) and registered once a good movie replaces it; SIGTERM ends it cleanly."""
    home, env = fresh_home
    frames = tmp_path / "frames"
    frames.mkdir()
    bad = frames / "w_00009en.frames.mrc"
    bad.write_bytes(b"garbage that is not an MRC movie" * 64)
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
        doomed = frames / "w_00004en.frames.tif"
        doomed.write_bytes(data[: len(data) // 3])
        with open(target, "wb") as fh:
            start = 0
            for cut in cuts[:-1]:
                fh.write(data[start:cut])
                fh.flush()
                os.fsync(fh.fileno())
                start = cut
                time.sleep(2.0)
                assert _count_exposures(home) == 1, f"half-written movie registered at {cut} of {len(data)} bytes"
                if doomed.exists():
                    doomed.unlink()  # gone before it could settle... or after it was reported; both are fine
            fh.write(data[start:])
        assert _wait_for(lambda: _count_exposures(home) == 2, 20)
        hidden = frames / ".incoming.tif"
        write_movie_tiff(hidden, movie[:4])
        os.rename(hidden, frames / "w_00003en.frames.tif")
        assert _wait_for(lambda: _count_exposures(home) == 3, 20), "a movie renamed into place"
        assert proc.poll() is None
        write_mrc(bad, movie[:3].astype(np.uint16), 1.0)
        assert _wait_for(lambda: _count_exposures(home) == 4, 20), "the bad file, once replaced by a good movie"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "registered" in out and "stopped watching; 4 exposures registered" in out
    reports = [line for line in err.splitlines() if line.startswith("refused") and "w_00009en.frames.mrc" in line]
    assert len(reports) == 1, err  # reported once although stable for many passes
    assert "unreadable MRC header" in reports[0]
    assert "Traceback" not in err


def test_broken_sidecars_are_reported_and_ignored(db, tmp_path, caplog):
    """An unparsable EPU XML or an unreadable .mdoc must not cost the movie: it imports with the flags."""
    write_simulated_session(tmp_path, 2, SMALL, fmt="tiff", name="side")
    frames = tmp_path / "frames"
    first, second = sorted(frames.glob("*.tif"))
    (frames / f"{first.name[:-4]}.xml").write_text("<MicroscopeImage><broken")
    (frames / f"{second.name}.mdoc").mkdir()  # exists but cannot be read as a file
    with caplog.at_level("WARNING", logger="appion.session"):
        assert _import(frames, name="side", apix="1.25") == 0
    _, images = _exposures("side")
    assert len(images) == 2
    for img in images:
        preset = m.PresetData.objects.get(id=img.preset_id)
        cal = m.PixelSizeCalibrationData.objects.filter(magnification=preset.magnification).order_by("-id").first()
        assert cal.pixelsize * 1e10 == pytest.approx(1.25) and preset.dose / 1e20 == pytest.approx(9.0)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"{first.name[:-4]}.xml" in warned and f"{second.name}.mdoc" in warned


@pytest.mark.parametrize("problem", ["missing frames", "missing gain", "bad gain", "bad dose"])
def test_bad_arguments_are_one_line_and_exit_2(db, tmp_path, capsys, problem):
    frames = tmp_path / "frames"
    frames.mkdir()
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"no")
    extra, expect = {"missing frames": ([], "frames directory"),
                     "missing gain": (["--gain", str(tmp_path / "nope.mrc")], "nope.mrc"),
                     "bad gain": (["--gain", str(junk)], "junk.mrc"),
                     "bad dose": ([], "--dose must be a positive number")}[problem]
    argv = ["session", "import", "--name", "e", "--frames-dir", str(frames if problem != "missing frames" else
                                                                    tmp_path / "absent"),
            "--apix", "1", "--kv", "300", "--cs", "2.7", "--dose", "-3" if problem == "bad dose" else "9", *extra]
    assert appion_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and err[0].startswith("appion: error:")
    assert not m.AcquisitionImageData.objects.exists()


def test_two_importers_at_once_register_each_movie_once(fresh_home, tmp_path):
    """Two `session import` processes on one directory and one SQLite file: no duplicates, no lock errors."""
    home, env = fresh_home
    write_simulated_session(tmp_path, 12, replace(SMALL, gain_sigma=0.0, shape=(64, 64), n_frames=3), fmt="both",
                            name="twice")
    cmd = ["appion", "session", "import", "--name", "twice", "--frames-dir", str(tmp_path / "frames"), "--apix",
           "1", "--kv", "300", "--cs", "2.7", "--dose", "9"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "skipped" not in err, err
    assert _count_exposures(home) == 12
    con = sqlite3.connect(home / "appion.sqlite3", timeout=30)
    try:
        assert con.execute("SELECT COUNT(*) FROM SessionData").fetchone()[0] == 1
        assert con.execute("SELECT COUNT(*) FROM CameraEMData").fetchone()[0] == 12
        assert con.execute("SELECT COUNT(*) FROM InstrumentData").fetchone()[0] == 2  # one TEM, one camera
    finally:
        con.close()
    assert sum(int(o.split(": ")[1].split()[0]) for o, _ in outs) == 12  # "N new exposures" adds up


def test_a_stop_request_ends_a_pass_between_movies(db, tmp_path):
    """SIGTERM during a long pass (watch mode) stops after the movie being registered, never inside one."""
    from appion.base.session.commands import import_pass
    from appion.base.session.retrieve import find_movie_files
    from appion.base.session.store import ImportSettings, store_session

    write_simulated_session(tmp_path, 3, replace(SMALL, shape=(64, 64), n_frames=3), fmt="tiff", name="stop")
    settings = ImportSettings(name="stop", frames_dir=tmp_path / "frames", image_dir=tmp_path / "raw",
                              pixel_size_A=1.0, voltage_kV=300, cs_mm=2.7, dose_e_per_A2=9)
    session = store_session(settings)
    calls = []
    result = import_pass(session, settings, find_movie_files(settings.frames_dir), set(),
                         stop=lambda: calls.append(1) or len(calls) > 1)
    assert (result.new, result.known, result.refused, result.waiting) == (1, 0, [], [])
    assert [i.filename for i in _exposures("stop")[1]] == ["stop_00001en"]
    assert m.CameraEMData.objects.count() == 1 and m.ScopeEMData.objects.count() == 1


def test_settling_waiting_and_retry_rules(tmp_path):
    """The watcher's scheduling: a file is checked once unchanged for settle_s; one that may still be being written
    is checked again every settle_s and refused once unchanged for max_wait_s; a refused one waits for a change
    (then settles afresh) or for its retry time; files that vanish are forgotten."""
    from appion.base.session.watch import calc_after_check, calc_due, calc_watch_times

    times = calc_watch_times(0.5, 2.0, None)
    assert (times.settle_s, times.max_wait_s, times.retry_s) == (2.0, 20.0, 60.0)
    movie = tmp_path / "r_00001en.frames.tif"
    movie.write_bytes(b"1234")
    states = {}
    assert calc_due([movie], set(), states, times, now=0.0) == []
    assert calc_due([movie], set(), states, times, now=1.9) == []
    assert calc_due([movie], set(), states, times, now=2.0) == [movie]
    assert calc_due([movie], {"r_00001en"}, states, times, now=3.0) == [] and not states  # already registered
    assert calc_due([movie], set(), states, times, now=10.0) == []  # seen afresh
    # checked at 12: may still be being written -> checked again at 14, ..., refused once unchanged for 20 s
    state = states[movie]
    assert calc_after_check(state, "frame count mismatch", None, times, now=12.0) is None
    assert calc_due([movie], set(), states, times, now=13.9) == []
    assert calc_due([movie], set(), states, times, now=14.0) == [movie]
    assert calc_after_check(state, "frame count mismatch", None, times, now=29.0) is None
    assert state.next_check == 30.0  # not past the max wait
    reason = calc_after_check(state, "frame count mismatch", None, times, now=30.0)
    assert reason.startswith("frame count mismatch; unchanged for more than 20 s")
    assert calc_due([movie], set(), states, times, now=89.0) == []
    assert calc_due([movie], set(), states, times, now=90.0) == [movie]  # retried after retry_s
    assert calc_after_check(state, None, "unreadable header", times, now=90.0) == "unreadable header"
    movie.write_bytes(b"123456")  # changed: settles again from now
    assert calc_due([movie], set(), states, times, now=91.0) == []
    assert calc_due([movie], set(), states, times, now=93.0) == [movie]
    assert calc_due([], set(), states, times, now=94.0) == [] and not states
    with pytest.raises(ValueError, match="--max-wait"):
        calc_watch_times(0.5, 10.0, 5.0)
    with pytest.raises(ValueError, match="--settle"):
        calc_watch_times(0.5, float("nan"), None)
