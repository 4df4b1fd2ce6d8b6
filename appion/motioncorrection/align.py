"""Appion's own frame alignment of one movie: `align_movie_file` (a worker runs it) and `appion motion align`.

Writes OUT.mrc (aligned sum), OUT_DW.mrc (exposure weighted, with a dose), OUT.star (RELION
motion STAR), OUT_shifts.png (drift plot) and with --appion-log OUT_st_Log.txt; all or none.
Frame numbers are 0-based and inclusive (like classic --ddstartframe).  No Django here.
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appion.base import fft
from appion.base.warmup import hold_warm_up_lock
from appion.base.io import movies
from appion.motioncorrection import inputs, outputs




@dataclass(frozen=True)
class MotionOptions:
    """Everything `appion motion align` can be told (the daemon builds one per run)."""

    pixel_size_A: float
    gain_path: str | None = None
    gain_rotate: int = 0
    gain_flip: int = 0
    defects_path: str | None = None
    patch_cols: int = 0
    patch_rows: int = 0
    bin_factor: float = 1.0
    dose_per_frame_e_per_A2: float | None = None
    voltage_kV: float = 300.0
    pre_exposure_e_per_A2: float = 0.0
    first_frame: int = 0
    last_frame: int | None = None
    eer_grouping: int = 1
    eer_sampling: int = 1
    bfactor_global_A2: float = 500.0
    bfactor_local_A2: float = 150.0
    max_iterations: int = 10
    tolerance_px: float = 0.02
    threads: int = 1
    appion_log: bool = False


@dataclass
class MotionOutcome:
    """What one alignment produced.  shifts_px: (n, 2) [dx, dy] specimen displacement per frame
    used, unbinned pixels, relative to the first frame used (RELION's shifts are the negative)."""

    sum_path: Path
    dw_path: Path | None
    star_path: Path
    plot_path: Path
    log_path: Path | None
    shifts_px: np.ndarray
    pixel_size_A: float
    n_frames: int
    seconds: dict[str, float] = field(default_factory=dict)
    local_model: np.ndarray | None = None  # (2, 18) displacement model, unbinned px (None: global only)
    converged: bool = True


class BackgroundIterator:
    """Run `iterator` in a daemon thread from construction on, `depth` items ahead of the consumer: decoding
    starts before the engine is loaded and overlaps its FFTs.

    Iterating yields the items; exceptions from the iterator are re-raised there.  close() (also run when the
    iteration ends or the consumer stops early) tells the thread to stop at its next item.
    """

    _DONE = object()

    def __init__(self, iterator, depth: int = 1) -> None:
        self._items: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(iterator,), name="movie-decoder", daemon=True)
        self._thread.start()

    def _produce(self, iterator) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        try:
            while True:
                item = self._items.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._items.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)


def load_engine():
    """appion.motioncorrection.calc.internal, the engine's numba kernels, imported on first use: numba and scipy
    take ~0.3 s to import in a fresh process, and align_movie_file starts decoding the movie first."""
    from appion.motioncorrection.calc import internal

    return internal


def calc_output_paths(out_path, appion_log: bool, with_dw: bool) -> dict[str, Path | None]:
    """OUT.mrc -> sum, OUT_DW.mrc, OUT.star, OUT_shifts.png, OUT_st_Log.txt."""
    out = Path(out_path)
    stem = out.with_suffix("") if out.suffix.lower() == ".mrc" else out
    return {
        "sum": stem.with_name(stem.name + ".mrc"),
        "dw": stem.with_name(stem.name + "_DW.mrc") if with_dw else None,
        "star": stem.with_name(stem.name + ".star"),
        "plot": stem.with_name(stem.name + "_shifts.png"),
        "log": stem.with_name(stem.name + "_st_Log.txt") if appion_log else None,
    }


def calc_dose_factor(voltage_kV: float) -> float:
    """Critical-exposure curves are for 300 kV; 200 kV electrons do ~1/0.8 as much damage."""
    if abs(voltage_kV - 300.0) <= 5.0:
        return 1.0
    if abs(voltage_kV - 200.0) <= 5.0:
        return 1.0 / 0.8
    raise ValueError(f"dose weighting supports 200 or 300 kV, not {voltage_kV:g} kV")


