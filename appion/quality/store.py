"""The quality step's rows: its run, one exposure's metrics, Leginon's ViewerImageStatus, a person's verdict
(loop process and the web viewer; never on a worker)."""
from __future__ import annotations

import getpass
import json

from appion.base.db import models as m
from appion.base.db.router import alias_for
from appion.base.db.sinedon import insert, serialised_inserts
from appion.base.session.store import RunConflict, store_path
from appion.base.session.viewer import store_viewer_hidden, store_viewer_visible  # noqa: F401 (re-exported)
from appion.quality.retrieve import retrieve_aligned_image_ids


def store_quality_run(session_id: int, runname: str, rundir, params: dict):
    """ApQualityRunData (reused when identical; the run name with other parameters is an error)."""
    text = json.dumps(params, sort_keys=True, default=str)
    clash = (m.ApQualityRunData.objects.filter(runname=runname, session_id=session_id).exclude(params=text))
    if clash.exists():
        raise RunConflict(f"quality run {runname!r} already exists in this session with other parameters; "
                          f"choose another run name")
    row, _ = insert(m.ApQualityRunData, runname=runname, session_id=session_id, path=store_path(rundir), params=text)
    return row


def store_quality_row(qualityrun_id: int, image_id: int, fields: dict, inside=None, session_id: int | None = None,
                      hide=()) -> bool:
    """The ApQualityData row of one exposure, once: one transaction that first checks the row is not there
    (storing twice writes nothing, returns False); `inside` (optional) runs in it first, then the images
    `hide` are hidden in ViewerImageStatus (store_viewer_hidden; Leginon's database: with MySQL its own
    transaction, so a crash can at worst leave them hidden without the row, never the row without them)."""
    with serialised_inserts(alias_for(m.ApQualityData)):
        if m.ApQualityData.objects.filter(qualityrun_id=qualityrun_id, image_id=image_id).exists():
            return False
        if inside is not None:
            inside()
        if hide:
            store_viewer_hidden(session_id, hide)
        m.ApQualityData.objects.create(qualityrun_id=qualityrun_id, image_id=image_id, **fields)
    return True


def store_manual_verdict(image_id: int, accepted: bool, reason: str | None = None, user: str | None = None) -> int:
    """A person's accept/reject of an exposure (the exposure page calls this).

    Writes an ApQualityVerdictData row (the newest verdict wins over the automatic one, in every quality
    run, also later ones) and hides the exposure and its aligned images in the classic viewer when rejected,
    or shows them again when accepted.  Returns the verdict row's id.  Raises ValueError for an unknown
    image.
    """
    image = m.AcquisitionImageData.objects.filter(id=image_id).values("id", "session_id").first()
    if image is None:
        raise ValueError(f"no image with id {image_id}")
    text = (reason or "").strip() or None
    if not accepted and text is None:
        text = "rejected by hand"
    with serialised_inserts(alias_for(m.ApQualityVerdictData)):
        row = m.ApQualityVerdictData.objects.create(session_id=image["session_id"], image_id=image_id,
                                                    accepted=bool(accepted), reason=text,
                                                    user=user or getpass.getuser())
    related = {image_id} | retrieve_aligned_image_ids(image_id)
    if accepted:
        store_viewer_visible(related)
    else:
        store_viewer_hidden(image["session_id"], related)
    return row.id
