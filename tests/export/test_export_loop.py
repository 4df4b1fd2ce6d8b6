"""`appion export relion` after a real `appion loop` on two simulated movies: what the loop stored is what
RELION reads (relion_star_handler), and the links open the aligned sums the loop wrote."""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from tests.export.test_export_relion import check_ctf_row, need_relion
from tests.loop.loophelpers import DOSE_PER_FRAME, FRAMES, SIZE, Db, finish, import_session, start_loop

pytestmark = pytest.mark.timeout(600)


def test_export_after_a_loop_run(fresh_home, tmp_path):
    handler = need_relion()
    home, env = fresh_home
    sim = tmp_path / "sim"
    subprocess.run(["appion", "simulate", "session", "--out", str(sim), "--n", "2", "--size", str(SIZE),
                    "--frames", str(FRAMES), "--dose-per-frame", str(DOSE_PER_FRAME), "--name", "ex",
                    "--format", "tiff", "--seed", "7"], env=env, check=True, capture_output=True, timeout=300)
    import_session(env, "ex2", sim / "frames")
    log = tmp_path / "loop.log"
    proc = start_loop(env, ["--session", "ex2", "--no-wait", "--idle", "0", "--poll", "0.3",
                            "--dashboard-address", ":0"], log)
    assert finish(proc, 400, log) == 0, log.read_text()[-3000:]

    out = tmp_path / "relion"
    done = subprocess.run(["appion", "export", "relion", "--session", "ex2", "-o", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 micrographs (2 with a CTF fit)" in done.stdout

    db = Db(home)
    names = dict(db.rows("SELECT DEF_id, filename FROM AcquisitionImageData", "leginon"))
    ctf_rows = {names[i]: (d1, d2, angle, cc, res) for i, d1, d2, angle, cc, res in db.rows(
        'SELECT "REF|leginondata|AcquisitionImageData|image", defocus1, defocus2, angle_astigmatism, '
        "cross_correlation, ctffind4_resolution FROM ApCtfData")}
    image_path = Path(db.rows('SELECT "image path" FROM SessionData WHERE name = \'ex2\'', "leginon")[0][0])
    ctf = starfile.read(out / "micrographs_ctf.star", always_dict=True)
    assert ctf["optics"].loc[0, "rlnVoltage"] == 300 and ctf["optics"].loc[0, "rlnSphericalAberration"] == 2.7
    rows = ctf["micrographs"]
    assert len(rows) == 2
    for _, row in rows.iterrows():
        link = Path(row["rlnMicrographName"])
        assert link.parent == out / "Micrographs" and link.is_symlink()
        assert link.resolve() == (image_path / link.name).resolve()
        with mrcfile.open(link) as f:  # the aligned sum the loop wrote
            assert f.data.ndim == 2 and np.isfinite(f.data).all() and float(f.data.std()) > 0
        d1, d2, angle, cc, res = ctf_rows[link.stem]
        check_ctf_row(row, {"defocus1": d1, "defocus2": d2, "angle_astigmatism": angle, "cross_correlation": cc,
                            "ctffind4_resolution": res})
        assert math.isfinite(res) and res < 100
        assert Path(row["rlnCtfImage"]).resolve().is_file()  # the CTF run's diagnostic image

    done = subprocess.run([handler, "--i", "micrographs_ctf.star", "--o", "x.star", "--select", "rlnCtfMaxResolution",
                           "--maxval", "100"], cwd=out, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    selected = starfile.read(out / "x.star", always_dict=True)["micrographs"]
    assert list(selected["rlnMicrographName"]) == list(rows["rlnMicrographName"])
    # RELION writes %12.6f and keeps some labels in single precision (-43.1647966 comes back as -43.164800)
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfFigureOfMerit", "rlnCtfMaxResolution"):
        assert np.allclose(selected[column], rows[column], rtol=2e-7, atol=1e-6), column