def check_options(options: MotionOptions) -> None:
    """Raise ValueError for option values that cannot work (before any file is read)."""
    if not options.pixel_size_A > 0:
        raise ValueError(f"--apix must be > 0, not {options.pixel_size_A}")
    if not options.bin_factor >= 1:
        raise ValueError(f"--bin must be >= 1, not {options.bin_factor}")
    if options.gain_rotate not in (0, 1, 2, 3) or options.gain_flip not in (0, 1, 2):
        raise ValueError("--gain-rotate must be 0-3 and --gain-flip 0, 1 or 2")
    patches = (options.patch_cols, options.patch_rows)
    if patches != (0, 0) and (min(patches) < 1 or options.patch_cols * options.patch_rows < 4):
        raise ValueError(f"--patch {patches[0]} {patches[1]}: need at least 4 patches (e.g. 5 5), or 0 0 for none")
    if options.dose_per_frame_e_per_A2 is not None:
        if not options.dose_per_frame_e_per_A2 > 0:
            raise ValueError(f"--dose-per-frame must be > 0, not {options.dose_per_frame_e_per_A2}")
        calc_dose_factor(options.voltage_kV)
    if options.threads < 1:
        raise ValueError("--threads must be >= 1")
    if options.bfactor_global_A2 < 0 or options.bfactor_local_A2 < 0:
        raise ValueError("B-factors must be >= 0")


