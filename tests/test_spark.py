"""xreg.spark on a real local Spark session."""

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
    shifts = xspark.estimate(rdd, IMAGE, upsample_factor=20, time=local.time)
    expected = local.reg.estimate(IMAGE, upsample_factor=20)
    xr.testing.assert_allclose(shifts, expected, atol=1e-9)
    assert shifts.attrs == {k: v for k, v in expected.attrs.items() if k != "reference_method"}
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
    xr.testing.assert_allclose(shifts, expected, atol=1e-9)
    assert shifts.attrs == {k: v for k, v in expected.attrs.items() if k != "reference_method"}
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
