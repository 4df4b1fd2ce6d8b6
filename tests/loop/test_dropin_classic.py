"""Classic command lines replayed against the drop-ins (issue 12): none is refused, each writes the rows and
files classic would, options without effect warn once by name.

The lines are built from classic's option parsers (leginon-org/leginon, nysbc/appion: appionScript →
appionLoop2 → the program's class chain) the way the classic web interface writes them (`--opt=value`,
--projectid, --commit, --description, the dosefgpu_driftcorr-era options it still sends ...), with appion's
speed options appended (FAST).  One small simulated session (2 movies, 256² × 6 frames) for the whole module;
each line runs the console script, as a site's web interface would.  `--engine motioncor2/ctffind4/gctf`
lines drive the stand-ins in tests/standins (those programs are closed or need a GPU).  The last test is the
per-project appion database on the real MariaDB.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tests.conftest import mysql_exec

STANDINS = Path(__file__).resolve().parents[1] / "standins"
FAST = ["--poll", "0.3", "--dashboard-address", ":0", "--no-wait", "--idle", "0", "--nproc", "1"]
REPLAYED: list[str] = []


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(home, env): an APPION_HOME with session 'cl' of 2 simulated movies (image ids 1, 2)."""
    root = tmp_path_factory.mktemp("classic")
    home = root / "home"
    env = {**os.environ, "APPION_HOME": str(home), "APPION_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    env.pop("APPION_CONFIG", None)
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
    make_session(env, root / "sim", "cl")
    return home, env


def make_session(env: dict, sim: Path, name: str) -> None:
    subprocess.run(["appion", "simulate", "session", "--out", str(sim), "--n", "2", "--size", "256", "--frames", "6",
                    "--dose-per-frame", "1.5", "--name", "lp", "--format", "tiff", "--seed", "4"], check=True,
                   capture_output=True)
    subprocess.run(["appion", "session", "import", "--name", name, "--frames-dir", str(sim / "frames"), "--apix",
                    "1.0", "--kv", "300", "--cs", "2.7", "--dose", "9"], env=env, check=True, capture_output=True)


def replay(env: dict, line: str, warns: tuple[str, ...] = (), done: int | None = None) -> str:
    """Run one classic command line; it must succeed, print each expected warning line exactly once (and no other
    'has no effect' / 'is not applied' line) and finish `done` exposures.  Returns stdout + stderr."""
    argv = shlex.split(line)
    proc = subprocess.run([*argv, *FAST], env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{line}\n{out[-3000:]}"
    REPLAYED.append(line)
    said = [x.split(": ", 1)[1] if ": " in x else x for x in out.splitlines()
            if " has no effect" in x or " is not applied:" in x]
    flags = sorted(s.split(" ", 1)[0] for s in said)
    assert flags == sorted(warns), f"{line}\nwarned about {flags}, expected {sorted(warns)}\n{out[-2000:]}"
    if done is not None:
        assert f"done {done} exposures" in out, f"{line}\n{out[-2000:]}"
    return out


class Rows:
    """The classic rows of a run, by run name (SQLite of the site)."""

    def __init__(self, home: Path):
        self.home = home

    def q(self, sql: str) -> list[tuple]:
        con = sqlite3.connect(self.home / "appion.sqlite3", timeout=30)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def dd_run(self, runname: str) -> tuple:
        """(bin, method, path) of the ddstack run."""
        rows = self.q('SELECT p.bin, p.method, a.path FROM ApDDStackRunData r JOIN ApDDStackParamsData p ON p.DEF_id '
                      '= r."REF|ApDDStackParamsData|params" JOIN ApPathData a ON a.DEF_id = r."REF|ApPathData|path" '
                      f"WHERE r.runname = '{runname}'")
        assert len(rows) == 1, (runname, rows)
        return rows[0]

    def dd_pairs(self, runname: str) -> list[tuple[str, str]]:
        """(source filename, result filename) of the run's ApDDAlignImagePairData rows."""
        return sorted(self.q(
            'SELECT s.filename, t.filename FROM ApDDAlignImagePairData x JOIN ApDDStackRunData r ON r.DEF_id = '
            'x."REF|ApDDStackRunData|ddstackrun" JOIN AcquisitionImageData s ON s.DEF_id = '
            'x."REF|leginondata|AcquisitionImageData|source" JOIN AcquisitionImageData t ON t.DEF_id = '
            f'x."REF|leginondata|AcquisitionImageData|result" WHERE r.runname = \'{runname}\''))

    def ctf(self, runname: str) -> list[tuple]:
        """(image filename, defocus1, defocus2, extra phase shift) of the run's ApCtfData rows."""
        return sorted(self.q(
            'SELECT i.filename, c.defocus1, c.defocus2, c.extra_phase_shift FROM ApCtfData c JOIN ApAceRunData r ON '
            'r.DEF_id = c."REF|ApAceRunData|acerun" JOIN AcquisitionImageData i ON i.DEF_id = '
            f'c."REF|leginondata|AcquisitionImageData|image" WHERE r.name = \'{runname}\''))

    def ctf_params(self, runname: str) -> tuple:
        """(ampcontrast, fieldsize, resmin, defstep m, shift_phase, min, max, step, bestdb) of the run."""
        rows = self.q('SELECT p.ampcontrast, p.fieldsize, p.resmin, p.defstep, p.shift_phase, p.min_phase_shift, '
                      'p.max_phase_shift, p.phase_search_step, p.bestdb FROM ApAceRunData r JOIN ApCtfFind4ParamsData '
                      f'p ON p.DEF_id = r."REF|ApCtfFind4ParamsData|ctffind4_params" WHERE r.name = \'{runname}\'')
        assert len(rows) == 1, (runname, rows)
        return rows[0]

    def job(self, runname: str) -> list[tuple]:
        """(status, jobtype) of the ApAppionJobData rows of the run's ScriptProgramRun."""
        return self.q('SELECT j.status, j.jobtype FROM ScriptProgramRun r JOIN ApAppionJobData j ON j.DEF_id = '
                      f'r."REF|ApAppionJobData|job" WHERE r.runname = \'{runname}\'')

    def usages(self, runname: str) -> set[str]:
        return {u for (u,) in self.q('SELECT v.usage FROM ScriptParamValue v JOIN ScriptProgramRun r ON r.DEF_id = '
                                     f'v."REF|ScriptProgramRun|progrun" WHERE r.runname = \'{runname}\'')}

    def count(self, table: str) -> int:
        return self.q(f'SELECT COUNT(*) FROM "{table}"')[0][0]


MOVIES = ["lp_00001en", "lp_00002en"]
DD1_WARNS = ("--alignoffset", "--alignccbox", "--force_cpu_flat", "--parallel", "--gpuids", "--nrw", "--FmRef",
             "--Iter", "--Tol", "--MaskCentrow", "--MaskCentcol", "--MaskSizerows", "--MaskSizecols")


def test_makeddalign_classic_lines(site):
    """makeDDAlignMotionCor2_UCSF.py: the web interface's line (with the dosefgpu_driftcorr options it still
    writes), frame ranges, binning, labels, image choices, classic options without effect, SEMC's, the MotionCor2
    stand-in: each writes its ddstack run, pair rows, _st_Log files and aligned images, or nothing with
    --no-commit."""
    home, env = site
    base = home / "runs" / "cl" / "ddstack"
    raw = home / "runs" / "cl" / "rawdata"
    db = Rows(home)
    dd1 = base / "dd1"
    dd1_line = ("makeDDAlignMotionCor2_UCSF.py --expid=1 --preset=en --runname=dd1 --rundir=" + str(dd1) + " --bin=1 "
           "--alignoffset=2 --alignccbox=128 --alignlabel=a --gpuids=0 --nrw=1 --FmRef=0 --Iter=7 --Tol=0.5 "
           "--Patchrows=0 --Patchcols=0 --MaskCentrow=0 --MaskCentcol=0 --MaskSizerows=1 --MaskSizecols=1 "
           "--Bft_global=500 --Bft_local=150 --doseweight --force_cpu_flat --rendered_frame_size=1 --eer_sampling=1 "
           "--projectid=1 --commit --no-wait --continue --parallel --align --no-keepstack "
           "--description='first classic run' --jobtype=makeddalignmotioncor2_ucsf")
    replay(env, dd1_line, warns=DD1_WARNS, done=2)
    assert db.dd_run("dd1") == (1, "appion", str(dd1))
    assert [s for s, _ in db.dd_pairs("dd1")] == MOVIES
    assert sorted(p.name for p in dd1.glob("*_st_Log.txt")) == [f"{m}_st_Log.txt" for m in MOVIES]
    assert all((raw / f"{m}-a.mrc").exists() and (raw / f"{m}-a-DW.mrc").exists() for m in MOVIES)
    assert db.job("dd1") == [("D", "makeddalignmotioncor2_ucsf")]
    assert {"--runname=dd1", "--doseweight", "--Patchrows=0", "--expId=1", "--commit", "--continue",
            "--description='first classic run'", "--alignoffset=2", "--no-keepstack"} <= db.usages("dd1")

    # the same line again: --continue redoes nothing
    pairs = db.count("ApDDAlignImagePairData")
    replay(env, dd1_line, warns=DD1_WARNS)
    assert db.count("ApDDAlignImagePairData") == pairs

    # dosefgpu_driftcorr-era line: bin 2, the frame-stack options of apDDStackMaker
    out = replay(env, "makeDDAlignMotionCor2_UCSF.py --session=cl --runname=dd2 --bin=2 --alignbfactor=100 "
                 "--alignoffset=2 --alignccbox=128 --keepstack --tempdir=/tmp/dd --no-cyclechannels --useGS --rawarea "
                 "--compress --square --trim=0 --alignlabel=b",
                 warns=("--alignbfactor", "--alignoffset", "--alignccbox", "--keepstack", "--tempdir",
                        "--no-cyclechannels", "--useGS", "--rawarea", "--compress", "--square", "--trim"), done=2)
    assert "--useGS has no effect: appion has no Gram-Schmidt" in out
    assert db.dd_run("dd2")[:2] == (2, "appion")
    assert db.dd_pairs("dd2") == [(m, f"{m}-b") for m in MOVIES]  # no --doseweight: the sums are the results
    with mrcfile.open(raw / "lp_00001en-b.mrc", header_only=True) as mrc:
        assert (int(mrc.header.ny), int(mrc.header.nx)) == (128, 128)

    # a frame range: the log adds frames 1..4 of 6; a run directory alone names the run
    replay(env, f"makeDDAlignMotionCor2_UCSF.py -s cl -R {base / 'dd3'} --ddstartframe=1 --ddnframe=4 --alignlabel=c",
           done=2)
    added = [int(x.split("#")[1].split()[0]) for x in (base / "dd3" / "lp_00001en_st_Log.txt").read_text().splitlines()
             if "Add Frame" in x]
    assert added == [1, 2, 3, 4], added
    assert db.dd_run("dd3")[2] == str(base / "dd3")

    # image choices: --limit, --mrclist, --reverse, --startimgid/--endimgid, --tiltangle
    replay(env, "makeDDAlignMotionCor2_UCSF.py -s cl -n dd4 --limit=1 --alignlabel=d --totaldose=12 --doseweight",
           done=1)
    assert [s for s, _ in db.dd_pairs("dd4")] == ["lp_00001en"]
    replay(env, "makeDDAlignMotionCor2_UCSF.py -s cl -n dd4 --limit=1 --alignlabel=d --totaldose=12 --doseweight "
           "--no-continue", done=1)  # redone: the rows are replaced, not doubled
    assert [s for s, _ in db.dd_pairs("dd4")] == ["lp_00001en"]
    replay(env, "makeDDAlignMotionCor2_UCSF.py -s cl -n dd5 --mrclist=lp_00002en.mrc --alignlabel=e", done=1)
    assert db.dd_pairs("dd5") == [("lp_00002en", "lp_00002en-e")]
    replay(env, "makeDDAlignMotionCor2_UCSF.py -s cl -n dd6 --reverse --limit=1 --alignlabel=f --shuffle",
           warns=("--shuffle",), done=1)
    assert [s for s, _ in db.dd_pairs("dd6")] == ["lp_00002en"]
    replay(env, "makeDDAlignMotionCor2_UCSF.py -s cl -n dd7 --startimgid=2 --tiltangle=notilt --alignlabel=g", done=1)
    assert [s for s, _ in db.dd_pairs("dd7")] == ["lp_00002en"]
    replay(env, "makeDDAlignMotionCor2_UCSF.py -s cl -n dd8 --endimgid=1 --tiltangle=all --alignlabel=h", done=1)
    assert [s for s, _ in db.dd_pairs("dd8")] == ["lp_00001en"]

    # viewer marks: --no-rejects skips a hidden image, --best-images takes exemplars only
    con = sqlite3.connect(home / "appion.sqlite3")
    con.execute('INSERT INTO ViewerImageStatus (DEF_timestamp, "REF|SessionData|session", '
                '"REF|AcquisitionImageData|image", status) VALUES (CURRENT_TIMESTAMP, 1, 1, \'hidden\'), '
                "(CURRENT_TIMESTAMP, 1, 2, 'exemplar')")
    con.commit()
    con.close()
    replay(env, "makeDDAlignMotionCor2_UCSF.py -s cl -n dd9 --no-rejects --alignlabel=i --background --sib-assess",
           warns=("--sib-assess",), done=1)
    assert [s for s, _ in db.dd_pairs("dd9")] == ["lp_00002en"]
    replay(env, "makeDDAlignMotionCor2_UCSF.py -s cl -n dd10 --best-images --alignlabel=j", done=1)
    assert [s for s, _ in db.dd_pairs("dd10")] == ["lp_00002en"]

    # --no-commit: files, no rows
    before = db.count("ApDDStackRunData"), db.count("ScriptProgramRun")
    replay(env, f"makeDDAlignMotionCor2_UCSF.py -s cl -n dd11 -R {base / 'dd11'} --no-commit --alignlabel=k", done=2)
    assert (db.count("ApDDStackRunData"), db.count("ScriptProgramRun")) == before
    assert len(list((base / "dd11").glob("*_st_Log.txt"))) == 2

    # gain/defect overrides (applied) and the other options classic command lines carry (one warning each)
    gain = home / "override-gain.mrc"
    with mrcfile.new(gain, overwrite=True) as mrc:
        mrc.set_data(np.ones((256, 256), np.float32))
    frames = home.parent / "sim" / "frames"
    replay(env, "makeDDAlignMotionCor2_UCSF.py --sessionname=cl -n dd12 --override_db --bad_cols=1,2 --bad_rows=3 "
           f"--flipgain --rotgain=1 --gainfile={gain} --clip=5 --framepath={frames} --refimgid=1 --forceTiff "
           "--stackid=3 --defergpu --alignlabel=l --limit=1",
           warns=("--clip", "--refimgid", "--forceTiff", "--stackid", "--defergpu"), done=1)
    assert len(db.dd_pairs("dd12")) == 1
    defect_maps = list((base / "dd12").glob("defects-*.mrc"))  # --bad_cols/--bad_rows reached the engine
    assert len(defect_maps) == 1
    with mrcfile.open(defect_maps[0]) as mrc:
        assert mrc.data[:, 1].all() and mrc.data[:, 2].all() and mrc.data[3, :].all() and mrc.data.sum() == 256 * 3 - 2
    # a gain reference that does not exist is the run's error for that exposure, naming the file
    out = subprocess.run(["makeDDAlignMotionCor2_UCSF.py", "--sessionname=cl", "-n", "dd12b", "--limit=1",
                          f"--gainfile={raw / 'none.mrc'}", *FAST], env=env, capture_output=True, text=True,
                         timeout=300)
    assert "none.mrc" in out.stdout + out.stderr

    # SEMC Appion's options and the session by id with its other spelling
    replay(env, "makeDDAlignMotionCor2_UCSF.py --expId=1 -n dd13 --jobid=55 --clusterconfig=/etc/dask/cluster.yml "
           "--clean --no-clean --alignlabel=m --limit=1 --jobtype=makeddalignmotioncor2_ucsf",
           warns=("--jobid", "--clusterconfig", "--no-clean"), done=1)
    assert db.job("dd13") == [("D", "makeddalignmotioncor2_ucsf")]

    # MotionCor2 (stand-in) with the GPU of --gpuid: the lease log shows GPU 1
    replay(env, "makeDDAlignMotionCor2_UCSF.py -s cl -n dd14 --engine motioncor2 "
           f"--engine-exe {STANDINS / 'motioncor2'} --gpuid=1 --nrw=1 --FmRef=0 --Iter=7 --Tol=0.5 --Patchrows=0 --Patchcols=0 --doseweight --alignlabel=n",
           done=2)
    assert db.dd_run("dd14")[1] == "motioncor2"
    slots = {json.loads(x)["slot"] for x in (home / "services" / "gpu" / "leases.log").read_text().splitlines()
             if json.loads(x).get("event") == "acquire"}
    assert slots == {"1"}, slots


def write_raw_sums(home: Path) -> None:
    """The exposures' own (gain-corrected) sums, as a Leginon session has them: --uncorrected estimates on these."""
    raw = home / "runs" / "cl" / "rawdata"
    for m in MOVIES:
        shutil.copyfile(raw / f"{m}-a.mrc", raw / f"{m}.mrc")


def test_ctffind4_classic_lines(site):
    """ctffind4.py: the web interface's line, phase plate and exhaustive search (CTFFIND4 stand-in), --ddstackid,
    --best-database, --reprocess (only fits at most this good are redone), --uncorrected (the exposures' own
    images), --mrclist, --no-commit, old options: each writes its ApAceRunData/ApCtfFind4ParamsData/ApCtfData rows
    and -pow.txt files."""
    home, env = site
    db = Rows(home)
    ctf = home / "runs" / "cl" / "ctf"
    dw = [f"{m}-a-DW" for m in MOVIES]
    replay(env, f"ctffind4.py --expid=1 --preset=en-a-DW --runname=ctf1 --rundir={ctf / 'ctf1'} --ampcontrast=0.07 "
           "--fieldsize=256 --resmin=50 --resmax=8 --defstep=0.1 --numstep=25 --dast=0.05 --num_frame_avg=7 "
           "--projectid=1 --commit --no-wait --continue --jobtype=ctfestimate --description='ctf of dd1'",
           warns=("--num_frame_avg",), done=2)
    assert [r[0] for r in db.ctf("ctf1")] == dw
    assert db.ctf_params("ctf1")[:4] == (0.07, 256, 50.0, pytest.approx(0.1e-6))
    assert sorted(p.name for p in (ctf / "ctf1").glob("*-pow.txt")) == [f"{d}-pow.txt" for d in dw]
    assert db.job("ctf1") == [("D", "ctfestimate")]

    replay(env, f"ctffind4.py -s cl -n ctf2 --preset=en-a-DW --engine=ctffind4 --engine-exe={STANDINS / 'ctffind4'} "
           "--phase_plate --minphaseshift=20 --maxphaseshift=160 --phasestep=20 --exhaustive-search --fieldsize=256 "
           "--resmax=8", done=2)
    params = db.ctf_params("ctf2")
    assert params[4:8] == (1, 20.0, 160.0, 20.0), params
    assert all(r[3] is not None for r in db.ctf("ctf2"))
    assert db.job("ctf2") == [("D", "ctffind4")]  # classic: the program name when no --jobtype is given

    out = replay(env, "ctffind4.py -s cl -n ctf3 --preset=en-a-DW --bestdb --nominal=2.0 --exhaust --fieldsize=256 "
                 "--resmax=8", warns=("--bestdb", "--exhaust"), done=2)
    assert "--exhaust has no effect with --engine builtin: only ctffind4 uses it" in out
    assert db.ctf_params("ctf3")[8] == 1  # bestdb recorded

    dd1 = db.q("SELECT DEF_id FROM ApDDStackRunData WHERE runname = 'dd1'")[0][0]
    replay(env, f"ctffind4.py -s cl -n ctf4 --ddstackid={dd1} --fieldsize=256 --resmax=8", done=2)
    assert [r[0] for r in db.ctf("ctf4")] == sorted(t for _, t in db.dd_pairs("dd1"))

    # --reprocess: image 1's fits all score 0.9, image 2's 0.1 -> with 0.5 only image 2 is redone
    con = sqlite3.connect(home / "appion.sqlite3")
    for image, score in ((dw[0], 0.9), (dw[1], 0.1)):
        con.execute("UPDATE ApCtfData SET confidence = ?, confidence_d = ?, confidence_30_10 = ?, confidence_5_peak "
                    '= ? WHERE "REF|leginondata|AcquisitionImageData|image" = (SELECT DEF_id FROM AcquisitionImageData '
                    "WHERE filename = ?)", (score, score, score, score, image))
    con.commit()
    con.close()
    replay(env, "ctffind4.py -s cl -n ctf5 --preset=en-a-DW --reprocess=0.5 --fieldsize=256 --resmax=8", done=1)
    assert [r[0] for r in db.ctf("ctf5")] == [dw[1]]

    # --uncorrected: the exposures' own sums, never the aligned ones (no preset: the whole session)
    write_raw_sums(home)
    replay(env, "ctffind4.py -s cl -n ctf6 --uncorrected --fieldsize=256 --resmax=8", done=2)
    assert [r[0] for r in db.ctf("ctf6")] == MOVIES

    replay(env, "ctffind4.py -s cl -n ctf7 --mrclist=lp_00002en-a-DW --tiltangle=notilt --reverse --fieldsize=256 "
           "--resmax=8 --newnominal --apix_man=1.0 --bin=1",
           warns=("--newnominal", "--apix_man", "--bin"), done=1)
    assert [r[0] for r in db.ctf("ctf7")] == [dw[1]]
    replay(env, "ctffind4.py --projectid=1 --sessionname=cl --runname=ctf9 --startimgid=2 --endimgid=999 "
           "--preset=en-a-DW --fieldsize=256 --resmax=8 --commit --no-wait --shuffle --parallel",
           warns=("--shuffle", "--parallel"), done=2)
    assert [r[0] for r in db.ctf("ctf9")] == dw

    before = db.count("ApCtfData"), db.count("ApAceRunData")
    replay(env, f"ctffind4.py -s cl -n ctf8 -R {ctf / 'ctf8'} --preset=en-a-DW --no-commit --fieldsize=256 --resmax=8",
           done=2)
    assert (db.count("ApCtfData"), db.count("ApAceRunData")) == before
    assert len(list((ctf / "ctf8").glob("*-pow.txt"))) == 2


def test_gctf_classic_lines(site):
    """gctf.py: the web interface's line on the Gctf stand-in (EPA, local refinement, high-resolution refinement,
    --ppn, --fastmode), the old --resL/--resH spelling, the phase-plate options with the built-in estimator (the
    Gctf-only options warn), --reprocess and --uncorrected."""
    home, env = site
    db = Rows(home)
    gdir = home / "runs" / "cl" / "ctf" / "gctf1"
    replay(env, f"gctf.py --expid=1 --preset=en-a-DW --runname=gctf1 --rundir={gdir} --engine=gctf "
           f"--engine-exe={STANDINS / 'gctf'} --ampcontrast=0.07 --fieldsize=256 --resmin=50 --resmax=6 "
           "--defstep=0.05 --numstep=25 --dast=0.1 --do_EPA --do_Hres_ref --do_local_refine --local_radius=1024 "
           "--local_boxsize=128 --local_overlap=0.5 --local_raster=200 --mdef_aveN=1 --ppn=4 --fastmode --projectid=1 "
           "--commit --no-wait --continue --jobtype=gctf",
           warns=("--local_raster", "--ppn", "--fastmode"), done=2)
    assert len(db.ctf("gctf1")) == 2 and db.job("gctf1") == [("D", "gctf")]
    assert len(list(gdir.glob("*_gctf.log"))) == 2

    replay(env, "gctf.py -s cl -n gctf2 --preset=en-a-DW --resL=40 --resH=6 --fieldsize=256 --limit=1", done=1)
    assert db.ctf_params("gctf2")[2] == 40.0

    replay(env, "gctf.py -s cl -n gctf3 --preset=en-a-DW --phase_plate --min_phase_shift=10 --max_phase_shift=170 "
           "--phase_search_step=10 --slowmode --do_EPA --fieldsize=256 --resmax=6 --best-database",
           warns=("--slowmode", "--do_EPA", "--bestdb"), done=2)
    assert db.ctf_params("gctf3")[4:8] == (1, 10.0, 170.0, 10.0)

    replay(env, "gctf.py -s cl -n gctf4 --uncorrected --reprocess=10 --fieldsize=256 --resmax=6", done=2)
    assert [r[0] for r in db.ctf("gctf4")] == MOVIES  # the exposures' own sums, no fit scoring above 10

    before = db.count("ApCtfData")
    replay(env, "gctf.py -s cl -n gctf5 --mrclist=lp_00001en-a-DW,lp_00002en-a-DW --no-commit --fieldsize=256 "
           "--resmax=6 --no-rejects", done=2)  # the hidden exposure 1: its aligned images have their own status
    assert db.count("ApCtfData") == before


def test_every_option_has_help_and_at_least_30_lines_were_replayed():
    """--help documents every option; the module replayed at least 30 classic command lines (when run whole)."""
    from appion.loop.dropin import ctffind4, gctf, makeddalign

    for module in (makeddalign, ctffind4, gctf):
        for action in module.calc_parser()._actions:
            assert action.help and action.help.strip(), (module.PROG, action.option_strings)
    if len(REPLAYED) >= 10:  # the whole module ran
        assert len(REPLAYED) >= 30, len(REPLAYED)


def test_image_selection_decides_new_images_as_they_arrive():
    """The loop asks `image_id in selection` of each new image: include/exclude sets known at the start, and for
    images that arrive later (ids above known_max) the run's check (e.g. --uncorrected: not an aligned sum)."""
    from appion.loop.dropindb import ImageSelection

    asked = []
    sel = ImageSelection(None, frozenset({2}), lambda i: asked.append(i) or i == 7, known_max=5)
    assert [i in sel for i in (1, 2, 5, 6, 7, 7)] == [True, False, True, True, False, False]
    assert asked == [6, 7]  # each later image checked once
    sel = ImageSelection(frozenset({1, 3}), frozenset({3}))
    assert [i in sel for i in (1, 2, 3, 9)] == [True, False, False, False]


@pytest.mark.mariadb
def test_project_database_gets_its_tables_on_first_use(mariadb_home, tmp_path):
    """A classic `-p` run whose project's processingdb row names a database that does not exist yet: it is
    created with the appion tables, the run's rows go there (not to the configured appion database)."""
    home, env = mariadb_home
    cfg = (home / "config.toml").read_text()
    prefix = _prefix(cfg)
    ap2 = f"{prefix}_ap2"
    mysql_exec(f"DROP DATABASE IF EXISTS `{ap2}`")
    make_session(env, tmp_path / "sim", "pp")
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)  # projects/processingdb
    mysql_exec("INSERT INTO projects (name) VALUES ('p12'); "
               f"INSERT INTO processingdb (`REF|projects|project`, appiondb) VALUES (LAST_INSERT_ID(), '{ap2}')",
               f"{prefix}_proj")
    pid = mysql_exec("SELECT DEF_id FROM projects WHERE name = 'p12'", f"{prefix}_proj").strip()
    try:
        replay(env, f"makeDDAlignMotionCor2_UCSF.py --projectid={pid} --session=pp --runname=pdd1 --doseweight "
               "--commit", done=2)
        replay(env, f"ctffind4.py --projectid={pid} --session=pp --runname=pctf1 --preset=en-a-DW --fieldsize=256 "
               "--resmax=8 --commit", done=2)
        tables = set(mysql_exec("SHOW TABLES", ap2).split())
        assert {"ApDDStackRunData", "ApCtfFind4ParamsData", "ApCtfData", "ScriptProgramRun"} <= tables
        assert mysql_exec("SELECT runname FROM ApDDStackRunData", ap2).split() == ["pdd1"]
        assert mysql_exec("SELECT COUNT(*) FROM ApCtfData", ap2).strip() == "2"
        assert mysql_exec("SELECT COUNT(*) FROM ApDDStackRunData", f"{prefix}_ap").strip() == "0"
    finally:
        mysql_exec(f"DROP DATABASE IF EXISTS `{ap2}`")


def _prefix(cfg: str) -> str:
    """<prefix> of the fixture's <prefix>_leg/_proj/_ap databases."""
    line = next(x for x in cfg.splitlines() if x.startswith("leginon"))
    return line.rsplit("/", 1)[1].strip().strip('"').removesuffix("_leg")
