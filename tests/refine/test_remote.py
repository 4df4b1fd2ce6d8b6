"""Remote processing hosts (config `login = "user@host"`): ssh argument lists, copies, and a whole job.

The remote login host is a private sshd on 127.0.0.1 (tests/privateservices.py: its own config, host key, pid file
and a client key made here; the machine's sshd and /etc/ssh are never used).  It logs in the current user; the
"remote side" is a separate directory tree (`remote_rundir`), standing in for another user's home, that this side
never writes directly: whatever appears in the local run directory after the job came back through the copy.  The
remote command reaches the session's private Slurm through the host's `remote_env = {SLURM_CONF = ...}`; the
sshd sets SLURM_CONF=/dev/null for every session, so a remote command that was not given it fails instead of
reaching any other Slurm.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from appion.refine import hosts, remote
from appion.refine.hosts import JobFiles, JobRequest, ProcessingHost, RemoteLogin
from tests.privateservices import PrivateSshd, ServiceError

NASTY = ["a;b", "$(touch PWNED)", "`touch PWNED2`", "it's", 'say "hi"', "x && y", "*", "~", "$HOME", "-rf"]


def _host(**remote_kw) -> ProcessingHost:
    kw = {"login": "alice@gpu1", "port": 2222, "rundir_root": "/home/alice/appion"} | remote_kw
    return ProcessingHost(name="gpu1", scheduler="slurm", remote=RemoteLogin(**kw))


# ---------------------------------------------------------------- pure
def test_ssh_argv_keeps_batch_mode_first_and_quotes_every_argument():
    host = _host(ssh_options=("IdentityFile=/k/id x",), env=(("SLURM_CONF", "/etc/slurm gpu/slurm.conf"),))
    argv = remote.calc_ssh_argv(host, ["sbatch", "a;b", "$(x)", "it's"], cwd="/home/alice/appion/r 1")
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert argv.index("BatchMode=yes") < argv.index("IdentityFile=/k/id x")  # ssh keeps the first value it reads
    assert argv[-5:-1] == ["-p", "2222", "alice@gpu1", "--"]
    assert shlex.split(argv[-1]) == ["cd", "/home/alice/appion/r 1", "&&", "env",
                                     "SLURM_CONF=/etc/slurm gpu/slurm.conf", "sbatch", "a;b", "$(x)", "it's"]
    rsync = remote.calc_rsync_argv(host.remote, "/local/run", "alice@gpu1:/home/alice/appion/local/run", ("x.log",))
    assert rsync[:3] == ["rsync", "-a", "-e"] and shlex.split(rsync[3])[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert "IdentityFile=/k/id x" in shlex.split(rsync[3])
    assert rsync[-4:] == ["--exclude=/x.log", "--", "/local/run/", "alice@gpu1:/home/alice/appion/local/run/"]
    assert remote.calc_scp_argv(host.remote, ["/a"], "alice@gpu1:/b")[-5:] == ["-P", "2222", "--", "/a",
                                                                              "alice@gpu1:/b"]


@pytest.mark.parametrize("spec, message", [
    ({"login": "-oProxyCommand=touch /tmp/x"}, "login must be user@host"),
    ({"login": "alice@gpu1;rm"}, "login must be user@host"),
    ({"login": "alice@gpu1\n"}, "login must be user@host"),
    ({"queue": "debug\n"}, re.escape("queue 'debug\\n' may only hold")),  # a newline would end the #SBATCH line
    ({"login": "alice@gpu1", "ssh_options": ["IdentityFile=/k\n"]}, "ssh_options must be a list"),
    ({"login": "alice@gpu1", "port": 0}, "port must be an integer"),
    ({"login": "alice@gpu1", "remote_rundir": "appion"}, "remote_rundir must be an absolute path"),
    ({"login": "alice@gpu1", "remote_rundir": "/home/../etc"}, "remote_rundir must be an absolute path"),
    ({"login": "alice@gpu1", "ssh_options": ["ProxyCommand='x'"]}, "ssh_options must be a list"),
    ({"login": "alice@gpu1", "ssh_options": "IdentityFile=/k"}, "ssh_options must be a list"),
    ({"login": "alice@gpu1", "remote_env": {"A B": "x"}}, "remote_env must be a table"),
    ({"port": 22, "remote_rundir": "/x"}, "port, remote_rundir need login"),
])
def test_bad_remote_host_config_is_refused(spec, message):
    with pytest.raises(hosts.HostConfigError, match=message):
        hosts.calc_host("gpu1", {"scheduler": "slurm", **spec})


def test_remote_host_config_is_read():
    host = hosts.calc_hosts_from_config({"gpu1": {
        "scheduler": "slurm", "login": "alice@gpu1.example.org", "port": 2200, "remote_rundir": "/home/alice/appion/",
        "ssh_options": ["IdentityFile=~/.ssh/id_gpu1"], "remote_env": {"SLURM_CONF": "/etc/slurm-gpu/slurm.conf"}}})[0]
    assert host.remote == RemoteLogin(login="alice@gpu1.example.org", port=2200, rundir_root="/home/alice/appion",
                                      ssh_options=("IdentityFile=~/.ssh/id_gpu1",),
                                      env=(("SLURM_CONF", "/etc/slurm-gpu/slurm.conf"),))
    assert hosts.calc_host("local", {"scheduler": "slurm"}).remote is None


def test_job_file_for_a_remote_host_names_the_remote_paths():
    host, files = _host(), JobFiles("/data/runs/s1/recon/r1", "r1")
    request = JobRequest(name="r1", output_path=files.output)
    commands = [["/usr/bin/python3", "/data/runs/s1/recon/r1/x.py", "--ref=/data/runs/s1/prep/model.mrc",
                 "000001@/data/runs/s1/prep/p.mrcs", "/data/other/keep", "$HOME"]]
    text = hosts.calc_job_file_text(host, request, commands, files, mapped_roots=("/data/runs",))
    there = "/home/alice/appion/data/runs/s1/recon/r1"
    assert f"#SBATCH -o {there}/r1.appionsub.log" in text and f"cd {there} ||" in text
    assert f"{there}/r1.exitcode" in text and "/data/runs/s1/recon/r1/" not in text.replace(there, "")
    assert shlex.split(text.splitlines()[-1]) == [
        "/usr/bin/python3", f"{there}/x.py", "--ref=/home/alice/appion/data/runs/s1/prep/model.mrc",
        "000001@/home/alice/appion/data/runs/s1/prep/p.mrcs", "/data/other/keep", "$HOME"]
    shared = ProcessingHost(name="gpu1", scheduler="slurm", remote=RemoteLogin(login="alice@gpu1"))
    local = ProcessingHost(name="gpu1", scheduler="slurm")
    assert (hosts.calc_job_file_text(shared, request, commands, files)
            == hosts.calc_job_file_text(local, request, commands, files).replace("(slurm)", "(slurm) at alice@gpu1"))


def test_inputs_outside_the_run_directory_are_found_and_copied_with_their_directory():
    roots = ("/data/runs",)
    commands = [["prog", "--i", "/data/runs/s1/prep/p.star", "--ref=/data/runs/s1/prep/m.mrc",
                 "/data/runs/s1/recon/r1/own.txt", "/usr/bin/python3", "/data/runs/top.mrc", "/data/runs/../etc/x"]]
    found = hosts.calc_input_paths(commands, "/data/runs/s1/recon/r1", roots)
    assert found == ["/data/runs/s1/prep/p.star", "/data/runs/s1/prep/m.mrc", "/data/runs/top.mrc"]
    assert hosts.calc_input_copy(found[0], False, "/data/runs/s1/recon/r1", roots) == "/data/runs/s1/prep"
    assert hosts.calc_input_copy(found[2], False, "/data/runs/s1/recon/r1", roots) == "/data/runs/top.mrc"  # a root
    # a file next to the run directory: its directory would hold the run itself (and other runs): the file alone
    assert hosts.calc_input_copy("/data/runs/s1/recon/x.mrc", False, "/data/runs/s1/recon/r1",
                                 roots) == "/data/runs/s1/recon/x.mrc"


def test_failure_messages_name_the_login():
    assert remote.calc_failure("alice@gpu1", "sbatch", 255, "alice@gpu1: Permission denied (publickey).\n") == \
        "login alice@gpu1 failed: Permission denied (publickey)"
    assert remote.calc_failure("alice@gpu1", "rsync", 255, "ssh: connect to host gpu1 port 22: Connection refused\n"
                               "rsync: connection unexpectedly closed\n") == \
        "login alice@gpu1 failed: connect to host gpu1 port 22: Connection refused"
    # the login worked; the remote command failed: said so, with its own words
    assert remote.calc_failure("alice@gpu1", "mkdir -p -- /x", 1, "mkdir: cannot create directory '/x': Permission "
                               "denied\n") == ("mkdir -p -- /x on alice@gpu1 failed (exit 1): mkdir: cannot create "
                                               "directory '/x': Permission denied")
    assert remote.parse_grep_files(["/r/a.phase", "/r/a.exitcode"], "/r/a.phase:RUNNING\n") == {
        "/r/a.phase": "RUNNING\n", "/r/a.exitcode": None}


# ---------------------------------------------------------------- against a private sshd
@pytest.fixture(scope="module")
def sshd():
    from tests.conftest import _unavailable

    missing = PrivateSshd.missing_programs()
    if missing:
        _unavailable(f"ssh programs missing ({', '.join(missing)}): apt-get install openssh-server openssh-client")
    server = PrivateSshd(Path(tempfile.mkdtemp(prefix="appion-test-sshd-")), set_env={"SLURM_CONF": "/dev/null"})
    try:
        server.start()
    except ServiceError as exc:
        server.close()
        _unavailable(str(exc)[-1500:])
    yield server
    server.close()
    shutil.rmtree(server.dir, ignore_errors=True)


def _ssh_host(sshd, root: Path, **extra) -> ProcessingHost:
    return ProcessingHost(name="remote", scheduler="slurm", remote=RemoteLogin(
        login=sshd.login, port=sshd.port, rundir_root=str(root), ssh_options=tuple(sshd.client_options), **extra))


def test_arguments_reach_the_remote_command_verbatim(sshd, tmp_path):
    host = _ssh_host(sshd, tmp_path, env=(("APPION_REMOTE_TEST", "it's $HOME"),))
    (tmp_path / "d 1").mkdir()
    result = remote.run_ssh(host, ["sh", "-c", 'printf "%s\\n" "$PWD" "$APPION_REMOTE_TEST" "$@"', "sh", *NASTY],
                            cwd=str(tmp_path / "d 1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / "d 1"), "it's $HOME", *NASTY]
    assert not list(tmp_path.rglob("PWNED*")) and not (Path.home() / "PWNED").exists()
    assert remote.run_ssh(host, ["sh", "-c", "exit 7"]).returncode == 7  # the remote status, not an ssh failure


def test_a_wrong_key_fails_with_the_login_named(sshd, tmp_path):
    other_key = sshd.make_key(tmp_path / "not_authorized")
    options = tuple(o if not o.startswith("IdentityFile=") else f"IdentityFile={other_key}"
                    for o in sshd.client_options)
    host = ProcessingHost(name="remote", scheduler="slurm",
                          remote=RemoteLogin(login=sshd.login, port=sshd.port, ssh_options=options))
    with pytest.raises(remote.RemoteError, match=rf"^login {sshd.login} failed: Permission denied \(publickey\)$"):
        remote.run_ssh(host, ["true"])


@pytest.mark.parametrize("tool", ["rsync", "scp"])
def test_copies_both_ways_leave_local_bookkeeping_alone(sshd, tmp_path, tool):
    host = _ssh_host(sshd, tmp_path / "remote-home")
    local = tmp_path / "runs" / "r1"
    (local / "sub").mkdir(parents=True)
    (local / "input.txt").write_text("in")
    (local / "sub" / "deep.txt").write_text("deep")
    (local / ".hidden").write_text("h")
    (local / "r1.appion.log").write_text("local log\n")
    there = hosts.calc_remote_path(host, str(local))
    assert there == str(tmp_path / "remote-home") + str(local)
    remote.copy_to(host, str(local), there, exclude=("r1.appion.log",), tool=tool)
    assert sorted(p.name for p in Path(there).rglob("*")) == [".hidden", "deep.txt", "input.txt", "sub"]
    (Path(there) / "out.txt").write_text("made there")  # the job's doing, on the remote side
    (Path(there) / "sub" / "deep.txt").write_text("changed there")
    (Path(there) / "r1.appion.log").write_text("stale remote log\n")
    remote.copy_back(host, there, str(local), exclude=("r1.appion.log",), tool=tool)
    assert (local / "out.txt").read_text() == "made there"
    assert (local / "sub" / "deep.txt").read_text() == "changed there"
    assert (local / "r1.appion.log").read_text() == "local log\n"
    assert sorted(p.name for p in local.parent.iterdir()) == ["r1"]  # scp's staging directory is gone


@pytest.fixture(scope="module")
def remote_site(private_slurm, sshd, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote-site")
    home, runs, remote_home = tmp / "appion-home", tmp / "runs", tmp / "remote-home"
    for d in (home, runs, remote_home):
        d.mkdir()
    other_key = sshd.make_key(tmp / "not_authorized")

    def host(name, key):
        options = [o if not o.startswith("IdentityFile=") else f"IdentityFile={key}" for o in sshd.client_options]
        return (f"[hosts.{name}]\nscheduler = \"slurm\"\nqueue = \"debug\"\nlogin = \"{sshd.login}\"\n"
                f"port = {sshd.port}\nremote_rundir = \"{remote_home}\"\nssh_options = {json.dumps(options)}\n"
                f"remote_env = {{SLURM_CONF = \"{private_slurm.conf}\"}}\n")
    (home / "config.toml").write_text(f"[jobs]\nrundir_roots = [\"{runs}\"]\npoll_interval_s = 0.3\n"
                                      + host("remote", sshd.client_key) + host("badkey", other_key))
    env = {**os.environ, "APPION_HOME": str(home), "SLURM_CONF": "/dev/null"}  # Slurm only on the "remote" side
    env.pop("APPION_CONFIG", None)
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
    return {"home": home, "env": env, "runs": runs, "remote_home": remote_home, "db": home / "appion.sqlite3",
            "login": sshd.login}


def _job_row(site, runname):
    with sqlite3.connect(site["db"], timeout=30) as conn:
        return conn.execute("SELECT j.status, j.clusterjobid, l.state, l.reason FROM ApAppionJobData j JOIN "
                            "ApJobLifecycleData l ON l.`REF|ApAppionJobData|job` = j.DEF_id WHERE j.name=?",
                            (f"{runname}.appionsub.job",)).fetchone()


JOB_SCRIPT = """import json, os, sys
text = open(sys.argv[1]).read() + open(sys.argv[2]).read()
os.makedirs("sub", exist_ok=True)
with open("sub/output.txt", "w") as fh:
    fh.write(text.upper())
