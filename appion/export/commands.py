"""What `appion export relion` does (imported when it runs, after appion.base.db.bootstrap())."""
from __future__ import annotations

import sys


def cmd_export_relion(args) -> int:
    from appion.base.db import use_appion_database
    from appion.export.calc import ExportError
    from appion.export.relion import export_relion

    if args.project_id is not None:
        use_appion_database(args.project_id)
    try:
        report = export_relion(args.session, args.out, runname=args.run, include_rejected=args.include_rejected,
                               relative_to=args.relative_to)
    except ExportError as exc:
        print(f"appion: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line, flush=True)
    return 0
