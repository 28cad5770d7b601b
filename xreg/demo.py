"""``xreg demo``: a synthetic movie with known drift, registered end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from . import datasets, io, pipeline


def run(folder: Path, *, n_frames: int = 400, quiet: bool = False) -> int:
    """Make, register and check a synthetic movie; write files into ``folder``.

    Returns the exit code: 0 if the estimates follow the truth (RMS error under
    0.5 px after removing the one constant offset a self-built reference may
    carry; a sanity bound against gross failure, the figure itself is printed).
    """
    folder.mkdir(parents=True, exist_ok=True)
    source, output = folder / "movie.zarr", folder / "registered.zarr"
    movie = datasets.large(n_frames=n_frames, shape=(256, 256), chunks=50)
    moved, truth = datasets.add_motion(movie, max_drift=6, jumps=2, subpixel=True, seed=1)
    shutil.rmtree(source, ignore_errors=True)
    truth = truth.drop_vars("quality")
    dataset = moved.to_dataset(name="movie").assign(true_displacement=truth)
    io.to_zarr(dataset, source)
    print(f"made {source}: {n_frames} frames of 256 x 256, drift up to 6 px plus 2 sudden jumps")

    # What `xreg register SOURCE OUTPUT --overwrite` runs.
    movie = io.open_movie(source, "movie")
    with pipeline.progress_bar(n_frames, quiet=quiet) as update:
        pipeline.run(
            movie,
            str(output),
            reference=lambda: movie.reg.reference(),
            settings={"input": str(source.resolve()), "demo": True},
            overwrite=True,
            progress=update,
        )
    estimate = io.read_displacement(output)
    error = estimate - truth.values
    error = error - error.median("time")
    rms = float(np.sqrt((error**2).mean()))
    print(
        f"RMS error against the truth: {rms:.3f} px "
        f"(largest {float(abs(error).max()):.3f} px; reference built from the movie)"
    )
    _plot(estimate, truth, folder / "displacement.png")
    _summary(source, output, estimate, truth, folder / "summary.png")
    print(f"wrote {folder / 'displacement.png'}, {folder / 'summary.png'} and {output}")
    return 0 if rms < 0.5 else 1


def _plot(estimate, truth, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offset = (estimate - truth.values).median("time")
    fig, axes = plt.subplots(len(truth.axis), 1, sharex=True, figsize=(7, 4), layout="constrained")
    for ax, name in zip(axes, truth.axis.values, strict=True):
        ax.plot(truth.time, truth.sel(axis=name), lw=4, alpha=0.4, label="true")
        ax.plot(truth.time, (estimate - offset).sel(axis=name), lw=1, label="estimated")
        ax.set_ylabel(f"{name} (pixel)")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("xreg demo: estimated vs true displacement")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _summary(source: Path, output: Path, estimate, truth, path: Path) -> None:
    """``xreg.plot.summary`` on the two stores, opened lazily (it reads two means and a frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import summary

    # The estimate is measured against a reference built from the movie: shift the truth by
    # the one constant offset that leaves, so the lines compare like with like.
    offset = (estimate - truth.values).median("time")
    fig = summary(
        io.open_movie(source, "movie"),
        io.open_movie(output, "movie"),
        estimate,
        truth=truth + offset,
    )
    fig.suptitle("xreg demo: the registration checked (true drift shifted by the reference offset)")
    fig.savefig(path, dpi=70)
    plt.close(fig)
