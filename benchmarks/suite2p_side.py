"""suite2p's registration of a movie saved by an xreg benchmark, in suite2p's own environment.

    <python with suite2p> benchmarks/suite2p_side.py DIRECTORY
    <python with suite2p> benchmarks/suite2p_side.py shifts DIRECTORY

Get such a Python with ``benchmarks/make_suite2p_env.sh`` (it builds ``.suite2p-venv``
at the repository root; the Python is then ``.suite2p-venv/bin/python``).

Default mode (``bench_piecewise.py --suite2p``): reads ``movie.npy`` (frames,
float32) and ``reference.npy`` from DIRECTORY, runs
``suite2p.registration.register.register_frames`` on the CPU, rigid and non-rigid
(128 x 128 blocks, suite2p's defaults otherwise), and writes, for each,
``suite2p_<kind>.npy`` (the registered movie) and one JSON line on stdout with the
wall time.

``shifts`` mode (rigid displacement estimate only): reads ``frames.npy`` (T, Y, X)
and ``reference.npy`` (Y, X), estimates each frame's rigid displacement as
``register_frames`` does (the reference's masks and smoothed spectrum, then
``compute_shifts`` on batches, with the registration defaults of
``suite2p.default_settings()``: 1-99 % clipping, smoothing sigma 1.15, taper 3.45,
max shift 10 % of the smaller side), and writes ``suite2p_shifts.npy`` (T, 2)
float64 in xreg's convention: a frame equal to ``scipy.ndimage.shift(reference, d)``
has displacement ``d`` (suite2p moves each frame by minus its estimate).  suite2p's
rigid estimate is whole pixels: its ``subpixel`` setting applies to non-rigid blocks
only.  It prints one JSON line: suite2p's version and the wall time of the estimate
alone (reference preparation and all batches; no loading, saving or imports).
Intensities must be on suite2p's scale (counts, as in its int16 files): it casts the
reference's percentile clipping bounds to int16, so images scaled to [0, 1] would be
clipped flat; that case is refused.

It imports nothing from xreg, so it runs in an environment that has suite2p and not
xreg; xreg never depends on suite2p.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import suite2p
import torch
from suite2p.registration.register import (
    compute_filters_and_norm,
    compute_shifts,
    register_frames,
)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "shifts":
        shifts(Path(sys.argv[2]))
    else:
        register(Path(sys.argv[1]))


def register(directory):
    """Register ``movie.npy`` rigidly and non-rigidly; save both, print the timings."""
    movie = np.load(directory / "movie.npy")
    reference = np.load(directory / "reference.npy").astype(np.float32)
    timings = {"suite2p": suite2p.version, "torch_threads": torch.get_num_threads()}
    for kind, nonrigid in (("rigid", False), ("nonrigid", True)):
        out = np.empty_like(movie)
        start = time.perf_counter()
        register_frames(
            movie,
            reference,
            f_align_out=out,
            nonrigid=nonrigid,
            block_size=(128, 128),
            device=torch.device("cpu"),
        )
        timings[kind] = time.perf_counter() - start
        np.save(directory / f"suite2p_{kind}.npy", out)
    print(json.dumps(timings))


def shifts(directory):
    """Estimate the rigid displacement of ``frames.npy`` to ``reference.npy`` only."""
    frames = np.load(directory / "frames.npy").astype(np.float32, copy=False)
    reference = np.load(directory / "reference.npy").astype(np.float32)
    settings = suite2p.default_settings()["registration"]
    low, high = np.percentile(reference, [1, 99]).astype(np.int16)  # as suite2p clips
    if settings["norm_frames"] and high <= low:
        sys.exit(
            f"suite2p_side.py: the reference's 1-99 % range casts to int16 as {low}..{high}; "
            "suite2p would clip every pixel to one value: give counts, not [0, 1] intensities"
        )
    device = torch.device("cpu")
    batch = settings["batch_size"]
    estimates = np.empty((len(frames), 2))
    start = time.perf_counter()
    masks = compute_filters_and_norm(
        reference,
        norm_frames=settings["norm_frames"],
        spatial_smooth=settings["smooth_sigma"],
        spatial_taper=settings["spatial_taper"],
        block_size=None,  # rigid only: no block masks
        device=device,
    )
    for first in range(0, len(frames), batch):
        chunk = torch.from_numpy(frames[first : first + batch]).to(device)
        ymax, xmax = compute_shifts(
            masks,
            chunk.clone(),
            maxregshift=settings["maxregshift"],
            smooth_sigma_time=settings["smooth_sigma_time"],
        )[:2]
        # suite2p rolls a frame by (-ymax, -xmax) onto the reference, so (ymax, xmax) is
        # the displacement of the frame from the reference: xreg's sign.
        estimates[first : first + batch, 0] = ymax.cpu().numpy()
        estimates[first : first + batch, 1] = xmax.cpu().numpy()
    seconds = time.perf_counter() - start
    np.save(directory / "suite2p_shifts.npy", estimates)
    print(
        json.dumps(
            {
                "suite2p": suite2p.version,
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "frames": len(frames),
                "seconds": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
