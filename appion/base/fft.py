"""The 2-D real FFTs of the engines' hot paths: Intel oneMKL (mkl_fft) where it is installed, else scipy.fft.

Why: on the 2-core x86-64 machines the benchmarks run on, oneMKL's single-threaded 2-D real transform of a
K3 frame (4096×5760 float32) takes 0.054 s against pocketfft's 0.095 s, and 1350×1920 takes 0.003 s
against 0.006 s.  oneMKL's own batched (3-D) and multi-threaded transforms scale poorly there, so a batch
is split into single 2-D transforms, `workers` Python threads each taking a contiguous share (mkl_fft
releases the GIL), and oneMKL runs its sequential layer: no second OpenMP runtime beside numba's, no
threads spinning after a call.

`APPION_FFT=scipy` in the environment forces scipy.fft (e.g. to compare); `FFT_BACKEND` says which one
serves this process.  Both give the same transforms to float32 precision (unnormalised forward, 1/N
inverse, numpy's frequency order); results are complex64 / float32.
"""
from __future__ import annotations

import os
import threading

import numpy as np


def _load_mkl_fft():
    """mkl_fft, with oneMKL's sequential threading layer (unless MKL_THREADING_LAYER says otherwise), or None."""
    if os.environ.get("APPION_FFT", "").strip().lower() == "scipy":
        return None
    os.environ.setdefault("MKL_THREADING_LAYER", "SEQUENTIAL")
    try:
        import mkl_fft
    except ImportError:
        return None
    return mkl_fft


_mkl_fft = _load_mkl_fft()
FFT_BACKEND = "mkl" if _mkl_fft is not None else "scipy"


def run_in_threads(workers: int, work, name: str = "share") -> None:
    """work(w) for w in range(workers): w = 0 in the calling thread, the others in threads of their own; returns
    when all are done and re-raises the first exception any of them raised."""
    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            work(w)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,), name=f"{name}-{w}") for w in range(1, workers)]
    for thread in threads:
        thread.start()
    run(0)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _run_split(count: int, workers: int, work) -> None:
    """work(start, stop) over [0, count) in min(workers, count) threads (run_in_threads), contiguous shares."""
    workers = max(1, min(int(workers), count))
    bounds = [count * i // workers for i in range(workers + 1)]
    run_in_threads(workers, lambda w: work(bounds[w], bounds[w + 1]), name="fft")


def calc_rfft2(images: np.ndarray, workers: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Real 2-D FFT over the last two axes: (..., y, x) float32 -> (..., y, x//2+1) complex64.

    workers: threads for a batch (a single image takes one).  out: where to write (C-contiguous complex64 of
    the result's shape), else a new array.
    """
    images = np.asarray(images, dtype=np.float32)
    ny, nx = images.shape[-2:]
    shape = images.shape[:-2] + (ny, nx // 2 + 1)
    if out is None:
        out = np.empty(shape, np.complex64)
    elif out.shape != shape or out.dtype != np.complex64:
        raise ValueError(f"calc_rfft2: out is {out.dtype} {out.shape}, needs complex64 {shape}")
    if _mkl_fft is None:
        import scipy.fft

        out[...] = scipy.fft.rfft2(images, axes=(-2, -1), workers=workers)
        return out
    flat_in = images.reshape((-1, ny, nx))
    flat_out = out.reshape((-1,) + shape[-2:])

    def work(start: int, stop: int) -> None:
        for i in range(start, stop):
            _mkl_fft.rfft2(flat_in[i], out=flat_out[i])

    _run_split(len(flat_in), workers, work)
    return out


def calc_irfft2(spectra: np.ndarray, shape_yx: tuple[int, int], workers: int = 1,
                out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of calc_rfft2: (..., y', x'//2+1) complex -> (..., y, x) float32 with (y, x) = shape_yx
    (spectra cropped or zero-padded as numpy's irfft2 does)."""
    spectra = np.asarray(spectra, dtype=np.complex64)
    ny, nx = (int(n) for n in shape_yx)
    shape = spectra.shape[:-2] + (ny, nx)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"calc_irfft2: out is {out.dtype} {out.shape}, needs float32 {shape}")
    if _mkl_fft is None:
        import scipy.fft

        out[...] = scipy.fft.irfft2(spectra, s=(ny, nx), axes=(-2, -1), workers=workers)
        return out
    flat_in = spectra.reshape((-1,) + spectra.shape[-2:])
    flat_out = out.reshape((-1, ny, nx))

    def work(start: int, stop: int) -> None:
        for i in range(start, stop):
            _mkl_fft.irfft2(flat_in[i], s=(ny, nx), out=flat_out[i])

    _run_split(len(flat_in), workers, work)
    return out
