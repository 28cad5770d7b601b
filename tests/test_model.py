"""The thunder-style API, tested on thunder-registration's documented examples."""

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from xreg import CrossCorr, Displacement, LocalDisplacement, RegistrationModel, XregError


def test_2d_circular_shifts():
    reference = np.arange(25.0).reshape(5, 5)
    images = np.stack([np.roll(reference, s, axis=(0, 1)) for s in ([1, 2], [-2, 1])])
    model = CrossCorr().fit(images, reference=reference)
    assert isinstance(model, RegistrationModel)
    np.testing.assert_array_equal(model.toarray(), [[1, 2], [-2, 1]])
    assert model.transformations[(0,)] == Displacement([1, 2])
    assert repr(model.transformations[(1,)]) == "Displacement(delta=[-2, 1])"
    assert list(model.transformations) == [(0,), (1,)]
    assert model.algorithm == "CrossCorr"
    assert repr(model) == "RegistrationModel(length=2, algorithm='CrossCorr')"
    np.testing.assert_array_equal(model.transform(images, mode="wrap"), np.stack([reference] * 2))


def test_3d_circular_shifts():
    reference = np.arange(125.0).reshape(5, 5, 5)
    images = np.stack([np.roll(reference, s, axis=(0, 1, 2)) for s in ([1, 0, 2], [0, 1, 2])])
    model = CrossCorr().fit(images, reference=reference)
    np.testing.assert_array_equal(model.toarray(), [[1, 0, 2], [0, 1, 2]])


def test_per_plane_registration():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2, 5, 6))
    deltas = [[[1, 2], [-1, 0]], [[0, -2], [2, 1]]]
    images = np.stack(
        [np.stack([np.roll(reference[p], d[p], axis=(0, 1)) for p in range(2)]) for d in deltas]
    )
    model = CrossCorr(axis=0).fit(images, reference=reference)
    assert model.toarray().shape == (2, 2, 2)
    np.testing.assert_array_equal(model.toarray(), deltas)
    assert model.transformations[(0,)] == LocalDisplacement([[1, 2], [-1, 0]], axis=0)
    restored = model.transform(images, mode="wrap")
    np.testing.assert_allclose(restored, np.stack([reference] * 2))


def test_zero_filled_shifts_recovered_exactly():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((25, 25))
    shifts = [[2, 0], [0, 2], [2, -2], [-2, 2]]
    images = np.stack([ndimage.shift(reference, s, order=0, mode="constant") for s in shifts])
    model = CrossCorr().fit(images, reference=reference)
    np.testing.assert_array_equal(model.toarray(), shifts)
    registered = model.transform(images)
    np.testing.assert_array_equal(registered[:, 2:-2, 2:-2], np.stack([reference[2:-2, 2:-2]] * 4))
    np.testing.assert_array_equal(
        registered, CrossCorr().fit_and_transform(images, reference=reference)
    )


def test_displacement_apply_and_subpixel_option():
    reference = ndimage.gaussian_filter(np.random.default_rng(2).standard_normal((48, 48)), 3)
    image = ndimage.shift(reference, (1.5, -2.25), mode="wrap")
    model = CrossCorr(upsample_factor=20, windowed=True).fit(image[None], reference=reference)
    np.testing.assert_allclose(model.toarray(), [[1.5, -2.25]], atol=0.05)
    assert (
        Displacement([-4, -2])
        .apply(np.roll(reference, (-4, -2), axis=(0, 1)), mode="wrap")
        .tolist()
        == reference.tolist()
    )


def test_dataarray_in_dataarray_out_and_to_dataarray():
    reference = np.arange(25.0).reshape(5, 5)
    images = xr.DataArray(
        np.stack([np.roll(reference, (1, 2), axis=(0, 1))] * 3),
        dims=("time", "y", "x"),
        coords={"time": [0.0, 0.1, 0.2]},
        name="movie",
    )
    model = CrossCorr().fit(images, reference=reference)
    out = model.transform(images)
    assert isinstance(out, xr.DataArray) and out.name == "movie"
    shifts = model.to_dataarray()
    assert shifts.dims == ("time", "axis") and shifts.name == "displacement"
    np.testing.assert_array_equal(shifts.time, images.time)
    np.testing.assert_array_equal(shifts.values, [[1, 2]] * 3)


def test_windowed_model_equals_the_accessor():
    reference = ndimage.gaussian_filter(np.random.default_rng(3).standard_normal((64, 64)), 3)
    images = xr.DataArray(
        np.stack([ndimage.shift(reference, s, mode="nearest") for s in ([1.2, -3], [0, 2.5])]),
        dims=("time", "y", "x"),
        coords={"time": [0.0, 0.1]},
    )
    model = CrossCorr(upsample_factor=10, windowed=True).fit(images, reference=reference)
    xr.testing.assert_identical(model.to_dataarray(), images.reg.estimate(reference))


def test_bad_input():
    reference = np.zeros((5, 5))
    with pytest.raises(XregError, match="shape"):
        CrossCorr().fit(np.ones((2, 5, 5)), reference=np.ones((4, 4)))
    with pytest.raises(XregError, match=r"np.stack"):
        CrossCorr().fit(np.ones((5, 5)), reference=reference)
    with pytest.raises(XregError, match=r"\(n, y, x\)"):
        CrossCorr().fit(np.ones((2, 2, 2, 2, 2)), reference=reference)
    with pytest.raises(XregError, match="no frames"):
        CrossCorr().fit(np.ones((0, 5, 5)), reference=reference)
    with pytest.raises(XregError, match="Per-plane"):
        CrossCorr(axis=0).fit(np.ones((2, 5, 5)), reference=np.ones((5, 5)))
    model = CrossCorr().fit(
        np.stack([np.arange(25.0).reshape(5, 5)] * 2), reference=np.arange(25.0).reshape(5, 5)
    )
    with pytest.raises(XregError, match="2 transformations but 3"):
        model.transform(np.ones((3, 5, 5)))
