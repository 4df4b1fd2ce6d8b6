"""What `appion session import` decides about one movie before registering it (files only, no database).

A movie is registered only when it is fully written and consistent with what is said about it:
- its frame count equals its metadata's (SerialEM .mdoc NumSubFrames, EPU .xml NumberOffractions, the MRC
  header), so dose per frame is never computed from a wrong count;
- it is a movie (more than one frame), not a gain or other reference image;
- the gain that will be used with it (a gain named by its .mdoc next to it, else --gain) fits its frames in
  the camera's orientation; a smaller gain is accepted only for EER (super-resolution rendering).
Each refusal has its own reason; the file is named by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appion.base.io import movies
from appion.base.io.metadata import ExposureMetadata
from appion.base.io.movies.calc import calc_gain_mismatch_message, calc_gain_upsampling
from appion.base.io.movies.complete import BROKEN, GROWING, read_movie_completeness
from appion.base.io.movies.references import read_gain_shape
from appion.base.session.retrieve import calc_exposure_metadata, read_sidecar_metadata

GAIN_SUFFIXES = (".mrc", ".tif", ".tiff")
READY, WAIT, REFUSED = "ready", "wait", "refused"
EER_SAMPLINGS = (1, 2, 4)


@dataclass(frozen=True)
class MovieVerdict:
    """state READY (header, meta and gain_path set), WAIT (may still be being written) or REFUSED; reason why not."""

    state: str
    reason: str = ""
    header: movies.MovieHeader | None = None
    meta: ExposureMetadata | None = None
    gain_path: Path | None = None


class GainShapes:
    """Gain reference shapes, each file read (and checked) once while it is unchanged."""

    def __init__(self):
        self._known: dict[Path, tuple[tuple[int, float], tuple[int, int] | None, str]] = {}

    def read(self, path: Path) -> tuple[int, int]:
        """(y, x) of the gain; MovieError (naming the file) if it cannot be used."""
        st = path.stat()
        sig = (st.st_size, st.st_mtime)
        known = self._known.get(path)
        if known is None or known[0] != sig:
            try:
                known = (sig, read_gain_shape(path), "")
            except movies.MovieError as exc:
                known = (sig, None, str(exc))
            self._known[path] = known
        if known[1] is None:
            raise movies.MovieError(known[2])
        return known[1]


def calc_gain_fits(gain_shape_yx: tuple[int, int], header: movies.MovieHeader, rotate: int) -> bool:
    """Whether a gain of that shape fits the movie: same size once rotated, or for EER (read at sampling 1)
    the size of some super-resolution rendering (sampling 2 or 4), or a physical-pixel gain for one."""
    if header.format != "eer":
        return calc_gain_upsampling(gain_shape_yx, header.shape_yx, rotate) != 0
    ny, nx = header.shape_yx
    return any(calc_gain_upsampling(gain_shape_yx, (ny * s, nx * s), rotate, s) for s in EER_SAMPLINGS)


def calc_gain_mismatch(gain_path: Path, gain_shape_yx: tuple[int, int], header: movies.MovieHeader, rotate: int,
                       flip: int) -> str | None:
    """None when the gain fits the movie, else why (both shapes and every orientation tried)."""
    if calc_gain_fits(gain_shape_yx, header, rotate):
        return None
    return calc_gain_mismatch_message(gain_shape_yx, header.shape_yx, rotate, flip, str(gain_path))


def _choose_gain(path: Path, meta: ExposureMetadata, default: Path | None) -> Path | None:
    """A gain named by the movie's .mdoc wins when it sits next to the movie in a readable format."""
    name = meta.gain_name
    if name and name not in (".", "..") and "/" not in name:
        named = path.parent / name
        if named.suffix.lower() in GAIN_SUFFIXES and named.is_file():
            return named
    return default


def calc_movie_verdict(path: Path, flags: ExposureMetadata, gain_path: Path | None, rotate: int, flip: int,
                       gains: GainShapes) -> MovieVerdict:
    """Whether to register the movie now (see the module docstring).  Never raises for a bad file."""
    sidecar = read_sidecar_metadata(path)
    source = Path(sidecar.source).name if sidecar.source else None
    found = read_movie_completeness(path, sidecar.n_frames, source)
    if found.state == GROWING:
        return MovieVerdict(WAIT, found.reason)
    if found.state == BROKEN:
        return MovieVerdict(REFUSED, found.reason)
    header = found.header
    if header.n_raw_frames < 2:
        return MovieVerdict(REFUSED, f"holds a single {header.shape_yx[0]}x{header.shape_yx[1]} image, not a movie "
                                     "(a gain or other reference? name it like one, e.g. gain.mrc, or move it)")
    meta = calc_exposure_metadata(header, sidecar, flags)
    gain = _choose_gain(path, sidecar, gain_path)
    if gain is not None:
        try:
            shape = gains.read(gain)
        except (movies.MovieError, OSError) as exc:
            return MovieVerdict(REFUSED, f"gain reference unusable: {getattr(exc, 'strerror', None) or exc}")
        mismatch = calc_gain_mismatch(gain, shape, header, rotate, flip)
        if mismatch:
            return MovieVerdict(REFUSED, f"gain shape mismatch: {mismatch}")
    return MovieVerdict(READY, header=header, meta=meta, gain_path=gain)


def check_gain_for_movies(gain_path: Path, gain_shape_yx: tuple[int, int], paths: list[Path], rotate: int,
                          flip: int) -> str | None:
    """Before anything is registered: None if the --gain fits the first complete movie (or there is none yet),
    else an error naming the gain, the movie and both shapes."""
    for path in paths:
        found = read_movie_completeness(path)
        if not found.complete or found.header.n_raw_frames < 2:
            continue
        mismatch = calc_gain_mismatch(gain_path, gain_shape_yx, found.header, rotate, flip)
        if mismatch is None:
            return None
        ny, nx = found.header.shape_yx
        return f"--gain {mismatch} (frames of {path} are {ny}x{nx}; nothing was registered)"
    return None
