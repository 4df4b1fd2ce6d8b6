"""prepRefine{Relion,Eman,Frealign,Xmipp}.py on a simulated stack and model (subprocesses)."""
from __future__ import annotations

import os
import subprocess

import mrcfile
import numpy as np

from appion.refine.calc import internal as I

APIX = 1.5
BOX = 64
N = 20


def _simulate(tmp_path):
    """Gaussian blobs at random offsets plus noise (particles) and a blob volume (model)."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    stack = np.empty((N, BOX, BOX), np.float32)
    for i in range(N):
        dy, dx = rng.uniform(-4, 4, 2)
        stack[i] = 5 * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * 5.0**2)) + rng.normal(size=(BOX, BOX))
    zz, yv, xv = np.mgrid[:BOX, :BOX, :BOX] - BOX // 2
    model = (np.exp(-(xv**2 + yv**2 + zz**2) / (2 * 6.0**2)) + 0.1 * rng.normal(size=(BOX,) * 3)).astype(np.float32)
    paths = tmp_path / "sim_stack.mrcs", tmp_path / "sim_model.mrc"
    for path, data in zip(paths, (stack, model)):
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = APIX
    return stack, model, paths


def _run(program, *args):
    """A console command against this process's database (APPION_HOME is inherited from conftest)."""
    return subprocess.run([program, *args], env=dict(os.environ), capture_output=True, text=True, timeout=120)


