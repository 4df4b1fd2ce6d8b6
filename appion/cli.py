"""The `appion` command: one entry point, one subcommand group per subsystem."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from django.core.exceptions import ImproperlyConfigured

from appion import __version__
from appion.base.config import CONFIG_ENV, ConfigError

# Each module exposes add_parser(subparsers); a subsystem not present in this build is skipped.
SUBSYSTEMS = ("appion.base.session.cli", "appion.motioncorrection.cli", "appion.ctfestimation.cli",
              "appion.refine.cli", "appion.loop.core", "appion.web")


def _take_config(argv: list[str]) -> list[str]:
    """`--config FILE` may appear anywhere; it selects the config before anything touches the database."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            os.environ[CONFIG_ENV] = os.path.abspath(argv[i + 1])
            i += 2
            continue
        if a.startswith("--config="):
            os.environ[CONFIG_ENV] = os.path.abspath(a.split("=", 1)[1])
            i += 1
            continue
        out.append(a)
        i += 1
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = _take_config(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=os.environ.get("APPION_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="appion", description="near-realtime cryo-EM pre-processing")
    parser.add_argument("--config", metavar="FILE", help="config file (default $APPION_HOME/config.toml)")
    parser.add_argument("--version", action="version", version=f"appion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    try:
        from django.db.utils import Error as DjangoDbError

        for name in SUBSYSTEMS:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name == name:
                    continue
                raise
            module.add_parser(sub)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except (ConfigError, ImproperlyConfigured) as exc:  # the latter e.g. when mysqlclient is not installed
        print(f"appion: configuration error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except DjangoDbError as exc:
        from appion.base.db import current_config

        try:
            where = current_config().leginon.safe
        except Exception:  # the config itself is what failed
            where = "the database"
        print(f"appion: database error ({where}): {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
