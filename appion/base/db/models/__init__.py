"""All tables appion reads or writes, importable from here.

Importing this package starts Django from appion's config if no command has done so yet.
"""
from appion.base.db.setup import bootstrap as _bootstrap

_bootstrap()

from appion.base.db.models.leginon import *  # noqa: E402,F401,F403
from appion.base.db.models.project import *  # noqa: E402,F401,F403
from appion.base.db.models.appion import *  # noqa: E402,F401,F403
from appion.base.db.models.loop import *  # noqa: E402,F401,F403
from appion.base.db.models.jobs import *  # noqa: E402,F401,F403
from appion.base.db.models.workflow import *  # noqa: E402,F401,F403
