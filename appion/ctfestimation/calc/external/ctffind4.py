"""CTFFIND 4.1: parameters (also from classic ctffind4.py options), the pexpect-driven dialogue, running it.

See the package docstring (appion.ctfestimation.calc.external) for how the dialogue is driven.
"""
from __future__ import annotations

import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import pexpect

from appion.ctfestimation.calc.classic import (AvrotData, CtffindFormatError, CtffindHeader, parse_avrot,
                                               parse_ctffind_header, parse_ctffind_results)
from appion.ctfestimation.calc.external.common import _num, _tail, calc_classic_defocus_range_A
from appion.ctfestimation.calc.result import CtfResult


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownDefocus:
    """CTFFIND's expert "Do you already know the defocus?" answers (Å, degrees, radians)."""

    defocus1_A: float
    defocus2_A: float
    astig_angle_deg: float
    phase_shift_rad: float = 0.0


@dataclass(frozen=True)
class Ctffind4Params:
    """Everything CTFFIND 4.1 asks, in its own units (Å, kV, mm, radians).

    astigmatism_restraint_A None answers "no" to "Use a restraint on astigmatism?".
    known_astigmatism_A not None answers "yes" to "Do you know what astigmatism is present?".
    Expert options are answered "yes" only when one of them differs from CTFFIND's default
    (resample on, no known defocus, 1 thread), as classic Appion always answered "no".
    """

    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    defocus_min_A: float
    defocus_max_A: float
    defocus_step_A: float
    amplitude_contrast: float = 0.07
    box_size_px: int = 1024
    resmin_A: float = 50.0
    resmax_A: float = 15.0
    exhaustive_search: bool = False
    astigmatism_restraint_A: float | None = None
    known_astigmatism_A: float | None = None
    known_astigmatism_angle_deg: float = 0.0
    find_phase_shift: bool = False
    min_phase_shift_rad: float = 0.0
    max_phase_shift_rad: float = 3.15
    phase_shift_step_rad: float = 0.5
    is_movie: bool = False
    n_frames_to_average: int = 1
    resample_if_pixel_too_small: bool = True
    known_defocus: KnownDefocus | None = None
    n_threads: int = 1

    @property
    def wants_expert_options(self) -> bool:
        return (not self.resample_if_pixel_too_small) or self.known_defocus is not None or self.n_threads != 1


def calc_ctffind4_params_from_classic(*, pixel_size_A: float, voltage_kV: float, cs_mm: float,
                                      start_defocus_A: float, defstep_um: float, ampcontrast: float = 0.07,
                                      fieldsize: int = 1024, resmin: float = 50.0, resmax: float = 15.0,
                                      numstep: int = 25, dast_um: float = 100.0, phaseplate: bool = False,
                                      min_phase_shift_deg: float = 10.0, max_phase_shift_deg: float = 170.0,
                                      phase_search_step_deg: float = 10.0, exhaust: bool = False,
                                      num_frame_avg: int | None = None) -> Ctffind4Params:
    """Ctffind4Params from classic ctffind4.py options (its names, units and defaults).

    Classic: --defstep and --dast are in µm (×1e4 → Å; note the classic --dast default of
    100 µm is 1,000,000 Å, i.e. practically no restraint); the restraint question is always
    answered "yes"; phase-shift limits are given in degrees and sent in radians;
    num_frame_avg not None means the input is a movie stack (classic --ddstackid).
    start_defocus_A: the best previous fit's smaller defocus, else the nominal defocus.
    """
    defocus_min_A, defocus_max_A = calc_classic_defocus_range_A(start_defocus_A, defstep_um, numstep)
    return Ctffind4Params(
        pixel_size_A=pixel_size_A, voltage_kV=voltage_kV, cs_mm=cs_mm,
        defocus_min_A=defocus_min_A, defocus_max_A=defocus_max_A, defocus_step_A=defstep_um * 1e4,
        amplitude_contrast=ampcontrast, box_size_px=fieldsize, resmin_A=resmin, resmax_A=resmax,
        exhaustive_search=exhaust, astigmatism_restraint_A=dast_um * 1e4,
        find_phase_shift=phaseplate, min_phase_shift_rad=math.radians(min_phase_shift_deg),
        max_phase_shift_rad=math.radians(max_phase_shift_deg),
        phase_shift_step_rad=math.radians(phase_search_step_deg),
        is_movie=num_frame_avg is not None, n_frames_to_average=num_frame_avg or 1,
    )


# ----------------------------------------------------------------------------------------------
# CTFFIND 4.1: the dialogue (pure)
# ----------------------------------------------------------------------------------------------


class CtffindError(RuntimeError):
    """CTFFIND could not be run to a result."""


