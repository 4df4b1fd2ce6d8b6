"""`appion workflow run FILE.toml` / `appion workflow status`: the file format, and whole runs as subprocesses.

The chain runs here (host "local") and on the real Slurm (marked slurm).  Every command is
tests' step script, which appends its label to executions.log before doing anything else, so
the executions counted there are the ones that really ran (a memo hit leaves no line).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appion.workflow.calc import COMPLETED, Is
from appion.workflow.flowfile import FlowFileError, parse_flow_text, parse_when, read_flow_file

APPION_TIMEOUT_S = 600


# ---------------------------------------------------------------- the file format (fast, no database)

def parse(text: str, base: Path = Path("/proj")):
    return parse_flow_text(text, "flow.toml", base_dir=base)


def error_of(text: str) -> str:
    with pytest.raises(FlowFileError) as info:
        parse(text)
    message = str(info.value)
    assert "\n" not in message
    return message


GOOD = """
name = "refine-chain"
host = "slurm"
[[job]]
label = "report"
jobtype = "mysite-report"
params = { format = "pdf", pages = [1, 2] }
when = "refine.completed or (refine.failed and not prepare.cancelled)"
[[job]]
label = "prepare"
command = ["python3", "prep.py", "--box", "256"]
inputs = ["particles.star", "/abs/model.mrc"]
[[job]]
label = "refine"
command = ["relion_refine", "--i", "a b; rm -rf /"]
when = "prepare.completed"
host = "local"
rundir = "elsewhere"
resources = { ppn = 4, mem_gb = 8, walltime_h = 1.5, queue = "debug" }
"""


def test_a_good_file_becomes_dataclasses_in_dependency_order():
    flow = parse(GOOD)
    assert flow.name == "refine-chain" and flow.workdir == "/proj/refine-chain"
    assert flow.labels == ("prepare", "refine", "report")  # report waits on both, so it moves last
    prepare, refine, report = flow.jobs
    assert prepare.is_command and prepare.command == ("python3", "prep.py", "--box", "256")
    assert prepare.host == "slurm" and prepare.rundir == "/proj/refine-chain/prepare"
    assert prepare.inputs == ("/proj/particles.star", "/abs/model.mrc") and prepare.when is None
    assert refine.command[-1] == "a b; rm -rf /"  # an argument, kept whole (never a shell line)
    assert refine.host == "local" and refine.rundir == "/proj/elsewhere"
    assert refine.when == Is("prepare", COMPLETED)
    assert refine.resources.as_params() == {"ppn": 4, "mem_gb": 8.0, "walltime_h": 1.5, "queue": "debug"}
    assert not report.is_command and report.jobtype == "mysite-report"
    assert report.params == {"format": "pdf", "pages": [1, 2]}
    assert str(report.when) == "refine.completed | (refine.failed & ~prepare.cancelled)"


@pytest.mark.parametrize(("text", "expected"), [
    ("a.completed and not b.failed", "a.completed & ~b.failed"),
    ("a.completed | b.completed & ~c.cancelled", "a.completed | (b.completed & ~c.cancelled)"),
    ("not (a.failed or b-2.cancelled) and c_x.completed", "~(a.failed | b-2.cancelled) & c_x.completed"),
    ("not not a.failed", "~~a.failed"),
    ("((a.completed))", "a.completed"),
])
def test_conditions_read_with_and_or_not_and_parentheses(text, expected):
    assert str(parse_when(text)) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("a.done", "unknown state 'done' of 'a'"),
    ("a.completed and", "found the end"),
    ("(a.completed", "expected ')'"),
    ("a.completed b.failed", "unexpected 'b.failed' at column 13"),
    ("a", "'a' at column 1 is neither and/or/not nor label.state"),
    ("a.completed; rm", "unexpected character ';' at column 12"),
    ("   ", "empty"),
    ("(" * 70 + "a.failed" + ")" * 70, "nested deeper"),
])
def test_bad_conditions_are_refused(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_when(text)


JOB_A = '[[job]]\nlabel = "a"\ncommand = ["true"]\n'


@pytest.mark.parametrize(("text", "message"), [
    ('name = "w"\n' + JOB_A + '[[job]]\nlabel = "b"\ncommand = ["true"]\nwhen = "a.completed and x.failed"\n',
     "flow.toml: job 'b': unknown label 'x' in when"),
    ('name = "w"\n' + JOB_A + '[[job]]\nlabel = "2b"\ncommand = ["true"]\n',
     "flow.toml: job 2: label must start with a letter"),
    ('name = "w"\n' + JOB_A + '[[job]]\nlabel = "not"\ncommand = ["true"]\n', "flow.toml: job 2: label must"),
    ('name = "w"\nhots = "slurm"\n' + JOB_A, "flow.toml: unknown key 'hots' (known: name, host, workdir"),
    ('name = "w"\n' + JOB_A + 'whn = "a.completed"\n', "flow.toml: job 'a': unknown key 'whn'"),
    ('name = "w"\n' + JOB_A + 'resources = { cores = 2 }\n', "flow.toml: job 'a': resources: unknown key 'cores'"),
    ('name = "w"\n' + JOB_A + 'resources = { ppn = 0 }\n', "resources: ppn must be a positive integer, not 0"),
    ('name = "w"\n[[job]]\nlabel = "a"\ncommand = ["true"]\nwhen = "b.completed"\n'
     '[[job]]\nlabel = "b"\ncommand = ["true"]\nwhen = "c.completed or a.failed"\n'
     '[[job]]\nlabel = "c"\ncommand = ["true"]\nwhen = "b.cancelled"\n',
     "flow.toml: job 'a': jobs wait on each other in a cycle: a -> b -> a"),
    ('name = "w"\n' + JOB_A + 'when = "a.failed"\n', "job 'a': jobs wait on each other in a cycle: a -> a"),
    ('name = "w"\n' + JOB_A + 'when = "a.completed and"\n',
     "flow.toml: job 'a': bad condition 'a.completed and' in when: expected label.completed"),
    ('name = "w"\n' + JOB_A + JOB_A, "flow.toml: job 'a': label used twice"),
    ('name = "w"\n' + JOB_A + 'jobtype = "x"\n', "job 'a': needs exactly one of command"),
    ('name = "w"\n[[job]]\nlabel = "a"\n', "job 'a': needs exactly one of command"),
    ('name = "w"\n[[job]]\nlabel = "a"\ncommand = "python3 x.py"\n', "command must be a non-empty list of strings"),
    ('name = "w"\n[[job]]\nlabel = "a"\ncommand = []\n', "command must be a non-empty list of strings"),
    ('name = "w"\n' + JOB_A + 'params = { x = 1 }\n', "params only apply to jobtype jobs"),
    ('name = "w"\n[[job]]\nlabel = "a"\njobtype = "t"\nhost = "slurm"\n', "host only apply to command jobs"),
    ('name = "w"\n' + JOB_A + 'host = "my host"\n', "job 'a': host must be \"local\""),
    ('name = "w"\n' + JOB_A + 'when = 3\n', "job 'a': when must be a string"),
    ('name = "w"\n' + JOB_A + 'inputs = "a.txt"\n', "job 'a': inputs must be a list of file paths"),
    ('name = "w w"\n' + JOB_A, "flow.toml: name must be a word"),
    (JOB_A, "flow.toml: name must be a word"),
    ('name = "w"\n', "flow.toml: needs at least one [[job]] table"),
    ('name = "w"\nmodules = ["os; rm"]\n' + JOB_A, "modules must be a list of dotted Python module names"),
    ('name = "w"\n[[job]\n', "flow.toml: not valid TOML"),
])
def test_bad_files_are_refused_with_one_line_naming_file_job_and_problem(text, message):
    assert message in error_of(text)


def test_read_flow_file_resolves_relative_paths_against_the_files_directory(tmp_path):
    path = tmp_path / "sub" / "flow.toml"
    path.parent.mkdir()
    path.write_text('name = "w"\nworkdir = "runs"\n' + JOB_A + 'inputs = ["data/x.star"]\n')
    flow = read_flow_file(path)
    assert flow.workdir == str(tmp_path / "sub" / "runs")
    assert flow.jobs[0].rundir == str(tmp_path / "sub" / "runs" / "a")
    assert flow.jobs[0].inputs == (str(tmp_path / "sub" / "data" / "x.star"),)
    with pytest.raises(FlowFileError, match=r"missing\.toml: no such file"):
        read_flow_file(tmp_path / "missing.toml")


# ---------------------------------------------------------------- whole runs (subprocesses)

STEP = """import os, sys
counter, label, code = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(counter, "a") as fh:
    fh.write(label + "\\n")
