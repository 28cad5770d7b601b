"""Rigid estimate: xreg against the FFT floor and scikit-image, in one run.

    python benchmarks/bench_rigid.py [--frames 200] [--size 512] [--upsample 20]

One synthetic float32 movie (a two-photon-like field of view moved by known
subpixel shifts with content crossing the border, plus shot noise) is registered
by

(a) the floor: bare batched float32 ``rfft2`` -> product with the reference's
    conjugate transform -> ``irfft2`` -> argmax (integer shifts only; the best of
    a few batch sizes, FFTs on all cores);
(b) ``skimage.registration.phase_cross_correlation`` in a per-frame loop at the
    same upsample factor;
(c) ``movie.reg.estimate(reference, upsample_factor=...)`` on a numpy-backed and
    on a Dask-backed DataArray, and on the numpy-backed one with ``weights="noise"``
    (the opt-in step that weighs pixels by their noise).

It prints frames/s, the ratio of each to the floor and to scikit-image, and the
RMS error of each against the true displacements.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.fft as sfft
import xarray as xr
from scipy import ndimage

import xreg


def make_movie(n_frames, size, seed=0):
    """Clean reference, moved noisy frames (float32) and the true displacements."""
    scene = xreg.datasets.large(n_frames=1, shape=(size, size), seed=seed)
    rng = np.random.default_rng(seed)
    reference = scene.isel(time=0).values.astype(np.float64)
    reference = ndimage.gaussian_filter(reference, 1.0)  # the noise-free look of an average
    truth = rng.uniform(-8, 8, (n_frames, 2))
    frames = np.empty((n_frames, size, size), np.float32)
    for i, shift in enumerate(truth):
        moved = ndimage.shift(reference, shift, order=3, mode="nearest")
        frames[i] = rng.poisson(np.maximum(moved, 0))
    return reference, frames, truth


def best_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def floor(frames, reference, batch, workers):
    """Bare phase-correlation FFT work: integer peak of each frame's cross-correlation."""
    conj = sfft.rfft2(reference.astype(np.float32)).conj()
    peaks = []
    for start in range(0, len(frames), batch):
        spectrum = sfft.rfft2(frames[start : start + batch], workers=workers)
        spectrum *= conj
        correlation = sfft.irfft2(spectrum, s=frames.shape[1:], workers=workers)
        flat = correlation.reshape(len(correlation), -1).argmax(axis=1)
        peaks.append(np.stack(np.unravel_index(flat, frames.shape[1:]), axis=1))
    peaks = np.concatenate(peaks).astype(float)
    size = np.asarray(frames.shape[1:])
    return (peaks + size / 2) % size - size / 2


def rms(estimate, truth):
    return float(np.sqrt(np.mean((np.asarray(estimate) - truth) ** 2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--upsample", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from skimage.registration import phase_cross_correlation

    reference, frames, truth = make_movie(args.frames, args.size)
    n = len(frames)
    cores = os.cpu_count()
    print(
        f"movie: {n} x {args.size} x {args.size} float32, {cores} cores, "
        f"upsample_factor={args.upsample}"
    )

    floor_runs = {}
    for batch in (16, 64, n):
        floor_runs[batch] = best_time(
            lambda b=batch: floor(frames, reference, b, cores), args.repeats
        )
    floor_batch = min(floor_runs, key=lambda b: floor_runs[b][0])
    floor_seconds, floor_shifts = floor_runs[floor_batch]

    def skimage_loop():
        return np.array(
            [
                -phase_cross_correlation(reference, frame, upsample_factor=args.upsample)[0]
                for frame in frames
            ]
        )

    skimage_seconds, skimage_shifts = best_time(skimage_loop, 1)

    movie = xr.DataArray(frames, dims=("time", "y", "x"), name="movie")
    numpy_seconds, xreg_shifts = best_time(
        lambda: movie.reg.estimate(reference, upsample_factor=args.upsample), args.repeats
    )
    weighted_seconds, weighted_shifts = best_time(
        lambda: movie.reg.estimate(reference, upsample_factor=args.upsample, weights="noise"),
        args.repeats,
    )
    lazy = movie.chunk(time=50)
    dask_seconds, dask_shifts = best_time(
        lambda: lazy.reg.estimate(reference, upsample_factor=args.upsample), args.repeats
    )

    # The per-frame overlap estimate (the default) against the fixed window it replaced
    # (issue 18), both through the core on the same frames and reference, taking turns.
    from xreg import core

    bounds = core.clip_bounds(reference, xreg._xarray.CLIP_PERCENTILES)
    plans = {
        kind: core.prepare_reference(reference, clip=bounds, overlap=kind == "overlap")
        for kind in ("fixed", "overlap")
    }
    core_runs = {kind: [] for kind in plans}
    for _ in range(args.repeats):
        for kind, plan in plans.items():
            seconds, shifts = best_time(
                lambda p=plan: core.estimate_shifts(frames, p, upsample_factor=args.upsample), 1
            )
            core_runs[kind].append((seconds, shifts[:, :2]))
    core_best = {kind: min(runs, key=lambda r: r[0]) for kind, runs in core_runs.items()}
    print(
        "per-frame overlap / fixed window, time ratio: "
        f"{core_best['overlap'][0] / core_best['fixed'][0]:.2f}"
    )

    rows = [
        (f"floor: batched rfft2/irfft2/argmax (batch {floor_batch})", floor_seconds, floor_shifts),
        ("xreg core, fixed window (before issue 18)", *core_best["fixed"]),
        ("xreg core, per-frame overlap (the default)", *core_best["overlap"]),
        (
            f"scikit-image phase_cross_correlation loop, up={args.upsample}",
            skimage_seconds,
            skimage_shifts,
        ),
        (
            f"xreg movie.reg.estimate, numpy-backed, up={args.upsample}",
            numpy_seconds,
            xreg_shifts.values,
        ),
        (
            f"xreg movie.reg.estimate, dask-backed (50-frame chunks), up={args.upsample}",
            dask_seconds,
            dask_shifts.values,
        ),
        (
            f'xreg movie.reg.estimate, numpy-backed, up={args.upsample}, weights="noise" (opt-in)',
            weighted_seconds,
            weighted_shifts.values,
        ),
    ]
    print()
    print("| method | frames/s | x floor | x scikit-image | RMS error (px) |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, shifts in rows:
        print(
            f"| {name} | {n / seconds:.0f} | {floor_seconds / seconds:.2f} | "
            f"{skimage_seconds / seconds:.1f} | {rms(shifts, truth):.3f} |"
        )


if __name__ == "__main__":
    main()
