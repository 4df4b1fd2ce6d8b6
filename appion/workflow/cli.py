"""`appion workflow run FILE.toml` and `appion workflow status [NAME]`.

Only argparse at the top: `appion --help` loads this module, and the workflow engine (Django,
Dask) is imported inside the command functions.
"""
from __future__ import annotations

import argparse
import sys

FORMAT_HELP = """\
workflow file (TOML):

  name = "refine-chain"        # workflow name; its state is kept in the database under it
  host = "slurm"               # default host of command jobs: "local" (default), a scheduler
                               #   (slurm, pbs, torque, sge, lsf) or a [hosts.NAME] of the config
  workdir = "runs"             # default <file's directory>/<name>; command jobs run in <workdir>/<label>
  modules = ["mysite.jobs"]    # Python modules imported first; they call register_jobtype()

  [[job]]
  label = "prepare"            # letters, digits, _ and -; conditions name jobs by label
  command = ["python3", "prep.py", "--box", "256"]   # an argument list (never a shell line)
  inputs = ["particles.star"]  # files whose contents the memo key covers
  [[job]]
  label = "refine"
  command = ["relion_refine", "--i", "prepare/particles.star"]
  when = "prepare.completed"
  rundir = "refine-run"        # instead of <workdir>/<label>
  host = "garibaldi"           # instead of the file's host
  resources = { ppn = 8, mem_gb = 32, walltime_h = 12 }   # also nodes, cputime_h, pmem_mb, queue, account
  [[job]]
  label = "report"
  jobtype = "mysite-report"    # a registered job type instead of a command ...
  params = { format = "pdf" }  # ... with its parameters
  when = "refine.completed or (refine.failed and not prepare.cancelled)"

Conditions: label.completed | label.failed | label.cancelled, combined with and, or, not (or &, |, ~)
and parentheses.  A job runs once its condition is certainly true and is cancelled, with the reason,
once it can no longer become true; a job without `when` starts at once.  Relative paths are relative
to the file's directory.

A command job on a scheduler is submitted as a batch job (Slurm: sbatch in its run directory, output
in slurm-<id>.out) and followed to its end; exit status 0 completes it, anything else fails it
("exit code 3; see <rundir>/slurm-<id>.out"); on "local" it runs here, output in <label>.appionlocal.log.
Each job has a memo key: its label, command, run directory, host and resources (or job type, version
and parameters), its inputs' contents and the keys of the completed jobs its condition names.
Running the same file again therefore executes only jobs whose key changed or that did not complete
(a fixed failed job and what follows it); the others complete from the memo without running.
A job removed from the file stops waiting (CANCELLED); Ctrl-C or SIGTERM cancels the running jobs
at their scheduler and leaves them WAITING for the next run.

exit status of run: 0 when no job failed, 1 when some job failed, 2 when the file is wrong.
"""


