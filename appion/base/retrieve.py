"""Read sessions, exposures and movie metadata (database and files)."""
from __future__ import annotations

import os
from pathlib import Path

from appion.base import movies
from appion.base.db import models as m
from appion.base.metadata import ExposureMetadata, MetadataError, calc_sidecar_names, parse_epu_xml, parse_mdoc

MOVIE_SUFFIXES = (".tif", ".tiff", ".mrc", ".mrcs", ".eer")


def find_movie_files(frames_dir: Path, exclude: set[Path] = frozenset()) -> list[Path]:
    """Movie files in acquisition order (modification time, then name); hidden/partial files skipped."""
    found = []
    with os.scandir(frames_dir) as it:
        for entry in it:
            name = entry.name
            if name.startswith(".") or not entry.is_file() or not name.lower().endswith(MOVIE_SUFFIXES):
                continue
            path = Path(entry.path)
            if path.resolve() in exclude:
                continue
            found.append((entry.stat().st_mtime, name, path))
    return [p for _, _, p in sorted(found)]


def read_sidecar_metadata(movie_path: Path) -> ExposureMetadata:
    """SerialEM .mdoc or EPU .xml found next to the movie (an empty record when there is none)."""
    for name in calc_sidecar_names(movie_path.name):
        side = movie_path.with_name(name)
        if side.exists():
            text = side.read_text(errors="replace")
            if name.endswith(".xml"):
                try:
                    return parse_epu_xml(text, source=str(side))
                except MetadataError:
                    continue
            return parse_mdoc(text, source=str(side))
    return ExposureMetadata()


def read_exposure_metadata(movie_path: Path, flags: ExposureMetadata) -> tuple[movies.MovieHeader, ExposureMetadata]:
    """The movie's header plus its metadata: sidecar files and header values win over flags."""
    header = movies.read_movie_header(movie_path)
    meta = flags.overlay(read_sidecar_metadata(movie_path))
    if header.pixel_size_A:
        meta = meta.overlay(ExposureMetadata(pixel_size_A=header.pixel_size_A))
    meta = meta.overlay(ExposureMetadata(n_frames=header.n_frames))
    return header, meta


def retrieve_session(name: str):
    return m.SessionData.objects.filter(name=name).order_by("-id").first()


def retrieve_exposure_filenames(session) -> set[str]:
    return set(m.AcquisitionImageData.objects.filter(session_id=session.id).values_list("filename", flat=True))


def calc_movie_filename(movie_path: Path) -> str:
    """Leginon's image filename for a movie `<filename>.frames.<ext>` (or the bare stem)."""
    name = movie_path.name
    for ext in MOVIE_SUFFIXES:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name[: -len(".frames")] if name.endswith(".frames") else name
