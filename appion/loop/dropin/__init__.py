"""Classic Appion command names as drop-ins: makeDDAlignMotionCor2_UCSF.py, ctffind4.py, gctf.py.

Each is one run of the loop (appion.loop.core) for one registered step, with classic Appion's options: every
option of the classic parsers (the whole class chain, leginon-org/leginon and SEMC's nysbc/appion) is accepted.
An option either maps to appion's behaviour or, when it has no meaning here, is accepted with one warning line
naming it.  They write what classic wrote: the run rows, per-image rows, ScriptProgramRun/ScriptParam rows and
ApAppionJobData, and files in the classic run directory.  `--engine` picks appion's own engine (default) or the
external program the classic script drove.

Modules: options (the table machinery), common (appionScript/appionLoop2 options), makeddalign, ctf (shared by
the CTF programs), ctffind4, gctf (each program's table), run (the heavy side, imported only to run).
"""
from __future__ import annotations


def main_makeddalign(argv: list[str] | None = None) -> int:
    from appion.loop.dropin.makeddalign import main

    return main(argv)


def main_ctffind4(argv: list[str] | None = None) -> int:
    from appion.loop.dropin.ctffind4 import main

    return main(argv)


def main_gctf(argv: list[str] | None = None) -> int:
    from appion.loop.dropin.gctf import main

    return main(argv)
