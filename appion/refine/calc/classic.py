"""Classic Appion command lines → job parameters (pure).

A classic refinement job is submitted as `runJob.py --runname=... --rundir=... --stackname=...
--modelnames=... --startIter=1 --endIter=8 --symmetry=c1 --angSampRate=5 ... --jobtype=relionrecon`
(leginon-org/leginon appion/appionlib/apRefineJob.py and its per-package subclasses).  Every such
option either maps to a parameter of appion's job types (REFINE_OPTIONS) or is known to have no
effect here (NO_EFFECT, with the reason); anything else is reported once so a user sees it was not used.
Per-iteration values use classic's syntax `4x10:2x8` (four iterations of 10, then 8 until the end).
"""
from __future__ import annotations

import re

# Classic option name (as classic spells it) → appion parameter.
REFINE_OPTIONS = {
    "startIter": "start_iteration", "endIter": "iterations", "numiter": "iterations", "iter": "iterations",
    "stackname": "stack", "stackfile": "stack", "stack": "stack",
    "modelnames": "model", "modelfile": "model", "model": "model",
    "apix": "apix", "boxsize": "boxsize",
    "symmetry": "symmetry", "sym": "symmetry", "symm": "symmetry",
    "angSampRate": "angle_deg", "ang": "angle_deg", "angle": "angle_deg",
    "healpix_order": "angle_deg",  # classic's relion form takes degrees and converts them to a HEALPix order
    "outerMaskRadius": "mask_radius_px", "innerMaskRadius": "inner_mask_px", "diameter": "diameter_A",
    "ini_high": "lowpass_A", "lowpass": "lowpass_A", "lp": "lowpass_A", "hp": "highpass_A",
    "offset_range": "offset_range_px", "offset_step": "offset_step_px",
    "ctf": "ctf", "ctf_intact_first_peak": "ctf_intact_first_peak", "ctf_corrected_ref": "ctf_corrected_ref",
    "phaseflipped": "ctf_phase_flipped",
    "kv": "voltage_kV", "cs": "cs_mm", "wgh": "amp_contrast", "ampcontrast": "amp_contrast",
    "relion_version": "relion_version", "MaskVol": "mask", "program": "program", "outroot": "output_root",
    "prepid": "prepid", "preprefineid": "prepid", "threads": "threads",
}
# Options classic refinement jobs take that mean nothing for appion's jobs, and why.
NO_EFFECT = {
    "rpn": "processes per node come from --rpn/--ppn of runJob.py itself",
    "localhost": "results stay in the run directory (remote processing hosts are configured per host)",
    "remoterundir": "the job runs in its run directory", "recondir": "outputs are written in the run directory",
    "appionwrapper": "appion's programs are found on PATH",
    "description": "recorded by prepRefine*.py", "totalpart": "the particle count comes from the prepared stack",
    "expId": "the session comes from -s/--session or --expid", "projectid": "used for the database only",
    "auto_local_healpix_order": "appion runs RELION's classification mode with a fixed sampling",
    "percentDiscard": "Frealign 9 keeps particles by score (thresh_reconst 0)",
    "mode": "Frealign runs in mode 1", "fmag": "magnification is not refined", "fdef": "defocus is not refined",
    "fpart": "defocus is not refined per particle", "fbeaut": "no real-space symmetrisation",
    "fbfact": "no B-factor correction", "fmatch": "no matching projections", "ffilt": "Frealign's default filter",
    "fpbc": "Frealign's default particle weighting", "psi": "all five parameters are refined",
    "theta": "all five parameters are refined", "phi": "all five parameters are refined",
    "x": "all five parameters are refined", "y": "all five parameters are refined",
    "recononly": "refinement and reconstruction run together", "last": "every prepared particle is used",
    "inpar": "the prepared parameter file is used", "outpar": "Frealign names its own outputs",
}
# Parameters whose classic value may be a per-iteration list.
ITERATION_PARAMS = {"symmetry", "angle_deg", "mask_radius_px", "inner_mask_px", "lowpass_A", "highpass_A",
                    "offset_range_px", "offset_step_px", "ctf", "ctf_intact_first_peak", "ctf_corrected_ref",
                    "amp_contrast"}
