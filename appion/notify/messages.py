"""Subjects and bodies of the notifications, for people (pure: the clock and the recipients come in)."""
from __future__ import annotations

import time as _time

from appion.notify import events as ev
from appion.notify.events import Event

PREFIX = "[appion]"
MAX_LISTED = 20  # failures listed in one message


def fmt_time(unix_s: float | None) -> str:
    if unix_s is None:
        return "–"
    return _time.strftime("%Y-%m-%d %H:%M:%S %Z", _time.localtime(unix_s))


def fmt_minutes(seconds: float) -> str:
    minutes = seconds / 60.0
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def _where(snap) -> str:
    return f"session {snap.session}" + (f", loop run {snap.runname}" if snap.runname else "")


def _counts(snap) -> list[str]:
    return [f"exposures taken on: {snap.seen}", f"done: {snap.done}", f"failed: {snap.failed}",
            f"backlog: {snap.backlog}"]


def _data(snap, **extra) -> dict:
    return {"session": snap.session, "run": snap.runname, "seen": snap.seen, "done": snap.done,
            "failed": snap.failed, "backlog": snap.backlog, **extra}


def exposures_failed(snap, new: dict) -> Event:
    items = list(new.items())
    if len(items) == 1:
        _, f = items[0]
        subject = f"{PREFIX} {snap.session}: exposure {f.filename} failed ({f.step})"
    else:
        subject = f"{PREFIX} {snap.session}: {len(items)} exposures failed"
    lines = [f"{'This exposure' if len(items) == 1 else 'These exposures'} failed permanently in {_where(snap)} "
             "(retries used up):", ""]
    lines += [f"  {f.filename} (image {i}): {f.step}: {f.reason}" for i, f in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    lines += ["", *_counts(snap), "", f"Details: appion status {snap.session}"]
    data = _data(snap, exposures=[{"image_id": i, "filename": f.filename, "step": f.step, "reason": f.reason}
                                  for i, f in items])
    return Event(ev.EXPOSURE_FAILED, subject, "\n".join(lines), snap.time, snap.session, data)


def failure_rate(snap, failed: int, finished: int, limit: float) -> Event:
    subject = (f"{PREFIX} {snap.session}: {failed} of the last {finished} exposures failed "
               f"({100 * failed / finished:.0f} % > {100 * limit:.0f} %)")
    body = [f"In {_where(snap)}, {failed} of the last {finished} exposures that finished have failed, more than "
            f"the alert limit of {100 * limit:.0f} % ([notify] failure_rate).", "", *_counts(snap), "",
            f"Failures and their reasons: appion status {snap.session}"]
    return Event(ev.FAILURE_RATE, subject, "\n".join(body), snap.time, snap.session,
                      _data(snap, window_failed=failed, window=finished, limit=limit))


def falling_behind(snap, base: int, since: float) -> Event:
    span = fmt_minutes(snap.time - since)
    subject = f"{PREFIX} {snap.session}: falling behind, backlog {snap.backlog} (up from {base} over {span})"
    body = [f"The backlog of {_where(snap)} has been growing for {span}: {snap.backlog} exposures wait now, "
            f"{base} did at {fmt_time(since)}.  Processing is slower than the microscope; more workers "
            "(--maximum, --workers) or fewer steps would help.", "", *_counts(snap)]
    return Event(ev.FALLING_BEHIND, subject, "\n".join(body), snap.time, snap.session,
                      _data(snap, backlog_was=base, growing_since=since))


def microscope_idle(snap, arrival: float) -> Event:
    span = fmt_minutes(snap.time - arrival)
    subject = f"{PREFIX} {snap.session}: no new exposure for {span} (microscope stopped?)"
    body = [f"The loop of {_where(snap)} is caught up and waiting, but no new exposure has arrived since "
            f"{fmt_time(arrival)} ({span} ago).  The microscope or the transfer of its movies may have stopped.",
            "", *_counts(snap)]
    return Event(ev.MICROSCOPE_IDLE, subject, "\n".join(body), snap.time, snap.session,
                      _data(snap, last_arrival=arrival))


def session_finished(snap, first: float) -> Event:
    rejected = sum(snap.rejected.values())
    subject = (f"{PREFIX} {snap.session}: session finished: {snap.done} done, {snap.failed} failed, "
               f"{rejected} rejected")
    started = snap.started if snap.started is not None else first
    body = [f"The loop of {_where(snap)} has finished ({fmt_time(started)} – {fmt_time(snap.time)}, "
            f"{fmt_minutes(snap.time - started)}).", "", f"exposures taken on: {snap.seen}", f"done: {snap.done}",
            f"failed: {snap.failed}", f"rejected: {rejected}"]
    if snap.medians:
        body += ["", "Medians:"] + [f"  {label}: {value:.4g}" for label, value in snap.medians.items()]
    if snap.rejected:
        body += ["", "Rejected by reason:"] + [f"  {n} × {reason}" for reason, n in
                                               sorted(snap.rejected.items(), key=lambda x: (-x[1], x[0]))]
    failures = list(snap.failures.items())
    if failures:
        body += ["", "Failed:"] + [f"  {f.filename}: {f.step}: {f.reason}" for _, f in failures[:MAX_LISTED]]
        if len(failures) > MAX_LISTED:
            body.append(f"  ... and {len(failures) - MAX_LISTED} more")
    body += ["", f"Details: appion status {snap.session}"]
    return Event(ev.SESSION_FINISHED, subject, "\n".join(body), snap.time, snap.session,
                      _data(snap, rejected=dict(snap.rejected), medians=dict(snap.medians)))


def job_state(job, state: str, user: str | None, reason: str, now: float, mail_to: tuple[str, ...]) -> Event:
    kind = ev.JOB_COMPLETED if state == "COMPLETED" else ev.JOB_FAILED
    name = f"{job.name} (job {job.job_id})" if job.job_id is not None else job.name
    subject = f"{PREFIX} refinement {name} {state}" + (f": {reason}" if state != "COMPLETED" and reason else "")
    lines = [f"The {job.jobtype + ' ' if job.jobtype else ''}refinement job {name}"
             + (f" of {user}" if user else "") + f" is {state} ({fmt_time(now)}).", ""]
    if reason:
        lines.append(f"reason: {reason}")
    for label, value in (("host", job.host), ("run directory", job.rundir)):
        if value:
            lines.append(f"{label}: {value}")
    lines += ["", "Details: appion jobs watch"]
    data = {"job_id": job.job_id, "name": job.name, "jobtype": job.jobtype, "state": state, "user": user,
            "reason": reason, "host": job.host, "rundir": job.rundir}
    return Event(kind, subject[:300], "\n".join(lines), now, "", data, mail_to)


def self_test(config, host: str, now: float) -> Event:
    subject = f"{PREFIX} test message from {host}"
    body = [f"`appion notify test` on {host} at {fmt_time(now)} sent this through every configured channel:",
            f"  mail: {config.smtp_safe if config.mail else 'not configured'} → {', '.join(config.to) or 'nobody'}",
            f"  webhook: {config.webhook_safe}", "", "Nothing needs doing."]
    return Event(ev.TEST, subject, "\n".join(body), now, "", {"host": host})
