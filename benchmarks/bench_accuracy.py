"""Rigid accuracy against the Cramér-Rao bound, at every light level (issue 18).

    python benchmarks/bench_accuracy.py [--frames 100] [--size 384] [--drift 20]
        [--images camera,astronaut,retina] [--suite2p PYTHON] [--skip-slow] [--losses]
        [--draws 1]

The scenes are scikit-image's bundled photographs (grey, blurred by a Gaussian of
1 px as by a microscope's PSF, mapped to intensities 0.1..1 so that no pixel is
dark, like a two-photon field of view with its background, and scaled to mean 1).
Each frame is a ``size`` x ``size`` view of the scene moved by a smooth subpixel
drift of up to ``drift`` px per axis (band-limited, exact: a Fourier shift of the
reflect-padded scene), so new content enters at the borders.  The known reference
is the unmoved view, noise-free.  Noise: Poisson at 2, 5, 20 and 100 photons per
unit intensity (``lambda = photons * clean``), and a high-signal case: Gaussian
noise of standard deviation 5 % of the mean.

The bound (the issue's definition): per frame and axis the Fisher information
``I_a = sum_p (d lambda_p / d a)^2 / var_p`` over the pixels ``p`` whose content lies
inside the reference's field of view (``var_p = lambda_p`` for Poisson, ``sigma^2``
for Gaussian), the derivative being the scene's band-limited gradient times the
photons; the bound is ``sqrt(mean over frames and axes of 1 / I_a)``.  Each row's
RMS error (per axis) is printed as a multiple of it, with frames per second.

Rows: xreg's default (``movie.reg.estimate(reference)``), with ``weights="noise"`` (the
opt-in step of the fit that weighs each pixel by its noise), with ``clip=None``, on
Anscombe-transformed frames and reference (``2 * sqrt(x + 3/8)``: the noise
weighting a user can choose in one line), the fixed-window estimator it replaced
(``prepare_reference(..., overlap=False)``), scikit-image's
``phase_cross_correlation`` (``normalization=None`` and its ``"phase"`` default,
``upsample_factor=20``), pystackreg's ``TRANSLATION`` (intensity least squares;
``pip install -e ".[bench]"``) and, with ``--suite2p PYTHON`` (a Python with suite2p, in its own
environment: ``benchmarks/make_suite2p_env.sh``), suite2p's rigid estimate through
``suite2p_side.py shifts``.

``--losses`` adds two first-order rows per case that say where xreg's excess over the
bound comes from: the bound counted over the pixels of xreg's per-frame box only (what
the box leaves out), and the error of an unweighted least-squares fit under the box's
weights (adds what equal weights cost under shot noise).  The default's excess beyond
the second is the clipping's.
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

NOISE_LEVELS = ("poisson 2", "poisson 5", "poisson 20", "poisson 100", "gaussian 5%")


def scene(name):
    """The photograph as a float64 grey image in 0.1..1, blurred by 1 px, mean 1."""
    from skimage import color, data

    image = np.asarray(getattr(data, name)(), dtype=np.float64)
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    # The middle 512 x 512 (the retina is 1411 px wide, mostly its dark surround).
    image = image[tuple(slice((n - min(n, 512)) // 2, (n + min(n, 512)) // 2) for n in image.shape)]
    image = ndimage.gaussian_filter(image, 1.0)
    image = 0.1 + 0.9 * (image - image.min()) / np.ptp(image)
    return image / image.mean()


def drift(n_frames, amplitude, seed):
    """A smooth drift (two slow sinusoids per axis) reaching ``amplitude`` px."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n_frames)[:, None]
    phases, speeds = rng.uniform(0, 2 * np.pi, (2, 2)), rng.uniform(0.5, 2.0, (2, 2))
    path = np.sin(2 * np.pi * speeds[0] * t + phases[0]) + 0.5 * np.sin(
        2 * np.pi * speeds[1] * t + phases[1]
    )
    return amplitude * path / np.abs(path).max(axis=0)


