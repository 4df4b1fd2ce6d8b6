"""The near-realtime loop: run the registered steps over every new exposure of a session on Dask.

Shape of the loop (one process, the only database writer):

    poll new exposures (DEF_id high-water mark) → filter done / rejected / failed / tilt
      → per exposure, per step: the step's condition (its upstream steps completed) decides:
        run (queue it), cancel (record why) or wait
      → submit while fewer than --max-in-flight tasks are out
      → as tasks finish: the step stores its rows (idempotent), the future is released, the
        exposure's conditions are evaluated again
      → errors: record attempt + error, retry after a back-off, then mark permanently failed
        (its dependents are cancelled with the reason).

The loop knows no step by name: steps come from appion.base.steps (one registry).  A step run's
memo key (its parameters, engine and program version, appion version, the upstream steps' keys)
decides whether an earlier loop run of the session already holds its results: then those are
reused (not copied) and only the steps whose key changed are computed.  Task keys are
deterministic (step, exposure id, memo key, attempt).  Every store is idempotent, so a restart
after SIGKILL stores nothing twice and skips nothing.  Database outages are waited out.
"""
from __future__ import annotations

import heapq
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from distributed import wait

import appion
from appion.base.db import current_config, use_appion_database
from appion.base.db import models as m
from appion.base.db.models.loop import DONE, FAILED, QUEUED, RETRY, RUNNING
from appion.base.io.files import write_text_atomic
from appion.base.session import retrieve as r
from appion.base.session import store as st
from appion.base.steps import Step, StepInput, StepRun, calc_step_order, calc_upstream, load_steps
from appion.loop import store as ls
from appion.loop.calc import (LoopError, calc_backoff_s, calc_params_hash, calc_task_key, calc_tilt_skip, one_line)
from appion.loop.cluster import ClusterSettings, describe_dashboard, start_cluster, stop_cluster
from appion.loop.db import DatabaseRetry, db_errors, retrieve_exposure_inputs
from appion.loop.records import LoopSettings, LoopSummary, Work, user_errors  # noqa: F401 (the loop's API)
from appion.loop.tasks import TaskSpec, run_step_task, warm_up_plugin
from appion.workflow.calc import CANCELLED, COMPLETED, WAITING, AllOf, Is, MemoParts, calc_decision, calc_memo_key
from appion.workflow.calc import FAILED as WF_FAILED
from appion.workflow.calc import RUNNING as WF_RUNNING

log = logging.getLogger("appion.loop")

TILT_CHOICES = ("all", "notilt", "hightilt", "lowtilt", "minustilt", "plustilt")
TERMINAL = (COMPLETED, WF_FAILED, CANCELLED)


