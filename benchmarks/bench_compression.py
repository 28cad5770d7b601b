"""Compression of the registered movie: write and read speed against size.

    python benchmarks/bench_compression.py [--frames 200] [--rounds 3]

The data are what `xreg register` writes: a registered two-photon-like movie
(`xreg.datasets.large`, with shot noise), as float32 and as uint16, 512 x 512,
100-frame chunks.  Each codec writes and reads the same frames, in turns; reported:
the best write and read speed (MB/s of raw data, one thread, as each of the pipeline's
tasks writes its own chunk) and the stored size as a share of the raw size.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

import xreg

CODECS = {
    "none": None,
    "Blosc lz4, level 1, shuffle": (BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),),
    "Blosc zstd, level 1, shuffle": (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),),
    "zarr's default (Zstd level 0)": "auto",
    "Zstd level 3, no shuffle": (ZstdCodec(level=3),),
}


def movies(n_frames: int) -> dict:
    still = xreg.datasets.large(n_frames=n_frames, chunks=100).values.astype(np.float64)
    rng = np.random.default_rng(0)
    photons = rng.poisson(np.clip(still, 0, None) / still.max() * 50).astype(np.float64)
    return {
        "noisy float32": (photons + rng.normal(0, 0.5, photons.shape)).astype(np.float32),
        "uint16": photons.astype(np.uint16),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="xreg-compression-"))
    results = {}
    try:
        for kind, data in movies(args.frames).items():
            megabytes = data.nbytes / 1e6
            for _ in range(args.rounds):
                for name, compressors in CODECS.items():
                    path = folder / "a.zarr"
                    shutil.rmtree(path, ignore_errors=True)
                    array = zarr.create_array(
                        path,
                        shape=data.shape,
                        chunks=(100,) + data.shape[1:],
                        dtype=data.dtype,
                        compressors=compressors,
                    )
                    start = time.perf_counter()
                    for first in range(0, len(data), 100):
                        array[first : first + 100] = data[first : first + 100]
                    write = time.perf_counter() - start
                    start = time.perf_counter()
                    back = zarr.open_array(path)[:]
                    read = time.perf_counter() - start
                    assert np.array_equal(back, data)
                    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                    best = results.setdefault((kind, name), [np.inf, np.inf, 0])
                    best[0], best[1] = min(best[0], write), min(best[1], read)
                    best[2] = size / data.nbytes
            for name in CODECS:
                write, read, share = results[(kind, name)]
                results[(kind, name)] = (megabytes / write, megabytes / read, share)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.frames} frames of 512 x 512, best of {args.rounds} rounds in turns")
    print()
    print("| data | codec | write MB/s | read MB/s | size (share of raw) |")
    print("|---|---|---:|---:|---:|")
    for (kind, name), (write, read, share) in results.items():
        print(f"| {kind} | {name} | {write:.0f} | {read:.0f} | {share:.2f} |")


if __name__ == "__main__":
    main()
