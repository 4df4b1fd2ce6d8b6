"""runJob.py and the job tracker on the session's private single-node Slurm (commands run as subprocesses).

The refinement job uses tests/standins/refine_standin, a stand-in for relion_refine (RELION's
refinement is far too heavy here and EMAN/Frealign/Xmipp cannot be installed): it reads the
prepared STAR/MRC stack and the model, writes RELION's per-iteration files and, with
REFINE_STANDIN_ITERS_PER_RUN, stops early so that post-processing asks for another cycle.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import pytest

from tests.conftest import REPO
from tests.refine import simdata

pytestmark = pytest.mark.slurm
STANDIN = REPO / "tests" / "standins" / "refine_standin"
# Writes its arguments (after the first two) as JSON; waits first until a release file exists
# (argument 2, "-" for none) so a test decides when the job ends, however slow the machine is.
ARGV_DUMPER = """import json, os, sys, time
deadline = time.time() + 90
while sys.argv[2] != "-" and not os.path.exists(sys.argv[2]) and time.time() < deadline:
    time.sleep(0.1)
with open(sys.argv[1], "w") as fh:
    json.dump(sys.argv[3:], fh)
"""


@pytest.fixture(scope="module")
def site_home(private_slurm, tmp_path_factory):
    """One APPION_HOME (embedded SQLite, schema created, as the fresh_home fixture makes it) shared by the
    tests of this module — each test uses its own run names — with a Slurm host, run roots and short
    archive/expiry ages.  Sharing saves a `db init` (seconds) per test."""
    tmp = tmp_path_factory.mktemp("refine-site")
    home = tmp / "appion-home"
    home.mkdir()
    runs = tmp / "runs"
    runs.mkdir()
    (home / "config.toml").write_text(
        "[jobs]\n"
        f'rundir_roots = ["{runs}"]\n'
        "archive_after_s = 1.0\nexpire_after_s = 4.0\npoll_interval_s = 0.3\n"
        "[hosts.local]\nscheduler = \"slurm\"\nqueue = \"debug\"\nmax_nodes = 1\nmax_walltime_h = 2\n"
        "pre_lines = [\"export APPION_SITE_LINE=1\"]\n"
        "[hosts.lsfsite]\nscheduler = \"lsf\"\nqueue = \"normal\"\n")
    env = {**os.environ, "APPION_HOME": str(home)}
    env.pop("APPION_CONFIG", None)
    assert env["SLURM_CONF"] == str(private_slurm.conf)
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
    return {"home": home, "env": env, "runs": runs, "db": home / "appion.sqlite3"}


@pytest.fixture
def site(site_home, tmp_path):
    dumper = tmp_path / "dump_argv.py"
    dumper.write_text(ARGV_DUMPER)
    return {**site_home, "dumper": dumper, "tmp": tmp_path}


def _sql(site, query, *args):
    with sqlite3.connect(site["db"], timeout=30) as conn:
        return conn.execute(query, args).fetchall()


def _job_row(site, job_id):
    [(status, cluster_id)] = _sql(site, "SELECT status, clusterjobid FROM ApAppionJobData WHERE DEF_id=?", job_id)
    [(state, reason)] = _sql(site, "SELECT state, reason FROM ApJobLifecycleData WHERE `REF|ApAppionJobData|job`=?",
                             job_id)
    return status, cluster_id, state, reason


def _transitions(site, job_id):
    rows = _sql(site, "SELECT t.from_state, t.to_state FROM ApJobTransitionData t JOIN ApJobLifecycleData l "
                      "ON t.`REF|ApJobLifecycleData|lifecycle` = l.DEF_id WHERE l.`REF|ApAppionJobData|job`=? "
                      "ORDER BY t.DEF_id", job_id)
    return [to for _, to in rows]


def _job_id(site, runname):
    [(job_id,)] = _sql(site, "SELECT DEF_id FROM ApAppionJobData WHERE name=?", f"{runname}.appionsub.job")
    return job_id


def _runjob(site, args, extra_env=None, check=True):
    env = {**site["env"], **(extra_env or {})}
    result = subprocess.run(["runJob.py", *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _generic(site, name, release, extra_args=(), jobargs=()):
    rundir = site["runs"] / name
    out = site["tmp"] / f"{name}.argv.json"
    result = _runjob(site, [sys.executable, str(site["dumper"]), str(out), str(release), *extra_args,
                            "-n", name, "-R", str(rundir), "--jobtype=generic", "--walltime=0.1", *jobargs])
    cluster_id = int(result.stdout.strip())
    return _job_id(site, name), cluster_id, rundir, out


def _watcher(site, *args, extra_env=None):
    return subprocess.Popen(["appion", "jobs", "watch", "--interval", "0.3", *args],
                            env={**site["env"], **(extra_env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_generic_job_goes_Q_R_D_and_a_restarted_tracker_finishes_it(site):
    release = site["tmp"] / "release-gen1"
    job_id, cluster_id, rundir, out = _generic(site, "gen1", release)
    squeue = subprocess.run(["squeue", "-h", "-j", str(cluster_id), "-o", "%i"], capture_output=True, text=True,
                            env=site["env"])
    assert squeue.stdout.strip() in (str(cluster_id), "")  # the printed id is Slurm's (may have started already)
    status, stored_id, state, _ = _job_row(site, job_id)
    assert (status, stored_id, state) == ("Q", cluster_id, "INCOMING")
    job_file = (rundir / "gen1.appionsub.job").read_text()
    assert job_file.startswith("#!/bin/bash\n#SBATCH -J gen1\n") and "#SBATCH -p debug" in job_file
    assert "export APPION_SITE_LINE=1" in job_file

    watcher = _watcher(site)
    try:
        _wait_for(lambda: _job_row(site, job_id)[0] == "R", 30, "status R")
    finally:
        watcher.send_signal(signal.SIGKILL)  # a tracker that dies mid-run
        _stop(watcher)
    assert _job_row(site, job_id)[2] in ("PREPROCESSING", "RUNNING")
    release.touch()
    _wait_for(lambda: (rundir / "gen1.exitcode").exists(), 30, "the job to end")
    assert _job_row(site, job_id)[0] == "R"  # nobody tracked the end yet

    restarted = _watcher(site, "--until-idle")
    try:
        assert restarted.wait(timeout=60) == 0, restarted.stderr.read()
    finally:
        _stop(restarted)
    status, _, state, _ = _job_row(site, job_id)
    assert (status, state) == ("D", "COMPLETED")
    assert _transitions(site, job_id) == ["INCOMING", "PREPROCESSING", "RUNNING", "POSTPROCESSING", "FINALIZING",
                                          "COMPLETED"]
    assert json.loads(out.read_text()) == ["-n", "gen1", "-R", str(rundir)]
    log = (rundir / "gen1.appion.log").read_text()
    assert "RUNNING -> POSTPROCESSING: job exited with status 0" in log and "FINALIZING -> COMPLETED" in log


def test_nonzero_exit_ends_E(site):
    rundir = site["runs"] / "bad1"
    result = _runjob(site, [sys.executable, "-c", "import sys; sys.exit(3)", "-n", "bad1", "-R", str(rundir),
                            "--jobtype=generic", "--wait", "--poll", "0.3"], check=False)
    assert result.returncode == 1, result.stderr
    job_id = _job_id(site, "bad1")
    status, cluster_id, state, reason = _job_row(site, job_id)
    assert cluster_id == int(result.stdout)
    assert (status, state) == ("E", "FAILED")
    assert "exited with status 3" in reason
    assert (rundir / "bad1.exitcode").read_text().strip() == "3"


def test_scancel_ends_E(site):
    job_id, cluster_id, rundir, out = _generic(site, "cancel1", site["tmp"] / "never")
    watcher = _watcher(site, "--until-idle")
    try:
        _wait_for(lambda: _job_row(site, job_id)[0] == "R", 30, "status R")
        subprocess.run(["scancel", str(cluster_id)], check=True, env=site["env"])
        assert watcher.wait(timeout=60) == 0, watcher.stderr.read()
    finally:
        _stop(watcher)
    status, _, state, reason = _job_row(site, job_id)
    assert (status, state) == ("E", "FAILED")
    assert "143" in reason or "CANCELLED" in reason, reason
    assert not out.exists()


def test_parameters_reach_the_program_verbatim_and_bad_rundirs_are_refused(site):
    nasty = ["a;b", "$(touch PWNED)", "`touch PWNED2`", "it's", 'say "hi"', "line1\nline2", "x && y", "*", "~", "$HOME"]
    job_id, _, rundir, out = _generic(site, "sec1", "-", extra_args=nasty, jobargs=["--wait", "--poll", "0.3"])
    assert _job_row(site, job_id)[:1] == ("D",)
    assert json.loads(out.read_text())[:len(nasty)] == nasty
    assert not list(site["tmp"].rglob("PWNED*")) and not (Path.home() / "PWNED").exists()

    before = _sql(site, "SELECT COUNT(*) FROM ApAppionJobData")
    for rundir_arg, message in [(str(site["tmp"] / "elsewhere" / "sec2"), "outside the configured run roots"),
                                (str(site["runs"] / ".." / "sec2"), "'..'"),
                                (str(site["runs"] / "a b" / "sec2"), "may only hold")]:
        result = _runjob(site, ["/bin/true", "-n", "sec2", "-R", rundir_arg, "--jobtype=generic"], check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert _sql(site, "SELECT COUNT(*) FROM ApAppionJobData") == before
    assert not (site["tmp"] / "elsewhere").exists() and not (site["tmp"] / "sec2").exists()
    over = _runjob(site, ["/bin/true", "-n", "sec3", "-R", str(site["runs"] / "sec3"), "--nodes=2"], check=False)
    assert over.returncode == 2 and "nodes 2 is over the limit of 1" in over.stderr


def test_submission_failure_is_recorded(site):
    """A host whose scheduler is not installed here (LSF): runJob fails clearly and the row ends E."""
    rundir = site["runs"] / "lsf1"
    result = _runjob(site, ["/bin/true", "-n", "lsf1", "-R", str(rundir), "--host", "lsfsite"], check=False)
    assert result.returncode == 3 and "'bsub' is not installed" in result.stderr, result.stderr
    status, cluster_id, state, reason = _job_row(site, _job_id(site, "lsf1"))
    assert (status, cluster_id, state) == ("E", None, "FAILED") and "submission failed" in reason
    assert "#BSUB -q normal" in (rundir / "lsf1.appionsub.job").read_text()


def _write_inputs(site, n=12, box=32, apix=3.0):
    """A simulated stack and model, and a RELION 3.1 particle file with each particle's CTF and the optics."""
    sim = simdata.simulate(site["tmp"] / "sim", n=n, box=box, apix=apix, per_micrograph=4)
    return simdata.write_star_with_ctf(sim, site["tmp"] / "particles_ctf.star"), sim.model


