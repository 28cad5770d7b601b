"""``estimate(...).plot()`` draws lines; the displacement array stays a plain DataArray;
``xreg.plot.summary`` draws the classic checks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from conftest import raise_if_dask_computes  # noqa: E402

import xreg  # noqa: E402
from xreg import io  # noqa: E402
from xreg import plot as xplot  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def moved_movie(backend, n_frames=30, seed=0):
    still = xreg.datasets.mouse(n_frames=n_frames, seed=seed)
    moved, truth = xreg.datasets.add_motion(still, max_drift=3, seed=seed)
    if backend == "dask":
        moved = moved.chunk(time=10)
    return moved, truth, still.mean("time")


def test_plot_draws_one_line_per_axis_over_time(backend):
    moved, truth, reference = moved_movie(backend)
    shifts = moved.reg.estimate(reference)
    assert isinstance(shifts, xr.DataArray)
    plt.figure()
    shifts.plot()
    ax = plt.gca()
    lines = ax.get_lines()
    assert len(lines) == shifts.sizes["axis"] == 2
    for line, name in zip(lines, ["y", "x"], strict=True):
        np.testing.assert_array_equal(line.get_xdata(), moved.time.values)
        np.testing.assert_array_equal(line.get_ydata(), shifts.sel(axis=name).values)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["y", "x"]
    assert ax.get_ylabel() == "displacement (pixel)"
    assert ax.get_xlabel() == "time [s]"


def test_plot_marks_bad_frames_and_draws_truth():
    moved, truth, reference = moved_movie("numpy")
    moved = moved.copy()
    moved[7] = 0  # a blanked frame
    shifts = moved.reg.estimate(reference)
    assert shifts.bad_frame.values.tolist() == [i == 7 for i in range(30)]
    fig, ax = plt.subplots()
    lines = xplot.displacement(shifts, truth=truth, ax=ax)
    assert len(lines) == 2
    assert len(ax.get_lines()) == 4  # estimates and truth
    (crosses,) = ax.collections
    np.testing.assert_array_equal(crosses.get_offsets()[:, 0], [moved.time[7]] * 2)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["y, true", "x, true", "y", "x", "bad frame (1)"]


def test_plot_with_datetime_time_axis():
    moved, truth, reference = moved_movie("numpy")
    times = np.datetime64("2026-01-01T09:00") + np.arange(30) * np.timedelta64(66, "ms")
    shifts = moved.assign_coords(time=times).reg.estimate(reference)
    plt.figure()
    lines = shifts.plot()
    np.testing.assert_array_equal(lines[0].get_xdata(), times)
    plt.gcf().canvas.draw()  # the date axis formats without error


def test_piecewise_plot_draws_block_magnitudes(backend):
    still = xreg.datasets.mouse(n_frames=12, shape=(96, 96), seed=1)
    warped, _ = xreg.datasets.add_nonrigid_motion(still, max_shift=3, seed=1)
    if backend == "dask":
        warped = warped.chunk(time=4)
    shifts = warped.reg.estimate(still.mean("time"), method="piecewise", block_size=48)
    n_blocks = shifts.sizes["block_y"] * shifts.sizes["block_x"]
    plt.figure()
    lines = shifts.plot()
    assert len(lines) == len(plt.gca().get_lines()) == n_blocks + 1
    magnitude = np.sqrt((shifts**2).sum("axis")).isel(block_y=0, block_x=0)
    np.testing.assert_array_equal(lines[0].get_xdata(), warped.time.values)
    np.testing.assert_allclose(lines[0].get_ydata(), magnitude.values)
    rigid = np.sqrt((shifts.rigid**2).sum("axis"))
    np.testing.assert_allclose(lines[-1].get_ydata(), rigid.values)


def test_displacement_array_works_as_a_dataarray(tmp_path):
    moved, truth, reference = moved_movie("numpy")
    shifts = moved.reg.estimate(reference)
    # Arithmetic, selection and concatenation keep values and labels.
    error = shifts - truth
    np.testing.assert_array_equal(error.values, shifts.values - truth.values)
    assert float(shifts.sel(axis="y").isel(time=3)) == shifts.values[3, 0]
    both = xr.concat([shifts, shifts.isel(time=slice(5))], dim="time")
    assert both.sizes["time"] == 35 and both.bad_frame.dtype == bool
    assert isinstance(both, xr.DataArray)
    # Written and read back like any DataArray.
    shifts.to_netcdf(tmp_path / "s.nc")
    shifts.to_zarr(tmp_path / "s.zarr", zarr_format=2, consolidated=False)
    for back in (
        xr.open_dataarray(tmp_path / "s.nc"),
        xr.open_dataarray(tmp_path / "s.zarr", engine="zarr", consolidated=False),
    ):
        xr.testing.assert_identical(back.load(), xr.DataArray(shifts))
    # xarray's explicit plots are untouched; layout keywords keep xarray's meaning.
    plt.figure()
    assert len(shifts.plot.line(x="time")) == 2
    plt.figure()
    shifts.plot.imshow()
    grid = shifts.plot(col="axis")
    assert len(grid.axs.ravel()) == 2
    # Other shapes fall back to xarray's default plot (a 1-D line here).
    plt.figure()
    (line,) = shifts.sel(axis="x").plot()
    np.testing.assert_array_equal(line.get_ydata(), shifts.sel(axis="x").values)
    # A plain array read from a file gets the lines back.
    plt.figure()
    plain = xr.open_dataarray(tmp_path / "s.nc").load()
    assert len(xplot.DisplacementArray(plain).plot()) == 2


def test_summary_has_the_classic_panels_and_reads_only_what_it_shows():
    moved, truth, reference = moved_movie("dask", n_frames=40)
    shifts = moved.reg.estimate(reference)
    fixed = moved.reg.apply(shifts)
    with raise_if_dask_computes(max_computes=1):  # the means and the frames, one pass
        fig = xplot.summary(moved, fixed, shifts, truth=truth)
    panels = {ax.get_label(): ax for ax in fig.axes}
    names = ["mean", "frame"]
    for name in names:
        for when in ("before", "after", "difference"):
            assert len(panels[f"{name} {when}"].get_images()) == 1
    frame = int(np.argmax(np.hypot(*shifts.values.T)))
    before = panels["frame before"].get_images()[0].get_array()
    np.testing.assert_allclose(before, moved.isel(time=frame).values)
    after = panels["frame after"].get_images()[0].get_array()
    difference = panels["frame difference"].get_images()[0].get_array()
    np.testing.assert_allclose(difference, after - before)
    mean_before = panels["mean before"].get_images()[0]
    mean_after = panels["mean after"].get_images()[0]
    assert mean_before.get_clim() == mean_after.get_clim()  # one colour scale
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 4
    assert len(panels["displacement"].get_lines()) == 5  # 2 estimates, 2 truths, frame marker
    (quality,) = panels["quality"].get_lines()
    np.testing.assert_array_equal(quality.get_ydata(), shifts.quality.values)
    for ax in fig.axes:  # units on every axis, colour bars included
        assert ax.get_ylabel() and (ax.get_label() == "<colorbar>" or ax.get_xlabel())


def test_summary_refuses_mismatched_inputs():
    moved, truth, reference = moved_movie("numpy")
    shifts = moved.reg.estimate(reference)
    with pytest.raises(xreg.XregError, match="registered"):
        xplot.summary(moved, moved.isel(time=slice(10)), shifts)
    with pytest.raises(xreg.XregError, match="shifts"):
        xplot.summary(moved, moved, shifts.isel(time=slice(10)))
    with pytest.raises(xreg.XregError, match="frame"):
        xplot.summary(moved, moved, shifts, frame=30)


def test_summary_and_metrics_on_a_store_with_labels_in_one_chunk(tmp_path):
    """xreg's own stores hold ``bad_frame`` in one chunk beside frames in many: xarray
    refuses such a DataArray's chunks unless its labels are rechunked where it enters."""
    still = xreg.datasets.mouse(n_frames=12, shape=(64, 64), seed=3)
    moved, _ = xreg.datasets.add_motion(still, max_drift=2, subpixel=True, seed=3)
    labelled = moved.chunk(time=4).assign_coords(stim=("time", np.arange(12) % 2))
    io.to_zarr(labelled.to_dataset(name="movie"), tmp_path / "session.zarr")
    movie = xr.open_zarr(tmp_path / "session.zarr")["movie"]
    with pytest.raises(ValueError, match="inconsistent chunks"):
        _ = movie.chunksizes  # the layout: the label in one chunk, the frames in three
    shifts = movie.reg.estimate(still.mean("time"))
    fixed = movie.reg.apply(shifts)
    scores = movie.reg.metrics(fixed)
    assert scores.crispness.sel(version="registered") > scores.crispness.sel(version="raw")
    np.testing.assert_array_equal(scores.stim, labelled.stim)
    fig = xplot.summary(movie, fixed, shifts)
    assert {"mean before", "mean after", "displacement"} <= {a.get_label() for a in fig.axes}
    plt.close(fig)


def test_summary_shows_the_frame_that_moved_most_among_good_ones():
    shifts = xr.DataArray(
        [[0.0, 0.0], [5.0, 5.0], [2.0, -1.0]],
        dims=("time", "axis"),
        coords={"bad_frame": ("time", [False, True, False])},
    )
    assert xplot._frame_of_largest_motion(shifts, "time") == 2  # frame 1 is noise
    every_frame_bad = shifts.assign_coords(bad_frame=("time", [True] * 3))
    assert xplot._frame_of_largest_motion(every_frame_bad, "time") == 1
