"""xreg.spark on a real local Spark session."""

import contextlib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import as_movie, fourier_moved, smooth_image

import xreg
from xreg import CrossCorr, XregError, io
from xreg import spark as xspark

IMAGE = smooth_image((64, 48), seed=2) * 1000
TRUTH = np.random.default_rng(5).uniform(-3, 3, (23, 2))


def movie(backend="numpy", dtype="float32"):
    frames = fourier_moved(IMAGE, TRUTH).astype(dtype)
    return as_movie(frames, backend, chunk=5).assign_attrs(site="V1")


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_round_trip_is_exact(spark_context, backend):
    original = movie(backend, "uint16")
    rdd = xspark.to_rdd(original, spark_context, npartitions=4)
    assert rdd.getNumPartitions() == 4
    key, frame = rdd.first()
    assert key == (0,) and frame.shape == (64, 48) and frame.dtype == np.uint16
    back = xspark.from_rdd(
        rdd, coords={"time": original.time}, attrs=original.attrs, name=original.name
    )
    xr.testing.assert_identical(back, original.compute())


def test_estimate_and_apply_match_the_accessor(spark_context):
    local = movie()
    rdd = xspark.to_rdd(local, spark_context, npartitions=3)
    # A reference that says how it was made: the displacements record it, both ways.
    reference = xr.DataArray(IMAGE, dims=("y", "x"), attrs={"method": "mean of all frames"})
    shifts = xspark.estimate(rdd, reference, upsample_factor=20, time=local.time)
    expected = local.reg.estimate(reference, upsample_factor=20)
    xr.testing.assert_identical(shifts, expected)
    assert shifts.attrs["reference_method"] == "mean of all frames"
    weighted = xspark.estimate(rdd, reference, time=local.time, weights="noise")
    xr.testing.assert_identical(weighted, local.reg.estimate(reference, weights="noise"))
    registered = xspark.from_rdd(xspark.apply(rdd, shifts))
    np.testing.assert_allclose(registered.values, local.reg.apply(expected).values, atol=1e-4)


def test_piecewise_estimate_and_apply_match_the_accessor(spark_context):
    still = xr.DataArray(np.stack([IMAGE[:, :48]] * 6), dims=("time", "y", "x"))
    local, _ = xreg.datasets.add_nonrigid_motion(still, max_shift=3, seed=3)
    local = local.assign_coords(time=np.arange(6) * 0.5)
    rdd = xspark.to_rdd(local, spark_context, npartitions=2)
    options = {"method": "piecewise", "block_size": 32, "overlap": 0.5}
    shifts = xspark.estimate(rdd, IMAGE[:, :48], time=local.time, **options)
    expected = local.reg.estimate(IMAGE[:, :48], **options)
    assert shifts.dims == ("time", "block_y", "block_x", "axis")
    xr.testing.assert_identical(shifts, expected)
    registered = xspark.from_rdd(xspark.apply(rdd, shifts))
    np.testing.assert_allclose(registered.values, local.reg.apply(expected).values, atol=1e-4)
    with pytest.raises(XregError, match="whole frames"):
        xspark.estimate(rdd, IMAGE[:, :48], whole_frame=True, **options)
    with pytest.raises(XregError, match="block_size"):
        xspark.estimate(rdd, IMAGE[:, :48], method="piecewise", block_size=4)


def test_out_of_order_keys_are_sorted_and_bad_keys_rejected(spark_context):
    local = movie()
    records = list(reversed(xspark.to_rdd(local, spark_context).collect()))
    shuffled = spark_context.parallelize(records, 3)
    np.testing.assert_array_equal(xspark.from_rdd(shuffled).values, local.values)
    np.testing.assert_allclose(
        xspark.estimate(shuffled, IMAGE).values, local.reg.estimate(IMAGE).values, atol=1e-9
    )
    duplicated = spark_context.parallelize(records + records[:1], 2)
    with pytest.raises(XregError, match="more than once"):
        xspark.from_rdd(duplicated)
    with pytest.raises(XregError, match="more than once"):
        xspark.estimate(duplicated, IMAGE)
    missing = spark_context.parallelize(records[:10] + records[11:], 2)
    with pytest.raises(XregError, match="missing"):
        xspark.from_rdd(missing)
    with pytest.raises(XregError, match="keys must be frame indices"):
        xspark.from_rdd(spark_context.parallelize([("a", np.zeros((2, 2)))]))


def test_from_zarr_reads_a_real_store(spark_context, tmp_path):
    local = movie()
    store = tmp_path / "movie.zarr"
    io.to_zarr(local.to_dataset(), store)
    rdd = xspark.from_zarr(spark_context, str(store), "movie", npartitions=4)
    assert rdd.getNumPartitions() == 4
    np.testing.assert_array_equal(xspark.from_rdd(rdd).values, local.values)
    with pytest.raises(XregError, match="no variable"):
        xspark.from_zarr(spark_context, str(store), "nope")


