"""The near-realtime loop: motion-correct and CTF-estimate every new exposure of a session on Dask.

Shape of the loop (one process, the only database writer):

    poll new exposures (DEF_id high-water mark) → filter done / rejected / failed / tilt
      → queue (newest or oldest first) → submit while fewer than --max-in-flight tasks are out
      → as tasks finish: store their rows (pair/result row last), release the future,
        submit the exposure's next step (CTF runs on the aligned dose-weighted sum)
      → errors: record attempt + error, retry after a back-off, then mark permanently failed.

Workers only read movies and write files into the run directories; they return small records
(`MotionRecord`, `CtfRecord`).  Task keys are deterministic (step, exposure id, parameter hash,
attempt), so resubmitting the same work never duplicates it on the cluster.  Every store is
idempotent (the pair/result row is checked inside the transaction that would insert it), so a
restart after SIGKILL stores nothing twice and skips nothing.  Database outages are waited out
(connection closed, back-off, retry).

Modules: this one is the loop process (scheduling, storing, signals, command line); the worker side
is `looptasks`, pure helpers `loopcalc`, database outage handling and exposure reads `loopdb`,
`appion status` and the demo table `loopstatus`.
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distributed import wait

from appion.base.session import retrieve as r
from appion.base.session import store as st
from appion.loop.cluster import ClusterSettings, describe_dashboard, start_cluster, stop_cluster
from appion.base.db import current_config, use_appion_database
from appion.base.db import models as m
from appion.base.db.models.loop import DONE, FAILED, QUEUED, RETRY, RUNNING
from appion.base.io.files import write_text_atomic
from appion.loop.calc import (LoopError, calc_align_stats_fields, calc_backoff_s, calc_params_hash,
                                  calc_percentile, calc_task_key, calc_tilt_skip, calc_total_drift_px,
                                  calc_trajectory_fields, one_line)
from appion.loop.db import DatabaseRetry, db_errors, retrieve_exposure_inputs
from appion.loop.status import calc_demo_table, cmd_status
from appion.loop.tasks import (CTF_ENGINES, MOTION_ENGINES, CtfInput, CtfRecord, CtfSettings, ExposureInput,
                                   MotionRecord, MotionSettings, calc_ctf_input, task_ctf, task_motion,
                                   warm_up_plugin)
from appion.base.session.retrieve import retrieve_images_by_filename
from appion.base.session.store import RunConflict
from appion.ctfestimation import store as cstore
from appion.ctfestimation.calc.result import CtfResult
from appion.ctfestimation.retrieve import retrieve_ctf_done
from appion.motioncorrection import store as mstore
from appion.motioncorrection.retrieve import retrieve_motion_done

log = logging.getLogger("appion.loop")

STEPS = ("motion", "ctf")
TILT_CHOICES = ("all", "notilt", "hightilt", "lowtilt", "minustilt", "plustilt")


# ====================================================================== settings
@dataclass(frozen=True)
class LoopSettings:
    """One loop run: which session and steps, how to schedule and retry, the engines' settings, where to run."""

    session: str
    preset: str | None = None
    steps: tuple[str, ...] = STEPS
    runname: str = "loop1"
    wait: bool = True
    idle_s: float = 10.0
    poll_s: float = 2.0
    retries: int = 2
    backoff_s: float = 10.0
    grace_s: float = 120.0
    order: str = "oldest"
    max_in_flight: int | None = None
    limit: int | None = None
    skip_rejected: bool = True
    tilt: str = "all"
    commit: bool = True
    continue_run: bool = True
    motion: MotionSettings = field(default_factory=MotionSettings)
    ctf: CtfSettings = field(default_factory=CtfSettings)
    cluster: object = None  # ClusterSettings (None: local defaults)
    motion_rundir: str | None = None
    ctf_rundir: str | None = None
    program: str = "appion loop"
    jobtype: str = "appionloop"
    script_params: tuple[tuple[str, str, str], ...] = ()
    project_id: int | None = None
    start_image_id: int | None = None
    end_image_id: int | None = None
    image_ids: tuple[int, ...] | None = None  # only these (classic --mrclist)


# ====================================================================== errors
def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are a person's to fix (no such session, run name clash): printed as one line."""
    return (LoopError, RunConflict)


