"""Helpers shared by the CTFFIND and Gctf wrappers: classic defocus range, number text, output tails."""
from __future__ import annotations


def calc_classic_defocus_range_A(start_defocus_A: float, defstep_um: float, numstep: int) -> tuple[float, float]:
    """Classic ctffind4.py/gctf.py search range: start ∓ defstep × numstep (Å, rounded to 0.1).

    A negative lower bound becomes one step (classic prints a warning and does the same).
    """
    step_A = defstep_um * 1e4
    half_range_A = step_A * numstep
    low = round(start_defocus_A - half_range_A, 1)
    if low < 0:
        low = step_A
    return low, round(start_defocus_A + half_range_A, 1)


def _num(value: float) -> str:
    """A float as text CTFFIND parses exactly (shortest round-trip repr)."""
    return repr(float(value))


def _tail(text: str, n: int = 800) -> str:
    return text[-n:]
