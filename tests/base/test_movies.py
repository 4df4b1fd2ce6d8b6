"""Tests for appion.base.io.movies: MRC/TIFF/EER reading, references, defects, validation.

Movies are written here with mrcfile/tifffile (small sizes); EER files with the test encoder in
tests/base/eer_writer.py (neither tifffile nor imagecodecs can encode EER), whose electron
positions are the ground truth the decoded counts are compared with.
"""
from __future__ import annotations

import struct
import sys
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eer_writer import calc_expected_counts, calc_random_events, write_eer  # noqa: E402

from appion.base.io import movies as mv
from appion.base.physics import calc_unoriented_gain  # noqa: E402

SHAPE = (192, 256)  # (y, x): non-square so orientation errors show
N_FRAMES = 6
_shared = Path(__file__).resolve().parents[3] / "shared"
SHARED = _shared if _shared.exists() else Path("/work/shared")
DEFECT_MAP = SHARED / "fixtures" / "motioncor2" / "27489513.mrc.gz"


@pytest.fixture
def counts():
    return np.random.default_rng(7).poisson(3.0, (N_FRAMES,) + SHAPE).astype(np.uint8)


def write_mrc(path, data, voxel=1.25):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel
    return path


# ------------------------------------------------------------------------------------------ MRC


@pytest.mark.parametrize("dtype,ext", [(np.int8, ".mrc"), (np.int16, ".mrc"), (np.float32, ".mrcs"),
                                       (np.uint16, ".mrc"), (np.float16, ".mrcs")])
def test_mrc_modes_read_exactly(tmp_path, counts, dtype, ext):
    data = (counts.astype(np.int16) - (1 if np.dtype(dtype).kind in "if" else 0)).astype(dtype)
    path = write_mrc(tmp_path / f"movie{ext}", data)
    header = mv.read_movie_header(path)
    assert (header.format, header.n_frames, header.n_raw_frames, header.shape_yx) == ("mrc", N_FRAMES, N_FRAMES, SHAPE)
    assert header.dtype == np.dtype(dtype).name
    assert header.pixel_size_A == pytest.approx(1.25)
    frames = mv.read_frames(path)
    assert frames.dtype == np.float32 and frames.shape == (N_FRAMES,) + SHAPE
    np.testing.assert_array_equal(frames, data.astype(np.float32))


def test_mrc_mode0_with_imod_unsigned_flag_reads_unsigned(tmp_path):
    data = np.full((2,) + SHAPE, 200, np.uint8)
    path = write_mrc(tmp_path / "m.mrc", data.view(np.int8))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<ii", raw, 152, 1146047817, 0)  # IMOD stamp, flags without "signed bytes"
    path.write_bytes(bytes(raw))
    assert mv.read_movie_header(path).dtype == "uint8"
    assert mv.read_frames(path).min() == 200
    struct.pack_into("<ii", raw, 152, 1146047817, 1)  # signed bytes
    path.write_bytes(bytes(raw))
    assert mv.read_frames(path).max() == 200 - 256


def test_mrc_without_pixel_size_gives_none(tmp_path, counts):
    path = write_mrc(tmp_path / "m.mrc", counts.astype(np.int16), voxel=0.0)
    assert mv.read_movie_header(path).pixel_size_A is None


def test_truncated_mrc_is_rejected_and_incomplete(tmp_path, counts):
    path = write_mrc(tmp_path / "m.mrc", counts.astype(np.float32))
    assert mv.is_movie_complete(path)
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(path.read_bytes()[:-4096])
    assert not mv.is_movie_complete(cut)
    with pytest.raises(mv.MovieError, match=r"cut\.mrc.*truncated MRC"):
        mv.read_movie_header(cut)
    with pytest.raises(mv.MovieError, match="truncated"):
        mv.read_frames(cut)
    tiny = tmp_path / "tiny.mrc"
    tiny.write_bytes(path.read_bytes()[:300])
    assert not mv.is_movie_complete(tiny)
    with pytest.raises(mv.MovieError, match="tiny.mrc"):
        mv.read_movie_header(tiny)