# ====================================================================== the loop
@dataclass
class Work:
    image_id: int
    step: str
    attempt: int
    key: str
    submitted: float
    future: object


@dataclass
class LoopSummary:
    done: list[int] = field(default_factory=list)  # exposures with every step done (this run)
    failed: dict[tuple[int, str], str] = field(default_factory=dict)
    motion: dict[int, MotionRecord] = field(default_factory=dict)
    ctf: dict[int, CtfRecord] = field(default_factory=dict)
    latency_s: dict[int, float] = field(default_factory=dict)
    stopped_by_signal: bool = False
    db_outages: int = 0


class Loop:
    """One loop run over one session.  State is real here: queues, in-flight futures, attempts."""

    def __init__(self, settings: LoopSettings):
        self.s = settings
        self.cluster_settings = settings.cluster or ClusterSettings()
        self.stop_requested = False
        self.hard_stop = False
        self.db = DatabaseRetry(should_give_up=lambda: self.hard_stop)
        self.summary = LoopSummary()
        self.inputs: dict[int, ExposureInput] = {}
        self.ctf_inputs: dict[int, CtfInput] = {}
        self.rows: dict[tuple[int, str], int] = {}
        self.attempts: dict[tuple[int, str], int] = {}
        self.status: dict[tuple[int, str], str] = {}
        self.queue: list = []
        self.retry_heap: list = []
        self.inflight: dict[str, Work] = {}
        self.seq = 0
        self.high_water = 0
        self.accepted = 0
        self.last_arrival = time.monotonic()
        self.session_done = False
        self.motion_hash = calc_params_hash({"motion": settings.motion.hashed()})
        self.ctf_hash = calc_params_hash({"ctf": settings.ctf.hashed(),
                                          "on": self.motion_hash if "motion" in settings.steps else "images"})
        self.hashes = {"motion": self.motion_hash, "ctf": self.ctf_hash}
        self.run_hash = calc_params_hash({"steps": settings.steps, "preset": settings.preset, **self.hashes})
        self.looprun_id = None
        self.ddstackrun_id = None
        self.acerun_id = None
        self.job_ids: list[int] = []
        self.cluster = self.client = None
        self.task_slots = 1
        self.row_cache: dict = {}

    # ------------------------------------------------------------------ set-up
    def _rundir(self, step: str) -> Path:
        given = self.s.motion_rundir if step == "motion" else self.s.ctf_rundir
        if given:
            return Path(given).resolve()
        kind = "ddstack" if step == "motion" else "ctf"
        return current_config().appion_base / self.s.session / kind / self.s.runname

    def setup(self) -> None:
        unknown = [x for x in self.s.steps if x not in STEPS]
        if unknown or not self.s.steps:
            raise LoopError(f"unknown step(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(STEPS)}")
        self.session = self.db(r.retrieve_session, self.s.session, what="reading the session")
        if self.session is None:
            raise LoopError(f"session {self.s.session!r} not found in the Leginon database "
                            f"(import one with `appion session import --name {self.s.session} ...`)")
        self.db(use_appion_database, self.s.project_id, what="choosing the appion database")
        self.rundirs = {step: self._rundir(step) for step in self.s.steps}
        for d in self.rundirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.preset_ids = (self.db(r.retrieve_preset_ids, self.session.id, self.s.preset, what="reading presets")
                           if self.s.preset else None)
        if self.s.commit:
            self.db(self._store_runs, what="registering the run")
        self._write_params_file()

    def _first_preset_id(self):
        return self.preset_ids[0] if self.preset_ids else None

    def _store_runs(self) -> None:
        cs_mm = 2.7
        tem = m.InstrumentData.objects.filter(cs__isnull=False).order_by("-id").first()
        if tem is not None:
            cs_mm = tem.cs * 1e3
        if "motion" in self.s.steps:
            method = {"builtin": "appion", "noop": "noop"}.get(self.s.motion.engine, self.s.motion.engine)
            run = mstore.store_ddstack_run(self.session.id, self._first_preset_id(), self.s.runname,
                                           self.rundirs["motion"], self.s.motion.bin, method)
            self.ddstackrun_id = run.id
        if "ctf" in self.s.steps:
            c = self.s.ctf
            run = cstore.store_ace_run(self.session.id, self.s.runname, self.rundirs["ctf"], cs_mm=cs_mm,
                                       amplitude_contrast=c.amplitude_contrast, fieldsize=c.fieldsize,
                                       resmin_A=c.resmin_A, defstep_m=(c.defstep_um or 0.0) * 1e-6, bestdb=c.bestdb,
                                       phase_plate=c.phase_plate, min_phase_shift_deg=c.min_phase_shift_deg,
                                       max_phase_shift_deg=c.max_phase_shift_deg,
                                       phase_search_step_deg=c.phase_search_step_deg)
            self.acerun_id = run.id
        params_json = json.dumps({"steps": list(self.s.steps), "preset": self.s.preset,
                                  "motion": self.s.motion.hashed(), "ctf": self.s.ctf.hashed()}, default=str)
        first_dir = self.rundirs[self.s.steps[0]]
        looprun = st.store_loop_run(self.s.runname, self.session.id, ",".join(self.s.steps), self.run_hash,
                                    params_json, first_dir, self.ddstackrun_id, self.acerun_id, os.getpid(),
                                    time.time())
        self.looprun_id = looprun.id
        for step in self.s.steps:
            job = st.store_appion_job(f"{self.s.runname}.appionsub.job", self.rundirs[step], self.s.jobtype,
                                      self.session.id, status="R", cluster=self.cluster_settings.kind)
            self.job_ids.append(job.id)
            st.store_program_run(self.s.program, self.s.runname, self.rundirs[step], job.id, self.session.id,
                                 list(self.s.script_params))

    def _write_params_file(self) -> None:
        text = json.dumps({"session": self.s.session, "runname": self.s.runname, "steps": list(self.s.steps),
                           "motion": dataclasses.asdict(self.s.motion), "ctf": dataclasses.asdict(self.s.ctf),
                           "hash": self.run_hash}, indent=1, default=str)
        for d in self.rundirs.values():
            write_text_atomic(d / f"{self.s.runname}.loop-params.json", text)

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
        if "motion" in self.s.steps and rows:
            cams = r._by_id(m.CameraEMData, (row["camera_id"] for row in rows))
            rows = [row for row in rows if not (cams.get(row["camera_id"]) and cams[row["camera_id"]].align_frames)]
        if self.s.skip_rejected and rows:
            rejected = r.retrieve_rejected_image_ids([row["id"] for row in rows])
            rows = [row for row in rows if row["id"] not in rejected]
        inputs = retrieve_exposure_inputs(self.session, rows) if rows else {}
        if self.s.tilt != "all":
            inputs = {i: x for i, x in inputs.items() if not calc_tilt_skip(x.tilt_deg, self.s.tilt)}
        ids = sorted(inputs)
        todo = self._steps_to_do(ids, inputs) if ids else {}
        chosen = [i for i in ids if todo.get(i)]
        if self.s.order == "newest":
            chosen.reverse()  # --limit with newest first keeps the newest
        if self.s.limit is not None:
            chosen = chosen[:max(0, self.s.limit - self.accepted)]
        new_rows = [(i, step, inputs[i].arrived) for i in chosen for step in todo[i] if (i, step) not in self.rows]
        if new_rows and self.s.commit:
            self.rows.update(self._store_new_rows(new_rows))
        self.high_water = high_water
        for image_id in chosen:
            self.accepted += 1
            self.inputs[image_id] = inputs[image_id]
            self._enqueue(image_id, todo[image_id][0])
        if chosen:
            self.last_arrival = time.monotonic()
        return len(chosen)

    def _in_id_range(self, image_id: int) -> bool:
        if self.s.start_image_id is not None and image_id < self.s.start_image_id:
            return False
        if self.s.end_image_id is not None and image_id > self.s.end_image_id:
            return False
        return self.s.image_ids is None or image_id in self.s.image_ids

    def _store_new_rows(self, items):
        return st.store_loop_exposures(self.looprun_id, items)

    def _steps_to_do(self, ids: list[int], inputs: dict[int, ExposureInput]) -> dict[int, list[str]]:
        """Per exposure, the steps still to do in order (none when done or permanently failed)."""

        existing = {}
        if self.looprun_id is not None:
            for row_id, image_id, step, status, attempts in (
                    m.ApLoopExposureData.objects.filter(looprun_id=self.looprun_id, image_id__in=ids)
                    .values_list("id", "image_id", "step", "status", "attempts")):
                existing[(image_id, step)] = (row_id, status, attempts or 0)
        for key, (row_id, status, attempts) in existing.items():
            self.rows[key] = row_id
            self.attempts[key] = attempts
        motion_done: dict[int, int] = {}
        ctf_done: set[int] = set()
        use_db = self.s.commit and self.s.continue_run
        if "motion" in self.s.steps and use_db and self.ddstackrun_id:
            motion_done = retrieve_motion_done(self.ddstackrun_id, ids)
            if motion_done and "ctf" in self.s.steps:
                self._restore_ctf_inputs(motion_done, inputs)
        if "ctf" in self.s.steps and use_db and self.acerun_id:
            if "motion" in self.s.steps:
                targets = {self.ctf_inputs[i].image_id: i for i in motion_done if i in self.ctf_inputs}
                ctf_done = {targets[t] for t in retrieve_ctf_done(self.acerun_id, list(targets))}
            else:
                ctf_done = retrieve_ctf_done(self.acerun_id, ids)
        out = {}
        for image_id in ids:
            steps = []
            for step in self.s.steps:
                done = (step == "motion" and image_id in motion_done) or (step == "ctf" and image_id in ctf_done)
                failed = self.s.continue_run and existing.get((image_id, step), (0, "", 0))[1] == FAILED
                if failed:
                    self.summary.failed[(image_id, step)] = "permanently failed in an earlier run"
                    steps = []
                    break
                if not done:
                    steps.append(step)
            if steps:
                out[image_id] = steps
        return out

    def _restore_ctf_inputs(self, motion_done: dict[int, int], inputs: dict[int, ExposureInput]) -> None:
        """CTF inputs of exposures whose motion correction an earlier run already stored."""

        results = dict(m.AcquisitionImageData.objects.filter(id__in=list(motion_done.values()))
                       .values_list("id", "filename"))
        wanted = {}
        for source, result in motion_done.items():
            name = results.get(result)
            if name is None:
                continue
            wanted[source] = f"{name}-DW" if self.s.motion.doseweight else name

        found = retrieve_images_by_filename(self.session.id, list(wanted.values()))
        for source, name in wanted.items():
            if name in found and source in inputs:
                inp = inputs[source]
                self.ctf_inputs[source] = calc_ctf_input(inp, found[name], name, inp.pixel_size_A * self.s.motion.bin)

    def _ctf_input_for_image(self, inp: ExposureInput) -> CtfInput:
        """CTF-only runs: the exposure's own MRC in the session's image directory."""
        return calc_ctf_input(inp, inp.image_id, inp.filename, inp.pixel_size_A)

    def _enqueue(self, image_id: int, step: str) -> None:
        rank = -self.s.steps.index(step)  # later steps first: finish exposures already started
        order = -image_id if self.s.order == "newest" else image_id
        self.seq += 1
        heapq.heappush(self.queue, (rank, order, self.seq, image_id, step))
        self.status[(image_id, step)] = QUEUED

    # ------------------------------------------------------------------ submitting
    def max_in_flight(self) -> int:
        return self.s.max_in_flight or max(2, 2 * self.task_slots)

    def submit_ready(self) -> int:
        now = time.time()
        while self.retry_heap and self.retry_heap[0][0] <= now:
            _, _, image_id, step = heapq.heappop(self.retry_heap)
            self._enqueue(image_id, step)
        submitted = []
        while self.queue and len(self.inflight) < self.max_in_flight():
            _, _, _, image_id, step = heapq.heappop(self.queue)
            attempt = self.attempts.get((image_id, step), 0) + 1
            key = calc_task_key(step, image_id, self.hashes[step], attempt)
            if key in self.inflight:
                continue
            future = self._submit(image_id, step, key)
            self.inflight[key] = Work(image_id, step, attempt, key, time.time(), future)
            self.status[(image_id, step)] = RUNNING
            row = self.rows.get((image_id, step))
            if row is not None:
                submitted.append(row)
        if submitted and self.s.commit:
            self.db(st.store_loop_exposures_status, submitted, RUNNING, submitted=now, what="marking submissions")
        return len(submitted)

    def _submit(self, image_id: int, step: str, key: str):
        resources = None
        if step == "motion":
            if self.s.motion.engine in ("motioncor2", "motioncor3") and self.cluster_settings.gpus:
                resources = {"GPU": 1}
            return self.client.submit(task_motion, self.inputs[image_id], self.s.motion, str(self.rundirs["motion"]),
                                      key=key, resources=resources, retries=0)
        ctf_input = self.ctf_inputs.get(image_id) or self._ctf_input_for_image(self.inputs[image_id])
        return self.client.submit(task_ctf, ctf_input, self.s.ctf, str(self.rundirs["ctf"]), key=key, retries=0)

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
                record = work.future.result()
                if work.step == "motion":
                    self._store_motion(work, record)
                else:
                    self._store_ctf(work, record)
                return
            except db_errors():
                raise  # only when giving up on a dead database during a hard stop
            except Exception as exc:  # storing failed for a reason of this exposure (bad data)
                self._failed(work, f"storing the result: {one_line(exc)}")
                return
        if status in ("cancelled", "lost"):
            self._failed(work, f"task {status} (its worker went away)")
            return
        exc = work.future.exception()
        self._failed(work, one_line(exc))

    def _mark_done(self, key: tuple[int, str], now: float, seconds: float, worker: str):
        """The loop's own bookkeeping, run inside the transaction that writes the result rows."""
        row = self.rows.get(key)
        if row is None:
            return None

        def mark():
            st.store_loop_exposure_fields(row, status=DONE, finished=now, seconds=seconds, worker=worker)
        return mark

    def _store_motion(self, work: Work, record: MotionRecord) -> None:
        inp = self.inputs[work.image_id]
        now = time.time()
        result_id = dw_id = None
        if self.s.commit:
            result_id, dw_id = self.db(mstore.store_aligned_images, work.image_id, record.sum_filename,
                                       record.dw_filename, record.out_shape_yx, record.bin, self.s.motion.alignlabel,
                                       self.row_cache, what="registering aligned images")
            self.db(mstore.store_motion_rows, self.ddstackrun_id, work.image_id, result_id,
                    calc_trajectory_fields(record.log_positions),
                    calc_align_stats_fields(record.log_positions, record.out_pixel_size_A),
                    inside=self._mark_done((work.image_id, "motion"), now, record.seconds, record.worker),
                    what="storing motion results")
        self.summary.motion[work.image_id] = record
        self.status[(work.image_id, "motion")] = "done"
        ctf_name = record.dw_filename or record.sum_filename
        self.ctf_inputs[work.image_id] = calc_ctf_input(inp, dw_id or result_id, ctf_name, record.out_pixel_size_A)
        log.debug("%s motion %.2f s on %s", inp.filename, record.seconds, record.worker)
        self._advance(work, now)

    def _store_ctf(self, work: Work, record: CtfRecord) -> None:
        inp = self.inputs[work.image_id]
        now = time.time()
        if self.s.commit:
            image_id = record.image_id or self.ctf_inputs[work.image_id].image_id
            result = CtfResult(defocus1_A=record.defocus1_A, defocus2_A=record.defocus2_A,
                               astig_angle_deg=record.astig_angle_deg, phase_shift_rad=record.phase_shift_rad,
                               cross_correlation=record.cross_correlation, fit_resolution_A=record.fit_resolution_A,
                               confidence_30_10=record.confidence_30_10, confidence_5_peak=record.confidence_5_peak,
                               resolution_80_percent_A=record.resolution_80_percent_A,
                               resolution_50_percent_A=record.resolution_50_percent_A)
            defocus_init_m = (self.s.ctf.nominal_defocus_um * 1e-6 if self.s.ctf.nominal_defocus_um
                              else inp.nominal_defocus_m)
            self.db(cstore.store_ctf_rows, self.acerun_id, image_id, result, cs_mm=inp.cs_mm,
                    amplitude_contrast=self.s.ctf.amplitude_contrast, defocus_init_m=defocus_init_m,
                    graphs=record.graphs,
                    inside=self._mark_done((work.image_id, "ctf"), now, record.seconds, record.worker),
                    what="storing CTF results")
        self.summary.ctf[work.image_id] = record
        self.status[(work.image_id, "ctf")] = "done"
        self._advance(work, now)

    def _advance(self, work: Work, now: float) -> None:
        steps = self.s.steps
        i = steps.index(work.step)
        if i + 1 < len(steps):
            self._enqueue(work.image_id, steps[i + 1])
            return
        inp = self.inputs[work.image_id]
        latency = now - inp.arrived
        self.summary.done.append(work.image_id)
        self.summary.latency_s[work.image_id] = latency
        log.info("%s", self._exposure_line(inp, latency))

    def _exposure_line(self, inp: ExposureInput, latency: float) -> str:
        parts = [f"{inp.filename}:"]
        mrec = self.summary.motion.get(inp.image_id)
        crec = self.summary.ctf.get(inp.image_id)
        if mrec:
            parts.append(f"motion {mrec.seconds:.1f} s (drift {calc_total_drift_px(mrec.shifts_px):.1f} px)")
        if crec:
            parts.append(f"ctf {crec.seconds:.1f} s (defocus {crec.defocus1_A / 1e4:.3f}/{crec.defocus2_A / 1e4:.3f} µm,"
                         f" fit to {crec.fit_resolution_A:.1f} Å)")
        parts.append(f"latency {latency:.1f} s")
        return " ".join(parts)

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
            self.status[key] = RETRY
            if row is not None and self.s.commit:
                self.db(st.store_loop_exposure_fields, row, status=RETRY, attempts=attempts, last_error=reason,
                        retry_after=time.time() + delay, what="recording a failed attempt")
            return
        log.error("%s %s permanently failed after %d attempts: %s", name, work.step, attempts, reason)
        self.status[key] = FAILED
        self.summary.failed[key] = reason
        later = self.s.steps[self.s.steps.index(work.step) + 1:]
        if self.s.commit:
            if row is not None:
                self.db(st.store_loop_exposure_fields, row, status=FAILED, attempts=attempts, last_error=reason,
                        finished=time.time(), what="recording a permanent failure")
            for step in later:  # never run: say why rather than leave them queued forever
                if (work.image_id, step) in self.rows:
                    self.db(st.store_loop_exposure_fields, self.rows[(work.image_id, step)], status=FAILED,
                            last_error=f"not run: {work.step} failed", finished=time.time(),
                            what="recording a skipped step")

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

    def run(self) -> LoopSummary:
        self.setup()
        error = None
        try:
            self.cluster, self.client, self.task_slots = start_cluster(self.cluster_settings)
            try:
                self.client.register_plugin(warm_up_plugin(self.s.steps, self.s.motion.engine, self.s.ctf.engine))
            except Exception as exc:  # only an optimisation
                log.warning("could not warm up the workers: %s", one_line(exc))
            dashboard = describe_dashboard(self.client)
            print(f"appion loop: session {self.s.session}, run {self.s.runname}, steps {'+'.join(self.s.steps)} on "
                  f"{self.cluster_settings.kind} ({self.task_slots} task slots); dashboard: {dashboard}", flush=True)
            if self.s.commit and self.looprun_id:  # the web viewer links it from the session page
                self.db(st.store_loop_run_fields, self.looprun_id, dashboard=dashboard,
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
                    self.db(st.store_loop_run_fields, self.looprun_id, heartbeat=time.time(), what="heartbeat")
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
        cancelled = [w for w in self.inflight.values()]
        if cancelled:
            log.info("cancelling %d unfinished tasks (they will be redone by the next run)", len(cancelled))
            try:
                self.client.cancel([w.future for w in cancelled])
            except Exception as exc:
                log.warning("cancelling tasks: %s", exc)
            rows = [self.rows[(w.image_id, w.step)] for w in cancelled if (w.image_id, w.step) in self.rows]
            self.inflight.clear()
            if rows and self.s.commit:
                self._safe_db(st.store_loop_exposures_status, rows, QUEUED)
        if self.client is not None:
            stop_cluster(self.cluster, self.client)
        final = "E" if error is not None and not isinstance(error, KeyboardInterrupt) else "D"
        if self.s.commit and self.looprun_id:
            self._safe_db(st.store_loop_run_fields, self.looprun_id, status=final, heartbeat=time.time())
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


# ====================================================================== command line
def add_loop_options(p: argparse.ArgumentParser) -> None:
    """Options of `appion loop` and `python loop.py`."""
    p.add_argument("--session", required=True, help="session name (Leginon or imported)")
    p.add_argument("--preset", help="only exposures of this preset (default: every movie of the session)")
    p.add_argument("--steps", default="motion,ctf", help="comma-separated steps in order (motion, ctf)")
    p.add_argument("--runname", default="loop1", help="run name: the same name resumes the run")
    p.add_argument("--cluster", default="local", choices=("local", "slurm", "pbs", "sge", "lsf"))
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="exit once caught up and no exposure arrived for --idle seconds")
    p.add_argument("--idle", type=float, default=10.0, help="seconds without new exposures before --no-wait exits")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between database polls")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed exposure step before giving up")
    p.add_argument("--backoff", type=float, default=10.0, help="seconds before the first retry (doubling)")
    p.add_argument("--grace", type=float, default=120.0, help="seconds in-flight tasks may finish after SIGTERM")
    p.add_argument("--order", choices=("oldest", "newest"), default="oldest")
    p.add_argument("--max-in-flight", type=int, help="tasks submitted at once (default 2 per task slot)")
    p.add_argument("--limit", type=int, help="process at most this many exposures")
    p.add_argument("--tiltangle", default="all", choices=TILT_CHOICES)
    p.add_argument("--include-rejects", dest="skip_rejected", action="store_false",
                   help="also process hidden/trashed/assessment-rejected exposures")
    p.add_argument("--project-id", type=int, help="project whose appion database to use (MySQL)")
    g = p.add_argument_group("motion correction")
    g.add_argument("--engine-motion", default="builtin", choices=MOTION_ENGINES)
    g.add_argument("--motion-exe", help="executable for motioncor2/motioncor3/relion engines")
    g.add_argument("--bin", type=float, default=1.0)
    g.add_argument("--no-doseweight", dest="doseweight", action="store_false")
    g.add_argument("--alignlabel", default="a")
    g.add_argument("--patches", default="0,0", help="local motion patches COLS,ROWS (0,0 = global only)")
    g = p.add_argument_group("CTF estimation")
    g.add_argument("--engine-ctf", default="builtin", choices=CTF_ENGINES)
    g.add_argument("--ctf-exe", help="executable for ctffind4/gctf engines")
    g.add_argument("--ampcontrast", type=float, default=0.07)
    g.add_argument("--fieldsize", type=int, default=512)
    g.add_argument("--resmin", type=float, default=30.0, help="Å")
    g.add_argument("--resmax", type=float, default=5.0, help="Å")
    g.add_argument("--defocus-min", type=float, default=0.5, help="µm")
    g.add_argument("--defocus-max", type=float, default=5.0, help="µm")
    g = p.add_argument_group("cluster (unset values come from the Dask configuration, e.g. jobqueue.yaml)")
    g.add_argument("--threads-per-task", type=int, default=1)
    g.add_argument("--workers", type=int, help="local: worker processes (default cores / threads-per-task)")
    g.add_argument("--minimum", type=int, default=0, help="batch: adapt minimum jobs")
    g.add_argument("--maximum", type=int, help="batch: adapt maximum jobs (default 2)")
    g.add_argument("--cores", type=int)
    g.add_argument("--memory")
    g.add_argument("--queue")
    g.add_argument("--account")
    g.add_argument("--walltime")
    g.add_argument("--lifetime")
    g.add_argument("--lifetime-stagger", default="60s")
    g.add_argument("--gpus", type=int, default=0, help="GPU resource per worker (external GPU engines)")
    g.add_argument("--interface")
    g.add_argument("--log-directory")
    g.add_argument("--dashboard-address", default=":8787")
    p.add_argument("--noop-seconds", type=float, default=0.0, help=argparse.SUPPRESS)


