"""Nothing lost, nothing unsafe (issue 13, the loop's side), at the command line where a user meets each case:
hostile run names, two loops on one run, a killed loop's leftovers, bad inputs (a movie that grew after
registration, a missing pixel size, a CTF box larger than the image), a full disk then freed then
`--retry-failed`, SIGTERM during a database outage, a mistyped database port, a batch cluster whose submit
command is missing.  Plus the pure rules behind them (error classes, back-off, lock liveness, box size).

The full disk is a tiny tmpfs mounted over the test's appion_base in a private mount namespace of the loop
process (`unshare --mount`, needs root or user namespaces; skipped otherwise): nothing outside that process sees it.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_mariadb_config
from tests.loop.loophelpers import Db, copy_movies, finish, import_session, start_loop, wait_for

FAST = ["--poll", "0.3", "--dashboard-address", ":0"]
THREE = ["lp_00001", "lp_00002", "lp_00003"]
PY = [sys.executable, "-m", "appion.cli"]


def appion(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*PY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess | str) -> str:
    """The error a command printed: exactly one line on stderr besides log lines, and no traceback."""
    text = proc if isinstance(proc, str) else proc.stderr
    assert "Traceback" not in text, text[-3000:]
    lines = [x for x in text.splitlines() if x.strip() and not re.match(r"^\d{4}-\d\d-\d\d ", x)]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def pair_counts(db: Db) -> dict[str, int]:
    """Aligned-image pair rows per exposure filename."""
    rows = db.rows('SELECT "REF|leginondata|AcquisitionImageData|source", COUNT(*) FROM ApDDAlignImagePairData '
                   'GROUP BY "REF|leginondata|AcquisitionImageData|source"')
    names = dict(db.rows("SELECT DEF_id, filename FROM AcquisitionImageData", "leginon"))
    return {names[i]: n for i, n in rows}


def loop_rows(db: Db) -> dict[tuple[str, str], tuple[str, int, str]]:
    """(exposure filename, step) → (status, attempts, last_error) of every run's bookkeeping rows."""
    names = dict(db.rows("SELECT DEF_id, filename FROM AcquisitionImageData", "leginon"))
    rows = db.rows('SELECT "REF|leginondata|AcquisitionImageData|image", step, status, attempts, last_error '
                   "FROM ApLoopExposureData")
    return {(names[i], step): (status, attempts, error or "") for i, step, status, attempts, error in rows}


# ------------------------------------------------------------------------------------------ names


def test_hostile_run_and_session_names_are_refused(home_env, tmp_path):
    """`--runname ../../../../escape_run` and a session named `../../evil` end with one line naming the problem;
    nothing is written outside appion_base."""
    home, env = home_env
    proc = appion(env, "loop", "--session", "s", "--runname", "../../../../escape_run", "--no-wait")
    assert proc.returncode == 2
    assert "--runname '../../../../escape_run' is not a plain name" in one_line_error(proc)
    db = Db(home)
    import sqlite3

    con = sqlite3.connect(home / "appion.sqlite3")
    con.execute("INSERT INTO SessionData (DEF_timestamp, name) VALUES (CURRENT_TIMESTAMP, '../../evil')")
    con.commit()
    con.close()
    proc = appion(env, "loop", "--session", "../../evil", "--no-wait", *FAST)
    assert proc.returncode == 2
    assert "session name '../../evil' is not a plain name" in one_line_error(proc)
    assert not db.rows("SELECT * FROM ApLoopRunData")
    escaped = [p for p in (tmp_path, home.parent, home / "runs") if p.exists() and
               any("escape" in q.name or "evil" in q.name for q in p.rglob("*"))]
    assert not escaped and not Path("/escape_run").exists()


def test_library_callers_get_the_same_name_check():
    from appion.base.names import BadNameError
    from appion.loop.core import Loop, LoopSettings

    with pytest.raises(BadNameError, match="--runname"):
        Loop(LoopSettings(session="s", runname="../../x"))