_ITER_PART = re.compile(r"^(\d+)x(.+)$")
_SYMMETRY_WORDS = {"icos": "i", "oct": "o", "tet": "t"}


def calc_iteration_values(text: str, n_iterations: int) -> list[str]:
    """Classic per-iteration syntax → one value per iteration: '4x10:2x8' with 8 iterations gives
    10,10,10,10,8,8,8,8 (the last value fills the rest); a plain value applies to every iteration."""
    values: list[str] = []
    for part in str(text).split(":"):
        match = _ITER_PART.match(part.strip())
        if match:
            values += [match.group(2)] * int(match.group(1))
        elif part.strip():
            values.append(part.strip())
    if not values:
        return [""] * n_iterations
    return (values + [values[-1]] * n_iterations)[:max(n_iterations, 1)]


def calc_symmetry_name(text: str) -> str:
    """Classic symmetry names ('C1', 'c7 (z)', 'Icos (5 3 2) eman', 'Oct') → c1, c7, i, o."""
    first = str(text).strip().split(" ")[0].lower()
    return _SYMMETRY_WORDS.get(first, first)


# Classic refinement jobs' short options (apRefineJob.py): -s/--stackname, -N/--totalpart.
_SHORT = {"-s": "stackname", "-N": "totalpart"}


def _options(argv: list[str]) -> list[tuple[str, str]]:
    """`--key=value`, `--key value`, `--flag` (→ 'true') and classic's -s/-N options in order; positionals and
    other short options (-n/-R/-p, read by runJob.py itself) are skipped."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in _SHORT and i + 1 < len(argv):
            out.append((_SHORT[a], argv[i + 1]))
            i += 2
            continue
        if a.startswith("--") and len(a) > 2:
            key, eq, value = a[2:].partition("=")
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                    value = argv[i + 1]
                    i += 1
                else:
                    value = "true"
            out.append((key, value))
        i += 1
    return out


def calc_refine_params(argv: list[str], known: set[str]) -> tuple[dict, list[str]]:
    """A classic refinement command line → (parameters, one warning per option not used).

    known: parameter names the job type uses (options named exactly like one are taken as they are).
    Per-iteration values are resolved for the iterations this job runs (start..end); when they differ,
    the first iteration's value is used and a warning says so (one program run takes one value).
    """
    raw: dict[str, str] = {}
    warnings: list[str] = []
    for key, value in _options(argv):
        name = REFINE_OPTIONS.get(key) or (key if key in known else None)
        if name is None and key.replace("-", "_") in known:
            name = key.replace("-", "_")
        if name is None:
            reason = NO_EFFECT.get(key)
            warnings.append(f"--{key} has no effect: {reason}" if reason else
                            f"--{key} is not an option of this job type; ignored")
            continue
        raw[name] = value
    start = int(raw["start_iteration"]) if str(raw.get("start_iteration", "")).isdigit() else 1
    end = int(raw["iterations"]) if str(raw.get("iterations", "")).isdigit() else start
    params: dict = {}
    for name, value in raw.items():
        if name in ITERATION_PARAMS and (":" in value or _ITER_PART.match(value)):
            per_iteration = calc_iteration_values(value, end)
            used = per_iteration[start - 1:end] or per_iteration[-1:]
            if len(set(used)) > 1:
                warnings.append(f"{name} varies per iteration ({value}); one program run uses {used[0]} for "
                                f"iterations {start}..{end}")
            value = used[0]
        if name == "symmetry":
            value = calc_symmetry_name(value)
        if name == "model":
            models = [v for v in value.split(",") if v]
            if len(models) > 1:
                warnings.append(f"--modelnames lists {len(models)} models; single-model refinement uses {models[0]}")
            value = models[0] if models else value
        params[name] = value
    return params, warnings
