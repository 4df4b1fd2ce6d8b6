"""Notifications delivered to a local SMTP server (aiosmtpd) and a local webhook receiver: each event of a loop
snapshot stream arrives exactly once by each channel, readable; refinement jobs reach their user (and the admin on
failure); a failing channel is logged once, without credentials, and never raises; `appion notify test`."""
from __future__ import annotations

import logging
import subprocess
from collections import Counter
from types import SimpleNamespace

import pytest

from appion.base.jobstates import JobState
from appion.notify.config import Limits, NotifyConfig
from appion.notify.events import ExposureFailure, LoopSnapshot
from appion.notify.monitor import JobRef, LoopMonitor, notify_job_state
from appion.notify.send import Sender

from tests.notify.conftest import free_port

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000.0
PASSWORD = "pa55-w0rd-never-shown"
LIMITS = Limits(failure_rate=0.5, failure_window=6, backlog_minutes=2, backlog_growth=3, idle_minutes=5)


def config_for(smtp_port: int, hook_url: str | None, **extra) -> NotifyConfig:
    return NotifyConfig(smtp_host="127.0.0.1", smtp_port=smtp_port, sender="appion@lab.example",
                        to=("staff@lab.example", "night@lab.example"), admin=("admin@lab.example",),
                        webhook=hook_url, timeout_s=5.0, user_mail=(("alice", "alice@uni.example"),),
                        user_domain="lab.example", limits=LIMITS, **extra)


def session_stream():
    """A session's polls: two failures (seen at many polls), a failure-rate episode, the backlog growing twice,
    the microscope stopping twice, then the end.  Yields snapshots every 30 s."""
    fails = {}
    outcomes: list[bool] = []
    t = T0
    arrival = T0

    def snap(**fields):
        return LoopSnapshot(time=t, session="25nov21a", runname="loop1", seen=len(outcomes) + fields.get("backlog", 0),
                            done=outcomes.count(False), failed=outcomes.count(True), failures=dict(fails),
                            recent_failed=tuple(outcomes), last_arrival=arrival, started=T0, **fields)

    for k in range(10):  # healthy; then two failures in a row, the second seen at every later poll
        outcomes.append(k in (6, 7))
        if k == 6:
            fails[106] = ExposureFailure("25nov21a_00006en", "motion", "MovieError: truncated movie (frame 7 of 16)")
        if k == 7:
            fails[107] = ExposureFailure("25nov21a_00007en", "ctf", "CtfError: no Thon rings above 20 Å")
        arrival = t
        yield snap(backlog=1)
        t += 30
    outcomes += [True, True]  # 4 of the last 6 failed → failure rate
    yield snap(backlog=1)
    t += 30
    outcomes += [False] * 6  # recovered
    for backlog in (1, 3, 4, 5, 6, 7, 8):  # growing for 3 min → falling behind (once)
        arrival = t
        yield snap(backlog=backlog)
        t += 30
    yield snap(backlog=1)  # caught up: cleared
    t += 30
    for backlog in (2, 3, 5, 6, 7, 8):  # again
        arrival = t
        yield snap(backlog=backlog)
        t += 30
    for _ in range(14):  # caught up and waiting, no arrival for 7 min → microscope stopped (once)
        yield snap(backlog=0, waiting=True)
        t += 30
    arrival = t  # one more exposure, then stopped again
    for _ in range(12):
        yield snap(backlog=0, waiting=True)
        t += 30
    yield snap(backlog=0, finished=True, rejected={"rejected by quality: CTF fit resolution above 6 Å": 2},
               medians={"motion: drift Å": 11.5, "ctf: CTF fit Å": 3.75})


EXPECTED = ["[appion] 25nov21a: exposure 25nov21a_00006en failed (motion)",
            "[appion] 25nov21a: exposure 25nov21a_00007en failed (ctf)",
            "[appion] 25nov21a: 4 of the last 6 exposures failed (67 % > 50 %)",
            "[appion] 25nov21a: falling behind, backlog 6 (up from 1 over 2 min)",
            "[appion] 25nov21a: falling behind, backlog 6 (up from 1 over 2 min)",
            "[appion] 25nov21a: no new exposure for 5 min (microscope stopped?)",
            "[appion] 25nov21a: no new exposure for 5 min (microscope stopped?)",
            "[appion] 25nov21a: session finished: 14 done, 4 failed, 2 rejected"]


