"""Delivering events: mail through SMTP (smtplib) and a JSON POST to the webhook (urllib), both with timeouts.

Nothing here raises into the caller: a channel that fails is logged once (a warning naming the channel and the
error, never the password or the webhook's path), then quietly until it works again.  `Sender.submit` hands
events to one background thread, so a slow mail server never holds up the loop; `Sender.deliver` sends at once
and says how each channel did (`appion notify test`).
"""
from __future__ import annotations

import json
import logging
import queue
import smtplib
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import appion
from appion.notify.config import NotifyConfig
from appion.notify.events import Event

log = logging.getLogger("appion.notify")


@dataclass(frozen=True)
class Delivery:
    channel: str  # "mail" | "webhook"
    ok: bool
    detail: str  # what was done, or the error (one line)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def calc_mail(config: NotifyConfig, event: Event, recipients: tuple[str, ...]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = event.subject
    msg["From"] = config.sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(event.time, localtime=True)
    msg["Message-ID"] = make_msgid("appion")
    msg["X-Appion-Event"] = event.kind
    msg.set_content(event.body + "\n")
    return msg


def calc_recipients(config: NotifyConfig, event: Event) -> tuple[str, ...]:
    chosen = config.to if event.mail_to is None else event.mail_to
    return tuple(dict.fromkeys(chosen))  # each once, in order


def send_mail(config: NotifyConfig, event: Event, recipients: tuple[str, ...]) -> None:
    """One message to `recipients` (raises smtplib / OSError errors; the caller logs them)."""
    host, port, timeout = config.smtp_host, config.smtp_port, config.timeout_s
    if config.smtp_security == "ssl":
        server = smtplib.SMTP_SSL(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        server = smtplib.SMTP(host, port, timeout=timeout)
    with server:
        if config.smtp_security == "starttls":
            server.starttls(context=ssl.create_default_context())
        if config.smtp_user:
            server.login(config.smtp_user, config.smtp_password or "")
        server.send_message(calc_mail(config, event, recipients), to_addrs=list(recipients))


def calc_payload(event: Event) -> bytes:
    """The webhook's JSON: `text` (subject, then body) is what chat services show."""
    return json.dumps({"event": event.kind, "subject": event.subject, "text": f"{event.subject}\n\n{event.body}",
                       "session": event.session, "time": event.time, "details": dict(event.data)},
                      default=str).encode("utf-8")


def post_webhook(config: NotifyConfig, event: Event) -> int:
    """POST the event as JSON; returns the HTTP status (raises on a network error or a non-2xx answer)."""
    request = urllib.request.Request(config.webhook, data=calc_payload(event), method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8",
                                              "User-Agent": f"appion/{appion.__version__}"})
    with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
        response.read(65536)
        return response.status


class Sender:
    """Delivers events through every configured channel; never raises."""

    def __init__(self, config: NotifyConfig):
        self.config = config
        self._failing: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ one event, now
    def deliver(self, event: Event) -> list[Delivery]:
        log.info("notify: %s", event.subject)
        out = []
        if self.config.mail:
            recipients = calc_recipients(self.config, event)
            if recipients:
                out.append(self._attempt("mail", lambda: send_mail(self.config, event, recipients),
                                         f"mail to {', '.join(recipients)} via {self.config.smtp_safe}"))
        if self.config.webhook:
            out.append(self._attempt("webhook", lambda: post_webhook(self.config, event),
                                     f"POST to {self.config.webhook_safe}"))
        return out

    def _attempt(self, channel: str, send, what: str) -> Delivery:
        try:
            send()
        except Exception as exc:  # SMTP, network, TLS, HTTP status ...: never into the loop
            return self._failed(channel, what, _one_line(exc))
        with self._lock:
            recovered = channel in self._failing
            self._failing.discard(channel)
        if recovered:
            log.info("notify: %s works again", channel)
        return Delivery(channel, True, what)

    def _failed(self, channel: str, what: str, error: str) -> Delivery:
        with self._lock:
            first = channel not in self._failing
            self._failing.add(channel)
        if first:
            log.warning("notify: %s failed: %s (further failures of the %s channel are not logged until it works "
                        "again)", what, error, channel)
        else:
            log.debug("notify: %s failed again: %s", what, error)
        return Delivery(channel, False, f"{what} failed: {error}")

    # ------------------------------------------------------------ in the background
    def submit(self, events) -> None:
        """Queue events for the background thread (started on first use)."""
        events = list(events)
        if not events:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="appion-notify", daemon=True)
                self._thread.start()
        for event in events:
            self._queue.put(event)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                self.deliver(event)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued event was delivered (or failed); False when timeout_s passed first."""
        timeout_s = self.config.timeout_s * 3 if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout_s: float | None = None) -> bool:
        """Deliver what is queued (up to timeout_s) and stop the thread."""
        done = self.flush(timeout_s)
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout=1.0 if done else 0.0)
        return done