def set_thread_limits(threads: int) -> int:
    """Bound numba's pool; the FFTs and the decoder get `workers`/`threads` explicitly.

    Also, unless set already, OMP_WAIT_POLICY=PASSIVE: numba's OpenMP workers then sleep between the
    engine's many short parallel loops instead of spinning on the cores the decoder and FFT threads need
    (measured on a K3 movie at 2 threads: ~0.9 s less CPU, ~0.4 s less wall).  It takes effect when the
    OpenMP runtime starts, i.e. before this process's first parallel loop (a worker's warm-up).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numba

    n = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def align_movie_file(movie_path, out_path, options: MotionOptions) -> MotionOutcome:
    """Align one movie and write its outputs (all or nothing).

    Raises movies.MovieError / movies.GainMismatchError / ValueError / OSError with a message
    naming the file and the problem.
    """
    check_options(options)
    timings: dict[str, float] = {}
    movie_path = Path(movie_path)
    paths = calc_output_paths(out_path, options.appion_log, options.dose_per_frame_e_per_A2 is not None)
    if not paths["sum"].parent.is_dir():
        raise OSError(f"{paths['sum'].parent}: output directory does not exist")

    t0 = time.perf_counter()
    header = inputs.read_header(movie_path, options.eer_grouping, options.eer_sampling)
    first = int(options.first_frame)
    last = header.n_frames - 1 if options.last_frame is None else int(options.last_frame)
    if not (0 <= first <= last < header.n_frames):
        raise movies.MovieError(f"{movie_path}: frame range {first}-{last} is outside the movie's "
                                f"{header.n_frames} frames (0-{header.n_frames - 1})")
    gain = None
    if options.gain_path:
        gain = inputs.read_oriented_gain(options.gain_path, header.shape_yx, options.gain_rotate, options.gain_flip)
    mask = inputs.read_defects_mask(options.defects_path, header.shape_yx) if options.defects_path else None
    local = bool(options.patch_cols and options.patch_rows)
    with_dw = options.dose_per_frame_e_per_A2 is not None
    shape = tuple(header.shape_yx)
    decode_threads = max(1, min(int(options.threads), os.cpu_count() or 1))
    # The one full-size copy of the movie: the stored integer frames (global shifts of an integer TIFF or an EER
    # movie without a defect map: 1/4 or 1/2 of a float32 copy; gain applied in the binning and, once the shifts
    # are known, in the FFT padding), else the float32 frames (local model: cut into tiles later) or, for other
    # global cases, their spectra, computed while the next chunk is decoded.  Decoding starts here, before the
    # engine is loaded, and never waits for the binning (the stored frames have their place in `raw` already).
    raw = None
    raw_dtype = inputs.calc_raw_dtype(header)
    if not local and mask is None and raw_dtype is not None:
        raw = np.empty((last - first + 1,) + shape, raw_dtype)
        raw_gain = gain if gain is not None else np.ones((1, 1), np.float32)
        decoded = BackgroundIterator(inputs.iter_raw_frames(movie_path, header, first, last, decode_threads, raw),
                                     depth=len(raw))
    else:
        decoded = BackgroundIterator(inputs.iter_corrected_chunks(
            movie_path, first, last, options.eer_grouping, options.eer_sampling, decode_threads, gain, mask))
    try:
        internal = load_engine()
        threads = set_thread_limits(options.threads)
        factor = internal.calc_alignment_binning(shape, options.pixel_size_A, options.bfactor_global_A2)
        fine = internal.calc_refinement_binning(shape, options.pixel_size_A, options.bfactor_local_A2, factor)
        # The alignment's frames: binned by `fine`, cropped to fast FFT sizes, transformed as they come.
        fine_yx = (internal.calc_fast_size_below(shape[0] // fine), internal.calc_fast_size_below(shape[1] // fine))
        small_spectra = np.empty((last - first + 1, fine_yx[0], fine_yx[1] // 2 + 1), np.complex64)
        state = internal.calc_sum_plan(shape, tiled=local, with_dw=with_dw)
    except BaseException:
        decoded.close()
        raise
    stored: list[np.ndarray] = []
    means: list[float] = []

    def add_small_frame(small_frame: np.ndarray) -> float:
        """Keep the binned frame's spectrum (mean removed); returns its mean (the FFT padding value)."""
        k = len(means)
        fft.calc_rfft2(small_frame[:fine_yx[0], :fine_yx[1]], out=small_spectra[k])
        means.append(float(small_spectra[k, 0, 0].real) / (fine_yx[0] * fine_yx[1]))
        small_spectra[k, 0, 0] = 0.0
        return means[-1]

    if raw is not None:
        for j in decoded:
            add_small_frame(internal.calc_binned_raw_frame(raw[j], raw_gain, gain is not None, fine))
    else:
        for _, chunk in decoded:
            chunk_means = [add_small_frame(small_frame) for small_frame in internal.calc_binned_frames(chunk, fine)]
            if local:
                stored.extend(chunk)
            else:
                for frame, mean in zip(chunk, chunk_means):
                    stored.append(internal.calc_frame_spectrum(state, frame, mean, threads))
            del chunk
    del mask
    if raw is None:
        del gain
    timings["read"] = time.perf_counter() - t0  # decoding, binning and (global shifts, float frames) FFTs

    t0 = time.perf_counter()
    n = len(stored) if raw is None else len(raw)
    # Search on a Fourier crop (global B-factor), then Newton refinement on the finer frames (local B).
    result = internal.calc_global_alignment(small_spectra, fine_yx, fine, factor, options.pixel_size_A,
                                            options.bfactor_global_A2, options.bfactor_local_A2,
                                            options.max_iterations, options.tolerance_px, workers=threads,
                                            keep_aligned=local)  # only the patches look at the aligned frames
    shifts, converged = result.shifts_px, result.converged
    model = None
    if local:  # patches of the aligned frames, Fourier-cropped to `factor` binning
        coarse_yx = internal.calc_coarse_shape(fine_yx, fine, factor)
        coarse = internal.calc_fourier_crop_spectra(small_spectra, fine_yx, coarse_yx)
        del small_spectra
        aligned = fft.calc_irfft2(coarse, coarse_yx, threads)
        del coarse
        unbinned = fine * internal.calc_crop_scale(fine_yx, coarse_yx)  # unbinned px per px of `aligned` (x, y)
        centres, trajectories, _ = internal.calc_patch_trajectories(
            aligned, options.patch_cols, options.patch_rows,
            options.pixel_size_A * float(np.sqrt(unbinned[0] * unbinned[1])), options.bfactor_local_A2,
            options.max_iterations, options.tolerance_px / float(unbinned.min()), workers=threads)
        del aligned
        model = internal.calc_local_model((centres + 0.5) * unbinned - 0.5, trajectories * unbinned, shape)
    small_spectra = None
    timings["align"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # The drift plot only needs the shifts: render it while the frames are summed (GIL-free work).
    plot_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-plot")
    plot_png = plot_pool.submit(outputs.calc_shift_plot_png, shifts, options.pixel_size_A, first, movie_path.name,
                                options.dose_per_frame_e_per_A2)
    plot_pool.shutdown(wait=False)
    table, step = None, 1.0
    if with_dw:
        dose = options.dose_per_frame_e_per_A2 * calc_dose_factor(options.voltage_kV)
        pre = (options.pre_exposure_e_per_A2 + first * options.dose_per_frame_e_per_A2) * calc_dose_factor(options.voltage_kV)
        table, step = internal.calc_weight_table(options.pixel_size_A, dose, n, pre)
    if raw is not None:
        # The frames' full-size FFTs and phase-shifted sums, one frame per thread, each thread with its own partial
        # sums; started once the alignment is done (earlier they would only compete with it for the cores, and
        # their buffers could not reuse the alignment's memory).
        internal.calc_add_raw_frames(state, raw, raw_gain, gain is not None, means, shifts, table, step, threads)
        del raw, raw_gain, gain
    stored.reverse()
    for j in range(len(stored)):
        item = stored.pop()  # free each frame/spectrum as soon as it is summed
        wrow = None if table is None else table[j]
        if local:
            tile_shifts = internal.calc_tile_shifts(state, shifts[j], model, shape, j)
            internal.calc_add_frame(state, item, tile_shifts, wrow, step, threads, frame_mean=means[j])
        else:
            internal.calc_add_spectra(state, item, shifts[j].reshape(1, 2), wrow, step)
        del item
    image, image_dw = internal.calc_finished_sums(state, shape, options.bin_factor, threads)
    del state
    timings["sum"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out_apix = options.pixel_size_A * options.bin_factor
    general = outputs.StarGeneral(
        movie_name=str(movie_path), shape_yx=shape, n_movie_frames=header.n_frames, binning=options.bin_factor,
        original_pixel_size_A=options.pixel_size_A,
        dose_per_frame_e_per_A2=options.dose_per_frame_e_per_A2 if with_dw else 1.0,
        pre_exposure_e_per_A2=options.pre_exposure_e_per_A2, voltage_kV=options.voltage_kV,
        start_frame=first + 1, gain_name=options.gain_path, defect_file=options.defects_path)
    blocks = outputs.calc_motion_star_blocks(general, np.arange(first, last + 1) + 1, shifts, header.format, model)
    writers = [
        (paths["sum"], lambda p: outputs.write_sum_mrc(p, image, out_apix)),
        (paths["star"], lambda p: outputs.write_motion_star(p, blocks)),
        (paths["plot"], lambda p: outputs.write_png(p, plot_png.result())),
    ]
    if with_dw:
        writers.append((paths["dw"], lambda p: outputs.write_sum_mrc(p, image_dw, out_apix)))
    if options.appion_log:
        text = outputs.calc_appion_log_text(shifts, first, header.n_frames, options.bin_factor, header.format)
        writers.append((paths["log"], lambda p: outputs.write_appion_log(p, text)))
    outputs.write_outputs(writers)
    timings["write"] = time.perf_counter() - t0
    return MotionOutcome(paths["sum"], paths["dw"], paths["star"], paths["plot"], paths["log"], shifts,
                         out_apix, n, timings, model, converged)


# --------------------------------------------------------------------------------- warm-up

WARM_UP_SHAPE_YX = (192, 256)  # small enough to align in a fraction of a second once compiled
WARM_UP_FRAMES = 6



def calc_warm_up_movie(dtype, seed: int = 0) -> np.ndarray:
    """A tiny movie of shot noise on a drifting random texture: (WARM_UP_FRAMES, *WARM_UP_SHAPE_YX) of dtype."""
    rng = np.random.default_rng(seed)
    ny, nx = WARM_UP_SHAPE_YX
    texture = 1.0 + 0.5 * rng.standard_normal((ny + 8, nx + 8))
    frames = np.empty((WARM_UP_FRAMES, ny, nx), dtype)
    for i in range(WARM_UP_FRAMES):
        expected = np.clip(texture[i % 4:i % 4 + ny, i // 2:i // 2 + nx], 0.0, None) * 2.0
        frames[i] = rng.poisson(expected).astype(dtype)
    return frames


def prepare_worker_process() -> None:
    """The process-wide memory settings `appion motion align` runs with, for a worker process that aligns
    movies one after another: numpy's hugepage advice off and glibc keeping freed blocks for reuse (see
    set_numpy_hugepage_advice, set_malloc_keeps_freed_memory).  Measured on a K3 movie aligned three times
    in one process (2 cores, exposure weighting): without them every movie pays ~115,000 fresh page faults
    and 3–12 s of kernel time (wall 7.6–12.9 s); with them 0.2–1.3 s of kernel time (wall 5.9–6.6 s).  The
    worker's memory then stays at its largest movie's peak instead of being returned between movies."""
    set_numpy_hugepage_advice(False)
    set_malloc_keeps_freed_memory()


def warm_up_common_path(work_dir=None) -> dict[str, float]:
    """warm_up_engines for the usual first movie only (an 8-bit integer TIFF: global shifts, exposure weighting,
    gain): a worker's first stage, before the other engines' (see appion.base.steps.Engine.warm_up)."""
    return warm_up_engines(work_dir, cases=("uint8",))


def warm_up_other_paths(work_dir=None) -> dict[str, float]:
    """The second stage after warm_up_common_path: the cases it left out (16-bit TIFF, float MRC with defects)."""
    return warm_up_engines(work_dir, prepare_process=False, cases=("uint16", "float32"))


def warm_up_engines(work_dir=None, prepare_process: bool = True,
                    cases: tuple[str, ...] = ("uint8", "uint16", "float32")) -> dict[str, float]:
    """Prepare a worker before its first movie: prepare_worker_process() (unless prepare_process is False),
    then compile, or load from the numba cache, every numba function of the engine.

    Aligns tiny synthetic movies through align_movie_file, one per code path a movie can take: an 8-bit and
    a 16-bit integer TIFF (frames kept as stored; global shifts; exposure weighting; gain; classic log) and
    a float32 MRC with a defect map (decoded frames; local patch model); EER movies take the integer
    path.  cases: which of them ("uint8", "uint16", "float32").  Outputs go to a temporary directory (or
    `work_dir`) and are removed.  Returns the seconds each case took (≈ 0.1 s each from a warm cache; tens of
    seconds on a fresh install, once per cache directory).
    """
    import tempfile

    import mrcfile
    import numba
    import tifffile

    numba_threads = numba.config.NUMBA_NUM_THREADS
    if prepare_process:
        prepare_worker_process()
    seconds: dict[str, float] = {}
    with hold_warm_up_lock("motion"), tempfile.TemporaryDirectory(prefix="appion-warm-up-", dir=work_dir) as tmp:
        folder = Path(tmp)
        gain = folder / "gain.mrc"
        with mrcfile.new(gain) as mrc:
            mrc.set_data(np.ones(WARM_UP_SHAPE_YX, np.float32))
        defects = folder / "defects.mrc"
        with mrcfile.new(defects) as mrc:
            bad = np.zeros(WARM_UP_SHAPE_YX, np.int8)
            bad[:, 7] = 1
            mrc.set_data(bad)
        runs = []
        for dtype in (np.uint8, np.uint16):
            if np.dtype(dtype).name not in cases:
                continue
            path = folder / f"movie-{np.dtype(dtype).name}.tif"
            tifffile.imwrite(path, calc_warm_up_movie(dtype), compression="lzw")
            runs.append((path, MotionOptions(pixel_size_A=1.0, gain_path=str(gain), dose_per_frame_e_per_A2=2.0,
                                             appion_log=True, threads=numba_threads)))
        if "float32" in cases:
            path = folder / "movie-float32.mrc"
            with mrcfile.new(path) as mrc:
                mrc.set_data(calc_warm_up_movie(np.float32))
            runs.append((path, MotionOptions(pixel_size_A=1.0, defects_path=str(defects), patch_cols=2,
                                             patch_rows=2, dose_per_frame_e_per_A2=2.0,
                                             threads=numba_threads)))
        for path, options in runs:
            t0 = time.perf_counter()
            align_movie_file(path, folder / (path.stem + "-aligned.mrc"), options)
            seconds[path.suffix[1:] + "-" + path.stem.split("-")[1]] = time.perf_counter() - t0
    return seconds


# --------------------------------------------------------------------------------- command

def calc_options(args: argparse.Namespace) -> MotionOptions:
    """MotionOptions from parsed `motion align` arguments."""
    cols, rows = args.patch if args.patch else (0, 0)
    if args.dose_per_frame is not None and args.kv is None:
        raise ValueError("--dose-per-frame needs --kv (the accelerating voltage) for exposure weighting")
    return MotionOptions(
        pixel_size_A=args.apix, gain_path=args.gain, gain_rotate=args.gain_rotate, gain_flip=args.gain_flip,
        defects_path=args.defects, patch_cols=cols, patch_rows=rows, bin_factor=args.bin,
        dose_per_frame_e_per_A2=args.dose_per_frame, voltage_kV=args.kv if args.kv is not None else 300.0,
        pre_exposure_e_per_A2=args.pre_exposure, first_frame=args.first_frame, last_frame=args.last_frame,
        eer_grouping=args.eer_grouping, eer_sampling=args.eer_sampling, bfactor_global_A2=args.bfactor_global,
        bfactor_local_A2=args.bfactor_local, threads=args.threads, appion_log=args.appion_log)


def set_numpy_hugepage_advice(enabled: bool) -> None:
    """Turn numpy's madvise(MADV_HUGEPAGE) for large arrays on or off (process-wide).

    Measured on this project's 2-core VMs (THP in 'madvise' mode): with it on, the ~8 GB of
    fresh large arrays of a K3 movie cost ~8 s of extra kernel time (sys 13 s vs 5 s, wall 28 s
    vs 19-21 s).  The command turns it off for its own process; numpy without the switch is left alone.
    """
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            mod = __import__(module, fromlist=["_set_madvise_hugepage"])
        except ImportError:
            continue
        setter = getattr(mod, "_set_madvise_hugepage", None)
        if setter is not None:
            setter(bool(enabled))
            return


def set_malloc_keeps_freed_memory() -> bool:
    """Make glibc malloc keep freed large blocks for reuse instead of returning them to the kernel.

    Why: each frame's FFT allocates ~100 MB arrays; glibc serves such sizes with mmap and unmaps them
    on free, so every frame pays fresh page faults and zeroing (measured on the 2-core VMs: FFT of a
    K3 frame 0.15 s CPU with reuse vs 0.26 s without, most of it kernel time).  Blocks come from one
    heap (one arena), never mmap, and the heap is not trimmed.  Process-wide, so only the command
    sets it; returns False where this is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    ok = mallopt(m_arena_max, 1) == 1
    ok = mallopt(m_mmap_max, 0) == 1 and ok
    ok = mallopt(m_trim_threshold, 2 ** 31 - 1) == 1 and ok
    return ok


def cmd_motion_align(args: argparse.Namespace) -> int:
    """Run `appion motion align`; errors become one line on stderr and exit code 1."""
    set_numpy_hugepage_advice(False)
    set_malloc_keeps_freed_memory()
    try:
        options = calc_options(args)
        outcome = align_movie_file(args.movie, args.output, options)
    except (movies.MovieError, movies.GainMismatchError, ValueError, OSError, MemoryError) as exc:
        message = str(exc).replace("\n", " ")
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
            message = f"{exc.filename}: {message}"
        print(f"appion motion align: error: {message}", file=sys.stderr)
        return 1
    total, early, late = load_engine().calc_motion_summary(outcome.shifts_px)
    print(f"{args.movie}: {outcome.n_frames} frames, drift {total * options.pixel_size_A:.1f} Å "
          f"({total:.2f} px), wrote {outcome.sum_path}"
          + (f", {outcome.dw_path}" if outcome.dw_path else "")
          + f" [{', '.join(f'{k} {v:.1f} s' for k, v in outcome.seconds.items())}]")
    if not outcome.converged:
        print(f"{args.movie}: warning: alignment did not converge within {options.max_iterations} iterations",
              file=sys.stderr)
    return 0
