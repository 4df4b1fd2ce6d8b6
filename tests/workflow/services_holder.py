"""A separate process leasing a service, for tests/workflow/test_workflow_services.py.

usage: python -m tests.workflow.services_holder churn ROOT NAME HOLDER COUNT HOLD_S
         acquire COUNT times (waiting as long as needed), hold each HOLD_S seconds, release; prints a JSON summary
       python -m tests.workflow.services_holder hold ROOT NAME HOLDER HOST
         acquire once as if running on HOST, print the slot as JSON, then hold until killed
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from appion.workflow.services import acquire_service


def churn(root: Path, name: str, holder: str, count: int, hold_s: float) -> dict:
    slots, lost = [], 0
    for _ in range(count):
        with acquire_service(name, root, holder=holder, wait_s=120, poll_s=0.01) as lease:
            slots.append(lease.slot)
            time.sleep(hold_s)
        lost += lease.lost
    return {"holder": holder, "slots": slots, "lost": lost}


def hold(root: Path, name: str, holder: str, host: str) -> None:
    lease = acquire_service(name, root, holder=holder, host=host, wait_s=60)
    print(json.dumps({"slot": lease.slot, "lease_id": lease.lease_id}), flush=True)
    time.sleep(3600)


def main(argv: list[str]) -> int:
    mode, root, name, holder, *rest = argv
    if mode == "churn":
        print(json.dumps(churn(Path(root), name, holder, int(rest[0]), float(rest[1]))), flush=True)
    elif mode == "hold":
        hold(Path(root), name, holder, rest[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