def test_each_event_arrives_once_by_mail_and_webhook(smtp_server, webhook):
    box, port = smtp_server()
    hooks, url = webhook
    monitor = LoopMonitor(config_for(port, url))
    polls = 0
    for snapshot in session_stream():
        monitor.send(monitor.observe(snapshot))
        polls += 1
    assert polls > 50
    assert monitor.close(30)
    mails = box.wait(len(EXPECTED))
    posts = hooks.wait(len(EXPECTED))
    assert [m.subject for m in mails] == EXPECTED
    assert [p["subject"] for p in posts] == EXPECTED
    for mail in mails:
        assert mail.mail_from == "appion@lab.example"
        assert mail.rcpt_tos == ["staff@lab.example", "night@lab.example"]
        assert mail.message["To"] == "staff@lab.example, night@lab.example"
    by_subject = {m.subject: m.body for m in mails}
    first_failure = "25nov21a_00006en (image 106): motion: MovieError: truncated movie (frame 7 of 16)"
    assert first_failure in by_subject[EXPECTED[0]]
    assert "25nov21a_00007en" not in by_subject[EXPECTED[0]]
    assert "more than the alert limit of 50 %" in by_subject[EXPECTED[2]]
    assert "has been growing for 2 min: 6 exposures wait now, 1 did at" in by_subject[EXPECTED[3]]
    assert "caught up and waiting, but no new exposure has arrived since" in by_subject[EXPECTED[5]]
    summary = by_subject[EXPECTED[-1]]
    for text in ("done: 14", "failed: 4", "rejected: 2", "motion: drift Å: 11.5", "ctf: CTF fit Å: 3.75",
                 "2 × rejected by quality: CTF fit resolution above 6 Å", "25nov21a_00007en: ctf: CtfError"):
        assert text in summary, (text, summary)
    kinds = Counter(p["event"] for p in posts)
    assert kinds == {"exposure_failed": 2, "failure_rate": 1, "falling_behind": 2, "microscope_idle": 2,
                     "session_finished": 1}
    first = posts[0]
    assert first["text"].startswith(EXPECTED[0] + "\n\n") and first["session"] == "25nov21a"
    assert first["details"]["exposures"] == [{"image_id": 106, "filename": "25nov21a_00006en", "step": "motion",
                                              "reason": "MovieError: truncated movie (frame 7 of 16)"}]
    path, headers, _ = hooks.posts[0]
    assert path == "/hooks/T0KEN-s3cret" and headers["Content-Type"].startswith("application/json")


def test_refinement_jobs_reach_their_user_and_the_admin(smtp_server, webhook):
    box, port = smtp_server()
    hooks, url = webhook
    config = config_for(port, url)
    job = JobRef(42, "relion-refine3d-1", "relion", "cluster1", "/data/appion/25nov21a/recon/refine1")
    done = notify_job_state(job, "COMPLETED", "alice", config=config)
    assert [d.ok for d in done] == [True, True], done
    lifecycle = SimpleNamespace(job_id=42, runname="relion-refine3d-1", jobtype="relion", host="cluster1",
                                rundir="/data/appion/25nov21a/recon/refine1", state="FAILED")  # as the tracker has
    failed = notify_job_state(lifecycle, JobState.FAILED, "bob", reason="RELION exited with code 1 (out of memory)",
                              config=config)
    assert [d.ok for d in failed] == [True, True], failed
    assert notify_job_state(job, JobState.RUNNING, "alice", config=config) == []
    mails = box.wait(2)
    assert len(mails) == 2 and len(hooks.wait(2)) == 2
    completed, failure = mails
    assert completed.rcpt_tos == ["alice@uni.example"]
    assert completed.subject == "[appion] refinement relion-refine3d-1 (job 42) COMPLETED"
    assert "The relion refinement job relion-refine3d-1 (job 42) of alice is COMPLETED" in completed.body
    assert "run directory: /data/appion/25nov21a/recon/refine1" in completed.body
    assert failure.rcpt_tos == ["admin@lab.example", "bob@lab.example"]
    assert failure.subject == ("[appion] refinement relion-refine3d-1 (job 42) FAILED: RELION exited with code 1 "
                               "(out of memory)")
    assert [p["details"]["state"] for p in hooks.wait(2)] == ["COMPLETED", "FAILED"]


