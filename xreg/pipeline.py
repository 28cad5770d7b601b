"""One registration run: the reference, then one task per chunk, then writing.

Every chunk is read once: the task that reads it estimates its frames' displacements
against the reference plan (prepared once, one key of the graph, shared by every task)
and moves the frames back at once.  :func:`register` gives the result lazily, as two
views of that one graph (the registered movie and its displacements); :func:`run` is
what ``xreg register`` and ``xreg demo`` run: the same graph, written chunk by chunk
into a Zarr store that records each finished chunk, so that a killed run resumes where
it stopped and ends with the same bytes as an uninterrupted one.

Stores are named by strings (paths or fsspec URLs); the run's own records are written
through an fsspec mapper, not the local file system, so that they live in the output
store wherever it is.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Hashable
from typing import NamedTuple

import dask.array as dsa
import numpy as np
import xarray as xr
from dask.callbacks import Callback
from threadpoolctl import threadpool_limits

from . import _xarray, cluster, core, validate
from .errors import XregError

__all__ = ["register", "run"]

RUN_FILE = "xreg-run.json"  # in the output store: the settings and stage of the run
DONE_PREFIX = "xreg-done/"  # in the output store: one object per finished chunk


# --------------------------------------------------------------------------- the lazy pass


class Pass(NamedTuple):
    """One registration pass, prepared: what every chunk's task needs."""

    estimator: _xarray.Estimator
    interpolation: dict  # order, mode, cval
    dim: Hashable
    min_quality: float
    # (axis, position): the frames carry a channel dim at this axis of each chunk
    # (frame dim first); the channel at `position` is estimated on, every one moved.
    channel: tuple[int, int] | None = None


class Channel(NamedTuple):
    """The channel a run estimates on: the movie's channel dim and a position along it."""

    dim: Hashable
    position: int
    label: object  # the coordinate's label (the position without a coordinate)

    def record(self) -> dict:
        """For the run record (JSON)."""
        return {"dim": str(self.dim), "position": self.position, "label": self.label}

    def attrs(self) -> dict:
        """For the displacements' attrs: the label of the channel they were estimated on."""
        return {"channel": self.label}


def choose_channel(
    da: xr.DataArray,
    channel=None,
    *,
    dim: Hashable = "time",
    spatial_dims=None,
    name: str = "channel",
) -> Channel | None:
    """The channel ``channel`` names (a label, or a position; :func:`xreg.validate.channel`).

    None for a movie without a channel dim (or other extra dim, ``_xarray.EXTRA_DIMS``)
    when no channel is asked for.  ``name``: the option, for messages (``--channel``).

    Raises
    ------
    XregError
        If the movie has channels and none is chosen, the channel is not one of the
        movie's (listing them), the movie has no channel dim, or has several extra dims.
    """
    _, extra = _xarray.split_dims(da, dim, spatial_dims)
    if not extra:
        if channel is None:
            return None
        raise XregError(
            f"`{name}` {channel!r} was given, but the movie has no channel dim (dims "
            f"{da.dims}); leave `{name}` out."
        )
    if len(extra) > 1:
        raise XregError(
            f"The movie has dims {da.dims}: several extra dims {extra} besides {dim!r} and "
            f"the spatial dims; `{name}` picks along one. Select the others first, e.g. "
            f"`movie.isel({extra[1]!s}=0)`."
        )
    extra_dim = extra[0]
    if extra_dim in da.coords:
        labels = da[extra_dim].values.tolist()  # plain Python values (JSON, messages)
    else:
        labels = list(range(da.sizes[extra_dim]))
    position = validate.channel(channel, labels, name=name, dim=str(extra_dim))
    return Channel(extra_dim, position, labels[position])


