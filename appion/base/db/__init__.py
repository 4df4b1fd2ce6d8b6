"""The data layer: Leginon/Appion tables as Django models, set up once per process.

Nothing here starts Django by being imported.  A command calls `bootstrap()` once at start-up
(appion.cli does it before importing the command's implementation); only then may
`appion.base.db.models` (and every module that imports it at its top) be imported.

The names below come from appion.base.db.setup, imported on first use, so that the command
parsers can import `appion.base.db.cli` without loading Django.
"""
from __future__ import annotations

import importlib

__all__ = ["DatabaseUnavailable", "bootstrap", "current_config", "use_appion_database"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("appion.base.db.setup"), name)
    raise AttributeError(f"module 'appion.base.db' has no attribute {name!r}")
