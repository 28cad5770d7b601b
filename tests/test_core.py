"""The numerical core on plain numpy arrays, against ground truth built here."""

import numpy as np
import pytest
from conftest import blob_volume, fourier_moved, smooth_image
from scipy import ndimage
from skimage import data

from xreg import XregError
from xreg.core import estimate_shifts, prepare_reference, shift_frames

CAMERA = data.camera().astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int16])
def test_subpixel_shift_of_a_photograph(dtype):
    frames = fourier_moved(CAMERA, [(0, 0), (-2.4, 1.32), (3.7, -0.55)])
    if np.dtype(dtype).kind in "iu":
        frames = np.clip(np.round(frames), 0, None)
    result = estimate_shifts(frames.astype(dtype), prepare_reference(CAMERA), upsample_factor=100)
    np.testing.assert_allclose(result[:, :2], [(0, 0), (-2.4, 1.32), (3.7, -0.55)], atol=0.05)
    assert np.all(result[:, 2] > 0.99)


def test_subpixel_search_walks_to_the_peak_from_a_poor_first_guess(monkeypatch):
    """The refinement grid moves until its best point is inside it, so a first guess
    half a pixel off on the wrong side still ends at the true shift."""
    from xreg.core import correlation

    first_guess = correlation._parabolic_offsets

    def wrong_side(score, peak_index):
        return -np.sign(first_guess(score, peak_index)) * 0.5

    truth = [(-2.4, 1.32), (3.7, -0.55)]
    frames = fourier_moved(CAMERA, truth)
    plan = prepare_reference(CAMERA)
    monkeypatch.setattr(correlation, "_parabolic_offsets", wrong_side)
    for upsample_factor in (10, 100):
        result = estimate_shifts(frames, plan, upsample_factor=upsample_factor)
        np.testing.assert_allclose(result[:, :2], truth, atol=0.05)


def test_volume_subpixel():
    volume = blob_volume()
    frames = fourier_moved(volume, [(0, 0, 0), (-2.3, 1.7, 5.4)])
    result = estimate_shifts(frames, prepare_reference(volume), upsample_factor=100)
    np.testing.assert_allclose(result[:, :3], [(0, 0, 0), (-2.3, 1.7, 5.4)], atol=0.05)


def test_integer_shifts_are_exact_at_upsample_1():
    truth = np.array([(0, 0), (3, -5), (-7, 2), (8, 8)])
    frames = np.stack([np.roll(CAMERA, tuple(t), axis=(0, 1)) for t in truth])
    result = estimate_shifts(frames, prepare_reference(CAMERA), upsample_factor=1)
    np.testing.assert_array_equal(result[:, :2], truth)


def test_content_moving_across_the_border_does_not_bias():
    """Real motion brings unseen content in at the border: 96 x 80 px, up to 4 px."""
    image = smooth_image((96, 80), sigma=4.0, seed=3)
    rng = np.random.default_rng(7)
    truth = rng.uniform(-4, 4, (40, 2))
    frames = np.stack([ndimage.shift(image, t, mode="nearest") for t in truth])
    result = estimate_shifts(frames, prepare_reference(image), upsample_factor=100)
    assert np.abs(result[:, :2] - truth).max() < 0.1


def test_plain_phase_correlation_is_biased_on_the_same_frames():
    """The border test above is not trivially easy: the textbook estimator fails it."""
    from skimage.registration import phase_cross_correlation

    image = smooth_image((96, 80), sigma=4.0, seed=3)
    rng = np.random.default_rng(7)
    truth = rng.uniform(-4, 4, (40, 2))
    errors = [
        np.abs(
            -phase_cross_correlation(
                image,
                ndimage.shift(image, t, mode="nearest"),
                upsample_factor=100,
                normalization=None,
            )[0]
            - t
        ).max()
        for t in truth
    ]
    assert max(errors) > 0.1


def test_nan_pixels_are_left_out():
    rng = np.random.default_rng(0)
    frames = fourier_moved(CAMERA, [(-2.4, 1.32)])
    frames[rng.random(frames.shape) < 0.3] = np.nan
    result = estimate_shifts(frames, prepare_reference(CAMERA), upsample_factor=100)
    np.testing.assert_allclose(result[0, :2], (-2.4, 1.32), atol=0.1)


def test_constant_frame_gives_zero_shift_and_zero_quality():
    frames = np.stack([np.full(CAMERA.shape, 7.0), np.zeros(CAMERA.shape), CAMERA])
    result = estimate_shifts(frames, prepare_reference(CAMERA), upsample_factor=10)
    np.testing.assert_array_equal(result[:2], 0.0)
    assert result[2, 2] > 0.99


def test_quality_drops_for_an_unrelated_frame():
    noise = np.random.default_rng(1).standard_normal(CAMERA.shape)
    result = estimate_shifts(np.stack([CAMERA, noise]), prepare_reference(CAMERA))
    assert result[0, 2] > 0.99 > 0.2 > result[1, 2] >= 0


