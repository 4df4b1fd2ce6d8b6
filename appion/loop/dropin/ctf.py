"""The options ctffind4.py and gctf.py share (classic ctfEstimateLoop / gctfEstimateLoop), and their CTF settings.

Data and one pure function; the programs' own tables are in ctffind4.py and gctf.py.
"""
from __future__ import annotations

import argparse

from appion.loop.dropin.options import NotApplied, Opt


def shared_options(*, resmax: float, defstep: float, dast: float, phase_defaults: tuple, engines: tuple[str, ...],
                   res_aliases: bool = False) -> tuple[Opt, ...]:
    """resmax Å, defstep µm, dast µm: the program's defaults.  phase_defaults: (min, max, step) degrees (None:
    the engine's).  res_aliases: also accept old gctf.py's --resL/--resH."""
    low, high, step = phase_defaults
    return (
        Opt(("--ampcontrast",), dict(type=float, default=0.07, metavar="#", help="amplitude contrast (default 0.07)")),
        Opt(("--fieldsize",), dict(type=int, default=1024, metavar="#", help="power spectrum box size, pixels")),
        Opt(("--nominal",), dict(type=float, metavar="µm", help="search around this defocus (µm) instead of the "
                                                                 "image's nominal defocus")),
        Opt(("--resL", "--resmin") if res_aliases else ("--resmin",),
            dict(dest="resmin", type=float, default=50.0, metavar="#", help="low resolution end of the fit, Å")),
        Opt(("--resH", "--resmax") if res_aliases else ("--resmax",),
            dict(dest="resmax", type=float, default=resmax, metavar="#", help="high resolution end of the fit, Å")),
        Opt(("--defstep",), dict(type=float, default=defstep, metavar="#", help="defocus search step, µm")),
        Opt(("--numstep",), dict(type=int, default=25, metavar="#",
                                 help="search the start defocus ∓ defstep × numstep")),
        Opt(("--dast",), dict(type=float, default=dast, metavar="#", help="tolerated astigmatism, µm")),
        Opt(("--ddstackid",), dict(type=int, metavar="#", help="estimate on the aligned images of this ddstack run")),
        Opt(("--bestdb", "--best-database"), dict(dest="bestdb", action="store_true", default=False,
                                                  help="start from the best earlier fit's amplitude contrast, "
                                                       "astigmatism and resolution (recorded in "
                                                       "ApCtfFind4ParamsData.bestdb)"),
            NotApplied("the fit starts from --ampcontrast/--dast and the nominal defocus; bestdb is only recorded")),
        Opt(("--phaseplate", "--phase_plate"), dict(dest="phaseplate", action="store_true", default=False,
                                                    help="also fit the phase shift of a phase plate")),
        Opt(("--min_phase_shift", "--minphaseshift"), dict(dest="min_phase_shift", type=float, default=low,
                                                           metavar="#", help="smallest phase shift searched, degrees")),
        Opt(("--max_phase_shift", "--maxphaseshift"), dict(dest="max_phase_shift", type=float, default=high,
                                                           metavar="#", help="largest phase shift searched, degrees")),
        Opt(("--phase_search_step", "--phasestep"), dict(dest="phase_search_step", type=float, default=step,
                                                         metavar="#", help="phase shift search step, degrees")),
        Opt(("--engine",), dict(default="builtin", choices=engines,
                                help="appion's own estimator (default) or the external program")),
        Opt(("--engine-exe",), dict(help="path of the external program")),
    )


def calc_ctf_settings(args: argparse.Namespace, extra: tuple = ()):
    """CtfSettings from a CTF drop-in's parsed options (unset phase limits: the settings' defaults)."""
    from appion.ctfestimation.records import CtfSettings

    phase = {k: v for k, v in (("min_phase_shift_deg", args.min_phase_shift),
                               ("max_phase_shift_deg", args.max_phase_shift),
                               ("phase_search_step_deg", args.phase_search_step)) if v is not None}
    return CtfSettings(engine=args.engine, amplitude_contrast=args.ampcontrast, fieldsize=args.fieldsize,
                       resmin_A=args.resmin, resmax_A=args.resmax, defstep_um=args.defstep, numstep=args.numstep,
                       dast_um=args.dast, phase_plate=args.phaseplate, bestdb=args.bestdb,
                       exhaustive=getattr(args, "exhaust", False), executable=args.engine_exe,
                       nominal_defocus_um=args.nominal, extra=tuple(extra), threads=args.threads_per_task, **phase)
