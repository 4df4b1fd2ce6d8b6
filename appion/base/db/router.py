"""Send each model to its database: leginondata, projectdata or the project's appiondata."""
from __future__ import annotations

from django.conf import settings

from appion.base.db.setup import APPION, LEGINON, PROJECT

_ALIASES = {"leginondata": LEGINON, "projectdata": PROJECT, "appiondata": APPION}


def alias_for(model) -> str:
    if len(settings.DATABASES) == 1:
        return LEGINON
    return _ALIASES[getattr(model, "SINEDON_MODULE", "appiondata")]


class SinedonRouter:
    def db_for_read(self, model, **hints):
        return alias_for(model)

    def db_for_write(self, model, **hints):
        return alias_for(model)

    def allow_relation(self, obj1, obj2, **hints):
        # sinedon references are plain integers across databases; Django only follows them one query at a time.
        return True

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        model = hints.get("model")
        return model is None or alias_for(model) == db
