"""Image sanity: every broken sum is flagged with its reason, no real sum is."""
import numpy as np
import pytest

from appion.base.imagecheck import calc_image_problem
from appion.base.simulate.calc import MicrographParams, MovieParams, calc_micrograph, calc_movie


def _good_images():
    """Real-looking sums: float micrographs at several doses and pixel sizes, integer movie sums, a
    dose-weighted-like float sum with negative values, and an image with a dark (zero) beam edge."""
    out = []
    for i, (dose, pix) in enumerate(((40.0, 1.0), (20.0, 0.8), (60.0, 1.3), (10.0, 1.0))):
        image, _ = calc_micrograph(MicrographParams(shape=(256, 256), dose_e_per_A2=dose, pixel_size_A=pix, seed=i))
        out.append(("micrograph", image))
    frames, _ = calc_movie(MovieParams(shape=(256, 256), n_frames=8, dose_per_frame_e_per_A2=1.5, seed=5))
    out.append(("integer sum", frames.sum(axis=0, dtype=np.uint16)))
    out.append(("int16 sum", frames.sum(axis=0).astype(np.int16)))
    out.append(("dose-weighted", (frames.sum(axis=0) - frames.sum(axis=0).mean()).astype(np.float32) * 0.37))
    edge = frames.sum(axis=0).astype(np.float32)
    edge[:, :100] = 0.0  # 39 % black: a beam edge, not a broken sum
    out.append(("beam edge", edge))
    return out


def _broken_images():
    rng = np.random.default_rng(0)
    base = rng.poisson(12.0, size=(256, 256)).astype(np.float32)
    nan = base.copy()
    nan[10, 10] = np.nan
    inf = base.copy()
    inf[5, :3] = np.inf
    mostly_zero = base.copy()
    mostly_zero[:, :160] = 0.0
    saturated = base.copy()
    saturated[:40, :] = 4095.0
    shifted = base.copy()  # a clipped region in an aligned sum: shifted by a sub-pixel amount, not exactly equal
    shifted[50:120, 40:200] = 4095.0
    shifted = np.fft.irfft2(np.fft.rfft2(shifted) * np.exp(-2j * np.pi * 0.37 * np.fft.rfftfreq(256)[None, :]),
                            s=shifted.shape).astype(np.float32)
    saturated_int = rng.poisson(30.0, size=(256, 256)).astype(np.uint16)
    saturated_int[rng.random((256, 256)) < 0.05] = 65535
    return [
        ("blank", np.zeros((256, 256), np.float32), "every pixel is 0"),
        ("blank int", np.zeros((128, 128), np.uint16), "every pixel is 0"),
        ("constant", np.full((64, 64), 7.5, np.float32), "constant image"),
        ("nan", nan, "NaN"),
        ("all nan", np.full((32, 32), np.nan, np.float32), "NaN"),
        ("inf", inf, "infinite"),
        ("mostly zero", mostly_zero, "mostly zero"),
        ("saturated", saturated, "saturated"),
        ("saturated int", saturated_int, "saturated"),
        ("saturated, shifted", shifted, "saturated"),
        ("empty", np.zeros((0, 0), np.float32), "empty"),
    ]


@pytest.mark.parametrize("name,image", _good_images(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_good_sum_is_flagged(name, image):
    assert calc_image_problem(image) is None, name


def test_every_broken_sum_is_flagged_with_its_reason():
    found = {name: calc_image_problem(image) for name, image, _ in _broken_images()}
    for name, _, words in _broken_images():
        assert found[name] is not None and words in found[name], (name, found[name])
    assert "1 of 65536 pixels are not finite (1 NaN, 0 infinite)" == found["nan"]