def moved_views(image, shifts, size):
    """Views (and their gradients) of ``image`` moved by each shift, band-limited.

    The scene is reflect-padded to twice its size so that its periodic copy has no
    edge near the view, then moved in Fourier space.  Returns the clean frames
    (n, size, size), their gradients (n, 2, size, size) and the view's origin.
    """
    padded = np.pad(image, [(s // 2, s - s // 2) for s in image.shape], mode="reflect")
    origin = [(p - size) // 2 for p in padded.shape]
    view = tuple(slice(o, o + size) for o in origin)
    spectrum = np.fft.fft2(padded)
    ky = 2j * np.pi * np.fft.fftfreq(padded.shape[0])[:, None]
    kx = 2j * np.pi * np.fft.fftfreq(padded.shape[1])[None, :]
    frames = np.empty((len(shifts), size, size))
    gradients = np.empty((len(shifts), 2, size, size))
    for i, shift in enumerate(shifts):
        moved = ndimage.fourier_shift(spectrum, shift)
        frames[i] = np.fft.ifft2(moved).real[view]
        gradients[i, 0] = np.fft.ifft2(moved * ky).real[view]
        gradients[i, 1] = np.fft.ifft2(moved * kx).real[view]
    return frames, gradients


def shared_mask(shift, size):
    """Pixels of a frame moved by ``shift`` whose content lies in the reference's view."""
    inside = [(np.arange(size) - s >= 0) & (np.arange(size) - s <= size - 1) for s in shift]
    return inside[0][:, None] & inside[1][None, :]


def noisy(clean, level, rng):
    """Frames with the noise of ``level``, and the per-pixel variance of that noise."""
    kind, amount = level.split()
    if kind == "poisson":
        lam = float(amount) * clean
        return rng.poisson(lam).astype(np.float32), lam, float(amount)
    sigma = float(amount.rstrip("%")) / 100 * clean.mean()
    frames = clean + rng.normal(0, sigma, clean.shape)
    return frames.astype(np.float32), np.full(clean.shape, sigma**2), 1.0


def bound(gradients, variance, scale, shifts, size):
    """The Cramér-Rao bound (px) on the displacement, as the issue defines it."""
    inverse = []
    for gradient, var, shift in zip(gradients, variance, shifts, strict=True):
        mask = shared_mask(shift, size)
        for axis in range(2):
            info = np.sum((scale * gradient[axis]) ** 2 / var * mask)
            inverse.append(1 / info)
    return float(np.sqrt(np.mean(inverse)))


def box_losses(gradients, variance, scale, shifts, size):
    """What xreg's per-frame box costs against the bound, to first order: the bound over
    the box's pixels only (noise-weighted), and the error of an unweighted least-squares
    fit under the box's weights (what intensity correlation is), each as a multiple of
    the bound.  The box is ``_estimate_overlap``'s at the true whole-pixel shift."""
    from xreg.core import correlation as c

    margin = c._OVERLAP_REACH + c._STENCIL + c._OVERLAP_GUARD
    bound_var, box_var, unweighted_var = [], [], []
    for gradient, var, shift in zip(gradients, variance, shifts, strict=True):
        guess = np.rint(shift).astype(int)
        weight = np.ones((size, size))
        for axis, g in enumerate(guess):
            low, high = max(g + margin, 0), min(size + g - margin, size)
            profile = np.zeros(size)
            profile[low:high] = c.window_profile(high - low, 0, c._OVERLAP_RAMP)
            weight = weight * (profile[:, None] if axis == 0 else profile[None, :])
        mask = shared_mask(shift, size)
        for axis in range(2):
            slope2 = (scale * gradient[axis]) ** 2
            bound_var.append(1 / np.sum(slope2 / var * mask))
            box_var.append(1 / np.sum(slope2 / var * (weight > 0)))
            unweighted_var.append(np.sum(weight**2 * slope2 * var) / np.sum(weight * slope2) ** 2)
    mean = np.mean(bound_var)
    return float(np.sqrt(np.mean(box_var) / mean)), float(np.sqrt(np.mean(unweighted_var) / mean))


def rms_per_axis(estimate, truth):
    return float(np.sqrt(np.mean((np.asarray(estimate, dtype=float) - truth) ** 2)))


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, np.asarray(result, dtype=float)


def xreg_rows(frames, reference):
    from xreg import core

    movie = xr.DataArray(frames, dims=("time", "y", "x"))

    def stabilised(array):
        # Anscombe's transform: Poisson noise of any mean becomes unit-variance noise.
        return 2 * np.sqrt(np.maximum(array, 0) + 0.375)

    def fixed_window():
        # The estimator before this change: one window, margin = max_shift, for all frames.
        bounds = core.clip_bounds(reference, xreg._xarray.CLIP_PERCENTILES)
        plan = core.prepare_reference(reference, clip=bounds, overlap=False)
        return core.estimate_shifts(frames, plan)[:, :2]

    return {
        "xreg default": lambda: movie.reg.estimate(reference).values,
        'xreg weights="noise" (opt-in)': lambda: (
            movie.reg.estimate(reference, weights="noise").values
        ),
        "xreg clip=None": lambda: movie.reg.estimate(reference, clip=None).values,
        "xreg clip=None on Anscombe-transformed frames": lambda: (
            stabilised(movie).reg.estimate(stabilised(reference), clip=None).values
        ),
        "xreg fixed window (before issue 18)": fixed_window,
    }


def skimage_rows(frames, reference):
    from skimage.registration import phase_cross_correlation

    def loop(normalization):
        # scikit-image returns the shift that registers the frame: the opposite sign.
        return [
            -phase_cross_correlation(
                reference, frame, upsample_factor=20, normalization=normalization
            )[0]
            for frame in frames
        ]

    return {
        "scikit-image up=20, normalization=None": lambda: loop(None),
        "scikit-image up=20, phase (its default)": lambda: loop("phase"),
    }


def pystackreg_rows(frames, reference):
    try:
        from pystackreg import StackReg
    except ImportError:
        return {}

    def loop():
        reg = StackReg(StackReg.TRANSLATION)
        # register(ref, mov) maps the frame's coordinates onto the reference's:
        # its translation is the displacement in (x, y) order, with xreg's sign.
        out = []
        for frame in frames:
            matrix = reg.register(reference, frame)
            out.append((matrix[1, 2], matrix[0, 2]))
        return out

    return {"pystackreg TRANSLATION": loop}


def suite2p_rows(python, frames, reference):
    def run():
        with tempfile.TemporaryDirectory() as directory:
            np.save(Path(directory) / "frames.npy", frames.astype(np.float32))
            np.save(Path(directory) / "reference.npy", reference.astype(np.float32))
            script = Path(__file__).with_name("suite2p_side.py")
            line = (
                subprocess.run(
                    [python, str(script), "shifts", directory],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            info = json.loads(line)
            return info["seconds"], np.load(Path(directory) / "suite2p_shifts.npy")

    return run


def run_rows(frames, reference, args):
    """Every row's (seconds, estimate) on one movie."""
    rows = {**xreg_rows(frames, reference), **skimage_rows(frames, reference)}
    if not args.skip_slow:
        rows.update(pystackreg_rows(frames, reference))
    results = {method: timed(run) for method, run in rows.items()}
    if args.suite2p and not args.skip_slow:
        results["suite2p rigid"] = suite2p_rows(args.suite2p, frames, reference)()
    return results


def print_losses(name, level, limit, gradients, variance, scale, truth, args):
    """The two first-order rows of ``--losses`` for one case."""
    box, unweighted = box_losses(gradients, variance, scale, truth, args.size)
    print(
        f"| {name} | {level} | {limit:.4f} | first order: bound over the box only | | | "
        f"{box:.2f} |\n| {name} | {level} | {limit:.4f} | first order: unweighted fit over "
        f"the box | | | {unweighted:.2f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--drift", type=float, default=20.0)
    parser.add_argument("--images", default="camera,astronaut,retina")
    parser.add_argument("--levels", default=",".join(NOISE_LEVELS))
    parser.add_argument("--suite2p", metavar="PYTHON", help="a Python with suite2p installed")
    parser.add_argument("--skip-slow", action="store_true", help="no pystackreg or suite2p")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=1, help="noise draws per case, pooled")
    parser.add_argument(
        "--losses",
        action="store_true",
        help="also print what xreg's box and unweighted fit cost, to first order",
    )
    args = parser.parse_args()

    worst = {}
    print(
        f"{args.frames} frames of {args.size} x {args.size} per case"
        + (f", {args.draws} noise draws each" if args.draws > 1 else "")
        + f", drift up to {args.drift} px; error = RMS per axis; "
        "x bound = error / Cramér-Rao bound\n"
    )
    print("| image | noise | bound (px) | method | frames/s | RMS (px) | x bound |")
    print("|---|---|---:|---|---:|---:|---:|")
    for index, name in enumerate(args.images.split(",")):
        image = scene(name)
        truth = drift(args.frames, args.drift, seed=args.seed + index)
        clean, gradients = moved_views(image, truth, args.size)
        reference_clean = moved_views(image, np.zeros((1, 2)), args.size)[0][0]
        for level in args.levels.split(","):
            results = {}  # method: (seconds, estimates), summed and stacked over the draws
            for draw in range(args.draws):
                rng = np.random.default_rng(args.seed + 100 * index + len(level) + 1000 * draw)
                frames, variance, scale = noisy(clean, level, rng)
                if draw == 0:  # the variance is the noise-free one: the same every draw
                    limit = bound(gradients, variance, scale, truth, args.size)
                    if args.losses:
                        print_losses(name, level, limit, gradients, variance, scale, truth, args)
                for method, (seconds, estimate) in run_rows(
                    frames, scale * reference_clean, args
                ).items():
                    total, estimates = results.get(method, (0.0, []))
                    results[method] = (total + seconds, [*estimates, estimate])
            for method, (seconds, estimates) in results.items():
                error = rms_per_axis(np.concatenate(estimates), np.tile(truth, (args.draws, 1)))
                ratio = error / limit
                worst[method] = max(worst.get(method, 0.0), ratio)
                print(
                    f"| {name} | {level} | {limit:.4f} | {method} | "
                    f"{args.draws * len(truth) / seconds:.0f} | {error:.4f} | {ratio:.2f} |",
                    flush=True,
                )
    print("\n| method | worst x bound over every image and noise level |")
    print("|---|---:|")
    for method, ratio in worst.items():
        print(f"| {method} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