def test_refine_job_runs_cycles_to_completed_then_archived_and_expired(site):
    stack, model = _write_inputs(site)
    prep_dir = site["runs"] / "prep1"
    prep = subprocess.run(["prepRefineRelion.py", f"--stackid={stack}", f"--modelid={model}", "-N", "10",
                           "--lowpass", "15", "--bin", "2", "-n", "prep1", "-R", str(prep_dir), "-p", "1"],
                          env=site["env"], capture_output=True, text=True, timeout=120)
    assert prep.returncode == 0, prep.stderr
    [(prep_id,)] = _sql(site, "SELECT DEF_id FROM ApPrepRefineData WHERE name='prep1'")
    log = site["tmp"] / "standin.jsonl"
    rundir = site["runs"] / "recon1"
    # Later cycles are submitted by the tracker, so they run in its environment (sbatch exports it).
    standin_env = {"REFINE_STANDIN_ITERS_PER_RUN": "2", "REFINE_STANDIN_LOG": str(log)}
    watcher = _watcher(site, extra_env=standin_env)  # the daemon's tracker drives the whole life, ageing included
    try:
        result = _runjob(site, ["refineJobRelion.py", f"--prepid={prep_id}", "--numiter=3", f"--program={STANDIN}",
                                "-n", "recon1", "-R", str(rundir), "--jobtype=relionrecon", "--walltime=0.2"],
                         extra_env=standin_env)
        job_id = _job_id(site, "recon1")
        _wait_for(lambda: _job_row(site, job_id)[2] in ("COMPLETED", "ARCHIVED", "EXPIRED"), 60, "COMPLETED")
        with mrcfile.open(rundir / "run_it003_class001.mrc") as mrc:  # before expiry removes it
            assert mrc.data.shape == (16, 16, 16) and abs(float(mrc.voxel_size.x) - 6.0) < 1e-4
        assert _job_row(site, job_id)[0] == "D"
        _wait_for(lambda: _job_row(site, job_id)[2] == "ARCHIVED", 20, "ARCHIVED")
        manifest = json.loads((rundir / "recon1.manifest.json").read_text())
        assert "run_it003_class001.mrc" in {f["name"] for f in manifest["files"]}
        _wait_for(lambda: _job_row(site, job_id)[2] == "EXPIRED", 20, "EXPIRED")
    finally:
        _stop(watcher)
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["first"], r["last"]) for r in runs] == [(1, 2), (3, 3)]  # the stand-in asked for a second cycle
    assert runs[0]["argv"][runs[0]["argv"].index("--i") + 1] == str(prep_dir / "particles.star")
    assert "--continue" in runs[1]["argv"]
    assert _transitions(site, job_id) == ["INCOMING", "PREPROCESSING", "RUNNING", "POSTPROCESSING", "RUNNING",
                                          "POSTPROCESSING", "FINALIZING", "COMPLETED", "ARCHIVED", "EXPIRED"]
    status, cluster_id, state, _ = _job_row(site, job_id)
    [(cycle,)] = _sql(site, "SELECT cycle FROM ApJobLifecycleData WHERE `REF|ApAppionJobData|job`=?", job_id)
    assert cycle == 2 and cluster_id != int(result.stdout)  # the row follows the second cluster job
    assert not rundir.exists()
    assert status == "D"  # the row stays
    assert prep_dir.exists()  # only the job's own directory is removed


