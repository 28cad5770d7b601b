"""Real data layouts: channels, Datasets and labelled stores (issue 15)."""

import sys

import dask
import numpy as np
import pytest
import xarray as xr
from conftest import ChunkReads, fourier_moved, raise_if_dask_computes, smooth_image

from xreg import XregError, io, pipeline

GREEN = smooth_image((80, 72), seed=3) * 1000  # activity channel
RED = smooth_image((80, 72), sigma=2.5, seed=4) * 500  # structural channel
TRUTH = np.random.default_rng(7).uniform(-4, 4, (12, 2))
INTERIOR = (slice(None), slice(8, -8), slice(8, -8))


def two_channel_movie(backend="numpy", chunk=4, images=(RED, GREEN)) -> xr.DataArray:
    """(time, channel, y, x): both channels moved by the same known displacements."""
    frames = np.stack([fourier_moved(image, TRUTH) for image in images], axis=1)
    movie = xr.DataArray(
        frames.astype(np.float32),
        dims=("time", "channel", "y", "x"),
        coords={
            "time": np.arange(len(TRUTH)) * 0.5,
            "channel": ["red", "green"],
            "trial": ("time", np.repeat([1, 2, 3], 4)),
        },
        name="movie",
        attrs={"units": "counts"},
    )
    return movie.chunk(time=chunk) if backend == "dask" else movie


def assert_matches_unmoved(fixed: xr.DataArray, channel: str, still=None) -> None:
    """The registered channel equals its unmoved image away from the border."""
    still = {"red": RED, "green": GREEN}[channel] if still is None else still
    error = np.abs(fixed.sel(channel=channel).values[INTERIOR] - still[INTERIOR[1:]]).max()
    moved = np.abs(fourier_moved(still, TRUTH)[INTERIOR] - still[INTERIOR[1:]]).max()
    assert error < 0.02 * np.abs(still).mean() < moved


def test_register_on_one_channel_apply_to_all(backend):
    movie = two_channel_movie(backend)
    shifts = movie.sel(channel="red").reg.estimate(RED, upsample_factor=20)
    np.testing.assert_allclose(shifts.values, TRUTH, atol=0.05)
    with raise_if_dask_computes():
        fixed = movie.reg.apply(shifts, order=3)
    assert fixed.dims == movie.dims and (fixed.chunks is None) == (backend == "numpy")
    xr.testing.assert_identical(fixed.coords.to_dataset(), movie.coords.to_dataset())
    assert_matches_unmoved(fixed, "red")
    assert_matches_unmoved(fixed, "green")


def test_channel_broadcast_in_any_dim_order_and_chunking():
    movie = two_channel_movie()
    shifts = movie.sel(channel="red").reg.estimate(RED, upsample_factor=20)
    expected = movie.reg.apply(shifts)
    shuffled = movie.transpose("channel", "y", "time", "x").chunk(time=5, channel=1)
    fixed = shuffled.reg.apply(shifts)
    assert fixed.dims == shuffled.dims
    xr.testing.assert_allclose(fixed.transpose(*movie.dims).compute(), expected)


def test_estimate_on_a_movie_with_channels_shows_the_fix():
    movie = two_channel_movie()
    with pytest.raises(XregError, match=r"movie\.sel\(channel=\.\.\.\)\.reg\.estimate"):
        movie.reg.estimate(RED)
    with pytest.raises(XregError, match=r"movie\.sel\(channel=\.\.\.\)"):
        movie.reg.reference()
    # A dim whose name does not say it is a channel: spatial_dims says so.
    cameras = movie.rename(channel="view")
    with pytest.raises(XregError, match=r"sel\(view=\.\.\.\)"):
        cameras.reg.estimate(RED, spatial_dims=("y", "x"))
    with pytest.raises(XregError, match="spatial_dims"):
        cameras.reg.estimate(RED, spatial_dims=("y", "q"))
    with pytest.raises(XregError, match="tuple of dim names"):
        cameras.reg.apply(np.zeros((12, 2)), spatial_dims="yx")
    shifts = cameras.sel(view="red").reg.estimate(RED, spatial_dims=("y", "x"))
    with pytest.raises(XregError, match="spatial_dims"):
        cameras.reg.apply(shifts.values)  # numpy shifts, and `view` looks spatial
    fixed = cameras.reg.apply(shifts.values, spatial_dims=("y", "x"))
    xr.testing.assert_identical(fixed, cameras.reg.apply(shifts))


