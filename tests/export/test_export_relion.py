"""`appion export relion` on a processed session written directly into the database (the loop's rows, as
tests/web/synthetic.py writes them): the STAR files are read back with starfile and by the real RELION
(relion_star_handler), with values equal to the database's, links to the real files, rejections honoured.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from tests.web.synthetic import insert_session

pytestmark = pytest.mark.timeout(300)

RELION_STAR_HANDLER = shutil.which("relion_star_handler")
HIDDEN, CURATED, ASSESSED, NO_FIT, FAILED_K = 1, 2, 3, 4, 7
CURATION_REASON = "rejected by quality: fit resolution 9.1 Å > 6 Å"


def need_relion() -> str:
    if RELION_STAR_HANDLER is None:
        if os.environ.get("CI"):
            pytest.fail("relion_star_handler is not installed (apt-get install relion)")
        pytest.skip("relion_star_handler is not installed (apt-get install relion)")
    return RELION_STAR_HANDLER


def write_mrc(path: Path, value: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as f:
        f.set_data(np.full((16, 16), value, dtype=np.float32))
        f.voxel_size = 1.0


@pytest.fixture
def processed(db, tmp_path):
    """Eight exposures: 0–6 processed, 7 failed in motion; 1 hidden in the viewer, 2 rejected by a curation step
    (its CTF not run), 3 assessed 'do not keep' on its dose-weighted sum, 4 with no CTF fit (100000 Å).  The loop
    run's CTF step run is a second ApAceRunData (run2), so the step-run rows, not ApLoopRunData.acerun, decide."""
    from appion.base.db import models as m

    image_dir, run_dir = tmp_path / "img", tmp_path / "runs"
    s = insert_session("exp", 8, image_dir, run_dir, n_failed=1)
    tem = m.InstrumentData.objects.create(name="krios", cs=2.7e-3)
    scope = m.ScopeEMData.objects.create(session_id=s.session_id, tem=tem, high_tension=200000, magnification=100000)
    m.AcquisitionImageData.objects.filter(id__in=s.source_ids).update(scope=scope)
    names = dict(m.AcquisitionImageData.objects.filter(session_id=s.session_id).values_list("filename", "id"))
    ace2_dir = run_dir / "ctf" / "run2"
    ace2 = m.ApAceRunData.objects.create(name="run2", session_id=s.session_id, hidden=False,
                                         path=m.ApPathData.objects.create(path=str(ace2_dir)))
    for k in range(7):
        stem = f"exp_{k:05d}en-a"
        write_mrc(image_dir / f"{stem}.mrc", k)
        write_mrc(image_dir / f"{stem}-DW.mrc", k + 0.5)
        if k == CURATED:
            continue
        write_mrc(ace2_dir / f"{stem}-DW.ctf", k)
        m.ApCtfData.objects.create(
            acerun=ace2, image_id=names[f"{stem}-DW"], defocus1=1.2345678e-6 + 1e-8 * k, defocus2=1.3e-6 + 2e-8 * k,
            angle_astigmatism=-80.0 + 37.5 * k, cross_correlation=0.123456789 + 0.01 * k,
            ctffind4_resolution=100000.0 if k == NO_FIT else 3.25 + 0.5 * k, cs=2.7, amplitude_contrast=0.07,
            extra_phase_shift=0.0, graph1=f"{stem}-DW.ctf")
    m.ApLoopStepRunData.objects.create(looprun_id=s.looprun_id, session_id=s.session_id, step="motion",
                                       run_id=s.ddstackrun_id, memo_key="m", reused=False)
    m.ApLoopStepRunData.objects.create(looprun_id=s.looprun_id, session_id=s.session_id, step="ctf", run_id=ace2.id,
                                       memo_key="c", reused=False)
    m.ViewerImageStatus.objects.create(session_id=s.session_id, image_id=s.source_ids[HIDDEN], status="exemplar")
    m.ViewerImageStatus.objects.create(session_id=s.session_id, image_id=s.source_ids[HIDDEN], status="hidden")
    m.ApLoopExposureData.objects.filter(looprun_id=s.looprun_id, image_id=s.source_ids[CURATED], step="ctf").update(
        status="failed", last_error=f"not run: {CURATION_REASON}")
    run = m.ApAssessmentRunData.objects.create(name="a1", session_id=s.session_id)
    m.ApAssessmentData.objects.create(assessmentrun=run, image_id=names[f"exp_{ASSESSED:05d}en-a-DW"],
                                      selectionkeep=False)
    # kept by a person: a newer status than a hide
    m.ViewerImageStatus.objects.create(session_id=s.session_id, image_id=s.source_ids[5], status="hidden")
    m.ViewerImageStatus.objects.create(session_id=s.session_id, image_id=s.source_ids[5], status="exemplar")
    ctf = {row["image_id"]: row for row in m.ApCtfData.objects.filter(acerun=ace2).values()}
    return {"s": s, "image_dir": image_dir, "ace_dir": ace2_dir, "ctf": ctf, "names": names}


