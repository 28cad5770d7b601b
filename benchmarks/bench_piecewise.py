"""Piecewise-rigid vs rigid registration: speed and accuracy in one run.

    python benchmarks/bench_piecewise.py [--frames 100] [--size 512] [--block 128]
        [--repeat 3] [--suite2p PYTHON]

A 512 x 512 movie is warped frame by frame by a smooth random displacement field
(up to 5 px, different in every frame) with shot noise.  Both paths estimate and
apply on a Dask-backed copy (2 threads) and are timed end to end (estimate +
apply, computed; the best of ``--repeat`` runs).  Reported: frames/s, the
piecewise/rigid rate ratio, the RMS error of the block displacements at the
block centres, and the registered movie's mean correlation with the reference
for each path.

With ``--suite2p PYTHON`` (a Python that has suite2p, in an environment of its own:
suite2p is never an xreg dependency), the same movie is also registered by
suite2p, rigid and non-rigid with 128 px blocks (``suite2p_side.py``), in the same
run, and its rows join the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage

import xreg


def correlation(registered, reference, margin=40):
    inner = {"y": slice(margin, -margin), "x": slice(margin, -margin)}
    target = xr.DataArray(reference, dims=("y", "x")).isel(inner)
    return float(xr.corr(registered.isel(inner), target, dim=["y", "x"]).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3, help="xreg runs per path; best kept")
    parser.add_argument("--suite2p", metavar="PYTHON", help="a Python with suite2p installed")
    args = parser.parse_args()

    still = xreg.datasets.large(n_frames=1, shape=(args.size, args.size)).isel(time=0)
    reference = ndimage.gaussian_filter(still.values.astype(float), 1.0)
    clean = xr.DataArray(np.stack([reference] * args.frames), dims=("time", "y", "x"))
    moved, field = xreg.datasets.add_nonrigid_motion(clean, max_shift=5, seed=1)
    noisy = np.random.default_rng(2).poisson(np.maximum(moved.values, 0)).astype(np.float32)
    movie = moved.copy(data=noisy).chunk(time=25)
    n = args.frames

    def rigid():
        shifts = movie.reg.estimate(reference)
        return shifts, movie.reg.apply(shifts).compute()

    def piecewise():
        shifts = movie.reg.estimate(reference, method="piecewise", block_size=args.block)
        return shifts, movie.reg.apply(shifts).compute()

    rows = {}
    for name, run in (("rigid", rigid), ("piecewise", piecewise)):
        seconds = []
        for _ in range(args.repeat):  # best of a few: a short run is easily disturbed
            start = time.perf_counter()
            shifts, registered = run()
            seconds.append(time.perf_counter() - start)
        rows[name] = (min(seconds), shifts, registered)

    shifts = rows["piecewise"][1]
    cy = np.rint(shifts.block_y.values).astype(int)
    cx = np.rint(shifts.block_x.values).astype(int)
    truth = np.moveaxis(field.values[:, :, cy][:, :, :, cx], 1, -1)
    block_rms = float(np.sqrt(np.mean((shifts.values - truth) ** 2)))
    print(
        f"movie: {n} x {args.size} x {args.size} float32, blocks {args.block} px, overlap 0.5 "
        f"({shifts.sizes['block_y']} x {shifts.sizes['block_x']}), Dask 2 threads"
    )
    print(f"piecewise block RMS error at block centres: {block_rms:.3f} px")
    print()
    print("| path | estimate+apply frames/s | rate vs rigid | correlation with reference |")
    print("|---|---:|---:|---:|")
    for name, (seconds, _, registered) in rows.items():
        print(
            f"| {name} | {n / seconds:.1f} | {rows['rigid'][0] / seconds:.2f} | "
            f"{correlation(registered, reference):.4f} |"
        )
    if args.suite2p:
        for name, seconds, registered in suite2p_rows(args.suite2p, movie, reference):
            print(
                f"| {name} | {n / seconds:.1f} | {rows['rigid'][0] / seconds:.2f} | "
                f"{correlation(registered, reference):.4f} |"
            )
    print(f"| unregistered | | | {correlation(movie.compute(), reference):.4f} |")


def suite2p_rows(python, movie, reference):
    """Time suite2p on the same frames in its own interpreter; (name, seconds, registered)."""
    with tempfile.TemporaryDirectory() as directory:
        np.save(Path(directory) / "movie.npy", movie.values)
        np.save(Path(directory) / "reference.npy", reference)
        script = Path(__file__).with_name("suite2p_side.py")
        output = subprocess.run(
            [python, str(script), directory], capture_output=True, text=True, check=True
        ).stdout
        timings = json.loads(output.strip().splitlines()[-1])
        for kind in ("rigid", "nonrigid"):
            registered = xr.DataArray(
                np.load(Path(directory) / f"suite2p_{kind}.npy"), dims=movie.dims
            )
            yield f"suite2p {timings['suite2p']} {kind}", timings[kind], registered


if __name__ == "__main__":
    main()
