"""Registration without a known reference; quality, bad frames, smoothing, NaN masks."""

import warnings

import numpy as np
import pytest
import xarray as xr
from conftest import ChunkReads, as_movie, fourier_moved, smooth_image

import xreg
from xreg import XregError, core
from xreg.core.correlation import bin_frames


def rms_up_to_offset(estimate, truth):
    error = np.asarray(estimate) - np.asarray(truth)
    error = error - np.median(error, axis=0)
    return float(np.sqrt(np.mean(error**2)))


@pytest.fixture(scope="module")
def drifting():
    """The large preset's look at 256 x 256: drift up to 8 px plus sudden jumps."""
    movie = xreg.datasets.large(n_frames=300, shape=(256, 256), chunks=50)
    moved, truth = xreg.datasets.add_motion(movie, max_drift=8, jumps=3, subpixel=True, seed=4)
    return moved.compute(), truth, movie.mean("time").compute()


def test_self_built_reference_beats_the_mean(drifting):
    moved, truth, unmoved_mean = drifting
    own = moved.reg.estimate(upsample_factor=20)  # reference=None
    assert own.attrs["reference_method"] == "iterative"
    from_mean = moved.reg.estimate(moved.mean("time"), upsample_factor=20)
    knowing = moved.reg.estimate(unmoved_mean, upsample_factor=20)
    own_error = rms_up_to_offset(own, truth)
    # Close to knowing the unmoved movie's mean, and far better than the moved mean.
    # (The remaining gap: the reference is an average of interpolated frames.)
    assert own_error < 1.6 * rms_up_to_offset(knowing, truth)
    assert own_error < 0.7 * rms_up_to_offset(from_mean, truth)


def test_clipping_tames_calcium_transients(drifting):
    """Cells lit by transients pull an intensity correlation; clipping at the
    reference's percentiles (the default) takes most of that pull away."""
    moved, truth, unmoved_mean = drifting
    clipped = moved.reg.estimate(unmoved_mean, upsample_factor=20)
    raw = moved.reg.estimate(unmoved_mean, upsample_factor=20, clip=None)
    assert clipped.attrs["clip_percentiles"] == [1.0, 99.0] and "clip_percentiles" not in raw.attrs
    assert rms_up_to_offset(clipped, truth) < 0.75 * rms_up_to_offset(raw, truth)
    with pytest.raises(XregError, match="percentiles"):
        moved.reg.estimate(unmoved_mean, clip=(99, 1))


def test_reference_is_centred_and_sharp(drifting):
    moved, _, _ = drifting
    reference = moved.reg.reference()
    assert reference.dims == ("y", "x") and reference.attrs["method"] == "iterative"
    shifts = moved.reg.estimate(reference)
    # Centred: the displacements measured against it have (almost) zero median.
    assert np.abs(np.median(shifts.values, axis=0)).max() < 0.5
    gy, gx = np.gradient(reference.values)
    my, mx = np.gradient(moved.mean("time").values.astype(float))
    assert (gy**2 + gx**2).mean() > 1.5 * (my**2 + mx**2).mean()


def test_reference_reads_only_sampled_chunks():
    frames = np.broadcast_to(smooth_image((48, 48), seed=1).astype(np.float32), (10_000, 48, 48))
    source = ChunkReads(frames, chunk=10)
    source.movie.reg.reference(n_frames=50, iterations=1)
    assert 0 < len(source.reads) <= 50  # of 1000 chunks
    assert set(source.reads.values()) == {1}


def test_reference_of_a_chunked_movie_is_built_from_its_sampled_frames(drifting):
    """The Dask path hands the sample's runs of whole chunks over as they are read;
    the reference is the one built from those frames stacked in memory."""
    moved, _, _ = drifting
    lazy = moved.chunk(time=50)
    index = core.sample_indices(300, 120, [50] * 6)
    from_dask = lazy.reg.reference(n_frames=120, iterations=2)
    in_memory, _ = core.build_reference(
        moved.values[index], iterations=2, clip_percentiles=(1, 99), return_shifts=False
    )
    np.testing.assert_array_equal(from_dask.values, in_memory)
    assert from_dask.attrs["n_frames"] == 120


