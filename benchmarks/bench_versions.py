"""Rigid estimate rate and accuracy of this checkout against an earlier commit, in one run.

    python benchmarks/bench_versions.py [--against main] [--frames 200] [--size 512] [--pairs 5]

``git archive`` copies the ``xreg`` package of ``--against`` into a temporary
directory; then, taking turns (A B A B ...), a fresh Python process imports one
version or the other and times ``core.estimate_shifts`` (the accessor's default
settings: ``clip=(1, 99)``, ``upsample_factor=10``, all cores; best of 3) on the
same movie as ``bench_rigid.py`` (512 x 512, Poisson noise, known reference);
``--method piecewise`` times ``core.estimate_piecewise`` instead (128 px blocks,
overlap 0.5; the RMS error is then the rigid part's).  The
ratio is taken pair by pair, so a slow spell of a shared machine hits both sides.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from bench_rigid import make_movie

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

TIMER = """
import json, sys, time
import numpy as np
from xreg import core
frames = np.load(sys.argv[1]); reference = np.load(sys.argv[2]); truth = np.load(sys.argv[3])
bounds = core.clip_bounds(reference, (1, 99))
if sys.argv[4] == "piecewise":
    plan = core.prepare_piecewise(reference, block_size=(128, 128), overlap=0.5, clip=bounds)
    estimate = lambda: core.estimate_piecewise(frames, plan, upsample_factor=10)[0]
else:
    plan = core.prepare_reference(reference, clip=bounds)
    estimate = lambda: core.estimate_shifts(frames, plan, upsample_factor=10)
times = []
for _ in range(3):
    start = time.perf_counter()
    out = estimate()
    times.append(time.perf_counter() - start)
rms = float(np.sqrt(np.mean((out[:, :-1] - truth) ** 2)))
print(json.dumps({"seconds": min(times), "rms": rms, "xreg": core.__file__}))
"""


def run(package_root, files, method):
    env_path = {"PYTHONPATH": str(package_root)}
    out = subprocess.run(
        [sys.executable, "-c", TIMER, *map(str, files), method],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, **env_path},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--method", choices=["rigid", "piecewise"], default="rigid")
    args = parser.parse_args()

    reference, frames, truth = make_movie(args.frames, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.against, "xreg"],
            capture_output=True,
            check=True,
        ).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp / "old", filter="data")
        files = [tmp / "frames.npy", tmp / "reference.npy", tmp / "truth.npy"]
        for path, array in zip(files, (frames, reference, truth), strict=True):
            np.save(path, array)
        rows = {"this checkout": [], args.against: []}
        for i in range(args.pairs):
            order = [("this checkout", REPO), (args.against, tmp / "old")]
            for name, root in order if i % 2 == 0 else order[::-1]:
                rows[name].append(run(root, files, args.method))
    new, old = rows["this checkout"], rows[args.against]
    ratios = [o["seconds"] / n["seconds"] for n, o in zip(new, old, strict=True)]
    print(f"{args.method}: {args.frames} x {args.size} x {args.size}, {args.pairs} pairs")
    print("| version | frames/s (median) | RMS error (px) |")
    print("|---|---:|---:|")
    for name, runs in rows.items():
        seconds = np.median([r["seconds"] for r in runs])
        print(f"| {name} | {args.frames / seconds:.0f} | {runs[0]['rms']:.4f} |")
    print(
        f"rate of this checkout / {args.against}: median of pairs {np.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
