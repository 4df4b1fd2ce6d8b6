"""`appion export relion`: a loop run's accepted exposures as RELION 3.1+ STAR files (written with starfile).

DIR/corrected_micrographs.star   optics + micrographs (dose-weighted sum, plain sum, total motion)
DIR/micrographs_ctf.star         optics + micrographs with _rlnCtfImage, _rlnDefocusU/V/Angle,
                                 _rlnCtfAstigmatism, _rlnCtfFigureOfMerit, _rlnCtfMaxResolution
DIR/Micrographs/, DIR/CtfImages/ symbolic links to the aligned sums in the session's image directory and
                                 to the CTF run's diagnostic images

The STAR files name the links by absolute path (or relative to a RELION project directory, `relative_to`), so a
RELION project opens them wherever it lives; values are the database's (RELION's conventions: appion.export.calc).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from appion.base.io.files import write_atomic
from appion.export import calc
from appion.export import retrieve as r
from appion.export.calc import ExportError, Micrograph

CORRECTED_STAR = "corrected_micrographs.star"
CTF_STAR = "micrographs_ctf.star"
FLOAT_FORMAT = "%.12g"  # enough digits that RELION reads back the database's values


@dataclass
class ExportReport:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    n_exported: int = 0
    n_with_ctf: int = 0
    rejected_left_out: Counter = field(default_factory=Counter)  # reason → exposures
    rejected_included: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)  # aligned sums not on disk (left out)
    looprun: str = ""

    def lines(self) -> list[str]:
        out = [f"loop run {self.looprun}: {self.n_exported} micrographs ({self.n_with_ctf} with a CTF fit)"]
        out += [f"wrote {p}" for p in self.files]
        for what, counts in (("left out (rejected)", self.rejected_left_out),
                             ("included although rejected (--all)", self.rejected_included)):
            for reason, n in sorted(counts.items()):
                out.append(f"{what}: {n} × {reason}")
        if self.missing:
            out.append(f"left out, aligned sum not on disk: {len(self.missing)} ({', '.join(self.missing[:5])}"
                       f"{' ...' if len(self.missing) > 5 else ''})")
        return out


def link(target: Path, path: Path) -> None:
    """A symbolic link `path` → `target`, replacing an older link (never a file or directory) atomically."""
    if path.is_symlink():
        if os.readlink(path) == str(target):
            return
    elif path.exists():
        raise ExportError(f"{path} exists and is not a link; remove it or export to another directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def write_star(path: Path, blocks: dict[str, dict[str, list]]) -> Path:
    """A STAR file of named loop blocks (column → values), atomically."""
    import pandas as pd
    import starfile

    frames = {name: pd.DataFrame(columns) for name, columns in blocks.items()}
    return write_atomic(path, lambda tmp: starfile.write(frames, tmp, float_format=FLOAT_FORMAT, overwrite=True))


def calc_written_name(path: Path, relative_to: Path | None) -> str:
    return os.path.relpath(path, relative_to) if relative_to is not None else str(path)


def link_files(out_dir: Path, mics: list[Micrograph], relative_to: Path | None) -> dict[int, dict[str, str]]:
    """Link each exposure's files under out_dir; source id → the names the STAR files give them."""
    names: dict[int, dict[str, str]] = {}
    for mic in mics:
        links = calc.calc_link_names(mic)
        pairs = [("micrograph", mic.micrograph, links.micrograph)]
        if mic.micrograph_nodw is not None and mic.micrograph_nodw.is_file():
            pairs.append(("nodw", mic.micrograph_nodw, links.micrograph_nodw))
        if mic.ctf is not None and mic.ctf.image is not None and mic.ctf.image.is_file():
            pairs.append(("ctf", mic.ctf.image, links.ctf_image))
        names[mic.source_id] = {}
        for key, target, name in pairs:
            link(target.resolve(), out_dir / name)
            names[mic.source_id][key] = calc_written_name(out_dir / name, relative_to)
    return names


def export_relion(session_name: str, out_dir, runname: str | None = None, include_rejected: bool = False,
                  relative_to=None) -> ExportReport:
    """Write the STAR files and links of one loop run (the session's newest without runname)."""
    out_dir = Path(out_dir).expanduser().resolve()
    relative_to = Path(relative_to).expanduser().resolve() if relative_to else None
    session, looprun = r.retrieve_loop_run(session_name, runname)
    ddstackrun_id, acerun_id = r.retrieve_step_run_ids(looprun)
    if ddstackrun_id is None:
        raise ExportError(f"loop run {looprun.runname!r} of session {session_name!r} has no motion step run: no "
                          "aligned micrographs to export")
    mics = r.retrieve_micrographs(session, ddstackrun_id, acerun_id)
    mics = r.retrieve_total_motion(ddstackrun_id, mics)
    rejections = r.retrieve_rejections(looprun.id, mics)
    mics = [replace(mic, rejected=rejections.get(mic.source_id)) for mic in mics]
    report = ExportReport(out_dir, looprun=looprun.runname or str(looprun.id))
    chosen = []
    for mic in mics:
        if mic.rejected is not None and not include_rejected:
            report.rejected_left_out[mic.rejected] += 1
        elif not mic.micrograph.is_file():
            report.missing.append(str(mic.micrograph))
        else:
            chosen.append(mic)
            if mic.rejected is not None:
                report.rejected_included[mic.rejected] += 1
    if not chosen:
        why = (f"{sum(report.rejected_left_out.values())} rejected (add --all to include them)"
               if report.rejected_left_out else "none has an aligned sum on disk" if report.missing
               else "the motion run has finished none")
        raise ExportError(f"nothing to export from loop run {report.looprun!r} of session {session_name!r}: "
                          f"{len(mics)} exposures, {why}")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = link_files(out_dir, chosen, relative_to)
    optics, group_of = calc.calc_optics_groups(chosen)
    report.files.append(write_star(out_dir / CORRECTED_STAR, {
        "optics": optics, "micrographs": calc.calc_corrected_table(chosen, names, group_of)}))
    report.n_exported = len(chosen)
    with_ctf = [mic for mic in chosen if mic.ctf is not None]
    report.n_with_ctf = len(with_ctf)
    if with_ctf:
        ctf_optics, ctf_groups = calc.calc_optics_groups(with_ctf)
        report.files.append(write_star(out_dir / CTF_STAR, {
            "optics": ctf_optics, "micrographs": calc.calc_ctf_table(with_ctf, names, ctf_groups)}))
    return report