@pytest.mark.parametrize("shape", [(37, 130, 67), (5, 9, 16, 20)])
def test_binning_does_not_depend_on_threads(shape):
    frames = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    one = bin_frames(frames, 4)
    assert one.shape == (shape[0],) + tuple(n // 4 for n in shape[1:])
    np.testing.assert_array_equal(bin_frames(frames, 4, workers=2), one)
    np.testing.assert_array_equal(bin_frames(frames, 4, workers=3), one)
    # Block averages: the first block by hand.
    block = frames[(slice(None),) + (slice(0, 4),) * (len(shape) - 1)]
    np.testing.assert_allclose(
        one[(slice(None),) + (0,) * (len(shape) - 1)],
        block.reshape(shape[0], -1).mean(axis=1),
        rtol=1e-5,
    )


def test_bad_frames_are_flagged_and_do_not_disturb_neighbours(backend):
    image = smooth_image((96, 96), sigma=2.0, seed=8) * 1000
    truth = np.random.default_rng(3).uniform(-4, 4, (60, 2))
    frames = fourier_moved(image, truth)
    frames += np.random.default_rng(4).normal(0, 20, frames.shape)
    bad = [5, 17, 18, 40, 59]
    frames[[5, 40]] = np.random.default_rng(5).normal(500, 300, (2, 96, 96))  # noise
    frames[[17, 18, 59]] = 0  # blanked
    shifts = as_movie(frames, backend, chunk=7).reg.estimate(image, upsample_factor=20)
    assert shifts.bad_frame.dtype == bool
    np.testing.assert_array_equal(np.flatnonzero(shifts.bad_frame.values), bad)
    good = np.setdiff1d(np.arange(60), bad)
    assert np.abs(shifts.values[good] - truth[good]).max() < 0.1

    movie = as_movie(frames, backend, chunk=7)
    left = movie.reg.apply(shifts, bad_frames="leave")
    np.testing.assert_array_equal(left.values[bad], frames[bad])
    filled = movie.reg.apply(shifts, bad_frames="interpolate")
    assert not np.array_equal(filled.values[40], frames[40])
    with pytest.raises(XregError, match="bad_frames"):
        movie.reg.apply(shifts, bad_frames="drop")


def test_smoothing_is_off_by_default_and_helps_at_low_snr():
    image = smooth_image((64, 64), sigma=3.0, seed=9) * 100
    truth = np.cumsum(np.random.default_rng(6).normal(0, 0.05, (200, 2)), axis=0)
    frames = fourier_moved(image, truth) + np.random.default_rng(7).normal(0, 60, (200, 64, 64))
    movie = as_movie(frames, "numpy")
    raw = movie.reg.estimate(image, upsample_factor=20)
    smoothed = movie.reg.estimate(image, upsample_factor=20, smooth=9)
    assert "smooth" not in raw.attrs and smoothed.attrs["smooth"] == 9
    assert rms_up_to_offset(smoothed, truth) < 0.7 * rms_up_to_offset(raw, truth)


def test_nan_masked_frames_stay_within_a_tenth_of_a_pixel(backend):
    image = smooth_image((128, 128), sigma=2.0, seed=10)
    truth = np.random.default_rng(8).uniform(-5, 5, (12, 2))
    frames = fourier_moved(image, truth)
    frames[np.random.default_rng(9).random(frames.shape) < 0.3] = np.nan
    shifts = as_movie(frames, backend, chunk=4).reg.estimate(image, upsample_factor=50)
    assert np.abs(shifts.values - truth).max() < 0.1


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_infinite_pixels_are_left_out_like_nan(backend):
    """A movie with a few NaN and infinite pixels (a saturated or dead detector pixel
    turned into inf by a conversion) still gives a finite reference, quietly."""
    movie = xreg.datasets.mouse(n_frames=60, shape=(96, 96)).astype(np.float32)
    moved, truth = xreg.datasets.add_motion(movie, max_drift=3, subpixel=True, seed=5)
    data = moved.values.copy()
    data[3, 10, 10], data[5, 20, 20], data[7, 30, 30] = np.inf, -np.inf, np.nan
    moved = moved.copy(data=data)
    moved = moved.chunk(time=20) if backend == "dask" else moved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reference = moved.reg.reference()
        shifts = moved.reg.estimate(reference)
    assert np.isfinite(reference.values).all()
    assert rms_up_to_offset(shifts, truth) < 0.1


def test_walkthrough_scenario_without_a_reference():
    movie = xreg.datasets.mouse(n_frames=200, shape=(128, 128))
    moved, truth = xreg.datasets.add_motion(movie, max_drift=4, subpixel=True, seed=2)
    own = moved.reg.estimate(upsample_factor=20)
    true_reference = moved.reg.estimate(movie.mean("time"), upsample_factor=20)
    # As good as knowing the unmoved reference, up to one offset.
    assert rms_up_to_offset(own, truth) < 1.2 * rms_up_to_offset(true_reference, truth) + 0.02
    assert isinstance(own, xr.DataArray)


def test_reference_without_the_final_shifts_is_the_same_image():
    movie, _ = xreg.datasets.add_motion(xreg.datasets.mouse(n_frames=40), seed=3)
    frames = movie.values
    with_shifts, shifts = core.build_reference(frames, iterations=2)
    alone, none = core.build_reference(frames, iterations=2, return_shifts=False)
    np.testing.assert_array_equal(alone, with_shifts)
    assert none is None and shifts.shape == (40, 3)


@pytest.mark.parametrize("shape", [(40, 52), (12, 14, 16)])
def test_average_of_moved_frames_counts_only_pixels_from_inside(shape):
    """The reference's average: each frame moved back (linear interpolation), each
    pixel averaged over the frames whose value there came from inside the frame and
    is finite; checked against moving whole frames with `shift_frames` and masking."""
    from xreg.core.reference import _average_registered

    rng = np.random.default_rng(5)
    frames = rng.normal(100, 10, (30,) + shape).astype(np.float32)
    frames[4, 3:6] = np.nan
    frames[9][np.unravel_index(17, shape)] = np.inf
    shifts = rng.uniform(-6, 6, (30, len(shape)))
    shifts[2] = np.round(shifts[2])  # whole pixels
    shifts[3] = 0
    shifts[5, 0] = shape[0] + 1  # moved out of the frame entirely
    index = rng.permutation(30)[:24]

    moved = core.shift_frames(frames[index], shifts[: len(index)], order=1)
    valid = np.isfinite(moved)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    for k, shift in enumerate(shifts[: len(index)]):
        for grid, size, amount in zip(grids, shape, shift, strict=True):
            valid[k] &= (grid + amount >= 0) & (grid + amount <= size - 1)
    total = np.where(valid, moved, 0).sum(axis=0, dtype=np.float64)
    count = valid.sum(axis=0)
    expected = total / count

    average = _average_registered(frames, shifts[: len(index)], index, workers=2)
    covered = count > 0
    np.testing.assert_allclose(average, expected, rtol=1e-12)
    assert covered.all()  # (frame 3 is not moved)
    # The same sums on any number of threads.
    np.testing.assert_array_equal(average, _average_registered(frames, shifts[:24], index, 1))


@pytest.mark.parametrize(
    "chunks", [[100] * 10, [100] * 10 + [50], [10] * 1000, [64] * 15 + [40], [50] * 6]
)
def test_sample_comes_from_as_few_chunks_as_hold_it(chunks):
    n_total = sum(chunks)
    index = core.sample_indices(n_total, 200, chunks)
    starts = np.concatenate([[0], np.cumsum(chunks)])
    read = np.unique(np.searchsorted(starts, index, side="right") - 1)
    assert len(index) == 200 and len(np.unique(index)) == 200
    # It spans the movie (first and last chunk) and reads less than one chunk more
    # than the sample, whatever the chunks' sizes.
    assert read[0] == 0 and read[-1] == len(chunks) - 1
    assert np.asarray(chunks)[read].sum() < 200 + max(chunks)