def prepare(
    da: xr.DataArray,
    reference=None,
    *,
    dim: Hashable = "time",
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
    channel: Channel | None = None,
    **estimate_options,
) -> Pass:
    """Check every option and prepare the reference plan (building the reference if None).

    ``estimate_options`` are those of :meth:`xreg.accessor.RegAccessor.estimate`
    (``smooth`` excepted: it needs a second pass).  With a ``channel`` (from
    :func:`choose_channel`) the plan and the reference are the channel's, and the
    chunks' frames are those of ``da`` as it is (frame dim first).
    """
    order, mode = validate.interpolation(order, mode)
    cval = validate.fill_value(cval, da.dtype)
    chosen = da if channel is None else da.isel({channel.dim: channel.position})
    estimator = _xarray.prepare_estimate(chosen, reference, dim=dim, **estimate_options)
    if channel is not None:
        estimator = estimator._replace(attrs={**estimator.attrs, **channel.attrs()})
    interpolation = {"order": order, "mode": mode, "cval": cval}
    axis = None if channel is None else (da.dims.index(channel.dim), channel.position)
    return Pass(estimator, interpolation, dim, estimator.options["min_quality"], axis)


def _move_back(frames, table, plan, interpolation):
    """The frames ``(n, *frame)`` moved back by their rows of the estimate table."""
    ndim = frames.ndim - 1
    if isinstance(plan, core.PiecewisePlan):
        n, grid = len(frames), plan.grid
        blocks = table[:, ndim + 1 :].reshape((n,) + grid.grid_shape + (ndim + 1,))
        return core.warp_frames(frames, blocks[..., :ndim], grid, **interpolation)
    return core.shift_frames(frames, table[:, :ndim], **interpolation)


def _register_frames(frames, plan, *, function, kwargs, interpolation, workers, channel=None):
    """Estimate and apply on one stack of frames ``(n, *frame)``: (registered, table).

    ``channel`` (axis, position): the frames are ``(n, ..., channel, ..., *frame)``;
    the displacements are estimated on that channel's frames and move every channel.
    """
    if channel is None:
        table = function(frames, plan=plan, workers=workers, **kwargs)
        return _move_back(frames, table, plan, interpolation), table
    axis, position = channel
    stacked = np.moveaxis(frames, axis, 1)  # (n, channels, *frame)
    table = function(stacked[:, position], plan=plan, workers=workers, **kwargs)
    n, channels = stacked.shape[:2]
    flat = stacked.reshape((n * channels,) + stacked.shape[2:])
    # Each frame's row once per channel, in the order the channels are stacked.
    fixed = _move_back(flat, np.repeat(table, channels, axis=0), plan, interpolation)
    return np.moveaxis(fixed.reshape(stacked.shape), 1, axis), table


def _register_block(frames, plan, *, function, kwargs, interpolation, channel=None):
    """One chunk's task: a one-item object array holding (registered frames, table)."""
    pair = np.empty(1, dtype=object)
    # Dask runs chunks in parallel: one thread each, as `estimate` does.
    pair[0] = _register_frames(
        frames,
        plan,
        function=function,
        kwargs=kwargs,
        interpolation=interpolation,
        workers=1,
        channel=channel,
    )
    return pair


def _first(pair):
    return pair[0][0]


def _second(pair):
    return pair[0][1]


def lazy_pairs(data: dsa.Array, step: Pass) -> dsa.Array:
    """One task per time chunk of ``data`` (dims ``(time, *frame)``): (registered, table).

    The plan enters the graph once, as one key that every task depends on.
    """
    est = step.estimator
    plan = _xarray.graph_plan(est)
    return dsa.map_blocks(
        _register_block,
        data,
        plan,
        function=est.function,
        kwargs=est.kwargs,
        interpolation=step.interpolation,
        channel=step.channel,
        dtype=object,
        drop_axis=list(range(1, data.ndim)),
        chunks=((1,) * len(data.chunks[0]),),
        meta=np.empty((0,), dtype=object),
    )


