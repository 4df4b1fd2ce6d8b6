"""A local SMTP server (aiosmtpd) and a local webhook receiver (http.server), both on 127.0.0.1, for the
notification tests.  They record what arrives; nothing leaves this machine."""
from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        return self.message.get_content()


class MailBox:
    """What the SMTP server received (and, when `login` is set, the credentials it accepts)."""

    def __init__(self, login: tuple[str, str] | None = None):
        self.mails: list[Mail] = []
        self.logins: list[str] = []
        self.login = login
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.lock:
            self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = (isinstance(auth_data, LoginPassword) and self.login is not None
              and (auth_data.login.decode(), auth_data.password.decode()) == self.login)
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    def wait(self, n: int, timeout_s: float = 20.0) -> list[Mail]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.mails) >= n:
                    return list(self.mails)
            time.sleep(0.05)
        pytest.fail(f"expected {n} mails within {timeout_s} s, got {len(self.mails)}: "
                    f"{[m.subject for m in self.mails]}")


@pytest.fixture
def smtp_server():
    """Start aiosmtpd servers on 127.0.0.1: start(login=None) → (MailBox, port); all stopped afterwards."""
    from aiosmtpd.controller import Controller

    controllers = []

    def start(login: tuple[str, str] | None = None) -> tuple[MailBox, int]:
        box = MailBox(login)
        port = free_port()
        kwargs = dict(authenticator=box.authenticate, auth_require_tls=False) if login else {}
        controller = Controller(box, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return box, port

    yield start
    for c in controllers:
        c.stop()


@dataclass
class Hooks:
    """What the webhook receiver got: (path, headers, JSON body); `status` is what it answers."""

    posts: list[tuple[str, dict, dict]] = field(default_factory=list)
    status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, n: int, timeout_s: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.posts) >= n:
                    return [body for _, _, body in self.posts]
            time.sleep(0.05)
        pytest.fail(f"expected {n} webhook posts within {timeout_s} s, got {len(self.posts)}")


@pytest.fixture
def webhook():
    """A local HTTP receiver: yields (Hooks, url with a secret-looking path)."""
    hooks = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length).decode("utf-8"))
            with hooks.lock:
                hooks.posts.append((self.path, dict(self.headers), body))
                status = hooks.status
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield hooks, f"http://127.0.0.1:{server.server_address[1]}/hooks/T0KEN-s3cret"
    server.shutdown()
    server.server_close()
    thread.join(5)