def test_register_on_one_channel_in_one_pass(backend, tmp_path):
    """`register(channel=...)`: estimated on that channel, every channel moved, in the
    task that reads the chunk; the same as estimate on the channel, then apply."""
    movie = two_channel_movie(backend)
    expected = movie.sel(channel="red").reg.estimate(RED, upsample_factor=20)
    expected = expected.assign_attrs(channel="red")
    with raise_if_dask_computes():
        fixed, shifts = movie.reg.register(RED, channel="red", upsample_factor=20, order=3)
    xr.testing.assert_identical(shifts.compute(), expected)
    xr.testing.assert_identical(fixed.compute(), movie.reg.apply(expected, order=3).compute())
    assert_matches_unmoved(fixed, "green")
    # The channel dim anywhere, chunked per channel; chosen by position (text labels).
    moved = movie.transpose("time", "y", "channel", "x")
    moved = moved.chunk(time=4, channel=1) if backend == "dask" else moved
    fixed, _ = moved.reg.register(RED, channel=0, upsample_factor=20, order=3)
    xr.testing.assert_identical(fixed.compute(), moved.reg.apply(expected, order=3).compute())
    # The resumable run, likewise (the channel's axis kept in the store).
    written = pipeline.run(
        moved.chunk(time=4),
        str(tmp_path / "out.zarr"),
        reference=lambda: xr.DataArray(RED, dims=("y", "x")),
        settings={},
        estimate_options={"upsample_factor": 20},
        progress=None,
        channel="red",
    )
    assert written.movie.dims == moved.dims
    np.testing.assert_allclose(written.movie.values, moved.reg.apply(expected).values, rtol=1e-6)
    np.testing.assert_array_equal(written.displacement.values, expected.values)
    with pytest.raises(XregError, match=r"channel='red'"):
        movie.reg.register(RED)


def test_register_on_one_channel_reads_each_chunk_once():
    frames = two_channel_movie().values
    counted = ChunkReads(frames, chunk=4)
    movie = counted.movie.rename(z="channel")  # (time, channel, y, x)
    with raise_if_dask_computes():
        fixed, shifts = movie.reg.register(GREEN, channel=1)
    dask.compute(fixed, shifts)
    assert sorted(counted.reads) == [0, 4, 8] and set(counted.reads.values()) == {1}
    np.testing.assert_allclose(shifts.values, TRUTH, atol=0.05)


def test_dataset_estimate_on_one_variable_apply_to_all(backend):
    movie = two_channel_movie(backend)
    ds = xr.Dataset(
        {
            "red": movie.sel(channel="red", drop=True),
            "green": movie.sel(channel="green", drop=True),
            "both": movie,
            "speed": ("time", np.linspace(0, 1, len(TRUTH))),
            "mask": (("y", "x"), np.ones(RED.shape, bool)),
        },
        attrs={"session": "m12"},
    )
    shifts = ds.reg.estimate(RED, var="red", upsample_factor=20)
    xr.testing.assert_identical(shifts, ds.red.reg.estimate(RED, upsample_factor=20))
    with raise_if_dask_computes():
        fixed = ds.reg.apply(shifts, order=3)
    assert list(fixed.data_vars) == list(ds.data_vars) and fixed.attrs == ds.attrs
    xr.testing.assert_identical(fixed.speed, ds.speed)
    xr.testing.assert_identical(fixed.mask, ds.mask)
    for name in ("red", "green", "both"):
        assert (fixed[name].chunks is None) == (backend == "numpy")
        xr.testing.assert_identical(fixed[name], ds[name].reg.apply(shifts, order=3))
    assert_matches_unmoved(fixed.both, "green")
    with pytest.raises(XregError, match="var="):
        ds.reg.estimate(RED)  # three movies: which one?
    with pytest.raises(XregError, match="no variable 'blue'"):
        ds.reg.estimate(RED, var="blue")
    with pytest.raises(XregError, match="No variable"):
        ds[["speed"]].reg.apply(shifts)


