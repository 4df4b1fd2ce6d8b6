"""What every command-line entry point shares, importing nothing heavy (argparse-time code only).

A subcommand's parser names its implementation as a `Command` ("module:function"); the module is
imported only when that command runs, so `appion --help` and the parsers of every subsystem load
no numpy, Django or Dask.  `needs_db` tells the entry point to call `appion.base.db.bootstrap()`
once, before the implementation (whose modules import the models at their top) is imported:

    p.set_defaults(func=Command("appion.base.session.commands:cmd_session_import"))
    p.set_defaults(func=Command("appion.base.simulate.commands:cmd_simulate_session", needs_db=False))
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from appion.base.config import CONFIG_ENV, set_numba_cache_dir


class Command:
    """A command implementation imported on first call; `needs_db`: bootstrap Django before importing it."""

    __slots__ = ("target", "needs_db")

    def __init__(self, target: str, needs_db: bool = True) -> None:
        module, _, name = target.partition(":")
        if not module or not name:
            raise ValueError(f"command {target!r} is not 'module:function'")
        self.target = target
        self.needs_db = needs_db

    def __repr__(self) -> str:
        return f"Command({self.target!r}, needs_db={self.needs_db})"

    def resolve(self) -> Callable:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, args):
        return self.resolve()(args)


def needs_database(func) -> bool:
    """Whether a parsed command's `func` wants the database (plain callables are assumed to)."""
    return bool(getattr(func, "needs_db", True))


def take_config(argv: list[str]) -> list[str]:
    """`--config FILE` may appear anywhere; it selects the config before anything touches the database (and sets
    the numba cache directory it names, before numba is imported: appion.base.config.set_numba_cache_dir)."""
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
    set_numba_cache_dir()
    return out


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def is_django_error(exc: BaseException, module: str, name: str) -> bool:
    """isinstance(exc, module.name) for a Django exception class, without importing Django.

    If Django was never imported, nothing raised one of its exceptions.
    """
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls is not None and isinstance(exc, cls)


def is_database_error(exc: BaseException) -> bool:
    """A Django database error (connection refused, missing table, lock timeout ...)."""
    return is_django_error(exc, "django.db.utils", "Error")


def is_configuration_error(exc: BaseException) -> bool:
    """Django's ImproperlyConfigured (e.g. the MySQL driver is not installed) or the models imported too early."""
    return is_django_error(exc, "django.core.exceptions", "ImproperlyConfigured")
