"""Spark: DataArrays to and from RDDs of ``(key, frame)`` records, and registration on them.

The thunder layout: an RDD of ``((i,), frame)`` records, one per frame.  Frames
are read and registered on the executors; only the small displacement table
comes back to the driver.  The reference's transform is prepared once on the
driver and shipped to the executors in a broadcast variable.

Labels: the keys are frame positions; the movie's labels (its frame dim and
per-frame coordinates, spatial dims and coordinates, name and attrs) ride on the
RDD that :func:`to_rdd` or :func:`from_zarr` returns, and on the RDDs derived
from it by ``map``/``mapPartitions``/``filter`` (found through their lineage), so
that :func:`estimate` returns what ``movie.reg.estimate`` returns.  An RDD built
otherwise (``parallelize``, ``union``, a shuffle) has none: pass ``template=movie``.

Needs ``pip install xreg[spark]`` (pyspark); importing :mod:`xreg` never imports
pyspark.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from . import _scanphase, _xarray, core, validate
from .errors import XregError

try:
    import pyspark  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "xreg.spark needs pyspark; install it with `pip install xreg[spark]`."
    ) from error

__all__ = [
    "apply",
    "chunk_runner",
    "correct_scan_phase",
    "estimate",
    "from_rdd",
    "from_zarr",
    "local_context",
    "scan_phase",
    "to_rdd",
]


def local_context(app_name: str = "xreg", *, cores: int = 2, attempts: int = 1, settings=None):
    """A SparkContext on this machine whose Python workers run this interpreter.

    For notebooks, tests and benchmarks: Spark starts its Python workers with
    ``PYSPARK_PYTHON`` (set here to this interpreter unless already set), so that they
    import the same xreg and numpy as the driver.

    Parameters
    ----------
    app_name : str
        Spark's application name.
    cores : int
        Worker threads (``local[cores]``).
    attempts : int
        Attempts per task; Spark's local master never retries a failed task unless
        asked (``local[cores, attempts]``).
    settings : dict, optional
        More Spark settings, e.g. ``{"spark.driver.memory": "4g"}``.

    Returns
    -------
    pyspark.SparkContext
        Bound to 127.0.0.1 without its web UI; stop it with ``sc.stop()``.
    """
    import os
    import sys

    cores = validate.whole(cores, "cores", minimum=1)
    attempts = validate.whole(attempts, "attempts", minimum=1)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = (
        pyspark.SparkConf()
        .setMaster(f"local[{cores},{attempts}]" if attempts > 1 else f"local[{cores}]")
        .setAppName(app_name)
        .set("spark.ui.enabled", "false")
        .set("spark.driver.host", "127.0.0.1")
        .set("spark.driver.bindAddress", "127.0.0.1")
    )
    for key, value in (settings or {}).items():
        conf.set(key, value)
    context = pyspark.SparkContext(conf=conf)
    context.setLogLevel("ERROR")
    return context


def _noise_sample(rdd) -> np.ndarray:
    """The first frames (by key), which the accessor fits the noise on: from the first
    partition(s) if they hold them (an RDD in frame order), else by a filter over all."""
    size = core.noise_sample_size
    first = sorted(rdd.take(size), key=lambda record: _key(record[0]))
    if [_key(k) for k, _ in first] != list(range(len(first))):
        first = sorted(
            rdd.filter(lambda record: _key(record[0]) < size).collect(),
            key=lambda record: _key(record[0]),
        )
    return np.stack([np.asarray(frame) for _, frame in first])


def _key(key) -> int:
    """Frame index from a thunder key: ``(i,)`` or ``i``."""
    if isinstance(key, tuple | list) and len(key) == 1:
        key = key[0]
    if isinstance(key, int | np.integer) and key >= 0:
        return int(key)
    raise XregError(f"Record keys must be frame indices (i,) or i >= 0; got {key!r}.")


def _ordered(keys: Sequence[int]) -> np.ndarray:
    """The order that sorts ``keys``, after checking they are exactly 0..n-1."""
    keys = np.asarray(keys, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    duplicated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if duplicated.size:
        raise XregError(
            f"Frames {[(int(k),) for k in duplicated[:5]]} appear more than once; "
            "each key (i,) must be unique. Deduplicate with `rdd.reduceByKey(lambda a, b: a)`."
        )
    if len(keys) and (ordered[0] != 0 or ordered[-1] != len(keys) - 1):
        missing = sorted(set(range(int(ordered[-1]) + 1)) - set(ordered.tolist()))[:5]
        raise XregError(
            "Frame keys must run from (0,) to (n-1,) without gaps; "
            f"missing {[(k,) for k in missing]}."
        )
    return order


LABELS = "xreg_labels"  # the attribute of an RDD that holds its movie's labels


@dataclass(frozen=True)
class _Labels:
    """A movie's labels without its data (small: sent nowhere, kept on the driver)."""

    dim: Hashable
    spatial: tuple
    shape: tuple  # of one frame
    coords: dict  # name -> xarray.Variable along the frame dim or the spatial dims
    name: Hashable
    attrs: dict

    @classmethod
    def of(cls, da: xr.DataArray, dim: Hashable = "time") -> _Labels:
        # Only the labels are loaded (a store may chunk them unlike the movie).
        loaded = {
            n: xr.Variable(c.dims, np.asarray(c.values), c.attrs) for n, c in da.coords.items()
        }
        da = da.assign_coords(loaded)
        spatial = _xarray.frame_dims(da, dim)
        coords = {n: c for n, c in loaded.items() if set(c.dims) <= {dim, *spatial}}
        shape = tuple(da.sizes[d] for d in spatial)
        return cls(dim, spatial, shape, coords, da.name, dict(da.attrs))

    def along(self, dims) -> dict:
        """The coordinates whose dims are all in ``dims``."""
        return {n: c for n, c in self.coords.items() if set(c.dims) <= set(dims)}


