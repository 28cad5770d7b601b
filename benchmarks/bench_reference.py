"""Registration without a known reference, on the large preset.

    python benchmarks/bench_reference.py [--frames 1000]

A 512 x 512 two-photon-like movie (neurons with calcium transients over a
textured background, shot noise) drifts smoothly by up to 15 px, with sudden
jumps.  The same estimator is run with three references, in one run:
xreg's own (`reference=None`), the plain mean of the moving movie, and the mean
of the unmoved movie (unknowable in practice: the best case).  Errors are RMS
against the truth after removing one constant offset (a self-built reference
sits at the movie's median position).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import xreg


def rms_up_to_offset(estimate, truth):
    error = estimate.values - truth.values
    error = error - np.median(error, axis=0)
    return float(np.sqrt(np.mean(error**2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args()
    still = xreg.datasets.large(n_frames=args.frames, chunks=100)
    moved, truth = xreg.datasets.add_motion(still, max_drift=15, jumps=4, subpixel=True, seed=7)
    moved = moved.persist()
    print(f"movie: {args.frames} x 512 x 512 int16, drift up to 15 px plus 4 jumps")
    print()
    print("| reference | RMS error (px) | seconds (reference + estimate) |")
    print("|---|---:|---:|")
    for name, make in [
        ("xreg `reference=None` (built from 200 sampled frames)", lambda: None),
        ("plain mean of the moving movie", lambda: moved.mean("time").compute()),
        ("mean of the unmoved movie (best case)", lambda: still.mean("time").compute()),
    ]:
        start = time.perf_counter()
        shifts = moved.reg.estimate(make(), upsample_factor=20)
        seconds = time.perf_counter() - start
        print(f"| {name} | {rms_up_to_offset(shifts, truth):.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