def test_prepare_writes_filtered_binned_subset_and_records_it(db, tmp_path):
    """prepRefineRelion.py as a command; the other three in-process (same code path, less start-up time)."""
    from appion.base.db import models as m
    from appion.refine import cli

    runs = db.appion_base / "preptests"
    stack, model, (stack_path, model_path) = _simulate(tmp_path)
    out = runs / "relprep"
    # classic optparse accepts unique prefixes (--lastP, --lowp)
    r = _run("prepRefineRelion.py", f"--stackid={stack_path}", f"--modelid={model_path}", "--lastP", "15",
             "--lowp", "8", "--highpass", "30", "--bin", "2", "-n", "relprep", "-R", str(out), "-p", "1",
             "-d", "simulated")
    assert r.returncode == 0, r.stderr
    with mrcfile.open(out / "particles.mrcs") as mrc:
        prepared = np.array(mrc.data)
        assert mrc.is_image_stack() and abs(float(mrc.voxel_size.x) - 2 * APIX) < 1e-5
    assert prepared.shape == (15, BOX // 2, BOX // 2)
    expected = I.calc_prepared(stack[:15], APIX, 8.0, 30.0, 2, ndim=2)
    np.testing.assert_allclose(prepared, expected, atol=1e-4)
    # spectrum: nothing finer than 8 Å or coarser than 30 Å (beyond the cosine edges)
    k = I.calc_frequency_magnitude((BOX // 2, BOX // 2), 2 * APIX)
    power = np.abs(np.fft.rfft2(prepared)) ** 2
    edge = 2.0 / (BOX * APIX)
    assert power[:, k >= 1 / 8 + edge / 2].max() < 1e-6 * power.max()
    assert power[:, k <= 1 / 30 - edge / 2].max() < 1e-6 * power.max()
    with mrcfile.open(out / "model.mrc") as mrc:
        assert mrc.data.shape == (BOX // 2,) * 3
        np.testing.assert_allclose(mrc.data, I.calc_prepared(model, APIX, 8.0, 30.0, 2, ndim=3), atol=1e-4)
    star = (out / "particles.star").read_text().split()
    assert "_rlnImageName" in star and f"000015@{out / 'particles.mrcs'}" in star and "000016@" not in " ".join(star)

    [prep] = m.ApPrepRefineData.objects.all()
    [stack_rec] = m.ApPrepRefineStackData.objects.filter(preprefine_id=prep.id)
    [stack_row] = m.ApStackData.objects.all()
    [model_row] = m.ApInitialModelData.objects.all()
    method, desc = prep.method, prep.description
    row = (stack_rec.filename, stack_rec.last_part, stack_rec.lowpass, stack_rec.highpass, stack_rec.bin,
           stack_rec.apix, stack_rec.boxsize)
    stack_id, stack_name, numpart, model_id = stack_row.id, stack_row.name, stack_row.numpart, model_row.id
    assert (prep.stack_id, prep.model_id) == (stack_id, model_id)
    assert (method, desc) == ("relionrecon", "simulated")
    assert row == ("particles.star", 15, 8.0, 30.0, 2, 2 * APIX, BOX // 2)
    assert (stack_name, numpart) == ("sim_stack.mrcs", N)

    # the same stack and model by database id, EMAN layout, nothing recorded with --no-commit
    assert cli.main_prep_eman([f"--stackid={stack_id}", f"--modelid={model_id}", "-n", "emanprep",
                               "-R", str(runs / "emanprep"), "--no-commit"]) == 0
    with mrcfile.open(runs / "emanprep" / "start.mrcs") as mrc:
        np.testing.assert_allclose(mrc.data, stack, atol=1e-5)  # no filter, no binning: unchanged
    assert (runs / "emanprep" / "threed.0a.mrc").exists()
    assert m.ApPrepRefineData.objects.count() == 1

    assert cli.main_prep_frealign([f"--stack={stack_path}", f"--model={model_path}", "--bin", "4",
                                   "-n", "frprep", "-R", str(runs / "frprep")]) == 0
    with mrcfile.open(runs / "frprep" / "particles.mrc") as mrc:
        assert mrc.data.shape == (N, BOX // 4, BOX // 4)
    assert (runs / "frprep" / "run_1_r1.mrc").exists()
    assert cli.main_prep_xmipp([f"--stack={stack_path}", f"--model={model_path}", "-N", "5",
                                "-n", "xmprep", "-R", str(runs / "xmprep")]) == 0
    xmd = (runs / "xmprep" / "particles.xmd").read_text()
    assert xmd.startswith("# XMIPP_STAR_1") and xmd.count("@") == 5
    assert cli.main_prep_xmipp([f"--stack={stack_path}", f"--model={model_path}", "--method", "xmippml3d",
                                "-n", "ml3dprep", "-R", str(runs / "ml3dprep")]) == 0
    assert m.ApPrepRefineData.objects.get(name="ml3dprep").method == "xmippml3d"
    assert cli.main_prep_eman([f"--stack={stack_path}", f"--model={model_path}", "--method", "relionrecon",
                               "-n", "bad", "-R", str(runs / "bad")]) == 2


def test_prepare_refuses_bad_requests(db, tmp_path, capsys):
    """In-process (the session's database; run roots default to its appion_base)."""
    from appion.refine.cli import main_prep_relion

    runs = db.appion_base / "preptests"
    _, _, (stack_path, model_path) = _simulate(tmp_path)
    small = tmp_path / "small_model.mrc"
    with mrcfile.new(small) as mrc:
        mrc.set_data(np.zeros((32, 32, 32), np.float32))
        mrc.voxel_size = APIX
    cases = [
        (["-N", "100"], "beyond the 20 particles"),
        (["--bin", "3"], "not divisible"),
        (["--lowpass", "40", "--highpass", "10"], "coarser"),
        ([f"--model={small}"], "does not match stack"),
        (["--stack=/nonexistent/stack.mrcs"], "/nonexistent/stack.mrcs: no such file"),
        (["--stackid=999"], "stack id 999"),
        (["-R", str(tmp_path / "outside" / "p1")], "outside the configured run roots"),
        (["-R", str(runs / ".." / "p1")], "'..'"),
        (["-R", str(runs / "other")], "must equal the last component"),
    ]
    for extra, message in cases:
        args = [f"--stack={stack_path}", f"--model={model_path}", "-n", "p1", "-R", str(runs / "p1"), *extra]
        assert main_prep_relion(args) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert not (runs / "p1" / "particles.mrcs").exists()  # no partial outputs
    assert not list(runs.rglob(".*.part")) if runs.exists() else True
    from appion.base.db import models as m

    assert m.ApPrepRefineData.objects.count() == 0
