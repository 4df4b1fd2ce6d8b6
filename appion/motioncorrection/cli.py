"""`appion motion align`: the parser (light); the implementation is appion.motioncorrection.align.

    appion motion align MOVIE --apix A [--gain G [--gain-rotate N] [--gain-flip [1|2]]]
        [--defects FILE] [--patch COLS ROWS] [--bin F] [--dose-per-frame E --kv KV]
        [--first-frame N] [--last-frame N] [--eer-grouping N] [--eer-sampling S]
        [--bfactor-global B] [--bfactor-local B] [--threads N] [--appion-log] -o OUT.mrc

Writes OUT.mrc (aligned sum), OUT_DW.mrc (exposure weighted, with a dose), OUT.star (RELION
motion STAR), OUT_shifts.png (drift plot) and with --appion-log OUT_st_Log.txt; all or none.
Frame numbers on the command line are 0-based and inclusive (like classic --ddstartframe).
"""
from __future__ import annotations

import argparse
import sys

from appion.base.entry import Command

# Names that lived here before the parser and the implementation were split: still importable from
# this module (imported from appion.motioncorrection.align on first use, so the parser stays light).
_MOVED_TO_ALIGN = ("MotionOptions", "MotionOutcome", "align_movie_file", "calc_options", "calc_output_paths",
                   "calc_dose_factor", "check_options", "cmd_motion_align", "BackgroundIterator",
                   "set_malloc_keeps_freed_memory", "set_numpy_hugepage_advice", "set_thread_limits")


def __getattr__(name: str):
    if name in _MOVED_TO_ALIGN:
        from appion.motioncorrection import align

        return getattr(align, name)
    raise AttributeError(f"module 'appion.motioncorrection.cli' has no attribute {name!r}")


def _gain_flip(text: str) -> int:
    value = int(text)
    if value not in (0, 1, 2):
        raise argparse.ArgumentTypeError("must be 0, 1 (upside down) or 2 (left-right)")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `motion` command group (subcommand `align`) to an argparse subparsers object."""
    motion = subparsers.add_parser("motion", help="motion correction of movies")
    sub = motion.add_subparsers(dest="motion_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("align", help="align and sum one movie with appion's own engine",
                       description="Align the frames of MOVIE (MRC, TIFF or EER) and write the aligned sum, "
                                   "RELION motion STAR file and drift plot.")
    p.add_argument("movie", help="movie file (.mrc, .tif/.tiff, .eer)")
    p.add_argument("-o", "--output", required=True, help="output sum OUT.mrc (other outputs are named after it)")
    p.add_argument("--apix", type=float, required=True, help="pixel size of the movie frames (Å)")
    p.add_argument("--gain", help="gain reference (MRC/TIFF): corrected = raw × gain")
    p.add_argument("--gain-rotate", type=int, default=0, choices=(0, 1, 2, 3),
                   help="counter-clockwise quarter turns applied to the gain (MotionCor2 -RotGain)")
    p.add_argument("--gain-flip", type=_gain_flip, nargs="?", const=1, default=0,
                   help="flip the gain after rotating: 1 upside down (bare flag), 2 left-right (MotionCor2 -FlipGain)")
    p.add_argument("--defects", help="defect map (MRC/TIFF, nonzero = bad pixel), frame-sized")
    p.add_argument("--patch", type=int, nargs=2, metavar=("COLS", "ROWS"),
                   help="local alignment on a COLS × ROWS patch grid (e.g. 5 5)")
    p.add_argument("--bin", type=float, default=1.0, help="Fourier binning of the output sums (default 1)")
    p.add_argument("--dose-per-frame", type=float, help="e/Å² per frame: also write OUT_DW.mrc (exposure weighted)")
    p.add_argument("--kv", type=float, help="accelerating voltage in kV (200 or 300), needed with --dose-per-frame")
    p.add_argument("--pre-exposure", type=float, default=0.0, help="e/Å² before the first frame (default 0)")
    p.add_argument("--first-frame", type=int, default=0, help="first frame to use (0-based, default 0)")
    p.add_argument("--last-frame", type=int, help="last frame to use (0-based, inclusive; default the last)")
    p.add_argument("--eer-grouping", type=int, default=1, help="EER raw frames per fraction (default 1)")
    p.add_argument("--eer-sampling", type=int, default=1, choices=(1, 2, 4), help="EER rendering 1, 2 or 4")
    p.add_argument("--bfactor-global", type=float, default=500.0, help="B-factor (Å²) for global alignment (500)")
    p.add_argument("--bfactor-local", type=float, default=150.0,
                   help="B-factor (Å²) for patch alignment and the final global refinement (150)")
    p.add_argument("--threads", type=int, default=1, help="threads for decoding, FFTs and numba (default 1)")
    p.add_argument("--appion-log", action="store_true", help="also write the classic Appion OUT_st_Log.txt")
    p.set_defaults(func=Command("appion.motioncorrection.align:cmd_motion_align", needs_db=False))
    return motion


def main(argv: list[str] | None = None) -> int:
    """`python -m appion.motioncorrection.cli motion align ...`."""
    parser = argparse.ArgumentParser(prog="appion")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