def export(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["appion", "export", "relion", "--session", "exp", "-o", str(out), *extra],
                          capture_output=True, text=True, timeout=120)


def dw_name(k: int) -> str:
    return f"exp_{k:05d}en-a-DW"


def check_ctf_row(row, db_row) -> None:
    """A micrographs_ctf.star row against its ApCtfData row: equal values in RELION's conventions."""
    d1, d2 = db_row["defocus1"] * 1e10, db_row["defocus2"] * 1e10
    assert row["rlnDefocusU"] == pytest.approx(max(d1, d2), rel=1e-10)
    assert row["rlnDefocusV"] == pytest.approx(min(d1, d2), rel=1e-10)
    assert row["rlnDefocusU"] >= row["rlnDefocusV"]
    assert row["rlnCtfAstigmatism"] == pytest.approx(abs(d2 - d1), rel=1e-9)
    assert row["rlnCtfFigureOfMerit"] == pytest.approx(db_row["cross_correlation"], rel=1e-10)
    assert row["rlnCtfMaxResolution"] == pytest.approx(db_row["ctffind4_resolution"], rel=1e-10)
    assert -90 < row["rlnDefocusAngle"] <= 90
    # the same astigmatism: the defocus in every direction agrees (classic: defocus1 along angle_astigmatism)
    for theta in range(0, 180, 15):
        classic = 0.5 * (d1 + d2 + (d1 - d2) * math.cos(2 * math.radians(theta - db_row["angle_astigmatism"])))
        relion = 0.5 * (row["rlnDefocusU"] + row["rlnDefocusV"] + (row["rlnDefocusU"] - row["rlnDefocusV"])
                        * math.cos(2 * math.radians(theta - row["rlnDefocusAngle"])))
        assert relion == pytest.approx(classic, abs=1e-6), theta


def test_accepted_exposures_with_database_values(processed, tmp_path):
    out = tmp_path / "export"
    done = export(out)
    assert done.returncode == 0, done.stderr
    p = processed
    accepted = [0, NO_FIT, 5, 6]
    corrected = starfile.read(out / "corrected_micrographs.star", always_dict=True)
    assert set(corrected) == {"optics", "micrographs"}
    optics = corrected["optics"]
    assert len(optics) == 1
    assert optics.loc[0, "rlnVoltage"] == 200 and optics.loc[0, "rlnSphericalAberration"] == pytest.approx(2.7)
    assert optics.loc[0, "rlnAmplitudeContrast"] == pytest.approx(0.07)
    assert optics.loc[0, "rlnMicrographPixelSize"] == 1.0 and optics.loc[0, "rlnMicrographOriginalPixelSize"] == 1.0
    mics = corrected["micrographs"]
    assert list(mics["rlnMicrographName"]) == [str(out / "Micrographs" / f"{dw_name(k)}.mrc") for k in accepted]
    for k, name, nodw in zip(accepted, mics["rlnMicrographName"], mics["rlnMicrographNameNoDW"]):
        assert Path(name).is_symlink() and Path(name).resolve() == p["image_dir"] / f"{dw_name(k)}.mrc"
        assert Path(nodw).resolve() == p["image_dir"] / f"exp_{k:05d}en-a.mrc"
        with mrcfile.open(name) as f:  # the link opens the real sum
            assert float(f.data[0, 0]) == k + 0.5
    assert set(mics["rlnOpticsGroup"]) == {1}
    assert (mics["rlnAccumMotionTotal"] > 0).all()

    ctf = starfile.read(out / "micrographs_ctf.star", always_dict=True)
    assert set(ctf) == {"optics", "micrographs"}
    rows = ctf["micrographs"]
    assert list(rows["rlnMicrographName"]) == list(mics["rlnMicrographName"])
    for k, (_, row) in zip(accepted, rows.iterrows()):
        image = row["rlnCtfImage"]
        assert image == str(out / "CtfImages" / f"{dw_name(k)}.ctf") + ":mrc"
        assert Path(image[:-4]).resolve() == p["ace_dir"] / f"{dw_name(k)}.ctf"
        check_ctf_row(row, p["ctf"][p["names"][dw_name(k)]])
    text = done.stdout
    assert "4 micrographs (4 with a CTF fit)" in text
    for reason in ("hidden in the viewer", CURATION_REASON, "assessed 'do not keep'"):
        assert f"left out (rejected): 1 × {reason}" in text, text


