"""Job functions shared by the workflow tests and the subprocess script.

Each execution appends its step name to <workdir>/executions.log, so tests count real runs
(memo hits leave no line).  Control files in workdir steer a step: "<name>.fail" makes it raise,
"<name>.crash" makes it kill its whole process once (the file is removed first).
"""
from __future__ import annotations

import os
from pathlib import Path

from appion.workflow.jobtypes import register_jobtype  # no Django: workers import this module

CHAIN = "test-chainstep"


def chainstep(params: dict, inputs: list[str]) -> dict:
    """Concatenate the inputs' text, append this step's name, write <name>.out."""
    workdir = Path(params["workdir"])
    name = params["name"]
    with open(workdir / "executions.log", "a") as fh:
        fh.write(name + "\n")
    crash = workdir / f"{name}.crash"
    if crash.exists():
        crash.unlink()
        os._exit(3)
    if (workdir / f"{name}.fail").exists():
        raise RuntimeError(f"step {name} told to fail")
    text = "".join(Path(p).read_text() for p in inputs) + name
    out = workdir / f"{name}.out"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return {"out": str(out), "text": text}


def read_executions(workdir: Path) -> list[str]:
    log = Path(workdir) / "executions.log"
    return log.read_text().split() if log.exists() else []


def register(version: str = "1", programs: dict | None = None) -> None:
    register_jobtype(CHAIN, chainstep, version=version, programs=programs)


def submit_chain(wf, workdir: Path, names=("a", "b", "c", "d")):
    """A linear chain: each step waits on the previous one and reads its output file."""
    handles = {}
    prev = None
    for name in names:
        inputs = [] if prev is None else [str(Path(workdir) / f"{prev}.out")]
        when = None if prev is None else handles[prev].completed
        handles[name] = wf.submit(CHAIN, {"workdir": str(workdir), "name": name}, inputs=inputs, when=when,
                                  name=name)
        prev = name
    return handles
