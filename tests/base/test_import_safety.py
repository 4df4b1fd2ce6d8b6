"""`appion session import` refuses what is not safe to register, says why, and survives a database outage.

Half-written movies (a TIFF written a page at a time decodes after every page), hostile session names,
inconsistent metadata (frame counts, gain sizes, the gain itself among the movies), and a way to fix a session's
gain.  Refusals are one specific line each and rows in ApImportRefusalData (read by `appion status`).
"""
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from appion.base.db import models as m
from appion.base.io.movies.common import MovieHeader
from appion.base.session.checks import calc_gain_fits
from appion.base.session.retrieve import retrieve_import_refusals
from appion.base.simulate.calc import MovieParams, calc_movie
from appion.base.simulate.store import write_movie_tiff, write_mrc
from appion.cli import build_parser
from appion.cli import main as appion_main
from tests.conftest import write_mariadb_config

SMALL = MovieParams(shape=(64, 64), n_frames=8, dose_per_frame_e_per_A2=1.5, drift_total_px=2.0, gain_sigma=0.0,
                    pixel_size_A=1.0)


def _movie(n_frames=8, shape=(64, 64), seed=0) -> np.ndarray:
    frames, _ = calc_movie(replace(SMALL, n_frames=n_frames, shape=shape, seed=seed))
    return frames


def _mdoc(path: Path, n_frames: int, gain: str | None = None, dose: float = 12.0) -> None:
    extra = f"GainReference = {gain}\n" if gain else ""
    path.with_name(path.name + ".mdoc").write_text(
        f"Voltage = 300\n\n[FrameSet = 0]\nExposureDose = {dose}\nPixelSpacing = 1.0\nNumSubFrames = {n_frames}\n"
        f"{extra}")


def _import(frames_dir, name="safe", extra=()):
    return appion_main(["session", "import", "--name", name, "--frames-dir", str(frames_dir), "--apix", "1.0",
                        "--kv", "300", "--cs", "2.7", "--dose", "9", *extra])


def _images(name="safe"):
    session = m.SessionData.objects.filter(name=name).first()
    if session is None:
        return None, []
    return session, list(m.AcquisitionImageData.objects.filter(session_id=session.id).order_by("id"))


def _refused_lines(err: str) -> dict[str, str]:
    """stderr `refused PATH: REASON` lines -> {file name: reason}."""
    out = {}
    for line in err.splitlines():
        if line.startswith("refused "):
            path, reason = line[len("refused "):].split(": ", 1)
            out[Path(path).name] = reason
    return out


# ------------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("hostile", ["../../escape_sess", "/tmp/x", "..", "a/b", "", ".hidden"])
def test_hostile_session_names_are_refused(db, tmp_path, capsys, hostile):
    frames = tmp_path / "frames"
    frames.mkdir()
    write_movie_tiff(frames / "n_00001en.frames.tif", _movie(3))
    assert _import(frames, name=hostile) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("appion: error: --name")
    assert ("--name is empty" if hostile == "" else "is not a plain name") in err[0]
    assert not m.SessionData.objects.exists() and not m.AcquisitionImageData.objects.exists()
    base = db.appion_base
    for near in (base.parent / "escape_sess", base.parent.parent / "escape_sess", base.parent.parent.parent
                 / "escape_sess", Path("/tmp/x/rawdata")):
        assert not near.exists()
    assert appion_main(["session", "set-gain", "--name", hostile, "--gain", str(tmp_path / "g.mrc")]) == 2
    assert "--name" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- frame counts
