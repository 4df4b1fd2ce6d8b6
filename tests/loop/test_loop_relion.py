"""The loop driving the real RELION (`relion_run_motioncorr --use_own`, Debian package) as its motion engine."""
import os
import shutil

import pytest

from tests.loop.loophelpers import Db, copy_movies, finish, import_session, start_loop, truth_defocus_A

pytestmark = pytest.mark.skipif(shutil.which("relion_run_motioncorr") is None and not os.environ.get("CI"),
                                reason="RELION is not installed (CI installs it)")


def test_loop_with_relion_engine(home_env, sim_frames, tmp_path):
    """Two Leginon-named movies (dots in their stems) through RELION then the built-in CTF: one result each."""
    home, env = home_env
    names = ["lp_00001en", "lp_00002en"]
    frames = copy_movies(sim_frames, tmp_path / "frames", names)
    import_session(env, "rel", frames)
    log = tmp_path / "loop.log"
    proc = start_loop(env, ["--session", "rel", "--no-wait", "--idle", "0", "--poll", "0.3",
                            "--dashboard-address", ":0", "--engine-motion", "relion"], log)
    assert finish(proc, 240, log) == 0, log.read_text()[-3000:]
    db = Db(home)
    assert db.count("ApDDAlignImagePairData") == 2 and db.count("ApCtfData") == 2
    assert db.rows("SELECT COUNT(*) FROM ApLoopExposureData WHERE status != 'done'") == [(0,)]
    ctf = dict(db.rows("SELECT i.filename, (c.defocus1 + c.defocus2) / 2 FROM ApCtfData c JOIN "
                       "AcquisitionImageData i ON i.DEF_id = c.`REF|leginondata|AcquisitionImageData|image`"))
    for name in names:
        df1, df2 = truth_defocus_A(frames, name)
        assert ctf[f"{name}-a-DW"] * 1e10 == pytest.approx((df1 + df2) / 2, rel=0.02)
    ddstack = home / "runs" / "rel" / "ddstack" / "loop1"
    assert len(list(ddstack.rglob("*.star"))) >= 2  # RELION's per-movie shift files kept in the run directory