def _views(pairs: dsa.Array, data: dsa.Array, width: int, dtype) -> tuple[dsa.Array, dsa.Array]:
    """The registered frames and the (n, width) table, two views of the same tasks."""
    fixed = pairs.map_blocks(
        _first,
        new_axis=list(range(1, data.ndim)),
        chunks=data.chunks,
        dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype=dtype),
    )
    table = pairs.map_blocks(
        _second,
        new_axis=[1],
        chunks=(data.chunks[0], (width,)),
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
    )
    return fixed, table


def _flag_bad(quality: np.ndarray, threshold: float) -> np.ndarray:
    return core.flag_bad_frames(quality, threshold)


def lazy_displacements(table: dsa.Array, da: xr.DataArray, step: Pass) -> xr.DataArray:
    """The displacement DataArray ``estimate`` returns, lazily, from the per-chunk table.

    The layout comes from :func:`xreg._xarray.displacements` (run on a table of
    zeros); its values are then replaced by lazy views of ``table``.  ``bad_frame``
    needs every frame's quality: one small task over the whole quality column.
    """
    est = step.estimator
    ndim, n = len(est.spatial), table.shape[0]
    template = displacements(np.zeros((n, est.width)), da, step)
    quality = table[:, ndim]
    bad = (
        quality.rechunk(-1)
        .map_blocks(_flag_bad, est.attrs["bad_frame_threshold"], dtype=bool)
        .rechunk(table.chunks[:1])
    )
    values = {_xarray.QUALITY: quality, _xarray.BAD_FRAME: bad}
    data = table[:, :ndim]
    if isinstance(est.plan, core.PiecewisePlan):
        grid_shape = est.plan.grid.grid_shape
        blocks = table[:, ndim + 1 :].reshape((n,) + grid_shape + (ndim + 1,))
        values = {
            _xarray.QUALITY: blocks[..., ndim],
            "rigid": table[:, :ndim],
            "rigid_quality": quality,
            _xarray.BAD_FRAME: bad,
        }
        data = blocks[..., :ndim]
    # Each coordinate keeps its dims and attrs; only its values become lazy.
    coords = {name: template[name].variable.copy(data=value) for name, value in values.items()}
    return template.copy(data=data).assign_coords(coords)


def displacements(table: np.ndarray, da: xr.DataArray, step: Pass) -> xr.DataArray:
    """The displacement DataArray ``estimate`` returns, from the computed table."""
    est, dim = step.estimator, step.dim
    shifts = _xarray.displacements(
        table,
        est.plan,
        _xarray.time_coords(da, dim),
        dim,
        est.spatial,
        est.attrs,
        None,
        step.min_quality,
    )
    return _xarray.with_pixel_size(shifts, da.coords, est.spatial)


def _whole_channels(da: xr.DataArray, channel: Channel | None) -> xr.DataArray:
    """``da`` with its channels in one chunk: a task reads every channel of its frames."""
    if channel is None or da.chunks is None:
        return da
    axis = da.dims.index(channel.dim)
    if len(da.chunks[axis]) == 1:
        return da
    # The data only: `da.chunk` would also chunk numpy labels, unlike the movie's time.
    return da.copy(data=da.data.rechunk({axis: -1}))


def _registered_like(da: xr.DataArray, frames, dims) -> xr.DataArray:
    """The registered frames (dims ``dims``) labelled as the movie: dims, coords, attrs."""
    out = xr.DataArray(frames, dims=dims, coords=da.coords, attrs=da.attrs, name=da.name)
    out = out.transpose(*da.dims)
    out.encoding = dict(da.encoding)
    return out