class CtffindDialogueError(CtffindError):
    """CTFFIND asked a question the dialogue does not expect (or stopped asking too early)."""


class CtffindTimeoutError(CtffindError):
    """CTFFIND did not answer or finish in time."""


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _q(text: str) -> str:
    """Regex matching exactly one CTFFIND question text."""
    return re.escape(text)


def _plain(pattern: str) -> str:
    """A question regex made readable for messages (undo re.escape)."""
    return re.sub(r"\\(.)", r"\1", pattern)


def calc_ctffind4_answers(params: Ctffind4Params, image_path: str, diag_path: str,
                          n_sections: int = 1) -> list[tuple[str, str]]:
    """The expected CTFFIND 4.1 dialogue: (question regex, answer) in the order asked.

    n_sections: z size of the input MRC; CTFFIND only asks "Input is a movie" when it is > 1.
    The regexes must match the whole question text (without the ``[default]`` and ``:``).
    """
    steps: list[tuple[str, str]] = [(_q("Input image file name"), str(image_path))]
    if n_sections > 1:
        steps.append((_q("Input is a movie (stack of frames)"), _yes_no(params.is_movie)))
        if params.is_movie:
            steps.append((_q("Number of frames to average together"), str(int(params.n_frames_to_average))))
    steps += [
        (_q("Output diagnostic image file name"), str(diag_path)),
        (_q("Pixel size"), _num(params.pixel_size_A)),
        (_q("Acceleration voltage"), _num(params.voltage_kV)),
        (_q("Spherical aberration"), _num(params.cs_mm)),
        (_q("Amplitude contrast"), _num(params.amplitude_contrast)),
        (_q("Size of amplitude spectrum to compute"), str(int(params.box_size_px))),
        (_q("Minimum resolution"), _num(params.resmin_A)),
        (_q("Maximum resolution"), _num(params.resmax_A)),
        (_q("Minimum defocus"), _num(params.defocus_min_A)),
        (_q("Maximum defocus"), _num(params.defocus_max_A)),
        (_q("Defocus search step"), _num(params.defocus_step_A)),
    ]
    astig_known = params.known_astigmatism_A is not None
    steps.append((_q("Do you know what astigmatism is present?"), _yes_no(astig_known)))
    if astig_known:
        steps += [(_q("Known astigmatism"), _num(params.known_astigmatism_A)),
                  (_q("Known astigmatism angle"), _num(params.known_astigmatism_angle_deg))]
    else:
        restrain = params.astigmatism_restraint_A is not None
        steps += [(_q("Slower, more exhaustive search?"), _yes_no(params.exhaustive_search)),
                  (_q("Use a restraint on astigmatism?"), _yes_no(restrain))]
        if restrain:
            steps.append((_q("Expected (tolerated) astigmatism"), _num(params.astigmatism_restraint_A)))
    steps.append((_q("Find additional phase shift?"), _yes_no(params.find_phase_shift)))
    if params.find_phase_shift:
        steps += [(_q("Minimum phase shift (rad)"), _num(params.min_phase_shift_rad)),
                  (_q("Maximum phase shift (rad)"), _num(params.max_phase_shift_rad)),
                  (_q("Phase shift search step"), _num(params.phase_shift_step_rad))]
    steps.append((_q("Do you want to set expert options?"), _yes_no(params.wants_expert_options)))
    if params.wants_expert_options:
        steps.append((_q("Resample micrograph if pixel size too small?"),
                      _yes_no(params.resample_if_pixel_too_small)))
        if params.is_movie and n_sections > 1:
            steps += [(_q("Movie is gain-corrected?"), "yes"),
                      (_q("Correct Movie Mag. Distortion?"), "no")]
        known = params.known_defocus
        steps.append((_q("Do you already know the defocus?"), _yes_no(known is not None)))
        if known is not None:
            steps += [(_q("Known defocus 1"), _num(known.defocus1_A)),
                      (_q("Known defocus 2"), _num(known.defocus2_A)),
                      (_q("Known astigmatism angle"), _num(known.astig_angle_deg))]
            if params.find_phase_shift:
                steps.append((_q("Known phase shift (radians)"), _num(known.phase_shift_rad)))
        steps.append((_q("Desired number of parallel threads"), str(int(params.n_threads))))
    return steps


def calc_ctffind4_optional_answers(params: Ctffind4Params) -> list[tuple[str, str]]:
    """Questions only some CTFFIND builds ask, with the answer that keeps classic behaviour.

    An empty answer accepts CTFFIND's default.
    """
    return [
        (_q("Determine sample tilt?"), "no"),
        (r"Determine sam(?:n)?ple thickness\?", "no"),  # 5.0.2 spells it "samnple"
        (_q("Slower, more exhaustive search?"), _yes_no(params.exhaustive_search)),
        (_q("Movie is dark-subtracted?"), "yes"),
        (_q("Target pixel size after resampling"), ""),
        (_q("Weight down low resolution signal?"), ""),
    ]


