"""Django fields that produce sinedon's column names and types.

sinedon (Leginon's ORM) maps str → TEXT, float → DOUBLE, bool → TINYINT(1), int → INT,
references → INT columns named `REF|<Class>|<field>` (or `REF|<module>|<Class>|<field>`
across databases), dicts → `SUBD|<field>|<key>`, lists → `SEQ|<field>` TEXT holding a
Python literal, images → `MRC|<field>` TEXT holding a file name.  Every column is nullable.
"""
from __future__ import annotations

import ast

from django.db import models
from django.db.models.functions import Now


class SinedonModel(models.Model):
    """DEF_id primary key, DEF_timestamp creation time, newest first."""

    SINEDON_MODULE = "appiondata"
    id = models.AutoField(primary_key=True, db_column="DEF_id")
    # db_default: rows inserted by Leginon/classic Appion (which never name DEF_timestamp) into a
    # table appion created still get a time, as sinedon's TIMESTAMP DEFAULT CURRENT_TIMESTAMP gives.
    timestamp = models.DateTimeField(db_column="DEF_timestamp", auto_now_add=True, db_default=Now())

    class Meta:
        abstract = True
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{type(self).__name__}#{self.id}"


def text(column: str | None = None) -> models.TextField:
    return models.TextField(db_column=column, null=True, blank=True)


def real(column: str | None = None) -> models.FloatField:
    return models.FloatField(db_column=column, null=True, blank=True)


def integer(column: str | None = None) -> models.IntegerField:
    return models.IntegerField(db_column=column, null=True, blank=True)


def boolean(column: str | None = None) -> models.BooleanField:
    return models.BooleanField(db_column=column, null=True, blank=True)


def subd(field: str, key: str, kind: str = "int"):
    """A flattened dict entry `SUBD|field|key`."""
    column = f"SUBD|{field}|{key}"
    return {"int": integer, "float": real, "str": text, "bool": boolean}[kind](column)


def seq(field: str) -> models.TextField:
    """A list stored as a Python literal in `SEQ|field` (read it with parse_seq, never eval)."""
    return text(f"SEQ|{field}")


def mrc(field: str = "image") -> models.TextField:
    return text(f"MRC|{field}")


def ref(to: str, field: str, module: str | None = None, name: str | None = None) -> models.ForeignKey:
    """A sinedon reference: an INT holding the other row's DEF_id, no database constraint.

    to: the referenced model (e.g. "SessionData"); module: the referenced database's
    sinedon module when it differs from the referencing model's ("leginondata"); name: the
    class name written in the column when it is not the model's (projectdata uses table
    names, e.g. `REF|projects|project`).
    """
    label = name or to
    column = f"REF|{module}|{label}|{field}" if module else f"REF|{label}|{field}"
    return models.ForeignKey(f"sinedon.{to}", db_column=column, null=True, blank=True,
                             on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")


def ref_id(to: str, field: str, module: str | None = None) -> models.IntegerField:
    """A reference to a table appion does not model (kept as the raw DEF_id)."""
    column = f"REF|{module}|{to}|{field}" if module else f"REF|{to}|{field}"
    return integer(column)


class SeqError(ValueError):
    """A SEQ| column does not hold a plain literal list."""


_ALLOWED = (int, float, str, bool, type(None))


def parse_seq(value: str | None) -> list | None:
    """Parse a `SEQ|` column safely: literals only (lists/tuples of numbers, strings, nested)."""
    if value is None or value == "":
        return None
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise SeqError(f"SEQ value {value[:80]!r} is not a literal list: {exc}") from None

    def check(v):
        if isinstance(v, (list, tuple)):
            return [check(x) for x in v]
        if isinstance(v, _ALLOWED):
            return v
        raise SeqError(f"SEQ value {value[:80]!r} holds a {type(v).__name__}, not a number or string")

    if not isinstance(parsed, (list, tuple)):
        raise SeqError(f"SEQ value {value[:80]!r} is not a list")
    return check(parsed)


def format_seq(values) -> str | None:
    """The literal text sinedon stores for a list (None stays NULL)."""
    if values is None:
        return None

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if hasattr(v, "item"):  # numpy scalar
            return v.item()
        return v

    return repr(plain(list(values)))
