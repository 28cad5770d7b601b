"""Stores in an object store: moto's S3 server, started by the test session, no network."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

import xreg
from xreg import XregError, io
from xreg.cli import main


def put_movie(url, n_frames=40, chunk=10, shape=(64, 64), seed=0):
    """A drifting movie written to ``url``: the still movie, the moved one, the truth."""
    still = xreg.datasets.mouse(n_frames=n_frames, shape=shape, seed=seed)
    moved, truth = xreg.datasets.add_motion(still, max_drift=3, subpixel=True, seed=seed)
    io.to_zarr(moved.chunk(time=chunk).to_dataset(name="movie"), url, mode="w")
    return still, moved, truth


def test_lazy_api_reads_a_bucket(s3):
    bucket, _ = s3
    still, moved, truth = put_movie(f"{bucket}/in.zarr")
    reference = still.mean("time")
    movie = xr.open_zarr(f"{bucket}/in.zarr")["movie"]  # as a user would, from the bucket
    assert movie.chunks is not None  # lazy
    shifts = movie.reg.estimate(reference)
    assert np.abs(shifts.values - truth.values).max() < 0.5
    xr.testing.assert_identical(shifts, moved.reg.estimate(reference))
    fixed = movie.reg.apply(shifts)
    assert fixed.chunks is not None
    np.testing.assert_array_equal(fixed.values, moved.reg.apply(shifts).values)
    assert io.open_movie(f"{bucket}/in.zarr").chunks == movie.chunks  # the CLI's reader


def test_estimate_from_bucket_to_bucket_and_displacements_round_trip(s3, tmp_path):
    import fsspec

    bucket, _ = s3
    still, _, _ = put_movie(f"{bucket}/in.zarr")
    np.save(tmp_path / "ref.npy", still.isel(time=slice(0, 5)).mean("time").values)
    fsspec.filesystem("s3").put_file(str(tmp_path / "ref.npy"), f"{bucket}/ref.npy")
    command = ["estimate", f"{bucket}/in.zarr", "--quiet", "--reference"]
    assert main([*command, f"{bucket}/ref.npy", f"{bucket}/shifts.csv"]) == 0
    assert main([*command, str(tmp_path / "ref.npy"), str(tmp_path / "shifts.csv")]) == 0
    expected = io.read_displacement(tmp_path / "shifts.csv")
    got = io.read_displacement(f"{bucket}/shifts.csv")
    xr.testing.assert_identical(got, expected)
    # It exists: not overwritten.
    assert main([*command, f"{bucket}/ref.npy", f"{bucket}/shifts.csv"]) == 2
    shifts = io.read_displacement(tmp_path / "shifts.csv")
    for suffix in ("nc", "zarr"):
        io.write_displacement(shifts, f"{bucket}/shifts.{suffix}")
        xr.testing.assert_allclose(io.read_displacement(f"{bucket}/shifts.{suffix}"), shifts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_missing_bucket_is_a_clear_error(s3):
    start = time.monotonic()
    with pytest.raises(XregError, match="bucket does not exist"):
        io.open_movie("s3://no-such-bucket-here/in.zarr")
    with pytest.raises(XregError, match="no such store"):
        io.open_movie(f"{s3[0]}/missing.zarr")
    assert time.monotonic() - start < 5


def test_unreachable_endpoint_is_a_clear_error_within_seconds(s3):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(XregError, match="cannot reach the storage endpoint"):
        io.open_movie(f"{s3[0]}/in.zarr", storage_options={"endpoint_url": endpoint})
    assert time.monotonic() - start < 5


def moto_checks_credentials(endpoint: str, check: bool) -> None:
    import urllib.request

    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0" if check else b"inf",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=10).close()


def test_bad_credentials_are_a_clear_error(s3, s3_server):
    bucket, _ = s3
    put_movie(f"{bucket}/in.zarr", n_frames=10)
    # moto checks credentials only when asked to: from the next request on.
    moto_checks_credentials(s3_server, True)
    try:
        start = time.monotonic()
        with pytest.raises(XregError, match="access denied: check the credentials"):
            io.open_movie(f"{bucket}/in.zarr", storage_options={"key": "bad", "secret": "bad"})
        assert time.monotonic() - start < 5
    finally:
        moto_checks_credentials(s3_server, False)


def test_the_command_reports_a_store_error_in_one_line(s3):
    command = [
        sys.executable,
        "-m",
        "xreg",
        "estimate",
        "s3://no-such-bucket-here/in.zarr",
        "out.csv",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=_path_env() | s3[1], timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "xreg: error: s3://no-such-bucket-here/in.zarr: the bucket does not exist; "
        "create it or correct the URL."
    ]


def _path_env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}


def _objects(url: str) -> dict:
    """Every object of a store under ``url``: key -> bytes."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return {key[len(root) :]: fs.cat_file(key) for key in fs.find(root)}


def _done(url: str) -> int:
    import fsspec

    from xreg import pipeline

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    try:
        return len(fs.ls(f"{root}/{pipeline.DONE_PREFIX}", detail=False))
    except FileNotFoundError:
        return 0


def test_register_bucket_to_bucket_resumes_after_sigkill(s3):
    from xreg import pipeline

    bucket, environment = s3
    source = f"{bucket}/in.zarr"
    put_movie(source, n_frames=60, chunk=4)
    original = _objects(source)
    options = ["--workers", "1", "--reference", "first:20", "--quiet"]
    assert main(["register", source, f"{bucket}/clean.zarr", *options]) == 0

    killed = f"{bucket}/killed.zarr"
    command = [sys.executable, "-m", "xreg", "register", source, killed, *options]
    process = subprocess.Popen(command, env=_path_env() | environment)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and _done(killed) < 2:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.kill()  # SIGKILL: no clean-up of any kind
    process.wait()
    finished = _done(killed)
    record = json.loads(_objects(killed)[f"/{pipeline.RUN_FILE}"])
    assert record["stage"] == "writing" and 2 <= finished < 15

    assert main(["register", source, killed, *options]) == 0  # the same command resumes
    assert json.loads(_objects(killed)[f"/{pipeline.RUN_FILE}"])["stage"] == "complete"
    clean, resumed = xr.open_zarr(f"{bucket}/clean.zarr"), xr.open_zarr(killed)
    xr.testing.assert_identical(clean, resumed)
    movie = {k: v for k, v in _objects(f"{bucket}/clean.zarr").items() if k.startswith("/movie")}
    assert movie == {k: v for k, v in _objects(killed).items() if k.startswith("/movie")}
    assert _objects(source) == original  # the input was never written
