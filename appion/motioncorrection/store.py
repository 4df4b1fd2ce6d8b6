"""Motion-correction rows in the classic Appion tables (loop process and drop-ins; never on a worker).

The files a run writes are appion.motioncorrection.outputs.
"""
from __future__ import annotations

from appion.base.db import models as m
from appion.base.db.fields import format_seq
from appion.base.db.router import alias_for
from appion.base.db.sinedon import insert, serialised_inserts
from appion.base.session.store import RunConflict, calc_row_values, store_path


def store_ddstack_run(session_id: int, preset_id: int | None, runname: str, rundir, bin_factor: float, method: str):
    """ApDDStackParamsData + ApDDStackRunData (reused when identical; a name clash with other params is an error)."""
    params, _ = insert(m.ApDDStackParamsData, preset_id=preset_id, align=True, bin=int(round(bin_factor)),
                       method=method)
    clash = m.ApDDStackRunData.objects.filter(runname=runname, session_id=session_id).exclude(params_id=params.id)
    if clash.exists():
        raise RunConflict(f"ddstack run {runname!r} already exists in this session with other parameters; "
                          f"choose another run name")
    run, _ = insert(m.ApDDStackRunData, runname=runname, params=params, session_id=session_id,
                    path=store_path(rundir))
    return run


def store_aligned_images(source_id: int, sum_filename: str, dw_filename: str | None, out_shape_yx: tuple[int, int],
                         bin_factor: float, alignlabel: str, cache: dict | None = None) -> tuple[int, int | None]:
    """Register aligned sums as Leginon images, as classic does: a CameraEMData copy with `align frames`,
    PresetData copies `<preset>-<label>` and `<preset>-<label>-DW`, images `<source>-<label>[-DW]`.

    Identical rows are reused (sinedon get-or-create), so repeating this after a crash adds nothing.
    cache (optional, per run) remembers the camera/preset copies, the same for most exposures.
    out_shape_yx (0, 0) means: the source dimensions divided by the binning.
    Returns (sum image id, dose-weighted image id or None).
    """
    cache = {} if cache is None else cache
    src = m.AcquisitionImageData.objects.get(id=source_id)
    factor = max(1, int(round(bin_factor)))
    ny, nx = out_shape_yx

    def copy_of(model, row_id, suffix, **changes):
        if row_id is None:
            return None
        key = (model.__name__, row_id, suffix, ny, nx, factor)
        if key not in cache:
            row = model.objects.get(id=row_id)
            dims = dict(dimension_x=nx or (row.dimension_x or 0) // factor,
                        dimension_y=ny or (row.dimension_y or 0) // factor,
                        binning_x=(row.binning_x or 1) * factor, binning_y=(row.binning_y or 1) * factor)
            extra = {"name": f"{row.name}{suffix}"} if model is m.PresetData else {}
            copy, _ = insert(model, **calc_row_values(row, save_frames=False, **dims, **extra, **changes))
            cache[key] = copy.id
        return cache[key]

    ids = []
    with serialised_inserts(alias_for(m.AcquisitionImageData)):
        for filename, suffix in ((sum_filename, f"-{alignlabel}"), (dw_filename, f"-{alignlabel}-DW")):
            if filename is None:
                ids.append(None)
                continue
            camera_id = copy_of(m.CameraEMData, src.camera_id, "", align_frames=True, frames_name=None)
            preset_id = copy_of(m.PresetData, src.preset_id, suffix)
            image, _ = insert(m.AcquisitionImageData, session_id=src.session_id, image=f"{filename}.mrc",
                              filename=filename, label=src.label, scope_id=src.scope_id, camera_id=camera_id,
                              preset_id=preset_id, target=src.target, version=src.version,
                              phase_plate=src.phase_plate)
            ids.append(image.id)
    return ids[0], ids[1]


def store_motion_rows(ddstackrun_id: int, source_id: int, result_id: int, trajectory: dict, stats: dict,
                      inside=None) -> bool:
    """ApDDFrameTrajectoryData, ApDDAlignStatsData and, last, ApDDAlignImagePairData for one movie.

    One transaction that first checks the pair row: its presence means done, so storing twice
    writes nothing (returns False).  `inside` (optional callable) runs in the same transaction,
    before the pair row, for the caller's own bookkeeping.  trajectory/stats: column values
    (pos_x/pos_y as lists).
    """
    with serialised_inserts(alias_for(m.ApDDAlignImagePairData)):
        if m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=ddstackrun_id, source_id=source_id).exists():
            return False
        traj = m.ApDDFrameTrajectoryData.objects.create(
            image_id=result_id, ddstackrun_id=ddstackrun_id, pos_x=format_seq(trajectory["pos_x"]),
            pos_y=format_seq(trajectory["pos_y"]), last_x=trajectory["last_x"], last_y=trajectory["last_y"],
            number_of_positions=trajectory["number_of_positions"], reference_index=trajectory["reference_index"])
        m.ApDDAlignStatsData.objects.create(image_id=result_id, ddstackrun_id=ddstackrun_id, trajectory=traj, **stats)
        if inside is not None:
            inside()
        m.ApDDAlignImagePairData.objects.create(source_id=source_id, result_id=result_id, ddstackrun_id=ddstackrun_id)
    return True