def test_thunder_style_on_rdds(spark_context):
    reference = np.arange(25.0).reshape(5, 5)
    images = np.stack([np.roll(reference, s, axis=(0, 1)) for s in ([1, 2], [-2, 1])])
    rdd = spark_context.parallelize([((i,), im) for i, im in enumerate(images)], 2)
    model = CrossCorr().fit(rdd, reference=reference)
    np.testing.assert_array_equal(model.toarray(), [[1, 2], [-2, 1]])
    out = model.transform(rdd, mode="wrap")
    assert sorted(k for k, _ in out.collect()) == [(0,), (1,)]
    np.testing.assert_array_equal(xspark.from_rdd(out).values, np.stack([reference] * 2))
    np.testing.assert_array_equal(
        model.toarray(), CrossCorr().fit(images, reference=reference).toarray()
    )


def test_retried_task_gives_the_same_answer(spark_context, tmp_path):
    """A task that dies on its first attempt is retried by Spark; the result is unchanged."""
    local = movie()
    rdd = xspark.to_rdd(local, spark_context, npartitions=3)
    clean = xspark.estimate(rdd, IMAGE)
    marker = str(tmp_path / "failed-once")

    def fail_once(index, records):
        if index == 1 and not Path(marker).exists():
            Path(marker).touch()
            raise RuntimeError("injected failure")
        return records

    flaky = rdd.mapPartitionsWithIndex(fail_once)
    retried = xspark.estimate(flaky, IMAGE)
    assert Path(marker).exists()  # the failure did happen
    xr.testing.assert_identical(retried, clean)


def test_importing_xreg_does_not_import_pyspark_and_missing_pyspark_says_how_to_fix():
    import subprocess
    import sys

    check = "import sys, xreg; assert 'pyspark' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0
    without = (
        "import sys; sys.modules['pyspark'] = None\n"
        "try:\n    import xreg.spark\nexcept ImportError as e:\n    print(e)"
    )
    result = subprocess.run([sys.executable, "-c", without], capture_output=True, text=True)
    assert "pip install xreg[spark]" in result.stdout


def test_scan_phase_estimate_and_correction_match_the_accessor(spark_context):
    from test_scanphase import motion, resonant_movie

    frames = resonant_movie(1.6, motion(10, seed=4), photons=300, seed=5)
    local = as_movie(frames, "numpy")
    rdd = xspark.to_rdd(local, spark_context, npartitions=3)
    per_movie = xspark.scan_phase(rdd, n_frames=6)
    expected = local.reg.scan_phase(n_frames=6)
    assert abs(float(per_movie) - 1.6) < 0.05
    xr.testing.assert_allclose(per_movie, expected, atol=1.5e-3)  # the same to 0.001 px
    assert per_movie.attrs == expected.attrs
    windowed = xspark.scan_phase(rdd, window=3, time=local.time)
    xr.testing.assert_allclose(windowed, local.reg.scan_phase(window=3), atol=1.5e-3)
    per_frame = xspark.scan_phase(rdd, per="frame", time=local.time)
    xr.testing.assert_allclose(per_frame, local.reg.scan_phase(per="frame"), atol=1.5e-3)
    fixed = xspark.from_rdd(xspark.correct_scan_phase(rdd, per_frame, order=3))
    np.testing.assert_array_equal(
        fixed.values, local.reg.correct_scan_phase(per_frame, order=3).values
    )
    with pytest.raises(XregError, match="quarter"):
        xspark.correct_scan_phase(rdd, 40.0)


def labelled_movie(backend="numpy"):
    """A movie with the labels users keep: time, a per-frame trial, µm pixels, attrs."""
    local = movie(backend).assign_coords(
        trial=("time", np.repeat([1, 2, 3], [8, 8, 7])),
        y=("y", 0.5 * np.arange(64), {"units": "µm"}),
        x=("x", 0.5 * np.arange(48), {"units": "µm"}),
    )
    return local.rename(time="frame_time")


def test_estimate_is_identical_to_the_accessor_with_the_movies_labels(spark_context, tmp_path):
    local = labelled_movie()
    ref = local.isel(frame_time=0)
    expected = local.reg.estimate(ref, dim="frame_time")
    assert expected.pixel_size.values.tolist() == [0.5, 0.5]
    io.to_zarr(local.to_dataset(), tmp_path / "labelled.zarr")
    rdd = xspark.to_rdd(local, spark_context, dim="frame_time", npartitions=3)
    records = spark_context.parallelize(rdd.collect(), 2)  # built by hand: no labels
    cases = {
        "to_rdd": xspark.estimate(rdd, ref),
        "derived": xspark.estimate(rdd.map(lambda r: (r[0], r[1] * 1)).cache(), ref),
        "from_zarr": xspark.estimate(
            xspark.from_zarr(spark_context, tmp_path / "labelled.zarr", "movie", dim="frame_time"),
            ref,
        ),
        "template": xspark.estimate(records, ref, template=local, dim="frame_time"),
    }
    for name, shifts in cases.items():
        try:
            xr.testing.assert_identical(shifts, expected)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from error
    fixed = xspark.from_rdd(xspark.apply(rdd, cases["to_rdd"]))  # labelled again
    lazy = local.reg.apply(cases["to_rdd"], dim="frame_time")  # labels line up
    xr.testing.assert_allclose(fixed, lazy, atol=1e-4)
    xr.testing.assert_identical(fixed.coords.to_dataset(), local.coords.to_dataset())
    assert fixed.attrs == local.attrs and fixed.name == local.name
    with pytest.raises(XregError, match="template=movie"):
        xspark.estimate(rdd.filter(lambda r: r[0][0] < 5), ref)


