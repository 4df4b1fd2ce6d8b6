"""prepRefine{Relion,Eman,Frealign,Xmipp}.py on a simulated particle stack and model whose micrographs
have CTF estimates in the database (tests/refine/simdata.py)."""
from __future__ import annotations

import os
import subprocess

import mrcfile
import numpy as np
import pytest
import starfile

from appion.refine.calc import formats as F
from appion.refine.calc import internal as I
from tests.refine import simdata

N = 40


@pytest.fixture
def sim(tmp_path):
    return simdata.simulate(tmp_path / "sim", n=N, box=32, apix=4.0, per_micrograph=10)


def _run(program, *args):
    """A console command against this process's database (APPION_HOME is inherited from conftest)."""
    return subprocess.run([program, *args], env=dict(os.environ), capture_output=True, text=True, timeout=180)


def test_relion_preparation_has_optics_and_each_particles_ctf_from_the_database(db, sim):
    from appion.base.db import models as m

    session_id = simdata.store_session(sim)
    out = db.appion_base / "preptests" / "relprep"
    # classic optparse accepts unique prefixes (--lastP, --lowp); -s is classic's --stackid
    r = _run("prepRefineRelion.py", "-s", str(sim.star), f"--modelid={sim.model}", "--lastP", "30", "--lowp", "20",
             "--highpass", "60", "--bin", "2", "-n", "relprep", "-R", str(out), "-p", "1", "-d", "simulated",
             f"--expId={session_id}", "--relion_version=3.1", "--ctfmethod=ctffind")
    assert r.returncode == 0, r.stderr
    assert "30 particles with CTF, box 16 at 8 Å" in r.stdout
    blocks = starfile.read(out / "particles.star", always_dict=True)
    optics, parts = blocks["optics"], blocks["particles"]
    assert optics.loc[0, ["rlnOpticsGroup", "rlnImageSize", "rlnImageDimensionality"]].tolist() == [1, 16, 2]
    assert optics.loc[0, ["rlnImagePixelSize", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]] \
        .tolist() == pytest.approx([8.0, simdata.VOLTAGE_KV, simdata.CS_MM, simdata.AMP_CONTRAST])
    assert len(parts) == 30 and set(parts["rlnOpticsGroup"]) == {1}
    assert parts["rlnImageName"].tolist() == [f"{i:06d}@{out / 'particles.mrcs'}" for i in range(1, 31)]
    expected = np.array([sim.defocus_A[mic] for mic in sim.micrographs[:30]])
    np.testing.assert_allclose(parts[["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]].to_numpy(), expected,
                               atol=0.01)
    assert parts["rlnMicrographName"].tolist() == [f"{mic}.mrc" for mic in sim.micrographs[:30]]

    with mrcfile.open(out / "particles.mrcs") as mrc:
        prepared = np.array(mrc.data)
        assert mrc.is_image_stack() and abs(float(mrc.voxel_size.x) - 8.0) < 1e-5
    np.testing.assert_allclose(prepared, I.calc_prepared(sim.images[:30], 4.0, 20.0, 60.0, 2, ndim=2), atol=1e-4)
    k = I.calc_frequency_magnitude((16, 16), 8.0)  # nothing finer than 20 Å or coarser than 60 Å beyond the edges
    power = np.abs(np.fft.rfft2(prepared)) ** 2
    edge = 2.0 / (32 * 4.0)
    assert power[:, k >= 1 / 20 + edge / 2].max() < 1e-6 * power.max()
    assert power[:, k <= 1 / 60 - edge / 2].max() < 1e-6 * power.max()
    with mrcfile.open(out / "model.mrc") as mrc:
        assert mrc.data.shape == (16,) * 3

    [prep] = m.ApPrepRefineData.objects.all()
    [stack_rec] = m.ApPrepRefineStackData.objects.filter(preprefine_id=prep.id)
    assert (prep.method, prep.description, prep.session_id) == ("relionrecon", "simulated", session_id)
    assert (stack_rec.filename, stack_rec.last_part, stack_rec.bin, stack_rec.apix, stack_rec.boxsize,
            stack_rec.format) == ("particles.star", 30, 2, 8.0, 16, "relion-3.1-star+ctf")
    assert m.ApStackData.objects.get(id=prep.stack_id).name == sim.star.name


def test_relion_30_layout_and_classic_options_warned_once(db, sim, capsys):
    from appion.refine import cli

    session_id = simdata.store_session(sim)
    out = db.appion_base / "preptests" / "rel30"
    assert cli.main_prep_relion(["--stackid", str(sim.star), "--modelid", str(sim.model), "-n", "rel30", "-R", str(out),
                                 "--sessionname", "25jan01sim", "--relion_version", "3.0", "--xmipp-normalize=4.5",
                                 "--reconiterid=7", "--nproc=4", "--jobtype=preprefine", "--no-commit"]) == 0
    err = capsys.readouterr().err
    for option in ("--xmipp-normalize", "--reconiterid", "--nproc", "--jobtype"):
        assert err.count(f"warning: {option}") == 1, (option, err)
    blocks = starfile.read(out / "particles.star", always_dict=True)
    assert list(blocks) == ["particles"]  # RELION ≤ 3.0: no optics table, optics per particle
    table = blocks["particles"]
    assert set(table["rlnVoltage"]) == {simdata.VOLTAGE_KV} and set(table["rlnDetectorPixelSize"]) == {4.0}
    assert set(table["rlnMagnification"]) == {10000.0} and "rlnOpticsGroup" not in table
    assert session_id  # the session was found by name


def test_frealign_parameter_file_has_each_particles_ctf(db, sim, capsys):
    from appion.refine import cli

    session_id = simdata.store_session(sim, cs_m=None, ctf_cs_mm=2.0)  # Cs of the CTF run wins over the microscope's
    out = db.appion_base / "preptests" / "frprep"
    assert cli.main_prep_frealign([f"--stackid={sim.star}", f"--modelid={sim.model}", "-N", "20", "-n", "frprep",
                                   "-R", str(out), f"--expid={session_id}", "--ctftilt", "--program_version=9.11",
                                   "--ctfmethod=ctffind"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: --ctftilt") == 1 and "--program_version" not in err
    lines = (out / "params.000.par").read_text().splitlines()
    assert lines[0].startswith("C           PSI") and len(lines) == 21
    for i, line in enumerate(lines[1:]):
        # Frealign 9 columns: I7,3F8.2,2F10.2,I8,I6,2F9.1,2F8.2,F8.2,I10,F11.4,2F8.2
        assert len(line) == 7 + 24 + 20 + 8 + 6 + 18 + 16 + 8 + 10 + 11 + 16
        du, dv, angle = sim.defocus_A[sim.micrographs[i]]
        assert int(line[:7]) == i + 1 and int(line[51:59]) == 10000 and int(line[59:65]) == 1
        assert float(line[65:74]) == pytest.approx(du, abs=0.06) and float(line[74:83]) == pytest.approx(dv, abs=0.06)
        assert float(line[83:91]) == pytest.approx(angle, abs=0.006)
    optics = starfile.read(out / "particles.star", always_dict=True)["optics"]
    assert optics.loc[0, "rlnSphericalAberration"] == pytest.approx(2.0)
    with mrcfile.open(out / "particles.mrc") as mrc:
        assert mrc.data.shape == (20, 32, 32)


def test_missing_physics_is_an_error_naming_the_field(db, sim, capsys):
    from appion.refine import cli

    runs = db.appion_base / "preptests"
    session_id = simdata.store_session(sim, cs_m=None)  # neither the CTF run nor the microscope knows Cs
    assert cli.main_prep_frealign([f"--stackid={sim.star}", f"--modelid={sim.model}", "-n", "fr1", "-R",
                                   str(runs / "fr1"), f"--expid={session_id}"]) == 2
    assert "no spherical aberration (ApCtfData.cs" in capsys.readouterr().err
    # a bare MRC stack without a session: RELION 3.1 needs voltage and Cs, nothing gives them
    assert cli.main_prep_relion([f"--stackid={sim.stack}", f"--modelid={sim.model}", "-n", "rel1", "-R",
                                 str(runs / "rel1")]) == 2
    err = capsys.readouterr().err
    assert "accelerating voltage" in err and "spherical aberration" in err
    # Frealign without any CTF source
    assert cli.main_prep_frealign([f"--stackid={sim.stack}", f"--modelid={sim.model}", "-n", "fr2", "-R",
                                   str(runs / "fr2")]) == 2
    assert "Frealign needs each particle's CTF" in capsys.readouterr().err
    assert not (runs / "fr1" / "params.000.par").exists() and not (runs / "rel1" / "particles.star").exists()


def test_eman_stack_is_imagic_and_xmipp_metadata_and_mask(db, sim):
    from appion.base.db import models as m
    from appion.refine import cli

    runs = db.appion_base / "preptests"
    assert cli.main_prep_eman([f"--stackid={sim.stack}", f"--modelid={sim.model}", "-N", "12", "-n", "emanprep",
                               "-R", str(runs / "emanprep"), "--no-commit"]) == 0
    hed, img = (runs / "emanprep" / "start.hed").read_bytes(), (runs / "emanprep" / "start.img").read_bytes()
    assert len(hed) == 12 * 1024 and len(img) == 12 * 32 * 32 * 4
    words = np.frombuffer(hed, dtype="<i4").reshape(12, 256)
    assert words[:, 0].tolist() == list(range(1, 13)) and words[0, 1] == 11 and set(words[:, 12:14].ravel()) == {32}
    assert hed[56:60] == b"REAL"
    np.testing.assert_allclose(F.read_imagic_bytes(hed, img), sim.images[:12], atol=1e-5)  # unfiltered: unchanged
    assert (runs / "emanprep" / "threed.0a.mrc").exists() and m.ApPrepRefineData.objects.count() == 0

    session_id = simdata.store_session(sim)
    assert cli.main_prep_xmipp([f"--stackid={sim.star}", f"--modelid={sim.model}", "-N", "5", "-n", "xmprep",
                                "-R", str(runs / "xmprep"), f"--expid={session_id}", f"--maskVolId={sim.model}"]) == 0
    xmd = (runs / "xmprep" / "particles.xmd").read_text().splitlines()
    assert xmd[0] == "# XMIPP_STAR_1 *" and "_ctfDefocusU" in " ".join(xmd) and sum("@" in x for x in xmd) == 5
    assert (runs / "xmprep" / "maskvol.mrc").exists()
    assert cli.main_prep_xmipp([f"--stack={sim.stack}", f"--model={sim.model}", "--method", "xmippml3d",
                                "-n", "ml3dprep", "-R", str(runs / "ml3dprep")]) == 0
    assert m.ApPrepRefineData.objects.get(name="ml3dprep").method == "xmippml3d"


def test_prepare_refuses_bad_requests(db, sim, capsys):
    from appion.base.db import models as m
    from appion.refine.cli import main_prep_eman

    runs = db.appion_base / "preptests"
    small = sim.model.parent / "small_model.mrc"
    with mrcfile.new(small) as mrc:
        mrc.set_data(np.zeros((16, 16, 16), np.float32))
        mrc.voxel_size = 4.0
    cases = [
        (["-N", "100"], f"beyond the {N} particles"),
        (["--bin", "3"], "not divisible"),
        (["--lowpass", "40", "--highpass", "10"], "coarser"),
        ([f"--model={small}"], "does not match stack"),
        ([f"--model={sim.model},{sim.model}"], "refines one model"),
        (["--stack=/nonexistent/stack.mrcs"], "/nonexistent/stack.mrcs: no such file"),
        (["--stackid=999"], "stack id 999"),
        (["-R", str(sim.model.parent / "outside" / "p1")], "outside the configured run roots"),
        (["-R", str(runs / ".." / "p1")], "'..'"),
        (["-R", str(runs / "other")], "must equal the last component"),
    ]
    for extra, message in cases:
        args = [f"--stack={sim.stack}", f"--model={sim.model}", "-n", "p1", "-R", str(runs / "p1"), *extra]
        assert main_prep_eman(args) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert not (runs / "p1" / "start.hed").exists()  # no partial outputs
    assert not list(runs.rglob(".*.part")) if runs.exists() else True
    assert m.ApPrepRefineData.objects.count() == 0


def test_paramonly_writes_only_the_parameter_file_naming_the_stack_as_it_is(db, sim, capsys):
    from appion.refine import cli

    session_id = simdata.store_session(sim)
    out = db.appion_base / "preptests" / "paronly"
    assert cli.main_prep_relion([f"--stackid={sim.star}", f"--modelid={sim.model}", "-N", "8", "-n", "paronly",
                                 "-R", str(out), f"--expid={session_id}", "--paramonly", "--bin=2",
                                 "--no-commit"]) == 0
    assert capsys.readouterr().err.count("warning: --paramonly") == 1
    parts = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert parts["rlnImageName"].tolist() == [f"{i:06d}@{sim.stack}" for i in range(1, 9)]
    assert not (out / "particles.mrcs").exists()
    with mrcfile.open(out / "model.mrc") as mrc:
        assert mrc.data.shape == (32, 32, 32)  # not binned: it must match the stack as it is
