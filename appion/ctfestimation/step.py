"""The CTF-estimation step as data (see appion.base.steps): settings, engines, options, parts.

Light on purpose: reading the step registry (e.g. for `appion loop --help`) imports this module only.
CTF runs on the motion step's aligned (dose-weighted) sum when motion is part of the run, else on the
exposure's own image.
"""
from __future__ import annotations

import argparse

from appion.base.steps import Column, Engine, Lazy, Step
from appion.ctfestimation.records import CtfSettings

_TASK = "appion.ctfestimation.task"
_ROWS = "appion.ctfestimation.steprows"

ENGINES = {
    "builtin": Engine("builtin", "appion's own estimator (tiled spectrum, 1D search + 2D refinement)",
                      version=Lazy("appion.base.versions", "calc_appion_version"),
                      modules=("appion.ctfestimation.estimate",),
                      warm_up=(Lazy("appion.ctfestimation.estimate", "warm_up_common_path"),
                               Lazy("appion.ctfestimation.estimate", "warm_up_phase_search"))),
    "ctffind4": Engine("ctffind4", "CTFFIND 4/5 driven through its prompts",
                       version=Lazy(_TASK, "calc_engine_version")),
    "gctf": Engine("gctf", "Gctf (GPU)", version=Lazy(_TASK, "calc_engine_version"), needs=("gpu",)),
}


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CTF estimation (step 'ctf')")
    g.add_argument("--engine-ctf", default="builtin", metavar="ENGINE",
                   help="; ".join(f"{k}: {e.description}" for k, e in ENGINES.items()))
    g.add_argument("--ctf-exe", help="executable for the ctffind4/gctf engines")
    g.add_argument("--ampcontrast", type=float, default=0.07, help="amplitude contrast (fraction)")
    g.add_argument("--fieldsize", type=int, default=512, help="spectrum tile size, pixels")
    g.add_argument("--resmin", type=float, default=30.0, help="lowest resolution fitted, Å")
    g.add_argument("--resmax", type=float, default=5.0, help="highest resolution fitted, Å")
    g.add_argument("--defocus-min", type=float, default=0.5, help="defocus search minimum, µm")
    g.add_argument("--defocus-max", type=float, default=5.0, help="defocus search maximum, µm")


def settings_from_args(args: argparse.Namespace) -> CtfSettings:
    return CtfSettings(engine=args.engine_ctf, amplitude_contrast=args.ampcontrast, fieldsize=args.fieldsize,
                       resmin_A=args.resmin, resmax_A=args.resmax, defocus_min_A=args.defocus_min * 1e4,
                       defocus_max_A=args.defocus_max * 1e4, executable=args.ctf_exe,
                       threads=getattr(args, "threads_per_task", 1))


STEP = Step(
    name="ctf",
    title="CTF estimation",
    settings_type=CtfSettings,
    engines=ENGINES,
    task=Lazy(_TASK, "run_ctf_task"),
    store=Lazy(_ROWS, "store_ctf_result"),
    done=Lazy(_ROWS, "retrieve_ctf_outputs"),
    store_run=Lazy(_ROWS, "store_ctf_run"),
    rundir_kind="ctf",
    optional_upstream=("motion",),
    add_options=add_options,
    settings_from_args=settings_from_args,
    columns=(Column("defocus_um", "defocus µm", Lazy(_ROWS, "read_mean_defocus_um"), unit="µm", fmt="{:.3f}"),
             Column("fit_A", "CTF fit Å", Lazy(_ROWS, "read_fit_resolution_A"), unit="Å", fmt="{:.1f}")),
    describe=Lazy(_TASK, "describe_ctf_record"),
)
