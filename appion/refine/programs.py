"""Ask an installed refinement program about itself (`--version`, `--help`): argument lists, never a shell."""
from __future__ import annotations

import shutil
import subprocess

from appion.refine.calc.formats import FormatError, calc_version_tuple, parse_help_options

PROGRAM_TIMEOUT_S = 60


def detect_relion_version(program: str = "relion_refine") -> tuple[int, ...] | None:
    """The installed RELION's version from `relion_refine --version` ('RELION version: 3.1.3'); None when the
    program is not installed here (the job may run on a host that has it)."""
    if not shutil.which(program):
        return None
    try:
        result = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=PROGRAM_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = result.stdout + result.stderr
    if "RELION" not in text.upper():
        return None
    try:
        return calc_version_tuple(text[text.upper().index("RELION"):])
    except FormatError:
        return None


def read_help_options(program: str) -> set[str] | None:
    """The options `<program> --help` lists; None when the program is not installed here."""
    if not shutil.which(program):
        return None
    result = subprocess.run([program, "--help"], capture_output=True, text=True, timeout=PROGRAM_TIMEOUT_S)
    return parse_help_options(result.stdout + result.stderr)
