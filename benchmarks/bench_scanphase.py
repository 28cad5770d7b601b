"""Scan phase: the cost of estimating and correcting it, next to the rigid path, in one run.

    python benchmarks/bench_scanphase.py [--frames 1000] [--size 512] [--repeats 3]

A float32 movie of 512 x 512 frames (a two-photon-like field of view moved by known
subpixel shifts, odd lines sampled at ``x + 1.37``, shot noise; 100 distinct frames
repeated to the length asked) is timed, numpy-backed, for

(a) the rigid path: ``movie.reg.estimate(reference)`` and ``movie.reg.apply(shifts)``;
(b) the scan phase: ``movie.reg.scan_phase()`` (per movie, 200 sampled frames),
    ``movie.reg.correct_scan_phase(offset)`` (every frame), and
    ``movie.reg.scan_phase(per="frame")`` (every frame).

The rounds take turns (a, b, a, b, ...) so that a slow spell of a shared machine hits
both; each row is its best round.  It prints seconds, frames/s, each row's cost as a
fraction of the rigid estimate + apply, and the offset's error.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import xarray as xr
from scipy import ndimage

import xreg

OFFSET = 1.37


def make_movie(n_frames, size, seed=0, distinct=100):
    """A clean reference and ``n_frames`` noisy frames with motion and the scan phase."""
    scene = xreg.datasets.large(n_frames=1, shape=(size + 40, size + 40), seed=seed)
    image = ndimage.gaussian_filter(scene.isel(time=0).values.astype(np.float64), 1.0)
    coefficients = ndimage.spline_filter(image, order=3)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 20
    odd = (np.arange(size) % 2 == 1)[:, None]
    shifts = rng.uniform(-6, 6, (distinct, 2))
    frames = np.empty((distinct, size, size), np.float32)
    for i, (dy, dx) in enumerate(shifts):
        sampled = ndimage.map_coordinates(
            coefficients, [y - dy, x - dx + np.where(odd, OFFSET, 0.0)], order=3, prefilter=False
        )
        frames[i] = rng.poisson(np.maximum(sampled, 0))
    repeat = -(-n_frames // distinct)
    reference = image[20 : 20 + size, 20 : 20 + size]
    return reference, np.tile(frames, (repeat, 1, 1))[:n_frames]


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    reference, frames = make_movie(args.frames, args.size)
    movie = xr.DataArray(frames, dims=("time", "y", "x"), name="movie")
    n = len(frames)
    print(f"movie: {n} x {args.size} x {args.size} float32, numpy-backed, {os.cpu_count()} cores")

    best: dict[str, float] = {}
    results = {}

    def keep(name, seconds, result=None):
        best[name] = min(best.get(name, np.inf), seconds)
        if result is not None:
            results[name] = result

    for _ in range(args.repeats):
        seconds, shifts = timed(lambda: movie.reg.estimate(reference))
        keep("rigid estimate", seconds, shifts)
        seconds, _ = timed(lambda s=shifts: movie.reg.apply(s).values)
        keep("rigid apply", seconds)
        seconds, offset = timed(lambda: movie.reg.scan_phase())
        keep("scan phase estimate, per movie (200 sampled frames)", seconds, offset)
        seconds, _ = timed(lambda o=offset: movie.reg.correct_scan_phase(o).values)
        keep("scan phase correct", seconds)
        seconds, per_frame = timed(lambda: movie.reg.scan_phase(per="frame"))
        keep("scan phase estimate, per frame", seconds, per_frame)

    rigid = best["rigid estimate"] + best["rigid apply"]
    phase = best["scan phase estimate, per movie (200 sampled frames)"] + best["scan phase correct"]
    print()
    print("| step | seconds | frames/s | x rigid estimate + apply |")
    print("|---|---:|---:|---:|")
    totals = [
        ("rigid estimate + apply", rigid),
        ("scan phase estimate (per movie) + correct", phase),
    ]
    for name, seconds in [*best.items(), *totals]:
        print(f"| {name} | {seconds:.2f} | {n / seconds:.0f} | {seconds / rigid:.2f} |")
    per_movie = float(results["scan phase estimate, per movie (200 sampled frames)"])
    per_frame = results["scan phase estimate, per frame"].values
    print()
    print(
        f"offset {OFFSET}: per movie {per_movie:.3f} (error {per_movie - OFFSET:+.3f} px); "
        f"per frame RMS error {np.sqrt(np.nanmean((per_frame - OFFSET) ** 2)):.3f} px"
    )


if __name__ == "__main__":
    main()