def test_refine_program_crash_ends_failed(site):
    stack, model = _write_inputs(site, n=4)
    prep_dir = site["runs"] / "prep2"
    subprocess.run(["prepRefineRelion.py", f"--stack={stack}", f"--model={model}", "-n", "prep2", "-R", str(prep_dir)],
                   env=site["env"], check=True, capture_output=True, timeout=120)
    rundir = site["runs"] / "recon2"
    result = _runjob(site, ["--stack", str(prep_dir / "particles.star"), "--model", str(prep_dir / "model.mrc"),
                            "--apix", "3", "--boxsize", "32", f"--program={STANDIN}", "-n", "recon2", "-R", str(rundir),
                            "--jobtype=relionrecon", "--wait", "--poll", "0.3"],
                     extra_env={"REFINE_STANDIN_FAIL": "1"}, check=False)
    assert result.returncode == 1, result.stderr
    status, _, state, reason = _job_row(site, _job_id(site, "recon2"))
    assert (status, state) == ("E", "FAILED") and "status 3" in reason
    assert "simulated crash" in (rundir / "recon2.appionsub.log").read_text()


@pytest.mark.parametrize("jobtype", ["makeddrawframestack", "ctfestimate", "myfancytype"])
def test_classic_web_types_and_unknown_types_run_as_generic_jobs_and_end_D(site, jobtype):
    """The job types classic's web interface submits run their command line; a type nobody registered runs
    the same way with a warning (classic apAgent builds a generic job for it), instead of exit 2."""
    name = f"web_{jobtype[:12]}"
    rundir = site["runs"] / name
    out = site["tmp"] / f"{name}.json"
    result = _runjob(site, [sys.executable, str(site["dumper"]), str(out), "-", "--preset=en", "-n", name,
                            "-R", str(rundir), f"--jobtype={jobtype}", "--walltime=0.1", "--wait", "--poll", "0.3"])
    job_id = _job_id(site, name)
    status, cluster_id, state, _ = _job_row(site, job_id)
    assert (status, state, cluster_id) == ("D", "COMPLETED", int(result.stdout))
    [(stored_type,)] = _sql(site, "SELECT jobtype FROM ApAppionJobData WHERE DEF_id=?", job_id)
    assert stored_type == jobtype
    assert json.loads(out.read_text()) == ["--preset=en", "-n", name, "-R", str(rundir)]
    unknown = f"unknown job type {jobtype!r}: running the command line as a generic job"
    assert (unknown in result.stderr) == (jobtype == "myfancytype"), result.stderr
    assert f"--jobtype={jobtype}" in (rundir / "run_commands.log").read_text()


