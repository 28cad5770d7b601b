"""Example data, generated deterministically (nothing is downloaded).

- :func:`mouse`: a small calcium-imaging-like movie, no motion (the classic
  thunder example's stand-in).
- :func:`add_motion`: moves any movie by smooth random drift (optionally sudden
  jumps and subpixel shifts) and returns the true displacements.
- :func:`large`: the realistic preset for benchmarks and the demo (512 x 512,
  thousands of frames), built lazily, chunk by chunk, so it can stream to Zarr.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from ._xarray import displacement_array, frame_dims, time_coords
from .core import round_to_dtype
from .errors import XregError

__all__ = ["add_motion", "add_nonrigid_motion", "large", "mouse"]

FRAME_RATE = 15.0  # Hz, for the time coordinate


class _Scene:
    """A field of view: textured background, neurons with calcium transients, shot noise.

    Every frame is a pure function of (seed, frame index), so any subset of frames
    can be rendered anywhere (a Dask task, a Spark executor) and always agrees.
    """

    def __init__(self, n_frames, shape, *, n_cells, cell_radius, brightness, seed):
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.shape = shape
        self.brightness = brightness
        # Background: smooth texture (neuropil, vessels) and a vignette.
        texture = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0 * cell_radius / 2.5)
        texture = (texture - texture.min()) / np.ptp(texture)
        grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        vignette = 1 - 0.3 * sum(g**2 for g in grids) / len(shape)
        self.background = (0.4 + 0.6 * texture) * vignette
        # Neurons: round blobs, with a dark nucleus, at random places.
        self.cells = np.zeros((n_cells,) + shape)
        centres = rng.uniform(0, 1, (n_cells, len(shape))) * np.asarray(shape)
        for i, centre in enumerate(centres):
            distance2 = sum((g - c) ** 2 for g, c in zip(np.indices(shape), centre, strict=True))
            soma = np.exp(-distance2 / (2 * cell_radius**2))
            nucleus = 0.5 * np.exp(-distance2 / (2 * (0.4 * cell_radius) ** 2))
            self.cells[i] = soma - nucleus
        # Activity: Poisson spikes filtered by a calcium transient (decay ~0.5 s).
        spikes = rng.random((n_frames, n_cells)) < 0.03
        decay = np.exp(-1 / (0.5 * FRAME_RATE))
        activity = np.zeros((n_frames, n_cells))
        for t in range(n_frames):
            activity[t] = (activity[t - 1] * decay if t else 0) + spikes[t] * rng.uniform(
                0.5, 1.5, n_cells
            )
        self.activity = 0.6 + activity

    def render(self, start: int, stop: int) -> np.ndarray:
        """Frames start..stop-1 as int16 photon counts."""
        out = np.empty((stop - start,) + self.shape, np.int16)
        flat_cells = self.cells.reshape(len(self.cells), -1)
        for i, t in enumerate(range(start, stop)):
            expected = self.background + (self.activity[t] @ flat_cells).reshape(self.shape)
            rng = np.random.default_rng([self.seed, t])
            counts = rng.poisson(np.maximum(expected, 0) * self.brightness)
            out[i] = np.minimum(counts, np.iinfo(np.int16).max)
        return out


def _movie(scene: _Scene, n_frames: int, chunks: int | None, name: str) -> xr.DataArray:
    if chunks is None:
        data = scene.render(0, n_frames)
    else:
        import dask.array as dsa

        def block(block_info=None):
            (start, stop) = block_info[None]["array-location"][0]
            return scene.render(start, stop)

        data = dsa.map_blocks(
            block,
            dtype=np.int16,
            chunks=(dsa.core.normalize_chunks(chunks, (n_frames,))[0],)
            + tuple((s,) for s in scene.shape),
        )
    spatial = ("y", "x") if len(scene.shape) == 2 else ("z", "y", "x")
    return xr.DataArray(
        data,
        dims=("time",) + spatial,
        coords={"time": ("time", np.arange(n_frames) / FRAME_RATE, {"units": "s"})},
        name=name,
        attrs={"long_name": "fluorescence", "units": "photons", "source": "xreg.datasets"},
    )


def mouse(
    n_frames: int = 20,
    *,
    shape: tuple[int, ...] = (64, 64),
    n_cells: int | None = None,
    seed: int = 0,
    chunks: int | None = None,
) -> xr.DataArray:
    """A small calcium-imaging-like movie with no motion.

    Neurons (blobs with a dark nucleus) whose fluorescence rises with calcium
    transients, over a textured background, with shot (Poisson) noise.

    Parameters
    ----------
    n_frames : int, default 20
        Number of frames (up to a few thousand is quick).
    shape : tuple of int, default (64, 64)
        Frame shape; 3 values give volumes ``(z, y, x)``.
    n_cells : int, optional
        Number of neurons; default scales with the frame area (12 at 64 x 64).
    seed : int, default 0
        Everything is a function of the seed.
    chunks : int, optional
        Frames per Dask chunk; default: a numpy-backed array.

    Returns
    -------
    xarray.DataArray
        int16, dims ``(time, y, x)`` (or ``(time, z, y, x)``), ``time`` in seconds.

    Examples
    --------
    >>> import xreg
    >>> xreg.datasets.mouse().shape
    (20, 64, 64)
    """
    if n_frames < 1 or len(shape) not in (2, 3):
        raise XregError("mouse() needs n_frames >= 1 and a 2-D or 3-D shape.")
    if n_cells is None:
        n_cells = max(4, int(12 * np.prod(shape[-2:]) / 64**2))
    scene = _Scene(
        n_frames, tuple(shape), n_cells=n_cells, cell_radius=2.5, brightness=40.0, seed=seed
    )
    return _movie(scene, n_frames, chunks, "movie")


def large(
    n_frames: int = 2000,
    *,
    shape: tuple[int, int] = (512, 512),
    seed: int = 0,
    chunks: int = 100,
) -> xr.DataArray:
    """The realistic preset: a 512 x 512 two-photon-like movie, Dask-backed.

    Frames are rendered chunk by chunk on demand, so the movie can be far larger
    than memory; ``large().to_dataset().to_zarr(path)`` streams it to disk.

    Parameters
    ----------
    n_frames : int, default 2000
    shape : tuple of int, default (512, 512)
    seed : int, default 0
    chunks : int, default 100
        Frames per chunk.

    Returns
    -------
    xarray.DataArray
        int16, dims ``(time, y, x)``, no motion (see :func:`add_motion`).
    """
    n_cells = max(4, int(150 * np.prod(shape) / 512**2))
    scene = _Scene(
        n_frames, tuple(shape), n_cells=n_cells, cell_radius=5.0, brightness=20.0, seed=seed
    )
    return _movie(scene, n_frames, chunks, "movie")


def add_motion(
    movie: xr.DataArray,
    *,
    max_drift: float = 5.0,
    jumps: int = 0,
    jump_size: float | None = None,
    subpixel: bool = False,
    seed: int = 0,
    dim: str = "time",
) -> tuple[xr.DataArray, xr.DataArray]:
    """Move every frame of a movie by a known, smooth random drift.

    Parameters
    ----------
    movie : xarray.DataArray
        Dims ``(time, y, x)`` or ``(time, z, y, x)``; numpy or Dask-backed (the
        result is lazy for a Dask-backed movie).
    max_drift : float, default 5.0
        Largest displacement of the smooth drift, in pixels, per axis.
    jumps : int, default 0
        Number of sudden jumps (the animal moved) added on top of the drift.
    jump_size : float, optional
        Size of each jump, in pixels (default ``max_drift / 2``).
    subpixel : bool, default False
        Keep fractional displacements; otherwise they are rounded to whole pixels
        (then moving is exact, and so is recovery).
    seed : int, default 0
        Seed of the random drift.
    dim : str, default "time"
        The frame dim.

    Returns
    -------
    moved : xarray.DataArray
        The moved movie: frame ``t`` is ``scipy.ndimage.shift(movie[t], truth[t])``
        (content moves across the border; the edge is extended, as real motion
        does).  Same dims, coords, attrs and dtype.
    truth : xarray.DataArray
        The displacements, in the layout :meth:`~xreg.accessor.RegAccessor.estimate`
        returns (with ``quality`` = 1).

    Examples
    --------
    >>> import xreg
    >>> moved, truth = xreg.datasets.add_motion(xreg.datasets.mouse(), max_drift=3)
    >>> float(abs(truth).max()) <= 3
    True
    """
    spatial = frame_dims(movie, dim)
    n = movie.sizes[dim]
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((n, len(spatial))), axis=0)
    drift = ndimage.gaussian_filter1d(walk, sigma=max(1.0, n / 20), axis=0, mode="nearest")
    drift -= drift.mean(axis=0)
    peak = np.abs(drift).max(axis=0)
    drift *= max_drift / np.where(peak > 0, peak, 1)
    if jumps:
        size = max_drift / 2 if jump_size is None else jump_size
        for start in rng.choice(np.arange(1, n), size=min(jumps, n - 1), replace=False):
            drift[start:] += size * rng.choice([-1, 1], size=len(spatial))
    if not subpixel:
        drift = np.round(drift)
    truth = displacement_array(
        drift,
        np.ones(n),
        time_coords(movie, dim),
        dim,
        spatial,
        {"units": "pixel", "long_name": "true displacement", "method": "synthetic"},
    )
    # Moving by d is applying -d; a cubic spline keeps the detail.
    moved = movie.reg.apply(-truth.drop_vars("quality"), order=3, mode="nearest", dim=dim)
    return moved, truth


def add_nonrigid_motion(
    movie: xr.DataArray,
    *,
    max_shift: float = 5.0,
    nodes: int = 3,
    seed: int = 0,
    dim: str = "time",
) -> tuple[xr.DataArray, xr.DataArray]:
    """Warp every frame by its own smooth random displacement field (non-rigid motion).

    Parameters
    ----------
    movie : xarray.DataArray
        Dims ``(time, y, x)`` (numpy-backed; the result is computed).
    max_shift : float, default 5.0
        Bound on the displacement per axis: half from a shift of the whole frame,
        half from a smooth variation across it.
    nodes : int, default 3
        The variation is a cubic spline through ``nodes x nodes`` random values.
    seed : int, default 0

    Returns
    -------
    moved : xarray.DataArray
        ``moved[t](x) = movie[t](x - field[t](x))`` (cubic spline, edge extended).
    field : xarray.DataArray
        The true displacement, dims ``(time, axis, y, x)``.
    """
    spatial = frame_dims(movie, dim)
    if len(spatial) != 2:
        raise XregError("add_nonrigid_motion() makes 2-D fields; pass a (time, y, x) movie.")
    rng = np.random.default_rng(seed)
    shape = tuple(movie.sizes[d] for d in spatial)
    pixels = np.indices(shape, dtype=float)
    frames = movie.transpose(dim, *spatial).values
    moved = np.empty(frames.shape, frames.dtype)
    fields = np.empty((len(frames), 2) + shape, np.float32)
    half = max_shift / 2
    for t, frame in enumerate(frames):
        coarse = rng.uniform(-half, half, (2, nodes, nodes))
        field = np.stack(
            [ndimage.zoom(c, np.asarray(shape) / nodes, order=3, mode="nearest") for c in coarse]
        )[:, : shape[0], : shape[1]]
        field = np.clip(field, -half, half) + rng.uniform(-half, half, (2, 1, 1))
        warped = ndimage.map_coordinates(
            frame.astype(float), pixels - field, order=3, mode="nearest"
        )
        moved[t] = round_to_dtype(warped, frames.dtype)
        fields[t] = field
    moved_da = movie.transpose(dim, *spatial).copy(data=moved).transpose(*movie.dims)
    field_da = xr.DataArray(
        fields,
        dims=(dim, "axis", *spatial),
        coords={**time_coords(movie, dim), "axis": [str(d) for d in spatial]},
        name="displacement_field",
        attrs={"units": "pixel", "long_name": "true per-pixel displacement"},
    )
    return moved_da, field_da
