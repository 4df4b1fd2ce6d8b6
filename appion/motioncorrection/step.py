"""The motion-correction step as data (see appion.base.steps): settings, engines, options, parts.

Light on purpose: reading the step registry (e.g. for `appion loop --help`) imports this module only.
"""
from __future__ import annotations

import argparse

from appion.base.steps import Column, Engine, Lazy, Step, StepError
from appion.motioncorrection.records import MotionSettings

_TASK = "appion.motioncorrection.task"
_ROWS = "appion.motioncorrection.steprows"

ENGINES = {
    "builtin": Engine("builtin", "appion's own global + patch alignment (CPU, numba)",
                      version=Lazy("appion.base.versions", "calc_appion_version"),
                      modules=("appion.base.io.movies", "appion.motioncorrection.align"),
                      warm_up=(Lazy("appion.motioncorrection.align", "warm_up_common_path"),
                               Lazy("appion.motioncorrection.align", "warm_up_other_paths"))),
    "motioncor2": Engine("motioncor2", "UCSF MotionCor2 (GPU; -InMrc/-InTiff/-InEer)",
                         version=Lazy(_TASK, "calc_engine_version"), needs=("gpu",)),
    "motioncor3": Engine("motioncor3", "MotionCor3 (GPU; MotionCor2's options)",
                         version=Lazy(_TASK, "calc_engine_version"), needs=("gpu",)),
    "relion": Engine("relion", "RELION's own implementation (relion_run_motioncorr --use_own, CPU)",
                     version=Lazy(_TASK, "calc_engine_version")),
}


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("motion correction (step 'motion')")
    g.add_argument("--engine-motion", default="builtin", metavar="ENGINE",
                   help="; ".join(f"{k}: {e.description}" for k, e in ENGINES.items()))
    g.add_argument("--motion-exe", help="executable for the motioncor2/motioncor3/relion engines")
    g.add_argument("--bin", type=float, default=1.0, help="binning of the aligned sums")
    g.add_argument("--no-doseweight", dest="doseweight", action="store_false",
                   help="do not write the dose-weighted sum (-DW)")
    g.add_argument("--alignlabel", default="a", help="classic label of the aligned images (<movie>-a, <movie>-a-DW)")
    g.add_argument("--patches", default="0,0", help="local motion patches COLS,ROWS (0,0 = global only)")
    g.add_argument("--eer-grouping", type=int, default=1, metavar="N",
                   help="EER movies: raw frames per aligned fraction (classic --rendered_frame_size; the dose per "
                        "fraction is N raw frames' dose)")
    g.add_argument("--eer-sampling", type=int, default=1, choices=(1, 2, 4),
                   help="EER movies: render at 1 (4096²), 2 (8192²) or 4× the physical pixels")


def settings_from_args(args: argparse.Namespace) -> MotionSettings:
    try:
        cols, rows = (int(x) for x in args.patches.split(","))
    except ValueError:
        raise StepError(f"--patches {args.patches!r} is not COLS,ROWS") from None
    if args.eer_grouping < 1:
        raise StepError(f"--eer-grouping {args.eer_grouping} must be at least 1")
    return MotionSettings(engine=args.engine_motion, bin=args.bin, doseweight=args.doseweight,
                          alignlabel=args.alignlabel, patches=(cols, rows), executable=args.motion_exe,
                          rendered_frame_size=args.eer_grouping, eer_sampling=args.eer_sampling,
                          threads=getattr(args, "threads_per_task", 1))


STEP = Step(
    name="motion",
    title="Motion correction",
    settings_type=MotionSettings,
    engines=ENGINES,
    task=Lazy(_TASK, "run_motion_task"),
    store=Lazy(_ROWS, "store_motion_result"),
    done=Lazy(_ROWS, "retrieve_motion_outputs"),
    store_run=Lazy(_ROWS, "store_motion_run"),
    rundir_kind="ddstack",
    input_kind="movie",
    add_options=add_options,
    settings_from_args=settings_from_args,
    columns=(Column("drift_A", "drift Å", Lazy(_ROWS, "read_total_drift_A"), unit="Å", fmt="{:.1f}"),),
    describe=Lazy(_TASK, "describe_motion_record"),
)
