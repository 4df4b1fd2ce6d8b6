"""`appion ctf estimate`: the parser (light); the implementation is appion.ctfestimation.estimate.

Writes OUT.txt (CTFFIND 4.1 results format), OUT_avrot.txt (CTFFIND-style rotational
averages) and OUT.png (diagnostic plot).
"""
from __future__ import annotations

import argparse
import math
import sys

from appion.base.entry import Command

# Names that lived here before the parser and the implementation were split: still importable from
# this module (imported from appion.ctfestimation.estimate on first use, so the parser stays light).
_MOVED_TO_ESTIMATE = ("CtfOptions", "CtfOutcome", "ENGINE_VERSION", "calc_output_paths", "estimate_ctf_file")


def __getattr__(name: str):
    if name in _MOVED_TO_ESTIMATE:
        from appion.ctfestimation import estimate

        return getattr(estimate, name)
    raise AttributeError(f"module 'appion.ctfestimation.cli' has no attribute {name!r}")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {text}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `ctf` command group (subcommand `estimate`) to an argparse subparsers object."""
    ctf = subparsers.add_parser("ctf", help="CTF estimation")
    sub = ctf.add_subparsers(dest="ctf_command", required=True)
    est = sub.add_parser("estimate", help="estimate the CTF of a micrograph or movie with appion's own engine",
                         description="Estimate defocus, astigmatism (and phase shift) of an MRC micrograph or a "
                                     "movie (MRC stack, TIFF, EER); writes OUT.txt (CTFFIND 4.1 format), "
                                     "OUT_avrot.txt and OUT.png.")
    est.add_argument("image", metavar="IMAGE", help="MRC micrograph, or movie (frames are averaged in groups)")
    est.add_argument("--apix", type=_positive_float, required=True, help="pixel size (Å)")
    est.add_argument("--kv", type=_positive_float, required=True, help="acceleration voltage (kV)")
    est.add_argument("--cs", type=float, required=True, help="spherical aberration (mm)")
    est.add_argument("--ac", type=float, required=True, help="amplitude contrast (fraction, e.g. 0.07)")
    est.add_argument("--box", type=_positive_int, default=512, help="tile size for the spectrum (px, default 512)")
    est.add_argument("--resmin", type=_positive_float, default=30.0, help="lowest resolution fitted (Å, default 30)")
    est.add_argument("--resmax", type=_positive_float, default=5.0, help="highest resolution fitted (Å, default 5)")
    est.add_argument("--dfmin", type=_positive_float, default=5000.0, help="lowest defocus searched (Å)")
    est.add_argument("--dfmax", type=_positive_float, default=50000.0, help="highest defocus searched (Å)")
    est.add_argument("--dfstep", type=_positive_float, default=100.0, help="defocus search step (Å)")
    est.add_argument("--astig-restraint", type=_positive_float, default=None, metavar="A",
                     help="tolerated astigmatism |df1 − df2| (Å); larger values are penalised")
    est.add_argument("--phase-shift", action="store_true", help="also fit an additional phase shift (phase plate)")
    est.add_argument("--phase-min", type=float, default=0.0, metavar="R", help="lowest phase shift searched (rad)")
    est.add_argument("--phase-max", type=float, default=math.pi, metavar="R", help="highest phase shift searched (rad)")
    est.add_argument("--phase-step", type=_positive_float, default=0.1, metavar="R", help="phase search step (rad)")
    est.add_argument("--num-frame-avg", type=_positive_int, default=1, metavar="N",
                     help="movies: average N consecutive frames before computing their spectrum (default 1)")
    est.add_argument("--threads", type=_positive_int, default=1, help="threads for FFTs and numba (default 1)")
    est.add_argument("--no-png", action="store_true", help="do not write the diagnostic PNG")
    est.add_argument("-o", "--output", required=True, metavar="OUT.txt", help="results file (CTFFIND format)")
    est.set_defaults(func=Command("appion.ctfestimation.estimate:cmd_ctf_estimate", needs_db=False))
    return ctf


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (python -m appion.ctfestimation.cli ctf estimate ...)."""
    parser = argparse.ArgumentParser(prog="appion")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
