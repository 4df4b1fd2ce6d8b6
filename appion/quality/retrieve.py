"""What the database (and the motion run's classic log) says for the quality step (loop process, after
bootstrap; never on a worker)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appion.base.db import models as m
from appion.base.db.fields import SeqError, parse_seq
from appion.base.session.retrieve import retrieve_images_by_filename
from appion.motioncorrection.calc.rows import parse_st_log_positions



@dataclass(frozen=True)
class MotionTrajectory:
    """Per-frame positions of one movie in pixels of pixel_size_A (the aligned sum's), and where they came
    from: the classic log (every frame) or the trajectory row (its first ≤ 20 positions and the last)."""

    positions_px: tuple[tuple[float, float], ...]
    pixel_size_A: float
    source: str


def retrieve_motion_trajectory(source_id: int, result_id: int, source_filename: str,
                               pixel_size_A: float) -> MotionTrajectory | None:
    """The trajectory the motion step stored for this movie and aligned sum (None: no such motion result).

    The classic `<ddstack run>/<movie>_st_Log.txt` holds every frame; when it cannot be read, the
    ApDDFrameTrajectoryData row (classic keeps the first 20 positions and the last) is used.
    """
    pair = (m.ApDDAlignImagePairData.objects.filter(source_id=source_id, result_id=result_id)
            .order_by("-id").values("ddstackrun_id").first())
    if pair is None:
        return None
    run_id = pair["ddstackrun_id"]
    stats = (m.ApDDAlignStatsData.objects.filter(ddstackrun_id=run_id, image_id=result_id).order_by("-id")
             .select_related("trajectory").first())
    apix = stats.apix if stats is not None and stats.apix else pixel_size_A
    path_id = m.ApDDStackRunData.objects.filter(id=run_id).values_list("path_id", flat=True).first()
    folder = m.ApPathData.objects.filter(id=path_id).values_list("path", flat=True).first() if path_id else None
    if folder:
        log = Path(folder) / f"{source_filename}_st_Log.txt"
        try:
            positions = parse_st_log_positions(log.read_text())
        except (OSError, UnicodeDecodeError, ValueError, IndexError):
            positions = ()
        if positions:
            return MotionTrajectory(positions, apix, f"classic log {log}")
    traj = stats.trajectory if stats is not None else None
    if traj is None:
        return None
    try:
        xs, ys = parse_seq(traj.pos_x) or [], parse_seq(traj.pos_y) or []
    except SeqError:
        return None
    positions = list(zip((float(x) for x in xs), (float(y) for y in ys)))
    if traj.number_of_positions and traj.number_of_positions > len(positions) and traj.last_x is not None:
        positions.append((float(traj.last_x), float(traj.last_y)))
    if not positions:
        return None
    return MotionTrajectory(tuple(positions), apix, "trajectory row (first 20 positions and the last)")


def retrieve_manual_verdicts(image_ids) -> dict[int, tuple[bool, str | None]]:
    """image id → (accepted, reason) of the newest verdict a person gave on it."""
    out: dict[int, tuple[bool, str | None]] = {}
    rows = (m.ApQualityVerdictData.objects.filter(image_id__in=list(image_ids)).order_by("id")
            .values_list("image_id", "accepted", "reason"))
    for image_id, accepted, reason in rows:
        out[image_id] = (bool(accepted), reason)
    return out


def retrieve_quality_rows(qualityrun_id: int, exposure_ids) -> dict[int, dict]:
    """exposure id → its ApQualityData values in this quality run."""
    rows = (m.ApQualityData.objects.filter(qualityrun_id=qualityrun_id, image_id__in=list(exposure_ids))
            .order_by("id").values())
    return {row["image_id"]: row for row in rows}


def retrieve_aligned_image_ids(source_id: int) -> set[int]:
    """The aligned images registered for an exposure (every motion run: the sums and their -DW twins)."""
    results = set(m.ApDDAlignImagePairData.objects.filter(source_id=source_id).values_list("result_id", flat=True))
    if not results:
        return set()
    rows = list(m.AcquisitionImageData.objects.filter(id__in=results).values_list("session_id", "filename"))
    out = set(results)
    for session_id, name in rows:
        out |= set(retrieve_images_by_filename(session_id, [f"{name}-DW"]).values())
    return out