def calc_script_params(args: argparse.Namespace, skip=("func", "command", "config")) -> tuple:
    """(name, value, usage) for every option set, for ScriptParamName/Value rows."""
    out = []
    for name, value in sorted(vars(args).items()):
        if name in skip or value is None or callable(value):
            continue
        flag = "--" + name.replace("_", "-")
        out.append((name, str(value), f"{flag}={value}"))
    return tuple(out)


def settings_from_args(args: argparse.Namespace) -> LoopSettings:
    try:
        cols, rows = (int(x) for x in args.patches.split(","))
    except ValueError:
        raise LoopError(f"--patches {args.patches!r} is not COLS,ROWS") from None
    threads = args.threads_per_task
    motion = MotionSettings(engine=args.engine_motion, bin=args.bin, doseweight=args.doseweight,
                            alignlabel=args.alignlabel, patches=(cols, rows), executable=args.motion_exe,
                            threads=threads, noop_seconds=args.noop_seconds)
    ctf = CtfSettings(engine=args.engine_ctf, amplitude_contrast=args.ampcontrast, fieldsize=args.fieldsize,
                      resmin_A=args.resmin, resmax_A=args.resmax, defocus_min_A=args.defocus_min * 1e4,
                      defocus_max_A=args.defocus_max * 1e4, executable=args.ctf_exe, threads=threads,
                      noop_seconds=args.noop_seconds)
    cluster = ClusterSettings(kind=args.cluster, threads_per_task=threads, workers=args.workers,
                              minimum=args.minimum, maximum=args.maximum, cores=args.cores, memory=args.memory,
                              queue=args.queue, account=args.account, walltime=args.walltime,
                              lifetime=args.lifetime, lifetime_stagger=args.lifetime_stagger, gpus=args.gpus,
                              interface=args.interface, log_directory=args.log_directory,
                              dashboard_address=args.dashboard_address)
    steps = tuple(x.strip() for x in args.steps.split(",") if x.strip())
    return LoopSettings(session=args.session, preset=args.preset, steps=steps, runname=args.runname, wait=args.wait,
                        idle_s=args.idle, poll_s=args.poll, retries=args.retries, backoff_s=args.backoff,
                        grace_s=args.grace, order=args.order, max_in_flight=args.max_in_flight, limit=args.limit,
                        skip_rejected=args.skip_rejected, tilt=args.tiltangle, motion=motion, ctf=ctf,
                        cluster=cluster, script_params=calc_script_params(args), project_id=args.project_id)


