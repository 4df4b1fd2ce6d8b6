"""ctffind4.py: estimate the CTF of images (one loop run of the CTF step), classic options.

The option table is the union of classic's class chain (appionScript → appionLoop2 → ctfEstimateLoop, in
leginon-org/leginon's versions and nysbc/appion's).
"""
from __future__ import annotations

from appion.loop.dropin.common import CLASSIC_PARAM_NAMES, common_groups
from appion.loop.dropin.ctf import shared_options
from appion.loop.dropin.options import Group, NoEffect, OnlyEngines, Opt

PROG = "ctffind4.py"
ENGINES = ("builtin", "ctffind4")

OWN = (
    Opt(("--exhaust", "--exhaustive-search"), dict(dest="exhaust", action="store_true", default=False,
                                                   help="slower, more exhaustive astigmatism search"),
        OnlyEngines(("ctffind4",), "CTFFIND4's 'Slower, more exhaustive search?'")),
    Opt(("--num_frame_avg",), dict(type=int, default=7, help="frames averaged for a CTF estimate on a movie"),
        NoEffect("appion estimates the CTF of the aligned sums, not of movie frames")),
    Opt(("--newnominal",), dict(action="store_true", default=False, help="old ctffind4.py option"),
        NoEffect("the search is centred on --nominal when given, else on the image's nominal defocus")),
    Opt(("--apix_man",), dict(type=float, metavar="#", help="pixel size to use instead of the database's, Å"),
        NoEffect("the pixel size comes from each image's Leginon calibration")),
    Opt(("--bin",), dict(type=int, default=1, metavar="#", help="old ctffind4.py: binning"),
        NoEffect("the CTF is estimated at the image's sampling; --fieldsize sets the spectrum size")),
)


def groups() -> tuple[Group, ...]:
    shared = shared_options(resmax=15.0, defstep=0.1, dast=100.0, phase_defaults=(10.0, 170.0, 10.0), engines=ENGINES)
    return common_groups(image_choice=True) + (("CTF estimation (classic ctffind4.py)", shared + OWN),)


def calc_parser():
    from appion.loop.dropin.options import build_parser

    return build_parser(PROG, "Estimate the CTF of images (classic Appion drop-in).", groups())


def main(argv: list[str] | None = None) -> int:
    from appion.loop.dropin.ctf import calc_ctf_settings
    from appion.loop.dropin.run import Program, run_program

    program = Program(PROG, "ctffind4", ("ctf",), groups(), calc_parser, CLASSIC_PARAM_NAMES)
    return run_program(program, argv, lambda args, given: {"ctf": calc_ctf_settings(args)})
