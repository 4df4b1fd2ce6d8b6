"""Run (or resume) the a→b→c→d chain workflow in its own process and print its outcome as JSON.

usage: python -m tests.workflow.wf_chain_script WORKFLOW WORKDIR submit|resume
`submit` defines the chain (as re-executing a user's script would) then runs it; `resume` only
reloads the workflow from the database and runs what is left, as a restarted process would.
The database is whatever APPION_HOME / APPION_CONFIG select (SQLite or MariaDB).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from appion.base.db import bootstrap

bootstrap()  # before anything imports the models (appion.workflow.core does)

from appion.workflow.core import Workflow  # noqa: E402
from tests.workflow.wf_jobs import register, submit_chain  # noqa: E402


def main(argv: list[str]) -> int:
    name, workdir, mode = argv
    register()
    wf = Workflow(name)
    if mode == "submit":
        submit_chain(wf, Path(workdir))
    elif mode != "resume":
        raise SystemExit(f"unknown mode {mode!r}")
    summary = wf.run()
    records = wf.jobs()
    print(json.dumps({
        "executed": summary.executed, "memo_hits": summary.memo_hits, "reclaimed": summary.reclaimed,
        "states": summary.states, "reasons": {r.label: r.reason for r in records},
        "attempts": {r.label: r.attempts for r in records},
        "results": {r.label: r.result for r in records}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