def test_threads_give_the_same_answer():
    frames = fourier_moved(CAMERA[:128, :128], np.random.default_rng(2).uniform(-5, 5, (300, 2)))
    plan = prepare_reference(CAMERA[:128, :128])
    np.testing.assert_array_equal(
        estimate_shifts(frames, plan, workers=1), estimate_shifts(frames, plan, workers=2)
    )


@pytest.mark.parametrize("mode", ["nearest", "constant", "reflect", "mirror", "wrap"])
def test_linear_shift_matches_scipy(mode):
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((3, 20, 17)).astype(np.float32)
    shifts = np.array([[1.3, -2.7], [0, 3], [-4.5, 0.25]])
    scipy_mode = {"constant": "grid-constant", "wrap": "grid-wrap"}.get(mode, mode)
    expected = [
        ndimage.shift(f.astype(float), -s, order=1, mode=scipy_mode)
        for f, s in zip(frames, shifts, strict=True)
    ]
    np.testing.assert_allclose(shift_frames(frames, shifts, mode=mode), expected, atol=1e-5)


@pytest.mark.parametrize("order", [2, 3, 5])
@pytest.mark.parametrize("rigid", [True, False])
def test_spline_orders_keep_nan_local(order, rigid):
    """A NaN pixel, or a NaN fill value, spoils only the pixels whose spline samples
    reach it (scipy's prefilter alone spreads it over the whole frame)."""
    from xreg.core import block_grid, warp_frames

    shape, motion = (64, 60), np.array([0.5, -1.25])
    image = ndimage.gaussian_filter(np.random.default_rng(4).normal(size=shape), 3)
    frames = np.stack([image, image]).astype(np.float32)
    frames[0, 30, 30] = np.nan
    grid = block_grid(shape, 16, 0.5)

    def moved(frames, **options):
        if rigid:
            return shift_frames(frames, np.tile(motion, (len(frames), 1)), order=order, **options)
        blocks = np.broadcast_to(motion, (len(frames), *grid.grid_shape, 2))
        return warp_frames(frames, blocks, grid, order=order, **options)

    out = moved(frames)
    # Every pixel whose spline samples reach the NaN is NaN (the kernel's support: a
    # square, corners included).
    delta = np.zeros(shape)
    delta[30, 30] = 1.0
    support = ndimage.shift(delta, -motion, order=order, prefilter=False) != 0
    assert np.isnan(out[0][support]).all()
    reach = order // 2 + 2  # the linear footprint (2 px at a fractional shift), grown
    hole = np.zeros(shape, bool)
    hole[30 - reach : 30 + reach + 1, 31 - reach : 31 + reach + 1] = True
    assert np.isnan(out[0]).any() and not np.isnan(out[0][~hole]).any()
    np.testing.assert_allclose(out[0][~hole], out[1][~hole], atol=0.02 * np.ptp(image))
    # The fill value NaN: a band at the borders the motion uncovers, the rest as with 0.
    filled = moved(frames[1:], mode="constant", cval=np.nan)[0]
    zero = moved(frames[1:], mode="constant", cval=0.0)[0]
    inner = (slice(reach, -reach), slice(reach, -reach))
    assert np.isnan(filled).any() and not np.isnan(filled[inner]).any()
    np.testing.assert_array_equal(filled[inner], zero[inner])


def test_integer_shift_is_exact_and_moves_back():
    frames = np.stack([np.roll(CAMERA, (3, -5), axis=(0, 1))]).astype(np.uint8)
    out = shift_frames(frames, [[3, -5]], order=3, mode="wrap")
    np.testing.assert_array_equal(out[0], CAMERA.astype(np.uint8))


def test_integer_output_is_rounded_and_clipped_not_wrapped():
    frames = np.array([[[0, 65535], [65535, 0]]], dtype=np.uint16)
    out = shift_frames(frames, [[0.0, 0.5]], order=3, mode="mirror")
    assert out.dtype == np.uint16
    assert out.min() >= 0 and out.max() <= 65535
    assert 30000 < out[0, 0, 0] < 35000  # halfway, rounded, not wrapped


def test_clipping_keeps_whole_pixel_motion_exact():
    """Clipping frame and reference alike commutes with whole-pixel motion."""
    truth = np.array([(0, 0), (3, -5), (-7, 2)])
    frames = np.stack([np.roll(CAMERA, tuple(t), axis=(0, 1)) for t in truth])
    low, high = np.percentile(CAMERA, [5, 80])
    plan = prepare_reference(CAMERA, clip=(low, high))
    assert np.isin(frames, CAMERA).all() and (frames > high).mean() > 0.1  # much is clipped
    result = estimate_shifts(frames, plan, upsample_factor=10)
    np.testing.assert_allclose(result[:, :2], truth, atol=1e-6)
    assert np.all(result[:, 2] > 0.999)


def test_bad_reference():
    with pytest.raises(XregError, match="constant"):
        prepare_reference(np.ones((10, 10)))
    with pytest.raises(XregError, match="NaN"):
        prepare_reference(np.where(np.eye(10) > 0, np.nan, 1.0))
    with pytest.raises(XregError, match="2-D or 3-D"):
        prepare_reference(np.arange(10.0))
    with pytest.raises(XregError, match="low < high"):
        prepare_reference(CAMERA, clip=(200, 100))
