"""All tables appion reads or writes, importable from here once `appion.base.db.bootstrap()` has run.

Importing this package does not start Django: a command calls bootstrap() first (see appion.cli).
"""
from django.conf import settings as _settings

if not _settings.configured:
    raise RuntimeError("appion.base.db.bootstrap() must run before the models are imported")

from appion.base.db.models.leginon import *  # noqa: E402,F401,F403
from appion.base.db.models.project import *  # noqa: E402,F401,F403
from appion.base.db.models.appion import *  # noqa: E402,F401,F403
from appion.base.db.models.loop import *  # noqa: E402,F401,F403
from appion.base.db.models.jobs import *  # noqa: E402,F401,F403
from appion.base.db.models.workflow import *  # noqa: E402,F401,F403
from appion.base.db.models.imports import *  # noqa: E402,F401,F403
from appion.base.db.models.quality import *  # noqa: E402,F401,F403
