"""Piecewise-rigid (non-rigid) registration against a known smooth displacement field."""

import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes, smooth_image
from scipy import ndimage

import xreg
from xreg import XregError


def nonrigid_movie(n=10, size=192, seed=0):
    """Noisy frames warped by a smooth random field (up to 5 px), different in every frame."""
    still = xreg.datasets.large(n_frames=1, shape=(size, size), seed=seed).isel(time=0)
    reference = ndimage.gaussian_filter(still.values.astype(float), 1.0)
    clean = xr.DataArray(
        np.stack([reference] * n), dims=("time", "y", "x"), coords={"time": np.arange(n) * 0.1}
    )
    moved, field = xreg.datasets.add_nonrigid_motion(clean, max_shift=5, seed=seed)
    noisy = np.random.default_rng(seed).poisson(np.maximum(moved.values, 0))
    return moved.copy(data=noisy.astype(np.float32)), reference, field.values


def block_rms(shifts, fields):
    """RMS error of block displacements against the true field at the block centres."""
    cy = np.rint(shifts.block_y.values).astype(int)
    cx = np.rint(shifts.block_x.values).astype(int)
    truth = np.moveaxis(fields[:, :, cy][:, :, :, cx], 1, -1)
    return np.sqrt(np.mean((shifts.values - truth) ** 2))


@pytest.fixture(scope="module")
def warped():
    return nonrigid_movie()


def test_block_shifts_match_the_true_field(warped, backend):
    movie, reference, fields = warped
    movie = movie.chunk(time=4) if backend == "dask" else movie
    shifts = movie.reg.estimate(reference, method="piecewise", block_size=64, overlap=0.5)
    assert shifts.dims == ("time", "block_y", "block_x", "axis")
    assert shifts.attrs["method"] == "piecewise"
    assert shifts.rigid.dims == ("time", "axis") and shifts.quality.dims == shifts.dims[:-1]
    assert block_rms(shifts, fields) < 0.2


def test_registered_movie_beats_rigid(warped, backend):
    movie, reference, _ = warped
    movie = movie.chunk(time=4) if backend == "dask" else movie
    piecewise = movie.reg.apply(movie.reg.estimate(reference, method="piecewise", block_size=64))
    rigid = movie.reg.apply(movie.reg.estimate(reference))
    inner = {"y": slice(24, -24), "x": slice(24, -24)}
    target = xr.DataArray(reference, dims=("y", "x")).isel(inner)

    def correlation(registered):
        return float(xr.corr(registered.isel(inner), target, dim=["y", "x"]).mean())

    assert correlation(piecewise) > correlation(rigid) + 0.01
    assert piecewise.dims == movie.dims and piecewise.dtype == movie.dtype


def test_lazy_apply_and_field(warped):
    movie, reference, _ = warped
    lazy = movie.chunk(time=5)
    shifts = lazy.reg.estimate(reference, method="piecewise", block_size=64)
    with raise_if_dask_computes():
        fixed = lazy.reg.apply(shifts)
    assert fixed.chunks is not None
    field = shifts.reg.field()
    assert field.dims == ("time", "axis", "y", "x") and field.shape == (10, 2, 192, 192)
    # At a block centre the field is that block's displacement.
    block = shifts.isel(block_y=1, block_x=2)
    at_centre = field.isel(y=int(block.block_y), x=int(round(float(block.block_x))))
    np.testing.assert_allclose(at_centre.values, block.values, atol=0.05)


def test_uniform_motion_gives_uniform_blocks():
    image = smooth_image((128, 128), sigma=2.0, seed=3) * 1000
    frames = np.stack([ndimage.shift(image, (2.3, -1.4), mode="nearest")] * 2)
    movie = xr.DataArray(frames, dims=("time", "y", "x"))
    shifts = movie.reg.estimate(image, method="piecewise", block_size=64, upsample_factor=20)
    np.testing.assert_allclose(shifts.values, np.broadcast_to([2.3, -1.4], shifts.shape), atol=0.1)


