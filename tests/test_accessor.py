"""The .reg accessor on numpy- and Dask-backed DataArrays."""

import warnings

import matplotlib
import numpy as np
import pytest
import xarray as xr
from conftest import (
    ChunkReads,
    as_movie,
    blob_volume,
    fourier_moved,
    raise_if_dask_computes,
    smooth_image,
)
from scipy import ndimage
from skimage import data

from xreg import XregError

matplotlib.use("Agg")
CAMERA = data.camera().astype(np.float64)
TRUTH = [(0, 0), (-2.4, 1.32), (1.5, -3.25)]


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint16"])
def test_estimate_recovers_known_subpixel_shift(backend, dtype):
    frames = fourier_moved(CAMERA, TRUTH)
    if dtype == "uint16":
        frames = np.clip(np.round(frames), 0, None)
    movie = as_movie(frames.astype(dtype), backend)
    shifts = movie.reg.estimate(reference=movie.isel(time=0), upsample_factor=100)
    np.testing.assert_allclose(shifts.values, TRUTH, atol=0.05)


def test_estimate_output_layout(backend):
    movie = as_movie(fourier_moved(CAMERA, TRUTH), backend)
    movie = movie.assign_coords(trial=("time", [1, 1, 2]))
    shifts = movie.reg.estimate(CAMERA)  # a plain numpy reference works too
    assert shifts.name == "displacement"
    assert shifts.dims == ("time", "axis")
    assert list(shifts.axis.values) == ["y", "x"]
    np.testing.assert_array_equal(shifts.time, movie.time)
    np.testing.assert_array_equal(shifts.trial, [1, 1, 2])  # labels along time ride along
    assert shifts.quality.dims == ("time",)
    assert np.all((shifts.quality >= 0) & (shifts.quality <= 1))
    assert shifts.attrs["units"] == "pixel" and shifts.attrs["method"] == "rigid"
    assert shifts.attrs["upsample_factor"] == 10
    assert isinstance(shifts.data, np.ndarray)  # computed, small


def test_volume_movie(backend):
    volume = blob_volume()
    movie = as_movie(fourier_moved(volume, [(0, 0, 0), (-2.3, 1.7, 5.4)]), backend)
    shifts = movie.reg.estimate(volume, upsample_factor=100)
    assert list(shifts.axis.values) == ["z", "y", "x"]
    np.testing.assert_allclose(shifts.values, [(0, 0, 0), (-2.3, 1.7, 5.4)], atol=0.05)


def test_integer_shifts_exact(backend):
    truth = [(0, 0), (4, -6), (-3, 7)]
    movie = as_movie(np.stack([np.roll(CAMERA, t, axis=(0, 1)) for t in truth]), backend)
    shifts = movie.reg.estimate(CAMERA, upsample_factor=1)
    np.testing.assert_array_equal(shifts.values, truth)


def test_max_shift_bounds_the_displacement(backend):
    """Motion beyond ``max_shift`` comes out at the bound (the binned search that sizes
    each frame's window reaches further); motion within it stays exact."""
    truth = [(0, 0), (10, -10), (-3, 2)]
    movie = as_movie(np.stack([np.roll(CAMERA, t, axis=(0, 1)) for t in truth]), backend)
    for upsample_factor in (1, 10):
        shifts = movie.reg.estimate(CAMERA, max_shift=5, upsample_factor=upsample_factor)
        np.testing.assert_array_equal(shifts.values, [truth[0], (5, -5), truth[2]])


def test_border_motion_is_not_biased(backend):
    image = smooth_image((96, 80), seed=5)
    truth = np.random.default_rng(11).uniform(-4, 4, (24, 2))
    movie = as_movie(np.stack([ndimage.shift(image, t, mode="nearest") for t in truth]), backend, 5)
    shifts = movie.reg.estimate(image, upsample_factor=100)
    assert float(np.abs(shifts.values - truth).max()) < 0.1


