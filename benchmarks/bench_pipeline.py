"""Out of core: `xreg register` against the in-memory API path and the I/O floor.

    python benchmarks/bench_pipeline.py [--frames 600] [--rounds 2] [--memory-frames 4000]
                                        [--folder DIR]  (keeps the input stores there for reruns)

`--rounds 0 --memory-frames N` measures only the peak memory.

A 512 x 512 float32 movie with known drift (uncompressed Zarr, 100-frame chunks) is
registered, in turns within one run (so that a slow spell of the shared machine hits
every path; each starts after `os.sync()`, so that none pays for flushing the last one's
output), by:

- `xreg register IN OUT` (run in this process, so that Python's start-up is not counted);
- the lazy one-pass Python path: `open_zarr`, `reference()`, `register(ref)`, `to_zarr`
  of both results;
- the in-memory API path: load the movie, `reference()`, `estimate()`, `apply()`;
- the I/O floor: `xr.open_zarr(IN).to_zarr(OUT)`, a plain copy.

Reported: frames/s of each (best of the rounds), the ratios, and the reference's share
of the register run.  With `--memory-frames N`, `xreg register` then runs on an N-frame
store in a fresh process whose peak resident memory GNU time measures (a child forked
from this larger process would inherit its high-water mark).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

import xreg
from xreg import io
from xreg.cli import main as xreg_main


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


def io_floor(source, output):
    with io._zarr_quietly():
        xr.open_zarr(source).to_zarr(output)


def in_memory(source, output):
    with io._zarr_quietly():
        movie = xr.open_zarr(source)["movie"].load()
    ref = movie.reg.reference()
    shifts = movie.reg.estimate(ref)
    movie.reg.apply(shifts)


def lazy(source, output):
    with io._zarr_quietly():
        movie = xr.open_zarr(source)["movie"]
    ref = movie.reg.reference()
    fixed, shifts = movie.reg.register(ref)
    io.to_zarr(xr.Dataset({"movie": fixed, "displacement": shifts}), output)


def command(source, output):
    if xreg_main(["register", str(source), str(output), "--quiet"]) != 0:
        raise SystemExit("xreg register failed")


def reference_only(source, output):
    with io._zarr_quietly():
        movie = xr.open_zarr(source)["movie"]
    movie.reg.reference()


PATHS = {
    "`xreg register` (Zarr in, Zarr out)": command,
    "lazy one pass: `register(ref)`, both to Zarr": lazy,
    "in memory: load, reference, estimate, apply": in_memory,
    "I/O floor: `open_zarr(IN).to_zarr(OUT)`": io_floor,
    "(reference() alone, from the Zarr store)": reference_only,
}


def peak_memory(source: Path, output: Path) -> tuple[float, float]:
    """Wall time (s) and peak RSS (GB) of `xreg register` in a fresh process (GNU time)."""
    start = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "xreg", "register"]
        + [str(source), str(output), "--quiet"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"xreg register failed:\n{result.stderr}")
    return seconds, int(result.stderr.strip().splitlines()[-1]) / 1024**2  # KiB -> GiB


def ensure_store(source: Path, n_frames: int) -> None:
    """Generate the ``n_frames`` store at ``source`` unless it is there already."""
    truth_file = source / "truth.npy"
    if not (truth_file.exists() and len(np.load(truth_file)) == n_frames):
        shutil.rmtree(source, ignore_errors=True)  # (a --folder's store is kept)
        # In a child process, so this one stays small.
        subprocess.run(
            [sys.executable, __file__, "--generate", str(source), "--frames", str(n_frames)],
            check=True,
        )


def rounds(args, source: Path, output: Path) -> None:
    """The paths in turns, the table, the reference's share and the accuracy."""
    times = {name: [] for name in PATHS}
    for round_ in range(args.rounds):
        for name, path in PATHS.items():
            shutil.rmtree(output, ignore_errors=True)
            os.sync()  # the last path's writes flushed: each path starts on an idle disk
            start = time.perf_counter()
            path(source, output)
            times[name].append(time.perf_counter() - start)
            print(f"round {round_ + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    truth = np.load(source / "truth.npy")
    xreg_main(["register", str(source), str(output), "--quiet", "--overwrite"])
    error = io.read_displacement(output).values - truth
    error -= np.median(error, axis=0)
    rms = float(np.sqrt(np.mean(error**2)))

    best = {name: min(seconds) for name, seconds in times.items()}
    rate = {name: args.frames / s for name, s in best.items()}
    names = list(PATHS)
    print()
    print(f"{args.frames} frames of 512 x 512 float32, {args.rounds} rounds in turns")
    print()
    print("| path | best s | frames/s | x in-memory | x I/O floor |")
    print("|---|---:|---:|---:|---:|")
    for name in names[:4]:
        print(
            f"| {name} | {best[name]:.1f} | {rate[name]:.0f} "
            f"| {rate[name] / rate[names[2]]:.2f} | {rate[name] / rate[names[3]]:.2f} |"
        )
    print()
    share = best[names[4]] / best[names[0]]
    shares = [100 * r / c for r, c in zip(times[names[4]], times[names[0]], strict=True)]
    print(
        f"reference(): {best[names[4]]:.2f} s, {100 * share:.1f} % of the register run "
        f"(rounds: {', '.join(f'{s:.1f}' for s in shares)} %); "
        f"RMS error of `xreg register` against the truth: {rms:.3f} px"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-frames", type=int, default=0)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        return generate(args.generate, args.frames)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="xreg-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    source, output = folder / "movie.zarr", folder / "out.zarr"
    try:
        if args.rounds:
            ensure_store(source, args.frames)
            rounds(args, source, output)
        if args.memory_frames:
            source = folder / f"movie-{args.memory_frames}.zarr"
            ensure_store(source, args.memory_frames)
            size = sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) / 1e9
            shutil.rmtree(output, ignore_errors=True)
            seconds, gigabytes = peak_memory(source, output)
            print(
                f"`xreg register` on {args.memory_frames} frames ({size:.1f} GB store): "
                f"peak RSS {gigabytes:.2f} GB, {args.memory_frames / seconds:.0f} frames/s "
                "(fresh process, start-up included)"
            )
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