def _labelled(rdd, labels: _Labels):
    setattr(rdd, LABELS, labels)
    return rdd


def labels_of(rdd) -> _Labels | None:
    """The labels of the movie an RDD came from, through its lineage; None if unknown."""
    while rdd is not None:
        labels = getattr(rdd, LABELS, None)
        if labels is not None:
            return labels
        rdd = getattr(rdd, "prev", None)  # PipelinedRDD: map, mapPartitions, filter, ...
    return None


def _npartitions(npartitions, sc) -> int:
    """``npartitions`` checked (a whole number >= 1), or Spark's default parallelism."""
    if npartitions is None:
        return sc.defaultParallelism
    return validate.whole(npartitions, "npartitions", minimum=1)


def _partition_bounds(n: int, npartitions: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, max(1, min(npartitions, n)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _frames_of(movie: xr.DataArray, start: int, stop: int, dim) -> np.ndarray:
    """Frames start..stop-1 as numpy, read here (on an executor) with no thread pool."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        return np.asarray(movie.isel({dim: slice(start, stop)}).values)


def to_rdd(da: xr.DataArray, sc, *, dim: Hashable = "time", npartitions: int | None = None):
    """A DataArray as an RDD of ``((i,), frame)`` records, in frame order.

    Parameters
    ----------
    da : xarray.DataArray
        Dims ``(time, y, x)`` or ``(time, z, y, x)``, numpy- or Dask-backed.
    sc : pyspark.SparkContext
    dim : hashable, default "time"
        The frame dim.
    npartitions : int, optional
        Default: Spark's default parallelism.

    Returns
    -------
    pyspark.RDD
        Records ``((i,), frame)`` with ``frame`` a numpy array in the spatial dims'
        order, carrying the movie's labels for :func:`estimate` and
        :func:`from_rdd`.  A Dask-backed array is read partition by partition on
        the executors (its graph is broadcast); a numpy-backed one is broadcast
        from the driver (each executor holds a copy).  Tasks stay small either
        way: no data rides in a task.
    """
    labels = _Labels.of(da, dim)
    npartitions = _npartitions(npartitions, sc)
    da = da.transpose(dim, *labels.spatial)
    n = da.sizes[dim]
    bounds = _partition_bounds(n, npartitions)
    if da.chunks is None:
        # Broadcast, not parallelize: a task then carries no frames (Spark warns past
        # 1 MB a task).  One broadcast, as per-partition RDDs in a union ran 10 x slower.
        data = sc.broadcast(np.ascontiguousarray(da.values))

        def read(bounds_iter):
            for start, stop in bounds_iter:
                for index in range(start, stop):
                    yield (index,), data.value[index]

        return _labelled(sc.parallelize(bounds, len(bounds)).mapPartitions(read), labels)
    graph = sc.broadcast(da.variable)  # the graph that reads the data (for Zarr: no data)

    def read_lazily(bounds_iter):
        for start, stop in bounds_iter:
            frames = _frames_of(xr.DataArray(graph.value), start, stop, dim)
            for offset, frame in enumerate(frames):
                yield (start + offset,), frame

    return _labelled(sc.parallelize(bounds, len(bounds)).mapPartitions(read_lazily), labels)


def from_zarr(sc, path, var: str, *, dim: Hashable = "time", npartitions: int | None = None):
    """An RDD whose partitions each read their own frames from a Zarr store.

    Parameters
    ----------
    sc : pyspark.SparkContext
    path : str
        A store every executor can read (a shared file system or object store URL).
    var : str
        The movie variable.
    dim : hashable, default "time"
    npartitions : int, optional
        Default: Spark's default parallelism.

    Returns
    -------
    pyspark.RDD
        Records ``((i,), frame)``, carrying the movie's labels; only the store's
        metadata and labels are read on the driver.
    """
    npartitions = _npartitions(npartitions, sc)
    path = str(path)
    with xr.open_zarr(path) as dataset:
        if var not in dataset:
            raise XregError(f"{path} has no variable {var!r}; it has {list(dataset.data_vars)}.")
        labels = _Labels.of(dataset[var], dim)
        n = dataset.sizes[dim]
    bounds = _partition_bounds(n, npartitions)

    def read(bounds_iter):
        for start, stop in bounds_iter:
            with xr.open_zarr(path) as dataset:
                frames = _frames_of(dataset[var], start, stop, dim)
            for offset, frame in enumerate(frames):
                yield (start + offset,), frame

    return _labelled(sc.parallelize(bounds, len(bounds)).mapPartitions(read), labels)


def from_rdd(
    rdd,
    *,
    dims: Sequence[Hashable] | None = None,
    coords=None,
    attrs=None,
    name=None,
) -> xr.DataArray:
    """Collect an RDD of ``(key, frame)`` records into a DataArray, in key order.

    Parameters
    ----------
    rdd : pyspark.RDD
        Records keyed ``(i,)`` (or ``i``), for i = 0..n-1, each once, in any order.
    dims : sequence of hashable, optional
        Default: the movie's, for an RDD from :func:`to_rdd` or :func:`from_zarr`
        (or derived from one, as :func:`apply` returns); else ``("time", "y", "x")``
        or ``("time", "z", "y", "x")``.
    coords, attrs, name
        Passed to :class:`xarray.DataArray`; default: the movie's (its spatial
        coordinates only if the frames kept their shape).

    Returns
    -------
    xarray.DataArray
        numpy-backed (the frames are collected on the driver: for results that fit).

    Raises
    ------
    XregError
        If keys are duplicated or missing, or the frames differ in shape.
    """
    records = rdd.collect()
    if not records:
        raise XregError("The RDD has no records.")
    order = _ordered([_key(k) for k, _ in records])
    shapes = {np.shape(frame) for _, frame in records}
    if len(shapes) != 1:
        raise XregError(f"Frames differ in shape: {sorted(shapes)}.")
    frames = np.stack([records[i][1] for i in order])
    labels = labels_of(rdd)
    if labels is not None and len(labels.spatial) == frames.ndim - 1:
        dims = (labels.dim, *labels.spatial) if dims is None else dims
        same = frames.shape[1:] == labels.shape
        kept = labels.along((labels.dim, *labels.spatial) if same else (labels.dim,))
        if all(c.shape == frames.shape[:1] for c in labels.along((labels.dim,)).values()):
            coords = kept if coords is None else coords
        attrs = labels.attrs if attrs is None else attrs
        name = labels.name if name is None else name
    if dims is None:
        dims = ("time", "y", "x") if frames.ndim == 3 else ("time", "z", "y", "x")
    return xr.DataArray(frames, dims=tuple(dims), coords=coords, attrs=attrs, name=name)


def estimate(
    rdd,
    reference,
    *,
    upsample_factor: int = 10,
    max_shift=None,
    whole_frame: bool = False,
    axis: int | None = None,
    time=None,
    template: xr.DataArray | None = None,
    dim: Hashable = "time",
    bad_frame_threshold: float = 6.0,
    clip=_xarray.CLIP_PERCENTILES,
    method: str = "rigid",
    block_size=(128, 128),
    overlap: float = 0.5,
    min_quality: float = 0.3,
    weights: str | None = None,
) -> xr.DataArray:
    """Displacements of an RDD's frames, computed on the executors.

    Same numerics and result as :meth:`xreg.accessor.RegAccessor.estimate` (or the
    whole-frame correlation of :class:`xreg.CrossCorr`); only the table comes back.

    Parameters
    ----------
    rdd : pyspark.RDD
        Records ``((i,), frame)``, i = 0..n-1.
    reference : array-like or xarray.DataArray
        One frame.
    upsample_factor, max_shift
        As in :meth:`~xreg.accessor.RegAccessor.estimate`.
    whole_frame : bool, default False
        Correlate whole frames circularly (thunder's CrossCorr).
    axis : int, optional
        Register each plane along this axis of volume frames on its own (rigid only).
    time : array-like, optional
        Values for the frame coordinate, replacing the labels'.
    template : xarray.DataArray, optional
        The movie the frames come from (lazy is fine: only its labels are read),
        for an RDD that carries no labels (not made by :func:`to_rdd` or
        :func:`from_zarr`, nor derived from one by ``map``-like steps).  Without
        labels the frame coordinate is the frame index and the spatial dims are
        ``y, x`` (``z, y, x``).
    dim : hashable, default "time"
        The frame dim of ``template``.
    bad_frame_threshold : float, default 6.0
        As in :meth:`~xreg.accessor.RegAccessor.estimate`.
    clip : (float, float) or None, default (1, 99)
        As in :meth:`~xreg.accessor.RegAccessor.estimate` (per plane with ``axis``).
    method, block_size, overlap, min_quality
        As in :meth:`~xreg.accessor.RegAccessor.estimate`: ``method="piecewise"``
        gives one displacement per block, for :func:`apply` to warp by.
    weights : {None, "noise"}, default None
        As in :meth:`~xreg.accessor.RegAccessor.estimate` (the noise fitted on the
        first frames, as there).

    Returns
    -------
    xarray.DataArray
        ``displacement``, dims ``(time, axis)`` (per plane: ``(time, plane, axis)``;
        piecewise: ``(time, block_y, block_x, axis)``): for a labelled RDD,
        identical to ``movie.reg.estimate(reference, ...)`` (coordinates, attrs),
        given the same reference.
    """
    labels = labels_of(rdd) if template is None else _Labels.of(template, dim)
    attrs = _xarray.reference_attrs(reference)  # how it was made, as the accessor records
    if isinstance(reference, xr.DataArray):
        if labels is not None and set(reference.dims) == set(labels.spatial):
            reference = reference.transpose(*labels.spatial)
        reference = reference.values
    reference = np.asarray(reference)
    if reference.ndim not in (2, 3):
        raise XregError(f"The reference must be one 2-D or 3-D frame; got shape {reference.shape}.")
    if axis is not None:
        axis = validate.whole(axis, "axis", minimum=0, maximum=reference.ndim - 1)
    if method == "piecewise" and (axis is not None or whole_frame):
        raise XregError(
            "Piecewise registration takes whole frames (3-D blocks for volumes); "
            "drop `axis` and `whole_frame`."
        )
    plane_shape = reference.shape if axis is None else np.delete(reference.shape, axis)
    options = validate.estimate_options(
        plane_shape,
        upsample_factor=upsample_factor,
        max_shift=max_shift,
        bad_frame_threshold=bad_frame_threshold,
        method=method,
        block_size=block_size,
        overlap=overlap,
        min_quality=min_quality,
        clip=clip,
        weights=weights,
        whole_frame=whole_frame,
    )
    upsample_factor, max_shift, bad_frame_threshold, method, block_size, overlap = (
        options[k]
        for k in (
            "upsample_factor",
            "max_shift",
            "bad_frame_threshold",
            "method",
            "block_size",
            "overlap",
        )
    )
    min_quality, clip, weights = options["min_quality"], options["clip"], options["weights"]
    piecewise = method == "piecewise"
    sample = _noise_sample(rdd)
    settings = {
        "clip": clip,
        "piecewise": piecewise,
        "max_shift": max_shift,
        "whole_frame": whole_frame,
        "block_size": block_size,
        "overlap": overlap,
        "weights": weights,
    }
    if piecewise:
        plans = rdd.context.broadcast([_xarray.weighted_plan(reference, sample, **settings)])
    else:
        planes = [reference] if axis is None else list(np.moveaxis(reference, axis, 0))
        samples = [sample] if axis is None else list(np.moveaxis(sample, axis + 1, 0))
        plans = rdd.context.broadcast(
            [
                _xarray.weighted_plan(plane, frames, **settings)
                for plane, frames in zip(planes, samples, strict=True)
            ]
        )

    def run(records):
        records = list(records)
        if not records:
            return
        keys = [_key(k) for k, _ in records]
        frames = np.stack([np.asarray(frame) for _, frame in records])
        if frames.shape[1:] != reference.shape:
            raise XregError(
                f"Frames of shape {frames.shape[1:]} do not match the reference's "
                f"{reference.shape}."
            )
        if piecewise:
            rows = _xarray._estimate_piecewise_chunk(
                frames,
                plan=plans.value[0],
                upsample_factor=upsample_factor,
                min_quality=min_quality,
                workers=1,
            )[:, None]
        else:
            if axis is not None:
                frames = np.moveaxis(frames, axis + 1, 1)
            rows = np.stack(
                [
                    core.estimate_shifts(
                        frames[:, p] if axis is not None else frames,
                        plan,
                        upsample_factor=upsample_factor,
                        workers=1,
                    )
                    for p, plan in enumerate(plans.value)
                ],
                axis=1,
            )
        yield from zip(keys, rows, strict=True)

    results = rdd.mapPartitions(run).collect()
    order = _ordered([k for k, _ in results])
    table = np.stack([results[i][1] for i in order])  # (n, planes, columns)
    n = len(table)
    if labels is None:
        frame_dim, all_spatial, coords = "time", ("z", "y", "x")[-reference.ndim :], {}
        per_frame = {"time": np.arange(n)}
    else:
        frame_dim, all_spatial, coords = labels.dim, labels.spatial, labels.coords
        per_frame = labels.along((frame_dim,))
        sizes = {len(c) for c in per_frame.values()} - {n}
        if sizes:
            raise XregError(
                f"The RDD has {n} frames, but the movie it is labelled with has "
                f"{sizes.pop()}. Pass the movie these frames come from: `template=movie`."
            )
    if time is not None:
        per_frame[frame_dim] = np.asarray(time)
    plan = plans.value[0]
    rigid_plan = plan.rigid if piecewise else plan
    attrs.update(
        _xarray.estimate_attrs(
            rigid_plan, upsample_factor, whole_frame, bad_frame_threshold, clip, weights
        )
    )
    plans.unpersist()
    if axis is None:
        shifts = _xarray.displacements(
            table[:, 0], plan, per_frame, frame_dim, all_spatial, attrs, min_quality=min_quality
        )
        return _xarray.with_pixel_size(shifts, coords, all_spatial)
    plane_dim = all_spatial[axis]
    in_plane = [str(d) for d in all_spatial if d != plane_dim]
    shifts = xr.DataArray(
        table[:, :, :-1],
        dims=(frame_dim, plane_dim, _xarray.AXIS),
        coords={
            **per_frame,
            _xarray.AXIS: in_plane,
            _xarray.QUALITY: ((frame_dim, plane_dim), table[:, :, -1]),
        },
        name=_xarray.DISPLACEMENT,
        attrs=attrs,
    )
    return shifts


def apply(
    rdd,
    shifts,
    *,
    order: int = 1,
    mode: str = "nearest",
    axis: int | None = None,
):
    """Register an RDD's frames on the executors; returns an RDD of ``(key, frame)``.

    Parameters
    ----------
    rdd : pyspark.RDD
        Records ``((i,), frame)``.
    shifts : xarray.DataArray or array-like
        Displacements in frame order, ``(n, ndim)`` (per plane ``(n, planes, 2)``), or
        the piecewise displacements :func:`estimate` returns (each frame is warped by
        its field, as :meth:`xreg.accessor.RegAccessor.apply` does).
    order, mode
        As in :meth:`xreg.accessor.RegAccessor.apply`.
    axis : int, optional
        For per-plane displacements: the plane axis of the volumes.

    Returns
    -------
    pyspark.RDD
        Records with the same keys and registered frames of the same dtype.
    """
    order, mode = validate.interpolation(order, mode)
    grid = _xarray.grid_of(shifts) if _xarray.is_piecewise(shifts) else None
    if isinstance(shifts, xr.DataArray):
        shifts = shifts.values
    shifts = np.asarray(shifts)
    if shifts.ndim < 2 or shifts.dtype.kind not in "iuf":
        raise XregError(
            f"`shifts` must be numeric displacements (frames, [planes or blocks,] axes); "
            f"got shape {shifts.shape} of dtype {shifts.dtype}."
        )
    if grid is not None:
        shifts = validate.shift_table(shifts, grid.shape)
    table = rdd.context.broadcast(np.asarray(shifts, dtype=np.float64))

    def move(records: Iterable):
        for key, frame in records:
            index = _key(key)
            if index >= len(table.value):
                raise XregError(
                    f"No displacement for frame {key!r}; the table has {len(table.value)} rows."
                )
            frame = np.asarray(frame)
            shift = table.value[index]
            if grid is not None:
                if frame.shape != grid.shape:
                    raise XregError(
                        f"These block shifts were estimated on frames of shape {grid.shape}; "
                        f"frame {key!r} is {frame.shape}."
                    )
                yield (
                    key,
                    core.warp_frames(frame[None], shift[None], grid, order=order, mode=mode)[0],
                )
            elif axis is None:
                yield key, core.shift_frames(frame[None], shift[None], order=order, mode=mode)[0]
            else:
                planes = np.moveaxis(frame, axis, 0)
                moved = core.shift_frames(planes, shift, order=order, mode=mode)
                yield key, np.moveaxis(moved, 0, axis)

    return rdd.mapPartitions(move, preservesPartitioning=True)


def scan_phase(
    rdd,
    *,
    per: str | None = None,
    window: int | None = None,
    n_frames: int = 200,
    max_offset: int | None = None,
    time=None,
) -> xr.DataArray:
    """The bidirectional scan phase of an RDD's frames, measured on the executors.

    Same numerics and result as :meth:`xreg.accessor.RegAccessor.scan_phase`: the
    frames' last two axes are the lines and the scan; axes before them (planes) are
    pooled.  Per movie, only the sampled frames are compared; per frame, the
    offsets are refined on the executors (with ``window``, each frame's statistics
    come back to the driver to be summed over its window).

    Parameters
    ----------
    rdd : pyspark.RDD
        Records ``((i,), frame)``, i = 0..n-1.
    per, window, n_frames, max_offset
        As in :meth:`~xreg.accessor.RegAccessor.scan_phase`.
    time : array-like, optional
        Values for the ``time`` coordinate of per-frame offsets (default: the index).

    Returns
    -------
    xarray.DataArray
        ``scan_phase``: 0-d per movie, ``(time,)`` per frame, with ``quality``.
    """
    per, window = _scanphase.check_per(per, window)
    n_frames = _scanphase.check_n_frames(n_frames)
    shape = np.shape(rdd.first()[1])
    if len(shape) < 2:
        raise XregError(f"Frames must have lines and a scan axis; got shape {shape}.")
    core.scanphase.check_lines(shape[-2], shape[-1])
    width = shape[-1]
    max_offset = _scanphase.check_max_offset(max_offset, width)
    dims = ("y", "x")

    def terms_of(records):
        records = list(records)
        if records:
            frames = np.stack([np.asarray(frame) for _, frame in records])
            terms = core.scanphase.phase_terms(frames, max_offset=max_offset)
            yield from zip((_key(k) for k, _ in records), terms, strict=True)

    if per == "movie":
        chosen = set(core.sample_indices(rdd.count(), n_frames).tolist())

        def summed(records):
            rows = [terms for _, terms in terms_of(records)]
            if rows:
                yield np.sum(rows, axis=0)

        sums = rdd.filter(lambda record: _key(record[0]) in chosen).mapPartitions(summed)
        return _scanphase.movie_phase(
            np.sum(sums.collect(), axis=0)[None], width, max_offset, dims, len(chosen)
        )
    if window == 1:

        def refined(records):
            rows = list(terms_of(records))
            if rows:
                keys, terms = zip(*rows, strict=True)
                values = _scanphase.refine_rows(np.stack(terms), width=width, max_offset=max_offset)
                yield from zip(keys, values, strict=True)

        results = rdd.mapPartitions(refined).collect()
    else:
        results = rdd.mapPartitions(terms_of).collect()
    order = _ordered([k for k, _ in results])
    rows = np.stack([results[i][1] for i in order])
    if window != 1:
        rows = _scanphase.refine_rows(
            _scanphase.rolling_sum(rows, window), width=width, max_offset=max_offset
        )
    labels = {"time": np.arange(len(rows)) if time is None else np.asarray(time)}
    return _scanphase.frame_phase(rows, labels, "time", dims, max_offset, window)


def correct_scan_phase(rdd, offset, *, order: int = 1, mode: str = "nearest", cval=0.0):
    """Undo the scan phase of an RDD's frames on the executors.

    Parameters
    ----------
    rdd : pyspark.RDD
        Records ``((i,), frame)``; the frames' last two axes are the lines and the scan.
    offset : float, xarray.DataArray or array-like
        One offset for all frames, or one per frame in key order, as
        :func:`scan_phase` returns it.
    order, mode, cval
        As in :meth:`xreg.accessor.RegAccessor.correct_scan_phase`.

    Returns
    -------
    pyspark.RDD
        Records with the same keys; the odd lines moved by ``-offset`` along x.
    """
    order, mode = validate.interpolation(order, mode)
    cval = validate.fill_value(cval)
    values = np.asarray(offset.values if isinstance(offset, xr.DataArray) else offset, float)
    if values.ndim > 1:
        raise XregError(f"`offset` must be one number or one per frame; got shape {values.shape}.")
    if values.ndim == 0:
        validate.real(float(values), "offset", fix="Pass the scan phase in pixels.")
    # Checked here, before any work on the executors.
    core.scanphase.check_offset(values, np.shape(rdd.first()[1])[-1])
    table = rdd.context.broadcast(values)

    def correct(records: Iterable):
        for key, frame in records:
            frame = np.asarray(frame)
            offsets = table.value
            if offsets.ndim:
                index = _key(key)
                if index >= len(offsets):
                    raise XregError(
                        f"No offset for frame {key!r}; there are {len(offsets)} offsets."
                    )
                offsets = offsets[index]
            moved = core.scanphase.correct_scan_phase(
                frame[None], offsets, order=order, mode=mode, cval=cval
            )
            yield key, moved[0]

    return rdd.mapPartitions(correct, preservesPartitioning=True)


# ----------------------------------------------------------------------------- one pass


def chunk_runner(sc):
    """Run :func:`xreg.pipeline.run`'s chunk tasks on Spark: ``run(..., runner=chunk_runner(sc))``.

    Each chunk still to do becomes one Spark task that computes that chunk's part of
    the pipeline's graph: read it from the input store, estimate and apply, write it
    into the output store and record it as done.  The driver only prepares (reference,
    store layout) and finishes (displacements); stores must be reachable from every
    executor (an object store, or a shared file system).  A failed task is retried by
    Spark; it rewrites the same bytes.
    """

    def run(written, report):
        blocks = [written.blocks[k] for k in range(written.numblocks[0])]
        counts = sc.parallelize(blocks, len(blocks)).map(_compute_block)
        for count in counts.toLocalIterator():
            report(count)

    return run


def _compute_block(block) -> int:
    # One chunk's graph, run in this executor's Python worker, one thread.
    return int(block.compute(scheduler="sync")[0])
