"""Wrappers around the external CTF programs classic Appion runs: CTFFIND 4.1 and Gctf.

Each wrapper is split into a pure part (the dialogue / command line to send, the parsing of
what comes back) and one ``run_*`` function that starts the program and moves its files.

CTFFIND 4.1 is interactive: it asks one question at a time.  Classic Appion (leginon-org
ctffind4.py) piped all the answers at once and hoped the order matched (SEMC's nysbc/appion
generates an `expect` script keyed by question text); here the dialogue is driven prompt by
prompt with pexpect in the expected order, so a CTFFIND build that asks something else stops
with an error naming the question instead of silently shifting every later answer by one.

Question texts and order follow CTFFIND 4.1.14 (``DoInteractiveUserInput`` in cisTEM's
``src/programs/ctffind/ctffind.cpp``, version string "4.1.14", cross-checked with published
4.1.14 and 5.0.2 terminal transcripts).  Builds differ in a few optional questions (cisTEM
builds and 5.x add "Determine sample tilt?", 5.x "Determine samnple thickness?" [sic] and
extra expert questions, cisTEM builds also ask "Slower, more exhaustive search?" when the
astigmatism is known); those are answered from ``calc_ctffind4_optional_answers`` with the
answer that keeps the classic behaviour.

Gctf takes command-line flags (names as in Gctf 1.06/1.18 usage, e.g. Scipion's
scipion-em-gctf wrapper) and writes ``<root>_gctf.log`` and ``<root>.ctf`` next to the input.
Angle convention: Gctf reports (Defocus_U, Defocus_V, Angle) in the CTFFIND3/RELION
convention, i.e. Defocus_U is the defocus along the azimuth Angle (degrees, CCW from x),
exactly CTFFIND's (defocus 1, defocus 2, azimuth).  So a Gctf fit becomes a CtfResult
unchanged (U → defocus1_A, V → defocus2_A), and the classic database mapping
(calc_apctfdata_fields) is the same for both programs.  Classic Appion's gctf.py stored
U as defocus2 and V as defocus1 but did not add the 90° that its ctffind4.py adds (classic
bug #4047), so classic Gctf rows have their angle on the defocus2 axis; we do not copy that.
Gctf's phase shift is in degrees; CtfResult holds radians.

Submodules (this package re-exports their public names): common (shared helpers), ctffind4
(CTFFIND 4.1), gctf (Gctf).
"""
from __future__ import annotations

from appion.ctfestimation.calc.external.common import calc_classic_defocus_range_A
from appion.ctfestimation.calc.external.ctffind4 import (
    CTFFIND_PROMPT_END, Ctffind4Params, CtffindDialogueError, CtffindError, CtffindOutput, CtffindTimeoutError,
    KnownDefocus, calc_ctffind4_answers, calc_ctffind4_optional_answers, calc_ctffind4_params_from_classic,
    calc_ctffind_output_paths, calc_ctffind_version, calc_prompt_text, read_mrc_n_sections, run_ctffind4)
from appion.ctfestimation.calc.external.gctf import (GctfError, GctfOutput, GctfParams, calc_gctf_command,
                                                     calc_gctf_output_paths, calc_gctf_params_from_classic,
                                                     parse_gctf_log, run_gctf)

__all__ = [
    "calc_classic_defocus_range_A",
    "KnownDefocus", "Ctffind4Params", "calc_ctffind4_params_from_classic",
    "CtffindError", "CtffindDialogueError", "CtffindTimeoutError",
    "calc_ctffind4_answers", "calc_ctffind4_optional_answers", "CTFFIND_PROMPT_END", "calc_prompt_text",
    "calc_ctffind_version", "CtffindOutput", "calc_ctffind_output_paths", "read_mrc_n_sections", "run_ctffind4",
    "GctfError", "GctfParams", "calc_gctf_params_from_classic", "calc_gctf_command", "parse_gctf_log",
    "GctfOutput", "calc_gctf_output_paths", "run_gctf",
]
