"""Classic drop-ins: makeDDAlignMotionCor2_UCSF.py, ctffind4.py, gctf.py (run as their console scripts).

ctffind4 and gctf are closed programs that cannot be installed here: the `--engine ctffind4/gctf` runs
use the faithful stand-ins in tests/standins/ (same dialogue/flags and file formats, plausible numbers).
"""
from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from appion.loop.dropin import ctffind4, makeddalign
from appion.loop.dropin import run as dropin_run
from tests.loop.loophelpers import Db, copy_movies, import_session

STANDINS = Path(__file__).resolve().parents[1] / "standins"
FAST = ["--poll", "0.3", "--dashboard-address", ":0", "--no-wait", "--idle", "0"]


def run(cmd: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def table_counts(home: Path) -> dict[str, int]:
    con = sqlite3.connect(home / "appion.sqlite3")
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()


def test_makeddalign_then_ctffind4_write_classic_rows_and_files(home_env, sim_frames, tmp_path):
    """Abbreviated classic options; run/params/pair/trajectory/stats rows, ScriptProgramRun + ScriptParam,
    ApAppionJobData done, `_st_Log.txt` in the run directory; then ctffind4.py (stand-in) on the -DW images
    writes ApAceRunData/ApCtfFind4ParamsData/ApCtfData and `-pow.txt`; --continue redoes nothing."""
    home, env = home_env
    frames = copy_movies(sim_frames, tmp_path / "frames", ["lp_00001", "lp_00002", "lp_00003"])
    import_session(env, "dd", frames)
    before = table_counts(home)
    nocommit = tmp_path / "runs" / "ddstack9"
    run(["makeDDAlignMotionCor2_UCSF.py", "-s", "dd", "-n", "ddstack9", "-R", str(nocommit), "--no-commit", "--limit",
         "1", *FAST], env)
    assert table_counts(home) == before  # --no-commit: nothing written to the database ...
    assert len(list(nocommit.glob("*_st_Log.txt"))) == 1  # ... but the files are
    rundir = home / "runs" / "dd" / "ddstack" / "ddstack1"
    cmd = ["makeDDAlignMotionCor2_UCSF.py", "-s", "dd", "--runn", "ddstack1", "-R", str(rundir), "--dosew",
           "--bin", "1", "--Patchc", "0", *FAST]
    out = run(cmd, env).stdout
    assert "done 3 exposures" in out
    db = Db(home)
    assert db.rows("SELECT runname FROM ApDDStackRunData") == [("ddstack1",)]
    assert db.rows("SELECT bin, method, align FROM ApDDStackParamsData") == [(1, "appion", 1)]
    assert db.count("ApDDAlignImagePairData") == 3 and db.count("ApDDFrameTrajectoryData") == 3
    assert db.count("ApDDAlignStatsData") == 3
    assert db.rows("SELECT p.name FROM ScriptProgramRun r JOIN ScriptProgramName p ON "
                   "p.DEF_id = r.\"REF|ScriptProgramName|progname\"") == [("makeDDAlignMotionCor2_UCSF.py",)]
    usages = {r[0] for r in db.rows("SELECT usage FROM ScriptParamValue")}
    assert {"--doseweight", "--runname=ddstack1", "--bin=1.0"} <= usages
    assert db.rows("SELECT status, jobtype FROM ApAppionJobData") == [("D", "makeddalignmotioncor2_ucsf")]
    assert db.rows("SELECT a.path FROM ApAppionJobData j JOIN ApPathData a ON a.DEF_id = j.\"REF|ApPathData|path\"") \
        == [(str(rundir),)]
    assert sorted(p.name for p in rundir.glob("*_st_Log.txt")) == [f"lp_0000{i}en_st_Log.txt" for i in (1, 2, 3)]
    pos = db.rows("SELECT \"SEQ|pos_x\", number_of_positions, reference_index FROM ApDDFrameTrajectoryData")[0]
    assert pos[1] == 8 and pos[2] == 4 and pos[0].startswith("[")

    before = table_counts(home)
    run(cmd, env)  # --continue is the default: nothing is redone or stored twice
    after = table_counts(home)
    changed = {t for t in before if before[t] != after[t]}
    assert changed <= {"ApAppionJobData", "ScriptProgramRun", "ScriptParamValue", "ApPathData"}, changed

    ctfdir = home / "runs" / "dd" / "ctf" / "ctffind4run1"
    out = run(["ctffind4.py", "--session", "dd", "-n", "ctffind4run1", "-R", str(ctfdir), "--preset", "en-a-DW",
               "--engine", "ctffind4", "--engine-exe", str(STANDINS / "ctffind4"), "--fieldsize", "512",
               "--resmax", "6", "--ampcontrast", "0.1", *FAST], env).stdout
    assert "done 3 exposures" in out
    assert db.rows("SELECT name FROM ApAceRunData") == [("ctffind4run1",)]
    assert db.rows("SELECT ampcontrast, fieldsize FROM ApCtfFind4ParamsData") == [(0.1, 512)]
    ctf_images = {r[0] for r in db.rows('SELECT "REF|leginondata|AcquisitionImageData|image" FROM ApCtfData')}
    dw = {r[0] for r in db.rows("SELECT DEF_id FROM AcquisitionImageData WHERE filename LIKE '%-a-DW'", "leginon")}
    assert ctf_images == dw and len(dw) == 3
    for d1, d2, amp in db.rows("SELECT defocus1, defocus2, amplitude_contrast FROM ApCtfData"):
        assert 0 < d1 <= d2 < 1e-4 and amp == 0.1
    assert len(list(ctfdir.glob("*-pow.txt"))) == 3

    out = run(["gctf.py", "-s", "dd", "-n", "gctf1", "--preset", "en-a-DW", "--engine", "gctf", "--engine-exe",
               str(STANDINS / "gctf"), "--fieldsize", "512", "--reverse", "--limit", "1", *FAST], env).stdout
    assert "done 1 exposures" in out
    gctf_run = db.rows("SELECT DEF_id FROM ApAceRunData WHERE name = 'gctf1'")[0][0]
    assert db.rows('SELECT "REF|leginondata|AcquisitionImageData|image" FROM ApCtfData '
                   f'WHERE "REF|ApAceRunData|acerun" = {gctf_run}') == [(max(dw),)]  # the newest only
    assert len(list((home / "runs" / "dd" / "ctf" / "gctf1").glob("*_gctf.log"))) == 1


def test_makeddalign_with_motioncor2_engine(home_env, sim_frames, tmp_path):
    """--engine motioncor2 drives the MotionCor2 stand-in (tests/standins/motioncor2: MotionCor2's flags, log
    and files; MotionCor2 itself needs a GPU) and stores the same classic rows as the built-in engine."""
    home, env = home_env
    frames = copy_movies(sim_frames, tmp_path / "frames", ["lp_00001", "lp_00002"])
    import_session(env, "mc", frames)
    out = run(["makeDDAlignMotionCor2_UCSF.py", "-s", "mc", "-n", "mc2", "--engine", "motioncor2", "--engine-exe",
               str(STANDINS / "motioncor2"), "--doseweight", "--gpuids", "0", *FAST], env).stdout
    assert "done 2 exposures" in out
    db = Db(home)
    assert db.rows("SELECT method FROM ApDDStackParamsData") == [("motioncor2",)]
    assert db.count("ApDDAlignImagePairData") == 2 and db.count("ApDDFrameTrajectoryData") == 2
    rundir = home / "runs" / "mc" / "ddstack" / "mc2"
    logs = sorted(rundir.glob("*_st_Log.txt"))
    assert len(logs) == 2 and "xy shift:" in logs[0].read_text()
    assert len(list((home / "runs" / "mc" / "rawdata").glob("*-a-DW.mrc"))) == 2


def test_rejects_and_tilt_filters(home_env, sim_frames, tmp_path):
    """--no-rejects skips a hidden image and --tiltangle notilt a tilted one (classic thresholds)."""
    home, env = home_env
    frames = copy_movies(sim_frames, tmp_path / "frames", ["lp_00001", "lp_00002", "lp_00003"])
    import_session(env, "gc", frames)
    con = sqlite3.connect(home / "appion.sqlite3")
    con.execute("INSERT INTO ViewerImageStatus (DEF_timestamp, \"REF|SessionData|session\", "
                "\"REF|AcquisitionImageData|image\", status) VALUES (CURRENT_TIMESTAMP, 1, 1, 'hidden')")
    scope3 = con.execute('SELECT "REF|ScopeEMData|scope" FROM AcquisitionImageData WHERE DEF_id = 3').fetchone()[0]
    con.execute('INSERT INTO ScopeEMData (DEF_timestamp, magnification, "high tension", "SUBD|stage position|a", '
                '"REF|InstrumentData|tem", "REF|SessionData|session") SELECT CURRENT_TIMESTAMP, magnification, '
                '"high tension", 0.7, "REF|InstrumentData|tem", "REF|SessionData|session" FROM ScopeEMData '
                f'WHERE DEF_id = {scope3}')  # 0.7 rad = 40°
    con.execute('UPDATE AcquisitionImageData SET "REF|ScopeEMData|scope" = last_insert_rowid() WHERE DEF_id = 3')
    con.commit()
    con.close()
    out = run(["makeDDAlignMotionCor2_UCSF.py", "-s", "gc", "-n", "ddstack2", "--no-rejects", "--tiltangle", "notilt",
               *FAST], env).stdout
    assert "done 1 exposures" in out
    db = Db(home)
    assert db.rows('SELECT "REF|leginondata|AcquisitionImageData|source" FROM ApDDAlignImagePairData') == [(2,)]


def test_classic_option_parsing():
    """Unique prefixes work (several spellings of one option are one option), ambiguous ones fail, and the run
    name must match the run directory and be a plain name."""
    from appion.base.names import BadNameError

    p = makeddalign.calc_parser()
    args = p.parse_args(["-s", "x", "--runn", "r1", "--Patchc", "5", "--Patchr", "5", "--Bft_g", "300", "--dosew"])
    assert (args.runname, args.Patchcols, args.Patchrows, args.Bft_global, args.doseweight) == ("r1", 5, 5, 300.0, True)
    assert p.parse_args(["--sess", "y", "-n", "r"]).sessionname == "y"  # --session / --sessionname: one option
    with pytest.raises(SystemExit):
        p.parse_args(["-s", "x", "--Patch", "5"])  # ambiguous: --Patchrows / --Patchcols
    with pytest.raises(BadNameError, match="last component of --rundir"):
        dropin_run.calc_run_names(p.parse_args(["-s", "x", "-n", "run1", "-R", "/data/run2"]))
    with pytest.raises(BadNameError, match="--runname '../up' is not a plain name"):
        dropin_run.calc_run_names(p.parse_args(["-s", "x", "-n", "../up"]))
    assert dropin_run.calc_run_names(p.parse_args(["-s", "x", "-R", "/elsewhere/r7"])) == ("r7", "/elsewhere/r7")
    args = ctffind4.calc_parser().parse_args(["-s", "x", "-n", "c1", "--no-cont", "--no-wa", "--ampc", "0.1"])
    assert (args.continue_run, args.wait, args.ampcontrast, args.resmax, args.defstep) == (False, False, 0.1, 15.0, 0.1)
