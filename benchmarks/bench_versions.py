"""Rigid estimate rate and accuracy of this checkout against an earlier commit, in one run.

    python benchmarks/bench_versions.py [--against main [--against COMMIT ...]]
        [--frames 200] [--size 512] [--pairs 5]

``git archive`` copies the ``xreg`` package of each ``--against`` into a temporary
directory; then, taking turns (A B A B ..., or A B C, B C A, C A B ... with more
versions), a fresh Python process imports one version and times ``core.estimate_shifts``
(the accessor's default settings: ``clip=(1, 99)``, ``upsample_factor=10``, all cores;
best of 3; where the version has it, the noise model fitted on the first frames, which
like the plan is made before the clock starts) on the same movie as ``bench_rigid.py``
(512 x 512, Poisson noise, known reference); ``--method piecewise`` times
``core.estimate_piecewise`` instead (128 px blocks, overlap 0.5; the RMS error is then
the rigid part's). The ratio to the first ``--against`` is taken round by round, so a
slow spell of a shared machine hits both sides. It is printed for the rate (wall clock)
and for the CPU seconds (every thread's): on a busy machine the second moves less, as it
does not count time spent waiting for a core.
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
import inspect, json, sys, time
import numpy as np
from xreg import core
frames = np.load(sys.argv[1]); reference = np.load(sys.argv[2]); truth = np.load(sys.argv[3])
piecewise = sys.argv[4] == "piecewise"
blocks = {"block_size": (128, 128) if piecewise else None, "overlap": 0.5 if piecewise else None}
try:  # the accessor's own plan, with its default weights, where the version has one
    from xreg import _xarray, accessor
    accessor_plan = getattr(_xarray, "weighted_plan", None)
except ImportError:
    accessor_plan = None
if accessor_plan is not None:
    defaults = inspect.signature(accessor.RegAccessor.estimate).parameters
    weights = {"weights": defaults["weights"].default} if "weights" in defaults else {}
    plan = accessor_plan(
        reference, frames[: core.noise_sample_size], clip=(1, 99), piecewise=piecewise,
        whole_frame=False, max_shift=None, **blocks, **weights
    )
else:  # older versions: the core's plan, as their accessor made it
    bounds, weighting = core.clip_bounds(reference, (1, 99)), {}
    if hasattr(core, "fit_noise"):  # the accessor's noise model, once per movie (issue 18)
        noise = core.fit_noise(frames[: core.noise_sample_size])
        if noise.matters(reference):
            weighting = {"noise": noise}
    plan = (
        core.prepare_piecewise(reference, **blocks, clip=bounds, **weighting)
        if piecewise
        else core.prepare_reference(reference, clip=bounds, **weighting)
    )
if piecewise:
    estimate = lambda: core.estimate_piecewise(frames, plan, upsample_factor=10)[0]
else:
    estimate = lambda: core.estimate_shifts(frames, plan, upsample_factor=10)
times, cpu = [], []
for _ in range(3):
    start, start_cpu = time.perf_counter(), time.process_time()
    out = estimate()
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
rms = float(np.sqrt(np.mean((out[:, :-1] - truth) ** 2)))
print(json.dumps({"seconds": min(times), "cpu": min(cpu), "rms": rms, "xreg": core.__file__}))
"""


def run(package_root, files, method):
    env_path = {"PYTHONPATH": str(package_root)}
    out = subprocess.run(
        [sys.executable, "-c", TIMER, *map(str, files), method],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, **env_path},
        # Not the caller's directory: ``python -c`` puts it first on the path, and from
        # the repository's root every version would import this checkout's package.
        cwd=package_root,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--against",
        action="append",
        help="a commit (default main); give it again for more: the first is the baseline",
    )
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=5, help="rounds, each version once a round")
    parser.add_argument("--method", choices=["rigid", "piecewise"], default="rigid")
    args = parser.parse_args()
    against = args.against or ["main"]

    reference, frames, truth = make_movie(args.frames, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        versions = {"this checkout": REPO}
        for index, commit in enumerate(against):
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", commit, "xreg"],
                capture_output=True,
                check=True,
            ).stdout
            root = tmp / f"old{index}"
            tarfile.open(fileobj=io.BytesIO(archive)).extractall(root, filter="data")
            versions[commit] = root
        files = [tmp / "frames.npy", tmp / "reference.npy", tmp / "truth.npy"]
        for path, array in zip(files, (frames, reference, truth), strict=True):
            np.save(path, array)
        rows = {name: [] for name in versions}
        order = list(versions.items())
        for i in range(args.pairs):
            # Each round starts with another version, so none always runs first.
            shift = i % len(order)
            for name, root in order[shift:] + order[:shift]:
                rows[name].append(run(root, files, args.method))
    baseline = against[0]
    print(f"{args.method}: {args.frames} x {args.size} x {args.size}, {args.pairs} rounds")
    print("| version | frames/s (median) | RMS error (px) |")
    print("|---|---:|---:|")
    for name, runs in rows.items():
        seconds = np.median([r["seconds"] for r in runs])
        print(f"| {name} | {args.frames / seconds:.0f} | {runs[0]['rms']:.4f} |")
    for name, runs in rows.items():
        if name == baseline:
            continue
        pairs = list(zip(runs, rows[baseline], strict=True))
        ratios = [o["seconds"] / n["seconds"] for n, o in pairs]
        cpu_ratios = [o["cpu"] / n["cpu"] for n, o in pairs]
        print(
            f"rate of {name} / {baseline}: median of rounds {np.median(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f}); CPU seconds of {baseline} / "
            f"{name} (all threads): {np.median(cpu_ratios):.2f} "
            f"(min {min(cpu_ratios):.2f}, max {max(cpu_ratios):.2f})"
        )


if __name__ == "__main__":
    main()