CTFFIND_PROMPT_END = r"\[[^\]\r\n]*\][ \t]*: "
_VERSION_RE = re.compile(r"Version\s*:\s*(\S+)")


def calc_prompt_text(before: str) -> str:
    """The question text preceding a ``[default] :`` prompt end in CTFFIND's output.

    CTFFIND pads "question [default]" to a column and puts a long question on its own line,
    so the question is the last non-empty line before the ``[default]``.
    """
    lines = [line.strip() for line in re.split(r"\r?\n|\r", before)]
    non_empty = [line for line in lines if line]
    return non_empty[-1] if non_empty else ""


def calc_ctffind_version(banner: str) -> str:
    """CTFFIND's version from its banner; raises CtffindError if absent or unsupported."""
    match = _VERSION_RE.search(banner)
    if not match:
        raise CtffindError(f"no CTFFIND banner with a version before the first question; output was: {banner[-500:]!r}")
    version = match.group(1)
    if not (version.startswith("4.1.") or version.startswith("5.")):
        raise CtffindError(f"CTFFIND version {version} is not supported (4.1.x, or 5.x whose questions match)")
    return version


# ----------------------------------------------------------------------------------------------
# CTFFIND 4.1: running it
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtffindOutput:
    """A finished CTFFIND run: the fit, its files, and what the program printed."""

    result: CtfResult
    header: CtffindHeader
    avrot: AvrotData
    version: str
    diag_path: Path
    results_path: Path
    avrot_path: Path
    transcript: str = field(repr=False)


def calc_ctffind_output_paths(diag_path: Path) -> tuple[Path, Path, Path]:
    """(diagnostic MRC, results text, avrot text): CTFFIND names the texts after the diagnostic."""
    return diag_path, diag_path.with_suffix(".txt"), diag_path.with_name(diag_path.stem + "_avrot.txt")


def read_mrc_n_sections(path: Path) -> int:
    """Number of sections (frames) of an MRC file, reading the header only."""
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
            return max(1, int(mrc.header.nz))
    except (OSError, ValueError) as exc:
        raise CtffindError(f"cannot read the MRC header of {path}: {exc}") from exc


def _drive_ctffind_dialogue(child: pexpect.spawn, steps: list[tuple[str, str]],
                            optional: list[tuple[str, str]], deadline: float, transcript: list[str],
                            executable: str) -> str:
    """Answer CTFFIND's questions one by one; returns the version from the banner."""
    version = None
    index = 0
    while index < len(steps):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CtffindTimeoutError(f"{executable}: timed out waiting for the question {_plain(steps[index][0])!r}")
        try:
            child.expect(CTFFIND_PROMPT_END, timeout=remaining)
        except pexpect.TIMEOUT:
            transcript.append(child.before or "")
            raise CtffindTimeoutError(
                f"{executable}: timed out waiting for the question {_plain(steps[index][0])!r}; "
                f"last output: {_tail(''.join(transcript))!r}") from None
        except pexpect.EOF:
            transcript.append(child.before or "")
            raise CtffindDialogueError(
                f"{executable} exited while the question {_plain(steps[index][0])!r} was still expected; "
                f"last output: {_tail(''.join(transcript))!r}") from None
        transcript.append(child.before + child.after)
        if version is None:
            version = calc_ctffind_version(child.before)
        question = calc_prompt_text(child.before)
        expected, answer = steps[index]
        if re.fullmatch(expected, question):
            index += 1
        else:
            for pattern, optional_answer in optional:
                if re.fullmatch(pattern, question):
                    answer = optional_answer
                    break
            else:
                raise CtffindDialogueError(
                    f"{executable} asked an unexpected question {question!r} "
                    f"(expected {_plain(expected)!r}); prompt seen: {_tail(child.before + child.after, 300)!r}")
        child.sendline(answer)
        transcript.append(answer + "\n")
    return version


