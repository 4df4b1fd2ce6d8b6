"""The drop-ins' database look-ups (loop process, after bootstrap): the session by name or id, and which images
a run takes (--mrclist, --ddstackid, --best-images, --reprocess, --uncorrected)."""
from __future__ import annotations

from pathlib import Path

from appion.base.db import models as m
from appion.loop.dropin.options import DropinError


def retrieve_session_name(sessionname: str | None, expid: int | None) -> str:
    if sessionname:
        return sessionname
    if expid is not None:
        row = m.SessionData.objects.filter(id=expid).first()
        if row is None:
            raise DropinError(f"--expid {expid}: no session has this id")
        return row.name
    raise DropinError("give the session: -s/--session NAME or --expid ID")


class ImageSelection:
    """The images a drop-in run takes; the loop asks `image_id in selection` of every new image.

    include: only these (None: any).  exclude: never these.  later: for images newer than `known_max` (arrived
    after the run started), a function telling whether such an image is excluded.
    """

    def __init__(self, include: frozenset | None = None, exclude: frozenset = frozenset(), later=None,
                 known_max: int = 0):
        self.include, self.exclude, self.later, self.known_max = include, exclude, later, known_max
        self._later_excluded: dict[int, bool] = {}

    def __contains__(self, image_id: int) -> bool:
        if self.include is not None and image_id not in self.include:
            return False
        if image_id in self.exclude:
            return False
        if self.later is not None and image_id > self.known_max:
            if image_id not in self._later_excluded:
                self._later_excluded[image_id] = self.later(image_id)
            return not self._later_excluded[image_id]
        return True

    def __repr__(self) -> str:
        size = "any" if self.include is None else f"{len(self.include)} images"
        return f"ImageSelection(include={size}, exclude={len(self.exclude)} images)"


def _session_id(session_name: str) -> int:
    session = m.SessionData.objects.filter(name=session_name).order_by("-id").first()
    if session is None:
        raise DropinError(f"session {session_name!r} not found in the Leginon database")
    return session.id


def retrieve_mrclist_ids(session_id: int, mrclist: str) -> set[int]:
    names = [Path(x.strip()).name.removesuffix(".mrc") for x in mrclist.split(",") if x.strip()]
    found = dict(m.AcquisitionImageData.objects.filter(session_id=session_id, filename__in=names)
                 .values_list("filename", "id"))
    missing = [n for n in names if n not in found]
    if missing:
        raise DropinError(f"--mrclist: no image named {', '.join(missing[:5])} in the session")
    return set(found.values())


def retrieve_ddstack_images(ddstackid: int) -> set[int]:
    results = set(m.ApDDAlignImagePairData.objects.filter(ddstackrun_id=ddstackid).values_list("result_id", flat=True))
    if not results:
        raise DropinError(f"--ddstackid {ddstackid}: the ddstack run has no aligned images")
    return results


def retrieve_best_images(session_id: int) -> set[int]:
    """Images whose newest viewer status is exemplar, or whose newest assessment keeps them (classic
    --best-images)."""
    status: dict[int, str] = {}
    for image_id, value in (m.ViewerImageStatus.objects.filter(session_id=session_id).order_by("id")
                            .values_list("image_id", "status")):
        status[image_id] = value
    keep: dict[int, bool] = {}
    for image_id, value in (m.ApAssessmentData.objects.filter(assessmentrun__session_id=session_id).order_by("id")
                            .values_list("image_id", "selectionkeep")):
        keep[image_id] = bool(value)
    return {i for i, s in status.items() if s == "exemplar"} | {i for i, k in keep.items() if k}


def calc_ctf_score(row: tuple) -> float:
    """Classic ctfdb.calculateConfidenceScore: the largest of the four confidences, at least 0."""
    values = [v for v in row if v is not None]
    return max([0.0, *values])


def retrieve_well_fitted(session_id: int, reprocess: float) -> set[int]:
    """Images whose best CTF fit (any run of the session) scores above `reprocess`: classic --reprocess leaves
    them alone."""
    best: dict[int, float] = {}
    for image_id, *conf in (m.ApCtfData.objects.filter(acerun__session_id=session_id)
                            .values_list("image_id", "confidence", "confidence_d", "confidence_30_10",
                                         "confidence_5_peak")):
        best[image_id] = max(best.get(image_id, 0.0), calc_ctf_score(conf))
    return {i for i, score in best.items() if score > reprocess}


def retrieve_aligned_images(session_id: int, image_id: int | None = None) -> set[int]:
    """Images of the session (or just `image_id`) that a frame-alignment run made: their camera says 'align
    frames', or they are the result of an ApDDAlignImagePairData row."""
    images = m.AcquisitionImageData.objects.filter(session_id=session_id, camera__align_frames=True)
    pairs = m.ApDDAlignImagePairData.objects.filter(ddstackrun__session_id=session_id)
    if image_id is not None:
        images, pairs = images.filter(id=image_id), pairs.filter(result_id=image_id)
    return set(images.values_list("id", flat=True)) | set(pairs.values_list("result_id", flat=True))


def calc_image_selection(session_name: str, *, mrclist: str | None = None, ddstackid: int | None = None,
                         best_images: bool = False, reprocess: float | None = None,
                         uncorrected: bool = False) -> ImageSelection | None:
    """The run's ImageSelection (None: every image).  Images arriving later are taken unless --mrclist,
    --ddstackid or --best-images limit the run to images known now (classic decides at arrival too), or
    --uncorrected finds them to be aligned sums."""
    if not (mrclist or ddstackid is not None or best_images or reprocess is not None or uncorrected):
        return None
    session_id = _session_id(session_name)
    include: set[int] | None = None

    def narrow(ids: set[int]) -> None:
        nonlocal include
        include = ids if include is None else include & ids

    if mrclist:
        narrow(retrieve_mrclist_ids(session_id, mrclist))
    if ddstackid is not None:
        narrow(retrieve_ddstack_images(ddstackid))
    if best_images:
        narrow(retrieve_best_images(session_id))
    exclude: set[int] = set()
    if reprocess is not None:
        exclude |= retrieve_well_fitted(session_id, reprocess)
    known_max = (m.AcquisitionImageData.objects.filter(session_id=session_id).order_by("-id")
                 .values_list("id", flat=True).first() or 0)
    later = None
    if uncorrected:
        exclude |= retrieve_aligned_images(session_id)
        later = lambda image_id: bool(retrieve_aligned_images(session_id, image_id))  # noqa: E731
    return ImageSelection(frozenset(include) if include is not None else None, frozenset(exclude), later, known_max)