def test_apply_maps_frames_back_onto_the_reference(backend):
    image = smooth_image((96, 80), seed=5) * 1000
    truth = np.random.default_rng(1).uniform(-4, 4, (12, 2))
    movie = as_movie(np.stack([ndimage.shift(image, t, mode="nearest") for t in truth]), backend, 4)
    fixed = movie.reg.apply(movie.reg.estimate(image, upsample_factor=20))
    interior = (slice(None), slice(8, -8), slice(8, -8))
    error = np.abs(fixed.values[interior] - image[interior[1:]]).max()
    assert error < 0.05 * np.abs(image).mean()


def test_apply_keeps_labels_and_dtype(backend):
    frames = np.clip(fourier_moved(CAMERA, TRUTH), 0, 255).round().astype(np.uint8)
    movie = as_movie(frames, backend).assign_coords(trial=("time", [1, 1, 2]))
    movie.encoding["dtype"] = "uint8"
    fixed = movie.reg.apply(movie.reg.estimate(CAMERA), order=3)
    assert fixed.dims == movie.dims and fixed.name == movie.name and fixed.attrs == movie.attrs
    assert fixed.dtype == np.uint8 and fixed.encoding == movie.encoding
    xr.testing.assert_identical(fixed.coords.to_dataset(), movie.coords.to_dataset())
    assert (fixed.chunks is None) == (backend == "numpy")


def test_apply_integer_shift_is_exact_and_accepts_arrays(backend):
    frames = np.stack([np.roll(CAMERA, (2, -3), axis=(0, 1))]).astype(np.int16)
    fixed = as_movie(frames, backend).reg.apply(np.array([[2, -3]]), mode="wrap")
    np.testing.assert_array_equal(fixed.values[0], CAMERA.astype(np.int16))


def test_apply_transposed_movie_keeps_dim_order():
    movie = as_movie(fourier_moved(CAMERA[:64, :64], TRUTH), "numpy").transpose("y", "time", "x")
    fixed = movie.reg.apply(movie.reg.estimate(CAMERA[:64, :64]))
    assert fixed.dims == ("y", "time", "x")


def test_apply_is_lazy_and_estimate_reads_each_chunk_once():
    frames = fourier_moved(CAMERA[:128, :128], np.random.default_rng(0).uniform(-3, 3, (20, 2)))
    source = ChunkReads(frames.astype(np.float32), chunk=4)
    with raise_if_dask_computes(max_computes=1):
        shifts = source.movie.reg.estimate(CAMERA[:128, :128])
    assert sorted(source.reads) == [0, 4, 8, 12, 16]
    assert set(source.reads.values()) == {1}
    with raise_if_dask_computes(max_computes=0):
        fixed = source.movie.reg.apply(shifts)
        fixed = (fixed - fixed.mean("time")) / fixed.mean("time")  # plain xarray, still lazy
    assert sum(source.reads.values()) == 5  # nothing more was read
    assert fixed.chunks is not None


def test_plots():
    movie = as_movie(fourier_moved(CAMERA[:64, :64], TRUTH), "numpy")
    shifts = movie.reg.estimate(CAMERA[:64, :64])
    shifts.plot()
    lines = shifts.plot.line(x="time")
    assert len(lines) == 2
    matplotlib.pyplot.close("all")


# ----------------------------------------------------------------------------- bad input


def test_missing_time_dim():
    movie = as_movie(fourier_moved(CAMERA[:32, :32], TRUTH), "numpy").rename(time="frame")
    with pytest.raises(XregError, match="no 'time' dim.*dim="):
        movie.reg.estimate(CAMERA[:32, :32])
    assert movie.reg.estimate(CAMERA[:32, :32], dim="frame").dims == ("frame", "axis")


def test_frames_chunked_in_space():
    movie = as_movie(fourier_moved(CAMERA[:32, :32], TRUTH), "dask").chunk(y=16)
    with pytest.raises(XregError, match=r"chunk\(y=-1, x=-1\)"):
        movie.reg.estimate(CAMERA[:32, :32])
    with pytest.raises(XregError, match="one chunk in space"):
        movie.reg.apply(np.zeros((3, 2)))


def test_reference_shape_mismatch():
    movie = as_movie(fourier_moved(CAMERA[:32, :32], TRUTH), "numpy")
    with pytest.raises(XregError, match="shape"):
        movie.reg.estimate(CAMERA[:32, :30])
    with pytest.raises(XregError, match="frame dims"):
        movie.reg.estimate(movie)


