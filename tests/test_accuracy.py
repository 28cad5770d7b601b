"""Accuracy at the noise limit (issue 18), on small frames against ground truth.

The subpixel estimate is continuous (Newton steps on the normalised score), so a
grid no longer sets its error; the guarantees of the windowed estimator hold.
"""

import numpy as np
from conftest import ChunkReads, as_movie, blob_volume, fourier_moved, smooth_image
from scipy import ndimage
from skimage import color, data

from xreg.core import (
    NoiseModel,
    clip_bounds,
    estimate_shifts,
    fit_noise,
    noise_sample_size,
    prepare_reference,
)
from xreg.datasets import mouse

CAMERA = data.camera().astype(np.float64)[::2, ::2]
# Shot noise of one level a photon: a plan told it (and ``weights=True``) weighs pixels
# by their noise.
SHOT_NOISE = NoiseModel(gain=1.0, floor=0.0)


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
    """The 96 x 80 border test, at the default upsample factor, much tighter than 0.1 px;
    with the noise weights' step as well."""
    image = smooth_image((96, 80), sigma=4.0, seed=3)
    truth = np.random.default_rng(7).uniform(-4, 4, (40, 2))
    frames = np.stack([ndimage.shift(image, t, mode="nearest") for t in truth])
    result = estimate_shifts(frames, prepare_reference(image), upsample_factor=10)
    assert np.abs(result[:, :2] - truth).max() < 0.01

    def bright(values):  # 1..31 photons: weights that differ 31-fold
        return 1 + 30 * (values - image.min()) / np.ptp(image)

    weighted = prepare_reference(bright(image), noise=SHOT_NOISE, weights=True)
    assert weighted.weighting is not None
    result = estimate_shifts(bright(frames), weighted, upsample_factor=10)
    assert np.abs(result[:, :2] - truth).max() < 0.01


def test_the_noise_weights_keep_whole_pixels_exact():
    """The weighted step leaves a frame that fits exactly where it is: whole-pixel crops
    of the camera man (new content at the borders), and noise-free subpixel motion
    within the error the correlation's own estimate has."""
    plan = prepare_reference(CAMERA[32:224, 32:224], noise=SHOT_NOISE, weights=True)
    assert plan.weighting is not None
    truth = np.array([(0, 0), (3, -5), (-7, 2), (8, 8), (-11, 6)])
    frames = _crops(CAMERA, (32, 32), 192, truth)
    result = estimate_shifts(frames, plan, upsample_factor=10)
    np.testing.assert_array_equal(result[:, :2], truth)
    image = smooth_image((128, 128), sigma=3.0, seed=4)
    image = 1 + 30 * (image - image.min()) / np.ptp(image)
    truth = np.random.default_rng(5).uniform(-6, 6, (30, 2))
    plan = prepare_reference(image, noise=SHOT_NOISE, weights=True)
    assert plan.weighting is not None
    result = estimate_shifts(fourier_moved(image, truth), plan)
    assert np.abs(result[:, :2] - truth).max() < 0.002


def test_the_noise_weights_pass_over_frames_without_contrast():
    """Flat frames get displacement 0 and quality 0 with the noise weights too, alone (no
    frame left for the weighted step) or among frames that move."""
    plan = prepare_reference(CAMERA[32:224, 32:224], noise=SHOT_NOISE, weights=True)
    assert plan.weighting is not None
    flat = np.full((3, 192, 192), 7.0, np.float32)
    np.testing.assert_array_equal(estimate_shifts(flat, plan), 0.0)
    truth = np.array([(3, -5), (-7, 2)])
    frames = np.concatenate([flat[:1], _crops(CAMERA, (32, 32), 192, truth)])
    result = estimate_shifts(frames, plan)
    np.testing.assert_array_equal(result[0], 0.0)
    np.testing.assert_array_equal(result[1:, :2], truth)


def test_the_noise_weights_hold_beside_an_outlying_pixel():
    """The weights of clipped pixels (the censored Gaussian's variance, tabulated by
    intensity) stay within 2 % of their exact value when one pixel of the reference is
    far out (a hot pixel), which must not coarsen the table for the rest."""
    image = smooth_image((64, 64), sigma=3.0, seed=4)
    reference = 0.25 + 5 * (image - image.min()) / np.ptp(image)
    bounds = clip_bounds(reference, (1, 99))
    exact = 1 / SHOT_NOISE._censored(reference, bounds)[1]
    hot = reference.copy()
    hot[5, 5] = 1e6
    for ref in (reference, hot):
        weights = SHOT_NOISE.weights(ref, bounds)
        # Not the hot pixel; nor the few whose weight the 100-fold cap on the spread holds.
        ordinary = (ref < 100) & (exact < 50 * exact.min())
        np.testing.assert_allclose(weights[ordinary], exact[ordinary], rtol=0.02)