def register(
    da: xr.DataArray,
    reference=None,
    *,
    dim: Hashable = "time",
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
    bad_frames: str = "apply",
    channel=None,
    **estimate_options,
) -> tuple[xr.DataArray, xr.DataArray]:
    """See :meth:`xreg.accessor.RegAccessor.register`.

    ``channel``: a movie with a channel dim is estimated on this channel (a label or
    a position, :func:`choose_channel`), and every channel is moved, in the same task.
    """
    bad_frames = validate.choice(bad_frames, "bad_frames", _xarray.BAD_FRAME_CHOICES)
    spatial_dims = estimate_options.get("spatial_dims")
    chosen = choose_channel(da, channel, dim=dim, spatial_dims=spatial_dims)
    if estimate_options.get("smooth") or bad_frames != "apply":
        # Each frame's displacement then depends on its neighbours': two passes.
        one = da if chosen is None else da.isel({chosen.dim: chosen.position})
        shifts = _xarray.estimate(one, reference, dim=dim, **estimate_options)
        if chosen is not None:
            shifts = shifts.assign_attrs(chosen.attrs())
        fixed = _xarray.apply(
            da, shifts, order=order, mode=mode, cval=cval, bad_frames=bad_frames, dim=dim
        )
        return fixed, shifts
    channels = () if chosen is None else (chosen.dim,)
    ordered = _whole_channels(da.transpose(dim, *channels, ...), chosen)
    step = prepare(
        ordered,
        reference,
        dim=dim,
        order=order,
        mode=mode,
        cval=cval,
        channel=chosen,
        **estimate_options,
    )
    est, dims = step.estimator, (dim, *channels, *step.estimator.spatial)
    frames = ordered.transpose(*dims)
    if da.chunks is None:
        fixed, table = _register_frames(
            frames.values,
            est.plan,
            function=est.function,
            kwargs=est.kwargs,
            interpolation=step.interpolation,
            workers=None,
            channel=step.channel,
        )
        return _registered_like(da, fixed, dims), displacements(table, da, step)
    data = frames.data
    fixed, table = _views(lazy_pairs(data, step), data, est.width, da.dtype)
    return _registered_like(da, fixed, dims), lazy_displacements(table, da, step)


# --------------------------------------------------------------------------- resumable runs


class RunStore:
    """The run's own records inside the output store, through an fsspec mapper.

    ``xreg-run.json`` holds the settings and the stage (``started``, ``writing``,
    ``complete``); ``xreg-done/<chunk>`` holds a finished chunk's estimates (JSON: one
    row per frame), written only after the chunk's registered frames are stored.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        import fsspec

        self.url = url
        self.storage_options = storage_options or {}
        self.fs, self.root = fsspec.core.url_to_fs(url, **self.storage_options)
        self.mapper = self.fs.get_mapper(self.root)

    def exists(self) -> bool:
        return self.fs.exists(self.root)

    def record(self) -> dict | None:
        try:
            return json.loads(self.mapper[RUN_FILE])
        except (KeyError, ValueError):
            return None

    def write_record(self, state: dict) -> None:
        # Written aside, then moved: a run killed meanwhile leaves the old record whole.
        temporary = f"{RUN_FILE}.tmp"
        self.mapper[temporary] = json.dumps(state, indent=1).encode()
        self.fs.mv(f"{self.root}/{temporary}", f"{self.root}/{RUN_FILE}")

    def remove(self) -> None:
        self.fs.rm(self.root, recursive=True)

    def remove_partial_writes(self) -> None:
        """Remove objects a killed write left half done.

        zarr's local store writes each object to ``<key>.<uuid>.partial`` and then
        renames it; a run killed in between leaves that file (object stores write
        whole objects, so this is for local stores only).
        """
        if "file" not in np.atleast_1d(self.fs.protocol):
            return
        for path in self.fs.find(self.root):
            if path.endswith(".partial"):
                self.fs.rm(path)

    def mark_done(self, index: int, table: np.ndarray) -> None:
        self.mapper[f"{DONE_PREFIX}{index}"] = json.dumps(table.tolist()).encode()

    def done(self) -> dict[int, np.ndarray]:
        """The finished chunks' tables; a record cut short by a kill counts as not done."""
        try:
            entries = self.fs.ls(f"{self.root}/{DONE_PREFIX}", detail=False)
        except FileNotFoundError:
            return {}
        keys = [DONE_PREFIX + entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries]
        if not keys:  # (the folder is there, no record yet: fsspec fails on no keys)
            return {}
        # Fetched in one call: an object store serves the requests concurrently, where
        # one by one each chunk's record would cost a round trip (62,500 at 1 TB).
        tables = {}
        for key, content in self.mapper.getitems(keys, on_error="omit").items():
            try:
                tables[int(key.removeprefix(DONE_PREFIX))] = np.array(json.loads(content))
            except ValueError:
                continue
        return tables


