"""suite2p's registration of a movie saved by bench_piecewise.py, in suite2p's own environment.

    <python with suite2p> benchmarks/suite2p_side.py DIRECTORY

Reads ``movie.npy`` (frames, float32) and ``reference.npy`` from DIRECTORY, runs
``suite2p.registration.register.register_frames`` on the CPU, rigid and non-rigid
(128 x 128 blocks, suite2p's defaults otherwise), and writes, for each,
``suite2p_<kind>.npy`` (the registered movie) and one JSON line on stdout with the
wall time.  It imports nothing from xreg, so it runs in an environment that has
suite2p and not xreg; xreg never depends on suite2p.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import suite2p
import torch
from suite2p.registration.register import register_frames


def main():
    directory = Path(sys.argv[1])
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


if __name__ == "__main__":
    main()
