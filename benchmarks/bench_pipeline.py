"""Out-of-core: peak memory and throughput of `xreg register` on Zarr movies of two lengths.

    python benchmarks/bench_pipeline.py [--lengths 2000 4000] [--folder DIR]

For each length, a 512 x 512 float32 movie with known drift is generated into a
Zarr store (4,000 frames = 4.2 GB, uncompressed), then registered by the command
line in a fresh process.  Reported per length: the peak resident memory of that
process (measured by GNU time), frames/s of the whole pipeline (read, estimate,
apply, write) and of `xreg estimate` alone, and the RMS error of the stored
displacements against the truth (after removing the one offset a self-built
reference may carry).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import xreg
from xreg import io


def generate(path: Path, n_frames: int) -> None:
    movie = xreg.datasets.large(n_frames=n_frames, chunks=100)
    moved, truth = xreg.datasets.add_motion(
        movie, max_drift=10, jumps=3, subpixel=True, seed=n_frames
    )
    # Uncompressed, so that the store's size on disk is the movie's size.
    io.to_zarr(
        moved.astype(np.float32).to_dataset(name="movie"),
        path,
        mode="w",
        encoding={"movie": {"compressors": None}},
    )
    np.save(path / "truth.npy", truth.values)


def run(command) -> tuple[float, float]:
    """Wall time (s) and peak resident memory (GB) of one command in a new process.

    Measured by GNU time: a child forked from this (larger) process would inherit
    this process's high-water mark in its own ru_maxrss.
    """
    start = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *map(str, command)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    return seconds, int(result.stderr.strip().splitlines()[-1]) / 1024**2  # KiB -> GiB


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 4000])
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        return generate(args.generate, args.frames)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="xreg-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    xreg_command = [sys.executable, "-m", "xreg"]
    rows = []
    try:
        for n in args.lengths:
            source, output = folder / f"movie-{n}.zarr", folder / f"registered-{n}.zarr"
            table = folder / f"shifts-{n}.csv"
            shutil.rmtree(source, ignore_errors=True)  # from an earlier, interrupted run
            shutil.rmtree(output, ignore_errors=True)
            table.unlink(missing_ok=True)
            started = time.perf_counter()
            # In a child process, so this one stays small.
            subprocess.run(
                [sys.executable, __file__, "--generate", str(source), "--frames", str(n)],
                check=True,
            )
            truth = np.load(source / "truth.npy")
            size = sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) / 1e9
            print(
                f"generated {n} frames ({size:.1f} GB on disk) in "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
            estimate_s, estimate_gb = run(xreg_command + ["estimate", source, table, "--quiet"])
            register_s, register_gb = run(xreg_command + ["register", source, output, "--quiet"])
            stored = io.read_displacement(output).values
            error = stored - truth
            error -= np.median(error, axis=0)
            rows.append(
                (
                    n,
                    4 * n * 512 * 512 / 1e9,
                    register_gb,
                    estimate_gb,
                    n / register_s,
                    n / estimate_s,
                    float(np.sqrt(np.mean(error**2))),
                )
            )
            shutil.rmtree(output)
            shutil.rmtree(source)
            table.unlink()
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    print()
    print(
        "| frames | movie (GB, float32) | peak RSS register (GB) | peak RSS estimate (GB) "
        "| register frames/s (read+estimate+apply+write) | estimate-only frames/s "
        "| RMS error (px) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| {} | {:.1f} | {:.2f} | {:.2f} | {:.0f} | {:.0f} | {:.3f} |".format(*row))


if __name__ == "__main__":
    main()