def test_frame_count_must_match_the_metadata(db, tmp_path, capsys):
    """An mdoc saying 16 next to an 8-frame TIFF (or 4): refused with both counts and the mdoc named, never
    registered with a dose per frame from the wrong count; saying 8: registered with the mdoc's dose."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, said in ((1, 16), (2, 4), (3, 8)):
        path = frames / f"fc_{i:05d}en.frames.tif"
        write_movie_tiff(path, _movie(8, seed=i))
        _mdoc(path, said)
    assert _import(frames) == 0
    out, err = capsys.readouterr()
    refused = _refused_lines(err)
    assert set(refused) == {"fc_00001en.frames.tif", "fc_00002en.frames.tif"}, err
    assert ("frame count mismatch: the file holds 8 frames but fc_00001en.frames.tif.mdoc says 16"
            in refused["fc_00001en.frames.tif"])
    assert "holds 8 frames but fc_00002en.frames.tif.mdoc says 4" in refused["fc_00002en.frames.tif"]
    assert "1 new exposures" in out and "2 refused" in out
    session, images = _images()
    assert [i.filename for i in images] == ["fc_00003en"]
    cam = m.CameraEMData.objects.get(id=images[0].camera_id)
    preset = m.PresetData.objects.get(id=images[0].preset_id)
    assert cam.nframes == 8 and preset.dose / 1e20 == pytest.approx(12.0)
    rows = {Path(r.path).name: r for r in retrieve_import_refusals(session.id)}
    assert set(rows) == set(refused) and rows["fc_00001en.frames.tif"].reason == refused["fc_00001en.frames.tif"]


def test_refusals_are_specific_recorded_counted_and_cleared(db, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    good = frames / "rf_00001en.frames.tif"
    write_movie_tiff(good, _movie(6))
    data = good.read_bytes()
    cut = frames / "rf_00002en.frames.tif"
    cut.write_bytes(data[: len(data) // 2])
    (frames / "rf_00003en.frames.mrc").write_bytes(b"this is not an MRC file at all" * 40)
    write_mrc(frames / "single.mrc", _movie(1)[0].astype(np.float32), 1.0)
    (frames / "rf_00005en.frames.tif").write_bytes(b"not a tiff either" * 10)
    assert _import(frames) == 0
    err = capsys.readouterr().err
    refused = _refused_lines(err)
    assert len([ln for ln in err.splitlines() if ln.startswith("refused ")]) == 4  # one line per refusal
    assert refused["rf_00002en.frames.tif"].startswith("truncated")
    assert refused["rf_00003en.frames.mrc"].startswith("unreadable MRC header")
    assert refused["single.mrc"].startswith("holds a single 64x64 image, not a movie")
    assert refused["rf_00005en.frames.tif"].startswith("unreadable header: not a TIFF file")
    session, images = _images()
    assert [i.filename for i in images] == ["rf_00001en"]
    first = {Path(r.path).name: r for r in retrieve_import_refusals(session.id)}
    assert {n: r.reason for n, r in first.items()} == refused and all(r.count == 1 for r in first.values())
    time.sleep(0.05)
    cut.write_bytes(data)  # the writer finished
    assert _import(frames) == 0
    again = {Path(r.path).name: r for r in retrieve_import_refusals(session.id)}
    assert set(again) == set(refused) - {"rf_00002en.frames.tif"}  # registered now: no longer refused
    for name, row in again.items():
        assert row.count == 2 and row.first_seen == first[name].first_seen and row.last_seen > first[name].last_seen
    assert [i.filename for i in _images()[1]] == ["rf_00001en", "rf_00002en"]


# --------------------------------------------------------------------------------------------------- gains
def test_a_wrong_size_gain_fails_before_anything_is_registered(db, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        write_movie_tiff(frames / f"g_{i + 1:05d}en.frames.tif", _movie(4, shape=(64, 96), seed=i))
    half = tmp_path / "half.mrc"  # 32x48: a 2x smaller gain is never upsampled for TIFF frames
    write_mrc(half, np.ones((32, 48), np.float32), 1.0)
    assert _import(frames, extra=["--gain", str(half)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "half.mrc" in err[0] and "frames are 64x96" in err[0] and "gain on disk is 32x48" in err[0]
    assert "upsampled only for EER" in err[0]
    assert not m.SessionData.objects.exists() and not m.AcquisitionImageData.objects.exists()
    turned = tmp_path / "turned.mrc"  # stored a quarter turn off: the message says which rotation fits
    write_mrc(turned, np.ones((96, 64), np.float32), 1.0)
    assert _import(frames, extra=["--gain", str(turned)]) == 2
    err = capsys.readouterr().err
    assert "gain on disk is 96x64" in err and "WOULD match" in err and "rotate=1 flip=0" in err
    assert _import(frames, extra=["--gain", str(turned), "--frame-rotate", "1"]) == 0
    assert len(_images()[1]) == 2


def test_gain_rule_at_import_upsamples_only_for_eer():
    tiff = MovieHeader("m.tif", "tiff", 8, 8, (64, 64), "uint8", None)
    eer = MovieHeader("m.eer", "eer", 8, 8, (64, 64), "uint16", None)
    assert calc_gain_fits((64, 64), tiff, 0) and not calc_gain_fits((32, 32), tiff, 0)
    assert not calc_gain_fits((128, 128), tiff, 0)
    assert calc_gain_fits((64, 64), eer, 0) and calc_gain_fits((128, 128), eer, 0)  # physical or super-res gain
    assert calc_gain_fits((256, 256), eer, 0) and not calc_gain_fits((32, 32), eer, 0)
    assert calc_gain_fits((96, 64), MovieHeader("m.tif", "tiff", 8, 8, (64, 96), "uint8", None), 1)


def test_references_in_the_frames_directory_are_not_exposures(db, tmp_path, capsys):
    """The --gain file itself, files named like references and an mdoc-named gain are never registered; a gain
    named by a movie's mdoc that does not fit its frames refuses that movie (gain shape mismatch)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    ones = np.ones((64, 64), np.float32)
    write_mrc(frames / "gain.mrc", ones, 1.0)
    write_mrc(frames / "CountRef_grid1.mrc", ones, 1.0)
    tifffile.imwrite(frames / "20250108_dark.tif", np.zeros((64, 64), np.uint8))
    write_mrc(frames / "K3_gain_small.mrc", np.ones((32, 32), np.float32), 1.0)
    write_movie_tiff(frames / "ref_00001en.frames.tif", _movie(4, seed=1))
    named = frames / "ref_00002en.frames.tif"
    write_movie_tiff(named, _movie(4, seed=2))
    _mdoc(named, 4, gain="K3_gain_small.mrc")
    assert _import(frames, extra=["--gain", str(frames / "gain.mrc")]) == 0
    err = capsys.readouterr().err
    refused = _refused_lines(err)
    assert list(refused) == ["ref_00002en.frames.tif"], err
    assert refused["ref_00002en.frames.tif"].startswith("gain shape mismatch:") and "K3_gain_small.mrc" in err
    assert "frames are 64x64 (y x), gain on disk is 32x32" in refused["ref_00002en.frames.tif"]
    _, images = _images()
    assert [i.filename for i in images] == ["ref_00001en"]
    norm = m.NormImageData.objects.get(id=images[0].norm_id)
    assert norm.image == "gain.mrc"


