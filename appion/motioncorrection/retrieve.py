"""What the classic Appion tables say about motion-correction runs (loop process and drop-ins).

Reading the movie, gain and defects is appion.motioncorrection.inputs.
"""
from __future__ import annotations

from appion.base.db import models as m


def retrieve_motion_done(ddstackrun_id: int, source_ids: list[int]) -> dict[int, int]:
    """source image id → aligned (result) image id, for the movies this ddstack run has finished."""
    rows = m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=ddstackrun_id, source_id__in=source_ids)
    return dict(rows.values_list("source_id", "result_id"))