def test_mrc_with_zero_frames_is_rejected(tmp_path, counts):
    path = write_mrc(tmp_path / "m.mrc", counts[:1].astype(np.float32))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<i", raw, 8, 0)  # nz = 0
    path.write_bytes(bytes(raw[:1024]))
    with pytest.raises(mv.MovieError, match="zero frames"):
        mv.read_movie_header(path)


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_in_float_movie_names_the_frame(tmp_path, counts):
    data = counts.astype(np.float32)
    data[4, 10, 20] = np.nan
    path = write_mrc(tmp_path / "nan.mrc", data)
    with pytest.raises(mv.MovieError, match=r"nan\.mrc: frame 4 contains NaN"):
        mv.read_frames(path)
    np.testing.assert_array_equal(mv.read_frames(path, 0, 3), data[:4])  # frames before it are fine
    data = counts.astype(np.float32)
    data[1, 0, 0] = np.inf
    tif = tmp_path / "inf.tif"
    tifffile.imwrite(tif, data)
    with pytest.raises(mv.MovieError, match="frame 1 contains NaN or infinite"):
        mv.read_frames(tif)


@pytest.mark.parametrize("first,last", [(-1, 2), (3, 2), (0, N_FRAMES), (N_FRAMES, None)])
def test_frame_range_out_of_bounds(tmp_path, counts, first, last):
    path = write_mrc(tmp_path / "m.mrc", counts.astype(np.int16))
    with pytest.raises(mv.MovieError, match=r"m\.mrc: frame range .* outside the movie's 6 frames"):
        mv.read_frames(path, first, last)


def test_frame_range_follows_classic_options():
    assert mv.calc_frame_range(40, 2, 10) == (2, 11)
    assert mv.calc_frame_range(40) == (0, 39)
    assert mv.calc_frame_range(40, 5) == (5, 39)


# ----------------------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize("dtype,compression", [(np.uint8, "lzw"), (np.uint16, None)])
@pytest.mark.parametrize("threads", [1, 2])
def test_tiff_chunks_match_written_frames(tmp_path, counts, dtype, compression, threads):
    data = counts.astype(dtype) * (300 if dtype == np.uint16 else 1)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, data, compression=compression)
    header = mv.read_movie_header(path)
    assert (header.format, header.n_frames, header.shape_yx, header.dtype) == ("tiff", N_FRAMES, SHAPE,
                                                                               np.dtype(dtype).name)
    assert header.pixel_size_A is None
    starts = []
    for start, chunk in mv.iter_frame_chunks(path, 1, 5, chunk_frames=2, threads=threads):
        starts.append(start)
        assert chunk.dtype == np.float32
        np.testing.assert_array_equal(chunk, data[start:start + len(chunk)].astype(np.float32))
    assert starts == [1, 3, 5]
    out = np.full((3,) + SHAPE, -1, np.float32)
    result = mv.read_frames(path, 2, 4, out=out, threads=threads, chunk_frames=2)
    assert result is out
    np.testing.assert_array_equal(out, data[2:5])


def test_read_frames_rejects_wrong_out(tmp_path, counts):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, counts)
    with pytest.raises(ValueError, match="out must be"):
        mv.read_frames(path, out=np.zeros((N_FRAMES,) + SHAPE, np.float64))


