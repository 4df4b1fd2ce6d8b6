"""The near-realtime loop: run the registered steps over every new exposure of a session on Dask.

Shape of the loop (one process, the only database writer):

    poll new exposures (DEF_id high-water mark) → filter done / rejected / failed / tilt
      → per exposure, per step: the step's condition (its upstream steps completed) decides:
        run (queue it), cancel (record why) or wait
      → submit while fewer than --max-in-flight tasks are out
      → as tasks finish: the step stores its rows (idempotent), the future is released, the
        exposure's conditions are evaluated again
      → errors: transient ones (OSError such as a full disk, a movie still being written, a lost worker,
        database errors, crashes of external programs) are retried after a back-off (--retries times);
        deterministic ones (bad input: ValueError, MovieError, missing physics) fail permanently at once;
        either way the reason names the file and the dependents are cancelled with it.
      → one loop per run: the run's ApLoopRunData row (R + host + pid + heartbeat) is taken atomically
        at set-up (appion.loop.runsetup); a live holder refuses the start, a dead one is taken over.

The loop knows no step by name: steps come from appion.base.steps (one registry).  A step run's
memo key (its parameters, engine and program version, appion version, the upstream steps' keys)
decides whether an earlier loop run of the session already holds its results: then those are
reused (not copied) and only the steps whose key changed are computed.  Task keys are
deterministic (step, exposure id, memo key, attempt).  Every store is idempotent, so a restart
after SIGKILL stores nothing twice and skips nothing.  Database outages are waited out, except once the
grace after SIGTERM has run out, or when the database never answered since the start (--db-start-wait).
"""
from __future__ import annotations

import heapq
import logging
import signal
import time
from pathlib import Path
from typing import Any

from distributed import wait

from appion.base.db import current_config
from appion.base.db import models as m
from appion.base.db.models.loop import DONE, FAILED, QUEUED, RETRY, RUNNING
from appion.base.names import check_name
from appion.base.session import retrieve as r
from appion.base.session import store as st
from appion.base.steps import Step, StepInput, StepRun, calc_step_order, calc_upstream, load_steps
from appion.loop import store as ls
from appion.loop.calc import (DETERMINISTIC, LoopError, calc_backoff_s, calc_error_kind,
                              calc_reason_naming_file, calc_task_key, calc_tilt_skip, one_line)
from appion.loop.cluster import (ClusterSettings, check_cluster_commands, describe_dashboard, start_cluster,
                                 stop_cluster)
from appion.loop.db import DatabaseRetry, db_errors, retrieve_exposure_inputs, retrieve_exposure_rows
from appion.loop.records import LoopSettings, LoopSummary, Work, user_errors  # noqa: F401 (the loop's API)
from appion.loop.alerts import LoopAlerts
from appion.loop.runsetup import RunSetup
from appion.loop.tasks import TaskSpec, run_step_task, start_warm_up, warm_up_plugin
from appion.workflow.calc import CANCELLED, COMPLETED, WAITING, AllOf, Is, calc_decision
from appion.workflow.calc import FAILED as WF_FAILED
from appion.workflow.calc import RUNNING as WF_RUNNING

log = logging.getLogger("appion.loop")

TILT_CHOICES = ("all", "notilt", "hightilt", "lowtilt", "minustilt", "plustilt")
TERMINAL = (COMPLETED, WF_FAILED, CANCELLED)