def test_to_rdd_keeps_tasks_small(spark_context, tmp_path):
    """No 'task of very large size' warning: Spark's own log, captured to a file."""
    big = xr.DataArray(np.ones((24, 256, 256), np.float32), dims=("time", "y", "x"))  # 6 MB
    log = tmp_path / "spark.log"
    with spark_warnings(spark_context, log):
        control = spark_context.parallelize([((i,), f) for i, f in enumerate(big.values)], 2)
        assert control.count() == 24
    assert "very large size" in log.read_text()  # the capture works
    log.unlink()
    with spark_warnings(spark_context, log):
        for backend in ("numpy", "dask"):
            rdd = xspark.to_rdd(big if backend == "numpy" else big.chunk(time=6), spark_context)
            assert rdd.map(lambda r: float(r[1].sum())).sum() == big.size
    assert "very large size" not in log.read_text()


@contextlib.contextmanager
def spark_warnings(sc, path):
    """Spark's scheduler warnings written to ``path`` while the block runs (log4j 2)."""
    log4j = sc._jvm.org.apache.logging.log4j
    context = log4j.LogManager.getContext(False)
    config = context.getConfiguration()
    appender = (
        log4j.core.appender.FileAppender.newBuilder()
        .withFileName(str(path))
        .setName("xreg-test")
        .setLayout(log4j.core.layout.PatternLayout.createDefaultLayout())
        .build()
    )
    appender.start()
    name = "org.apache.spark.scheduler.TaskSetManager"
    logger = log4j.core.config.LoggerConfig(name, log4j.Level.WARN, False)
    logger.addAppender(appender, log4j.Level.WARN, None)
    config.addLogger(name, logger)
    context.updateLoggers()
    try:
        yield
    finally:
        config.removeLogger(name)
        context.updateLoggers()
        appender.stop()


def test_the_one_pass_from_zarr_to_zarr_on_spark_matches_dask(spark_context, tmp_path):
    from xreg.cli import main

    still = xreg.datasets.mouse(n_frames=24, shape=(64, 64), seed=3)
    moved, truth = xreg.datasets.add_motion(still, max_drift=3, subpixel=True, seed=3)
    source = tmp_path / "in.zarr"
    io.to_zarr(moved.chunk(time=6).to_dataset(name="movie"), source, mode="w")
    np.save(tmp_path / "ref.npy", still.mean("time").values)
    command = ["register", str(source), "--reference", str(tmp_path / "ref.npy"), "--quiet"]
    assert main([*command, str(tmp_path / "dask.zarr")]) == 0
    runner = xspark.chunk_runner(spark_context)
    assert main([*command, str(tmp_path / "spark.zarr")], runner=runner) == 0
    on_spark = xr.open_zarr(tmp_path / "spark.zarr")
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "dask.zarr"), on_spark)
    assert np.abs(on_spark["displacement"].values - truth.values).max() < 0.5


def test_the_one_pass_on_one_channel_on_spark_matches_dask(spark_context, tmp_path):
    from xreg.cli import main

    other = IMAGE[::-1] * 0.5  # the second channel: other content, the same motion
    frames = np.stack([fourier_moved(IMAGE, TRUTH), fourier_moved(other, TRUTH)], axis=1)
    da = xr.DataArray(frames.astype(np.float32), dims=("time", "channel", "y", "x"))
    source = tmp_path / "in.zarr"
    channels = da.assign_coords(channel=["red", "green"]).chunk(time=6, channel=1)
    io.to_zarr(channels.to_dataset(name="movie"), source, mode="w")
    np.save(tmp_path / "ref.npy", other)
    command = ["register", str(source), "--channel", "green", "--quiet"]
    command += ["--reference", str(tmp_path / "ref.npy")]
    assert main([*command, str(tmp_path / "dask.zarr")]) == 0
    runner = xspark.chunk_runner(spark_context)
    assert main([*command, str(tmp_path / "spark.zarr")], runner=runner) == 0
    on_spark = xr.open_zarr(tmp_path / "spark.zarr")
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "dask.zarr"), on_spark)
    np.testing.assert_allclose(on_spark["displacement"].values, TRUTH, atol=0.05)
    assert on_spark["movie"].dims == ("time", "channel", "y", "x")
