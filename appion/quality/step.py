"""The quality step as data (see appion.base.steps): per-exposure quality metrics and curation.

Light on purpose: reading the step registry (e.g. for `appion loop --help`) imports this module only.
Per exposure: total/early/late drift (from the motion step's trajectory), CTF fit resolution and
astigmatism (from the CTF step), sample tilt (defocus per tile), relative ice thickness and crystalline
ice, and the sanity of the aligned sum; stored in ApQualityData.  An exposure above a threshold (options
below, or the config file's [curation] table, read again while the loop runs) is rejected with the
reason: hidden in Leginon's ViewerImageStatus, and the steps after this one skip it.
"""
from __future__ import annotations

import argparse

from appion.base.steps import Column, Engine, Lazy, Step, StepError
from appion.quality.records import THRESHOLD_KEYS, QualitySettings, Thresholds

_TASK = "appion.quality.task"
_ROWS = "appion.quality.steprows"

ENGINES = {
    "builtin": Engine("builtin", "appion's own measures (per-tile defocus, ice band, image sanity)",
                      version=Lazy("appion.base.versions", "calc_appion_version"),
                      modules=("appion.quality.task", "appion.quality.calc.internal.tilt")),
}


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quality and curation (step 'quality'; thresholds also in the config's "
                             "[curation] table, which wins and is read again when the file changes)")
    g.add_argument("--engine-quality", default="builtin", metavar="ENGINE",
                   help="; ".join(f"{k}: {e.description}" for k, e in ENGINES.items()))
    g.add_argument("--quality-tiles", type=int, default=0, metavar="N",
                   help="tiles per side for the tilt fit (0: 3-5 from the field of view)")
    g.add_argument("--max-ctf-resolution", type=float, metavar="Å", help="reject a CTF fit worse than this")
    g.add_argument("--max-total-drift", type=float, metavar="Å", help="reject a total drift above this")
    g.add_argument("--max-astigmatism", type=float, metavar="Å", help="reject |defocus1 − defocus2| above this")
    g.add_argument("--max-ice-thickness", type=float, metavar="REL",
                   help="reject a relative ice thickness above this (1 = no water ring)")
    g.add_argument("--max-tilt", type=float, metavar="DEG", help="reject a sample tilt above this")
    g.add_argument("--reject-crystalline-ice", action="store_true", help="reject exposures with crystalline ice")


def settings_from_args(args: argparse.Namespace) -> QualitySettings:
    values = {}
    for key, name in THRESHOLD_KEYS.items():
        value = getattr(args, key)
        if name != "reject_crystalline_ice" and value is not None and not value > 0:
            raise StepError(f"--{key.replace('_', '-')} must be > 0, got {value}")
        values[name] = value
    if args.quality_tiles < 0 or args.quality_tiles == 1:
        raise StepError(f"--quality-tiles must be 0 (automatic) or ≥ 2, got {args.quality_tiles}")
    return QualitySettings(engine=args.engine_quality, tiles=args.quality_tiles,
                           thresholds=Thresholds(**values),
                           threads=getattr(args, "threads_per_task", 1))


STEP = Step(
    name="quality",
    title="Quality and curation",
    settings_type=QualitySettings,
    engines=ENGINES,
    task=Lazy(_TASK, "run_quality_task"),
    store=Lazy(_ROWS, "store_quality_result"),
    done=Lazy(_ROWS, "retrieve_quality_outputs"),
    store_run=Lazy(_ROWS, "store_quality_run"),
    rundir_kind="quality",
    depends_on=("ctf",),
    optional_upstream=("motion",),
    add_options=add_options,
    settings_from_args=settings_from_args,
    columns=(Column("total_drift_A", "total drift Å", Lazy(_ROWS, "read_total_drift_A"), unit="Å", fmt="{:.1f}"),
             Column("ctf_resolution_A", "CTF res Å", Lazy(_ROWS, "read_ctf_resolution_A"), unit="Å",
                    fmt="{:.1f}"),
             Column("tilt_deg", "tilt °", Lazy(_ROWS, "read_tilt_deg"), unit="°", fmt="{:.1f}"),
             Column("ice_thickness", "rel. ice", Lazy(_ROWS, "read_ice_thickness"), fmt="{:.3f}"),
             Column("rejected", "rejected", Lazy(_ROWS, "read_rejected_reason"), fmt="{}")),
    describe=Lazy(_TASK, "describe_quality_record"),
)
