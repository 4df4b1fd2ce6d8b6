"""Appion-side table of `appion session import`: the movies it refused and why (classic Appion has none).

One row per session and movie path, updated in place each time the movie is refused again: the newest reason,
when it was first and last refused (Unix seconds) and how often.  The row is removed when the movie is
registered after all (e.g. once its writer finished or its metadata was fixed).  `appion status` shows them.
"""
from appion.base.db.fields import SinedonModel, integer, real, ref, text

__all__ = ["ApImportRefusalData"]


class ApImportRefusalData(SinedonModel):
    """A movie of a session's frames directory that the importer did not register, with the specific reason."""

    session = ref("SessionData", "session", module="leginondata")
    path = text()  # the movie file, absolute
    reason = text()  # e.g. "frame count mismatch: the file holds 8 frames but X.mdoc says 16"
    first_seen = real()  # Unix seconds of the first refusal
    last_seen = real()  # Unix seconds of the newest refusal
    count = integer()  # how many times it was refused

    class Meta(SinedonModel.Meta):
        db_table = "ApImportRefusalData"
