"""Workflows across processes: a crashed run is resumed by a new process; the same on MariaDB.

Each step of the chain is a separate `python -m tests.workflow.wf_chain_script` process reading
and writing the database chosen by its APPION_HOME (SQLite from `fresh_home`, or real MariaDB
databases from `mariadb_home`), so nothing survives between steps except the database.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.workflow.wf_jobs import read_executions

ALL_DONE = {"a": "COMPLETED", "b": "COMPLETED", "c": "COMPLETED", "d": "COMPLETED"}


def run_script(env, name, workdir, mode, expect_rc=0):
    env = {**env, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "tests.workflow.wf_chain_script", name, str(workdir), mode],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == expect_rc, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]) if expect_rc == 0 else None


def check_crash_and_resume(env, workdir):
    """c kills its process mid-run; a new process reclaims c and finishes c and d, without redoing a, b."""
    (workdir / "c.crash").touch()
    run_script(env, "crashy", workdir, "submit", expect_rc=3)
    assert read_executions(workdir) == ["a", "b", "c"]
    out = run_script(env, "crashy", workdir, "resume")
    assert out["reclaimed"] == ["c"]
    assert out["executed"] == ["c", "d"] and out["memo_hits"] == []
    assert out["states"] == ALL_DONE
    assert out["attempts"] == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert out["results"]["d"]["text"] == "abcd"
    assert read_executions(workdir) == ["a", "b", "c", "c", "d"]


def check_fail_then_fix(env, workdir):
    """c fails (d cancelled); after the fix a rerun of the whole script executes only c and d."""
    (workdir / "c.fail").touch()
    out = run_script(env, "fixme", workdir, "submit")
    assert out["states"] == {"a": "COMPLETED", "b": "COMPLETED", "c": "FAILED", "d": "CANCELLED"}
    assert "step c told to fail" in out["reasons"]["c"] and "c FAILED" in out["reasons"]["d"]
    (workdir / "c.fail").unlink()
    out = run_script(env, "fixme", workdir, "submit")
    assert out["memo_hits"] == ["a", "b"] and out["executed"] == ["c", "d"]
    assert out["states"] == ALL_DONE
    assert read_executions(workdir) == ["a", "b", "c", "c", "d"]


def test_crashed_run_resumes_in_a_new_process_sqlite(fresh_home, tmp_path):
    _home, env = fresh_home
    workdir = tmp_path / "work"
    workdir.mkdir()
    check_crash_and_resume(env, workdir)


@pytest.mark.mariadb
def test_workflow_on_mariadb(mariadb_home, tmp_path):
    _home, env = mariadb_home
    for name, check in (("crash", check_crash_and_resume), ("fix", check_fail_then_fix)):
        workdir = tmp_path / name
        workdir.mkdir()
        check(env, workdir)
