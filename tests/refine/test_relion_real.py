"""prepRefineRelion.py then runJob.py --jobtype=relionrecon with the real relion_refine (RELION 3.1.3 from
Debian, installed by `bash .ci/test`) on the session's private Slurm: a small simulated data set (200
particles, 32 px at 4 Å, four micrographs whose CTF estimates are in the database), two iterations."""
from __future__ import annotations

import os
import shlex
import subprocess
import time

import mrcfile
import numpy as np
import pytest
import starfile

from tests.refine import simdata

pytestmark = pytest.mark.slurm


def _require_relion():
    import shutil

    if shutil.which("relion_refine") is None:
        if os.environ.get("CI"):
            pytest.fail("relion_refine is required in CI (apt-get install relion)")
        pytest.skip("relion_refine is not installed")


def _run(program, *args, timeout=600):
    return subprocess.run([program, *args], env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


def test_prepared_particles_refine_in_relion_refine_on_slurm_to_completion(db, private_slurm, tmp_path):
    from appion.base.db import models as m

    _require_relion()
    assert os.environ["SLURM_CONF"] == str(private_slurm.conf)
    sim = simdata.simulate(tmp_path / "sim", n=200, box=32, apix=4.0, per_micrograph=50)
    session_id = simdata.store_session(sim)
    runs = db.appion_base / "relionreal"
    started = time.monotonic()
    prep = _run("prepRefineRelion.py", f"--stackid={sim.star}", f"--modelid={sim.model}", "-n", "relprep",
                "-R", str(runs / "relprep"), f"--expId={session_id}", "-p", "1")
    assert prep.returncode == 0, prep.stderr
    [prep_row] = m.ApPrepRefineData.objects.filter(name="relprep")
    rundir = runs / "relrun"
    job = _run("runJob.py", f"--prepid={prep_row.id}", "--startIter=1", "--endIter=2", "--symmetry=c1",
               "--angSampRate=30", "--outerMaskRadius=13", "--ini_high=30", "--offset_range=3", "--offset_step=2",
               "-n", "relrun", "-R", str(rundir), "--jobtype=relionrecon", "--walltime=0.5", "--wait", "--poll", "1")
    elapsed = time.monotonic() - started
    log = (rundir / "relrun.appionsub.log").read_text() if (rundir / "relrun.appionsub.log").exists() else ""
    assert job.returncode == 0, job.stderr + log[-3000:]

    [row] = m.ApAppionJobData.objects.filter(name="relrun.appionsub.job")
    lifecycle = m.ApJobLifecycleData.objects.get(job_id=row.id)
    assert (row.status, row.jobtype, lifecycle.state) == ("D", "relionrecon", "COMPLETED")
    line = next(x for x in (rundir / "relrun.appionsub.job").read_text().splitlines() if "relion_refine" in x)
    argv = shlex.split(line)
    assert argv[0] == "relion_refine" and "--ctf" in argv and "--angpix" not in argv
    assert argv[argv.index("--iter") + 1] == "2"
    assert "RELION version: 3.1" in _run("relion_refine", "--version").stdout  # what the job ran

    for it in (1, 2):
        assert (rundir / f"run_it{it:03d}_class001.mrc").exists() and (rundir / f"run_it{it:03d}_model.star").exists()
    assert not (rundir / "run_it003_class001.mrc").exists()
    with mrcfile.open(rundir / "run_it002_class001.mrc") as mrc:
        volume = np.array(mrc.data)
        assert volume.shape == (32, 32, 32) and abs(float(mrc.voxel_size.x) - 4.0) < 1e-4
    assert np.isfinite(volume).all() and volume.std() > 0
    general = starfile.read(rundir / "run_it002_model.star", always_dict=True)["model_general"]
    assert float(general["rlnCurrentResolution"]) > 0
    data = starfile.read(rundir / "run_it002_data.star", always_dict=True)["particles"]
    assert len(data) == 200 and "rlnDefocusU" in data  # RELION read each particle's CTF
    print(f"prepare + RELION (2 iterations, 200 particles) on Slurm: {elapsed:.1f} s")
