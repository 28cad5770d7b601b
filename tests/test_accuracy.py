"""Accuracy at the noise limit (issue 18), on small frames against ground truth.

The subpixel estimate is continuous (Newton steps on the normalised score), so a
grid no longer sets its error; the guarantees of the windowed estimator hold.
"""

import numpy as np
from conftest import blob_volume, fourier_moved, smooth_image
from scipy import ndimage
from skimage import data

from xreg.core import estimate_shifts, prepare_reference

CAMERA = data.camera().astype(np.float64)[::2, ::2]


def test_whole_pixel_motion_is_exact_with_subpixel_refinement():
    truth = np.array([(0, 0), (3, -5), (-7, 2), (8, 8)])
    frames = np.stack([np.roll(CAMERA, tuple(t), axis=(0, 1)) for t in truth])
    result = estimate_shifts(frames, prepare_reference(CAMERA), upsample_factor=10)
    np.testing.assert_allclose(result[:, :2], truth, atol=1e-6)
    volume = blob_volume()
    truth = np.array([(0, 0, 0), (2, -3, 1)])
    frames = np.stack([np.roll(volume, tuple(t), axis=(0, 1, 2)) for t in truth])
    result = estimate_shifts(frames, prepare_reference(volume), upsample_factor=10)
    np.testing.assert_allclose(result[:, :3], truth, atol=1e-6)


def test_subpixel_error_is_not_set_by_a_grid():
    """Noise-free subpixel motion: the old lattice of 1/10 px missed by up to 0.05 px."""
    image = smooth_image((128, 128), sigma=3.0, seed=4)
    truth = np.random.default_rng(5).uniform(-6, 6, (30, 2))
    frames = fourier_moved(image, truth)
    result = estimate_shifts(frames, prepare_reference(image), upsample_factor=10)
    assert np.abs(result[:, :2] - truth).max() < 0.002


def test_border_content_does_not_bias_the_continuous_estimate():
    """The 96 x 80 border test, at the default upsample factor, much tighter than 0.1 px."""
    image = smooth_image((96, 80), sigma=4.0, seed=3)
    truth = np.random.default_rng(7).uniform(-4, 4, (40, 2))
    frames = np.stack([ndimage.shift(image, t, mode="nearest") for t in truth])
    result = estimate_shifts(frames, prepare_reference(image), upsample_factor=10)
    assert np.abs(result[:, :2] - truth).max() < 0.01


def _crops(image, origin, size, shifts):
    """Views of ``image`` moved by whole ``shifts``: new content enters at the border."""
    y, x = origin
    return np.stack([image[y - dy : y - dy + size, x - dx : x - dx + size] for dy, dx in shifts])


def test_crosscorr_subpixel_is_exact_on_whole_pixels():
    """thunder's whole-frame CrossCorr with upsample_factor > 1: content wrapped around
    the border no longer pulls the subpixel step (it was 0.3 px off on the walkthrough)."""
    from xreg import CrossCorr

    image = data.camera().astype(np.float64)
    truth = np.array([(0, 0), (5, -3), (-9, 12), (17, 4), (-2, -20)])
    frames = _crops(image, (150, 180), 160, truth)
    reference = frames[0]
    model = CrossCorr(upsample_factor=10).fit(frames, reference=reference)
    np.testing.assert_allclose(model.toarray(), truth, atol=1e-6)
    assert np.array_equal(CrossCorr().fit(frames, reference=reference).toarray(), truth)
