"""Steps as data: a third step added by a separate package, and results reused by memo key across runs.

The toy step lives in a package this test writes (with its own dist-info declaring the entry point
``appion.steps``), put on PYTHONPATH of the `appion` commands: nothing in appion names it.  It depends on
the CTF step, scores each exposure from its CTF fit, keeps its results as JSON files in its run directory
and shows one column.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from appion.base.steps import Engine, Lazy, Step, StepError, calc_step_order
from tests.loop.loophelpers import Db, copy_movies, finish, import_session, start_loop

TOY_INIT = '''
"""A toy appion step (written by tests/loop/test_steps.py)."""
from dataclasses import dataclass

from appion.base.steps import Column, Engine, Lazy, Step

VERSION = "{version}"


@dataclass(frozen=True)
class ToySettings:
    engine: str = "builtin"
    scale: float = 1.0

    def hashed(self):
        return {{"scale": self.scale}}


def add_options(p):
    p.add_argument_group("toy").add_argument("--toy-scale", type=float, default=1.0)


def settings_from_args(args):
    return ToySettings(scale=args.toy_scale)


STEP = Step(name="toy", title="Toy score", settings_type=ToySettings,
            engines={{"builtin": Engine("builtin", "the toy score", version=VERSION)}},
            task=Lazy("toystep.work", "run"), store=Lazy("toystep.work", "store"),
            done=Lazy("toystep.work", "done"), store_run=Lazy("toystep.work", "store_run"),
            rundir_kind="toy", depends_on=("ctf",), add_options=add_options, settings_from_args=settings_from_args,
            columns=(Column("score", "toy score", Lazy("toystep.work", "read_score"), fmt="{{:.4f}}"),))
'''

TOY_WORK = '''
"""The toy step's parts: worker task, store, done-query, column."""
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToyRecord:
    image_id: int
    score: float
    seconds: float
    worker: str


def run(task, settings):
    ctf = task.upstream["ctf"]
    with open(Path(task.rundir) / "executions.log", "a") as log:
        log.write(f"{task.exposure.image_id}\\n")
    return ToyRecord(task.exposure.image_id, settings.scale * 1e4 / ctf.defocus1_A, 0.0, str(os.getpid()))


def store_run(run):
    from appion.base.session.store import store_path

    return store_path(run.rundir).id


def store(record, run, task, inside=None):
    folder = Path(run.rundir) / "scores"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{record.image_id}.json.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, folder / f"{record.image_id}.json")
    if inside is not None:
        inside()
    return record


def _read(folder, ids):
    out = {}
    for i in ids:
        p = Path(folder) / "scores" / f"{i}.json"
        if p.exists():
            out[i] = ToyRecord(**json.loads(p.read_text()))
    return out


def done(run, ids, inputs):
    return _read(run.rundir, ids)


def read_score(run_id, ids):
    from appion.base.db import models as m

    folder = m.ApPathData.objects.get(id=run_id).path
    return {i: r.score for i, r in _read(folder, ids).items()}