def test_volumes_keep_equal_weights_and_their_clip():
    """Volumes are not weighted (2-D frames only): with ``weights="noise"`` their
    estimate, clip bounds included, is the one with equal weights."""
    volume = 0.5 + 10 * blob_volume(size=40, seed=2)
    rng = np.random.default_rng(8)
    truth = rng.integers(-3, 4, (12, 3))
    frames = np.stack([rng.poisson(20 * np.roll(volume, tuple(t), (0, 1, 2))) for t in truth])
    movie = as_movie(frames.astype(np.float32), "numpy")
    weighted = movie.reg.estimate(20 * volume, weights="noise")
    np.testing.assert_array_equal(weighted.values, movie.reg.estimate(20 * volume).values)


def test_noise_weights_bring_photon_starved_frames_to_the_limit():
    """Two photons a pixel: bright pixels are noisier, and with ``weights="noise"`` the
    step of the fit that weighs each pixel by its noise (the noise fitted on the first
    frames; no gain or offset told) brings the error to the Cramér-Rao bound, below the
    same estimate with equal weights on the same plan.  The clip's bounds make way for
    the noise there; without the option nothing changes."""
    frames, reference, truth, bound = _photon_movie(100, 256, 2, seed=21)
    noise = fit_noise(frames[:noise_sample_size])
    assert noise.weighs(reference)
    bounds = clip_bounds(reference, (1, 99))
    assert noise.spare_noise(reference, bounds) == bounds  # it would cost little unweighted
    spared = noise.spare_noise(reference, bounds, weighted=True)
    assert spared[0] < bounds[0] and spared[1] > bounds[1]
    fitted = as_movie(frames, "numpy").reg.estimate(reference, weights="noise")
    assert fitted.attrs["weights"] == "noise"
    fitted = fitted.values
    equal = estimate_shifts(frames, prepare_reference(reference, clip=spared, noise=noise))[:, :2]
    default = as_movie(frames, "numpy").reg.estimate(reference)
    assert "weights" not in default.attrs
    error = np.sqrt(np.mean((fitted - truth) ** 2))
    assert error < 0.96 * np.sqrt(np.mean((equal - truth) ** 2))  # 0.92 x when written
    assert error < 1.15 * bound  # 1.05 x when written


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


def _photon_movie(n_frames, size, photons, seed, photograph=None):
    """Views of a blurred photograph (default: the camera man) moved by a subpixel drift
    of up to 8 px (band-limited, new content entering at the borders), with Poisson
    noise; and the Cramér-Rao bound."""
    photograph = data.camera() if photograph is None else photograph
    image = ndimage.gaussian_filter(photograph.astype(np.float64), 1.0)
    image = 0.1 + 0.9 * (image - image.min()) / np.ptp(image)
    image /= image.mean()
    rng = np.random.default_rng(seed)
    truth = rng.uniform(-8, 8, (n_frames, 2))
    start = (image.shape[0] - size) // 2
    view = (slice(start, start + size),) * 2
    spectrum = np.fft.fft2(image)
    ky, kx = (2j * np.pi * np.fft.fftfreq(n) for n in image.shape)
    frames, inverse_information = [], []
    for shift in truth:
        moved = ndimage.fourier_shift(spectrum, shift)
        lam = photons * np.fft.ifft2(moved).real[view]
        frames.append(rng.poisson(lam))
        inside = [(np.arange(size) - s >= 0) & (np.arange(size) - s <= size - 1) for s in shift]
        shared = inside[0][:, None] & inside[1][None, :]
        for k in (ky[:, None], kx[None, :]):
            slope = photons * np.fft.ifft2(moved * k).real[view]
            inverse_information.append(1 / np.sum(slope**2 / lam * shared))
    reference = photons * image[view]
    return np.array(frames, np.float32), reference, truth, np.sqrt(np.mean(inverse_information))


def test_low_photon_frames_are_registered_near_the_physical_limit():
    """5 photons a pixel: every shared pixel counts, so the error is near the Cramér-Rao
    bound and well below the fixed window's (which left out a band of max_shift px)."""
    frames, reference, truth, bound = _photon_movie(60, 256, photons=5, seed=11)
    overlap = estimate_shifts(frames, prepare_reference(reference))[:, :2]
    fixed = estimate_shifts(frames, prepare_reference(reference, overlap=False))[:, :2]
    error = np.sqrt(np.mean((overlap - truth) ** 2))
    fixed_error = np.sqrt(np.mean((fixed - truth) ** 2))
    assert error < 1.3 * bound  # 1.20 x when written
    assert error < 0.92 * fixed_error  # 0.85 x when written