def test_setuponly_prepares_and_stops_and_classic_iterations_reach_the_job_file(site):
    stack, model = _write_inputs(site, n=6)
    prep_dir = site["runs"] / "prep3"
    prep = subprocess.run(["prepRefineRelion.py", f"--stackid={stack}", f"--modelid={model}", "-n", "prep3", "-R",
                           str(prep_dir)], env=site["env"], capture_output=True, text=True, timeout=120)
    assert prep.returncode == 0, prep.stderr
    [(prep_id,)] = _sql(site, "SELECT DEF_id FROM ApPrepRefineData WHERE name='prep3'")
    rundir = site["runs"] / "recon3"
    before = _sql(site, "SELECT COUNT(*) FROM ApAppionJobData")
    result = subprocess.run(["runJob.py", f"--prepid={prep_id}", "--startIter=1", "--endIter=8", "--symmetry=C2 (z)",
                             "--angSampRate=7.5", "--outerMaskRadius=12", "--localhost=headnode", "-n", "recon3",
                             "-R", str(rundir), "--jobtype=relionrecon", "--setuponly", "--nodes=1", "--ppn=2",
                             "--rpn=2"],
                            env=site["env"], capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: os.umask(0o077))
    assert result.returncode == 0, result.stderr
    assert "not submitted" in result.stderr and result.stdout == ""
    assert "--localhost has no effect" in result.stderr
    assert _sql(site, "SELECT COUNT(*) FROM ApAppionJobData") == before  # nothing recorded, nothing submitted
    job_file = rundir / "recon3.appionsub.job"
    assert stat.S_IMODE(job_file.stat().st_mode) == 0o700  # the umask, not a fixed 0755
    line = next(x for x in job_file.read_text().splitlines() if "relion_refine" in x)
    argv = shlex.split(line)
    assert argv[:4] == ["mpirun", "-np", "2", "relion_refine_mpi"]
    assert argv[argv.index("--iter") + 1] == "8" and argv[argv.index("--sym") + 1] == "c2"
    assert argv[argv.index("--healpix_order") + 1] == "3" and "--ctf" in argv and "--angpix" not in argv
    assert argv[argv.index("--particle_diameter") + 1] == f"{2 * 12 * 3.0:g}"
    assert argv[argv.index("--i") + 1] == str(prep_dir / "particles.star")


def test_generic_job_on_mariadb(private_slurm, mariadb_home, tmp_path):
    """The same bookkeeping against MariaDB (leginon/project/appion databases of a real site layout)."""
    import re

    from tests.conftest import mysql_exec

    home, env = mariadb_home
    assert env["SLURM_CONF"] == str(private_slurm.conf)
    runs = tmp_path / "runs"
    config = home / "config.toml"
    config.write_text(config.read_text() + f'\n[jobs]\nrundir_roots = ["{runs}"]\n')
    appion_db = re.search(r'appion = "mysql://[^/]+/(\w+)"', config.read_text()).group(1)
    result = subprocess.run(["runJob.py", sys.executable, "-c", "print('hello from slurm')", "-n", "maria1",
                             "-R", str(runs / "maria1"), "--jobtype=generic", "--wait", "--poll", "0.3"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = mysql_exec("SELECT j.status, j.clusterjobid, l.state FROM ApAppionJobData j JOIN ApJobLifecycleData l "
                      "ON l.`REF|ApAppionJobData|job` = j.DEF_id", database=appion_db).split()
    assert rows == ["D", result.stdout.strip(), "COMPLETED"]
    assert "hello from slurm" in (runs / "maria1" / "maria1.appionsub.log").read_text()