def test_displacements_in_physical_units(backend):
    movie = two_channel_movie(backend).sel(channel="red")
    um = movie.assign_coords(
        y=("y", 10 + 0.5 * np.arange(80), {"units": "µm"}),
        x=("x", -0.25 * np.arange(72), {"units": "µm"}),  # a decreasing axis: signed step
    )
    shifts = um.reg.estimate(RED, upsample_factor=20)
    np.testing.assert_array_equal(shifts.pixel_size, [0.5, -0.25])
    physical = shifts.reg.physical()
    assert physical.attrs["units"] == "µm" and physical.dims == shifts.dims
    np.testing.assert_allclose(physical.values, TRUTH * [0.5, -0.25], atol=0.05 * 0.5)
    uneven = movie.assign_coords(y=np.r_[0, np.cumsum(np.linspace(1, 2, 79))], x=np.arange(72.0))
    assert "pixel_size" not in uneven.reg.estimate(RED).coords
    with pytest.raises(XregError, match="pixel_size"):
        uneven.reg.estimate(RED).reg.physical()
    assert "pixel_size" not in movie.reg.estimate(RED).coords  # no spatial coords at all


# --------------------------------------------------------------------------- files


def counts(movie: xr.DataArray) -> np.ndarray:
    """The movie as uint16 counts, as microscopes save them."""
    return np.clip(np.round(movie.values), 0, 65535).astype(np.uint16)


def assert_registers_on_one_channel(movie: xr.DataArray, channel) -> None:
    """Read from a file: register on ``channel``, apply to all; both match the truth."""
    assert movie.dims == ("time", "channel", "y", "x")
    shifts = movie.sel(channel=channel).reg.estimate(RED, upsample_factor=20)
    np.testing.assert_allclose(shifts.values, TRUTH, atol=0.05)
    fixed = movie.reg.apply(shifts, order=3).astype(np.float64)
    for index, name in enumerate(("red", "green")):
        assert_matches_unmoved(fixed.isel(channel=index).expand_dims(channel=[name]), name)


def test_imagej_hyperstack_and_ome_tiff_with_channels(tmp_path):
    import tifffile

    data = counts(two_channel_movie())  # (T, C, Y, X)
    tifffile.imwrite(
        tmp_path / "hyperstack.tif", data[:, None], imagej=True, metadata={"axes": "TZCYX"}
    )
    tifffile.imwrite(tmp_path / "movie.ome.tif", data, metadata={"axes": "TCYX"})
    for name in ("hyperstack.tif", "movie.ome.tif"):
        movie = io.open_movie(tmp_path / name)
        np.testing.assert_array_equal(movie.values, data)
        assert_registers_on_one_channel(movie, 0)


def test_scanimage_interleaved_channels(tmp_path):
    import tifffile

    data = counts(two_channel_movie())
    pages = data.reshape((-1,) + data.shape[2:])  # frame 0 red, frame 0 green, frame 1 red, ...
    # ScanImage 3.x keeps its settings in the description; tifffile names the file's kind.
    header = "state.configPath='C:'\nstate.acq.numberOfChannelsSave=2\nstate.acq.numberOfFrames=12"
    tifffile.imwrite(tmp_path / "scan.tif", pages, description=header, metadata=None)
    movie = io.open_movie(tmp_path / "scan.tif")
    np.testing.assert_array_equal(movie.values, data)
    assert_registers_on_one_channel(movie, 0)
    tifffile.imwrite(tmp_path / "plain.tif", pages, metadata=None)  # no metadata: all frames
    assert io.open_movie(tmp_path / "plain.tif").dims == ("time", "y", "x")


