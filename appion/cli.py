"""The `appion` command: one entry point, one subcommand group per subsystem.

Start-up is kept short: the parser is built from light modules only (argparse, no numpy, Django or
Dask); each subcommand's `func` is an appion.base.entry.Command naming its implementation, which is
imported only when that command runs.  Django is started once, here, by appion.base.db.bootstrap(),
after parsing and before the implementation is imported, unless the command does not use the
database (`Command(..., needs_db=False)`: simulate, motion align, ctf estimate).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from appion import __version__
from appion.base.config import ConfigError
from appion.base.entry import is_configuration_error, is_database_error, needs_database, one_line, take_config

# Each module exposes add_parser(subparsers) and imports nothing heavy; a module not present in this
# build is skipped.
SUBSYSTEMS = ("appion.base.db.cli", "appion.base.session.cli", "appion.base.simulate.cli",
              "appion.motioncorrection.cli", "appion.ctfestimation.cli", "appion.refine.cli", "appion.loop.cli",
              "appion.workflow.cli", "appion.web", "appion.export.cli", "appion.notify.cli")

# Kept for callers of the former private names.
_take_config = take_config
_one_line = one_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appion", description="near-realtime cryo-EM pre-processing")
    parser.add_argument("--config", metavar="FILE", help="config file (default $APPION_HOME/config.toml)")
    parser.add_argument("--version", action="version", version=f"appion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBSYSTEMS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.add_parser(sub)
    return parser


def _database_error_line(exc: BaseException) -> str:
    from appion.base.db import current_config

    try:
        where = current_config().leginon.safe
    except Exception:  # the config itself is what failed
        where = "the database"
    return f"appion: database error ({where}): {one_line(exc)}"


def main(argv: list[str] | None = None) -> int:
    argv = take_config(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=os.environ.get("APPION_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        if needs_database(args.func):
            from appion.base.db import bootstrap

            bootstrap()
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"appion: configuration error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if is_configuration_error(exc):  # e.g. the MySQL driver is not installed
            print(f"appion: configuration error: {one_line(exc)}", file=sys.stderr)
            return 2
        if is_database_error(exc):
            print(_database_error_line(exc), file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