def _resumable(store: RunStore, settings: dict, overwrite: bool) -> dict | None:
    """The recorded state of an earlier run with these settings, to resume; None for a
    new run.  Checks only: nothing is removed here, so a run that fails before it
    starts (a bad reference, say) leaves the output as it was."""
    if not store.exists() or overwrite:
        return None
    state = store.record()
    if state is None:
        raise XregError(
            f"{store.url} exists and was not started by xreg register; "
            "pass --overwrite to replace it."
        )
    if state.get("settings") != settings:
        raise XregError(
            f"{store.url} holds a run with other settings or input; pass --overwrite "
            "to start again, or repeat the earlier command to resume it."
        )
    return state


def _start(store: RunStore, settings: dict) -> dict:
    """Make the output a new run's: what was there (an output the user asked to
    overwrite, or this run's own attempt killed before it wrote) is removed."""
    if store.exists():
        store.remove()
    store.fs.makedirs(store.root, exist_ok=True)
    state = {"settings": settings, "stage": "started"}
    store.write_record(state)
    return state


COMPRESSIONS = ("auto", "zstd", "lz4", "none")


def _compressors(compression: str, dtype):
    """Zarr v3 compressors for the registered movie (figures: benchmarks/RESULTS.md).

    ``auto``: Blosc zstd (level 1, byte shuffle) for integer movies, which it stores
    in a quarter of their size; none for float movies, whose noisy mantissas it
    shrinks by 10-17 % only, at several times the cost of writing them raw.
    """
    from zarr.codecs import BloscCodec

    if compression == "auto":
        compression = "zstd" if np.dtype(dtype).kind in "iu" else "none"
    if compression == "none":
        return None
    return (BloscCodec(cname=compression, clevel=1, shuffle="shuffle"),)


def _write_block(pair, index, *, target, regions, store):
    """Store one chunk's registered frames, then record it as done: the frames written."""
    fixed, table = pair[0]
    chunk = int(index[0])
    target[regions[chunk]] = fixed
    store.mark_done(chunk, table)
    return np.array([len(fixed)])