def _wait_for_exit(child: pexpect.spawn, optional: list[tuple[str, str]], deadline: float,
                   transcript: list[str], executable: str) -> None:
    """Read until CTFFIND exits, answering only known optional questions asked after the dialogue."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CtffindTimeoutError(
                f"{executable}: did not finish in time; last output: {_tail(''.join(transcript))!r}")
        try:
            which = child.expect([CTFFIND_PROMPT_END, pexpect.EOF], timeout=remaining)
        except pexpect.TIMEOUT:
            transcript.append(child.before or "")
            raise CtffindTimeoutError(
                f"{executable}: did not finish in time; last output: {_tail(''.join(transcript))!r}") from None
        transcript.append(child.before + (child.after if which == 0 else ""))
        if which == 1:
            return
        question = calc_prompt_text(child.before)
        for pattern, answer in optional:
            if re.fullmatch(pattern, question):
                child.sendline(answer)
                transcript.append(answer + "\n")
                break
        else:
            raise CtffindDialogueError(
                f"{executable} asked an unexpected question {question!r} after the last expected answer; "
                f"prompt seen: {_tail(child.before + child.after, 300)!r}")


def run_ctffind4(executable: str, image_path, diag_path, params: Ctffind4Params,
                 timeout_s: float = 600.0) -> CtffindOutput:
    """Run CTFFIND 4.1 on one micrograph (or movie stack), driving its questions with pexpect.

    The program writes under temporary names next to diag_path; only after a clean exit and
    a successful parse are the diagnostic MRC, ``<diag>.txt`` and ``<diag>_avrot.txt``
    moved to their final names (no partial outputs left behind).
    Raises CtffindDialogueError (unexpected question, early exit), CtffindTimeoutError,
    CtffindError (non-zero exit, missing or malformed output).
    """
    # absolute paths: the program runs in the diagnostic's directory
    image_path = Path(image_path).absolute()
    diag_path = Path(diag_path).absolute()
    if not image_path.is_file():
        raise CtffindError(f"CTFFIND input {image_path} does not exist")
    if not diag_path.parent.is_dir():
        raise CtffindError(f"directory for the CTFFIND diagnostic {diag_path} does not exist")
    n_sections = read_mrc_n_sections(image_path)
    if params.is_movie and n_sections < 2:
        raise CtffindError(f"{image_path} has a single section; it cannot be processed as a movie")
    if params.is_movie and params.n_frames_to_average > n_sections:
        raise CtffindError(
            f"{image_path} has {n_sections} frames; cannot average {params.n_frames_to_average} together")

    token = secrets.token_hex(4)
    work_diag = diag_path.with_name(f".{diag_path.stem}.{token}.part{diag_path.suffix or '.mrc'}")
    work_paths = calc_ctffind_output_paths(work_diag)
    final_paths = calc_ctffind_output_paths(diag_path)
    steps = calc_ctffind4_answers(params, str(image_path), str(work_diag), n_sections)
    optional = calc_ctffind4_optional_answers(params)
    deadline = time.monotonic() + timeout_s
    transcript: list[str] = []
    try:
        child = pexpect.spawn(executable, [], encoding="utf-8", codec_errors="replace",
                              cwd=str(diag_path.parent), echo=False, timeout=timeout_s)
    except pexpect.ExceptionPexpect as exc:
        raise CtffindError(f"cannot start {executable}: {exc}") from exc
    # Answers go out only after their question was seen, so pexpect's 50 ms pause before each
    # send (meant for programs that read before they prompt) only slows the dialogue down.
    child.delaybeforesend = None
    moved = False
    try:
        try:
            version = _drive_ctffind_dialogue(child, steps, optional, deadline, transcript, executable)
            _wait_for_exit(child, optional, deadline, transcript, executable)
        finally:
            if child.isalive():
                child.terminate(force=True)
            child.close()
        text = "".join(transcript)
        if child.signalstatus is not None:
            raise CtffindError(f"{executable} was killed by signal {child.signalstatus}; last output: {_tail(text)!r}")
        if child.exitstatus != 0:
            raise CtffindError(f"{executable} exited with status {child.exitstatus}; last output: {_tail(text)!r}")
        for path in work_paths:
            if not path.is_file():
                raise CtffindError(f"{executable} exited normally but did not write {path.name} "
                                   f"(for {final_paths[work_paths.index(path)]}); last output: {_tail(text)!r}")
        results_text = work_paths[1].read_text()
        avrot_text = work_paths[2].read_text()
        try:
            header = parse_ctffind_header(results_text)
            results = parse_ctffind_results(results_text)
            avrots = parse_avrot(avrot_text)
        except CtffindFormatError as exc:
            raise CtffindError(f"malformed CTFFIND output for {final_paths[1]}: {exc}") from exc
        if len(results) != 1 or len(avrots) != 1:
            raise CtffindError(f"expected one micrograph in {final_paths[1]}, found {len(results)} results "
                               f"and {len(avrots)} rotational averages")
        for work, final in zip(work_paths, final_paths):
            os.replace(work, final)
        moved = True
    finally:
        if not moved:
            for path in work_paths:
                path.unlink(missing_ok=True)
    return CtffindOutput(result=results[0], header=header, avrot=avrots[0], version=version,
                         diag_path=final_paths[0], results_path=final_paths[1], avrot_path=final_paths[2],
                         transcript=text)