def test_batch_cluster_without_its_submit_command_fails_at_once(home_env, tmp_path):
    """`--cluster pbs` where qsub is not installed: one line naming qsub, no wait."""
    home, env = home_env
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = appion({**env, "PATH": str(empty)}, "loop", "--session", "s", "--cluster", "pbs", "--no-wait",
                  timeout=60)
    assert proc.returncode == 2
    assert "'qsub' is not on PATH" in one_line_error(proc)


# ------------------------------------------------------------------------------------------ one loop per run


def test_two_loops_on_one_run_then_kill_and_restart(home_env, sim_frames, tmp_path):
    """A second loop on a running run is refused naming the holder; after kill -9 `appion status` says so at once;
    the restart takes the run over, removes the killed workers' old temporaries, sets the dead start's job rows to
    E, and stores every exposure once."""
    home, env = home_env
    frames = copy_movies(sim_frames, tmp_path / "frames", THREE)
    import_session(env, "lk", frames)
    db = Db(home)
    log_a = tmp_path / "a.log"
    first = start_loop(env, ["--session", "lk", "--runname", "r1", *FAST], log_a)
    try:
        wait_for(lambda: db.count("ApCtfData") >= 1, 180, "a first CTF result", first, log_a)
        second = appion(env, "loop", "--session", "lk", "--runname", "r1", "--no-wait", *FAST)
        assert second.returncode == 2
        line = one_line_error(second)
        assert re.search(rf"run r1 of session lk is being processed by {re.escape(socket.gethostname())}:"
                         rf"{first.pid} \(heartbeat \d+ s ago\)", line), line
        status = appion(env, "status", "lk").stdout
        assert "running;" in status, status
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    status = appion(env, "status", "lk").stdout
    assert "not running (killed? its process is gone)" in status, status
    assert re.search(r"motion done\s+\d+\s+running\s+0 ", status), status  # nothing shown running for a dead loop
    # leftovers of killed workers: an old hidden temporary in the run directory and in the image directory go;
    # a fresh one in the shared image directory (another run may be writing it) and anything else stay
    ddstack, rawdata = home / "runs" / "lk" / "ddstack" / "r1", home / "runs" / "lk" / "rawdata"
    old = [ddstack / ".lp_00009en.mrc.abc123.part", rawdata / ".lp_00009en-a.mrc.def456.part"]
    keep = [rawdata / ".lp_00008en-a.mrc.fresh1.part", ddstack / "notes.part", frames / ".x.mrc.zz.part"]
    for path in old + keep:
        path.write_bytes(b"partial")
    for path in old:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    log_b = tmp_path / "b.log"
    restart = start_loop(env, ["--session", "lk", "--runname", "r1", "--no-wait", "--idle", "0", *FAST], log_b)
    assert finish(restart, 240, log_b) == 0, log_b.read_text()[-3000:]
    text = log_b.read_text()
    assert re.search(rf"was marked running by \S+:{first.pid} .*its process is gone.*taking it over", text), text
    assert not any(p.exists() for p in old) and all(p.exists() for p in keep)
    assert not [p for p in ddstack.iterdir() if p.name.startswith(".") and p.name.endswith(".part")]
    assert pair_counts(db) == {f"{n}en": 1 for n in THREE}
    assert db.count("ApCtfData") == 3
    jobs = db.rows("SELECT DEF_id, status FROM ApAppionJobData ORDER BY DEF_id")
    assert [s for _, s in jobs] == ["E", "E", "D", "D"], jobs  # the killed start's rows, then the restart's
    assert db.rows("SELECT status FROM ApLoopRunData") == [("D",)]
    status = appion(env, "status", "lk").stdout
    assert "finished" in status and re.search(r"ctf\s+done\s+3\s+running\s+0 ", status), status


# ------------------------------------------------------------------------------------------ bad inputs


def grow_movie(path: Path, factor: int = 2) -> bytes:
    """Rewrite a TIFF movie with its frames repeated (as if the writer had not finished); returns the original."""
    import tifffile

    original = path.read_bytes()
    with tifffile.TiffFile(path) as tif:
        frames = [page.asarray() for page in tif.pages]
    with tifffile.TiffWriter(path) as tif:  # one page per frame, as cameras write them
        for frame in frames * factor:
            tif.write(frame, contiguous=False)
    return original


