"""Piecewise-rigid vs rigid registration: speed and accuracy in one run.

    python benchmarks/bench_piecewise.py [--frames 100] [--size 512] [--block 128]
        [--overlap 0.5] [--repeat 3] [--suite2p PYTHON]

Two 512 x 512 movies, each frame warped by its own smooth random displacement
field (up to 5 px): (1) a still image with shot noise; (2) neurons with calcium
transients over textured background (``xreg.datasets.large``), registered to the
mean of the unmoved movie.  Both xreg paths estimate and apply on a Dask-backed
copy (2 threads) and are timed end to end (estimate + apply, computed; the best
of ``--repeat`` runs, the two paths taking turns).  Reported: frames/s, the rate
relative to xreg's rigid path, the RMS error of the block displacements at the
block centres, and the registered movie's mean correlation with (1) the still
image, (2) the unmoved frames, each frame with its own.  A last line measures what
bounds the piecewise rate, on numpy with two threads: the rigid estimate (which
piecewise contains), the blocks' forward FFTs and the warp, against xreg's rigid
estimate + apply.

With ``--suite2p PYTHON`` (a Python that has suite2p, in an environment of its own:
suite2p is never an xreg dependency), the same movie is also registered by
suite2p, rigid and non-rigid with 128 px blocks (``suite2p_side.py``), in the same
run, and its rows join the table.  Build that environment with
``sh benchmarks/make_suite2p_env.sh`` (then ``--suite2p .suite2p-venv/bin/python``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.fft as sfft
import xarray as xr
from scipy import ndimage

import xreg


def correlation(registered, target, margin=40):
    """Mean over frames of the correlation with ``target`` (an image, or a movie frame by
    frame), away from the border."""
    inner = {"y": slice(margin, -margin), "x": slice(margin, -margin)}
    return float(xr.corr(registered.isel(inner), target.isel(inner), dim=["y", "x"]).mean())


def block_rms(shifts, field):
    """RMS error (per axis) of block displacements against the true field at block centres."""
    cy = np.rint(shifts.block_y.values).astype(int)
    cx = np.rint(shifts.block_x.values).astype(int)
    truth = np.moveaxis(field.values[:, :, cy][:, :, :, cx], 1, -1)
    return float(np.sqrt(np.mean((shifts.values - truth) ** 2)))


def compare(movie, field, reference, target, args):
    """Register ``movie`` both ways (and by suite2p); print a table against ``target``."""
    n = movie.sizes["time"]

    def rigid():
        shifts = movie.reg.estimate(reference)
        return shifts, movie.reg.apply(shifts).compute()

    def piecewise():
        shifts = movie.reg.estimate(
            reference, method="piecewise", block_size=args.block, overlap=args.overlap
        )
        return shifts, movie.reg.apply(shifts).compute()

    best, results = best_in_turns({"xreg rigid": rigid, "xreg piecewise": piecewise}, args)
    rows = {name: (best[name], registered) for name, (_, registered) in results.items()}
    shifts = results["xreg piecewise"][0]
    print(f"piecewise block RMS error at block centres: {block_rms(shifts, field):.3f} px")
    if args.suite2p:
        for name, seconds, registered in suite2p_rows(args.suite2p, movie, reference):
            rows[name] = (seconds, registered)
    rigid_seconds = rows["xreg rigid"][0]
    print()
    print("| path | estimate+apply frames/s | rate vs xreg rigid | correlation |")
    print("|---|---:|---:|---:|")
    for name, (seconds, registered) in rows.items():
        print(
            f"| {name} | {n / seconds:.1f} | {rigid_seconds / seconds:.2f} | "
            f"{correlation(registered, target):.4f} |"
        )
    print(f"| unregistered | | | {correlation(movie.compute(), target):.4f} |")
    print()
    rigid_rate, floor_rate = bound_rates(movie.values, shifts.values, reference, args)
    print(
        f"On numpy (2 threads): xreg rigid estimate+apply {rigid_rate:.1f} frames/s; the "
        f"same rigid estimate + the blocks' forward FFTs + the warp alone {floor_rate:.1f} "
        f"frames/s = {floor_rate / rigid_rate:.2f} x the rigid rate, the most piecewise "
        "could reach if all its other work were free."
    )
    print()


def best_in_turns(steps, args):
    """Each step's best time of ``args.repeat`` runs, the steps taking turns so that a
    slow spell of the machine hits all alike, and each step's last result."""
    seconds = {name: [] for name in steps}
    results = {}
    for _ in range(args.repeat):
        for name, step in steps.items():
            start = time.perf_counter()
            results[name] = step()
            seconds[name].append(time.perf_counter() - start)
    return {name: min(times) for name, times in seconds.items()}, results


