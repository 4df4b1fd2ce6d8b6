"""What the classic Appion tables say about CTF estimation runs (loop process and drop-ins).

Reading micrographs and movies is appion.ctfestimation.inputs.
"""
from __future__ import annotations

from appion.base.db import models as m


def retrieve_ctf_done(acerun_id: int, image_ids: list[int]) -> set[int]:
    """The images of image_ids that this CTF run already has an ApCtfData row for."""
    return set(m.ApCtfData.objects.filter(acerun_id=acerun_id, image_id__in=image_ids)
               .values_list("image_id", flat=True))
