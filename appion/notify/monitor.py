"""The loop's and the refinement tracker's entry points to notifications.

The loop (appion.loop.core), once per poll:

    monitor = LoopMonitor.from_config(current_config())     # once, at the start of a run
    monitor.send(monitor.observe(LoopSnapshot(time=time.time(), session=..., ...)))
    ...
    monitor.send(monitor.observe(replace(last_snapshot, time=time.time(), finished=True, rejected=..., medians=...)))
    monitor.close()                                          # delivers what is queued (bounded by the timeouts)

observe() is pure bookkeeping (appion.notify.calc) and send() only queues for a background thread, so neither
blocks nor raises into the loop.  The refinement tracker calls notify_job_state() when a job enters COMPLETED
or FAILED (a transition is stored once, so it notifies once).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from appion.notify import messages
from appion.notify.calc import WatchState, calc_events
from appion.notify.config import NotifyConfig, load_notify_config
from appion.notify.events import Event, LoopSnapshot
from appion.notify.send import Delivery, Sender

log = logging.getLogger("appion.notify")

NOTIFIED_JOB_STATES = ("COMPLETED", "FAILED")


class LoopMonitor:
    """One loop run's alerts: observe() turns snapshots into events (each condition once), send() delivers them."""

    def __init__(self, config: NotifyConfig | None = None, sender: Sender | None = None):
        self.config = config if config is not None else NotifyConfig()
        self.sender = sender if sender is not None else Sender(self.config)
        self.state = WatchState()
        self._broken = False

    @classmethod
    def from_config(cls, appion_config=None) -> "LoopMonitor":
        """The monitor of the `[notify]` table (appion_config: an AppionConfig; default the config file in force).
        A misconfigured table raises appion.base.config.ConfigError: call this before the run starts."""
        return cls(load_notify_config(appion_config))

    def observe(self, snapshot: LoopSnapshot) -> list[Event]:
        """The events this snapshot raises (none when nothing new holds)."""
        try:
            self.state, events = calc_events(self.state, snapshot, self.config.limits)
        except Exception:  # a bug here must not stop the processing
            if not self._broken:
                log.exception("notify: could not evaluate the loop's alerts (further errors are not logged)")
                self._broken = True
            return []
        return events

    def send(self, events) -> None:
        """Deliver events in the background (each channel with its timeout; failures are logged, never raised)."""
        try:
            self.sender.submit(events)
        except Exception as exc:
            log.warning("notify: could not queue %d events: %s", len(list(events or [])), exc)

    def flush(self, timeout_s: float | None = None) -> bool:
        return self.sender.flush(timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Deliver what is still queued (at most timeout_s; default three channel timeouts) and stop."""
        return self.sender.close(timeout_s)


@dataclass(frozen=True)
class JobRef:
    """What a job notification names: read from a lifecycle row, an ApAppionJobData row or a JobRef."""

    job_id: int | None
    name: str
    jobtype: str = ""
    host: str = ""
    rundir: str = ""

    @classmethod
    def of(cls, job) -> "JobRef":
        if isinstance(job, JobRef):
            return job
        job_id = getattr(job, "job_id", None) or getattr(job, "id", None)
        name = getattr(job, "runname", None) or getattr(job, "name", None) or f"job {job_id}"
        host = getattr(job, "host", None) or getattr(job, "cluster", None) or ""
        rundir = getattr(job, "rundir", None)
        return cls(job_id, str(name), str(getattr(job, "jobtype", None) or ""), str(host),
                   str(rundir) if isinstance(rundir, str) or hasattr(rundir, "__fspath__") else "")


def calc_job_recipients(config: NotifyConfig, state: str, user: str | None) -> tuple[str, ...]:
    """COMPLETED: the job's user; FAILED: the admins and the user (each once)."""
    address = config.calc_user_address(user)
    chosen = ([address] if address else []) if state == "COMPLETED" else [*config.admins, *([address] if address
                                                                                          else [])]
    return tuple(dict.fromkeys(chosen))


def notify_job_state(job, state, user: str | None = None, *, reason: str = "", config: NotifyConfig | None = None,
                     now: float | None = None, sender: Sender | None = None) -> list[Delivery]:
    """Tell a refinement job's user it COMPLETED, or the admins and the user it FAILED (other states: nothing).

    job: a lifecycle row, an ApAppionJobData row or a JobRef; state: a JobState or its name; user: the job's user
    name (`[notify] user_mail` / `user_domain` give the address) or an address.  Sends now, with the configured
    timeouts, and returns how each channel did; never raises.
    """
    name = getattr(state, "value", state)
    if name not in NOTIFIED_JOB_STATES:
        return []
    try:
        config = config if config is not None else load_notify_config()
        ref = JobRef.of(job)
        recipients = calc_job_recipients(config, name, user)
        if config.mail and not recipients:
            log.info("notify: no mail address for %s of job %s (set [notify] user_mail or user_domain)",
                     f"user {user!r}" if user else "the unknown user", ref.name)
        event = messages.job_state(ref, name, user, reason, time.time() if now is None else now, recipients)
        return (sender or Sender(config)).deliver(event)
    except Exception as exc:  # a configuration error or a bug: the tracker goes on
        log.warning("notify: could not notify the %s state of job %s: %s", name, getattr(job, "job_id", job), exc)
        return []
