"""`appion db init|check`: the parser (light); the commands are appion.base.db.commands."""
from __future__ import annotations

from appion.base.entry import Command


def add_parser(subparsers) -> None:
    db = subparsers.add_parser("db", help="create or check the database schema").add_subparsers(dest="db_cmd",
                                                                                                  required=True)
    db.add_parser("init", help="create missing tables (never alters existing ones)").set_defaults(
        func=Command("appion.base.db.commands:cmd_db_init"))
    db.add_parser("check", help="report missing tables and columns").set_defaults(
        func=Command("appion.base.db.commands:cmd_db_check"))
