"""Leginon's ViewerImageStatus: what the classic image viewer hides or trashes (read and written by the steps
that curate exposures, the export and the web viewer).  Loop process and viewer only, after bootstrap."""
from __future__ import annotations

from appion.base.db import models as m
from appion.base.db.router import alias_for
from appion.base.db.sinedon import serialised_inserts
from appion.base.session.retrieve import REJECTED_VIEWER_STATUS


def retrieve_viewer_status(image_ids) -> dict[int, str | None]:
    """image id → its newest ViewerImageStatus status (images without one are left out)."""
    out: dict[int, str | None] = {}
    for image_id, status in (m.ViewerImageStatus.objects.filter(image_id__in=list(image_ids)).order_by("id")
                             .values_list("image_id", "status")):
        out[image_id] = status
    return out


def store_viewer_hidden(session_id: int, image_ids) -> list[int]:
    """Hide images in the classic viewer: ViewerImageStatus 'hidden', as the viewer itself writes it (one
    row per image: the image's other status rows are replaced).  Images already hidden or trashed are left
    as they are.  Returns the images newly hidden."""
    ids = sorted(set(image_ids))
    with serialised_inserts(alias_for(m.ViewerImageStatus)):
        status = retrieve_viewer_status(ids)
        todo = [i for i in ids if status.get(i) not in REJECTED_VIEWER_STATUS]
        if todo:
            m.ViewerImageStatus.objects.filter(image_id__in=todo).delete()
            m.ViewerImageStatus.objects.bulk_create(
                [m.ViewerImageStatus(session_id=session_id, image_id=i, status="hidden") for i in todo])
    return todo


def store_viewer_visible(image_ids) -> int:
    """Show images again in the classic viewer (its 'unhide': the hidden/trash status rows go).  Returns how
    many rows were removed."""
    with serialised_inserts(alias_for(m.ViewerImageStatus)):
        deleted, _ = (m.ViewerImageStatus.objects.filter(image_id__in=sorted(set(image_ids)),
                                                         status__in=REJECTED_VIEWER_STATUS).delete())
    return deleted