def test_relion_reads_and_selects(processed, tmp_path):
    handler = need_relion()
    out = tmp_path / "export"
    assert export(out).returncode == 0
    ctf = starfile.read(out / "micrographs_ctf.star", always_dict=True)["micrographs"]
    done = subprocess.run([handler, "--i", "micrographs_ctf.star", "--o", "x.star", "--select", "rlnCtfMaxResolution",
                           "--maxval", "100"], cwd=out, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    selected = starfile.read(out / "x.star", always_dict=True)
    assert "optics" in selected  # RELION kept the optics table: it read the file as 3.1 with optics groups
    rows = selected["micrographs"]
    expected = ctf[ctf["rlnCtfMaxResolution"] <= 100]
    assert len(expected) == 3 and list(rows["rlnMicrographName"]) == list(expected["rlnMicrographName"])
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfAstigmatism", "rlnCtfFigureOfMerit",
                   "rlnCtfMaxResolution"):  # RELION: %12.6f, some labels in single precision
        assert np.allclose(rows[column], expected[column], rtol=2e-7, atol=1e-6), column
    # and RELION reads corrected_micrographs.star too
    done = subprocess.run([handler, "--i", "corrected_micrographs.star", "--o", "y.star"], cwd=out,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(starfile.read(out / "y.star", always_dict=True)["micrographs"]) == 4


def test_all_includes_rejected_and_relative_paths(processed, tmp_path):
    project = tmp_path / "relionproject"
    out = project / "Import" / "appion"
    done = export(out, "--all", "--relative-to", str(project))
    assert done.returncode == 0, done.stderr
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert list(mics["rlnMicrographName"]) == [f"Import/appion/Micrographs/{dw_name(k)}.mrc" for k in range(7)]
    assert all((project / name).resolve() == processed["image_dir"] / Path(name).name
               for name in mics["rlnMicrographName"])
    ctf = starfile.read(out / "micrographs_ctf.star", always_dict=True)["micrographs"]
    assert list(ctf["rlnMicrographName"]) == [f"Import/appion/Micrographs/{dw_name(k)}.mrc" for k in range(7)
                                             if k != CURATED]
    assert "included although rejected (--all): 1 × hidden in the viewer" in done.stdout
    # exporting again over the same directory replaces nothing but the links and files it wrote
    again = export(out, "--all", "--relative-to", str(project))
    assert again.returncode == 0, again.stderr


def test_errors_are_one_line(processed, tmp_path):
    done = subprocess.run(["appion", "export", "relion", "--session", "nosuch", "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "appion: session 'nosuch' not found"
    done = export(tmp_path / "o", "--run", "loopX")
    assert done.returncode == 2 and "has no loop run 'loopX' (its loop runs: run1)" in done.stderr
    blocked = tmp_path / "blocked"
    (blocked / "Micrographs").mkdir(parents=True)
    (blocked / "Micrographs" / f"{dw_name(0)}.mrc").write_text("not a link")
    done = export(blocked)
    assert done.returncode == 2 and "exists and is not a link" in done.stderr
