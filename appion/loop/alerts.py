"""The loop's alerts to staff (appion.notify): a snapshot after each poll, failures as they happen, a summary
when the run ends.  A part of appion.loop.core.Loop (a mixin on its state), kept apart to keep modules small.

Without a `[notify]` table nothing is sent (the monitor has no channels); a misconfigured table stops the
loop before it starts (appion.base.config.ConfigError).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque

from appion.base.db import current_config
from appion.notify.events import ExposureFailure, LoopSnapshot
from appion.notify.monitor import LoopMonitor
from appion.notify.retrieve import retrieve_run_summary
from appion.workflow.calc import FAILED as WF_FAILED

log = logging.getLogger("appion.loop")


class LoopAlerts:
    """The alerting half of appion.loop.core.Loop (uses its settings `s`, summary, inputs and counters)."""

    def alerts_start(self) -> None:
        self.monitor = LoopMonitor.from_config(current_config())
        self.alert_outcomes: deque = deque(maxlen=max(1, self.monitor.config.limits.failure_window))
        self.alert_failures: dict[int, ExposureFailure] = {}
        self.alert_arrived: float | None = None
        self.alert_started = time.time()
        self.alert_snapshot: LoopSnapshot | None = None

    def alerts_failed(self, image_id: int, filename: str, step: str, reason: str) -> None:
        if getattr(self, "monitor", None) is not None:
            self.alert_failures[image_id] = ExposureFailure(filename, step, reason)

    def alerts_exposure_finished(self, states: dict) -> None:
        if getattr(self, "monitor", None) is not None:
            self.alert_outcomes.append(any(s == WF_FAILED for s in states.values()))

    def alerts_arrived(self, arrived_s: float) -> None:
        if getattr(self, "monitor", None) is not None:
            self.alert_arrived = max(arrived_s, self.alert_arrived or arrived_s)

    def alerts_poll(self) -> None:
        """One snapshot after a poll: alerts for what newly holds (each condition once)."""
        if getattr(self, "monitor", None) is None:
            return
        snap = LoopSnapshot(time=time.time(), session=self.s.session, runname=self.s.runname, seen=self.accepted,
                            done=len(self.summary.done), failed=len(self.alert_failures),
                            failures=dict(self.alert_failures), recent_failed=tuple(self.alert_outcomes),
                            backlog=len(self.inputs), last_arrival=self.alert_arrived,
                            waiting=self.s.wait and not self.session_done and self.idle_and_caught_up(),
                            started=self.alert_started)
        self.alert_snapshot = snap
        self.monitor.send(self.monitor.observe(snap))

    def alerts_finish(self, finished: bool) -> None:
        """The run is over: the session summary when it ended by itself (not on a signal or an error)."""
        monitor = getattr(self, "monitor", None)
        if monitor is None:
            return
        try:
            if finished and self.alert_snapshot is not None:
                rejected, medians = ({}, {}) if self.looprun_id is None else self.db(
                    retrieve_run_summary, self.looprun_id, what="summarising the run")
                monitor.send(monitor.observe(dataclasses.replace(
                    self.alert_snapshot, time=time.time(), done=len(self.summary.done), finished=True,
                    rejected=rejected, medians=medians)))
        except Exception as exc:  # alerts never stop the loop from ending cleanly
            log.warning("notify: could not send the session summary: %s", exc)
        finally:
            monitor.close()
