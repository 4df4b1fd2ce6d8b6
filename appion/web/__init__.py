"""`appion serve`: the live web viewer of sessions and exposures (read-only Django app).

Importing this package stays light (it is the `serve` parser): the server and Django load when the
command runs, after appion.cli has called appion.base.db.bootstrap().
"""
from __future__ import annotations

import sys


def cmd_serve(args) -> int:
    from appion.base.db import use_appion_database
    from appion.web.server import serve

    if args.project_id is not None:
        # One appion database per server: the switch is process-wide, so it is made once, before serving.
        use_appion_database(args.project_id)

    def announce(port: int) -> None:
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"appion viewer on http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)

    try:
        serve(args.host, args.port, on_bind=announce)
    except OSError as exc:
        print(f"appion: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="web viewer: sessions, live exposure table, plots (read-only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port; default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--project-id", type=int,
                   help="MySQL: read this project's appion database (default: the configured [database] appion)")
    p.set_defaults(func=cmd_serve)
