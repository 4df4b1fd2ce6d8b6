"""The drop-ins' database look-ups (session by id, --mrclist, --ddstackid): loop process, after bootstrap."""
from __future__ import annotations

from pathlib import Path

from appion.base.db import models as m


def retrieve_session_name(args) -> str:
    if args.session:
        return args.session
    if args.expid is not None:
        row = m.SessionData.objects.filter(id=args.expid).first()
        if row is None:
            raise SystemExit(f"error: no session with id {args.expid}")
        return row.name
    raise SystemExit("error: give -s/--session or --expid")


def retrieve_image_ids(session_name: str, mrclist: str | None, extra_ids: set[int] | None) -> tuple[int, ...] | None:
    ids = extra_ids
    if mrclist:
        names = [Path(x.strip()).name.removesuffix(".mrc") for x in mrclist.split(",") if x.strip()]
        session = m.SessionData.objects.filter(name=session_name).order_by("-id").first()
        found = set(m.AcquisitionImageData.objects.filter(session_id=session.id if session else -1,
                                                          filename__in=names).values_list("id", flat=True))
        ids = found if ids is None else ids & found
    return tuple(sorted(ids)) if ids is not None else None


def retrieve_ddstack_images(ddstackid: int | None) -> set[int] | None:
    if ddstackid is None:
        return None
    results = set(m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=ddstackid).values_list("result_id", flat=True))
    if not results:
        raise SystemExit(f"error: ddstack run {ddstackid} has no aligned images")
    return results