def test_the_overlap_estimate_falls_back_where_it_cannot_serve():
    """Frames with NaN pixels, and frames moved so far that little is shared, get the
    fixed window's estimate: still the truth on whole pixels."""
    truth = np.array([(0, 0), (3, -5), (-20, 14), (24, -24)])
    frames = np.stack([np.roll(CAMERA, tuple(t), axis=(0, 1)) for t in truth]).astype(np.float32)
    frames[1, 100:110, 50:60] = np.nan
    plan = prepare_reference(CAMERA, max_shift=30)
    np.testing.assert_allclose(estimate_shifts(frames, plan)[:, :2], truth, atol=1e-6)


def test_the_noise_fitted_on_the_frames_unbiases_the_clip():
    """Photon counts seen through a gain and an offset the estimator is not told (a PMT's
    3.7 levels a photon on a baseline of 100), of a scene with bright plateaus (the
    astronaut's suit): the noise fitted on the first frames is found, and comparing the
    clipped frames with the reference's expected clipped look (not the reference
    clipped) brings the error closer to the bound; a Dask-backed movie gets the same
    figures, each chunk read once."""
    gain, baseline = 3.7, 100.0
    astronaut = (255 * color.rgb2gray(data.astronaut())).astype(np.uint8)
    counts, reference, truth, bound = _photon_movie(60, 256, 5, seed=13, photograph=astronaut)
    frames = (gain * counts + baseline).astype(np.float32)
    reference = gain * reference + baseline
    noise = fit_noise(frames[:noise_sample_size])
    assert abs(noise.gain / gain - 1) < 0.03
    assert abs(-noise.floor / noise.gain - baseline) < 0.5 * gain  # the dark level
    # The opt-in weighting's sqrt(x + offset) is, in photons, Anscombe's sqrt(n + 3/8).
    assert abs((noise.offset(reference) + baseline) / gain - 0.375) < 0.1

    fitted = as_movie(frames, "numpy").reg.estimate(reference)
    bounds = clip_bounds(reference, (1, 99))
    plain = estimate_shifts(frames, prepare_reference(reference, clip=bounds))[:, :2]
    error = np.sqrt(np.mean((fitted.values - truth) ** 2))
    assert error < 0.97 * np.sqrt(np.mean((plain - truth) ** 2))  # 0.93 x when written
    assert error < 1.25 * bound  # 1.17 x when written

    source = ChunkReads(frames, chunk=7)
    lazy = source.movie.reg.estimate(reference)
    assert set(source.reads.values()) == {1}
    np.testing.assert_array_equal(lazy.values, fitted.values)


