"""gctf.py: estimate the CTF of images with Gctf's options (one loop run of the CTF step), classic options.

The option table is the union of classic's class chain (appionScript → appionLoop2 → gctfEstimateLoop, in
leginon-org/leginon's versions: --resL/--resH of the early ones, the local-refinement and phase-plate options
of the later ones).
"""
from __future__ import annotations

import argparse

from appion.loop.dropin.common import CLASSIC_PARAM_NAMES, common_groups
from appion.loop.dropin.ctf import shared_options
from appion.loop.dropin.options import Group, NoEffect, OnlyEngines, Opt

PROG = "gctf.py"
ENGINES = ("builtin", "gctf")
GCTF = ("gctf",)
_DIAGNOSTICS = "appion always writes the CTF diagnostic images the web viewer shows"

OWN = (
    Opt(("--local_raster",), dict(dest="raster", type=int, default=200, metavar="#",
                                  help="spacing of the local-refinement boxes, pixels"),
        NoEffect("appion gives Gctf no raster of boxes (--boxsuffix): --do_local_refine refines without one")),
    Opt(("--local_radius",), dict(type=int, default=1024, metavar="#", help="local refinement radius, pixels"),
        OnlyEngines(GCTF, "Gctf --local_radius with --do_local_refine")),
    Opt(("--local_boxsize",), dict(type=int, default=512, metavar="#", help="local refinement box size, pixels"),
        OnlyEngines(GCTF, "Gctf --local_boxsize with --do_local_refine")),
    Opt(("--local_overlap",), dict(type=float, default=0.5, metavar="#", help="overlap of the local boxes"),
        OnlyEngines(GCTF, "Gctf --local_overlap with --do_local_refine")),
    Opt(("--do_EPA",), dict(action="store_true", default=False, help="equiphase averaging"),
        OnlyEngines(GCTF, "Gctf --do_EPA")),
    Opt(("--do_local_refine",), dict(dest="local_refine", action="store_true", default=False,
                                     help="local CTF refinement"), OnlyEngines(GCTF, "Gctf --do_local_refine")),
    Opt(("--do_Hres_ref",), dict(action="store_true", default=False, help="high-resolution refinement"),
        OnlyEngines(GCTF, "Gctf --do_Hres_ref")),
    Opt(("--fastmode",), dict(dest="fastmode", action="store_true", default=True,
                              help="make no CTF display images (classic default)"), NoEffect(_DIAGNOSTICS)),
    Opt(("--slowmode",), dict(dest="fastmode", action="store_false", help="make the CTF display images"),
        NoEffect(_DIAGNOSTICS)),
    Opt(("--ppn",), dict(type=int, default=1, metavar="#", help="processors per node"),
        NoEffect("Gctf runs on a GPU leased per task (--gpuids); --nproc sets the number of workers")),
    Opt(("--mdef_aveN",), dict(type=int, default=1, help="frames averaged for movie CTF refinement (Gctf "
                                                        "--mdef_aveN)"), OnlyEngines(GCTF, "Gctf --mdef_aveN")),
    Opt(("--gpuids",), dict(default="0", help="appion: GPUs the Gctf tasks lease, one per task, e.g. 0,1"),
        OnlyEngines(GCTF, "GPU leases")),
)


def groups() -> tuple[Group, ...]:
    shared = shared_options(resmax=4.0, defstep=0.05, dast=1000.0, phase_defaults=(None, None, None),
                            engines=ENGINES, res_aliases=True)
    return common_groups(image_choice=True) + (("CTF estimation with Gctf (classic gctf.py)", shared + OWN),)


def calc_parser():
    from appion.loop.dropin.options import build_parser

    return build_parser(PROG, "Estimate the CTF of images with Gctf (classic Appion drop-in).", groups())


def calc_gctf_extra(args: argparse.Namespace) -> tuple:
    """Gctf's own options (GctfParams fields) for the gctf engine; nothing for the built-in one."""
    if args.engine != "gctf":
        return ()
    return (("do_EPA", args.do_EPA), ("do_local_refine", args.local_refine), ("do_Hres_ref", args.do_Hres_ref),
            ("mdef_aveN", args.mdef_aveN), ("local_radius_px", args.local_radius),
            ("local_boxsize_px", args.local_boxsize), ("local_overlap", args.local_overlap))


def main(argv: list[str] | None = None) -> int:
    from appion.loop.dropin.ctf import calc_ctf_settings
    from appion.loop.dropin.run import Program, run_program

    program = Program(PROG, "gctf", ("ctf",), groups(), calc_parser, CLASSIC_PARAM_NAMES)
    return run_program(program, argv, lambda args, given: {"ctf": calc_ctf_settings(args, calc_gctf_extra(args))})