def run(
    movie: xr.DataArray,
    output: str,
    *,
    reference: Callable[[], xr.DataArray],
    settings: dict,
    estimate_options: dict | None = None,
    overwrite: bool = False,
    compression: str = "auto",
    order: int = 1,
    progress: Callable[[int], None] | None = None,
    storage_options: dict | None = None,
    runner: Callable | None = None,
    channel=None,
) -> xr.Dataset:
    """Register ``movie`` into a new Zarr store in one pass, resumably.

    Parameters
    ----------
    movie : xarray.DataArray
        Dask-backed movie ``(time, ...)``, chunked over time only.
    output : str
        The Zarr store to create (a path or an fsspec URL).  If it holds an
        unfinished run with the same ``settings``, that run resumes from the chunks
        already done; a store this function did not start is never touched unless
        ``overwrite``.
    reference : callable
        Returns the reference (of the ``channel``'s frames, if one is chosen); called
        once, when the run starts (a resumed run reads it back from the store).
    settings : dict
        JSON-serialisable description of the run (input, options); a resumed run
        must match it (and the channel, which the run adds to it).
    estimate_options : dict, optional
        Keyword arguments of :meth:`xreg.accessor.RegAccessor.estimate`.
    overwrite : bool, default False
        Replace whatever ``output`` holds; it is removed only once the reference is
        built, so a run that fails before that leaves it as it was.
    compression : {"auto", "zstd", "lz4", "none"}, default "auto"
        Of the registered movie: Blosc (level 1, byte shuffle) with zstd or lz4, or
        none; ``auto`` is zstd for integer movies and none for float ones.
    order : int
        Spline order that moves the frames back (0..5; 1, linear, by default, as
        :meth:`xreg.accessor.RegAccessor.apply`).
    progress : callable, optional
        ``progress(frames)``: called first with the frames already done (0 on a fresh
        run, all of them on a finished store), then as chunks are written.
    storage_options : dict, optional
        For fsspec, when ``output`` is a URL.
    runner : callable, optional
        ``runner(written, report)`` computes the pass elsewhere: ``written`` is a Dask
        array with one block per chunk still to do, each block's graph reading,
        registering and writing its chunk and giving its frame count; ``report`` as
        ``progress``.  Default: Dask (a ``distributed`` cluster if a client is current).
        :func:`xreg.spark.chunk_runner` runs the blocks as Spark tasks.
    channel : str or int, optional
        For a movie with a channel dim: the channel (a label, or a position; see
        :func:`choose_channel`) whose frames give the displacements; every channel is
        moved by them, in the task that estimated them, and written.

    Returns
    -------
    xarray.Dataset
        The output store, opened lazily: the registered movie (same name, dims,
        coords, attrs, dtype and chunks as ``movie``), ``displacement`` and
        ``reference``.

    Notes
    -----
    Stages: ``started`` (the reference is built, then the store's layout written),
    ``writing`` (one graph: per chunk, read, estimate, apply, store the frames,
    then record the chunk as done with its estimates), ``complete`` (the
    displacements, flagged for bad frames over the whole movie, are written).  Every
    value is a deterministic function of the input, so a resumed run's bytes equal
    an uninterrupted run's.
    """
    import zarr

    compression = validate.choice(compression, "compression", COMPRESSIONS)
    order = validate.interpolation(order, "nearest")[0]  # before the reference is built
    report = progress or (lambda frames: None)
    spatial_dims = (estimate_options or {}).get("spatial_dims")
    chosen = choose_channel(movie, channel, spatial_dims=spatial_dims)
    if chosen is not None:  # a run resumes only on the same channel
        settings = {**settings, "channel": chosen.record()}
    store = RunStore(output, storage_options)
    state = _resumable(store, settings, overwrite)
    if "time" not in movie.dims[:1]:
        movie = movie.transpose("time", ...)
    movie = _whole_channels(_xarray.labels_chunked_like_movie(movie), chosen)
    name = movie.name if movie.name is not None else "movie"
    sizes = movie.chunksizes["time"]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n = int(starts[-1])
    zarr_options = {"storage_options": storage_options} if storage_options else {}

    if state is not None and state["stage"] == "complete":
        report(n)
        with _xarray_zarr_quietly():
            return xr.open_zarr(output, **zarr_options)
    if state is None or state["stage"] == "started":
        # First, and checked: if it fails, the output is still as it was.
        ref = reference()
        core.check_reference(np.asarray(ref))
        state = _start(store, settings)
        _write_layout(movie, name, ref, output, compression, zarr_options)
        state["stage"] = "writing"
        store.write_record(state)

    store.remove_partial_writes()  # a resumed run's store holds no half-written object
    with _xarray_zarr_quietly():
        stored = xr.open_zarr(output, **zarr_options)["reference"].load()
    # The reference as stored: exact (float64), attrs included, so a resumed run
    # prepares the same plan.
    step = prepare(movie, stored, order=order, channel=chosen, **(estimate_options or {}))
    done = store.done()
    report(int(sum(sizes[i] for i in done)))
    todo = [i for i in range(len(sizes)) if i not in done]
    if todo:
        target = zarr.open_array(output, path=name, mode="r+", **zarr_options)
        data = movie.data.blocks[todo]
        if runner is not None and step.estimator.weighting is not None:
            # The runner computes each chunk's graph on its own: the plan, fitted on the
            # first frames, is made here once (those frames are read once more), not in
            # every task.
            plan = _xarray.graph_plan(step.estimator).compute(scheduler="sync")
            step = step._replace(estimator=step.estimator._replace(plan=plan, weighting=None))
        pairs = lazy_pairs(data, step)
        regions = {i: slice(int(starts[i]), int(starts[i + 1])) for i in todo}
        written = dsa.map_blocks(
            _write_block,
            pairs,
            dsa.from_array(np.array(todo), chunks=1),
            target=target,
            regions=regions,
            store=store,
            dtype=np.int64,
        )
        with threadpool_limits(limits=1, user_api="blas"):
            if runner is not None:
                runner(written, report)
            elif not cluster.compute_on_cluster(written, report):  # else the local scheduler
                with _Progress(written.name, report):
                    written.compute()
        # A worker killed while writing left its object half written (the chunk was
        # retried and written whole): every writer is done now, so any is an orphan.
        store.remove_partial_writes()
        done = store.done()
    table = np.concatenate([done[i] for i in range(len(sizes))])
    shifts = displacements(table, movie, step)
    _write_displacement(shifts, output, sizes[0], zarr_options)
    state["stage"] = "complete"
    store.write_record(state)
    with _xarray_zarr_quietly():
        return xr.open_zarr(output, **zarr_options)


