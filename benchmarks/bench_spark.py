"""Rigid estimate on Spark local[2] next to Dask on the same 2 cores, same movie.

    python benchmarks/bench_spark.py [--frames 400] [--size 512]

Both engines run the same core on the same frames.  Spark's figure includes
shipping the frames to its Python workers (the movie starts on the driver, as
in a notebook), so its overhead is reported, not hidden; a second Spark figure
re-runs the estimate on an RDD already cached on the executors.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import xarray as xr
from scipy import ndimage

import xreg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    from xreg import spark as xspark

    scene = xreg.datasets.large(n_frames=1, shape=(args.size, args.size))
    reference = ndimage.gaussian_filter(scene.isel(time=0).values.astype(float), 1.0)
    rng = np.random.default_rng(0)
    truth = rng.uniform(-8, 8, (args.frames, 2))
    frames = np.stack(
        [rng.poisson(np.maximum(ndimage.shift(reference, t, mode="nearest"), 0)) for t in truth]
    ).astype(np.float32)
    movie = xr.DataArray(frames, dims=("time", "y", "x"))
    n = len(frames)

    lazy = movie.chunk(time=50)
    lazy.reg.estimate(reference)  # warm up
    start = time.perf_counter()
    dask_shifts = lazy.reg.estimate(reference)
    dask_seconds = time.perf_counter() - start

    sc = xspark.local_context("xreg-bench", settings={"spark.driver.memory": "4g"})
    try:
        rdd = xspark.to_rdd(movie, sc, npartitions=8)
        xspark.estimate(sc.parallelize(rdd.take(4), 2), reference)  # start the workers
        start = time.perf_counter()
        spark_shifts = xspark.estimate(rdd, reference)
        spark_seconds = time.perf_counter() - start
        cached = rdd.cache()
        cached.count()
        start = time.perf_counter()
        xspark.estimate(cached, reference)
        cached_seconds = time.perf_counter() - start
    finally:
        sc.stop()

    same = np.allclose(spark_shifts.values, dask_shifts.values, atol=1e-9)
    print(f"movie: {n} x {args.size} x {args.size} float32; Spark local[2] vs Dask threads (2)")
    print(f"Spark and Dask estimates identical: {same}")
    print()
    print("| engine | frames/s | time relative to Dask |")
    print("|---|---:|---:|")
    print(f"| Dask, 2 threads, 50-frame chunks | {n / dask_seconds:.0f} | 1.00 |")
    print(
        f"| Spark local[2], frames sent from the driver | {n / spark_seconds:.0f} | "
        f"{spark_seconds / dask_seconds:.2f} |"
    )
    print(
        f"| Spark local[2], RDD cached on the executors | {n / cached_seconds:.0f} | "
        f"{cached_seconds / dask_seconds:.2f} |"
    )


if __name__ == "__main__":
    main()
