"""makeDDAlignMotionCor2_UCSF.py: align movie frames (one loop run of the motion step), classic options.

The option table is the union of classic's class chain (appionScript → appionLoop2 → apDDLoop.DDStackLoop →
apDDStackMaker.FrameStackLoop → apDDAlignStackMaker.AlignStackLoop → apDDMotionCorrMaker.MotionCorrAlignStackLoop
→ MotionCor2UCSFAlignStackLoop, in leginon-org/leginon and nysbc/appion).  classic's DD loops remove
appionLoop2's --reprocess and --uncorrected, so this program has neither.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from appion.loop.dropin.common import CLASSIC_PARAM_NAMES, common_groups
from appion.loop.dropin.options import Group, NoEffect, NotApplied, OnlyEngines, Opt

PROG = "makeDDAlignMotionCor2_UCSF.py"
ENGINES = ("builtin", "motioncor2", "motioncor3", "relion")
MC2 = ("motioncor2", "motioncor3")
_OVERRIDE = ("the motion step takes the gain reference, its orientation and the defects from the session's "
             "Leginon records (CameraEMData, NormImageData, CorrectorPlanData)")

# apDDLoop.DDStackLoop
DD_LOOP = (
    Opt(("--no-keepstack",), dict(dest="keepstack", action="store_false", default=False,
                                  help="keep no frame stack (appion never writes one)")),
    Opt(("--keepstack",), dict(dest="keepstack", action="store_true", help="keep the aligned frame stack"),
        NoEffect("appion writes the aligned sums only, no frame stack (classic MotionCor2 UCSF turns it off too)")),
    Opt(("--tempdir",), dict(metavar="PATH", help="local directory for temporary files"),
        NoEffect("outputs are written under hidden temporary names next to their final place, then renamed")),
    Opt(("--stackid",), dict(type=int, metavar="INT", help="only the images of this particle stack"),
        NoEffect("appion's particle stacks have no per-particle image rows to restrict a frame alignment by")),
    Opt(("--bin",), dict(type=float, default=1.0, metavar="#", help="binning of the aligned sums (float)")),
    Opt(("--gpuid",), dict(type=int, default=0, metavar="INT",
                           help="the GPU of GPU engines when --gpuids is not given"), OnlyEngines(MC2, "GPU leases")),
    Opt(("--ddstartframe",), dict(dest="startframe", type=int, default=0,
                                  help="first frame summed (the first frame is 0)")),
    Opt(("--ddnframe",), dict(dest="nframe", type=int, help="number of frames summed (default: all from the first)")),
    Opt(("--alignlabel",), dict(default="a", metavar="CHAR",
                                help="label of the aligned images: preset en gives en-a (and en-a-DW)")),
    Opt(("--alignoffset",), dict(dest="fod", type=int, default=2, help="dosefgpu_driftcorr frame offset (-fod)"),
        NoEffect("a dosefgpu_driftcorr option; appion's engines align without a frame offset")),
    Opt(("--alignbfactor",), dict(dest="bft", type=float, default=100.0,
                                  help="dosefgpu_driftcorr B-factor in pixel² (-bft)"),
        NoEffect("a dosefgpu_driftcorr option; use --Bft_global/--Bft_local (Å²)")),
    Opt(("--alignccbox",), dict(dest="pbx", type=int, default=128, help="dosefgpu_driftcorr CC search box (-pbx)"),
        NoEffect("a dosefgpu_driftcorr option; appion's engines search shifts over the whole correlation")),
    Opt(("--doseweight",), dict(action="store_true", default=False,
                                help="also write the dose-weighted sum (<movie>-a-DW)")),
    Opt(("--totaldose",), dict(type=float, metavar="float", help="total dose of the movie in e/Å² (default: the "
                                                                   "preset's dose)")),
)

# apDDStackMaker.FrameStackLoop (+ options the issue found in classic command lines)
FRAME_STACK = (
    Opt(("--rawarea",), dict(action="store_true", default=False, help="use the full raw frame area"),
        NoEffect("movies are aligned over their full recorded area")),
    Opt(("--useGS",), dict(action="store_true", default=False, help="Gram-Schmidt scaling of the dark image"),
        NoEffect("appion has no Gram-Schmidt dark scaling: frames are corrected with the gain reference")),
    Opt(("--square",), dict(action="store_true", default=False, help="square output images"),
        NoEffect("the aligned sums keep the movie's shape")),
    Opt(("--no-cyclechannels",), dict(dest="cyclechannels", action="store_false", default=True,
                                      help="one reference channel for gain/dark correction"),
        NoEffect("appion uses one gain reference per exposure (no reference channels)")),
    Opt(("--compress",), dict(action="store_true", default=False, help="compress the raw frames afterwards"),
        NoEffect("appion never compresses, moves or changes the raw movies")),
    Opt(("--forceTiff",), dict(action="store_true", default=False, help="treat the raw frames as TIFF"),
        NoEffect("appion reads each movie in the format it was written (MRC, TIFF or EER, by its content)")),
    Opt(("--override_db",), dict(action="store_true", default=False,
                                 help="use --bad_cols/--bad_rows/--flipgain instead of the database's")),
    Opt(("--framepath",), dict(metavar="PATH", help="read the movies from this directory")),
    Opt(("--refimgid",), dict(type=int, metavar="INT", help="gain/dark-correct with the references of this image"),
        NotApplied(_OVERRIDE)),
    Opt(("--trim",), dict(type=int, default=0, metavar="INT", help="trim this many pixels off the edges"),
        NoEffect("the aligned sums keep the full frame")),
    Opt(("--clip",), dict(type=int, metavar="INT", help="clip pixels of the raw frames (padded with the mean)"),
        NotApplied("the motion step corrects defects from the session's corrector plan only")),
    Opt(("--bad_cols",), dict(default="", metavar="LIST",
                              help="bad columns of the raw frames, e.g. 12,400 (with --override_db: instead of the "
                                   "corrector plan's)")),
    Opt(("--bad_rows",), dict(default="", metavar="LIST",
                              help="bad rows of the raw frames (with --override_db: instead of the corrector plan's)")),
    Opt(("--flipgain",), dict(action="store_true", default=False,
                              help="flip the gain reference top to bottom (with --override_db: instead of the "
                                   "camera's frame flip)")),
    Opt(("--rotgain",), dict(type=int, metavar="N", help="rotate the gain reference by N × 90° (instead of the "
                                                          "camera's frame rotation)")),
    Opt(("--gainfile",), dict(metavar="MRC", help="gain reference to use instead of the session's")),
)

# apDDAlignStackMaker.AlignStackLoop, apDDMotionCorrMaker.MotionCorrAlignStackLoop
ALIGN = (
    Opt(("--align",), dict(action="store_true", default=False, help="align the frames (appion always does)")),
    Opt(("--defergpu",), dict(action="store_true", default=False,
                              help="make the unaligned frame stack now, align later on a GPU host"),
        NoEffect("appion aligns straight from the movie; there is no unaligned frame stack to defer")),
)

# makeDDAlignMotionCor2_UCSF.MotionCor2UCSFAlignStackLoop
UCSF = (
    Opt(("--gpuids",), dict(default="0", help="GPUs this run's tasks lease, one per task, e.g. 0,1 (default: "
                                              "--gpuid)"), OnlyEngines(MC2, "GPU leases")),
    Opt(("--nrw",), dict(type=int, default=1, metavar="INT",
                         help="frames in the running average window (MotionCor2 -Group)"),
        OnlyEngines(MC2 + ("relion",), "grouping of frames")),
    Opt(("--FmRef",), dict(type=int, default=0, metavar="#", help="reference frame (MotionCor2 -FmRef)"),
        OnlyEngines(MC2, "MotionCor2 -FmRef")),
    Opt(("--Iter",), dict(type=int, default=7, help="maximum alignment iterations (MotionCor2 -Iter)"),
        OnlyEngines(MC2, "MotionCor2 -Iter")),
    Opt(("--Tol",), dict(type=float, default=0.5, metavar="#", help="alignment tolerance in pixels (MotionCor2 -Tol)"),
        OnlyEngines(MC2, "MotionCor2 -Tol")),
    Opt(("--Patchrows",), dict(type=int, default=0, metavar="#", help="patches along y (0: whole frame)")),
    Opt(("--Patchcols",), dict(type=int, default=0, metavar="#", help="patches along x (0: whole frame)")),
    Opt(("--MaskCentrow",), dict(type=float, default=0.0, metavar="#", help="y centre of the alignment area"),
        OnlyEngines(MC2, "MotionCor2 -MaskCent")),
    Opt(("--MaskCentcol",), dict(type=float, default=0.0, metavar="#", help="x centre of the alignment area"),
        OnlyEngines(MC2, "MotionCor2 -MaskCent")),
    Opt(("--MaskSizecols",), dict(type=float, default=1.0, metavar="#", help="x size of the alignment area (1: all)"),
        OnlyEngines(MC2, "MotionCor2 -MaskSize")),
    Opt(("--MaskSizerows",), dict(type=float, default=1.0, metavar="#", help="y size of the alignment area (1: all)"),
        OnlyEngines(MC2, "MotionCor2 -MaskSize")),
    Opt(("--Bft_global",), dict(type=float, default=500.0, metavar="#", help="global B-factor, Å² (default 500)")),
    Opt(("--Bft_local",), dict(type=float, default=150.0, metavar="#", help="local B-factor, Å² (default 150)")),
    Opt(("--force_cpu_flat",), dict(action="store_true", default=False, help="flat-field correct on the CPU"),
        NoEffect("appion applies the gain reference itself (built-in engine) or hands it to the program")),
    Opt(("--rendered_frame_size",), dict(type=int, default=1, metavar="INT",
                                         help="EER: raw frames summed into one rendered frame")),
    Opt(("--eer_sampling",), dict(type=int, default=1, metavar="INT", help="EER: upsampling (1 or 2)")),
    Opt(("--engine",), dict(default="builtin", choices=ENGINES,
                            help="appion's own alignment (default) or the external program")),
    Opt(("--engine-exe",), dict(help="path of the external program")),
)


def groups() -> tuple[Group, ...]:
    return common_groups(image_choice=False) + (
        ("frame alignment (classic apDDLoop, apDDStackMaker, apDDAlignStackMaker)", DD_LOOP + FRAME_STACK + ALIGN),
        ("MotionCor2 (classic makeDDAlignMotionCor2_UCSF.py)", UCSF))


def calc_parser():
    from appion.loop.dropin.options import build_parser

    return build_parser(PROG, "Align movie frames (classic Appion drop-in).", groups())


def calc_motion_settings(args: argparse.Namespace):
    from appion.motioncorrection.records import MotionSettings

    mask_center = (args.MaskCentcol, args.MaskCentrow)
    mask_size = (args.MaskSizecols, args.MaskSizerows)
    return MotionSettings(
        engine=args.engine, bin=args.bin, doseweight=args.doseweight, alignlabel=args.alignlabel,
        ddstartframe=args.startframe, ddnframe=args.nframe, total_dose_e_per_A2=args.totaldose,
        patches=(args.Patchcols, args.Patchrows), bfactor_global_A2=args.Bft_global, bfactor_local_A2=args.Bft_local,
        iterations=args.Iter, tolerance_px=args.Tol, group=args.nrw, eer_sampling=args.eer_sampling,
        rendered_frame_size=args.rendered_frame_size, executable=args.engine_exe, frame_ref=args.FmRef,
        mask_center=mask_center if mask_center != (0.0, 0.0) else None,
        mask_size=mask_size if mask_size != (1.0, 1.0) else None, threads=args.threads_per_task,
        gain_path=str(Path(args.gainfile).resolve()) if args.gainfile else None, gain_rotate=args.rotgain,
        gain_flip=1 if args.flipgain else (0 if args.override_db else None),
        bad_rows=_defect_list(args.bad_rows) if args.override_db else None,
        bad_cols=_defect_list(args.bad_cols) if args.override_db else None,
        frames_dir=str(Path(args.framepath).resolve()) if args.framepath else None)


def _defect_list(text: str) -> str:
    """Classic --bad_rows/--bad_cols ("12,400" or "12 400") as the corrector plan's literal list ("[12, 400]")."""
    values = [v for v in text.replace(",", " ").split() if v]
    for v in values:
        if not v.isdigit():
            raise SystemExit(f"{PROG}: error: bad row/column {v!r} is not a non-negative whole number")
    return "[" + ", ".join(values) + "]"


def main(argv: list[str] | None = None) -> int:
    from appion.loop.dropin.run import Program, run_program

    program = Program(PROG, "makeddalignmotioncor2_ucsf", ("motion",), groups(), calc_parser, CLASSIC_PARAM_NAMES)
    return run_program(program, argv, lambda args, given: {"motion": calc_motion_settings(args)})
