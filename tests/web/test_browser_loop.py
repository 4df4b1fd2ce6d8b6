"""The session page in a real browser while a real session is processed.

`appion session import --watch`, `appion loop` (the real built-in engines) and `appion serve` run
together on a simulated session of small movies, one of them truncated after registration so
that it fails.  Headless system Chromium checks that the table shows the values stored in the
database (read back with plain SQL), the failure reason, a movie that arrives while the page is
open (without a reload), and the exposure page with the engines' plots.  Screenshots go to
test-artifacts/.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.web.conftest import read_table, save_screenshot, wait_for

pytestmark = pytest.mark.timeout(240)


def start(args, env, log: Path) -> subprocess.Popen:
    """A long-running `appion` command, output to a log file (read when something goes wrong)."""
    return subprocess.Popen(["appion", *map(str, args)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop(*procs: subprocess.Popen | None, timeout_s: float = 60.0) -> None:
    """SIGTERM all at once (they shut down in parallel), then wait; kill what outlives the timeout."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_expected(db_path: Path) -> tuple[int | None, dict[str, dict]]:
    """What the page must show, read straight from the SQLite file with plain SQL (an independent oracle).

    Returns (session id, movie filename → expected cell texts, or the (step, error) it failed with).
    """
    con = sqlite3.connect(db_path, timeout=30)
    try:
        q = lambda sql, *a: con.execute(sql, a).fetchall()  # noqa: E731
        found = q("SELECT DEF_id FROM SessionData WHERE name = ?", SESSION)
        if not found:
            return None, {}
        session_id = found[0][0]
        images = dict(q("SELECT filename, DEF_id FROM AcquisitionImageData WHERE `REF|SessionData|session` = ?",
                        session_id))
        expected: dict[str, dict] = {}
        for name in [f for f in images if not f.endswith(("-a", "-a-DW"))]:
            row: dict = {}
            traj = q("SELECT t.`SEQ|pos_x`, t.`SEQ|pos_y`, s.apix FROM ApDDFrameTrajectoryData t "
                     "JOIN ApDDAlignStatsData s ON s.`REF|ApDDFrameTrajectoryData|trajectory` = t.DEF_id "
                     "WHERE t.`REF|leginondata|AcquisitionImageData|image` = ?", images.get(f"{name}-a", -1))
            ctf = q("SELECT defocus1, defocus2, ctffind4_resolution, cross_correlation, angle_astigmatism "
                    "FROM ApCtfData "
                    "WHERE `REF|leginondata|AcquisitionImageData|image` IN (?, ?)",
                    images.get(f"{name}-a-DW", -1), images.get(f"{name}-a", -1))
            if traj and ctf:
                xs, ys, apix = json.loads(traj[0][0]), json.loads(traj[0][1]), traj[0][2]
                length = sum(math.hypot(xs[i + 1] - xs[i], ys[i + 1] - ys[i]) for i in range(len(xs) - 1))
                d1, d2, res, cc, angle = ctf[0]
                # shown in CTFFIND's convention (the CTF plot's): the larger defocus first, with its own axis,
                # which is 90° from the angle classic stores for the smaller one (docs/conventions.md)
                if abs(d1) <= abs(d2):
                    d1, d2, angle = d2, d1, angle - 90.0
                angle = angle - 180.0 if angle > 90.0 else angle + 180.0 if angle <= -90.0 else angle
                row.update(drift=f"{length * apix:.1f}", defocus1=f"{d1 * 1e6:.3f}", defocus2=f"{d2 * 1e6:.3f}",
                           astig=f"{abs(d2 - d1) * 1e10:.0f} Å @ {angle:.0f}°",
                           resolution=f"{res:.1f}" if res < 99999 else "–", score=f"{cc:.3f}")
            failed = q("SELECT step, last_error FROM ApLoopExposureData WHERE status = 'failed' AND "
                       "`REF|leginondata|AcquisitionImageData|image` = ?", images[name])
            if failed:
                row["failed"] = failed[0]
            expected[name] = row
        return session_id, expected
    finally:
        con.close()


def check_row(row: dict, want: dict, name: str) -> None:
    if "failed" in want:
        step, error = want["failed"]
        assert row["status"] == "failed", name
        assert row["reason"].startswith(f"{step}: ") and error[:60] in row["reason"], (row["reason"], error)
        return
    assert row["status"] == "done", name
    for key in ("drift", "defocus1", "defocus2", "astig", "resolution", "score"):
        assert row[key] == want[key], (name, key, row[key], want[key])


SESSION = "webloop"


