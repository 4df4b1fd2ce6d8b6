"""`appion session import`: the parser (light); the command is appion.base.session.commands."""
from __future__ import annotations

from appion.base.entry import Command


def add_parser(subparsers) -> None:
    sess = subparsers.add_parser("session", help="register exposures").add_subparsers(dest="session_cmd", required=True)
    imp = sess.add_parser("import", help="register movies of a directory as a Leginon-like session")
    imp.add_argument("--name", required=True)
    imp.add_argument("--frames-dir", required=True)
    imp.add_argument("--apix", type=float, required=True, help="pixel size in Å (file metadata wins)")
    imp.add_argument("--kv", type=float, required=True)
    imp.add_argument("--cs", type=float, required=True, help="spherical aberration in mm")
    imp.add_argument("--dose", type=float, required=True, help="total dose per exposure in e/Å²")
    imp.add_argument("--gain", help="gain reference (MRC or TIFF)")
    imp.add_argument("--preset", default="en")
    imp.add_argument("--frame-rotate", type=int, default=0, choices=range(4))
    imp.add_argument("--frame-flip", type=int, default=0, choices=(0, 1, 2))
    imp.add_argument("--watch", action="store_true", help="keep registering new movies until SIGTERM")
    imp.add_argument("--interval", type=float, default=1.0, help="seconds between directory scans (--watch)")
    imp.add_argument("--settle", type=float, default=2.0, help="seconds a file must stay unchanged (--watch)")
    imp.set_defaults(func=Command("appion.base.session.commands:cmd_session_import"))
