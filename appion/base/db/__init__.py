"""The data layer: Leginon/Appion tables as Django models, set up once per process.

`bootstrap()` configures Django from appion's own config (see appion.base.config) the
first time anything imports `appion.base.db.models`; commands call it explicitly at
start-up so that configuration errors surface as one clear line.
"""
from appion.base.db.setup import (  # noqa: F401
    DatabaseUnavailable,
    bootstrap,
    current_config,
    use_appion_database,
)