def test_live_page_during_a_real_loop_run(fresh_home, serve, chromium, tmp_path):
    """Watcher, loop and server run together: the page follows a real session as it is processed."""
    from appion.base.simulate.calc import MovieParams
    from appion.base.simulate.store import write_simulated_session

    home, env = fresh_home
    db_path = home / "appion.sqlite3"
    movies = write_simulated_session(tmp_path / "sim", 5, MovieParams(shape=(512, 512), pixel_size_A=1.0, n_frames=8,
                                                                      dose_per_frame_e_per_A2=1.5, drift_total_px=6.0),
                                     name=SESSION, seed=11)
    frames = movies[0].parent
    late = tmp_path / movies[-1].name
    movies[-1].rename(late)  # arrives later, while the page is open
    broken = movies[1]  # a movie that decodes at import and is truncated before the loop reads it
    data = broken.read_bytes()

    watcher = start(["session", "import", "--name", SESSION, "--frames-dir", frames, "--apix", "1.0", "--kv", "300",
                     "--cs", "2.7", "--dose", "12", "--watch", "--interval", "0.5", "--settle", "0.5"], env,
                    tmp_path / "watch.log")
    loop = None
    try:
        server = serve(env)  # starts while the watcher does
        wait_for(lambda: len(read_expected(db_path)[1]) == 4, timeout_s=60, what="4 movies registered")
        broken.write_bytes(data[: len(data) // 3])
        loop = start(["loop", "--session", SESSION, "--poll", "0.5", "--retries", "0", "--fieldsize", "256",
                      "--workers", "1"], env, tmp_path / "loop.log")
        session_id, _ = read_expected(db_path)
        chromium.get(f"{server.url}/session/{session_id}/")
        chromium.execute_script("window.__not_reloaded = true;")
        # The page follows the processing by itself: 3 done and 1 failed without a reload.
        wait_for(lambda: sorted(r["status"] for r in read_table(chromium).values()) == ["done", "done", "done",
                                                                                       "failed"],
                 timeout_s=90, what=f"3 done + 1 failed rows (loop log: {tmp_path / 'loop.log'})")
        _, expected = read_expected(db_path)
        table = {r["filename"]: r for r in read_table(chromium).values()}
        assert set(table) == set(expected)
        for name, want in expected.items():
            check_row(table[name], want, name)
        assert "failed" in expected[broken.name.split(".frames.")[0]]
        wait_for(lambda: chromium.execute_script(
            "return [...document.querySelectorAll('td.thumb img')].filter(i => i.complete && i.naturalWidth > 0)"
            ".length") == 3, what="3 thumbnails of aligned sums")
        wait_for(lambda: chromium.execute_script("return document.querySelectorAll('#chart-defocus svg path.dots')"
                                                 ".length"), what="defocus chart drawn")
        save_screenshot(chromium, "web_session_loop.png")

        # A new movie arrives: its row appears and fills in as the loop processes it.
        tmp = frames / f".{late.name}.part"
        shutil.copyfile(late, tmp)
        os.replace(tmp, frames / late.name)
        new_name = late.name.split(".frames.")[0]
        row = wait_for(lambda: next((r for r in read_table(chromium).values()
                                     if r["filename"] == new_name and r["status"] == "done"), None),
                       timeout_s=60, what="the new movie's row, done")
        _, expected = read_expected(db_path)
        check_row(row, expected[new_name], new_name)
        assert chromium.execute_script("return window.__not_reloaded === true"), "the page reloaded"
        assert chromium.find_element("css selector", '[data-key="n_done"]').text == "4"
        assert chromium.find_element("css selector", '[data-key="n_failed"]').text == "1"
        assert next(iter(read_table(chromium).values()))["filename"] == new_name  # newest first
        save_screenshot(chromium, "web_session_live.png", full_page=True)

        # The exposure page shows the engines' drift and CTF plots and the aligned sum.
        image_id = next(i for i, r in read_table(chromium).items() if r["filename"] == new_name)
        chromium.get(f"{server.url}/exposure/{image_id}/")
        loaded_js = ("return [...document.querySelectorAll('.plots img')]"
                     ".filter(i => i.complete && i.naturalWidth > 0).map(i => i.alt)")
        loaded = wait_for(lambda: len(chromium.execute_script(loaded_js)) >= 3 and chromium.execute_script(loaded_js),
                          what="exposure plots loaded")
        assert {"aligned sum", "drift trajectory", "CTF diagnostic 1"} <= set(loaded)
        save_screenshot(chromium, "web_exposure.png", full_page=True)
    finally:
        stop(loop, watcher)
