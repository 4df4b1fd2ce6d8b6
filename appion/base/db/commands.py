"""`appion db init` and `appion db check` (run after appion.base.db.bootstrap())."""
from __future__ import annotations

from appion.base.db.schema import calc_schema_report, create_missing_tables
from appion.base.db.setup import current_config

UNNAMED_APPION = ("no appion database is configured (it is found per project through processingdb), "
                  "so its tables were not {}: set [database] appion to include them")


def cmd_db_init(args) -> int:
    config = current_config()
    created = create_missing_tables()
    where = config.leginon.safe if config.embedded else (
        f"{config.leginon.safe}, {config.project.safe}" + (f", {config.appion.safe}" if config.appion else ""))
    print(f"created {len(created)} tables in {where}" + (f": {', '.join(created)}" if created else ""))
    if config.appion is None and not config.embedded:
        print(UNNAMED_APPION.format("created"))
    return 0


def cmd_db_check(args) -> int:
    report = calc_schema_report()
    if report.unnamed_aliases:
        print(UNNAMED_APPION.format("checked"))
    for alias, tables in report.missing_tables.items():
        for t in tables:
            print(f"missing table {t} ({alias})")
    for table, cols in report.missing_columns.items():
        print(f"table {table} lacks columns: {', '.join(cols)}")
    if report.complete:
        print("schema complete")
        return 0
    return 1