def test_weak_blocks_fall_back_to_rigid():
    image = smooth_image((128, 128), sigma=2.0, seed=4) * 1000
    frame = ndimage.shift(image, (1.5, 2.0), mode="nearest")
    frame[:64, :64] = np.random.default_rng(0).normal(500, 200, (64, 64))  # unmatchable
    movie = xr.DataArray(frame[None], dims=("time", "y", "x"))
    shifts = movie.reg.estimate(image, method="piecewise", block_size=64, overlap=0)
    assert float(shifts.quality.isel(time=0, block_y=0, block_x=0)) == 0
    np.testing.assert_allclose(
        shifts.isel(time=0, block_y=0, block_x=0).values, shifts.rigid.isel(time=0).values
    )


def test_volumes_with_3d_blocks():
    volume = ndimage.gaussian_filter(np.random.default_rng(5).standard_normal((48, 48, 48)), 2)
    moved = ndimage.shift(volume, (1.2, -0.8, 2.1), mode="nearest")
    movie = xr.DataArray(np.stack([volume, moved]), dims=("time", "z", "y", "x"))
    shifts = movie.reg.estimate(volume, method="piecewise", block_size=32, upsample_factor=20)
    assert shifts.dims == ("time", "block_z", "block_y", "block_x", "axis")
    np.testing.assert_allclose(
        shifts.isel(time=1).values.reshape(-1, 3).mean(axis=0), [1.2, -0.8, 2.1], atol=0.1
    )
    assert movie.reg.apply(shifts).shape == movie.shape


def test_volumes_plane_by_plane():
    """Planes imaged at different moments move on their own: 2-D blocks per plane,
    with plain xarray around the accessor."""
    planes = [nonrigid_movie(n=4, seed=seed) for seed in (1, 2)]  # as the 2-D test above
    movie = xr.concat([moved for moved, _, _ in planes], dim="z").transpose("time", "z", ...)
    reference = xr.DataArray(np.stack([ref for _, ref, _ in planes]), dims=("z", "y", "x"))
    shifts = xr.concat(
        [
            movie.isel(z=z).reg.estimate(reference.isel(z=z), method="piecewise", block_size=64)
            for z in range(2)
        ],
        dim="z",
    )
    assert shifts.dims == ("z", "time", "block_y", "block_x", "axis")
    for z, (_, _, fields) in enumerate(planes):
        assert block_rms(shifts.isel(z=z), fields) < 0.2
    fixed = xr.concat(
        [movie.isel(z=z).reg.apply(shifts.isel(z=z)) for z in range(2)], dim="z"
    ).transpose(*movie.dims)
    assert fixed.dims == movie.dims and fixed.shape == movie.shape


def test_bad_input():
    movie = xr.DataArray(np.zeros((2, 64, 64)), dims=("time", "y", "x"))
    image = smooth_image((64, 64))
    with pytest.raises(XregError, match="method"):
        movie.reg.estimate(image, method="elastic")
    for block_size in (4, (32, 32, 32)):
        with pytest.raises(XregError, match="block_size"):
            movie.reg.estimate(image, method="piecewise", block_size=block_size)
    # Before any work: this movie is blank, so building a reference would fail first.
    with pytest.raises(XregError, match="block_size"):
        movie.reg.estimate(method="piecewise", block_size=4)
    with pytest.raises(XregError, match="overlap"):
        movie.reg.estimate(image, method="piecewise", overlap=1.0)
    with pytest.raises(XregError, match="min_quality"):
        movie.reg.estimate(image, method="piecewise", min_quality=30)
    shifts = movie.reg.estimate(image, method="piecewise", block_size=32)
    other = xr.DataArray(np.zeros((2, 96, 96)), dims=("time", "y", "x"))
    with pytest.raises(XregError, match="frames of shape"):
        other.reg.apply(shifts)
    with pytest.raises(XregError, match="every block"):
        movie.reg.apply(shifts.isel(block_x=slice(0, 1)))
    with pytest.raises(XregError, match="block layout"):
        movie.reg.apply(shifts.drop_attrs())
    with pytest.raises(XregError, match="piecewise"):
        movie.reg.estimate(image).reg.field()


