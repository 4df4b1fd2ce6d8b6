"""sinedon's semantics on Django models: identical rows are reused, newest first.

Leginon's ORM never inserts a row identical to an existing one; it returns the existing
row's DEF_id instead.  Appion's web viewer and scripts rely on that (a run's params row is
shared by every run with the same parameters), so writers here do the same.
"""
from __future__ import annotations

from contextlib import contextmanager

from django.db import DatabaseError, connections, models, transaction

from appion.base.db.router import alias_for

_SKIP = {"id", "timestamp"}
LOCK_WAIT_S = 60


def _identity_fields(model: type[models.Model]):
    """Columns that decide whether two rows are identical (all but DEF_id, DEF_timestamp and MRC| files)."""
    for f in model._meta.concrete_fields:
        if f.name in _SKIP or (f.column or "").startswith("MRC|"):
            continue
        yield f


@contextmanager
def serialised_inserts(alias: str):
    """A transaction during which no other process runs a get-or-create on the same database.

    Two importers (or an importer and the loop) must not both find "no identical row" and both
    insert one.  SQLite: the transaction itself takes the write lock at BEGIN (IMMEDIATE mode,
    see setup.py).  MySQL/MariaDB: InnoDB's snapshot reads and MyISAM's lack of transactions both
    allow that race, so a named advisory lock (GET_LOCK, re-entrant) is held from before the
    transaction starts until after it commits.  Wrap a group of inserts that must be atomic in
    this, not in a bare transaction.atomic.
    """
    conn = connections[alias]
    if conn.vendor != "mysql":
        with transaction.atomic(using=alias):
            yield
        return
    key = f"appion-insert:{conn.settings_dict['NAME']}"[:64]
    with conn.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, %s)", [key, LOCK_WAIT_S])
        got = cur.fetchone()[0]
    if got != 1:
        raise DatabaseError(f"another writer held the insert lock on {conn.settings_dict['NAME']} "
                            f"for more than {LOCK_WAIT_S} s")
    try:
        with transaction.atomic(using=alias):
            yield
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT RELEASE_LOCK(%s)", [key])


def insert(model: type[models.Model], **values):
    """Get-or-create like sinedon: returns (row, created).

    Unspecified columns count as NULL when looking for an identical row, exactly as if they
    had been inserted that way.  Text compares exactly (MySQL's default collations would
    call 'Krios' and 'KRIOS ' equal).  Runs under serialised_inserts on the model's database.
    """
    lookup, texts = {}, {}
    for f in _identity_fields(model):
        key = f.attname if f.is_relation else f.name
        given = values.get(f.name, values.get(f.attname))
        if isinstance(given, models.Model):
            given = given.pk
        if given is None:
            lookup[f"{key}__isnull"] = True
        else:
            lookup[key] = given
            if isinstance(given, str):
                texts[f.attname] = given
    alias = alias_for(model)
    with serialised_inserts(alias):
        for existing in model.objects.using(alias).filter(**lookup).order_by("-id").iterator():
            if all(getattr(existing, name) == text for name, text in texts.items()):
                return existing, False
        return model.objects.using(alias).create(**values), True


def newest(model: type[models.Model], **filters):
    """The most recent row matching filters, or None (sinedon queries are newest first)."""
    return model.objects.filter(**filters).order_by("-id").first()