def channel(label, color):
    window = {"start": 0, "end": 65535, "min": 0, "max": 65535}
    return {"label": label, "color": color, "window": window}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ome-zarr needs Python 3.11")
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_axes_channels_and_pixel_sizes(tmp_path, version):
    import warnings

    import zarr
    from ome_zarr.format import FormatV04, FormatV05

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its own deprecated default
        from ome_zarr.writer import write_image

    fmt = {"0.4": FormatV04(), "0.5": FormatV05()}[version]
    data = counts(two_channel_movie())
    group = zarr.open_group(tmp_path / "image.ome.zarr", mode="w", zarr_format=fmt.zarr_format)
    write_image(
        data,
        group,
        fmt=fmt,
        axes=["t", "c", "y", "x"],
        scale={"t": 0.5, "c": 1.0, "y": 0.8, "x": 0.8},
        axes_units={"t": "second", "y": "micrometer", "x": "micrometer"},
        scale_factors=[2],
        omero={"channels": [channel("red", "FF0000"), channel("green", "00FF00")]},
    )
    metadata = {"0.4": ".zattrs", "0.5": "zarr.json"}[version]  # the layout of each version
    assert f'"{version}"' in (tmp_path / "image.ome.zarr" / metadata).read_text()
    movie = io.open_movie(tmp_path / "image.ome.zarr")
    np.testing.assert_array_equal(movie.values, data)  # level 0, not the pyramid
    assert movie.channel.values.tolist() == ["red", "green"]
    np.testing.assert_allclose(movie.y, 0.8 * np.arange(data.shape[2]))
    assert movie.y.attrs["units"] == movie.x.attrs["units"] == "micrometer"
    np.testing.assert_allclose(movie.time, 0.5 * np.arange(len(TRUTH)))
    assert_registers_on_one_channel(movie, "red")
    shifts = movie.sel(channel="red").reg.estimate(RED, upsample_factor=20)
    np.testing.assert_allclose(shifts.pixel_size, [0.8, 0.8])
    np.testing.assert_allclose(shifts.reg.physical().values, TRUTH * 0.8, atol=0.05)


def test_labelled_store_with_mismatched_label_chunks(tmp_path):
    """A per-frame label stored in one chunk, the movies in chunks of 4 frames."""
    movie = two_channel_movie("dask")
    ds = xr.Dataset({"both": movie, "red": movie.sel(channel="red", drop=True)})
    ds = ds.assign_coords(trial=("time", np.repeat([1, 2, 3], 4)))  # a plain numpy label
    io.to_zarr(ds, tmp_path / "session.zarr")
    opened = xr.open_zarr(tmp_path / "session.zarr")
    assert opened.trial.chunks != opened.red.chunks  # the layout the issue reports

    ref = opened.reg.reference(var="red", n_frames=12)
    shifts = opened.reg.estimate(ref, var="red", upsample_factor=20)
    np.testing.assert_array_equal(shifts.trial, ds.trial)
    drift = shifts.values - shifts.values.mean(0)
    np.testing.assert_allclose(drift, TRUTH - TRUTH.mean(0), atol=0.1)
    on_channel = opened.both.sel(channel="red").reg.estimate(ref, upsample_factor=20)
    xr.testing.assert_identical(on_channel, shifts)

    fixed = opened.reg.apply(shifts)
    io.to_zarr(fixed, tmp_path / "registered.zarr")
    back = xr.open_zarr(tmp_path / "registered.zarr")
    np.testing.assert_array_equal(back.trial, ds.trial)
    np.testing.assert_array_equal(back.channel, ["red", "green"])
    xr.testing.assert_allclose(back.both.load(), fixed.both.compute())
    channel = opened.both.reg.apply(shifts)  # the DataArray path, the same store
    io.to_zarr(channel.to_dataset(), tmp_path / "channel.zarr")
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "channel.zarr").trial, ds.trial)


