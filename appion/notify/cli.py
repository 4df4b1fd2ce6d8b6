"""`appion notify test`: the parser only (light)."""
from __future__ import annotations

from appion.base.entry import Command


def add_parser(subparsers) -> None:
    notify = subparsers.add_parser("notify", help="alerts and notifications ([notify] in the config)")
    sub = notify.add_subparsers(dest="notify_command", required=True)
    test = sub.add_parser("test", help="send a test message through every configured channel (mail, webhook)")
    test.set_defaults(func=Command("appion.notify.commands:cmd_notify_test", needs_db=False))