with open("argv.json", "w") as fh:
    json.dump({"cwd": os.getcwd(), "argv": sys.argv[3:]}, fh)
"""


@pytest.mark.slurm
def test_runjob_on_a_remote_host_is_submitted_tracked_to_D_and_its_outputs_copied_back(remote_site):
    runs, remote_home = remote_site["runs"], remote_site["remote_home"]
    rundir, prep = runs / "s1" / "recon" / "rem1", runs / "s1" / "prep1"
    rundir.mkdir(parents=True)
    prep.mkdir(parents=True)
    (rundir / "job.py").write_text(JOB_SCRIPT)
    (rundir / "input.txt").write_text("from the run directory\n")
    (prep / "params.txt").write_text("from a preparation\n")
    (prep / "companion.txt").write_text("travels with its directory\n")
    result = subprocess.run(
        ["runJob.py", sys.executable, str(rundir / "job.py"), str(rundir / "input.txt"), str(prep / "params.txt"),
         *NASTY, "-n", "rem1", "-R", str(rundir), "--jobtype=generic", "--host", "remote", "--walltime=0.1",
         "--wait", "--poll", "0.3"], env=remote_site["env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    status, cluster_id, state, _ = _job_row(remote_site, "rem1")
    assert (status, state, cluster_id) == ("D", "COMPLETED", int(result.stdout))

    there = Path(f"{remote_home}{rundir}")
    # the job ran on the remote side, on the copies, in its run directory there ...
    dumped = json.loads((rundir / "argv.json").read_text())
    assert dumped == {"cwd": str(there), "argv": [*NASTY, "-n", "rem1", "-R", str(there)]}
    assert (there / "input.txt").exists() and (Path(f"{remote_home}{prep}") / "companion.txt").exists()
    assert f"cd {there} ||" in (rundir / "rem1.appionsub.job").read_text()
    # ... and what it wrote came back (the local side never wrote in `there`, nor the job here)
    expected = "FROM THE RUN DIRECTORY\nFROM A PREPARATION\n"
    assert (there / "sub" / "output.txt").read_text() == expected
    assert (rundir / "sub" / "output.txt").read_text() == expected
    assert (rundir / "rem1.exitcode").read_text().strip() == "0" and (rundir / "rem1.appionsub.log").exists()
    # the local job log kept every line written while the job was away; the remote side never had it
    log = (rundir / "rem1.appion.log").read_text()
    assert f"submitted as cluster job {cluster_id}" in log and "FINALIZING -> COMPLETED" in log
    assert not (there / "rem1.appion.log").exists() and not (there / "run_commands.log").exists()
    assert not list(runs.rglob("PWNED*")) and not list(remote_home.rglob("PWNED*"))


@pytest.mark.slurm
def test_runjob_with_a_key_the_host_refuses_fails_clearly(remote_site):
    rundir = remote_site["runs"] / "rem2"
    result = subprocess.run(["runJob.py", "/bin/true", "-n", "rem2", "-R", str(rundir), "--host", "badkey"],
                            env=remote_site["env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert f"login {remote_site['login']} failed: Permission denied (publickey)" in result.stderr
    status, cluster_id, state, reason = _job_row(remote_site, "rem2")
    assert (status, cluster_id, state) == ("E", None, "FAILED") and "submission failed: login" in reason
