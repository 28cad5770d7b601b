"""NoRMCorre's metrics: crispness of the mean image and each frame's correlation with it."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import as_movie, raise_if_dask_computes

import xreg
from xreg.core.metrics import crispness


def test_crispness_by_hand():
    # A ramp a*y + b*x: the gradient is (a, b) at every pixel, edges included.
    y, x = np.indices((5, 7))
    assert crispness(3 * y - 2 * x) == pytest.approx(np.sqrt(35 * (9 + 4)))
    # One bright pixel: its four neighbours see central differences of +-1/2.
    spot = np.zeros((5, 5))
    spot[2, 2] = 1
    assert crispness(spot) == pytest.approx(1.0)


def orthogonal_patterns():
    """u (rows +-1) and v (columns +-1) on 4 x 4: zero mean, norm 4, orthogonal."""
    u = np.repeat([[1.0], [-1.0], [1.0], [-1.0]], 4, axis=1)
    return u, u.T.copy()


def test_metrics_by_hand(backend):
    u, v = orthogonal_patterns()
    # Mean = 5u/3 + 4; frame correlations with it: 1/sqrt(2), 1/sqrt(2), 1.
    interior = np.stack([u + v + 1, u - v + 2, 3 * u + 9])
    frames = np.full((3, 8, 8), 50.0)
    frames[:, 2:6, 2:6] = interior
    frames[:, :2] = np.random.default_rng(0).uniform(0, 100, (3, 2, 8))  # left out: border
    movie = as_movie(frames, backend, chunk=2)
    registered = as_movie(np.stack([interior[2]] * 3).repeat(2, 1).repeat(2, 2), backend)
    with raise_if_dask_computes(max_computes=2):
        scores = movie.reg.metrics(registered, border=2)
    assert scores.version.values.tolist() == ["raw", "registered"]
    np.testing.assert_allclose(
        scores.correlation.sel(version="raw"), [1 / np.sqrt(2), 1 / np.sqrt(2), 1]
    )
    np.testing.assert_allclose(scores.correlation.sel(version="registered"), [1, 1, 1])
    np.testing.assert_allclose(scores.mean_image.sel(version="raw"), 5 * u / 3 + 4)
    # Mean 5u/3: the row pattern's central differences, by hand.
    # 5u/3 down a column: 5/3 * [1, -1, 1, -1]; one-sided differences at the ends (-2),
    # central ones inside (0); nothing along x.
    dy = np.array([[-2], [0], [0], [-2]]) * np.ones((1, 4)) * 5 / 3
    assert float(scores.crispness.sel(version="raw")) == pytest.approx(np.sqrt((dy**2).sum()))
    assert scores.correlation.time.values.tolist() == movie.time.values.tolist()
    assert scores.attrs["border"] == [2, 2]


def test_metrics_default_border_and_errors():
    movie = xreg.datasets.mouse(n_frames=5)
    scores = movie.reg.metrics()
    assert scores.sizes == {"version": 1, "time": 5, "y": 48, "x": 48}  # 8 px left out
    for border in (32, -1, 2.5, (1, 2, 3)):
        with pytest.raises(xreg.XregError, match="border"):
            movie.reg.metrics(border=border)
    with pytest.raises(xreg.XregError, match="dims and sizes"):
        movie.reg.metrics(movie.isel(time=slice(3)))
    with pytest.raises(xreg.XregError, match="named by strings"):
        movie.reg.metrics({"raw": movie})


def test_registration_raises_crispness_and_correlation():
    # The walkthrough's movie and drift.
    still = xreg.datasets.mouse(n_frames=100)
    moved, truth = xreg.datasets.add_motion(still, max_drift=4, seed=0)
    fixed = moved.reg.apply(moved.reg.estimate(still.mean("time")))
    scores = moved.reg.metrics({"registered": fixed, "unmoved": still})
    raw, registered, unmoved = (scores.sel(version=v) for v in ["raw", "registered", "unmoved"])
    # Far above the moving movie's, close to the movie that never moved.
    assert registered.crispness > 1.3 * raw.crispness
    assert registered.crispness > 0.95 * unmoved.crispness
    assert registered.correlation.mean() > raw.correlation.mean() + 0.1
    assert registered.correlation.mean() > unmoved.correlation.mean() - 0.02
    assert (registered.correlation > raw.correlation).mean() > 0.9


def test_piecewise_raises_them_further_on_nonrigid_motion():
    # The walkthrough's non-rigid movie: piecewise beats rigid, which beats nothing.
    still = xreg.datasets.mouse(n_frames=40, shape=(192, 192), seed=2)
    warped, _ = xreg.datasets.add_nonrigid_motion(still, max_shift=4, seed=2)
    target = still.mean("time")
    rigid = warped.reg.apply(warped.reg.estimate(target))
    piecewise = warped.reg.apply(warped.reg.estimate(target, method="piecewise", block_size=64))
    scores = warped.reg.metrics({"rigid": rigid, "piecewise": piecewise})
    assert scores.version.values.tolist() == ["raw", "rigid", "piecewise"]
    crisp = scores.crispness.values
    assert crisp[0] < crisp[1] < crisp[2]
    correlation = scores.correlation.mean("time").values
    assert correlation[0] < correlation[1] < correlation[2]
    assert isinstance(scores, xr.Dataset)
