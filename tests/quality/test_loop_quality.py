"""A loop run with curation thresholds over a session mixing good, blank, noise-only and huge-drift movies:
exactly the expected exposures are rejected, with their reasons, in the database, in Leginon's
ViewerImageStatus and in `appion status`; a threshold changed in the config file while the loop runs
applies to the exposures that come after the change."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from dataclasses import replace

import numpy as np

from appion.base.simulate.calc import MovieParams, calc_flat_movie, calc_movie
from appion.base.simulate.store import write_movie
from tests.loop.loophelpers import Db, finish, start_loop, wait_for

BASE = MovieParams(shape=(512, 512), n_frames=8, dose_per_frame_e_per_A2=4.0, drift_total_px=10.0,
                   defocus1_A=15200.0, defocus2_A=14800.0)
DOSE = BASE.n_frames * BASE.dose_per_frame_e_per_A2


def _write(frames_dir, name: str, kind: str, seed: int) -> None:
    params = replace(BASE, seed=seed, drift_total_px=120.0 if kind == "drift" else BASE.drift_total_px)
    movie, truth = calc_flat_movie(params, kind) if kind in ("blank", "noise") else calc_movie(params)
    if kind == "saturated":  # a clipped region (6 % of the field) in every frame
        movie[:, 100:228, 100:228] = np.iinfo(movie.dtype).max
    write_movie(frames_dir / f"{name}.frames.tif", movie, truth, BASE.pixel_size_A)


def _import(env, frames_dir) -> None:
    subprocess.run(["appion", "session", "import", "--name", "qs", "--frames-dir", str(frames_dir), "--apix", "1.0",
                    "--kv", "300", "--cs", "2.7", "--dose", str(DOSE)], env=env, check=True, capture_output=True)


def _quality(db) -> dict[str, tuple]:
    rows = db.rows('SELECT i.filename, q.rejected, q.reason, q.thresholds, q.total_drift_A, q.ctf_resolution_A '
                   'FROM ApQualityData q JOIN AcquisitionImageData i '
                   'ON i.DEF_id = q."REF|leginondata|AcquisitionImageData|image"')
    return {r[0]: r[1:] for r in rows}


def test_loop_curation(fresh_home, tmp_path):
    home, env = fresh_home
    env = {**env, "APPION_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    config = home / "config.toml"
    config.write_text("[curation]\nmax_total_drift = 80\n")  # wins over --max-total-drift
    frames = tmp_path / "frames"
    frames.mkdir()
    first = {"qs_00001en": "good", "qs_00002en": "noise", "qs_00003en": "good", "qs_00004en": "blank",
             "qs_00005en": "drift", "qs_00006en": "good", "qs_00008en": "saturated"}
    for i, (name, kind) in enumerate(first.items()):
        _write(frames, name, kind, seed=10 + i)
    _import(env, frames)
    db = Db(home)
    log = tmp_path / "loop.log"
    proc = start_loop(env, ["--session", "qs", "--runname", "q1", "--steps", "motion,ctf,quality",
                            "--max-ctf-resolution", "10", "--max-total-drift", "500", "--max-tilt", "20",
                            "--max-astigmatism", "1500", "--max-ice-thickness", "1.2", "--idle", "1",
                            "--poll", "0.3", "--dashboard-address", ":0"], log)
    try:
        wait_for(lambda: len(_quality(db)) == 5, 400, "quality rows of the first five usable movies", proc, log)
        # the limit is tightened while the loop runs; a new good movie arrives after the change
        config.write_text("[curation]\nmax_total_drift = 5\n")
        _write(frames, "qs_00007en", "good", seed=20)
        _import(env, frames)
        wait_for(lambda: len(_quality(db)) == 6, 300, "the quality row of the late movie", proc, log)
        con = sqlite3.connect(home / "appion.sqlite3")
        con.execute('INSERT INTO SessionDoneLog (DEF_timestamp, "REF|SessionData|session", done) '
                    "SELECT CURRENT_TIMESTAMP, DEF_id, 1 FROM SessionData WHERE name = 'qs'")
        con.commit()
        con.close()
        assert finish(proc, 120, log) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    q = _quality(db)

    # the database: good movies accepted, the others rejected with every failed limit named
    for name in ("qs_00001en", "qs_00003en", "qs_00006en"):
        rejected, reason, thresholds, drift, fit = q[name]
        assert not rejected and reason is None, (name, q[name])
        assert json.loads(thresholds)["max_total_drift_A"] == 80.0 and drift < 80 and fit < 10
    rejected, reason, _, drift, _ = q["qs_00005en"]
    assert rejected and reason == f"total drift {drift:.1f} Å > 80 Å", q["qs_00005en"]
    rejected, reason, _, _, fit = q["qs_00002en"]  # noise only: no Thon rings (and motion aligns noise)
    assert rejected and f"CTF fit resolution {fit:.1f} Å > 10 Å" in reason, q["qs_00002en"]
    # changed while running: the late good movie is judged by the new limit
    rejected, reason, thresholds, drift, _ = q["qs_00007en"]
    assert rejected and reason == f"total drift {drift:.1f} Å > 5 Å"
    assert json.loads(thresholds)["max_total_drift_A"] == 5
    assert "curation thresholds changed" in text

    # the blank and the clipped sums are caught by the motion step's image check, before CTF runs: rejected
    # with the reason, CTF and quality not run
    for name, word in (("qs_00004en", "blank"), ("qs_00008en", "saturated")):
        assert name not in q, q[name]
        rows = db.rows("SELECT e.step, e.status, e.last_error FROM ApLoopExposureData e JOIN AcquisitionImageData i "
                       "ON i.DEF_id = e.\"REF|leginondata|AcquisitionImageData|image\" "
                       f"WHERE i.filename = '{name}'")
        states = {step: (status, error) for step, status, error in rows}
        assert "motion" not in states or states["motion"][0] == "done", states
        for step in ("ctf", "quality"):
            assert states[step][0] == "failed" and "rejected by motion" in states[step][1], states
            assert word in states[step][1], states

    # Leginon's ViewerImageStatus: the rejected exposures (and their aligned sums) are hidden, no other
    hidden = {r[0] for r in db.rows("SELECT i.filename FROM ViewerImageStatus v JOIN AcquisitionImageData i ON "
                                    "i.DEF_id = v.\"REF|AcquisitionImageData|image\" WHERE v.status = 'hidden'",
                                    "leginon")}
    rejected_names = {"qs_00002en", "qs_00004en", "qs_00005en", "qs_00007en", "qs_00008en"}
    assert {h.split("-")[0] for h in hidden} == rejected_names, hidden
    assert {f"{n}-a-DW" for n in rejected_names} <= hidden

    # appion status: the quality step's rows and columns, with the reasons
    status = subprocess.run(["appion", "status", "qs", "--runname", "q1", "--exposures"], env=env, check=True,
                            capture_output=True, text=True).stdout
    assert re.search(r"^\s+quality\s+done\s+6\b.*failed\s+2\b", status, re.MULTILINE), status
    for label in ("total drift Å", "CTF res Å", "tilt °", "rel. ice", "rejected"):
        assert label in status, status
    assert re.search(r"^qs_00005en .*total drift \d+\.\d Å > 80 Å", status, re.MULTILINE), status
    assert re.search(r"^qs_00007en .*total drift \d+\.\d Å > 5 Å", status, re.MULTILINE), status