def test_grown_movie_missing_pixel_size_and_large_box(home_env, sim_frames, tmp_path):
    """A movie that grew after registration is retried (transient), never stored with the wrong frame count; an
    exposure without a pixel size fails at once naming the field; a --fieldsize larger than the images shrinks with a
    warning.  Then the movie is back to its registered frames and `--retry-failed` stores it."""
    home, env = home_env
    frames = copy_movies(sim_frames, tmp_path / "frames", THREE)
    import_session(env, "bi", frames)
    db = Db(home)
    import sqlite3

    con = sqlite3.connect(home / "appion.sqlite3")  # lp_00003: its scope at a magnification never calibrated
    con.execute('INSERT INTO ScopeEMData (DEF_timestamp, "REF|SessionData|session", "REF|InstrumentData|tem", '
                'magnification, defocus, "high tension") SELECT DEF_timestamp, "REF|SessionData|session", '
                '"REF|InstrumentData|tem", 105000, defocus, "high tension" FROM ScopeEMData LIMIT 1')
    con.execute('UPDATE AcquisitionImageData SET "REF|ScopeEMData|scope" = (SELECT MAX(DEF_id) FROM ScopeEMData) '
                "WHERE filename = 'lp_00003en'")
    con.commit()
    con.close()
    grown = frames / "lp_00002en.frames.tif"
    original = grow_movie(grown)
    log = tmp_path / "loop1.log"
    proc = start_loop(env, ["--session", "bi", "--no-wait", "--idle", "0", "--retries", "1", "--backoff", "0.2",
                            "--fieldsize", "1024", *FAST], log)
    assert finish(proc, 240, log) == 0, log.read_text()[-3000:]
    text = log.read_text()
    rows = loop_rows(db)
    status, attempts, error = rows[("lp_00002en", "motion")]
    assert (status, attempts) == ("failed", 2), rows  # transient: retried once (--retries 1), then given up
    assert "lp_00002en.frames.tif: has 16 frames but was registered with 8" in error and "still being written" in error
    assert rows[("lp_00002en", "ctf")][:2] == ("failed", 0)
    status, attempts, error = rows[("lp_00003en", "motion")]
    assert (status, attempts) == ("failed", 0), rows  # nothing to try: its optics are not recorded
    assert error == "pixel size (PixelSizeCalibrationData for magnification 105000) missing for exposure lp_00003en"
    assert rows[("lp_00003en", "ctf")] == ("failed", 0, "not run: motion failed")
    assert pair_counts(db) == {"lp_00001en": 1}  # the grown movie's alignment was never stored
    assert re.search(r"lp_00001en: .*warning: CTF box \(--fieldsize\) 1024 px is larger than the 512×512 px image",
                     text), text
    assert db.count("ApCtfData") == 1
    report = appion(env, "status", "bi").stdout
    assert "FAILED lp_00003en motion after 0 attempt(s): pixel size (PixelSizeCalibrationData" in report, report

    grown.write_bytes(original)  # the movie as registered: retrying the permanent failures now succeeds
    log = tmp_path / "loop2.log"
    proc = start_loop(env, ["--session", "bi", "--no-wait", "--idle", "0", "--retry-failed", "--fieldsize", "1024",
                            *FAST], log)
    assert finish(proc, 240, log) == 0, log.read_text()[-3000:]
    assert "tasks run: motion 1, ctf 1" in log.read_text()  # lp_00001 is not redone, lp_00003 cannot run
    assert pair_counts(db) == {"lp_00001en": 1, "lp_00002en": 1}
    assert db.count("ApCtfData") == 2
    rows = loop_rows(db)
    assert rows[("lp_00002en", "motion")][:2] == ("done", 0)
    assert rows[("lp_00003en", "motion")][0] == "failed"


# ------------------------------------------------------------------------------------------ disk full


