"""Setting a loop run up: memo keys, run directories (inside appion_base), the run taken for this process (one
loop per run), its rows, the parameters file, and the leftovers of earlier starts that were killed.

A part of appion.loop.core.Loop (a mixin on its state), kept apart to keep each module small.  Loop process only.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import appion
from appion.base.db import current_config, use_appion_database
from appion.base.db import models as m
from appion.base.io.files import write_text_atomic
from appion.base.names import check_inside, check_name
from appion.base.session import retrieve as r
from appion.base.session import store as st
from appion.base.steps import StepRun
from appion.loop import store as ls
from appion.loop.calc import HEARTBEAT_S, LoopError, calc_params_hash
from appion.loop.db import close_db_connections
from appion.loop.runlock import PART_MARGIN_S, Heartbeat, calc_holder_state, clean_part_files
from appion.workflow.calc import MemoParts, calc_memo_key

log = logging.getLogger("appion.loop")


class RunSetup:
    """The set-up half of appion.loop.core.Loop (uses its settings `s`, steps, `db` and summary)."""

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
        if self.s.rundirs.get(step):  # given explicitly (classic --rundir): the person's choice
            return Path(self.s.rundirs[step]).resolve()
        base = current_config().appion_base
        kind = self.defs[step].rundir_kind
        return check_inside(base / check_name("session name", self.s.session) / check_name("run directory kind", kind)
                            / self.s.runname, [base], f"run directory of step {step}")

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
            self._wait_for_first_exposure()
            self.db(self._store_runs, what="registering the run")
            looprun_id = self.looprun_id
            self.heartbeat = Heartbeat(lambda: ls.store_loop_run_fields(looprun_id, heartbeat=time.time()),
                                       HEARTBEAT_S, close=close_db_connections).start()
        for run in self.step_runs.values():
            run.rundir.mkdir(parents=True, exist_ok=True)
        self._clean_leftovers(PART_MARGIN_S)
        self._write_params_file()

    def _wait_for_first_exposure(self) -> None:
        """A run started before the microscope recorded anything waits for the session's first exposure: the
        steps' run rows need the session's optics (the CTF run's Cs, ...), which arrive with it."""
        def has_exposures() -> bool:
            return m.AcquisitionImageData.objects.filter(session_id=self.session.id).exists()

        said = False
        while not self.db(has_exposures, what="waiting for the first exposure"):
            if not self.s.wait or self.stop_requested:
                raise LoopError(f"session {self.session.name!r} has no exposures yet: nothing to process")
            if not said:
                log.info("session %s has no exposures yet: waiting for the first one", self.session.name)
                said = True
            time.sleep(min(self.s.poll_s, 1.0))

    def _own_margin_at_end_s(self) -> float:
        """At the end, once this loop's workers are gone, every temporary in its own run directories is a
        leftover, unless workers of an earlier holder may still write: batch jobs outlive a killed loop
        (their cluster kind is in the stuck job rows), local workers do not."""
        if self.cluster_settings.kind != "local" or any(kind != "local" for kind in self.stuck_job_clusters):
            return PART_MARGIN_S
        return 0.0

    def _clean_leftovers(self, own_margin_s: float, shared_margin_s: float = PART_MARGIN_S) -> None:
        """Hidden `.part` temporaries of killed workers in this run's directories: its own (not reused) step run
        directories (not written to for own_margin_s) and the session's image directory, which other runs of the
        session write into too (not written to for shared_margin_s)."""
        own = [self.step_runs[n].rundir for n in self.order if not self.summary.reused.get(n)]
        shared = [Path(self.session.image_path)] if getattr(self.session, "image_path", None) else []
        removed = clean_part_files(own, own_margin_s) + clean_part_files(shared, shared_margin_s)
        if removed:
            log.warning("removed %d leftover temporary file(s) of killed workers: %s", len(removed),
                        ", ".join(str(p) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
            self.summary.cleaned.extend(str(p) for p in removed)

    def _store_runs(self) -> None:
        first = self.step_runs[self.order[0]].rundir
        params = json.dumps({"steps": list(self.order), "preset": self.s.preset,
                             **{n: self.settings[n].hashed() for n in self.order}}, default=str)
        looprun, taken = ls.store_loop_run(self.s.runname, self.session.id, self.session.name, ",".join(self.order),
                                           self.run_hash, params, first, os.getpid(), time.time(), calc_holder_state)
        for holder in taken:
            log.warning("run %s of session %s was marked running by %s: taking it over", self.s.runname,
                        self.session.name, holder)
        self.summary.taken_over.extend(taken)
        self.looprun_id = looprun.id
        interrupted = ls.store_interrupted_exposures_queued(self.looprun_id)
        if interrupted:
            log.info("%d exposure step(s) left running by an earlier start are queued again", interrupted)
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
        stuck = ls.store_stuck_jobs_error(self.session.id, f"{self.s.runname}.appionsub.job", self.s.jobtype,
                                          [self.step_runs[n].rundir for n in self.order], exclude_ids=self.job_ids)
        if stuck:
            log.warning("%d job row(s) of earlier starts of this run were still marked running: set to E", len(stuck))
        self.stuck_job_clusters = set(stuck) | ({"unknown"} if taken and not stuck else set())
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
            path = run.rundir / f"{self.s.runname}.loop-params.json"
            try:
                write_text_atomic(path, text)
            except OSError as exc:  # e.g. a full disk: say which file (the error alone does not)
                raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