# --------------------------------------------------------------------------- --channel


def register_cli(*args) -> int:
    from xreg.cli import main

    return main([str(a) for a in args] + ["--quiet"])


# `xreg register` moves frames by linear interpolation (the library's default order):
# both channels as smooth as GREEN, so that it stays within the tolerance above.
STILL = {"red": smooth_image((80, 72), sigma=4, seed=4) * 500, "green": GREEN}


def cli_movie() -> xr.DataArray:
    """The two-channel movie as a microscope saves it (uint16), for the command line."""
    movie = two_channel_movie(images=(STILL["red"], STILL["green"]))
    return movie.copy(data=counts(movie))


def unmoved_frame(tmp_path, channel: str):
    """The chosen channel's unmoved image as a reference file: displacements are TRUTH."""
    path = tmp_path / f"{channel}.npy"
    np.save(path, STILL[channel])
    return path


def assert_registered_store(output, name: str, channel: str) -> xr.DataArray:
    """The store `xreg register --channel` wrote: displacements estimated on ``channel``
    are the truth, and both channels match their unmoved images."""
    result = xr.open_zarr(output)
    fixed = result[name]
    assert fixed.dims == ("time", "channel", "y", "x")
    np.testing.assert_allclose(result.displacement.values, TRUTH, atol=0.05)
    assert result.displacement.attrs["channel"] in (channel, ["red", "green"].index(channel))
    for index, label in enumerate(("red", "green")):
        frames = fixed.isel(channel=index).astype(np.float64).expand_dims(channel=[label])
        assert_matches_unmoved(frames, label, STILL[label])
    return fixed


def write_channel_store(path, chunk=4) -> xr.DataArray:
    """A plain Zarr store: the (time, channel, y, x) movie, channels in separate chunks."""
    movie = cli_movie().chunk(time=chunk, channel=1)
    io.to_zarr(movie.to_dataset(), path, mode="w")
    return movie


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ome-zarr needs Python 3.11")
def test_register_cli_on_one_channel_of_an_ome_zarr_store(tmp_path):
    import warnings

    import zarr
    from ome_zarr.format import FormatV05

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_image

    source, output = tmp_path / "image.ome.zarr", tmp_path / "registered.zarr"
    group = zarr.open_group(source, mode="w", zarr_format=3)
    write_image(
        cli_movie().values,
        group,
        fmt=FormatV05(),
        axes=["t", "c", "y", "x"],
        scale={"t": 0.5, "c": 1.0, "y": 0.8, "x": 0.8},
        axes_units={"t": "second", "y": "micrometer", "x": "micrometer"},
        scale_factors=[2],
        omero={"channels": [channel("red", "FF0000"), channel("green", "00FF00")]},
    )
    options = ("--channel", "red", "--reference", unmoved_frame(tmp_path, "red"))
    assert register_cli("register", source, output, *options) == 0
    fixed = assert_registered_store(output, "image", "red")
    assert fixed.channel.values.tolist() == ["red", "green"]  # labels kept
    np.testing.assert_allclose(fixed.y, 0.8 * np.arange(RED.shape[0]))
    np.testing.assert_allclose(fixed.time, 0.5 * np.arange(len(TRUTH)))
    assert fixed.x.attrs["units"] == "micrometer"


