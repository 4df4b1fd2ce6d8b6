"""`appion simulate session`: the parser (light); the command is appion.base.simulate.commands."""
from __future__ import annotations

from pathlib import Path

from appion.base.entry import Command


def add_parser(subparsers) -> None:
    sim = subparsers.add_parser("simulate", help="write simulated data with known truth").add_subparsers(
        dest="sim_cmd", required=True)
    ss = sim.add_parser("session", help="a session of movies (+ truth JSON, optional micrographs)")
    ss.add_argument("--out", required=True, type=Path)
    ss.add_argument("--n", type=int, default=12)
    ss.add_argument("--size", type=int, default=1024)
    ss.add_argument("--frames", type=int, default=16)
    ss.add_argument("--apix", type=float, default=1.0)
    ss.add_argument("--kv", type=float, default=300.0)
    ss.add_argument("--cs", type=float, default=2.7)
    ss.add_argument("--dose-per-frame", type=float, default=1.5)
    ss.add_argument("--drift", type=float, default=12.0)
    ss.add_argument("--gain-sigma", type=float, default=0.0)
    ss.add_argument("--bfactor", type=float, default=60.0)
    ss.add_argument("--format", choices=("tiff", "mrc", "both"), default="tiff")
    ss.add_argument("--name", default="sim")
    ss.add_argument("--micrographs", action="store_true")
    ss.add_argument("--seed", type=int, default=0)
    ss.set_defaults(func=Command("appion.base.simulate.commands:cmd_simulate_session", needs_db=False))
