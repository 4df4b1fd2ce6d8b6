"""The CTF step's database side in the loop process: its run row, storing one fit, what is done.

Imported only after appion.base.db.bootstrap() (the loop process), never on workers.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from appion.base.db import models as m
from appion.base.exposure import ExposureInput
from appion.base.steps import StepError, StepInput, StepRun
from appion.ctfestimation import store as cstore
from appion.ctfestimation.calc.result import CtfResult
from appion.ctfestimation.records import CtfDone, CtfRecord, CtfSettings


class MissingPhysics(StepError):
    """A value the CTF run needs is not recorded for this session."""


def retrieve_session_cs_mm(session_id: int) -> float:
    """Cs (mm) of this session's microscope: from its exposures' scope rows (never another session's)."""
    tem_ids = set(m.ScopeEMData.objects.filter(session_id=session_id).exclude(tem_id=None)
                  .values_list("tem_id", flat=True)[:1000])
    tem_ids |= set(m.PresetData.objects.filter(session_id=session_id).exclude(tem_id=None)
                   .values_list("tem_id", flat=True)[:1000])
    values = sorted({cs for cs in m.InstrumentData.objects.filter(id__in=tem_ids).values_list("cs", flat=True)
                     if cs is not None})
    if not values:
        raise MissingPhysics("spherical aberration (Cs) is not recorded for this session's microscope "
                             "(InstrumentData.cs); import the session with --cs")
    return values[-1] * 1e3


def store_ctf_run(run: StepRun) -> int:
    """ApAceRunData (+ ApCtfFind4ParamsData) of this run; returns its id."""
    c: CtfSettings = run.settings
    row = cstore.store_ace_run(run.session_id, run.runname, run.rundir, cs_mm=retrieve_session_cs_mm(run.session_id),
                               amplitude_contrast=c.amplitude_contrast, fieldsize=c.fieldsize, resmin_A=c.resmin_A,
                               defstep_m=(c.defstep_um or 0.0) * 1e-6, bestdb=c.bestdb, phase_plate=c.phase_plate,
                               min_phase_shift_deg=c.min_phase_shift_deg, max_phase_shift_deg=c.max_phase_shift_deg,
                               phase_search_step_deg=c.phase_search_step_deg)
    return row.id


def store_ctf_result(record: CtfRecord, run: StepRun, task: StepInput,
                     inside: Callable[[], None] | None = None) -> CtfDone:
    """The ApCtfData row of one fit (idempotent)."""
    c: CtfSettings = run.settings
    inp: ExposureInput = task.exposure
    result = CtfResult(defocus1_A=record.defocus1_A, defocus2_A=record.defocus2_A,
                       astig_angle_deg=record.astig_angle_deg, phase_shift_rad=record.phase_shift_rad,
                       cross_correlation=record.cross_correlation, fit_resolution_A=record.fit_resolution_A,
                       confidence_30_10=record.confidence_30_10, confidence_5_peak=record.confidence_5_peak,
                       resolution_80_percent_A=record.resolution_80_percent_A,
                       resolution_50_percent_A=record.resolution_50_percent_A)
    defocus_init_m = c.nominal_defocus_um * 1e-6 if c.nominal_defocus_um else inp.nominal_defocus_m
    image_id = record.image_id or inp.image_id
    cstore.store_ctf_rows(run.run_id, image_id, result, cs_mm=inp.cs_mm, amplitude_contrast=c.amplitude_contrast,
                          defocus_init_m=defocus_init_m, graphs=record.graphs, inside=inside)
    return CtfDone(inp.image_id, image_id, record.defocus1_A, record.defocus2_A, record.fit_resolution_A)


def _ctf_rows_by_source(acerun_id: int, exposure_ids: Sequence[int]) -> dict[int, dict]:
    """This run's ApCtfData values per exposure: on the exposure itself or on one of its aligned images
    (`<exposure>-<label>[-DW]`; the dose-weighted one wins)."""
    names = dict(m.AcquisitionImageData.objects.filter(id__in=list(exposure_ids)).values_list("id", "filename"))
    rows = list(m.ApCtfData.objects.filter(acerun_id=acerun_id)
                .values("image_id", "defocus1", "defocus2", "ctffind4_resolution"))
    image_names = dict(m.AcquisitionImageData.objects.filter(id__in={r["image_id"] for r in rows})
                       .values_list("id", "filename"))  # another database than ApCtfData on MySQL: no join
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        row["image__filename"] = image_names.get(row["image_id"], "")
        by_name.setdefault(row["image__filename"], []).append(row)
    out = {}
    for source, name in names.items():
        exact = by_name.get(name)
        if exact:
            out[source] = exact[0]
            continue
        derived = [r for n, rs in by_name.items() if n.startswith(f"{name}-") for r in rs]
        if derived:
            derived.sort(key=lambda r: not (r["image__filename"] or "").endswith("-DW"))
            out[source] = derived[0]
    return out


def retrieve_ctf_outputs(run: StepRun, exposure_ids: Sequence[int],
                         inputs: Mapping[int, ExposureInput]) -> dict[int, CtfDone]:
    """The exposures this CTF run has a fit for."""
    out = {}
    for source, row in _ctf_rows_by_source(run.run_id, exposure_ids).items():
        out[source] = CtfDone(source, row["image_id"], (row["defocus1"] or 0) * 1e10, (row["defocus2"] or 0) * 1e10,
                              row["ctffind4_resolution"])
    return out


def read_mean_defocus_um(run_id: int, exposure_ids: Sequence[int]) -> dict[int, float]:
    return {s: 0.5 * ((r["defocus1"] or 0) + (r["defocus2"] or 0)) * 1e6
            for s, r in _ctf_rows_by_source(run_id, exposure_ids).items()}


def read_fit_resolution_A(run_id: int, exposure_ids: Sequence[int]) -> dict[int, float]:
    return {s: r["ctffind4_resolution"] for s, r in _ctf_rows_by_source(run_id, exposure_ids).items()}