def add_parser(subparsers) -> None:
    wf = subparsers.add_parser(
        "workflow", help="chains of jobs with conditions (prepare -> run -> post-process), memoised",
        description="Run a workflow file's jobs in dependency order (on Slurm or here) and show their states.",
        epilog=FORMAT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = wf.add_subparsers(dest="workflow_cmd", required=True)
    run = sub.add_parser("run", help="run (or rerun) the jobs of a workflow file",
                         epilog=FORMAT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("file", metavar="FILE.toml")
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="jobs of a workflow: state, memo hit, attempts, reason")
    status.add_argument("name", nargs="?", metavar="NAME|FILE.toml",
                        help="a workflow name or its file (default: list every workflow)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)


# ---------------------------------------------------------------- run

def cmd_run(args) -> int:
    from appion.workflow.flowfile import FlowFileError, read_flow_file

    try:
        flow = read_flow_file(args.file)
        _prepare(flow)
        wf = _submit(flow)
    except FlowFileError as exc:
        print(f"appion workflow: {exc}", file=sys.stderr)
        return 2
    summary = _run(wf, flow)
    records = [r for r in wf.jobs() if r.label in set(flow.labels)]
    print(format_table(records))
    print(_summary_line(flow, summary, records))
    return 1 if any(r.state == "FAILED" for r in records) else 0


def _prepare(flow) -> None:
    """Import the file's modules and check job types, hosts and resources before anything runs."""
    import importlib
    import shutil

    from appion.refine.schedulers import calc_submit_command
    from appion.workflow import batch
    from appion.workflow.core import WorkflowError, get_jobtype
    from appion.workflow.flowfile import FlowFileError

    for name in flow.modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of a user's module is a file problem
            raise FlowFileError(f"{flow.path}: modules: cannot import {name!r}: {type(exc).__name__}: {exc}") from None
    batch.register_command_jobtype()
    configured = None
    for job in flow.jobs:
        where = f"{flow.path}: job {job.label!r}"
        if not job.is_command:
            if job.jobtype == batch.COMMAND_JOBTYPE:
                raise FlowFileError(f"{where}: jobtype {job.jobtype!r} is the built-in one of command jobs; "
                                    "write command = [...] instead")
            try:
                get_jobtype(job.jobtype)
            except WorkflowError as exc:
                raise FlowFileError(f"{where}: {exc}") from None
            continue
        if job.host == "local":
            continue
        configured = batch.configured_hosts() if configured is None else configured
        try:
            host = batch.resolve_host(job.host, configured)
            batch.calc_request(batch.spec_for_job(job), host)
        except batch.HostError as exc:
            raise FlowFileError(f"{where}: {exc}") from None
        program = calc_submit_command(host.scheduler, "job").argv[0]
        if shutil.which(program) is None:
            raise FlowFileError(f"{where}: host {job.host!r} ({host.scheduler}) needs {program}, "
                                "which is not installed on this machine")


def _submit(flow):
    """(Re)define every job of the file in its workflow; jobs no longer in the file stop waiting."""
    from appion.workflow import batch, store
    from appion.workflow.core import WAITING, Workflow, WorkflowError
    from appion.workflow.flowfile import FlowFileError

    wf = Workflow(flow.name)
    labels = set(flow.labels)
    if any(r.label not in labels for r in wf.jobs()):
        store.store_reclaimed_orphans(wf.id, token="workflow-cli")
        for rec in wf.jobs():
            if rec.label not in labels and rec.state == WAITING:
                store.store_cancelled(rec.id, f"no longer defined in {flow.path}")
    for job in flow.jobs:
        try:
            if job.is_command:
                wf.submit(batch.COMMAND_JOBTYPE, batch.spec_for_job(job).as_params(), inputs=job.inputs,
                          when=job.when, name=job.label)
            else:
                wf.submit(job.jobtype, job.params, inputs=job.inputs, when=job.when, name=job.label)
        except WorkflowError as exc:
            raise FlowFileError(f"{flow.path}: job {job.label!r}: {exc}") from None
    return wf


def _run(wf, flow):
    """Run on an in-process Dask client with a thread per job (they mostly wait on a scheduler)."""
    import logging
    import signal
    import threading

    from distributed import Client

    from appion.workflow import batch

    for noisy in ("distributed", "tornado", "bokeh"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # a failing job is reported by the workflow (table, database, its log line); not again by the worker
    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    threads = max(2, min(64, len(flow.jobs)))
    client = Client(processes=False, n_workers=1, threads_per_worker=threads, dashboard_address=None)
    try:
        return wf.run(client)
    except KeyboardInterrupt:
        # before closing the client, whose worker would wait for the threads still following their jobs
        stopped = batch.stop_all()
        if stopped:
            print(f"appion workflow: interrupted; stopped {', '.join(stopped)} (they will run again next time)",
                  file=sys.stderr)
        raise
    finally:
        client.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _summary_line(flow, summary, records) -> str:
    def part(title, labels):
        return f"{title} {len(labels)}" + (f" ({', '.join(labels)})" if labels else "")

    states = {r.label: r.state for r in records}
    waiting = [lb for lb, s in states.items() if s in ("WAITING", "RUNNING")]
    parts = [part("executed", summary.executed), part("from memo", summary.memo_hits),
             part("failed", [lb for lb, s in states.items() if s == "FAILED"]),
             part("cancelled", [lb for lb, s in states.items() if s == "CANCELLED"])]
    if waiting:
        parts.append(part("still waiting or running elsewhere", waiting))
    return f"workflow {flow.name}: " + ", ".join(parts)


# ---------------------------------------------------------------- status

def format_table(records) -> str:
    """label / state / memo / attempts / reason, one job a line (the reason in full, last)."""
    rows = [("label", "state", "memo", "attempts", "reason")]
    rows += [(r.label, r.state, "hit" if r.memo_hit else "-", str(r.attempts), " ".join((r.reason or "").split()))
             for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d:>{widths[3]}}  {e}".rstrip()
                     for a, b, c, d, e in rows)


def cmd_status(args) -> int:
    import json
    from pathlib import Path

    from appion.base.db import models as m
    from appion.workflow import store

    if args.name is None:
        return _list_workflows(args.json)
    name = args.name
    if name.endswith(".toml") and Path(name).is_file():
        from appion.workflow.flowfile import FlowFileError, read_flow_file

        try:
            name = read_flow_file(name).name
        except FlowFileError as exc:
            print(f"appion workflow: {exc}", file=sys.stderr)
            return 2
    row = m.ApWorkflowData.objects.filter(name=name).order_by("id").first()
    if row is None:
        print(f"appion workflow: no workflow named {name!r}", file=sys.stderr)
        return 1
    records = store.read_jobs(row.id)
    if args.json:
        print(json.dumps({"name": name, "jobs": [
            {"label": r.label, "state": r.state, "memo_hit": r.memo_hit, "attempts": r.attempts,
             "reason": r.reason, "jobtype": r.jobtype, "result": r.result} for r in records]}, indent=1))
    else:
        print(f"workflow {name}")
        print(format_table(records))
    return 0


def _list_workflows(as_json: bool) -> int:
    import json
    from collections import Counter

    from appion.base.db import models as m
    from appion.workflow.calc import JOB_STATES

    out = []
    for wf in m.ApWorkflowData.objects.order_by("id"):
        counts = Counter(m.ApWorkflowJobData.objects.filter(workflow_id=wf.id).values_list("state", flat=True))
        out.append((wf.name, {s: counts[s] for s in JOB_STATES if counts[s]}))
    if as_json:
        print(json.dumps([{"name": n, "states": c} for n, c in out], indent=1))
        return 0
    if not out:
        print("no workflows")
    for name, counts in out:
        print(f"{name}: " + (", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "no jobs"))
    return 0
