"""CTF estimation rows in the classic Appion tables (loop process and drop-ins; never on a worker).

The files a run writes are appion.ctfestimation.outputs.
"""
from __future__ import annotations

from appion.base.db import models as m
from appion.base.db.router import alias_for
from appion.base.db.sinedon import insert, serialised_inserts
from appion.base.session.store import RunConflict, store_path
from appion.ctfestimation.calc.classic import calc_apctfdata_fields
from appion.ctfestimation.calc.result import CtfResult


def store_ace_run(session_id: int, runname: str, rundir, *, cs_mm: float, amplitude_contrast: float, fieldsize: int,
                  resmin_A: float, defstep_m: float, bestdb: bool = False, phase_plate: bool = False,
                  min_phase_shift_deg: float | None = None, max_phase_shift_deg: float | None = None,
                  phase_search_step_deg: float | None = None):
    """ApCtfFind4ParamsData + ApAceRunData (reused when identical; a name clash with other params is an error)."""
    params, _ = insert(m.ApCtfFind4ParamsData, bestdb=bestdb, ampcontrast=amplitude_contrast, fieldsize=fieldsize,
                       cs=cs_mm, resmin=resmin_A, defstep=defstep_m, shift_phase=phase_plate,
                       min_phase_shift=min_phase_shift_deg if phase_plate else None,
                       max_phase_shift=max_phase_shift_deg if phase_plate else None,
                       phase_search_step=phase_search_step_deg if phase_plate else None)
    clash = m.ApAceRunData.objects.filter(name=runname, session_id=session_id).exclude(ctffind4_params_id=params.id)
    if clash.exists():
        raise RunConflict(f"CTF run {runname!r} already exists in this session with other parameters; "
                          f"choose another run name")
    run, _ = insert(m.ApAceRunData, name=runname, session_id=session_id, path=store_path(rundir), hidden=False,
                    ctffind4_params=params)
    return run


def store_ctf_rows(acerun_id: int, image_id: int, result: CtfResult, *, cs_mm: float, amplitude_contrast: float,
                   defocus_init_m: float | None, graphs=(None, None, None, None), inside=None) -> bool:
    """The ApCtfData row of one fit in classic conventions (calc_apctfdata_fields).

    One transaction that first checks the row is not there yet: storing twice writes nothing
    (returns False).  `inside` (optional callable) runs in the same transaction first.
    graphs: graph1..graph4 paths relative to the run directory.
    """
    fields = calc_apctfdata_fields(result, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast,
                                   defocus_init_m=defocus_init_m)
    with serialised_inserts(alias_for(m.ApCtfData)):
        if m.ApCtfData.objects.filter(acerun_id=acerun_id, image_id=image_id).exists():
            return False
        if inside is not None:
            inside()
        m.ApCtfData.objects.create(acerun_id=acerun_id, image_id=image_id,
                                   **dict(zip(("graph1", "graph2", "graph3", "graph4"), graphs)), **fields)
    return True
