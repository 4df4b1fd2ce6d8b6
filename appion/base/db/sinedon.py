"""sinedon's semantics on Django models: identical rows are reused, newest first.

Leginon's ORM never inserts a row identical to an existing one; it returns the existing
row's DEF_id instead.  Appion's web viewer and scripts rely on that (a run's params row is
shared by every run with the same parameters), so writers here do the same.
"""
from __future__ import annotations

from django.db import models, transaction

from appion.base.db.router import alias_for

_SKIP = {"id", "timestamp"}


def _identity_fields(model: type[models.Model]):
    """Columns that decide whether two rows are identical (all but DEF_id, DEF_timestamp and MRC| files)."""
    for f in model._meta.concrete_fields:
        if f.name in _SKIP or (f.column or "").startswith("MRC|"):
            continue
        yield f


def insert(model: type[models.Model], **values):
    """Get-or-create like sinedon: returns (row, created).

    Unspecified columns count as NULL when looking for an identical row, exactly as if they
    had been inserted that way.  Runs in a transaction on the model's database.
    """
    lookup = {}
    for f in _identity_fields(model):
        key = f.attname if f.is_relation else f.name
        given = values.get(f.name, values.get(f.attname))
        if isinstance(given, models.Model):
            given = given.pk
        if given is None:
            lookup[f"{key}__isnull"] = True
        else:
            lookup[key] = given
    alias = alias_for(model)
    with transaction.atomic(using=alias):
        existing = model.objects.using(alias).filter(**lookup).order_by("-id").first()
        if existing is not None:
            return existing, False
        return model.objects.using(alias).create(**values), True


def newest(model: type[models.Model], **filters):
    """The most recent row matching filters, or None (sinedon queries are newest first)."""
    return model.objects.filter(**filters).order_by("-id").first()
