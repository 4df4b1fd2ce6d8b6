"""Create missing tables; report what is missing.  Existing tables are never altered or dropped.

A site pointing appion at its live Leginon/Appion databases must keep every table exactly
as it is, so `db init` only ever issues CREATE TABLE for tables that do not exist yet.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.apps import apps
from django.db import DatabaseError, connections

from appion.base.db.router import alias_for


@dataclass
class SchemaReport:
    """Per database alias: tables missing entirely, and columns missing from existing tables."""

    missing_tables: dict[str, list[str]] = field(default_factory=dict)
    missing_columns: dict[str, list[str]] = field(default_factory=dict)  # "table" -> columns
    unnamed_aliases: list[str] = field(default_factory=list)  # no database configured (appion via processingdb)

    @property
    def complete(self) -> bool:
        return not any(self.missing_tables.values()) and not self.missing_columns


def all_models():
    return [m for m in apps.get_app_config("sinedon").get_models() if not m._meta.abstract]


def expected_columns(model) -> list[str]:
    return [f.column for f in model._meta.concrete_fields]


def calc_schema_report(alias: str | None = None) -> SchemaReport:
    """Missing tables and columns per database alias (alias: only that one)."""
    report = SchemaReport()
    by_alias: dict[str, list] = {}
    for model in all_models():
        by_alias.setdefault(alias_for(model), []).append(model)
    for name, models in by_alias.items():
        if alias is not None and name != alias:
            continue
        conn = connections[name]
        if not conn.settings_dict["NAME"]:
            report.unnamed_aliases.append(name)
            continue
        with conn.cursor() as cur:
            tables = set(conn.introspection.table_names(cur))
            missing = []
            for model in models:
                table = model._meta.db_table
                if table not in tables:
                    missing.append(table)
                    continue
                have = {c.name for c in conn.introspection.get_table_description(cur, table)}
                lacking = [c for c in expected_columns(model) if c not in have]
                if lacking:
                    report.missing_columns[table] = lacking
            report.missing_tables[name] = missing
    return report


def create_missing_tables(alias: str | None = None) -> list[str]:
    """CREATE TABLE for every model whose table does not exist (alias: only that database's models); returns
    the tables created.  A table another process created meanwhile is left as it is."""
    created = []
    report = calc_schema_report(alias)
    missing = {(name, t) for name, ts in report.missing_tables.items() for t in ts}
    for model in all_models():
        name = alias_for(model)
        if (name, model._meta.db_table) not in missing:
            continue
        conn = connections[name]
        try:
            with conn.schema_editor() as editor:
                editor.create_model(model)
        except DatabaseError:
            with conn.cursor() as cur:
                if model._meta.db_table not in conn.introspection.table_names(cur):
                    raise
            continue  # created by another process between the check and ours
        created.append(model._meta.db_table)
    return created