def bound_rates(frames, shifts, reference, args):
    """Frames/s, on numpy with 2 threads, of xreg's rigid path (estimate + apply) and of
    the part of the piecewise path that no implementation can skip: the same rigid
    estimate, the forward FFTs of the blocks, and the warp."""
    n = len(frames)
    # The accessor's default clipping, so the rigid estimate is the rigid path's own.
    plan = xreg.core.prepare_piecewise(
        reference,
        block_size=args.block,
        overlap=args.overlap,
        clip=xreg.core.clip_bounds(reference, (1, 99)),
    )
    grid, starts = plan.grid, plan.block_origins
    windows = np.lib.stride_tricks.sliding_window_view(frames, grid.block_size, axis=(1, 2))
    blocks = windows[:, starts[0], starts[1]]  # (frames, blocks, *block_size), cut once
    rigid = xreg.core.estimate_shifts(frames, plan.rigid)[:, :2]
    halves = [slice(0, n // 2), slice(n // 2, None)]

    with ThreadPoolExecutor(2) as pool:
        steps = {
            "rigid estimate": lambda: xreg.core.estimate_shifts(frames, plan.rigid, workers=2),
            "rigid apply": lambda: list(
                pool.map(lambda h: xreg.core.shift_frames(frames[h], rigid[h]), halves)
            ),
            "block FFTs": lambda: [
                sfft.rfftn(blocks[i : i + 4], axes=(2, 3), workers=2) for i in range(0, n, 4)
            ],
            "warp": lambda: list(
                pool.map(lambda h: xreg.core.warp_frames(frames[h], shifts[h], grid), halves)
            ),
        }
        best, _ = best_in_turns(steps, args)
    rigid_path = best["rigid estimate"] + best["rigid apply"]
    floor = best["rigid estimate"] + best["block FFTs"] + best["warp"]
    return n / rigid_path, n / floor


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3, help="xreg runs per path; best kept")
    parser.add_argument("--suite2p", metavar="PYTHON", help="a Python with suite2p installed")
    args = parser.parse_args()
    shape = (args.size, args.size)
    print(
        f"{args.frames} x {args.size} x {args.size} float32 frames, blocks {args.block} px, "
        f"overlap {args.overlap}, xreg on Dask (25-frame chunks, 2 threads)"
    )

    print("\n## 1. A still image, warped frame by frame, shot noise; correlation with it\n")
    still = xreg.datasets.large(n_frames=1, shape=shape).isel(time=0)
    reference = xr.DataArray(
        ndimage.gaussian_filter(still.values.astype(float), 1.0), dims=("y", "x")
    )
    clean = reference.expand_dims(time=args.frames).copy()
    moved, field = xreg.datasets.add_nonrigid_motion(clean, max_shift=5, seed=1)
    noisy = np.random.default_rng(2).poisson(np.maximum(moved.values, 0)).astype(np.float32)
    compare(moved.copy(data=noisy).chunk(time=25), field, reference.values, reference, args)

    print("## 2. Neurons with calcium transients, warped; correlation with the unmoved frames\n")
    unmoved = xreg.datasets.large(n_frames=args.frames, shape=shape).astype(np.float32)
    unmoved = unmoved.drop_vars("time")
    moved, field = xreg.datasets.add_nonrigid_motion(unmoved, max_shift=5, seed=1)
    reference = unmoved.mean("time").values  # the best reference there is
    compare(moved.chunk(time=25), field, reference, unmoved, args)


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