def test_set_gain_replaces_the_gain_of_unprocessed_exposures(db, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        write_movie_tiff(frames / f"sg_{i + 1:05d}en.frames.tif", _movie(4, seed=i))
    old = tmp_path / "old" / "gain.mrc"
    new = tmp_path / "new" / "gain.mrc"  # the same file name, other values: must not be mistaken for the old
    old.parent.mkdir()
    new.parent.mkdir()
    write_mrc(old, np.full((64, 64), 1.0, np.float32), 1.0)
    write_mrc(new, np.full((64, 64), 1.25, np.float32), 1.0)
    assert _import(frames, extra=["--gain", str(old)]) == 0
    session, images = _images()
    old_norm = images[0].norm_id
    assert {i.norm_id for i in images} == {old_norm}
    m.ApDDAlignImagePairData.objects.create(source_id=images[0].id, result_id=images[0].id)  # processed
    wrong = tmp_path / "wrong.mrc"
    write_mrc(wrong, np.ones((32, 32), np.float32), 1.0)
    capsys.readouterr()
    assert appion_main(["session", "set-gain", "--name", "safe", "--gain", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "wrong.mrc" in err and "frames are 64x64" in err and "gain on disk is 32x32" in err
    assert {i.norm_id for i in _images()[1]} == {old_norm}  # nothing changed
    assert appion_main(["session", "set-gain", "--name", "safe", "--gain", str(new)]) == 0
    assert "now used by 2 exposures" in capsys.readouterr().out
    images = _images()[1]
    assert images[0].norm_id == old_norm
    assert images[1].norm_id == images[2].norm_id != old_norm
    from appion.base.io.movies import read_gain

    for image, value in ((images[0], 1.0), (images[1], 1.25)):
        norm = m.NormImageData.objects.get(id=image.norm_id)
        assert np.all(read_gain(Path(session.image_path) / norm.image) == value)
    assert appion_main(["session", "set-gain", "--name", "nosuch", "--gain", str(new)]) == 2
    assert "session 'nosuch' not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ --watch (CLI)
class SlowTiffWriter:
    """A TIFF written a page at a time, flushed after each page (decodable after every page)."""

    def __init__(self, path: Path, frames: np.ndarray):
        self.frames = frames
        self.done = 0
        self.fh = open(path, "wb")
        self.tif = tifffile.TiffWriter(self.fh)

    def write(self, n: int) -> None:
        for frame in self.frames[self.done:self.done + n]:
            self.tif.write(frame, compression="lzw", contiguous=False)
            self.fh.flush()
            os.fsync(self.fh.fileno())
        self.done += n

    def close(self) -> None:
        self.write(len(self.frames) - self.done)
        self.tif.close()
        self.fh.close()


def _sqlite_rows(home: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(home / "appion.sqlite3", timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _nframes(home: Path) -> dict[str, int]:
    return dict(_sqlite_rows(home, "SELECT i.filename, c.nframes FROM AcquisitionImageData i JOIN CameraEMData c "
                                   "ON c.DEF_id = i.`REF|CameraEMData|camera`"))


def _wait_for(predicate, timeout_s: float, what: str, proc=None) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    assert predicate(), f"timed out waiting for {what}"


def _watch(env, frames: Path, log: Path, *extra: str, name: str = "live") -> subprocess.Popen:
    return subprocess.Popen(["appion", "session", "import", "--name", name, "--frames-dir", str(frames), "--apix",
                             "1", "--kv", "300", "--cs", "2.7", "--dose", "9", "--watch", "--interval", "0.1",
                             *extra], env=env, stdout=open(log.with_suffix(".out"), "w"), stderr=open(log, "w"),
                            start_new_session=True)


def _stop(proc: subprocess.Popen, timeout_s: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def test_settle_default_is_long_enough_for_slow_writers():
    args = build_parser().parse_args(["session", "import", "--name", "s", "--frames-dir", ".", "--apix", "1",
                                      "--kv", "300", "--cs", "2.7", "--dose", "9", "--watch"])
    assert args.settle >= 10 and args.max_wait is None  # max wait: 10 x settle


def test_watch_slow_writer_with_mdoc(fresh_home, tmp_path):
    """A movie whose mdoc says 12 frames is not registered while its TIFF has fewer pages, however long the
    writer pauses (pauses > --settle); one whose writer stalls is refused after --max-wait with the reason
    (printed once, recorded), and registered once it is finished, its refusal cleared."""
    home, env = fresh_home
    frames = tmp_path / "frames"
    frames.mkdir()
    log = tmp_path / "watch.err"
    proc = _watch(env, frames, log, "--settle", "0.3", "--max-wait", "3")
    try:
        slow = frames / "md_00001en.frames.tif"
        stalled = frames / "md_00002en.frames.tif"
        _mdoc(slow, 12)
        _mdoc(stalled, 12)
        writer = SlowTiffWriter(slow, _movie(12, seed=1))
        staller = SlowTiffWriter(stalled, _movie(12, seed=2))
        staller.write(5)
        for n in (2, 3, 4):
            writer.write(n)
            time.sleep(1.2)  # > --settle: the file looks finished and decodes
            assert _nframes(home) == {}, f"registered with {writer.done} of 12 frames"
        writer.close()
        _wait_for(lambda: "md_00001en" in _nframes(home), 20, "the finished movie", proc)
        assert _nframes(home)["md_00001en"] == 12
        _wait_for(lambda: "md_00002en.frames.tif" in log.read_text(), 20, "the stalled movie to be refused", proc)
        refused = _refused_lines(log.read_text())["md_00002en.frames.tif"]
        assert "the file holds 5 frames but md_00002en.frames.tif.mdoc says 12" in refused
        assert "unchanged for more than 3 s (--max-wait)" in refused
        rows = _sqlite_rows(home, "SELECT path, reason, count FROM ApImportRefusalData")
        assert rows == [(str(stalled.resolve()), refused, 1)]
        staller.close()
        _wait_for(lambda: "md_00002en" in _nframes(home), 20, "the stalled movie once finished", proc)
        assert _nframes(home) == {"md_00001en": 12, "md_00002en": 12}
        _wait_for(lambda: not _sqlite_rows(home, "SELECT * FROM ApImportRefusalData"), 10, "the refusal cleared")
    finally:
        code = _stop(proc)
    assert code == 0
    err = log.read_text()
    assert len([ln for ln in err.splitlines() if ln.startswith("refused ")]) == 1 and "Traceback" not in err


def test_watch_slow_writer_without_metadata(fresh_home, tmp_path):
    """Without metadata the settle rule alone applies: pauses shorter than --settle never get a partial movie
    registered."""
    home, env = fresh_home
    frames = tmp_path / "frames"
    frames.mkdir()
    log = tmp_path / "watch.err"
    proc = _watch(env, frames, log, "--settle", "2")
    try:
        writer = SlowTiffWriter(frames / "nm_00001en.frames.tif", _movie(12, seed=3))
        for n in (3, 3, 3):
            writer.write(n)
            time.sleep(0.8)
            assert _nframes(home) == {}, f"registered with {writer.done} of 12 frames"
        writer.close()
        _wait_for(lambda: _nframes(home) == {"nm_00001en": 12}, 20, "the finished movie", proc)
    finally:
        assert _stop(proc) == 0


@pytest.fixture
def private_mariadb_home(private_mariadb, tmp_path):
    """An APPION_HOME whose leginon/project/appion databases live on the test's private MariaDB server."""
    home = tmp_path / "appion-home"
    write_mariadb_config(home, "apw", port=private_mariadb.port)
    env = {**os.environ, "APPION_HOME": str(home)}
    env.pop("APPION_CONFIG", None)
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
    return home, env


@pytest.mark.mariadb
def test_watch_waits_out_a_database_outage_and_stops_during_one(private_mariadb, private_mariadb_home, tmp_path):
    """The watcher's MariaDB (a private server) stopped and started again: the outage is said once, the movie that
    arrived meanwhile is registered afterwards; SIGTERM during a second outage stops it at once."""
    home, env = private_mariadb_home
    assert private_mariadb.port != 3306 and f":{private_mariadb.port}/" in (home / "config.toml").read_text()
    frames = tmp_path / "frames"
    frames.mkdir()
    log = tmp_path / "watch.err"

    def count() -> int:
        return int(private_mariadb.execute("SELECT COUNT(*) FROM AcquisitionImageData", "apw_leg").strip())

    proc = _watch(env, frames, log, "--settle", "0.3")
    try:
        write_movie_tiff(frames / "db_00001en.frames.tif", _movie(4, seed=1))
        _wait_for(lambda: private_mariadb.ping() and count() == 1, 60, "the first movie", proc)
        private_mariadb.stop()
        write_movie_tiff(frames / "db_00002en.frames.tif", _movie(4, seed=2))
        _wait_for(lambda: "database unavailable" in log.read_text(), 30, "the outage to be noticed", proc)
        time.sleep(3)
        assert proc.poll() is None, log.read_text()
        private_mariadb.start()
        _wait_for(lambda: count() == 2, 60, "the movie that arrived during the outage", proc)
        _wait_for(lambda: "database reachable again" in log.read_text(), 10, "the end of the outage", proc)
        assert log.read_text().count("database unavailable") == 1  # said once, not per attempt
        private_mariadb.stop()
        write_movie_tiff(frames / "db_00003en.frames.tif", _movie(4, seed=3))
        _wait_for(lambda: log.read_text().count("database unavailable") == 2, 30, "the second outage", proc)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if not private_mariadb.ping():
            private_mariadb.start()
    err = log.read_text()
    assert "stopped during a database outage" in err and "Traceback" not in err, err
    assert "stopped watching; 2 exposures registered" in log.with_suffix(".out").read_text()