def test_one_dimensional_frames_and_too_many_dims():
    with pytest.raises(XregError, match="2-D.*3-D"):
        xr.DataArray(np.zeros((4, 10)), dims=("time", "x")).reg.estimate(np.zeros(10))
    with pytest.raises(XregError, match="isel"):
        xr.DataArray(np.zeros((2, 2, 4, 4, 4)), dims=("time", "w", "z", "y", "x")).reg.apply(
            np.zeros((2, 4))
        )
    # `c` is a channel dim, broadcast: the shifts must be for the 3 spatial axes.
    with pytest.raises(XregError, match=r"shape \(2, 3\)"):
        xr.DataArray(np.zeros((2, 2, 4, 4, 4)), dims=("time", "c", "z", "y", "x")).reg.apply(
            np.zeros((2, 4))
        )


def test_non_numeric_dtype():
    movie = xr.DataArray(np.zeros((2, 8, 8), dtype=bool), dims=("time", "y", "x"))
    with pytest.raises(XregError, match="astype"):
        movie.reg.estimate(np.ones((8, 8)))


def test_empty_time_axis():
    movie = xr.DataArray(np.zeros((0, 8, 8)), dims=("time", "y", "x"))
    with pytest.raises(XregError, match="no frames"):
        movie.reg.estimate(np.ones((8, 8)))


def test_shifts_that_do_not_match_the_movie(backend):
    movie = as_movie(fourier_moved(CAMERA[:32, :32], TRUTH), backend)
    shifts = movie.reg.estimate(CAMERA[:32, :32])
    with pytest.raises(XregError, match="coordinate does not match"):
        movie.reg.apply(shifts.assign_coords(time=shifts.time + 1))
    with pytest.raises(XregError, match="2 shifts for 3 frames"):
        movie.reg.apply(shifts.isel(time=slice(2)))
    with pytest.raises(XregError, match="axes"):
        movie.reg.apply(shifts.assign_coords(axis=["a", "b"]))


def test_bad_options():
    movie = as_movie(fourier_moved(CAMERA[:32, :32], TRUTH), "numpy")
    with pytest.raises(XregError, match="upsample_factor"):
        movie.reg.estimate(CAMERA[:32, :32], upsample_factor=0)
    with pytest.raises(XregError, match="max_shift"):
        movie.reg.estimate(CAMERA[:32, :32], max_shift=(1, 2, 3))
    with pytest.raises(XregError, match="mode"):
        movie.reg.apply(np.zeros((3, 2)), mode="bogus")
    with pytest.raises(XregError, match="order"):
        movie.reg.apply(np.zeros((3, 2)), order=7)


def test_nan_frames_are_handled(backend):
    frames = fourier_moved(CAMERA, TRUTH)
    frames[1, :40] = np.nan  # a cropped band: estimated from the valid pixels
    shifts = as_movie(frames, backend).reg.estimate(CAMERA, upsample_factor=100)
    np.testing.assert_allclose(shifts.values, TRUTH, atol=0.05)


def test_a_frame_with_no_valid_pixel(backend):
    frames = fourier_moved(CAMERA, TRUTH)
    frames[2] = np.nan  # a dropped frame
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0 / 0 along the way
        shifts = as_movie(frames, backend).reg.estimate(CAMERA)
    assert shifts.values[2].tolist() == [0, 0] and float(shifts.quality[2]) == 0
    assert shifts.bad_frame.values.tolist() == [False, False, True]


def test_constant_frames(backend):
    frames = np.stack([np.full((64, 64), 3.0), smooth_image((64, 64))])
    shifts = as_movie(frames, backend).reg.estimate(smooth_image((64, 64)))
    assert shifts.values[0].tolist() == [0, 0] and float(shifts.quality[0]) == 0


def test_nothing_is_mutated():
    movie = as_movie(fourier_moved(CAMERA[:64, :64], TRUTH), "numpy")
    before = movie.copy(deep=True)
    shifts = movie.reg.estimate(CAMERA[:64, :64])
    shifts_before = shifts.copy(deep=True)
    movie.reg.apply(shifts)
    xr.testing.assert_identical(movie, before)
    xr.testing.assert_identical(shifts, shifts_before)