def test_a_failing_channel_is_logged_once_without_secrets_and_never_raises(smtp_server, webhook, caplog):
    hooks, url = webhook
    hooks.status = 500
    closed = free_port()  # nothing listens here
    config = config_for(closed, url, smtp_user="appion", smtp_password=PASSWORD)
    assert PASSWORD not in repr(config) and "s3cret" not in repr(config)
    sender = Sender(config)
    caplog.set_level(logging.DEBUG, logger="appion.notify")
    monitor = LoopMonitor(config, sender)
    for k in range(3):
        events = monitor.observe(LoopSnapshot(time=T0 + k, session="s", failures={
            k: ExposureFailure(f"s_{k}", "motion", "boom")}))
        assert len(events) == 1
        monitor.send(events)  # never raises
        assert monitor.flush(30)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per channel, not one per event
    assert any(w.startswith("notify: mail to staff@lab.example, night@lab.example via "
                            f"smtp://appion@127.0.0.1:{closed} failed") for w in warnings), warnings
    assert any("POST to http://127.0.0.1:" in w and "/… failed: HTTPError: HTTP Error 500" in w for w in warnings)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in text and "s3cret" not in text and "T0KEN" not in text
    assert len(hooks.posts) == 3  # tried each time
    hooks.status = 200
    caplog.clear()
    results = sender.deliver(monitor.observe(LoopSnapshot(time=T0 + 9, session="s", failures={
        9: ExposureFailure("s_9", "ctf", "x")}))[0])
    assert [(r.channel, r.ok) for r in results] == [("mail", False), ("webhook", True)]
    assert "notify: webhook works again" in [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # mail still failing: not again
    monitor.close(5)


def test_smtp_login(smtp_server):
    box, port = smtp_server(login=("appion", PASSWORD))
    good = Sender(config_for(port, None, smtp_user="appion", smtp_password=PASSWORD, smtp_security="none"))
    event = LoopMonitor().observe(LoopSnapshot(time=T0, session="s", failures={1: ExposureFailure("s_1", "ctf", "x")}))
    assert [r.ok for r in good.deliver(event[0])] == [True]
    assert box.logins == ["appion"] and len(box.wait(1)) == 1
    bad = Sender(config_for(port, None, smtp_user="appion", smtp_password="wrong-" + PASSWORD, smtp_security="none"))
    result = bad.deliver(event[0])
    assert [r.ok for r in result] == [False] and "SMTPAuthenticationError" in result[0].detail
    assert PASSWORD not in result[0].detail and len(box.mails) == 1


def test_notify_test_command(smtp_server, webhook, tmp_path):
    box, port = smtp_server()
    hooks, url = webhook
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[notify]\nsmtp = "127.0.0.1:{port}"\nfrom = "appion@lab.example"\nto = ["staff@lab.example"]\n'
        f'webhook = "{url}"\ntimeout = 5\n')
    env = {"PATH": subprocess.os.environ["PATH"], "APPION_HOME": str(home), "HOME": str(tmp_path)}
    done = subprocess.run(["appion", "notify", "test"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mail: ok: mail to staff@lab.example via smtp://127.0.0.1" in done.stdout
    assert "webhook: ok: POST to http://127.0.0.1:" in done.stdout and "s3cret" not in done.stdout + done.stderr
    mail = box.wait(1)[0]
    assert mail.subject.startswith("[appion] test message from ") and "Nothing needs doing." in mail.body
    assert hooks.wait(1)[0]["event"] == "test"
    assert len(box.mails) == 1 and len(hooks.posts) == 1

    (home / "config.toml").write_text('[notify]\nsmtp = "127.0.0.1"\n')
    done = subprocess.run(["appion", "notify", "test"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "configuration error: [notify] smtp must be \"host:port\"" in done.stderr
    (home / "config.toml").write_text("")
    done = subprocess.run(["appion", "notify", "test"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no notification channel configured" in done.stderr
