"""appion.motioncorrection.calc.internal: alignment accuracy on simulated movies, and the numerics.

Accuracy is measured against the simulator's truth (appion.base.simulate.calc): RMS distance between
estimated and true trajectories after removing the mean offset.  Small movies keep this fast;
benchmarks/motion.py runs the 2048², 32-frame cases and RELION.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from appion.base.physics import calc_exposure_weights
from appion.base.simulate.calc import MovieParams, calc_local_shifts_px, calc_movie
from appion.motioncorrection.calc import internal as I


def align_global(frames: np.ndarray, pixel_size_A: float = 1.0, b_global: float = 500.0, b_local: float = 150.0):
    """The command's global alignment (search on a Fourier crop, then Newton refinement on the finer frames).

    Returns (shifts unbinned (n, 2), unbinned pixels per pixel of `aligned` (x, y), the aligned frames
    Fourier-cropped to calc_alignment_binning's sampling, as the command cuts patches from (n, y, x) float32)."""
    f = frames.astype(np.float32)
    factor = I.calc_alignment_binning(f.shape[1:], pixel_size_A, b_global)
    fine = I.calc_refinement_binning(f.shape[1:], pixel_size_A, b_local, factor)
    small = I.calc_binned_frames(f, fine)
    fast = (I.calc_fast_size_below(small.shape[1]), I.calc_fast_size_below(small.shape[2]))
    small = np.ascontiguousarray(small[:, :fast[0], :fast[1]])
    spectra = I.calc_spectra(small, 2)
    result = I.calc_global_alignment(spectra, fast, fine, factor, pixel_size_A, b_global, b_local, 10, 0.02,
                                     workers=2)
    assert result.converged
    coarse_yx = I.calc_coarse_shape(fast, fine, factor)
    coarse = I.calc_fourier_crop_spectra(spectra, fast, coarse_yx)
    aligned = scipy.fft.irfft2(coarse, s=coarse_yx, axes=(-2, -1)).astype(np.float32)
    return result.shifts_px, fine * I.calc_crop_scale(fast, coarse_yx), aligned


@pytest.mark.parametrize("dose, drift, seed", [(1.2, 40.0, 1), (2.0, 5.0, 2), (1.5, 20.0, 3)])
def test_global_trajectory_error_below_0p08_px(dose, drift, seed):
    params = MovieParams(shape=(1024, 1024), n_frames=24, dose_per_frame_e_per_A2=dose, drift_total_px=drift,
                         seed=seed)
    frames, truth = calc_movie(params)
    shifts, _, _ = align_global(frames)
    error = I.calc_trajectory_rms_error(shifts, truth["shifts_px"])
    assert error <= 0.08, f"RMS error {error:.3f} px"
    # and the trajectory really moved that far (not a trivially small drift)
    assert np.linalg.norm(shifts[-1]) > 0.5 * np.linalg.norm(truth["shifts_px"][-1])


def test_local_model_beats_global_only_at_patch_centres():
    params = MovieParams(shape=(1024, 1024), n_frames=20, dose_per_frame_e_per_A2=2.0, drift_total_px=12.0,
                         local_deformation_px=4.0, seed=7)
    frames, truth = calc_movie(params)
    shifts, unbinned, aligned = align_global(frames)
    centres, trajectories, _ = I.calc_patch_trajectories(aligned, 4, 4, float(np.sqrt(np.prod(unbinned))), 150.0,
                                                         workers=2)
    centres_px = (centres + 0.5) * unbinned - 0.5
    model = I.calc_local_model(centres_px, trajectories * unbinned, (1024, 1024))
    global_err, local_err = [], []
    for x, y in centres_px:
        true = calc_local_shifts_px(truth, x, y)
        global_err.append(I.calc_trajectory_rms_error(shifts, true))
        local = shifts + I.calc_local_shifts_at(model, x, y, (1024, 1024), len(shifts))
        local_err.append(I.calc_trajectory_rms_error(local, true))
    g, l = np.sqrt(np.mean(np.square(global_err))), np.sqrt(np.mean(np.square(local_err)))
    assert l < 0.5 * g, f"local {l:.3f} px vs global-only {g:.3f} px"
    assert l <= 0.15


def test_local_model_fit_recovers_known_field_with_patch_offsets():
    rng = np.random.default_rng(0)
    true = rng.normal(0, 0.02, size=(2, 18))
    centres = np.array([(x, y) for y in np.linspace(100, 900, 5) for x in np.linspace(100, 900, 5)])
    traj = np.stack([I.calc_local_shifts_at(true, x, y, (1000, 1000), 16) for x, y in centres])
    traj += rng.normal(0, 3.0, size=(len(centres), 1, 2))  # arbitrary per-patch origin
    fitted = I.calc_local_model(centres, traj, (1000, 1000))
    for x, y in [(250.0, 700.0), (500.0, 500.0)]:
        np.testing.assert_allclose(I.calc_local_shifts_at(fitted, x, y, (1000, 1000), 16),
                                   I.calc_local_shifts_at(true, x, y, (1000, 1000), 16), atol=1e-6)


def test_peak_fit_is_subpixel_accurate():
    ny = nx = 64
    y, x = np.mgrid[0:ny, 0:nx]
    cc = np.empty((3, ny, nx), np.float32)
    truth = [(1.3, -2.6), (-0.45, 0.2), (5.0, 3.75)]
    for j, (dx, dy) in enumerate(truth):
        xx = (x - dx + nx / 2) % nx - nx / 2
        yy = (y - dy + ny / 2) % ny - ny / 2
        cc[j] = np.exp(-(xx ** 2 + yy ** 2) / (2 * 2.0 ** 2))
    out = np.empty((3, 2))
    I._find_peaks(cc, 10, out)
    np.testing.assert_allclose(out, truth, atol=1e-3)


def test_global_sum_and_tiled_sum_undo_known_shifts():
    rng = np.random.default_rng(3)
    base = scipy.fft.irfft2(scipy.fft.rfft2(rng.normal(size=(300, 340))) *
                            np.exp(-0.002 * (np.fft.fftfreq(300)[:, None] ** 2 + np.fft.rfftfreq(340) ** 2) * 1e4),
                            s=(300, 340)).astype(np.float32)
    d = np.array([[0.0, 0.0], [3.4, -1.25], [-7.6, 2.5]])
    fy, fx = np.fft.fftfreq(300)[:, None], np.fft.rfftfreq(340)[None, :]
    frames = [scipy.fft.irfft2(scipy.fft.rfft2(base) * np.exp(-2j * np.pi * (fx * dx + fy * dy)), s=base.shape)
              .astype(np.float32) for dx, dy in d]
    for tiled in (False, True):
        state = I.calc_sum_plan(base.shape, tiled=tiled, with_dw=False, core_px=128)
        for j, frame in enumerate(frames):
            I.calc_add_frame(state, frame, I.calc_tile_shifts(state, d[j], None, base.shape, j), None, 1.0)
        total, _ = I.calc_finished_sums(state, base.shape)
        inner = (slice(24, -24), slice(24, -24))  # the tiled sum clamps at the image edge
        np.testing.assert_allclose(total[inner], 3 * base[inner], atol=2e-3 * np.abs(base).max() * 3)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("threads", [1, 3])
def test_stored_frames_sum_like_their_float_copies(threads, weighted):
    """calc_add_raw_frames (integer frames × gain, frames spread over threads with partial sums, one or two frames
    per pass) gives the sums of the float32 frames added one by one (calc_frame_spectrum + calc_add_spectra),
    with and without the exposure-weighted sum, and the same bits every time."""
    rng = np.random.default_rng(11)
    shape = (150, 182)  # padded to a fast size: the mean fills the rest
    raw = rng.poisson(3.0, (7,) + shape).astype(np.uint8)
    gain = rng.uniform(0.8, 1.2, shape).astype(np.float32)
    shifts = rng.uniform(-6, 6, (7, 2))
    table, step = I.calc_weight_table(1.0, 2.0, 7, 0.0) if weighted else (None, 1.0)
    means = [float((f.astype(np.float32) * gain).mean()) for f in raw]
    expected = I.calc_sum_plan(shape, tiled=False, with_dw=weighted)
    for j, frame in enumerate(raw):
        spectrum = I.calc_frame_spectrum(expected, frame.astype(np.float32) * gain, means[j])
        I.calc_add_spectra(expected, spectrum, shifts[j].reshape(1, 2), None if table is None else table[j], step)
    runs = []
    for _ in range(2):
        got = I.calc_sum_plan(shape, tiled=False, with_dw=weighted)
        I.calc_add_raw_frames(got, raw, gain, True, means, shifts, table, step, threads)
        runs.append(got)
    got = runs[0]
    pairs = [(got.total, expected.total)] + ([(got.total_dw, expected.total_dw)] if weighted else [])
    for ours, theirs in pairs:
        assert np.abs(ours - theirs).max() < 1e-5 * np.abs(theirs).max()
    assert np.array_equal(runs[1].total, got.total)  # same bits
    if weighted:
        assert np.array_equal(runs[1].total_dw, got.total_dw)
        ac = (0, slice(1, None), slice(1, None))  # away from the mean (weight 1 at |f| = 0)
        assert np.abs(got.total_dw[ac] - got.total[ac]).max() > 0.1 * np.abs(got.total[ac]).max()  # weighted


def test_tiled_sum_follows_a_local_model():
    """Frames displaced by a smooth field are summed sharply only when the model is applied."""
    rng = np.random.default_rng(4)
    shape = (512, 512)
    k2 = np.fft.fftfreq(512)[:, None] ** 2 + np.fft.rfftfreq(512)[None, :] ** 2
    base = scipy.fft.irfft2(scipy.fft.rfft2(rng.normal(size=shape)) * np.exp(-k2 * 200), s=shape)
    model = np.zeros((2, 18))
    model[0, 3] = 1.0   # dx = x_norm * t   (t = frame index)
    model[1, 9] = -0.8  # dy = -0.8 y_norm * t
    yy, xx = np.mgrid[0:512, 0:512].astype(float)
    from scipy import ndimage
    frames = []
    for t in range(4):
        dx = model[0, 3] * (xx / 512 - 0.5) * t
        dy = model[1, 9] * (yy / 512 - 0.5) * t
        frames.append(ndimage.map_coordinates(base, [yy - dy, xx - dx], order=3, mode="grid-wrap").astype(np.float32))
    sums = {}
    for use_model in (False, True):
        state = I.calc_sum_plan(shape, tiled=True, with_dw=False, core_px=64)
        for t, frame in enumerate(frames):
            shifts = I.calc_tile_shifts(state, np.zeros(2), model if use_model else np.zeros((2, 18)), shape, t)
            I.calc_add_frame(state, frame, shifts, None, 1.0)
        sums[use_model] = I.calc_finished_sums(state, shape)[0]
    inner = (slice(40, -40), slice(40, -40))
    err_model = np.abs(sums[True] - 4 * base)[inner].mean()
    err_plain = np.abs(sums[False] - 4 * base)[inner].mean()
    assert err_model < 0.25 * err_plain


def test_weight_table_matches_physics():
    table, step = I.calc_weight_table(1.2, 1.5, 10, 2.0)
    f = np.array([0.0, 0.1, 0.3, 0.5])
    idx = np.round(f / step).astype(int)
    expected = calc_exposure_weights(idx * step / 1.2, 1.5, 10, 2.0) * np.sqrt(10)
    np.testing.assert_allclose(table[:, idx], expected, rtol=1e-5)
    assert table[:, 0] == pytest.approx(np.ones(10), rel=1e-5)  # DC: every frame counts fully


def test_fourier_crop_keeps_the_mean_and_binned_shape():
    rng = np.random.default_rng(5)
    image = (rng.poisson(5.0, size=(200, 300)) + 0.0).astype(np.float32)
    out_yx = I.calc_output_shape(image.shape, 2.0)
    assert out_yx == (100, 150)
    spec = I.calc_fourier_crop(scipy.fft.rfft2(image).astype(np.complex64), image.shape, out_yx)
    binned = scipy.fft.irfft2(spec, s=out_yx)
    assert binned.mean() == pytest.approx(image.mean(), rel=1e-5)
    assert I.calc_output_shape((4092, 5760), 1.5) == (2728, 3840)


def test_alignment_binning_follows_bfactor():
    assert I.calc_alignment_binning((4092, 5760), 0.83, 500.0) == 5  # large frame: binned to ~800 px
    assert I.calc_alignment_binning((2048, 2048), 1.0, 500.0) == 3  # B-factor rule
    assert I.calc_alignment_binning((4092, 5760), 0.83, 0.0) == 1
    assert I.calc_alignment_binning((1024, 1024), 1.0, 500.0) == 2  # keeps >= 512 px
    small = I.calc_binned_frames(np.arange(2 * 6 * 8, dtype=np.float32).reshape(2, 6, 8), 2)
    assert small.shape == (2, 3, 4)
    assert small[0, 0, 0] == pytest.approx((0 + 1 + 8 + 9) / 4)


def test_warm_up_runs_every_code_path_on_tiny_movies(tmp_path):
    """align.warm_up_engines: 8- and 16-bit TIFF (frames kept as stored) and float MRC with defects and
    patches all align; nothing is left behind."""
    from appion.motioncorrection import align

    seconds = align.warm_up_engines(work_dir=tmp_path, prepare_process=False)  # keep pytest's own malloc settings
    assert set(seconds) == {"tif-uint8", "tif-uint16", "mrc-float32"}
    assert list(tmp_path.iterdir()) == []


def test_refinement_binning_follows_local_bfactor():
    """About 2.5 Å pixels for B = 150 Å² (K3 at 0.83 Å: 3, not the search's 5), never coarser than the search."""
    assert I.calc_refinement_binning((4092, 5760), 0.83, 150.0, 5) == 3
    assert I.calc_refinement_binning((2048, 2048), 1.0, 150.0, 3) == 2
    assert I.calc_refinement_binning((1024, 1024), 1.0, 150.0, 2) == 2
    assert I.calc_refinement_binning((1024, 1024), 0.83, 0.0, 2) == 1  # no filter: unbinned
    assert I.calc_refinement_binning((4092, 5760), 0.83, 0.0, 5) == 3  # ... unless too large
    assert I.calc_refinement_binning((8184, 11520), 0.83, 150.0, 10) == 6  # super-resolution K3: memory bound


def test_newton_refinement_recovers_known_subpixel_shifts():
    """Noise-free frames moved by known sub-pixel shifts: the Newton steps find them to 1e-3 px."""
    rng = np.random.default_rng(5)
    ny, nx = 192, 256
    k2 = np.fft.fftfreq(ny)[:, None] ** 2 + np.fft.rfftfreq(nx)[None, :] ** 2
    base = scipy.fft.rfft2(rng.normal(size=(ny, nx))) * np.exp(-k2 * 60)
    truth = np.array([[0.0, 0.0], [0.31, -0.22], [-0.45, 0.12], [0.08, 0.4], [0.2, 0.27]])
    py, px = I.calc_phase_vectors(-truth, ny, nx)  # frame i shows the image moved by +truth[i]
    spectra = (base[None] * py[:, :, None] * px[:, None, :]).astype(np.complex64)
    spectra[:, 0, 0] = 0
    result = I.calc_newton_shifts(spectra, (ny, nx), 2.0, 150.0, max_iterations=12, tolerance_px=1e-5)
    assert result.converged
    # each frame meets the sum of the others: the residual shrinks by ≥ (n − 1) per iteration
    updates = np.array(result.rms_updates_px)
    assert np.all(updates[1:] <= updates[:-1] / 3.0)
    np.testing.assert_allclose(result.shifts_px, truth - truth[0], atol=1e-3)


def test_fourier_crop_spectra_resamples_the_same_field_of_view():
    rng = np.random.default_rng(6)
    image = rng.normal(5.0, 1.0, size=(120, 160)).astype(np.float32)
    spectra = scipy.fft.rfft2(image)[None].astype(np.complex64)
    crop = I.calc_fourier_crop_spectra(spectra, (120, 160), (60, 80))
    small = scipy.fft.irfft2(crop[0], s=(60, 80))
    assert small.mean() == pytest.approx(image.mean(), rel=1e-5)
    np.testing.assert_allclose(I.calc_crop_scale((120, 160), (60, 80)), [2.0, 2.0])
    assert I.calc_coarse_shape((1364, 1920), 3, 5) == (810, 1152)


def test_drift_plot_is_a_png_of_the_trajectory():
    from PIL import Image

    from appion.motioncorrection import outputs

    d = np.cumsum(np.full((16, 2), [0.5, -0.3]), axis=0)
    png = outputs.calc_shift_plot_png(d, 1.2, 0, "m.tif", 1.5)
    picture = np.asarray(Image.open(__import__("io").BytesIO(png)).convert("RGB"))
    assert picture.shape == (550, 550, 3)
    bar = picture[70:480, 445:455].astype(int)
    assert bar[0, 0, 1] > bar[-1, 0, 1] + 150  # viridis: yellow (last frame) on top, purple at the bottom


def test_eer_movie_aligns_like_the_same_counts_in_a_tiff(tmp_path):
    """EER fractions are kept as counts like TIFF pages: the same counts give the same shifts and sums."""
    import importlib.util
    from pathlib import Path

    import mrcfile
    import tifffile

    from appion.motioncorrection import align

    spec = importlib.util.spec_from_file_location(
        "eer_writer", Path(__file__).resolve().parents[1] / "base" / "eer_writer.py")
    eer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eer)
    grouping = 16
    frames, truth = calc_movie(MovieParams(shape=(256, 320), n_frames=10, dose_per_frame_e_per_A2=1.5,
                                           drift_total_px=6.0, seed=8))
    assert frames.max() <= grouping
    raw_frames = []
    for counts in frames:  # count c of a pixel: one electron in each of its fraction's first c raw frames
        for r in range(grouping):
            yx = np.argwhere(counts > r)
            raw_frames.append(yx * 4 + 1)
    eer.write_eer(tmp_path / "m.eer", raw_frames, frames.shape[1:])
    tifffile.imwrite(tmp_path / "m.tif", frames)
    out = {}
    for name, grouping_option in (("m.eer", grouping), ("m.tif", 1)):
        options = align.MotionOptions(pixel_size_A=1.0, dose_per_frame_e_per_A2=1.5, eer_grouping=grouping_option,
                                      threads=2)
        outcome = align.align_movie_file(tmp_path / name, tmp_path / f"{name}.mrc", options)
        out[name] = (outcome.shifts_px, mrcfile.read(outcome.dw_path))
    np.testing.assert_allclose(out["m.eer"][0], out["m.tif"][0], atol=1e-9)
    np.testing.assert_array_equal(out["m.eer"][1], out["m.tif"][1])
    assert I.calc_trajectory_rms_error(out["m.eer"][0], truth["shifts_px"]) <= 0.3  # a small, short movie
