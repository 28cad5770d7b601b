"""Bidirectional scan phase: estimate and correction against movies built with a known offset.

Ground truth: a continuous scene (Gaussian cells of 1.5-4 px over a smooth
background, or scikit-image's camera photograph as a cubic spline) evaluated exactly
at each sample's position: frame t at ``(y - dy_t, x - dx_t)`` (the motion), odd lines
at ``x + offset`` (the scanner).  Nothing is interpolated from a sampled image.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import xarray as xr
from conftest import ChunkReads, as_movie, raise_if_dask_computes
from scipy import ndimage

import xreg  # noqa: F401  (registers the accessor)
from xreg import XregError
from xreg.core import scanphase

SHAPE = (80, 112)  # (lines, width): not square, so the axes cannot be confused
OFFSETS = [-3.0, -2.25, -0.6, 0.0, 0.35, 1.5, 2.8, 3.0]


def _cells(seed, n_cells=160, extent=(130, 160)):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-15, np.asarray(extent) - 15, (n_cells, 2))
    return centres, rng.uniform(1.5, 4.0, n_cells), rng.uniform(0.3, 1.0, n_cells)


def render(cells, ys, xs):
    """The scene at positions (ys, xs): cells plus a smooth, slanted background."""
    centres, sigma, amplitude = cells
    out = 0.2 + 0.1 * np.sin(0.05 * xs + 0.03 * ys) + 0.1 * np.cos(0.04 * ys - 0.02 * xs)
    for (cy, cx), s, a in zip(centres, sigma, amplitude, strict=True):
        out = out + a * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * s**2))
    return out


@functools.lru_cache
def _camera_spline():
    from skimage import data

    image = ndimage.gaussian_filter(data.camera().astype(np.float64) / 255, 1.0)
    return ndimage.spline_filter(image, order=3)


def sample(scene, ys, xs):
    if scene == "camera":
        coefficients = _camera_spline()
        return ndimage.map_coordinates(coefficients, [ys + 120, xs + 160], order=3, prefilter=False)
    return render(_cells(scene), ys, xs)


def resonant_movie(offset, motion, *, scene=0, shape=SHAPE, photons=None, seed=0):
    """Frames of ``scene`` moved by ``motion`` (n, 2), odd lines sampled at x + offset.

    ``offset`` is one number or one per frame.  With ``photons``, each frame is a
    Poisson draw with that many photons at intensity 1 (shot noise).
    """
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    odd = (np.arange(shape[0]) % 2 == 1)[:, None]
    offsets = np.broadcast_to(np.asarray(offset, dtype=np.float64), (len(motion),))
    frames = np.stack(
        [
            sample(scene, y - dy, x - dx + np.where(odd, phase, 0.0))
            for (dy, dx), phase in zip(motion, offsets, strict=True)
        ]
    )
    if photons is not None:
        frames = np.random.default_rng(seed).poisson(photons * np.maximum(frames, 0)) / photons
    return frames.astype(np.float32)


def motion(n, seed=0, size=3.0):
    return np.random.default_rng(seed).uniform(-size, size, (n, 2))


@functools.lru_cache
def noisy_movie(offset, scene=0):
    return resonant_movie(offset, motion(12, seed=1), scene=scene, photons=200, seed=2)


# --------------------------------------------------------------------------- estimate


@pytest.mark.parametrize("offset", OFFSETS)
def test_offset_recovered_within_005_px(offset, backend):
    movie = as_movie(noisy_movie(offset), backend, chunk=4)
    estimate = movie.reg.scan_phase()
    assert estimate.dims == () and estimate.name == "scan_phase"
    assert abs(float(estimate) - offset) < 0.05
    assert estimate.attrs["units"] == "pixel" and estimate.attrs["forward_lines"] == "even"
    assert (estimate.attrs["line_dim"], estimate.attrs["scan_dim"]) == ("y", "x")
    assert 0.8 < float(estimate.quality) <= 1


@pytest.mark.parametrize("offset", [-2.7, 0.4, 1.93])
def test_offset_recovered_on_a_photograph(offset, backend):
    movie = as_movie(noisy_movie(offset, scene="camera"), backend, chunk=4)
    assert abs(float(movie.reg.scan_phase()) - offset) < 0.05


def test_sign_and_exactness_without_noise():
    # Odd lines sampled at x + 2: the offset is +2; noise-free, the peak is exact.  The
    # quality stays below 1: a line is compared with the mean of its neighbours.
    frames = resonant_movie(2.0, motion(3))
    estimate = as_movie(frames, "numpy").reg.scan_phase()
    assert abs(float(estimate) - 2.0) < 0.01
    assert 0.95 < float(estimate.quality) < 1


def test_per_frame_and_window_follow_a_drift(backend):
    n = 40
    truth = np.linspace(-0.5, 0.5, n)  # the phase drifts with temperature
    frames = resonant_movie(truth, motion(n, seed=3), photons=400, seed=4)
    movie = as_movie(frames, backend, chunk=7)
    per_frame = movie.reg.scan_phase(per="frame")
    assert per_frame.dims == ("time",)
    np.testing.assert_array_equal(per_frame.time, movie.time)
    assert per_frame.attrs["per"] == "frame" and per_frame.attrs["window"] == 1
    assert np.sqrt(np.mean((per_frame.values - truth) ** 2)) < 0.1
    windowed = movie.reg.scan_phase(window=9)
    assert windowed.attrs["window"] == 9
    # Each frame's estimate pools the 9 frames centred on it (fewer at the ends).
    expected = [truth[max(0, i - 4) : i + 5].mean() for i in range(n)]
    np.testing.assert_allclose(windowed.values, expected, atol=0.05)


def test_per_movie_reads_only_the_sampled_chunks():
    frames = resonant_movie(1.2, motion(40, seed=5))
    counted = ChunkReads(frames, chunk=5)
    estimate = counted.movie.reg.scan_phase(n_frames=3)
    sampled = xreg.core.sample_indices(40, 3)
    assert set(counted.reads) == {5 * (i // 5) for i in sampled}
    assert all(count == 1 for count in counted.reads.values())
    assert estimate.attrs["n_frames"] == 3 and abs(float(estimate) - 1.2) < 0.05


@pytest.mark.parametrize("window", [None, 5])
def test_per_frame_reads_each_chunk_once(window):
    frames = resonant_movie(-0.8, motion(20, seed=5))
    counted = ChunkReads(frames, chunk=4)
    estimate = counted.movie.reg.scan_phase(per="frame", window=window)
    assert counted.reads == {start: 1 for start in range(0, 20, 4)}
    np.testing.assert_allclose(estimate.values, -0.8, atol=0.05)


def test_planes_and_channels_are_pooled_and_corrected_alike(backend):
    offset = 1.7
    frames = noisy_movie(offset)
    clean = resonant_movie(0.0, motion(12, seed=1))
    # (time, channel, y, x): the second channel is dimmer and offset the same way.
    stacked = np.stack([frames, 0.5 * frames], axis=1)
    movie = xr.DataArray(stacked, dims=("time", "channel", "y", "x"))
    movie = movie.chunk(time=4) if backend == "dask" else movie
    estimate = movie.reg.scan_phase()
    assert abs(float(estimate) - offset) < 0.05
    noise_free = np.stack([resonant_movie(offset, motion(12, seed=1))] * 2, axis=1)
    noise_free = xr.DataArray(noise_free * [[[1.0]], [[0.5]]], dims=movie.dims)
    fixed = noise_free.reg.correct_scan_phase(offset, order=3)
    inner = slice(8, -8)  # columns the odd lines could not sample, + the spline's boundary
    np.testing.assert_allclose(fixed[..., inner][:, 0], clean[..., inner], atol=2e-3)
    np.testing.assert_allclose(fixed[..., inner][:, 1], 0.5 * clean[..., inner], atol=1e-3)


# --------------------------------------------------------------------------- correct


@pytest.mark.parametrize("offset", [-2.6, 0.5, 3.0])
def test_corrected_frames_match_the_unmoved_ones(offset, backend):
    shifts = motion(6, seed=6)
    skewed = as_movie(resonant_movie(offset, shifts), backend, chunk=2)
    clean = resonant_movie(0.0, shifts)
    with raise_if_dask_computes():
        fixed = skewed.reg.correct_scan_phase(offset, order=3)
    assert (fixed.chunks is not None) == (backend == "dask")
    assert fixed.dims == skewed.dims and fixed.dtype == skewed.dtype
    assert fixed.attrs == skewed.attrs and fixed.name == skewed.name
    # Columns the odd lines could not sample, and the cubic spline's boundary effect.
    inner = slice(8, -8)
    np.testing.assert_allclose(fixed.values[..., inner], clean[..., inner], atol=2e-3)
    # Forward lines are left exactly as they are.
    np.testing.assert_array_equal(fixed.values[:, ::2], skewed.values[:, ::2])
    # Before the correction the odd lines were far off.
    assert np.abs(skewed.values[:, 1::2, inner] - clean[:, 1::2, inner]).max() > 0.05


def test_correction_keeps_the_dtype_and_takes_per_frame_offsets(backend):
    shifts = motion(5, seed=7)
    truth = np.array([0.5, -1.0, 2.0, np.nan, 0.0])  # NaN: that frame is left as it is
    frames = resonant_movie(np.nan_to_num(truth), shifts)
    counts = as_movie(np.round(frames * 1000).astype(np.uint16), backend, chunk=2)
    offsets = xr.DataArray(truth, dims="time", coords={"time": counts.time})
    fixed = counts.reg.correct_scan_phase(offsets, order=3)
    assert fixed.dtype == np.uint16
    clean = np.round(resonant_movie(0.0, shifts) * 1000)
    inner = slice(8, -8)
    for t in (0, 1, 2, 4):
        assert np.abs(fixed.values[t, :, inner] - clean[t, :, inner]).max() <= 3
    np.testing.assert_array_equal(fixed.values[3], counts.values[3])


def test_order_phase_first_then_motion(backend):
    """The documented order, phase then motion, undoes both; the other order cannot."""
    offset, shifts = 1.8, motion(6, seed=8) + [0.5, 0]  # fractional motion along y
    skewed = as_movie(resonant_movie(offset, shifts), backend, chunk=3)
    unmoved = resonant_movie(0.0, np.zeros((6, 2)))
    truth = xr.DataArray(shifts, dims=("time", "axis"), coords={"axis": ["y", "x"]})
    inner = (slice(None), slice(6, -6), slice(8, -8))
    right = skewed.reg.correct_scan_phase(offset, order=3).reg.apply(truth, order=3)
    wrong = skewed.reg.apply(truth, order=3).reg.correct_scan_phase(offset, order=3)
    right_error = np.abs(right.values - unmoved)[inner].max()
    wrong_error = np.abs(wrong.values - unmoved)[inner].max()
    assert right_error < 0.01
    assert wrong_error > 5 * right_error


def test_motion_after_correction_is_as_accurate_as_without_the_artefact(backend):
    n, offset = 12, 2.3
    shifts = motion(n, seed=9)
    reference = resonant_movie(0.0, np.zeros((1, 2)))[0]
    with_artefact = as_movie(resonant_movie(offset, shifts, photons=200, seed=10), backend, 4)
    without = as_movie(resonant_movie(0.0, shifts, photons=200, seed=10), backend, 4)

    def rms(movie):
        estimate = movie.reg.estimate(reference, upsample_factor=100)
        return np.sqrt(np.mean((estimate.values - shifts) ** 2))

    corrected = with_artefact.reg.correct_scan_phase(with_artefact.reg.scan_phase(), order=3)
    baseline = rms(without)
    assert rms(corrected) < 1.25 * baseline + 0.005
    assert rms(with_artefact) > 3 * baseline  # uncorrected, the comb biases the estimate


# --------------------------------------------------------------------------- bad input


def test_odd_number_of_lines_is_handled(backend):
    # The last line is a forward line without a partner: estimate and correct still hold.
    shifts = motion(8, seed=11)
    frames = resonant_movie(-1.4, shifts, shape=(63, 96), photons=300, seed=12)
    movie = as_movie(frames, backend, chunk=4)
    assert abs(float(movie.reg.scan_phase()) + 1.4) < 0.05
    fixed = movie.reg.correct_scan_phase(-1.4)
    np.testing.assert_array_equal(fixed.values[:, -1], frames[:, -1])
    assert fixed.sizes == movie.sizes


def test_single_line_frames_are_refused():
    movie = xr.DataArray(np.ones((4, 1, 64), np.float32), dims=("time", "y", "x"))
    with pytest.raises(XregError, match="1 line"):
        movie.reg.scan_phase()
    with pytest.raises(XregError, match="1 line"):
        movie.reg.correct_scan_phase(1.0)


def test_offsets_beyond_a_quarter_of_the_width_are_refused():
    movie = as_movie(resonant_movie(0.0, motion(2)), "numpy")
    with pytest.raises(XregError, match="quarter"):
        movie.reg.correct_scan_phase(SHAPE[1] / 4 + 0.5)
    per_frame = xr.DataArray([0.0, -40.0], dims="time", coords={"time": movie.time})
    with pytest.raises(XregError, match="quarter"):
        movie.reg.correct_scan_phase(per_frame)
    with pytest.raises(XregError, match="max_offset"):
        movie.reg.scan_phase(max_offset=SHAPE[1] // 4 + 1)
    with pytest.raises(XregError, match="finite"):
        movie.reg.correct_scan_phase(np.nan)


def test_nan_lines_are_left_out(backend):
    frames = noisy_movie(0.9).copy()
    frames[:, 10] = np.nan  # a dropped line in every frame
    frames[3, 20:30] = np.nan
    frames[5] = np.nan  # a dropped frame
    movie = as_movie(frames, backend, chunk=4)
    assert abs(float(movie.reg.scan_phase()) - 0.9) < 0.05
    per_frame = movie.reg.scan_phase(per="frame")
    assert np.isnan(per_frame.values[5]) and per_frame.quality.values[5] == 0
    assert np.all(np.abs(np.delete(per_frame.values, 5) - 0.9) < 0.2)
    fixed = movie.reg.correct_scan_phase(per_frame).values
    # NaN stays where it was: lines are moved along x only.
    np.testing.assert_array_equal(np.isnan(fixed).all(axis=-1), np.isnan(frames).all(axis=-1))
    blank = as_movie(np.full((3, 16, 32), np.nan, np.float32), backend)
    with pytest.raises(XregError, match="No scan phase"):
        blank.reg.scan_phase()


def test_options_are_checked():
    movie = as_movie(resonant_movie(0.0, motion(2)), "numpy")
    with pytest.raises(XregError, match="per"):
        movie.reg.scan_phase(per="line")
    with pytest.raises(XregError, match="per='frame'"):
        movie.reg.scan_phase(per="movie", window=5)
    with pytest.raises(XregError, match="window"):
        movie.reg.scan_phase(window=0)
    with pytest.raises(XregError, match="dims"):
        movie.reg.scan_phase(dims=("x", "time"))
    with pytest.raises(XregError, match="chunk"):
        movie.chunk(x=16).reg.correct_scan_phase(1.0)
    with pytest.raises(XregError, match="one per frame"):
        movie.reg.correct_scan_phase([1.0, 2.0, 3.0])


def test_dims_other_than_y_x(backend):
    # (time, col, row) with the lines along `row`: say so with dims=.
    frames = noisy_movie(-2.25)
    movie = xr.DataArray(frames.transpose(0, 2, 1), dims=("time", "col", "row"))
    movie = movie.chunk(time=4) if backend == "dask" else movie
    estimate = movie.reg.scan_phase(dims=("row", "col"))
    assert abs(float(estimate) + 2.25) < 0.05
    fixed = movie.reg.correct_scan_phase(estimate, order=3)  # dims taken from the estimate
    expected = as_movie(frames, "numpy").reg.correct_scan_phase(-2.25, order=3)
    np.testing.assert_allclose(fixed.values, expected.values.transpose(0, 2, 1), atol=0.02)


def test_core_terms_add_across_frames():
    frames = noisy_movie(1.1)
    rows = scanphase.phase_terms(frames, max_offset=8)
    together = scanphase.phase_terms(frames.reshape(1, *frames.shape), max_offset=8)
    np.testing.assert_allclose(rows.sum(axis=0), together[0], rtol=1e-9, atol=1e-6)


# --------------------------------------------------------------------------- command line


def test_command_line_scan_phase_is_applied_first_and_recorded(tmp_path, capsys):
    import json

    from xreg import io
    from xreg.cli import main

    shifts = motion(24, seed=13, size=2.0)
    movie = as_movie(resonant_movie(1.4, shifts, photons=300, seed=14), "dask", chunk=8)
    source = tmp_path / "in.zarr"
    io.to_zarr(movie.to_dataset(name="movie"), source, mode="w")
    unmoved = resonant_movie(0.0, np.zeros((1, 2)))[0]
    np.save(tmp_path / "ref.npy", unmoved)

    def register(output, choice):
        args = ["register", source, tmp_path / output, "--reference", tmp_path / "ref.npy"]
        return main([str(a) for a in args] + ["--quiet", "--scan-phase", choice])

    assert register("auto.zarr", "auto") == 0
    result = xr.open_zarr(tmp_path / "auto.zarr")
    offset = result["movie"].attrs["xreg_scan_phase"]
    assert abs(offset - 1.4) < 0.05
    # The library's order: phase first, then motion, estimated on the corrected movie.
    corrected = movie.reg.correct_scan_phase(movie.reg.scan_phase())
    expected = corrected.reg.estimate(unmoved)
    np.testing.assert_allclose(result["displacement"].values, expected.values, atol=1e-9)
    assert np.sqrt(np.mean((expected.values - shifts) ** 2)) < 0.05
    np.testing.assert_allclose(
        result["movie"].values, corrected.reg.apply(expected).values, rtol=1e-6, atol=1e-6
    )
    table = tmp_path / "shifts.nc"
    args = ["estimate", source, table, "--reference", tmp_path / "ref.npy", "--quiet"]
    assert main([str(a) for a in args] + ["--scan-phase", "auto"]) == 0
    np.testing.assert_allclose(io.read_displacement(table).values, expected.values, atol=1e-9)
    record = json.loads((tmp_path / "auto.zarr" / "xreg-run.json").read_text())
    assert record["settings"]["scan_phase"] == "auto"
    # A run started with another choice is not resumed.
    assert register("auto.zarr", "none") == 2
    assert "settings" in capsys.readouterr().err
    # A value is used as given.
    assert register("value.zarr", "1.4") == 0
    value = xr.open_zarr(tmp_path / "value.zarr")["movie"]
    assert value.attrs["xreg_scan_phase"] == 1.4
    # Too large: refused before anything is written; not a number: a usage error.
    assert register("far.zarr", "40") == 2
    assert "quarter" in capsys.readouterr().err and not (tmp_path / "far.zarr").exists()
    with pytest.raises(SystemExit) as exit_info:
        register("word.zarr", "left")
    assert exit_info.value.code == 2


def test_command_line_scan_phase_with_channels(tmp_path):
    """Measured on the channel --channel picks, undone on every channel, then motion."""
    from xreg import io
    from xreg.cli import main

    shifts = motion(16, seed=5, size=2.0)
    channels = [resonant_movie(1.4, shifts, scene=s, photons=300, seed=6 + s) for s in (0, 1)]
    movie = xr.DataArray(
        np.stack(channels, axis=1), dims=("time", "channel", "y", "x"), name="movie"
    ).assign_coords(channel=["red", "green"])
    source = tmp_path / "in.zarr"
    io.to_zarr(movie.chunk(time=8).to_dataset(), source, mode="w")
    unmoved = resonant_movie(0.0, np.zeros((1, 2)), scene=1)[0]
    np.save(tmp_path / "ref.npy", unmoved)
    args = ["register", source, tmp_path / "out.zarr", "--reference", tmp_path / "ref.npy"]
    options = ["--channel", "green", "--scan-phase", "auto", "--quiet"]
    assert main([str(a) for a in args + options]) == 0
    result = xr.open_zarr(tmp_path / "out.zarr")
    green = movie.sel(channel="green")
    offset = green.reg.scan_phase()
    assert result["movie"].attrs["xreg_scan_phase"] == float(offset)
    assert abs(float(offset) - 1.4) < 0.05
    corrected = movie.reg.correct_scan_phase(offset)
    expected = corrected.sel(channel="green").reg.estimate(unmoved)
    np.testing.assert_allclose(result["displacement"].values, expected.values, atol=1e-9)
    assert np.sqrt(np.mean((expected.values - shifts) ** 2)) < 0.05
    np.testing.assert_allclose(
        result["movie"].values, corrected.reg.apply(expected).values, rtol=1e-6, atol=1e-6
    )
