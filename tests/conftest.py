"""Shared fixtures and ground-truth builders. Every movie here is made, not downloaded."""

from __future__ import annotations

import collections
import threading

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

import xreg  # noqa: F401  (registers the accessor)


def fourier_moved(image: np.ndarray, shifts) -> np.ndarray:
    """``image`` moved by each displacement in ``shifts`` (periodic, exact subpixel)."""
    spectrum = np.fft.fftn(image)
    return np.stack([np.fft.ifftn(ndimage.fourier_shift(spectrum, s)).real for s in shifts])


def smooth_image(shape, sigma=4.0, seed=0) -> np.ndarray:
    """A smooth random image, like tissue seen through a microscope."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (image - image.min()) / np.ptp(image)


def blob_volume(size=32, n_blobs=12, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3)
    volume = np.zeros((size,) * 3)
    for centre in rng.uniform(6, size - 6, (n_blobs, 3)):
        distance2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        volume += np.exp(-distance2 / (2 * 2.0**2))
    return volume


def as_movie(frames: np.ndarray, backend: str, chunk: int = 1) -> xr.DataArray:
    """A (time, y, x) or (time, z, y, x) DataArray with a time coordinate."""
    spatial = ("y", "x") if frames.ndim == 3 else ("z", "y", "x")
    da = xr.DataArray(
        frames,
        dims=("time",) + spatial,
        coords={"time": np.arange(len(frames)) * 0.5},
        name="movie",
        attrs={"units": "counts"},
    )
    return da.chunk(time=chunk) if backend == "dask" else da


@pytest.fixture(params=["numpy", "dask"])
def backend(request):
    return request.param


class CountingScheduler:
    """A synchronous Dask scheduler that fails past ``max_computes`` computes.

    Copied from xarray's test suite (``raise_if_dask_computes`` is not public).
    """

    def __init__(self, max_computes=0):
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many computes. Total: {self.total_computes} > max: {self.max_computes}."
            )
        return dask.get(dsk, keys, **kwargs)


def raise_if_dask_computes(max_computes=0):
    return dask.config.set(scheduler=CountingScheduler(max_computes))


class ChunkReads:
    """A Dask-backed movie whose chunk reads are counted (a stand-in for a Zarr read)."""

    def __init__(self, frames: np.ndarray, chunk: int):
        self.frames = frames
        self.reads = collections.Counter()
        self._lock = threading.Lock()
        chunks = (dsa.core.normalize_chunks(chunk, (len(frames),))[0],) + tuple(
            (s,) for s in frames.shape[1:]
        )

        def read(block_info=None):
            start, stop = block_info[None]["array-location"][0]
            with self._lock:
                self.reads[start] += 1
            return self.frames[start:stop]

        data = dsa.map_blocks(read, dtype=frames.dtype, chunks=chunks)
        spatial = ("y", "x") if frames.ndim == 3 else ("z", "y", "x")
        self.movie = xr.DataArray(data, dims=("time",) + spatial, name="movie")


@pytest.fixture(scope="session")
def spark_context():
    """A real local Spark: 2 cores, and up to 4 attempts per task (local[N, maxFailures])."""
    from xreg import spark  # the `spark` extra, which `make test` installs

    context = spark.local_context(
        "xreg-tests", attempts=4, settings={"spark.python.worker.reuse": "true"}
    )
    yield context
    context.stop()


# ----------------------------------------------------------------------------- object store


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server mode on a free loopback port, in a thread of this process.

    Yields its endpoint URL; stopped when the session ends (a killed session takes the
    thread with it).  No network: clients reach it on 127.0.0.1 only.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "xreg-test",
    "AWS_SECRET_ACCESS_KEY": "xreg-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    """A fresh bucket on the moto server; credentials and endpoint in the environment.

    Yields ``(bucket URL, environment)``: the environment is also set in this process,
    as boto and fsspec read it (``AWS_*``, ``FSSPEC_S3_ENDPOINT_URL``), so that
    subprocesses given it find the server the same way.
    """
    import re

    import s3fs

    environment = {**S3_ENVIRONMENT, "AWS_ENDPOINT_URL": s3_server}
    environment["FSSPEC_S3_ENDPOINT_URL"] = s3_server
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir(bucket)
    yield f"s3://{bucket}", environment
    fs.rm(bucket, recursive=True)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def dask_cluster():
    """A real ``distributed`` LocalCluster: 2 worker processes, 1 thread each, no dashboard.

    Module-scoped (starting worker processes takes seconds); closed by the fixture.
    """
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster
