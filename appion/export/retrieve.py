"""What an export reads: a loop run's motion and CTF results and which exposures are rejected (reads only).

Leginon and appion rows may live in different databases, so they are never joined: each table is read
with one `id__in` query.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from appion.base.db import models as m
from appion.base.db.fields import SeqError, parse_seq
from appion.base.session.retrieve import REJECTED_VIEWER_STATUS
from appion.export.calc import CtfValues, ExportError, Micrograph

DEFAULT_VOLTAGE_KV = 300.0  # as the loop assumes when an exposure has no scope row (appion.loop.db)
DEFAULT_AMPLITUDE_CONTRAST = 0.1  # RELION's import default, for exposures without a CTF run
REJECTED_MARK = "rejected by "  # what the loop records on the steps a curation step turned down


def retrieve_loop_run(session_name: str, runname: str | None):
    """(SessionData, ApLoopRunData): the named loop run of the session, or its newest."""
    session = m.SessionData.objects.filter(name=session_name).order_by("-id").first()
    if session is None:
        raise ExportError(f"session {session_name!r} not found")
    runs = m.ApLoopRunData.objects.filter(session_id=session.id)
    if runname:
        runs = runs.filter(runname=runname)
    run = runs.order_by("-id").first()
    if run is None:
        known = sorted(set(m.ApLoopRunData.objects.filter(session_id=session.id).values_list("runname", flat=True)))
        if runname:
            raise ExportError(f"session {session_name!r} has no loop run {runname!r} "
                              f"(its loop runs: {', '.join(known) or 'none'})")
        raise ExportError(f"session {session_name!r} has no loop run yet (run `appion loop --session {session_name}`)")
    return session, run


def retrieve_step_run_ids(looprun) -> tuple[int | None, int | None]:
    """(ApDDStackRunData id, ApAceRunData id) of a loop run: its step runs ("motion", "ctf"), reused ones included."""
    steps = dict(m.ApLoopStepRunData.objects.filter(looprun_id=looprun.id).order_by("id")
                 .values_list("step", "run_id"))
    return steps.get("motion", looprun.ddstackrun_id), steps.get("ctf", looprun.acerun_id)


def _run_dir(path_id: int | None) -> Path | None:
    path = m.ApPathData.objects.filter(id=path_id).values_list("path", flat=True).first() if path_id else None
    return Path(path) if path else None


def _image_file(image_path: str | None, row: dict | None) -> Path | None:
    if not image_path or not row:
        return None
    return Path(image_path) / (row["image"] or f"{row['filename']}.mrc")


def retrieve_micrographs(session, ddstackrun_id: int, acerun_id: int | None) -> list[Micrograph]:
    """Every movie the motion run finished (oldest first), with its sums, optics and the CTF run's fit."""
    ddrun = m.ApDDStackRunData.objects.filter(id=ddstackrun_id).first()
    if ddrun is None:
        raise ExportError(f"the loop run's motion run (ApDDStackRunData {ddstackrun_id}) does not exist")
    bin_factor = (m.ApDDStackParamsData.objects.filter(id=ddrun.params_id).values_list("bin", flat=True).first()
                  if ddrun.params_id else None) or 1
    pairs = dict(m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=ddstackrun_id).order_by("id")
                 .values_list("source_id", "result_id"))
    images = {r["id"]: r for r in m.AcquisitionImageData.objects.filter(id__in=[*pairs, *pairs.values()])
              .values("id", "filename", "image", "scope_id", "preset_id")}
    results = {s: r for s, r in pairs.items() if s in images and r in images}
    dw_names = {f"{images[r]['filename']}-DW" for r in results.values()}
    dws = {row["filename"]: row for row in m.AcquisitionImageData.objects.filter(
        session_id=session.id, filename__in=list(dw_names)).order_by("id").values("id", "filename", "image")}
    apix = dict(m.ApDDAlignStatsData.objects.filter(ddstackrun_id=ddstackrun_id, image_id__in=list(results.values()))
                .values_list("image_id", "apix"))
    ctf_by_image, ace_dir, ace_ac = {}, None, None
    if acerun_id is not None:
        ace = m.ApAceRunData.objects.filter(id=acerun_id).first()
        if ace is None:
            raise ExportError(f"the loop run's CTF run (ApAceRunData {acerun_id}) does not exist")
        ace_dir = _run_dir(ace.path_id)
        if ace.ctffind4_params_id:
            ace_ac = (m.ApCtfFind4ParamsData.objects.filter(id=ace.ctffind4_params_id)
                      .values_list("ampcontrast", flat=True).first())
        wanted = [*results.values(), *(row["id"] for row in dws.values())]
        for row in (m.ApCtfData.objects.filter(acerun_id=acerun_id, image_id__in=wanted).order_by("id")
                    .values("image_id", "defocus1", "defocus2", "angle_astigmatism", "cross_correlation",
                            "ctffind4_resolution", "extra_phase_shift", "cs", "amplitude_contrast", "graph1")):
            ctf_by_image[row["image_id"]] = row  # the newest row of an image wins
    scopes = {r["id"]: r for r in m.ScopeEMData.objects.filter(
        id__in={images[s]["scope_id"] for s in results if images[s]["scope_id"]}).values("id", "high_tension",
                                                                                          "tem_id")}
    presets = dict(m.PresetData.objects.filter(id__in={images[s]["preset_id"] for s in results
                                                       if images[s]["preset_id"]}).values_list("id", "tem_id"))
    tem_cs = dict(m.InstrumentData.objects.filter(
        id__in={x["tem_id"] for x in scopes.values()} | set(presets.values())).values_list("id", "cs"))
    out = []
    for source, result in results.items():
        src, res = images[source], images[result]
        dw = dws.get(f"{res['filename']}-DW")
        if not apix.get(result):
            raise ExportError(f"{res['filename']}: the motion run recorded no pixel size (ApDDAlignStatsData.apix)")
        ctf_row = (ctf_by_image.get(dw["id"]) if dw else None) or ctf_by_image.get(result)
        scope = scopes.get(src["scope_id"])
        tem_id = scope["tem_id"] if scope and scope["tem_id"] else presets.get(src["preset_id"])
        cs_m = tem_cs.get(tem_id)
        ctf = None
        if ctf_row is not None:
            graph = ctf_row["graph1"]
            image = Path(graph) if graph and Path(graph).is_absolute() else (ace_dir / graph if graph and ace_dir
                                                                             else None)
            ctf = CtfValues(defocus1_m=ctf_row["defocus1"], defocus2_m=ctf_row["defocus2"],
                            angle_deg=ctf_row["angle_astigmatism"] or 0.0,
                            cross_correlation=ctf_row["cross_correlation"], resolution_A=ctf_row["ctffind4_resolution"],
                            phase_shift_rad=ctf_row["extra_phase_shift"], cs_mm=ctf_row["cs"],
                            amplitude_contrast=ctf_row["amplitude_contrast"], image=image)
        cs_mm = (ctf.cs_mm if ctf and ctf.cs_mm is not None else cs_m * 1e3 if cs_m is not None else None)
        if cs_mm is None:
            raise ExportError(f"{src['filename']}: spherical aberration (Cs) is recorded neither by the CTF run nor "
                              "for the microscope (InstrumentData.cs)")
        ac = (ctf.amplitude_contrast if ctf and ctf.amplitude_contrast is not None
              else ace_ac if ace_ac is not None else DEFAULT_AMPLITUDE_CONTRAST)
        voltage = scope["high_tension"] / 1e3 if scope and scope["high_tension"] else DEFAULT_VOLTAGE_KV
        out.append(Micrograph(
            source_id=source, filename=src["filename"],
            micrograph=_image_file(session.image_path, dw or res),
            micrograph_nodw=_image_file(session.image_path, res) if dw else None,
            pixel_size_A=apix[result], original_pixel_size_A=apix[result] / bin_factor, voltage_kV=voltage,
            cs_mm=cs_mm, amplitude_contrast=ac, total_motion_A=None, ctf=ctf,
            image_ids=(result, dw["id"]) if dw else (result,)))
    if out and not session.image_path:
        raise ExportError(f"session {session.name!r} records no image directory (SessionData 'image path')")
    return out