def test_register_cli_on_one_channel_of_imagej_and_ome_tiff(tmp_path):
    import tifffile

    data = cli_movie().values
    tifffile.imwrite(
        tmp_path / "hyperstack.tif", data[:, None], imagej=True, metadata={"axes": "TZCYX"}
    )
    tifffile.imwrite(tmp_path / "movie.ome.tif", data, metadata={"axes": "TCYX"})
    reference = unmoved_frame(tmp_path, "red")
    for name in ("hyperstack", "movie"):
        source = next(tmp_path.glob(f"{name}.*tif"))
        output = tmp_path / f"{name}.zarr"
        # No channel labels in these files: the channel is chosen by position.
        options = ("--channel", "0", "--reference", reference, "--chunk-frames", "5")
        assert register_cli("register", source, output, *options) == 0
        fixed = assert_registered_store(output, name, "red")
        assert fixed.dtype == np.uint16 and fixed.chunksizes["time"] == (5, 5, 2)


def test_register_and_estimate_cli_on_a_zarr_movie_with_a_channel_dim(tmp_path, capsys):
    source, output = tmp_path / "session.zarr", tmp_path / "registered.zarr"
    movie = write_channel_store(source)
    options = ("--channel", "green", "--reference", unmoved_frame(tmp_path, "green"))
    assert register_cli("register", source, output, *options) == 0  # the second channel
    fixed = assert_registered_store(output, "movie", "green")
    for label in ("time", "channel", "trial"):
        np.testing.assert_array_equal(fixed[label], movie[label])
    assert fixed.attrs == movie.attrs and fixed.data.chunks[0] == (4, 4, 4)

    # Channels stay in their stored chunks when read (estimate reads only its channel's).
    assert io.open_movie(source).data.chunks[1] == (1, 1)
    # xreg estimate takes the same --channel; its CSV is written as before.
    table = tmp_path / "shifts.csv"
    assert register_cli("estimate", source, table, *options) == 0
    np.testing.assert_allclose(io.read_displacement(table).values, TRUTH, atol=0.05)

    # The automatic reference is built from the chosen channel's frames: it matches
    # that channel of the movie registered onto it, and not the other one.
    auto = tmp_path / "auto.zarr"
    assert register_cli("register", source, auto, "--channel", "red") == 0
    result = xr.open_zarr(auto)
    means = result.movie.astype(np.float64).mean("time").values

    def match(index):
        inner = (slice(8, -8), slice(8, -8))
        reference = result.reference.values[inner].ravel()
        return np.corrcoef(reference, means[index][inner].ravel())[0, 1]

    assert match(0) > 0.99 and abs(match(1)) < 0.5, (match(0), match(1))


def test_a_run_resumes_only_on_the_same_channel(tmp_path, capsys):
    import json

    import zarr

    source = tmp_path / "session.zarr"
    write_channel_store(source)
    options = ("--channel", "red", "--reference", unmoved_frame(tmp_path, "red"))
    complete, killed = tmp_path / "complete.zarr", tmp_path / "killed.zarr"
    for output in (complete, killed):
        assert register_cli("register", source, output, *options) == 0
    record = json.loads((killed / pipeline.RUN_FILE).read_text())
    assert record["settings"]["channel"] == {"dim": "channel", "position": 0, "label": "red"}
    # What a run killed after its first chunk leaves: the others neither done nor written.
    record["stage"] = "writing"
    (killed / pipeline.RUN_FILE).write_text(json.dumps(record))
    for chunk in (1, 2):
        (killed / pipeline.DONE_PREFIX / str(chunk)).unlink()
    zarr.open_array(killed, path="movie", mode="r+")[4:] = 0

    other = ("--channel", "green", *options[2:])
    assert register_cli("register", source, killed, *other) == 2
    assert "other settings" in capsys.readouterr().err
    assert json.loads((killed / pipeline.RUN_FILE).read_text()) == record  # left as it was
    same = ("--channel", "0", *options[2:])  # the same channel, by position
    assert register_cli("register", source, killed, *same) == 0
    xr.testing.assert_identical(xr.open_zarr(killed).load(), xr.open_zarr(complete).load())
    assert len(list((killed / pipeline.DONE_PREFIX).iterdir())) == 3