text = "".join(open(p).read() for p in sys.argv[4:]) + label
with open(label + ".out", "w") as fh:
    fh.write(text)
print("step", label, "in", os.getcwd(), "exit", code, flush=True)
sys.exit(code)
"""

# One failing job (refine), an `or` (report: cancelled; cleanup: runs because refine failed), a `not` (post).
FLOW = """name = "{name}"
host = "{host}"
workdir = "runs"

[[job]]
label = "prepare"
command = {step_prepare}

[[job]]
label = "refine"
command = {step_refine}
inputs = ["runs/prepare/prepare.out"]
when = "prepare.completed"

[[job]]
label = "report"
command = {step_report}
when = "refine.completed or prepare.failed"

[[job]]
label = "post"
command = {step_post}
when = "not (refine.failed or refine.cancelled)"

[[job]]
label = "cleanup"
command = {step_cleanup}
when = "refine.failed or report.completed"
"""


def write_flow(tmp_path: Path, name: str, host: str, refine_exit: int) -> Path:
    step = tmp_path / "step.py"
    step.write_text(STEP)
    counter = tmp_path / "executions.log"

    def argv(label, code=0, *inputs):
        return json.dumps([sys.executable, str(step), str(counter), label, str(code), *map(str, inputs)])

    prep_out = tmp_path / "runs" / "prepare" / "prepare.out"
    path = tmp_path / "flow.toml"
    path.write_text(FLOW.format(name=name, host=host, step_prepare=argv("prepare"),
                                step_refine=argv("refine", refine_exit, prep_out), step_report=argv("report"),
                                step_post=argv("post"), step_cleanup=argv("cleanup")))
    return path


def executions(tmp_path: Path) -> list[str]:
    log = tmp_path / "executions.log"
    return log.read_text().split() if log.exists() else []


def appion(env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["appion", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=APPION_TIMEOUT_S)


def status(env: dict, name: str, cwd: Path) -> dict:
    result = appion(env, "workflow", "status", name, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return {job["label"]: job for job in json.loads(result.stdout)["jobs"]}


def run_chain_twice(tmp_path: Path, env: dict, host: str) -> dict:
    """First run: refine fails; then its command is fixed and the same file runs again (and a third time)."""
    name = f"chain-{host}"
    flow = write_flow(tmp_path, name, host, refine_exit=3)
    first = appion(env, "workflow", "run", "flow.toml", cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    jobs = status(env, name, tmp_path)
    assert {k: j["state"] for k, j in jobs.items()} == {
        "prepare": "COMPLETED", "refine": "FAILED", "report": "CANCELLED", "post": "CANCELLED", "cleanup": "COMPLETED"}
    assert {k: j["attempts"] for k, j in jobs.items()} == {"prepare": 1, "refine": 1, "report": 0, "post": 0,
                                                           "cleanup": 1}
    assert sorted(executions(tmp_path)) == ["cleanup", "prepare", "refine"]
    assert executions(tmp_path)[0] == "prepare"
    refine_reason = jobs["refine"]["reason"]
    assert "exit code 3; see " + str(tmp_path / "runs" / "refine") in refine_reason
    first_output = Path(refine_reason.split("; see ")[1])  # the failed attempt's stdout and stderr
    assert f"step refine in {tmp_path / 'runs' / 'refine'} exit 3" in first_output.read_text()
    assert jobs["report"]["reason"].startswith(
        "condition `refine.completed | prepare.failed` can no longer be true: prepare COMPLETED; refine FAILED (")
    assert "exit code 3" in jobs["report"]["reason"]
    assert jobs["post"]["reason"].startswith(
        "condition `~(refine.failed | refine.cancelled)` can no longer be true: refine FAILED (")
    assert jobs["cleanup"]["reason"] is None and jobs["prepare"]["memo_hit"] is False
    assert "workflow " + name + ": executed 3" in first.stdout and "failed 1 (refine)" in first.stdout
    assert "cancelled 2 (report, post)" in first.stdout
    table = appion(env, "workflow", "status", "flow.toml", cwd=tmp_path)  # the file names its workflow
    assert table.returncode == 0
    assert table.stdout.splitlines()[:2] == [f"workflow {name}", "label    state      memo  attempts  reason"]
    lines = {line.split()[0]: line for line in table.stdout.splitlines()[2:]}
    assert lines["report"].split()[1:4] == ["CANCELLED", "-", "0"] and "refine FAILED" in lines["report"]
    assert lines["refine"].split()[1:4] == ["FAILED", "-", "1"] and "exit code 3" in lines["refine"]
    first_results = {k: j["result"] for k, j in jobs.items()}

    write_flow(tmp_path, name, host, refine_exit=0)  # the fix: refine's command changes, nothing else
    second = appion(env, "workflow", "run", str(flow), cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    jobs = status(env, name, tmp_path)
    assert {j["state"] for j in jobs.values()} == {"COMPLETED"}
    assert {k: j["memo_hit"] for k, j in jobs.items()} == {"prepare": True, "refine": False, "report": False,
                                                           "post": False, "cleanup": False}
    assert {k: j["attempts"] for k, j in jobs.items()} == {"prepare": 1, "refine": 2, "report": 1, "post": 1,
                                                           "cleanup": 2}
    rerun = executions(tmp_path)[3:]
    assert sorted(rerun) == ["cleanup", "post", "refine", "report"] and rerun[0] == "refine"
    assert executions(tmp_path).count("prepare") == 1  # completed from the memo, not executed
    assert "executed 4" in second.stdout and "from memo 1 (prepare)" in second.stdout
    assert jobs["prepare"]["result"] == first_results["prepare"]
    assert (tmp_path / "runs" / "refine" / "refine.out").read_text() == "preparerefine"

    third = appion(env, "workflow", "run", str(flow), cwd=tmp_path)  # nothing changed: nothing runs
    assert third.returncode == 0, third.stdout + third.stderr
    assert "executed 0" in third.stdout and "from memo 5" in third.stdout
    assert len(executions(tmp_path)) == 7
    return {"first_refine_reason": refine_reason, "jobs": jobs}


def test_chain_on_this_machine_cancels_dependents_and_reruns_only_the_fixed_job_and_what_follows(
        fresh_home, tmp_path):
    _, env = fresh_home
    out = run_chain_twice(tmp_path, env, "local")
    assert out["first_refine_reason"].endswith(f"see {tmp_path / 'runs' / 'refine' / 'refine.appionlocal.log'}")
    assert out["jobs"]["refine"]["result"]["cluster_job_id"] is None


@pytest.mark.slurm
def test_chain_on_slurm_cancels_dependents_and_reruns_only_the_fixed_job_and_what_follows(
        private_slurm, fresh_home, tmp_path):
    _, env = fresh_home
    env = {**env, "SLURM_CONF": os.environ["SLURM_CONF"]}  # the private Slurm's (set by the fixture)
    out = run_chain_twice(tmp_path, env, "slurm")
    reason = out["first_refine_reason"]
    rundir = tmp_path / "runs" / "refine"
    assert reason.split("; see ")[1].startswith(f"{rundir}/slurm-") and reason.endswith(".out")
    result = out["jobs"]["refine"]["result"]
    assert result["host"] == "slurm" and result["exit_code"] == 0 and result["cluster_job_id"] > 0
    assert result["output"] == f"{rundir}/slurm-{result['cluster_job_id']}.out"
    assert "step refine" in Path(result["output"]).read_text()
    assert "#SBATCH -J refine" in (rundir / "refine.appionsub.job").read_text()


def test_cli_refuses_bad_files_with_exit_2_and_one_line(fresh_home, tmp_path):
    _, env = fresh_home
    cases = {
        "cycle.toml": ('name = "w"\n[[job]]\nlabel = "a"\ncommand = ["true"]\nwhen = "b.completed"\n'
                       '[[job]]\nlabel = "b"\ncommand = ["true"]\nwhen = "a.completed"\n',
                       "cycle.toml: job 'a': jobs wait on each other in a cycle: a -> b -> a"),
        "host.toml": ('name = "w"\nhost = "nowhere"\n' + JOB_A, "host.toml: job 'a': unknown host 'nowhere'"),
        "type.toml": ('name = "w"\n[[job]]\nlabel = "a"\njobtype = "no-such-type"\n',
                      "type.toml: job 'a': job type 'no-such-type' is not registered"),
        "module.toml": ('name = "w"\nmodules = ["no_such_module_xyz"]\n' + JOB_A,
                        "module.toml: modules: cannot import 'no_such_module_xyz'"),
        "limit.toml": ('name = "w"\nhost = "slurm"\n' + JOB_A + 'resources = { mem_gb = 1, pmem_mb = 100 }\n',
                       "limit.toml: job 'a': request refused by host 'slurm'"),
    }
    for filename, (text, message) in cases.items():
        (tmp_path / filename).write_text(text)
        result = appion(env, "workflow", "run", filename, cwd=tmp_path)
        assert result.returncode == 2, (filename, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (filename, result.stderr)
    result = appion(env, "workflow", "status", "never-ran", cwd=tmp_path)
    assert result.returncode == 1 and "no workflow named 'never-ran'" in result.stderr


def test_jobtype_jobs_from_the_files_modules(fresh_home, tmp_path):
    """A registered job type (from the file's modules) waits on a command and reads its output."""
    _, env = fresh_home
    (tmp_path / "flowjobs_test.py").write_text(
        "from pathlib import Path\n"
        "from appion.workflow.core import register_jobtype\n"
        "def count(params, inputs):\n"
        "    with open(params['log'], 'a') as fh:\n"
        "        fh.write('count\\n')\n"
        "    return {'chars': sum(len(Path(p).read_text()) for p in inputs) * params['times']}\n"
        "register_jobtype('test-count', count)\n")
    env = {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])}
    log = tmp_path / "executions.log"
    flow = tmp_path / "flow.toml"
    flow.write_text(
        'name = "typed"\nmodules = ["flowjobs_test"]\n'
        f'[[job]]\nlabel = "make"\ncommand = ["{sys.executable}", "-c", "open(\'x.txt\', \'w\').write(\'hello\')"]\n'
        f'[[job]]\nlabel = "count"\njobtype = "test-count"\nparams = {{ times = 2, log = "{log}" }}\n'
        'inputs = ["typed/make/x.txt"]\nwhen = "make.completed"\n'
        '[[job]]\nlabel = "never"\ncommand = ["true"]\nwhen = "make.failed"\n')
    result = appion(env, "workflow", "run", "flow.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = status(env, "typed", tmp_path)
    assert jobs["count"]["result"] == {"chars": 10} and jobs["count"]["state"] == "COMPLETED"
    assert jobs["never"]["state"] == "CANCELLED"
    assert log.read_text() == "count\n"
    flow.write_text(flow.read_text().replace("times = 2", "times = 3"))
    result = appion(env, "workflow", "run", "flow.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = status(env, "typed", tmp_path)
    assert jobs["count"]["result"] == {"chars": 15} and jobs["make"]["memo_hit"]
    assert log.read_text() == "count\ncount\n"
    listing = appion(env, "workflow", "status", cwd=tmp_path)
    assert listing.returncode == 0 and "typed: 2 completed, 1 cancelled" in listing.stdout


SLEEPER = """import pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text("started")
time.sleep(float(sys.argv[2]))
"""


def run_interrupted(tmp_path: Path, env: dict, host: str, drop_after: bool = False) -> tuple[dict, Path]:
    """SIGTERM to `appion workflow run` while a job runs: the job is stopped where it runs and waits again.
    drop_after: the rerun's file no longer has the waiting job `after`."""
    import signal
    import time

    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(SLEEPER)
    started = tmp_path / "started"
    flow = tmp_path / "flow.toml"

    def write(seconds, after=True):
        flow.write_text(f'name = "stop-{host}"\nhost = "{host}"\n[[job]]\nlabel = "long"\n'
                        f'command = ["{sys.executable}", "{sleeper}", "{started}", "{seconds}"]\n'
                        + ('[[job]]\nlabel = "after"\ncommand = ["true"]\nwhen = "long.completed"\n' if after else ""))

    write(300)
    proc = subprocess.Popen(["appion", "workflow", "run", str(flow)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), proc.communicate(timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted; stopped long (they will run again next time)" in err
    jobs = status(env, f"stop-{host}", tmp_path)
    assert jobs["long"]["state"] == "WAITING" and jobs["long"]["reason"].startswith("interrupted")
    assert jobs["after"]["state"] == "WAITING"
    write(0, after=not drop_after)
    again = appion(env, "workflow", "run", str(flow), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    jobs = status(env, f"stop-{host}", tmp_path)
    assert {k: j["state"] for k, j in jobs.items()} == {"long": "COMPLETED",
                                                       "after": "CANCELLED" if drop_after else "COMPLETED"}
    if drop_after:
        assert jobs["after"]["reason"] == f"no longer defined in {flow}" and jobs["after"]["attempts"] == 0
    return jobs, tmp_path / f"stop-{host}" / "long"


def test_interrupted_run_stops_its_local_command(fresh_home, tmp_path):
    import psutil

    _, env = fresh_home
    run_interrupted(tmp_path, env, "local", drop_after=True)
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path / "started") in (p.info["cmdline"] or [])]


@pytest.mark.slurm
def test_interrupted_run_cancels_its_slurm_job(private_slurm, fresh_home, tmp_path):
    _, env = fresh_home
    env = {**env, "SLURM_CONF": os.environ["SLURM_CONF"]}
    jobs, rundir = run_interrupted(tmp_path, env, "slurm")
    outputs = sorted(rundir.glob("slurm-*.out"))
    assert len(outputs) == 2  # the cancelled job and the one of the rerun
    cancelled_id = min(int(p.stem.split("-")[1]) for p in outputs)
    shown = subprocess.run(["scontrol", "show", "job", str(cancelled_id)], env=env, capture_output=True, text=True)
    assert "JobState=CANCELLED" in shown.stdout, shown.stdout + shown.stderr