class Loop(RunSetup, LoopAlerts):
    """One loop run over one session.  State is real here: queues, in-flight futures, attempts."""

    def __init__(self, settings: LoopSettings):
        self.s = settings
        check_name("--runname", settings.runname)  # it becomes a directory name
        self.cluster_settings = settings.cluster or ClusterSettings()
        if self.cluster_settings.kind != "local":  # a missing qsub/sbatch/bsub fails now, not after a silent wait
            check_cluster_commands(self.cluster_settings.kind)
        self.stop_requested = self.hard_stop = False
        self.stop_deadline: float | None = None
        self.db = DatabaseRetry(should_give_up=self._should_give_up_db, start_wait_s=settings.db_start_wait_s)
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
        self.reread: set[int] = set()  # exposures whose inputs are read again before their retry
        self.session = None
        self.stuck_job_clusters: set[str] = set()  # cluster kinds of earlier starts that died while running
        self.heartbeat = None  # the thread writing the run's heartbeat (appion.loop.runlock.Heartbeat)

    def _should_give_up_db(self) -> bool:
        """Database outages are waited out, except after a second signal, once the grace after a stop request
        has run out, or on a stop request before the database ever answered (nothing to finish then)."""
        if self.hard_stop:
            return True
        if not self.stop_requested:
            return False
        return not self.db.answered or time.monotonic() >= (self.stop_deadline or 0.0)

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
        inputs, problems = retrieve_exposure_inputs(self.session, rows) if rows else ({}, {})
        if self.s.tilt != "all":
            inputs = {i: x for i, x in inputs.items() if not calc_tilt_skip(x.tilt_deg, self.s.tilt)}
        ids = sorted(inputs)
        states, outputs, existing, requeue = self._read_progress(ids, inputs) if ids else ({}, {}, {}, [])
        if requeue and self.s.commit:  # --retry-failed: permanent failures of earlier starts are tried again
            ls.store_loop_exposures_status(requeue, QUEUED, attempts=0, last_error=None, finished=None,
                                           retry_after=None)
        unprocessable = self._store_unprocessable(problems) if problems else {}
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
            self.attempts[key] = 0 if row_id in requeue else attempts
        self.rows.update(created)
        self.high_water = high_water
        for (image_id, step), reason in unprocessable.items():
            self.summary.failed[(image_id, step)] = reason
            if not self.upstream[step]:
                log.error("exposure %s %s cannot be processed: %s", image_id, step, reason)
        for image_id in chosen:
            self.accepted += 1
            self.alerts_arrived(inputs[image_id].arrived)
            self.inputs[image_id] = inputs[image_id]
            self.states[image_id] = states[image_id]
            self.outputs.update({(image_id, n): outputs[(image_id, n)] for n in self.order
                                 if (image_id, n) in outputs})
            self._advance(image_id)
        if chosen:
            self.last_arrival = time.monotonic()
        return len(chosen)

    def _store_unprocessable(self, problems: dict[int, str]) -> dict[tuple[int, str], str]:
        """Exposures whose inputs are unusable (e.g. no pixel size recorded): each step's row is a permanent
        failure with the reason (its first steps) or `not run: ... failed` (the steps after), without a task.
        Exposures already failed in an earlier start are left as they are (unless --retry-failed)."""
        existing = ls.retrieve_loop_exposures(self.looprun_id, sorted(problems)) if self.looprun_id is not None else {}
        out = {}
        for image_id, why in problems.items():
            if (not self.s.retry_failed and self.s.continue_run
                    and all(existing.get((image_id, n), (0, "", 0))[1] == FAILED for n in self.order)):
                continue
            for n in self.order:
                out[(image_id, n)] = why if not self.upstream[n] else f"not run: {', '.join(self.upstream[n])} failed"
        if self.s.commit and out:
            now = time.time()
            new = [(i, n, now) for i, n in out if (i, n) not in existing]
            ids = {**{k: v[0] for k, v in existing.items()}, **(ls.store_loop_exposures(self.looprun_id, new)
                                                               if new else {})}
            for key, reason in out.items():
                if key in ids:
                    ls.store_loop_exposure_fields(ids[key], status=FAILED, attempts=0, last_error=reason[:500],
                                                  finished=now)
        return out

    def _in_id_range(self, image_id: int) -> bool:
        if self.s.start_image_id is not None and image_id < self.s.start_image_id:
            return False
        if self.s.end_image_id is not None and image_id > self.s.end_image_id:
            return False
        return self.s.image_ids is None or image_id in self.s.image_ids

    def _read_progress(self, ids: list[int], inputs: dict):
        """Per exposure and step: COMPLETED (stored by this step run), FAILED (permanently, earlier) or WAITING;
        with --retry-failed an earlier permanent failure is WAITING and its row is listed to be queued again."""
        existing = ls.retrieve_loop_exposures(self.looprun_id, ids) if self.looprun_id is not None else {}
        outputs: dict[tuple[int, str], Any] = {}
        if self.s.continue_run:
            for n in self.order:
                run = self.step_runs[n]
                if self.storing[n] and run.run_id is not None:
                    for image_id, out in self.defs[n].done(run, ids, inputs).items():
                        outputs[(image_id, n)] = out
        states, requeue = {}, []
        for image_id in ids:
            states[image_id] = {}
            for n in self.order:
                row_id, status, _ = existing.get((image_id, n), (0, "", 0))
                if (image_id, n) in outputs:
                    states[image_id][n] = COMPLETED
                elif self.s.continue_run and status == FAILED and not self.s.retry_failed:
                    states[image_id][n] = WF_FAILED
                    self.summary.failed[(image_id, n)] = "permanently failed in an earlier run"
                else:
                    states[image_id][n] = WAITING
                    if status == FAILED:
                        requeue.append(row_id)
        return states, outputs, existing, requeue

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
        self.alerts_exposure_finished(states)
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
        else:  # one line for every exposure: why this one ended without every step done
            why = next((self.reasons.get((image_id, n)) for n in self.order
                        if states[n] != COMPLETED and self.reasons.get((image_id, n))), "not done")
            log.info("%s: %s", inp.filename, why)
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

    def _reread_input(self, image_id: int) -> str | None:
        """Read an exposure's inputs again before retrying it; returns why it cannot be processed, if so."""
        inputs, problems = retrieve_exposure_inputs(self.session, retrieve_exposure_rows(self.session.id, [image_id]))
        if image_id in inputs:
            self.inputs[image_id] = inputs[image_id]
        return problems.get(image_id)

    def submit_ready(self) -> int:
        now = time.time()
        while self.retry_heap and self.retry_heap[0][0] <= now:
            _, _, image_id, step = heapq.heappop(self.retry_heap)
            if image_id in self.reread:  # its registration may have changed meanwhile (frames, optics)
                self.reread.discard(image_id)
                problem = self.db(self._reread_input, image_id, what="reading an exposure again")
                if problem:
                    self._failed(image_id, step, problem, DETERMINISTIC)
                    continue
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
                raise  # only when giving up on a dead database after a stop request
            except Exception as exc:  # storing failed for a reason of this exposure (bad data)
                self._failed(work.image_id, work.step, f"storing the result: {one_line(exc)}", calc_error_kind(exc))
                return
        if status in ("cancelled", "lost"):
            self._failed(work.image_id, work.step, f"task {status} (its worker went away)", calc_error_kind(None))
            return
        exc = work.future.exception()
        self._failed(work.image_id, work.step, one_line(exc), calc_error_kind(exc))

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

    def _failed(self, image_id: int, step: str, reason: str, kind: str) -> None:
        """A failed attempt: a transient one is retried after a back-off (at most --retries times), a
        deterministic one (bad input) fails permanently at once; the reason names the exposure's file."""
        key = (image_id, step)
        attempts = self.attempts.get(key, 0) + 1
        self.attempts[key] = attempts
        row = self.rows.get(key)
        inp = self.inputs[image_id]
        name = inp.filename
        reason = calc_reason_naming_file(reason, name, inp.movie_path)
        if kind != DETERMINISTIC and attempts <= self.s.retries:
            delay = calc_backoff_s(self.s.backoff_s, attempts)
            log.warning("%s %s attempt %d failed: %s; retrying in %.0f s", name, step, attempts, reason, delay)
            self.seq += 1
            heapq.heappush(self.retry_heap, (time.time() + delay, self.seq, image_id, step))
            self.reread.add(image_id)
            if row is not None and self.s.commit:
                self.db(ls.store_loop_exposure_fields, row, status=RETRY, attempts=attempts, last_error=reason,
                        retry_after=time.time() + delay, what="recording a failed attempt")
            return
        if kind == DETERMINISTIC:
            log.error("%s %s failed (bad input: not retried): %s", name, step, reason)
        else:
            log.error("%s %s permanently failed after %d attempts: %s", name, step, attempts, reason)
        self.summary.failed[key] = reason
        self.alerts_failed(image_id, name, step, reason)
        self.reasons[key] = reason
        if row is not None and self.s.commit:
            self.db(ls.store_loop_exposure_fields, row, status=FAILED, attempts=attempts, last_error=reason,
                    finished=time.time(), what="recording a permanent failure")
        self.states[image_id][step] = WF_FAILED
        self._advance(image_id)  # dependents are cancelled, with this reason

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
        error = None
        ended_by_itself = False  # caught up (--no-wait), the session done or --limit: not a signal
        try:
            self.alerts_start()  # a misconfigured [notify] stops the run before anything is registered
            self.setup()  # inside: a failure after the run is registered (a full disk ...) marks it E
            self._publish_services()
            self.cluster, self.client, self.task_slots = start_cluster(self.cluster_settings)
            try:
                modules = tuple(mod for n in self.order for mod in (self.defs[n].task_for(self.engines[n].name).module,
                                                                   *self.engines[n].modules))
                warm_ups = tuple(self.engines[n].warm_up for n in self.order)
                start_warm_up(self.client, warm_up_plugin(modules, warm_ups))
            except Exception as exc:  # only an optimisation
                log.warning("could not warm up the workers: %s", one_line(exc))
            dashboard = describe_dashboard(self.client)
            print(f"appion loop: session {self.s.session}, run {self.s.runname}, steps {'+'.join(self.order)} on "
                  f"{self.cluster_settings.kind} ({self.task_slots} task slots); dashboard: {dashboard}", flush=True)
            if self.s.commit and self.looprun_id:  # the web viewer links it from the session page
                self.db(ls.store_loop_run_fields, self.looprun_id, dashboard=dashboard,
                        what="recording the dashboard address")
            next_poll = 0.0
            while not self.stop_requested:
                now = time.monotonic()
                if now >= next_poll:
                    self.db(self.poll, what="polling for new exposures")
                    if not self.session_done:
                        self.session_done = self.db(r.retrieve_session_done, self.session.id,
                                                    what="checking whether the session is done")
                    self.alerts_poll()
                    next_poll = now + self.s.poll_s
                self.submit_ready()
                if self.should_exit():
                    ended_by_itself = True
                    break
                self.collect(min(0.5, self.s.poll_s))
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.shutdown(error)
            self.alerts_finish(error is None and ended_by_itself)
        return self.summary

    def shutdown(self, error: BaseException | None) -> None:
        if self.inflight and error is None:
            deadline = (self.stop_deadline if self.stop_deadline is not None
                        else time.monotonic() + (0 if self.hard_stop else self.s.grace_s))
            log.info("stopping: waiting up to %.0f s for %d tasks in flight", max(0, deadline - time.monotonic()),
                     len(self.inflight))
            try:
                while self.inflight and time.monotonic() < deadline and not self.hard_stop:
                    self.collect(0.5)
            except db_errors() as exc:  # the database went away and the grace ran out: the rest is redone later
                error = exc
                log.error("stopping without storing the last results: %s", one_line(exc))
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
        if self.session is not None and (self.looprun_id is not None or not self.s.commit):
            try:  # our workers are gone: their temporaries in our own run directories are leftovers
                self._clean_leftovers(self._own_margin_at_end_s())
            except Exception as exc:
                log.warning("could not clean temporaries: %s", one_line(exc))
        if self.heartbeat is not None:
            self.heartbeat.stop()
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
        self.stop_deadline = time.monotonic() + self.s.grace_s
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