def retrieve_total_motion(ddstackrun_id: int, mics: list[Micrograph]) -> list[Micrograph]:
    """The micrographs with their total drift (Å: the stored trajectory's path length × the sum's pixel size)."""
    from appion.motioncorrection.calc.rows import calc_total_drift_px

    by_result = {mic.image_ids[0]: mic for mic in mics if mic.image_ids}
    drift: dict[int, float] = {}
    for image_id, xs, ys in (m.ApDDFrameTrajectoryData.objects.filter(ddstackrun_id=ddstackrun_id,
                                                                     image_id__in=list(by_result))
                             .order_by("id").values_list("image_id", "pos_x", "pos_y")):
        try:
            xs, ys = parse_seq(xs) or [], parse_seq(ys) or []
        except SeqError:  # an unreadable trajectory: no total motion for this one
            continue
        if xs and len(xs) == len(ys):
            mic = by_result[image_id]
            drift[mic.source_id] = calc_total_drift_px(list(zip(xs, ys))) * mic.pixel_size_A
    return [replace(mic, total_motion_A=drift.get(mic.source_id)) for mic in mics]


def retrieve_rejections(looprun_id: int, mics: list[Micrograph]) -> dict[int, str]:
    """source id → why the exposure is rejected: a curation step's reason (the loop run's rows), else the newest
    viewer status hidden/trash or assessment 'do not keep' of the movie or one of its aligned sums."""
    owner = {image_id: mic.source_id for mic in mics for image_id in (mic.source_id, *mic.image_ids)}
    reasons: dict[int, str] = {}
    for image_id, error in (m.ApLoopExposureData.objects.filter(looprun_id=looprun_id, image_id__in=list(owner))
                            .exclude(last_error=None).order_by("id").values_list("image_id", "last_error")):
        if REJECTED_MARK in (error or ""):
            reasons.setdefault(owner[image_id], REJECTED_MARK + error.split(REJECTED_MARK, 1)[1].strip())
    status: dict[int, str] = {}
    for image_id, value in (m.ViewerImageStatus.objects.filter(image_id__in=list(owner)).order_by("id")
                            .values_list("image_id", "status")):
        status[image_id] = value  # the newest row of an image wins
    keep: dict[int, object] = {}
    for image_id, value in (m.ApAssessmentData.objects.filter(image_id__in=list(owner)).order_by("id")
                            .values_list("image_id", "selectionkeep")):
        keep[image_id] = value
    for image_id, value in status.items():
        if value in REJECTED_VIEWER_STATUS:
            reasons.setdefault(owner[image_id], f"{'trashed' if value == 'trash' else 'hidden'} in the viewer")
    for image_id, value in keep.items():
        if value is False or value == 0:
            reasons.setdefault(owner[image_id], "assessed 'do not keep'")
    return reasons