@pytest.mark.parametrize("mode", ["nearest", "constant", "reflect", "mirror", "wrap"])
@pytest.mark.parametrize("shape", [(40, 36), (12, 14, 10)])
def test_uniform_warp_equals_the_rigid_shift(mode, shape):
    """A field that is the same everywhere moves frames as the rigid path does."""
    from xreg.core import block_grid, shift_frames, warp_frames

    rng = np.random.default_rng(1)
    frames = rng.standard_normal((2,) + shape).astype(np.float32)
    grid = block_grid(shape, 8, 0.5)
    shifts = np.array([[1.0, -2.0, 3.0][: len(shape)], [-0.5, 0.25, 1.5][: len(shape)]])
    blocks = np.broadcast_to(
        shifts.reshape((2,) + (1,) * len(shape) + (len(shape),)),
        (2,) + grid.grid_shape + (len(shape),),
    )
    expected = shift_frames(frames, shifts, order=1, mode=mode, cval=0.5)
    out = warp_frames(frames, blocks, grid, order=1, mode=mode, cval=0.5)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("mode", ["nearest", "constant", "reflect", "mirror", "wrap"])
@pytest.mark.parametrize("shape", [(60, 52), (20, 24, 18)])
def test_warp_matches_scipy_on_a_varying_field(order, mode, shape):
    """xreg's own gather-based warp samples where scipy's map_coordinates does."""
    from xreg.core import block_grid, displacement_field, warp_frames
    from xreg.core.shift import SCIPY_MODES

    rng = np.random.default_rng(3)
    frames = rng.standard_normal((2,) + shape).astype(np.float32)
    grid = block_grid(shape, 12, 0.5)
    blocks = rng.uniform(-4, 4, (2,) + grid.grid_shape + (len(shape),))
    out = warp_frames(frames, blocks, grid, order=order, mode=mode, cval=0.5)
    for frame, field, moved in zip(frames, displacement_field(blocks, grid), out, strict=True):
        coords = np.indices(shape) + field
        expected = ndimage.map_coordinates(
            frame, coords, order=order, mode=SCIPY_MODES.get(mode, mode), cval=0.5
        )
        np.testing.assert_allclose(moved, expected, atol=2e-5)


def test_warp_of_a_frame_too_large_for_float32_indices():
    """Past 2**24 pixels a float32 flat index would round to a neighbouring pixel."""
    from xreg.core import block_grid, displacement_field, warp_frames

    shape = (4099, 4101)  # odd row length: a rounded index lands on the wrong pixel
    rng = np.random.default_rng(4)
    frame = rng.random(shape, dtype=np.float32)
    grid = block_grid(shape, 1024, 0.5)
    blocks = rng.uniform(-2, 2, (1,) + grid.grid_shape + (2,))
    moved = warp_frames(frame[None], blocks, grid)[0]
    band = slice(4000, None)  # where the flat index passes 2**24
    field = displacement_field(blocks, grid)[0][:, band]
    coords = np.indices(shape)[:, band] + field
    expected = ndimage.map_coordinates(frame, coords, order=1, mode="nearest")
    # Positions are float32: their fractions are good to the spacing of float32 there.
    np.testing.assert_allclose(moved[band], expected, atol=np.spacing(np.float32(max(shape))))


def test_warp_leaves_frames_with_unknown_shifts_unchanged():
    from xreg.core import block_grid, warp_frames

    frames = np.random.default_rng(0).standard_normal((2, 32, 32)).astype(np.float32)
    grid = block_grid((32, 32), 16, 0.5)
    blocks = np.full((2,) + grid.grid_shape + (2,), 1.5)
    blocks[1, 0, 0, 0] = np.nan
    out = warp_frames(frames, blocks, grid)
    np.testing.assert_array_equal(out[1], frames[1])
    assert not np.allclose(out[0], frames[0])


def test_nan_pixels_in_a_block_are_left_out():
    """A block with missing pixels is compared on the rest, against its own reference."""
    from xreg.core import estimate_piecewise, prepare_piecewise

    reference = smooth_image((128, 128), sigma=2.0)
    frames = np.stack([ndimage.shift(reference, (1.3, -2.2), order=3, mode="nearest")] * 3)
    frames[1, 50:60, 20:40] = np.nan
    rigid, blocks = estimate_piecewise(frames, prepare_piecewise(reference, block_size=32))
    np.testing.assert_allclose(rigid[:, :2], [(1.3, -2.2)] * 3, atol=0.05)
    np.testing.assert_allclose(
        blocks[..., :2], np.broadcast_to([1.3, -2.2], blocks[..., :2].shape), atol=0.05
    )