def mount_namespace_available(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("unshare") is None:
        return False
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                           'mount -t tmpfs -o size=4k appion-test "$0"', str(probe)], capture_output=True)
    return proc.returncode == 0


def on_small_disk(size: str, directory: Path, fill: bool, command: list[str]) -> list[str]:
    """`command` run in a private mount namespace where `directory` is a tmpfs of `size` (filled up when `fill`)."""
    script = 'mount -t tmpfs -o size="$1" appion-test-full "$2" || exit 97; '
    script += 'head -c 1G /dev/zero > "$2/filler" 2>/dev/null; ' if fill else ""
    script += 'shift 2; exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", size, str(directory),
            *command]


def test_full_disk_then_freed_then_retry_failed(home_env, sim_frames, tmp_path):
    """A loop started on a full disk ends with one line and leaves its run marked E; on a disk with room for its
    run files but not for images, the disk-full failures are retried (transient) before failing with the reason;
    once the disk has room, `--retry-failed` processes them."""
    if not mount_namespace_available(tmp_path):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (needs root or user namespaces)")
    home, env = home_env
    frames = copy_movies(sim_frames, tmp_path / "frames", THREE[:2])
    import_session(env, "df", frames)
    db = Db(home)
    base = home / "runs"  # appion_base (run directories and the session's images)
    base.mkdir(exist_ok=True)
    loop = [*PY, "loop", "--session", "df", "--no-wait", "--idle", "0", *FAST]

    full = subprocess.run(on_small_disk("64k", base, True, loop), env=env, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 2, full.stderr[-3000:]
    line = one_line_error(full)
    assert "No space left on device" in line and "df/ddstack/loop1/loop1.loop-params.json" in line, line
    assert db.rows("SELECT status FROM ApLoopRunData") == [("E",)]
    assert {s for (s,) in db.rows("SELECT status FROM ApAppionJobData")} == {"E"}

    log = tmp_path / "small.log"
    with open(log, "w") as out:
        small = subprocess.run(on_small_disk("256k", base, False, [*loop, "--retries", "1", "--backoff", "0.2"]),
                               env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    assert small.returncode == 0, log.read_text()[-3000:]
    rows = loop_rows(db)
    for name in ("lp_00001en", "lp_00002en"):
        status, attempts, error = rows[(name, "motion")]
        assert (status, attempts) == ("failed", 2), rows  # transient: retried, not failed at once
        assert "No space left on device" in error and name in error, error
    assert "retrying in" in log.read_text()
    assert db.count("ApDDAlignImagePairData") == 0
    assert db.rows("SELECT status FROM ApLoopRunData") == [("D",)]

    again = appion(env, "loop", "--session", "df", "--no-wait", "--idle", "0", *FAST)  # no --retry-failed
    assert again.returncode == 0 and db.count("ApDDAlignImagePairData") == 0, again.stderr[-3000:]
    freed = appion(env, "loop", "--session", "df", "--no-wait", "--idle", "0", "--retry-failed", *FAST)
    assert freed.returncode == 0, freed.stderr[-3000:]
    assert pair_counts(db) == {"lp_00001en": 1, "lp_00002en": 1} and db.count("ApCtfData") == 2
    assert {s for (s,) in db.rows("SELECT status FROM ApLoopExposureData")} == {"done"}


# ------------------------------------------------------------------------------------------ database outages


@pytest.fixture
def private_db_home(private_mariadb, tmp_path):
    home = tmp_path / "appion-home"
    write_mariadb_config(home, "aps", port=private_mariadb.port)
    env = {**os.environ, "APPION_HOME": str(home), "APPION_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    env.pop("APPION_CONFIG", None)
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
    return home, env


@pytest.mark.mariadb
def test_sigterm_during_outage_stops_within_grace(private_mariadb, private_db_home, sim_frames, tmp_path):
    """The loop's MariaDB (a private server) goes away; one SIGTERM stops the loop within --grace (plus the time to
    close its cluster) without a traceback; with the server back, a restart takes the run over and finishes."""
    home, env = private_db_home
    frames = copy_movies(sim_frames, tmp_path / "frames", THREE[:2])
    import_session(env, "od", frames)
    db = Db(home)
    log = tmp_path / "loop.log"
    grace_s = 5.0
    proc = start_loop(env, ["--session", "od", "--grace", str(grace_s), *FAST], log)
    try:
        wait_for(lambda: db.count("ApCtfData") >= 1, 180, "a first CTF result", proc, log)
        private_mariadb.stop()
        wait_for(lambda: "database unavailable" in log.read_text(), 60, "the loop to notice the outage", proc, log)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = finish(proc, grace_s + 60, log)
        elapsed_s = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if not private_mariadb.ping():
            private_mariadb.start()
    text = log.read_text()
    assert code in (0, 2) and "Traceback" not in text, text[-3000:]
    assert elapsed_s < grace_s + 40, (elapsed_s, text[-3000:])  # 40 s: at most what closing the cluster may take
    log2 = tmp_path / "loop2.log"
    proc = start_loop(env, ["--session", "od", "--no-wait", "--idle", "0", *FAST], log2)
    assert finish(proc, 240, log2) == 0, log2.read_text()[-3000:]
    assert pair_counts(db) == {"lp_00001en": 1, "lp_00002en": 1} and db.count("ApCtfData") == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.mariadb
def test_mistyped_database_port_ends_with_one_line(tmp_path):
    """A config naming a port where no database listens: a bounded wait (--db-start-wait), or SIGTERM, ends the loop
    with one line; it never waits forever."""
    pytest.importorskip("MySQLdb")
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text("[database]\n" + "".join(
        f'{k} = "mysql://root@127.0.0.1:{port}/nowhere_{k}"\n' for k in ("leginon", "project", "appion")))
    env = {**os.environ, "APPION_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("APPION_CONFIG", None)
    proc = appion(env, "loop", "--session", "s", "--no-wait", "--db-start-wait", "2", timeout=120)
    assert proc.returncode == 2
    assert "the database did not answer" in one_line_error(proc)
    log = tmp_path / "term.log"
    waiting = subprocess.Popen([*PY, "loop", "--session", "s", "--no-wait", "--db-start-wait", "3600"], env=env,
                               stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "database unavailable" in log.read_text(), 60, "the loop to try the database", waiting, log)
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=30) == 2
    finally:
        if waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
    assert "the database did not answer" in one_line_error(log.read_text())


# ------------------------------------------------------------------------------------------ worker-side checks


def exposure(movie: Path, n_frames: int):
    from appion.base.exposure import ExposureInput

    return ExposureInput(image_id=1, filename=movie.name.split(".")[0], movie_path=str(movie),
                         image_dir=str(movie.parent), preset_name="en", pixel_size_A=1.0, voltage_kV=300.0, cs_mm=2.7,
                         dose_e_per_A2=12.0, n_frames=n_frames, gain_path=None, dark_path=None, frame_rotate=0,
                         frame_flip=0, defects=(None, None, None), nominal_defocus_m=None, tilt_deg=0.0, arrived=0.0)


def test_worker_rechecks_the_frame_count(sim_frames, tmp_path):
    """More frames than registered: still being written (an OSError: transient); fewer: bad input (MovieError)."""
    from appion.base.io.movies import MovieError
    from appion.loop.calc import DETERMINISTIC, TRANSIENT, calc_error_kind
    from appion.motioncorrection.task import MovieStillBeingWritten, check_movie_frames

    movie = copy_movies(sim_frames, tmp_path, ["lp_00001"]) / "lp_00001en.frames.tif"
    assert check_movie_frames(exposure(movie, 8)) == (movie.stat().st_size, movie.stat().st_mtime_ns)
    with pytest.raises(MovieStillBeingWritten, match="has 8 frames but was registered with 4") as grew:
        check_movie_frames(exposure(movie, 4))
    assert calc_error_kind(grew.value) == TRANSIENT
    with pytest.raises(MovieError, match="has 8 frames but was registered with 12") as shrank:
        check_movie_frames(exposure(movie, 12))
    assert calc_error_kind(shrank.value) == DETERMINISTIC