'''


def write_toy_package(root: Path, version: str) -> Path:
    """The toy step package and its dist-info (entry point appion.steps: toy = toystep:STEP)."""
    pkg = root / "toystep"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(TOY_INIT.format(version=version)))
    (pkg / "work.py").write_text(textwrap.dedent(TOY_WORK))
    dist = root / "toystep-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toystep\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[appion.steps]\ntoy = toystep:STEP\n")
    for cached in pkg.glob("__pycache__/*"):
        cached.unlink()
    return root


def run_loop(env, args, log: Path) -> str:
    proc = start_loop(env, ["--no-wait", "--idle", "0", "--poll", "0.3", "--dashboard-address", ":0", *args], log)
    assert finish(proc, 400, log) == 0, log.read_text()[-4000:]
    return log.read_text()


def tasks_run(text: str) -> dict[str, int]:
    """The loop's closing line `tasks run: motion 3, ctf 3` as a dict (missing steps ran 0 tasks)."""
    found = re.search(r"^tasks run: (.*?)(;|$)", text, re.MULTILINE)
    assert found, text[-3000:]
    if found.group(1).strip() == "none":
        return {}
    return {name: int(n) for name, n in (part.split() for part in found.group(1).split(", "))}


def test_toy_step_from_a_separate_package_and_memo_reuse(home_env, sim_frames, tmp_path):
    home, env = home_env
    plugin = write_toy_package(tmp_path / "plugin", "1")
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin), env.get("PYTHONPATH")]))}
    frames = copy_movies(sim_frames, tmp_path / "frames", ["lp_00001", "lp_00002", "lp_00003"])
    import_session(env, "st", frames)
    db = Db(home)

    # 1. motion + CTF
    out = run_loop(env, ["--session", "st", "--runname", "r1"], tmp_path / "r1.log")
    assert tasks_run(out) == {"motion": 3, "ctf": 3}
    assert db.count("ApDDAlignImagePairData") == 3 and db.count("ApCtfData") == 3

    # 2. new CTF parameters under a new run name: motion results reused (not copied), CTF recomputed
    out = run_loop(env, ["--session", "st", "--runname", "r2", "--resmax", "6"], tmp_path / "r2.log")
    assert tasks_run(out) == {"ctf": 3}
    assert "results reused for: motion" in out
    assert db.count("ApDDAlignImagePairData") == 3 and db.count("ApDDStackRunData") == 1
    assert db.count("ApCtfData") == 6 and db.count("ApAceRunData") == 2  # the old results stay under r1

    # 3. the toy step joins (same motion and CTF settings as r2): only the toy runs
    out = run_loop(env, ["--session", "st", "--runname", "r3", "--resmax", "6", "--steps", "motion,ctf,toy"],
                   tmp_path / "r3.log")
    assert tasks_run(out) == {"toy": 3}
    toy_dir = home / "runs" / "st" / "toy" / "r3"  # <appion_base>/<session>/<rundir kind>/<run>
    assert sorted(p.name for p in (toy_dir / "scores").iterdir()) and len((toy_dir / "executions.log")
                                                                      .read_text().split()) == 3
    loop_rows = db.rows("SELECT step, status, COUNT(*) FROM ApLoopExposureData WHERE step = 'toy' "
                        "GROUP BY step, status")
    assert loop_rows == [("toy", "done", 3)]

    # its rows and its column in `appion status`
    status = subprocess.run(["appion", "status", "st", "--runname", "r3", "--exposures"], env=env, check=True,
                            capture_output=True, text=True).stdout
    assert re.search(r"^\s+toy\s+done\s+3\b", status, re.MULTILINE), status
    assert re.search(r"^\s+motion\s+reused", status, re.MULTILINE), status  # results of r1, not recomputed
    assert "toy score" in status
    scores = [float(x) for x in re.findall(r"^lp_\S+ .*\s(\d+\.\d{4})\s*$", status, re.MULTILINE)]
    assert len(scores) == 3, status
    # score = 1e4 / the fitted defocus1 (Å) of the reused CTF run r2 (ApCtfData orders defocus1 ≤ defocus2)
    r2_defoci = db.rows("SELECT defocus1, defocus2 FROM ApCtfData WHERE \"REF|ApAceRunData|acerun\" = "
                        "(SELECT DEF_id FROM ApAceRunData WHERE name = 'r2')")
    expected = [1e4 / (d * 1e10) for pair in r2_defoci for d in pair]
    for s in scores:
        assert min(abs(s - e) for e in expected) < 1e-4, (scores, expected)

    # and on the session page (served by a separate `appion serve` with the same plugin path)
    server = subprocess.Popen(["appion", "serve", "--port", "0"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://[^ ]+/", server.stdout.readline()).group(0).rstrip("/")
        session_id = db.rows("SELECT DEF_id FROM SessionData", "leginon")[0][0]
        run_id = db.rows("SELECT DEF_id FROM ApLoopRunData WHERE runname = 'r3'")[0][0]
        with urllib.request.urlopen(f"{url}/session/{session_id}/?run={run_id}", timeout=30) as r:
            page = r.read().decode()
    finally:
        server.terminate()
        server.wait(10)
    assert "toy score" in page
    for s in scores:
        assert f"{s:.4f}" in page

    # 4. a new declared program version of the toy: only the toy is recomputed
    write_toy_package(tmp_path / "plugin", "2")
    out = run_loop(env, ["--session", "st", "--runname", "r4", "--resmax", "6", "--steps", "motion,ctf,toy"],
                   tmp_path / "r4.log")
    assert tasks_run(out) == {"toy": 3}
    assert "results reused for: motion, ctf" in out
    assert db.count("ApDDAlignImagePairData") == 3 and db.count("ApCtfData") == 6


def _step(name, depends_on=(), optional=()):
    return Step(name=name, title=name, settings_type=dict, engines={"e": Engine("e", "")},
                task=Lazy("m", "f"), store=Lazy("m", "f"), done=Lazy("m", "f"), store_run=Lazy("m", "f"),
                rundir_kind=name, depends_on=depends_on, optional_upstream=optional)


def test_step_order_follows_dependencies():
    steps = {"motion": _step("motion"), "ctf": _step("ctf", optional=("motion",)),
             "toy": _step("toy", depends_on=("ctf",))}
    assert calc_step_order(("toy", "ctf", "motion"), steps) == ("motion", "ctf", "toy")
    assert calc_step_order(("ctf",), steps) == ("ctf",)  # motion is only an optional upstream of CTF
    with pytest.raises(StepError, match="needs step"):
        calc_step_order(("motion", "toy"), steps)
    with pytest.raises(StepError, match="unknown step"):
        calc_step_order(("motion", "nope"), steps)
    loop = {"a": _step("a", depends_on=("b",)), "b": _step("b", depends_on=("a",))}
    with pytest.raises(StepError, match="cycle"):
        calc_step_order(("a", "b"), loop)


def test_help_offers_no_test_engines():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    text = subprocess.run([sys.executable, "-m", "appion.cli", "loop", "--help"], env=env, check=True,
                          capture_output=True, text=True).stdout
    assert "noop" not in text and "--noop" not in text
    assert "builtin" in text and "motioncor2" in text