class Loop:
    """One loop run over one session.  State is real here: queues, in-flight futures, attempts."""

    def __init__(self, settings: LoopSettings):
        self.s = settings
        self.cluster_settings = settings.cluster or ClusterSettings()
        self.stop_requested = self.hard_stop = False
        self.db = DatabaseRetry(should_give_up=lambda: self.hard_stop)
        self.summary = LoopSummary()
        defs = load_steps()
        self.order = calc_step_order(tuple(settings.steps), defs) if settings.steps else ()
        if not self.order:
            raise LoopError("no steps to run (give --steps)")
        self.defs: dict[str, Step] = {n: defs[n] for n in self.order}
        self.settings: dict[str, Any] = {n: settings.step_settings.get(n) or self.defs[n].default_settings()
                                         for n in self.order}
        self.engines = {n: self.defs[n].engine(self.settings[n].engine) for n in self.order}
        self.storing = {n: settings.commit and not self.engines[n].test_only for n in self.order}
        self.upstream = {n: calc_upstream(self.defs[n], self.order) for n in self.order}
        self.conditions = {n: (AllOf(tuple(Is(u, COMPLETED) for u in self.upstream[n])) if len(self.upstream[n]) > 1
                               else Is(self.upstream[n][0], COMPLETED) if self.upstream[n] else None)
                           for n in self.order}
        self.versions: dict[str, str] = {}
        self.memo: dict[str, str] = {}
        self.inputs: dict[int, Any] = {}
        self.outputs: dict[tuple[int, str], Any] = {}
        self.states: dict[int, dict[str, str]] = {}
        self.reasons: dict[tuple[int, str], str] = {}
        self.records: dict[int, dict[str, Any]] = {}
        self.rows: dict[tuple[int, str], int] = {}
        self.attempts: dict[tuple[int, str], int] = {}
        self.queue: list = []
        self.retry_heap: list = []
        self.inflight: dict[str, Work] = {}
        self.seq = self.high_water = self.accepted = 0
        self.last_arrival = time.monotonic()
        self.session_done = False
        self.looprun_id = None
        self.step_runs: dict[str, StepRun] = {}
        self.job_ids: list[int] = []
        self.cluster = self.client = None
        self.task_slots = 1

    # ------------------------------------------------------------------ set-up
    def calc_memo_keys(self) -> None:
        """Each step's memo key: parameters, engine + program version, appion version, upstream keys."""
        for n in self.order:
            self.versions[n] = self.engines[n].calc_version(self.settings[n])
            parts = MemoParts(jobtype=f"appion-step:{n}", jobtype_version=self.engines[n].name,
                              program_versions={self.engines[n].name: self.versions[n]},
                              appion_version=appion.__version__, params=self.settings[n].hashed(),
                              input_digests=(), upstream_keys=tuple(self.memo[u] for u in self.upstream[n]))
            self.memo[n] = calc_memo_key(parts)
        self.run_hash = calc_params_hash({"steps": self.order, "preset": self.s.preset, "memo": self.memo})

    def _default_rundir(self, step: str) -> Path:
        if self.s.rundirs.get(step):
            return Path(self.s.rundirs[step]).resolve()
        return current_config().appion_base / self.s.session / self.defs[step].rundir_kind / self.s.runname

    def setup(self) -> None:
        self.calc_memo_keys()
        self.session = self.db(r.retrieve_session, self.s.session, what="reading the session")
        if self.session is None:
            raise LoopError(f"session {self.s.session!r} not found in the Leginon database "
                            f"(import one with `appion session import --name {self.s.session} ...`)")
        self.db(use_appion_database, self.s.project_id, what="choosing the appion database")
        self.preset_ids = (self.db(r.retrieve_preset_ids, self.session.id, self.s.preset, what="reading presets")
                           if self.s.preset else None)
        for n in self.order:
            self.step_runs[n] = StepRun(n, None, self._default_rundir(n), self.session.id, self.session.name,
                                        self.s.runname, self.settings[n], commit=self.storing[n],
                                        preset_id=self.preset_ids[0] if self.preset_ids else None)
        if self.s.commit:
            self.db(self._store_runs, what="registering the run")
        for run in self.step_runs.values():
            run.rundir.mkdir(parents=True, exist_ok=True)
        self._write_params_file()

    def _store_runs(self) -> None:
        first = self.step_runs[self.order[0]].rundir
        params = json.dumps({"steps": list(self.order), "preset": self.s.preset,
                             **{n: self.settings[n].hashed() for n in self.order}}, default=str)
        looprun = ls.store_loop_run(self.s.runname, self.session.id, ",".join(self.order), self.run_hash, params,
                                    first, os.getpid(), time.time())
        self.looprun_id = looprun.id
        for n in self.order:
            run = self.step_runs[n]
            run_id, rundir, reused = None, run.rundir, False
            if self.storing[n]:
                earlier = (ls.retrieve_memo_step_run(self.session.id, n, self.memo[n])
                           if self.s.reuse and self.s.continue_run else None)
                if earlier is not None:
                    run_id, rundir = earlier.run_id, Path(earlier.rundir)
                    reused = earlier.looprun_id != self.looprun_id
                else:
                    run_id = self.defs[n].store_run(run)
            ls.store_step_run(self.looprun_id, self.session.id, n, self.memo[n], run_id, str(rundir),
                              json.dumps(self.settings[n].hashed(), default=str),
                              json.dumps({"engine": self.engines[n].name, "program": self.versions[n],
                                          "appion": appion.__version__}), reused)
            self.step_runs[n] = StepRun(n, run_id, rundir, run.session_id, run.session_name, run.runname,
                                        run.settings, run.commit, run.preset_id)
            self.summary.reused[n] = reused
            if reused:
                log.info("step %s: parameters and versions unchanged since an earlier run; reusing its results "
                         "(%s)", n, rundir)
        for n in self.order:
            job = st.store_appion_job(f"{self.s.runname}.appionsub.job", self.step_runs[n].rundir, self.s.jobtype,
                                      self.session.id, status="R", cluster=self.cluster_settings.kind)
            self.job_ids.append(job.id)
            st.store_program_run(self.s.program, self.s.runname, self.step_runs[n].rundir, job.id, self.session.id,
                                 list(self.s.script_params))

    def _write_params_file(self) -> None:
        text = json.dumps({"session": self.s.session, "runname": self.s.runname, "steps": list(self.order),
                           "settings": {n: self.settings[n].hashed() for n in self.order},
                           "versions": self.versions, "memo": self.memo, "hash": self.run_hash}, indent=1, default=str)
        for run in self.step_runs.values():
            write_text_atomic(run.rundir / f"{self.s.runname}.loop-params.json", text)

    # ------------------------------------------------------------------ polling
    def poll(self) -> int:
        """Look for exposures registered since the high-water mark; queue what needs doing.  Returns how many.

        All database work happens before any in-memory state changes, so a poll interrupted by a
        database outage is simply repeated.
        """
        if self.s.preset:
            self.preset_ids = r.retrieve_preset_ids(self.session.id, self.s.preset)
        rows = r.retrieve_new_images(self.session.id, self.high_water, self.preset_ids)
        if not rows:
            return 0
        high_water = max(row["id"] for row in rows)
        rows = [row for row in rows if self._in_id_range(row["id"])]
        if rows and any(self.defs[n].input_kind == "movie" for n in self.order):
            cams = r._by_id(m.CameraEMData, (row["camera_id"] for row in rows))
            rows = [row for row in rows if not (cams.get(row["camera_id"]) and cams[row["camera_id"]].align_frames)]
        if self.s.skip_rejected and rows:
            rejected = r.retrieve_rejected_image_ids([row["id"] for row in rows])
            rows = [row for row in rows if row["id"] not in rejected]
        inputs = retrieve_exposure_inputs(self.session, rows) if rows else {}
        if self.s.tilt != "all":
            inputs = {i: x for i, x in inputs.items() if not calc_tilt_skip(x.tilt_deg, self.s.tilt)}
        ids = sorted(inputs)
        states, outputs, existing = self._read_progress(ids, inputs) if ids else ({}, {}, {})
        chosen = [i for i in ids if any(s not in TERMINAL for s in states[i].values())]
        if self.s.order == "newest":
            chosen.reverse()  # --limit with newest first keeps the newest
        if self.s.limit is not None:
            chosen = chosen[:max(0, self.s.limit - self.accepted)]
        new_rows = [(i, n, inputs[i].arrived) for i in chosen for n in self.order
                    if states[i][n] == WAITING and (i, n) not in existing]
        created = ls.store_loop_exposures(self.looprun_id, new_rows) if new_rows and self.s.commit else {}
        # database work done: now the in-memory state
        for key, (row_id, _, attempts) in existing.items():
            self.rows[key] = row_id
            self.attempts[key] = attempts
        self.rows.update(created)
        self.high_water = high_water
        for image_id in chosen:
            self.accepted += 1
            self.inputs[image_id] = inputs[image_id]
            self.states[image_id] = states[image_id]
            self.outputs.update({(image_id, n): outputs[(image_id, n)] for n in self.order
                                 if (image_id, n) in outputs})
            self._advance(image_id)
        if chosen:
            self.last_arrival = time.monotonic()
        return len(chosen)

    def _in_id_range(self, image_id: int) -> bool:
        if self.s.start_image_id is not None and image_id < self.s.start_image_id:
            return False
        if self.s.end_image_id is not None and image_id > self.s.end_image_id:
            return False
        return self.s.image_ids is None or image_id in self.s.image_ids

    def _read_progress(self, ids: list[int], inputs: dict):
        """Per exposure and step: COMPLETED (stored by this step run), FAILED (permanently, earlier) or WAITING."""
        existing = ls.retrieve_loop_exposures(self.looprun_id, ids) if self.looprun_id is not None else {}
        outputs: dict[tuple[int, str], Any] = {}
        if self.s.continue_run:
            for n in self.order:
                run = self.step_runs[n]
                if self.storing[n] and run.run_id is not None:
                    for image_id, out in self.defs[n].done(run, ids, inputs).items():
                        outputs[(image_id, n)] = out
        states = {}
        for image_id in ids:
            states[image_id] = {}
            for n in self.order:
                if (image_id, n) in outputs:
                    states[image_id][n] = COMPLETED
                elif self.s.continue_run and existing.get((image_id, n), (0, "", 0))[1] == FAILED:
                    states[image_id][n] = WF_FAILED
                    self.summary.failed[(image_id, n)] = "permanently failed in an earlier run"
                else:
                    states[image_id][n] = WAITING
        return states, outputs, existing

    # ------------------------------------------------------------------ conditions
    def _advance(self, image_id: int) -> None:
        """Evaluate the exposure's waiting steps: queue those whose condition holds, cancel the impossible."""
        states = self.states[image_id]
        changed = True
        while changed:
            changed = False
            for n in self.order:
                if states[n] != WAITING:
                    continue
                rejected = [(u, self.outputs[(image_id, u)].rejected) for u in self.upstream[n]
                            if states[u] == COMPLETED and getattr(self.outputs.get((image_id, u)), "rejected", None)]
                if rejected:  # a curation step turned the exposure down: later steps skip it
                    states[n] = CANCELLED
                    self._record_not_run(image_id, n, "not run: " + "; ".join(f"rejected by {u}: {why}"
                                                                            for u, why in rejected))
                    changed = True
                    continue
                reasons = {u: self.reasons.get((image_id, u)) for u in self.upstream[n]}
                decision = calc_decision(self.conditions[n], {u: states[u] for u in self.upstream[n]}, reasons)
                if decision.action == "run":
                    states[n] = WF_RUNNING
                    self._enqueue(image_id, n)
                elif decision.action == "cancel":
                    states[n] = CANCELLED
                    why = [f"{u} failed" if states[u] == WF_FAILED else f"{u} not run" for u in self.upstream[n]
                           if states[u] in (WF_FAILED, CANCELLED)]
                    self._record_not_run(image_id, n, f"not run: {', '.join(why) or decision.reason}")
                    changed = True
        if all(s in TERMINAL for s in states.values()):
            self._finish_exposure(image_id)

    def _record_not_run(self, image_id: int, step: str, reason: str) -> None:
        self.reasons[(image_id, step)] = reason
        self.summary.failed[(image_id, step)] = reason
        row = self.rows.get((image_id, step))
        if row is not None and self.s.commit:
            self.db(ls.store_loop_exposure_fields, row, status=FAILED, last_error=reason[:500], finished=time.time(),
                    what="recording a step not run")

    def _finish_exposure(self, image_id: int) -> None:
        inp = self.inputs.pop(image_id)
        states = self.states.pop(image_id)
        records = self.records.pop(image_id, {})
        if all(s == COMPLETED for s in states.values()) and records:
            latency = time.time() - inp.arrived
            self.summary.done.append(image_id)
            self.summary.latency_s[image_id] = latency
            parts = [f"{inp.filename}:"]
            for n in self.order:
                rec = records.get(n)
                if rec is not None and self.defs[n].describe is not None:
                    parts.append(self.defs[n].describe(rec))
                elif rec is not None:
                    parts.append(f"{n} {getattr(rec, 'seconds', 0.0):.1f} s")
            parts.append(f"latency {latency:.1f} s")
            log.info("%s", " ".join(parts))
        for n in self.order:  # nothing of a finished exposure stays in memory
            for table in (self.outputs, self.rows, self.attempts, self.reasons):
                table.pop((image_id, n), None)

    def _enqueue(self, image_id: int, step: str) -> None:
        rank = -self.order.index(step)  # later steps first: finish exposures already started
        order = -image_id if self.s.order == "newest" else image_id
        self.seq += 1
        heapq.heappush(self.queue, (rank, order, self.seq, image_id, step))

    # ------------------------------------------------------------------ submitting
    def max_in_flight(self) -> int:
        return self.s.max_in_flight or max(2, 2 * self.task_slots)

    def _task_spec(self, step: str) -> TaskSpec:
        engine = self.engines[step]
        services_dir = self.s.services_dir or str(current_config().home / "services")
        return TaskSpec(step, self.defs[step].task_for(engine.name), engine.needs, services_dir,
                        self.s.lease_timeout_s)

    def submit_ready(self) -> int:
        now = time.time()
        while self.retry_heap and self.retry_heap[0][0] <= now:
            _, _, image_id, step = heapq.heappop(self.retry_heap)
            self._enqueue(image_id, step)
        submitted = []
        while self.queue and len(self.inflight) < self.max_in_flight():
            _, _, _, image_id, step = heapq.heappop(self.queue)
            attempt = self.attempts.get((image_id, step), 0) + 1
            key = calc_task_key(step, image_id, self.memo[step][:12], attempt)
            if key in self.inflight:
                continue
            task = StepInput(self.inputs[image_id], {u: self.outputs.get((image_id, u)) for u in self.upstream[step]},
                             str(self.step_runs[step].rundir))
            resources = {"GPU": 1} if "gpu" in self.engines[step].needs and self.cluster_settings.gpus else None
            future = self.client.submit(run_step_task, self._task_spec(step), task, self.settings[step], key=key,
                                        resources=resources, retries=0)
            self.inflight[key] = Work(image_id, step, attempt, key, time.time(), future, task)
            self.summary.executed[step] += 1
            row = self.rows.get((image_id, step))
            if row is not None:
                submitted.append(row)
        if submitted and self.s.commit:
            self.db(ls.store_loop_exposures_status, submitted, RUNNING, submitted=now, what="marking submissions")
        return len(submitted)

    # ------------------------------------------------------------------ collecting
    def collect(self, timeout_s: float) -> int:
        """Wait up to timeout_s for tasks to finish; store each result (one writer).  Returns how many finished."""
        if not self.inflight:
            time.sleep(timeout_s)
            return 0
        try:
            wait([w.future for w in self.inflight.values()], timeout=timeout_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return 0
        finished = [w for w in self.inflight.values() if w.future.status != "pending"]
        for work in finished:
            del self.inflight[work.key]
            self._handle(work)
            work.future.release()
            work.future = None  # no stray references: adaptive clusters can scale down to zero
        return len(finished)

    def _handle(self, work: Work) -> None:
        status = work.future.status
        if status == "finished":
            try:
                self._store(work, work.future.result())
                return
            except db_errors():
                raise  # only when giving up on a dead database during a hard stop
            except Exception as exc:  # storing failed for a reason of this exposure (bad data)
                self._failed(work, f"storing the result: {one_line(exc)}")
                return
        if status in ("cancelled", "lost"):
            self._failed(work, f"task {status} (its worker went away)")
            return
        self._failed(work, one_line(work.future.exception()))

    def _store(self, work: Work, record) -> None:
        key = (work.image_id, work.step)
        now = time.time()
        row = self.rows.get(key)
        seconds, worker = getattr(record, "seconds", None), getattr(record, "worker", None)

        def mark_done():
            if row is not None:
                ls.store_loop_exposure_fields(row, status=DONE, finished=now, seconds=seconds, worker=worker)

        if self.storing[work.step]:
            output = self.db(self.defs[work.step].store, record, self.step_runs[work.step], work.task,
                             inside=mark_done, what=f"storing {work.step} results")
        else:
            output = record  # a test engine, or --no-commit: nothing is stored in the step's tables
            if self.s.commit:
                self.db(mark_done, what="recording a finished step")
        self.outputs[key] = output
        self.records.setdefault(work.image_id, {})[work.step] = record
        self.states[work.image_id][work.step] = COMPLETED
        self._advance(work.image_id)

    def _failed(self, work: Work, reason: str) -> None:
        key = (work.image_id, work.step)
        attempts = self.attempts.get(key, 0) + 1
        self.attempts[key] = attempts
        row = self.rows.get(key)
        name = self.inputs[work.image_id].filename
        if attempts <= self.s.retries:
            delay = calc_backoff_s(self.s.backoff_s, attempts)
            log.warning("%s %s attempt %d failed: %s; retrying in %.0f s", name, work.step, attempts, reason, delay)
            self.seq += 1
            heapq.heappush(self.retry_heap, (time.time() + delay, self.seq, work.image_id, work.step))
            if row is not None and self.s.commit:
                self.db(ls.store_loop_exposure_fields, row, status=RETRY, attempts=attempts, last_error=reason,
                        retry_after=time.time() + delay, what="recording a failed attempt")
            return
        log.error("%s %s permanently failed after %d attempts: %s", name, work.step, attempts, reason)
        self.summary.failed[key] = reason
        self.reasons[key] = reason
        if row is not None and self.s.commit:
            self.db(ls.store_loop_exposure_fields, row, status=FAILED, attempts=attempts, last_error=reason,
                    finished=time.time(), what="recording a permanent failure")
        self.states[work.image_id][work.step] = WF_FAILED
        self._advance(work.image_id)  # dependents are cancelled, with this reason

    # ------------------------------------------------------------------ running
    def idle_and_caught_up(self) -> bool:
        return not self.queue and not self.inflight and not self.retry_heap

    def should_exit(self) -> bool:
        if not self.idle_and_caught_up():
            return False
        if self.s.limit is not None and self.accepted >= self.s.limit:
            return True
        if self.s.wait and not self.session_done:
            return False
        return time.monotonic() - self.last_arrival >= self.s.idle_s

    def _publish_services(self) -> None:
        needs = {need for n in self.order for need in self.engines[n].needs}
        if not needs:
            return
        from appion.workflow.services import ServiceSpec, publish_service

        root = Path(self.s.services_dir or current_config().home / "services")
        for need in sorted(needs):
            if need == "gpu":
                slots = tuple(x.strip() for x in self.s.gpu_ids.split(",") if x.strip())
                publish_service(ServiceSpec("gpu", slots, per_host=True, lease_timeout_s=self.s.lease_timeout_s),
                                root)

    def run(self) -> LoopSummary:
        self.setup()
        error = None
        try:
            self._publish_services()
            self.cluster, self.client, self.task_slots = start_cluster(self.cluster_settings)
            try:
                modules = tuple(mod for n in self.order for mod in (self.defs[n].task_for(self.engines[n].name).module,
                                                                   *self.engines[n].modules))
                self.client.register_plugin(warm_up_plugin(modules))
            except Exception as exc:  # only an optimisation
                log.warning("could not warm up the workers: %s", one_line(exc))
            dashboard = describe_dashboard(self.client)
            print(f"appion loop: session {self.s.session}, run {self.s.runname}, steps {'+'.join(self.order)} on "
                  f"{self.cluster_settings.kind} ({self.task_slots} task slots); dashboard: {dashboard}", flush=True)
            if self.s.commit and self.looprun_id:  # the web viewer links it from the session page
                self.db(ls.store_loop_run_fields, self.looprun_id, dashboard=dashboard,
                        what="recording the dashboard address")
            next_poll = next_beat = 0.0
            while not self.stop_requested:
                now = time.monotonic()
                if now >= next_poll:
                    self.db(self.poll, what="polling for new exposures")
                    if not self.session_done:
                        self.session_done = self.db(r.retrieve_session_done, self.session.id,
                                                    what="checking whether the session is done")
                    next_poll = now + self.s.poll_s
                if self.s.commit and self.looprun_id and now >= next_beat:
                    self.db(ls.store_loop_run_fields, self.looprun_id, heartbeat=time.time(), what="heartbeat")
                    next_beat = now + 15.0
                self.submit_ready()
                if self.should_exit():
                    break
                self.collect(min(0.5, self.s.poll_s))
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.shutdown(error)
        return self.summary

    def shutdown(self, error: BaseException | None) -> None:
        if self.inflight and error is None:
            deadline = time.monotonic() + (0 if self.hard_stop else self.s.grace_s)
            log.info("stopping: waiting up to %.0f s for %d tasks in flight", max(0, deadline - time.monotonic()),
                     len(self.inflight))
            while self.inflight and time.monotonic() < deadline and not self.hard_stop:
                self.collect(0.5)
        cancelled = list(self.inflight.values())
        if cancelled:
            log.info("cancelling %d unfinished tasks (they will be redone by the next run)", len(cancelled))
            try:
                self.client.cancel([w.future for w in cancelled])
            except Exception as exc:
                log.warning("cancelling tasks: %s", exc)
            rows = [self.rows[(w.image_id, w.step)] for w in cancelled if (w.image_id, w.step) in self.rows]
            self.inflight.clear()
            if rows and self.s.commit:
                self._safe_db(ls.store_loop_exposures_status, rows, QUEUED)
        if self.client is not None:
            stop_cluster(self.cluster, self.client)
        final = "E" if error is not None and not isinstance(error, KeyboardInterrupt) else "D"
        if self.s.commit and self.looprun_id:
            self._safe_db(ls.store_loop_run_fields, self.looprun_id, status=final, heartbeat=time.time())
            for job_id in self.job_ids:
                self._safe_db(st.store_job_status, job_id, final)
        self.summary.db_outages = self.db.outages

    def _safe_db(self, fn, *args, **kwargs):
        try:
            return self.db(fn, *args, what="finishing the run", **kwargs)
        except Exception as exc:  # the run is ending anyway; say what could not be recorded
            log.warning("could not record the end of the run: %s", one_line(exc))

    def request_stop(self, signum=None, frame=None) -> None:
        if self.stop_requested:
            self.hard_stop = True
            log.warning("second signal: stopping now")
            return
        self.stop_requested = True
        name = signal.Signals(signum).name if signum else "stop"
        log.warning("%s received: no new submissions; finishing %d tasks in flight (grace %.0f s)", name,
                    len(self.inflight), self.s.grace_s)


def run_loop(settings: LoopSettings, install_signals: bool = True) -> LoopSummary:
    """Run a loop to its end (caught up with --no-wait, SessionDoneLog, --limit, or SIGTERM/SIGINT)."""
    loop = Loop(settings)
    previous = {}
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, loop.request_stop)
            except ValueError:  # not the main thread
                break
    try:
        summary = loop.run()
        summary.stopped_by_signal = loop.stop_requested
        return summary
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
