"""Peak memory of `estimate` and `apply` on a 1,000-frame 512 x 512 movie, numpy- and
Dask-backed, and how much each option adds.

    python benchmarks/bench_memory.py [--frames 1000] [--folder DIR]

The movie (float32, drift up to 10 px) is written once to an uncompressed Zarr store.
Each case then runs in a fresh Python process whose peak resident memory GNU time
reports (a child forked from this process would inherit its high-water mark):

- numpy-backed: the case loads the whole movie into memory (``.load()``), then calls
  the method; ``apply``'s result is a second in-memory movie.
- Dask-backed: the movie stays lazy (100-frame chunks); ``estimate`` computes the small
  table, ``apply`` is streamed into a new Zarr store (what a run larger than memory does).

Reported per case: the process's peak RSS; the RSS just before the call (Python, the
libraries and, numpy-backed, the movie); and what the call itself added at its peak
(Linux's high-water mark, reset just before the call through /proc/self/clear_refs), also
as a factor of the movie's size (float32).  Memory does not depend on the machine's load,
so these figures hold on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SHAPE = (512, 512)
CHUNK = 100
NAN_FRAMES = slice(100, 140)  # blanked frames (NaN): 4 % of a 1,000-frame movie

# (name, backend, method, options): the options each of the cases adds.
CASES = [
    ("estimate", "numpy", "estimate", {}),
    ("estimate, smooth=5", "numpy", "estimate", {"smooth": 5}),
    ("estimate, NaN frames", "numpy", "estimate", {"nan": True}),
    ("estimate, reference=None", "numpy", "estimate", {"reference": None}),
    ("estimate, piecewise", "numpy", "estimate", {"method": "piecewise"}),
    ("apply", "numpy", "apply", {}),
    ("apply, order=3", "numpy", "apply", {"order": 3}),
    ("apply, piecewise", "numpy", "apply", {"piecewise": True}),
    ("estimate", "dask", "estimate", {}),
    ("estimate, smooth=5", "dask", "estimate", {"smooth": 5}),
    ("estimate, NaN frames", "dask", "estimate", {"nan": True}),
    ("estimate, reference=None", "dask", "estimate", {"reference": None}),
    ("estimate, piecewise", "dask", "estimate", {"method": "piecewise"}),
    ("apply (to Zarr)", "dask", "apply", {}),
    ("apply (to Zarr), order=3", "dask", "apply", {"order": 3}),
    ("apply (to Zarr), piecewise", "dask", "apply", {"piecewise": True}),
]


def generate(folder: Path, n_frames: int) -> None:
    """The movie, its reference, rigid displacements and piecewise ones (from the truth)."""
    import xreg
    from xreg import io

    movie = xreg.datasets.large(n_frames=n_frames, shape=SHAPE, chunks=CHUNK)
    moved, truth = xreg.datasets.add_motion(movie, max_drift=10, subpixel=True, seed=1)
    io.to_zarr(
        moved.astype(np.float32).to_dataset(name="movie"),
        folder / "movie.zarr",
        mode="w",
        encoding={"movie": {"compressors": None}},
    )
    np.save(folder / "reference.npy", movie.isel(time=slice(0, 20)).mean("time").values)
    io.write_displacement(truth, folder / "rigid.nc", overwrite=True)
    # Piecewise displacements of a few frames, tiled to the movie's length: apply's
    # memory does not depend on their values.
    few = moved.isel(time=slice(0, 8)).astype(np.float32).compute()
    blocks = few.reg.estimate(np.load(folder / "reference.npy"), method="piecewise")
    tiled = blocks.isel(time=np.arange(n_frames) % 8).assign_coords(time=moved.time.values)
    io.write_displacement(tiled, folder / "blocks.nc", overwrite=True)


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def case(folder: Path, backend: str, method: str, options: dict) -> None:
    """One measurement, in its own process (see ``run``): prints, as JSON, the RSS just
    before the call and the peak RSS during it."""
    import gc

    import xarray as xr

    import xreg  # noqa: F401  (the accessor)
    from xreg import io

    options = dict(options)
    movie = xr.open_zarr(folder / "movie.zarr")["movie"]
    if backend == "numpy":
        movie = movie.load()
    if options.pop("nan", False):
        if backend == "numpy":
            movie[NAN_FRAMES] = np.nan  # in place: no second copy of the movie
        else:
            blank = xr.zeros_like(movie.time, dtype=bool)
            blank[NAN_FRAMES] = True
            movie = movie.where(~blank)
    reference = options.pop("reference", np.load(folder / "reference.npy"))
    piecewise = options.pop("piecewise", False)
    shifts = io.read_displacement(folder / ("blocks.nc" if piecewise else "rigid.nc"))
    shifts = shifts.assign_coords(time=movie.time)
    gc.collect()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts here
    if method == "estimate":
        result = movie.reg.estimate(reference, **options)
        assert result.sizes["time"] == movie.sizes["time"]
    elif method == "apply":
        fixed = movie.reg.apply(shifts, **options)
        if backend == "numpy":
            assert fixed.chunks is None and fixed.shape == movie.shape
        else:
            out = folder / "fixed.zarr"
            io.to_zarr(fixed.to_dataset(name="movie"), out, mode="w")
            shutil.rmtree(out)
    print(json.dumps({"before": before, "peak": _status("VmHWM")}))


def run(folder: Path, backend: str, method: str, options: dict) -> dict:
    """GiB: the process's peak RSS (GNU time), the RSS before the call and the call's
    peak, for one case in a new process."""
    command = [
        sys.executable,
        __file__,
        "--case",
        json.dumps([str(folder), backend, method, options]),
    ]
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{backend} {method} {options} failed:\n{result.stderr}")
    inside = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "process": int(result.stderr.strip().splitlines()[-1]) / 1024**2,  # KiB -> GiB
        "before": inside["before"] / 1024**3,
        "call": inside["peak"] / 1024**3,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        folder, backend, method, options = json.loads(args.case)
        return case(Path(folder), backend, method, options)
    if args.generate:
        return generate(args.generate, args.frames)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="xreg-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        # In a child process, so that this one stays small.
        subprocess.run(
            [sys.executable, __file__, "--generate", str(folder), "--frames", str(args.frames)],
            check=True,
        )
        data_gib = args.frames * np.prod(SHAPE) * 4 / 1024**3
        print(f"movie: {args.frames} x {SHAPE[0]} x {SHAPE[1]} float32 = {data_gib:.2f} GiB\n")
        print(
            "| backend | case | process peak RSS (GiB) | RSS before the call (GiB) "
            "| call's peak above it (GiB) | x movie |"
        )
        print("|---|---|---:|---:|---:|---:|")
        for name, backend, method, options in CASES:
            m = run(folder, backend, method, options)
            added = max(0.0, m["call"] - m["before"])
            print(
                f"| {backend} | {name} | {m['process']:.2f} | {m['before']:.2f} "
                f"| {added:.2f} | {added / data_gib:.2f} |",
                flush=True,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