def test_truncated_tiff_is_rejected_and_incomplete(tmp_path, counts):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, counts, compression="lzw")
    assert mv.is_movie_complete(path)
    raw = path.read_bytes()
    for cut in (len(raw) - 10, len(raw) // 2, 100):
        half = tmp_path / f"half{cut}.tif"
        half.write_bytes(raw[:cut])
        assert not mv.is_movie_complete(half)
        with pytest.raises(mv.MovieError, match=rf"half{cut}\.tif: (truncated TIFF|not a readable)"):
            mv.read_movie_header(half)


def test_not_a_movie(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("hello, this is not a TIFF at all\n" * 10)
    with pytest.raises(mv.MovieError, match=r"notes\.tif: not a readable TIFF"):
        mv.read_movie_header(text)
    assert not mv.is_movie_complete(text)
    blob = tmp_path / "blob.dat"
    blob.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(mv.MovieError, match=r"blob\.dat: not a movie"):
        mv.read_frames(blob)
    with pytest.raises(mv.MovieError, match="does not exist"):
        mv.read_movie_header(tmp_path / "missing.mrc")


def test_tiff_memory_stays_within_a_few_chunks(tmp_path):
    """iter_frame_chunks must decode lazily: peak traced memory a few chunks, not the movie."""
    ny, nx, n, chunk = 512, 512, 24, 2
    frames = np.random.default_rng(1).poisson(1.0, (n, ny, nx)).astype(np.uint8)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, frames, compression="lzw")
    del frames
    chunk_bytes = chunk * ny * nx * 4
    tracemalloc.start()
    try:
        total = np.zeros((ny, nx), np.float32)
        for _, block in mv.iter_frame_chunks(path, chunk_frames=chunk, threads=2):
            total += block.sum(axis=0)
        del block
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    movie_bytes = n * ny * nx * 4
    assert peak < 4 * chunk_bytes + total.nbytes, (peak, chunk_bytes)
    assert peak < movie_bytes / 2


# ------------------------------------------------------------------------------------------ EER

EER_SHAPE = (48, 64)


@pytest.fixture
def eer_events():
    return calc_random_events(np.random.default_rng(3), EER_SHAPE, 11, 400)


@pytest.mark.parametrize("compression", [65001, 65000])
@pytest.mark.parametrize("sampling", [1, 2, 4])
def test_eer_renders_known_electrons(tmp_path, eer_events, compression, sampling):
    path = tmp_path / "movie.eer"
    write_eer(path, eer_events, EER_SHAPE, compression=compression)
    header = mv.read_movie_header(path, eer_grouping=1, eer_sampling=sampling)
    assert header.format == "eer" and header.n_frames == header.n_raw_frames == 11
    assert header.shape_yx == (EER_SHAPE[0] * sampling, EER_SHAPE[1] * sampling)
    frames = mv.read_frames(path, eer_sampling=sampling)
    expected = calc_expected_counts(eer_events, EER_SHAPE, sampling)
    np.testing.assert_array_equal(frames, expected)
    assert frames.sum() == sum(len(e) for e in eer_events)


@pytest.mark.parametrize("grouping", [1, 3, 4, 11])
def test_eer_grouping_sums_raw_frames_and_drops_remainder(tmp_path, eer_events, grouping):
    path = tmp_path / "movie.eer"
    write_eer(path, eer_events, EER_SHAPE)
    expected_raw = calc_expected_counts(eer_events, EER_SHAPE, 2)
    n_fractions = 11 // grouping
    header = mv.read_movie_header(path, eer_grouping=grouping, eer_sampling=2)
    assert (header.n_frames, header.n_raw_frames, header.eer_grouping) == (n_fractions, 11, grouping)
    for threads in (1, 2):
        fractions = mv.read_frames(path, eer_grouping=grouping, eer_sampling=2, threads=threads, chunk_frames=2)
        assert fractions.shape[0] == n_fractions
        for i in range(n_fractions):
            np.testing.assert_array_equal(fractions[i], expected_raw[i * grouping:(i + 1) * grouping].sum(0))


def test_eer_zero_fractions_and_bad_options(tmp_path, eer_events):
    path = tmp_path / "movie.eer"
    write_eer(path, eer_events, EER_SHAPE)
    with pytest.raises(mv.MovieError, match=r"movie\.eer: zero fractions: 11 raw EER frames, grouping 12"):
        mv.read_movie_header(path, eer_grouping=12)
    with pytest.raises(mv.MovieError, match="sampling must be 1, 2 or 4"):
        mv.read_movie_header(path, eer_sampling=3)


def test_truncated_eer_is_rejected_and_incomplete(tmp_path, eer_events):
    path = tmp_path / "movie.eer"
    write_eer(path, eer_events, EER_SHAPE)
    assert mv.is_movie_complete(path)
    raw = path.read_bytes()
    for cut in (len(raw) - 30, len(raw) // 2):
        half = tmp_path / f"half{cut}.eer"
        half.write_bytes(raw[:cut])
        assert not mv.is_movie_complete(half)
        with pytest.raises(mv.MovieError, match=rf"half{cut}\.eer"):
            mv.read_frames(half)


# ----------------------------------------------------------------------------------------- gain


@pytest.mark.parametrize("rotate", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [0, 1, 2])
def test_gain_in_every_orientation_corrects_frames(tmp_path, counts, rotate, flip):
    rng = np.random.default_rng(rotate * 3 + flip)
    true_gain = rng.uniform(0.8, 1.2, SHAPE).astype(np.float32)  # oriented like the frames
    on_disk = calc_unoriented_gain(true_gain, rotate, flip)
    gain_path = write_mrc(tmp_path / "gain.mrc", on_disk)
    movie = tmp_path / "movie.tif"
    tifffile.imwrite(movie, counts, compression="lzw")
    gain = mv.calc_gain_for_frames(mv.read_gain(gain_path), SHAPE, rotate, flip, gain_path)
    np.testing.assert_array_equal(gain, true_gain)
    frames = mv.read_frames(movie, gain=gain)
    np.testing.assert_allclose(frames, counts * true_gain, rtol=1e-6)
    if rotate % 2 == 0 and (rotate, flip) not in ((0, 0), (2, 0)):
        # a different same-shape orientation must give a different (wrong) gain
        assert not np.array_equal(mv.calc_gain_for_frames(on_disk, SHAPE, 0, 0), true_gain)


def test_gain_size_mismatch_lists_orientations(tmp_path):
    gain = np.ones((SHAPE[1], SHAPE[0]), np.float32)  # stored transposed: needs a quarter turn
    with pytest.raises(mv.GainMismatchError) as err:
        mv.calc_gain_for_frames(gain, SHAPE, 0, 0, tmp_path / "gain_ref.mrc")
    msg = str(err.value)
    assert "gain_ref.mrc" in msg and "frames are 192x256" in msg and "gain on disk is 256x192" in msg
    for r in range(4):
        for f in range(3):
            assert f"rotate={r} flip={f} ->" in msg
    would = msg.split("WOULD match the frame size:")[1]
    assert "rotate=1 flip=0" in would and "rotate=3 flip=2" in would
    assert "rotate=0" not in would and "rotate=2" not in would
    with pytest.raises(mv.GainMismatchError, match="None of them matches"):
        mv.calc_gain_for_frames(np.ones((100, 90), np.float32), SHAPE, 0, 0, "g.mrc")
    assert issubclass(mv.GainMismatchError, ValueError)


def test_eer_super_resolution_gain(tmp_path):
    gain = np.random.default_rng(0).uniform(0.5, 1.5, (48, 64)).astype(np.float32)
    up = mv.calc_gain_for_frames(gain, (96, 128), 0, 0, "gain.mrc", eer_sampling=2)
    np.testing.assert_array_equal(up, np.kron(gain, np.ones((2, 2), np.float32)))
    # Upsampling is only for EER rendered at super-resolution: TIFF/MRC frames 2x the gain are refused, and so is a
    # factor that is not the EER sampling.
    for sampling in (1, 4):
        with pytest.raises(mv.GainMismatchError, match=r"frames are 96x128 \(y x\), gain on disk is 48x64"):
            mv.calc_gain_for_frames(gain, (96, 128), 0, 0, "gain.mrc", eer_sampling=sampling)
    with pytest.raises(mv.GainMismatchError, match="2x larger than the frames: a super-resolution gain"):
        mv.calc_gain_for_frames(np.ones((96, 128), np.float32), (48, 64), 0, 0, "gain.mrc")


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_read_gain_from_tiff_and_bad_gain(tmp_path):
    gain = np.random.default_rng(0).uniform(0.5, 1.5, SHAPE).astype(np.float32)
    tifffile.imwrite(tmp_path / "gain.tif", gain)
    np.testing.assert_array_equal(mv.read_gain(tmp_path / "gain.tif"), gain)
    gain[3, 3] = np.nan
    write_mrc(tmp_path / "nan.mrc", gain)
    with pytest.raises(mv.MovieError, match=r"nan\.mrc: gain reference contains NaN"):
        mv.read_gain(tmp_path / "nan.mrc")
    write_mrc(tmp_path / "stack.mrc", np.ones((2,) + SHAPE, np.float32))
    with pytest.raises(mv.MovieError, match="single 2-D image"):
        mv.read_gain(tmp_path / "stack.mrc")


def test_dark_gain_and_defects_applied_in_order(tmp_path, counts):
    rng = np.random.default_rng(5)
    dark = rng.uniform(0, 0.5, SHAPE).astype(np.float32)
    gain = rng.uniform(0.8, 1.2, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[:, 40] = True
    mask[17, :] = True
    mask[100, 200] = True
    movie = tmp_path / "movie.tif"
    tifffile.imwrite(movie, counts, compression="lzw")
    write_mrc(tmp_path / "dark.mrc", dark)
    frames = mv.read_frames(movie, dark=mv.read_dark(tmp_path / "dark.mrc"), gain=gain, defects_mask=mask,
                            chunk_frames=4)
    expected = mv.calc_fix_defects((counts - dark) * gain, mask)
    np.testing.assert_allclose(frames, expected, rtol=1e-6)
    assert not np.allclose(frames[:, mask], ((counts - dark) * gain)[:, mask])
    chunks = np.concatenate([c for _, c in mv.iter_frame_chunks(movie, dark=dark, gain=gain, defects_mask=mask)])
    np.testing.assert_allclose(chunks, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="gain is 256x192"):
        mv.read_frames(movie, gain=gain.T)


# -------------------------------------------------------------------------------------- defects


def test_defect_plan_parsing():
    plan = mv.calc_defect_list_from_plan("[1, 5]", "[]", "[(3, 4), (10, 2)]")
    assert plan == mv.DefectList([1, 5], [], [(3, 4), (10, 2)])
    assert mv.calc_defect_list_from_plan(None, "None", "") == mv.DefectList([], [], [])
    assert mv.calc_defect_list_from_plan("(7,)", "[2]", "[[0, 1]]") == mv.DefectList([7], [2], [(0, 1)])


@pytest.mark.parametrize("rows,cols,pixels,field", [
    ("__import__('os').system('true')", "[]", "[]", "bad_rows"),
    ("[1.5]", "[]", "[]", "bad_rows"),
    ("[]", "[-1]", "[]", "bad_cols"),
    ("[]", "[True]", "[]", "bad_cols"),
    ("[]", "{'a': 1}", "[]", "bad_cols"),
    ("[]", "[]", "[(1, 2, 3)]", "bad_pixels"),
    ("[]", "[]", "[5]", "bad_pixels"),
    ("[]", "[]", "[('a', 2)]", "bad_pixels"),
])
def test_defect_plan_rejects_non_lists(rows, cols, pixels, field):
    with pytest.raises(ValueError, match=field):
        mv.calc_defect_list_from_plan(rows, cols, pixels)


def test_defect_mask_uses_xy_pixels():
    mask = mv.calc_defect_mask(mv.DefectList([2], [5], [(7, 1)]), (4, 9))
    expected = np.zeros((4, 9), bool)
    expected[2, :] = True
    expected[:, 5] = True
    expected[1, 7] = True
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(ValueError, match="bad pixel"):
        mv.calc_defect_mask(mv.DefectList([], [], [(1, 7)]), (4, 9))


def test_read_real_k3_defect_map():
    """MotionCor2 -DefectMap from a Leginon K3 session (gzip'd int8 MRC, 5760x4092)."""
    mask = mv.read_defect_map(DEFECT_MAP)
    assert mask.dtype == bool and mask.shape == (4092, 5760)
    bad_cols = np.nonzero(mask.all(axis=0))[0]
    assert list(bad_cols) == [1151, 1152]
    assert mask.sum() == 2 * 4092  # only those two columns


def test_fix_defects_uses_good_neighbours():
    y, x = np.mgrid[0:20, 0:30]
    ramp = (2.0 * x + 3.0 * y).astype(np.float32)
    frames = np.stack([ramp, 10 * ramp])
    mask = np.zeros((20, 30), bool)
    mask[:, 10] = True  # single column: symmetric window -> exact for a ramp
    mask[5, 20] = True  # isolated pixel: mean of its 8 neighbours
    mask[:, 25:27] = True  # two adjacent columns: each sees only its outer good neighbour column
    fixed = mv.calc_fix_defects(frames, mask)
    assert fixed.dtype == np.float32 and fixed.shape == frames.shape
    np.testing.assert_array_equal(fixed[:, ~mask], frames[:, ~mask])
    np.testing.assert_allclose(fixed[:, 1:-1, 10], frames[:, 1:-1, 10], rtol=1e-6)
    np.testing.assert_allclose(fixed[:, 5, 20], frames[:, 5, 20], rtol=1e-6)
    np.testing.assert_allclose(fixed[:, 1:-1, 25], frames[:, 1:-1, 24], rtol=1e-6)
    np.testing.assert_allclose(fixed[:, 1:-1, 26], frames[:, 1:-1, 27], rtol=1e-6)
    assert np.all(frames[0][mask] == ramp[mask])  # input untouched
    single = mv.calc_fix_defects(ramp, mask)
    np.testing.assert_array_equal(single, fixed[0])


def test_fix_defects_falls_back_to_frame_mean_for_large_holes():
    frame = np.arange(40 * 40, dtype=np.float32).reshape(40, 40)
    mask = np.zeros((40, 40), bool)
    mask[:30, :30] = True  # pixel (0, 0) has no good pixel within the default radius of 8
    fixed = mv.calc_fix_defects(frame, mask)
    np.testing.assert_allclose(fixed[0, 0], frame[~mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(fixed[29, 29], frame[28:31, 28:31][~mask[28:31, 28:31]].mean(), rtol=1e-6)