def _xarray_zarr_quietly():
    from .io import _zarr_quietly

    return _zarr_quietly()


def _write_layout(movie, name, reference, output, compression, zarr_options) -> None:
    """The store's metadata, the movie's labels and the reference; no frames yet."""
    from .io import to_zarr

    # Labels are small: computed now, so that they are written with the layout.
    labels = {c: movie[c].load() for c in movie.coords if c not in movie.dims}
    layout = xr.Dataset(
        {name: movie.assign_coords(labels), "reference": reference.astype(np.float64)},
        attrs={"history": "registered by xreg"},
    )
    for variable in layout.variables.values():
        variable.encoding = {}
    layout[name].encoding["compressors"] = _compressors(compression, movie.dtype)
    to_zarr(layout, output, mode="a", compute=False, **zarr_options)


def _write_displacement(shifts, output, frames_per_chunk, zarr_options) -> None:
    from .io import to_zarr

    dataset = shifts.drop_vars("time", errors="ignore").to_dataset()
    # In the movie's time chunks: `quality` becomes a coordinate of the whole store,
    # and chunks that disagree along time would trip up readers.
    for variable in dataset.variables.values():
        variable.encoding = {}
        if variable.dims[:1] == ("time",):
            variable.encoding["chunks"] = (frames_per_chunk,) + variable.shape[1:]
    to_zarr(dataset, output, mode="a", **zarr_options)


@contextlib.contextmanager
def progress_bar(total: int, *, quiet: bool = False, label: str = "register"):
    """A tqdm bar on stderr counting frames 0..total; yields ``update(frames)``.

    The bar appears at the first update, starting there: a resumed run's bar starts
    at the frames already done, a finished store's is full at once.
    """
    if quiet:
        yield lambda frames: None
        return
    from tqdm import tqdm

    bars = []

    def update(frames: int) -> None:
        if not bars:
            bar = tqdm(total=total, initial=frames, unit="frame", desc=label, file=sys.stderr)
            bars.append(bar)
        else:
            bars[0].update(frames)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


class _Progress(Callback):
    """Reports the frames of each chunk as its write task finishes."""

    def __init__(self, name: str, report: Callable[[int], None]):
        super().__init__()
        self._name, self._report = name, report

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(key, tuple) and key[0] == self._name:
            self._report(int(result[0]))
