"""The tests never touch a service they did not start (shared/reference/services.md).

The private MariaDB of an outage test is stopped and restarted by its own pid file while the machine's server
(127.0.0.1:3306) keeps running with its data; the private Slurm runs jobs from its own slurm.conf, the machine's
/etc/slurm/slurm.conf and /etc/munge/munge.key stay byte-identical.  `bash .ci/test` checks the same around the
whole suite (machine server's Uptime, a sentinel database, the /etc files).
"""
from __future__ import annotations

import os
import time

import pytest

from tests.conftest import ETC_AT_START, file_fingerprints, mysql_exec, require_mariadb


def _machine_uptime() -> int:
    return int(mysql_exec("SHOW GLOBAL STATUS LIKE 'Uptime'").split()[1])


@pytest.mark.mariadb
def test_private_mariadb_outage_leaves_the_machine_server_running(private_mariadb):
    require_mariadb()
    sentinel = f"appion_hygiene_{os.getpid()}"
    mysql_exec(f"DROP DATABASE IF EXISTS `{sentinel}`; CREATE DATABASE `{sentinel}`; "
               f"CREATE TABLE `{sentinel}`.t (v INT); INSERT INTO `{sentinel}`.t VALUES (42)")
    try:
        assert mysql_exec("SELECT @@port").split() == ["3306"]
        uptime0, t0 = _machine_uptime(), time.monotonic()
        assert private_mariadb.port != 3306 and private_mariadb.ping()
        private_mariadb.execute("CREATE DATABASE outage; CREATE TABLE outage.t (v INT); "
                                "INSERT INTO outage.t VALUES (7)")
        pid = private_mariadb.pid
        assert pid is not None and str(private_mariadb.datadir) in open(f"/proc/{pid}/cmdline").read()

        private_mariadb.stop()
        assert not private_mariadb.ping() and private_mariadb.pid is None
        assert not os.path.exists(f"/proc/{pid}/status") or "zombie" in open(f"/proc/{pid}/status").read()
        assert mysql_exec(f"SELECT v FROM `{sentinel}`.t").split() == ["42"]  # the machine's server still answers
        time.sleep(1.5)
        private_mariadb.start()
        assert private_mariadb.ping() and private_mariadb.pid not in (None, pid)
        assert private_mariadb.execute("SELECT v FROM outage.t").split() == ["7"]  # same datadir after the restart

        elapsed = time.monotonic() - t0
        uptime1 = _machine_uptime()
        assert uptime1 >= uptime0 + int(elapsed) - 1, (uptime0, uptime1, elapsed)  # never restarted meanwhile
        assert mysql_exec(f"SELECT v FROM `{sentinel}`.t").split() == ["42"]
    finally:
        mysql_exec(f"DROP DATABASE IF EXISTS `{sentinel}`")


@pytest.mark.slurm
def test_private_slurm_runs_jobs_from_its_own_conf_and_leaves_etc_alone(private_slurm, tmp_path):
    assert os.environ["SLURM_CONF"] == str(private_slurm.conf)
    assert not str(private_slurm.conf).startswith("/etc/")
    config = private_slurm.run("scontrol", "show", "config", check=True).stdout
    assert f"SLURM_CONF              = {private_slurm.conf}" in config, config[:2000]
    assert f"socket={private_slurm.munge_socket}" in config

    out = tmp_path / "job.out"
    submitted = private_slurm.run("sbatch", "--parsable", "-o", str(out), "--wrap", 'echo "conf=$SLURM_CONF"',
                                  check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or "conf=" not in out.read_text()):
        time.sleep(0.2)
    assert out.read_text().strip() == f"conf={private_slurm.conf}"
    listed = private_slurm.run("squeue", "-h", "-j", job_id, "-o", "%i").stdout.strip()
    assert listed in ("", job_id)
    assert file_fingerprints() == ETC_AT_START
