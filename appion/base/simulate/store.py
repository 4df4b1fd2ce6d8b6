"""Write simulated data to disk (the side-effect half of appion.base.simulate.calc)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import tifffile

from appion.base.io.files import write_atomic, write_text_atomic
from appion.base.simulate.calc import MicrographParams, MovieParams, calc_micrograph, calc_movie, calc_session_defoci_A


def write_movie_tiff(path, frames: np.ndarray) -> None:
    """LZW-compressed TIFF, one page per frame, written atomically."""
    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp) as tif:
            for frame in frames:
                tif.write(frame, compression="lzw", contiguous=False)

    write_atomic(path, write)


def write_mrc(path, data: np.ndarray, pixel_size_A: float) -> None:
    """MRC file (stack for 3D arrays) with the pixel size in the header, written atomically."""
    if data.dtype == np.float64:
        data = data.astype(np.float32)

    def write(tmp: Path) -> None:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = pixel_size_A

    write_atomic(path, write)


def write_truth_json(path, truth: dict) -> None:
    """The JSON-able part of a truth record (arrays such as the gain are skipped), written atomically."""
    clean = {k: v for k, v in truth.items() if not isinstance(v, np.ndarray)}
    write_text_atomic(path, json.dumps(clean, indent=1, sort_keys=True))


def write_simulated_session(out_dir, n_movies: int, base: MovieParams, fmt: str = "tiff",
                            name: str = "sim", micrographs: bool = False, seed: int = 0,
                            progress=None) -> list[Path]:
    """A session of movies with per-movie defocus in out_dir/frames (+ gain, truth JSON, micrographs).

    fmt: 'tiff', 'mrc' or 'both' (alternating).  Movie names follow Leginon's
    `<session>_<n>en.frames.<ext>`; truth sits next to each as `<stem>.truth.json`.
    Returns the movie paths in acquisition order.
    """
    out = Path(out_dir)
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    defoci = calc_session_defoci_A(n_movies, rng)
    paths = []
    gain_written = False
    for i, (df1, df2, ang) in enumerate(defoci):
        params = replace(base, defocus1_A=df1, defocus2_A=df2, astig_angle_deg=ang, seed=seed * 100003 + i)
        frames, truth = calc_movie(params)
        ext = fmt if fmt in ("tiff", "mrc") else ("tiff" if i % 2 == 0 else "mrc")
        stem = f"{name}_{i + 1:05d}en"
        path = frames_dir / f"{stem}.frames.{'tif' if ext == 'tiff' else 'mrc'}"
        if truth["gain_on_disk"] is not None and not gain_written:
            write_mrc(out / "gain.mrc", truth["gain_on_disk"], base.pixel_size_A)
            gain_written = True
        write_truth_json(frames_dir / f"{stem}.truth.json", truth)
        if ext == "tiff":
            write_movie_tiff(path, frames)
        else:
            write_mrc(path, frames if frames.dtype != np.uint8 else frames.astype(np.uint16), base.pixel_size_A)
        if micrographs:
            mic_dir = out / "micrographs"
            mic_dir.mkdir(exist_ok=True)
            mparams = MicrographParams(**{f: getattr(params, f) for f in MicrographParams.__dataclass_fields__
                                          if f != "dose_e_per_A2"},
                                       dose_e_per_A2=params.n_frames * params.dose_per_frame_e_per_A2)
            image, mtruth = calc_micrograph(mparams)
            write_mrc(mic_dir / f"{stem}.mrc", image, base.pixel_size_A)
            write_truth_json(mic_dir / f"{stem}.truth.json", mtruth)
        paths.append(path)
        if progress:
            progress(i + 1, n_movies, path)
    return paths


def write_movie(path, frames: np.ndarray, truth: dict, pixel_size_A: float) -> Path:
    """One movie (TIFF for .tif/.tiff, else MRC) and its truth JSON next to it (`<stem>.truth.json`, stem =
    the name before `.frames.`), as write_simulated_session writes them.  Returns the movie path."""
    path = Path(path)
    stem = path.name.split(".frames.")[0] if ".frames." in path.name else path.stem
    write_truth_json(path.with_name(f"{stem}.truth.json"), truth)
    if path.suffix.lower() in (".tif", ".tiff"):
        write_movie_tiff(path, frames)
    else:
        write_mrc(path, frames if frames.dtype != np.uint8 else frames.astype(np.uint16), pixel_size_A)
    return path