def print_summary(summary: LoopSummary) -> None:
    lat = list(summary.latency_s.values())
    text = f"done {len(summary.done)} exposures"
    if lat:
        text += f" (latency p50 {calc_percentile(lat, 50):.1f} s, p95 {calc_percentile(lat, 95):.1f} s)"
    if summary.failed:
        text += f"; {len(summary.failed)} permanently failed"
    if summary.stopped_by_signal:
        text += "; stopped by signal"
    print(text, flush=True)
    for (image_id, step), reason in sorted(summary.failed.items()):
        print(f"  failed: exposure {image_id} {step}: {reason}", flush=True)


def run_and_report(settings: LoopSettings, error_prefix: str) -> int:
    """Run one loop and print its summary (exit 0); a person's error is one line `PREFIX: message` (exit 2)."""
    try:
        summary = run_loop(settings)
    except user_errors() as exc:
        print(f"{error_prefix}: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


def cmd_loop(args) -> int:
    try:
        settings = settings_from_args(args)
    except LoopError as exc:  # e.g. a malformed --patches
        print(f"appion: {exc}", file=sys.stderr)
        return 2
    return run_and_report(settings, "appion")


def add_parser(subparsers) -> None:
    loop = subparsers.add_parser("loop", help="process a session's exposures as they arrive (Dask)")
    add_loop_options(loop)
    loop.set_defaults(func=cmd_loop)
    status = subparsers.add_parser("status", help="what a session's loop runs have done, are doing and failed")
    status.add_argument("session")
    status.add_argument("--runname")
    status.set_defaults(func=cmd_status)


# ====================================================================== demo
def run_demo(session_name: str) -> int:
    """`appion demo`: process the simulated session on this machine and show what the database now holds."""

    settings = LoopSettings(session=session_name, runname="demo", wait=False, idle_s=0.0, poll_s=0.5,
                            cluster=ClusterSettings(dashboard_address=":0"),
                            script_params=(("session", session_name, f"--session={session_name}"),))
    try:
        summary = run_loop(settings)
    except user_errors() as exc:
        print(f"appion: {exc}", file=sys.stderr)
        return 2
    print()
    print(calc_demo_table(session_name, "demo"))
    print()
    print_summary(summary)
    print(f"see also: appion status {session_name}")
    return 0 if not summary.failed else 1