def test_a_dark_band_does_not_silence_the_noise_fit():
    """Blocks of zero photons (a dark band, or the quantised dark of a few photons) make
    an intensity bin without noise: it is left out, not allowed to drive the fit to 0."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    photons = 20 * (1 + 0.5 * np.sin(xx / 9.0) * np.cos(yy / 7.0))
    photons[:, :40] = 0
    noise = fit_noise(rng.poisson(photons, (8, 256, 256)).astype(np.float32))
    assert abs(noise.gain - 1) < 0.05


def test_no_weighting_without_shot_noise():
    """Gaussian noise of one level everywhere, or none: no stabilising transform; and
    noise-free frames leave the reference as it was (whole pixels stay exact)."""
    image = 1 + smooth_image((128, 128), seed=8)
    rng = np.random.default_rng(9)
    frames = fourier_moved(image, rng.uniform(-4, 4, (8, 2)))
    assert fit_noise(frames + rng.normal(0, 0.05, frames.shape)).offset(image) is None
    assert fit_noise(frames).offset(image) is None
    assert not fit_noise(frames).matters(image)


def _retina():
    """scikit-image's retina photograph, grey, its middle 512 x 512 (mostly its dark
    surround beyond)."""
    grey = color.rgb2gray(data.retina())
    start = (grey.shape[0] - 512) // 2
    return (255 * grey[start : start + 512, start : start + 512]).astype(np.uint8)


def test_information_kept_by_the_clip_is_that_of_the_clipped_estimate():
    """The closed form of NoiseModel.information_kept against a simulation: the
    first-order estimate of a shift along x from many noisy frames (shot noise and a
    read-out floor), clipped and not; the ratio of their precisions."""
    x = np.linspace(0, 6 * np.pi, 64)
    reference = np.broadcast_to(10 + 8 * np.sin(x) + 0.2 * x, (16, 64))
    noise = NoiseModel(gain=1.5, floor=2.0)
    bounds = clip_bounds(reference, (10, 90))
    kept = noise.information_kept(reference, bounds)
    assert 0.5 < kept < 0.95  # the bounds lie inside the noise: information is lost

    rng = np.random.default_rng(3)
    draws = rng.standard_normal((4000, *reference.shape)) * np.sqrt(
        noise.gain * reference + noise.floor
    )
    slope = np.gradient(reference, axis=1)

    def precision(condition):
        """1 / variance of the first-order estimate from frames seen through
        ``condition``; d E[value] / d reference from the simulation itself."""
        values = condition(reference + draws)
        step = 1e-2
        sensitivity = condition(reference + step + draws).mean(axis=0)
        sensitivity = (sensitivity - condition(reference - step + draws).mean(axis=0)) / (2 * step)
        estimates = np.sum(slope * (values - values.mean(axis=0)), axis=(1, 2))
        return 1 / np.var(estimates / np.sum(slope**2 * sensitivity))

    simulated = precision(lambda f: np.clip(f, *bounds)) / precision(lambda f: f)
    assert abs(simulated / kept - 1) < 0.05
    # Far bounds keep everything.
    assert abs(noise.information_kept(reference, (-1e3, 1e3)) - 1) < 1e-6


def test_the_clip_spares_the_noise_of_photon_starved_frames():
    """Two photons a pixel on the retina: the (1, 99) percentiles lie inside the noise,
    so the clip would mostly cut noise; its bounds move out by one noise standard
    deviation and the error falls (about 5 % here, 8 % on bench_accuracy.py's retina).
    Noise of one level everywhere, below the bounds, keeps its clip."""
    frames, reference, truth, bound = _photon_movie(100, 256, 2, seed=17, photograph=_retina())
    noise = fit_noise(frames[:noise_sample_size])
    bounds = clip_bounds(reference, (1, 99))
    spared = noise.spare_noise(reference, bounds)
    assert spared[0] < bounds[0] and spared[1] > bounds[1]
    fitted = as_movie(frames, "numpy").reg.estimate(reference).values
    kept = estimate_shifts(frames, prepare_reference(reference, clip=bounds, noise=noise))[:, :2]
    error = np.sqrt(np.mean((fitted - truth) ** 2))
    assert error < 0.98 * np.sqrt(np.mean((kept - truth) ** 2))  # 0.95 x when written
    assert error < 1.3 * bound  # 1.21 x when written

    # Noise that does not grow with the intensity, over bounds outside it: the clip
    # stays where it is, to tame transients.
    movie = mouse(40, shape=(128, 128)).values.astype(np.float32)
    reference = movie.mean(axis=0)
    bounds = clip_bounds(reference, (1, 99))
    flat = NoiseModel(
        gain=0.0, floor=fit_noise(movie[:noise_sample_size]).std(reference.mean()) ** 2
    )
    assert not flat.weighs(reference)
    assert flat.spare_noise(reference, bounds) == bounds


def test_the_weighted_step_reaches_the_fit_from_a_poor_start(monkeypatch):
    """One step of the weighted fit from a start 0.15 px off (the correlation's estimate,
    moved on purpose) lands within a hundredth of a pixel of noise-free motion."""
    from xreg.core import correlation

    finish = correlation._finish

    def off(*args, **kwargs):
        out = finish(*args, **kwargs)
        if args[9] > 1:  # the subpixel estimate (not the binned integer search's)
            out[:, :2] += 0.15
        return out

    scene = smooth_image((192, 192), sigma=3.0, seed=4)
    scene = 1 + 30 * (scene - scene.min()) / np.ptp(scene)
    truth = np.random.default_rng(6).uniform(-6, 6, (20, 2))
    view = (slice(32, 160),) * 2  # views of a moved scene: new content at the borders
    frames = fourier_moved(scene, truth)[(slice(None), *view)]
    monkeypatch.setattr(correlation, "_finish", off)
    plain = estimate_shifts(frames, prepare_reference(scene[view]))
    weighted = estimate_shifts(
        frames, prepare_reference(scene[view], noise=SHOT_NOISE, weights=True)
    )
    np.testing.assert_allclose(plain[:, :2] - truth, 0.15, atol=0.002)  # the start
    assert np.abs(weighted[:, :2] - truth).max() < 0.01
