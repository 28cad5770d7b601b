"""Glue between labelled arrays and the numpy core: dims, chunks, coords, attrs.

Everything that knows about xarray or Dask lives here; the accessor only
delegates, and the core never sees a label.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import dask
import dask.array
import numpy as np
import xarray as xr
from dask.delayed import Delayed
from threadpoolctl import threadpool_limits

from . import core, validate
from ._displacement import DisplacementArray
from .errors import XregError

AXIS = "axis"
QUALITY = "quality"
BAD_FRAME = "bad_frame"
BAD_FRAME_CHOICES = ("apply", "leave", "interpolate")
DISPLACEMENT = "displacement"
PIXEL_SIZE = "pixel_size"


# --------------------------------------------------------------------------- checks


# Dims that are never spatial unless ``spatial_dims`` says so: they are broadcast by
# `apply` (one displacement per frame moves every channel) and refused by `estimate`.
EXTRA_DIMS = ("channel", "c", "camera", "wavelength")


def split_dims(
    da: xr.DataArray, dim: Hashable = "time", spatial_dims=None
) -> tuple[tuple[Hashable, ...], tuple[Hashable, ...]]:
    """The spatial dims of a movie, in order, and its extra (broadcast) dims.

    ``spatial_dims`` names the spatial dims; by default they are the dims other than
    ``dim`` and the :data:`EXTRA_DIMS` (``channel``, ``camera``, ...).

    Raises
    ------
    XregError
        If the frame dim is missing or empty, ``spatial_dims`` names dims the movie
        lacks, the frames are not 2-D or 3-D, the dtype is not real numeric, or the
        frames are split into chunks in space.
    """
    if not isinstance(da, xr.DataArray):
        raise XregError(f"Expected an xarray.DataArray; got {type(da).__name__}.")
    if dim not in da.dims:
        raise XregError(
            f"The movie has no {dim!r} dim; its dims are {da.dims}. Pass the frame "
            f"dim as `dim=...`, or rename it: `da.rename({{'frame': {dim!r}}})`."
        )
    others = tuple(d for d in da.dims if d != dim)
    if spatial_dims is None:
        spatial = tuple(d for d in others if d not in EXTRA_DIMS)
    else:
        spatial = validate.dim_names(spatial_dims, "spatial_dims", da.dims, exclude=(dim,))
    extra = tuple(d for d in others if d not in spatial)
    if len(spatial) not in (2, 3):
        raise XregError(
            f"Frames must be 2-D (y, x) or 3-D (z, y, x); dims {da.dims} give "
            f"{len(spatial)}-D frames {spatial}. Name the spatial dims with "
            "`spatial_dims=('y', 'x')`, select or stack the extra dims "
            "(e.g. `da.isel(channel=0)`), or add a missing one."
        )
    if da.sizes[dim] == 0:
        raise XregError(f"The movie has no frames (its {dim!r} dim is empty).")
    if da.dtype.kind not in "iuf":
        raise XregError(
            f"Frames must hold real numbers; got dtype {da.dtype}. "
            "Convert first, e.g. `da.astype('float32')`."
        )
    if da.chunks is not None:
        split = [d for d in spatial if len(da.chunksizes[d]) > 1]
        if split:
            fix = ", ".join(f"{d!s}=-1" for d in spatial)
            raise XregError(
                f"Frames are split into chunks along {split}; each frame must be one "
                f"chunk in space. Chunk over {dim!r} only: `da.chunk({fix})`."
            )
    return spatial, extra


def frame_dims(da: xr.DataArray, dim: Hashable = "time", spatial_dims=None) -> tuple[Hashable, ...]:
    """The spatial dims of a movie, in order, after checking it can be registered.

    Like :func:`split_dims`, for the operations that take one frame per time point
    (estimate, reference): extra dims such as ``channel`` are refused with the fix.
    """
    spatial, extra = split_dims(da, dim, spatial_dims)
    if extra:
        pick = ", ".join(f"{d!s}=..." for d in extra)
        raise XregError(
            f"The movie has dims {da.dims}: besides {dim!r} and the spatial dims "
            f"{spatial}, it has {extra}. Estimate on one of them, then apply to all: "
            f"`shifts = movie.sel({pick}).reg.estimate(ref)`; `movie.reg.apply(shifts)` "
            f"moves every {extra[0]!s} by the same displacement."
        )
    return spatial


def reference_array(reference, da: xr.DataArray, spatial: Sequence[Hashable]) -> np.ndarray:
    """The reference as a float numpy frame with the movie's spatial shape and order."""
    frame_shape = tuple(da.sizes[d] for d in spatial)
    if isinstance(reference, xr.Dataset):
        raise XregError(
            f"The reference is a Dataset; pass one of its variables {list(reference.data_vars)}, "
            "e.g. `ref['movie']`."
        )
    if isinstance(reference, xr.DataArray):
        if set(reference.dims) != set(spatial):
            raise XregError(
                f"The reference has dims {reference.dims}; it must have the frame dims "
                f"{tuple(spatial)}. Pass one frame, e.g. `movie.isel(time=0)`, or an average."
            )
        # Labelled with the movie's coordinates in another order (one flipped): taken
        # by label.  Other coordinates (another session's stage positions) do not say
        # where the reference lies: it is taken by position, as a numpy frame is.
        for d in spatial:
            if d in reference.indexes and d in da.indexes:
                own, movie = reference.indexes[d], da.indexes[d]
                if not own.equals(movie) and own.is_unique and set(own) == set(movie):
                    reference = reference.sel({d: movie})
        reference = reference.transpose(*spatial).values
    reference = np.asarray(reference)
    if reference.shape != frame_shape:
        raise XregError(
            f"The reference has shape {reference.shape}; frames have shape {frame_shape} "
            f"{tuple(spatial)}. Pass a reference of the frame's shape."
        )
    if reference.dtype.kind not in "iuf":
        raise XregError(f"The reference must hold real numbers; got dtype {reference.dtype}.")
    return reference


def time_coords(da: xr.DataArray, dim: Hashable) -> dict:
    """The coordinates that run along the frame dim only (labels to carry over)."""
    return {name: coord for name, coord in da.coords.items() if coord.dims == (dim,)}


def labels_chunked_like_movie(da: xr.DataArray) -> xr.DataArray:
    """``da`` with its Dask-backed coordinates chunked as the movie is.

    A label stored plain beside a chunked movie (``trial`` along ``time``, or the
    ``bad_frame`` flags xreg writes) opens with its own chunks, and xarray then refuses
    the DataArray's chunk sizes ("inconsistent chunks"). Rechunking the label (lazily)
    to the movie's chunks keeps it, and the label's stored chunking, which no longer
    holds, is dropped from its encoding so that ``to_zarr`` writes it afresh.  Done
    where a movie enters (the accessors, :func:`xreg.plot.summary`, ``CrossCorr``, the
    pipeline).
    """
    if da.chunks is None:
        return da
    chunks = dict(zip(da.dims, da.chunks, strict=True))
    fixed = {}
    for name, coord in da.coords.items():
        if coord.chunks is None or name in da.dims:
            continue
        wanted = tuple(chunks[d] for d in coord.dims)
        if coord.chunks != wanted:
            coord = coord.chunk(dict(zip(coord.dims, wanted, strict=True)))
            coord.encoding = {
                k: v for k, v in coord.encoding.items() if k not in ("chunks", "preferred_chunks")
            }
            fixed[name] = coord
    return da.assign_coords(fixed) if fixed else da


# --------------------------------------------------------------------------- estimate


def _estimate_chunk(frames, *, plan, upsample_factor, workers):
    n = frames.shape[0]
    return core.estimate_shifts(
        frames.reshape((n,) + plan.shape), plan, upsample_factor=upsample_factor, workers=workers
    )


def _estimate_piecewise_chunk(frames, *, plan, upsample_factor, min_quality, workers):
    n = frames.shape[0]
    rigid, blocks = core.estimate_piecewise(
        frames.reshape((n,) + plan.grid.shape),
        plan,
        upsample_factor=upsample_factor,
        min_quality=min_quality,
        workers=workers,
    )
    return np.concatenate([rigid, blocks.reshape(n, -1)], axis=1)


def _per_frame(da, dim, spatial, function, width, **kwargs) -> np.ndarray:
    """Run ``function`` (frames -> (n, width) table) over every chunk; the computed table.

    One pass over the frames: for a Dask-backed movie each chunk is read once.  A
    ``plan`` that is a Dask ``Delayed`` (:func:`graph_plan`) is one task of the graph.
    """
    lazy = da.chunks is not None
    if lazy and isinstance(kwargs.get("plan"), Delayed):
        data = da.transpose(dim, *spatial).data
        table = dask.array.map_blocks(
            _chunk_table,
            data,
            kwargs.pop("plan"),
            function=function,
            kwargs={**kwargs, "workers": 1},
            drop_axis=list(range(2, data.ndim)),
            chunks=(data.chunks[0], (width,)),
            dtype=np.float64,
            meta=np.empty((0, 0), np.float64),
        )
        with threadpool_limits(limits=1, user_api="blas"):
            return table.compute()
    result = xr.apply_ufunc(
        function,
        da,
        input_core_dims=[list(spatial)],
        output_core_dims=[["_result"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"_result": width}},
        # Dask already runs chunks in parallel; numpy input gets the core's threads.
        kwargs={**kwargs, "workers": 1 if lazy else None},
        keep_attrs=False,
    ).transpose(dim, "_result")
    if lazy:
        with threadpool_limits(limits=1, user_api="blas"):
            result = result.compute()
    return result.values


def _chunk_table(frames, plan, *, function, kwargs):
    return function(frames, plan=plan, **kwargs)


METHODS = validate.METHODS
# Reference percentiles that frames and reference are clipped to by default (suite2p's).
CLIP_PERCENTILES = (1, 99)


class Estimator(NamedTuple):
    """What estimating needs, prepared once: the plan and the per-chunk function."""

    spatial: tuple
    plan: object  # core.ReferencePlan or core.PiecewisePlan
    function: object  # frames -> (n, width) table
    width: int
    kwargs: dict  # of ``function``, besides the frames, the plan and ``workers``
    attrs: dict  # of the displacement array
    options: dict  # every estimate option, checked (validate.estimate_options)
    # For a lazy movie: (make, sample), the plan with its noise weighting being
    # ``make(sample)`` on the movie's first frames, computed in the estimate's own pass
    # (:func:`graph_plan`); ``plan`` then holds only what the layout needs
    # (:class:`PlanLayout`).  None: ``plan`` is the plan.
    weighting: tuple | None = None


def graph_plan(est: Estimator):
    """The estimator's plan as one key of a Dask graph that every task depends on.

    For a lazy movie it is the task that fits the noise on the first frames and
    prepares the plan: those frames are read in the same pass as the rest (each chunk
    once), not before.
    """
    if est.weighting is None:
        return dask.delayed(est.plan, pure=True)
    make, sample = est.weighting
    # Its chunks, not optimised on their own: that would fuse their reads into new
    # keys, and those chunks would be read twice.  Only the frame axis is chunked.
    blocks = sample.to_delayed(optimize_graph=False).ravel().tolist()
    return dask.delayed(_plan_of_blocks, pure=True)(make, blocks)


def _plan_of_blocks(make, blocks):
    return make(np.concatenate(blocks))


def prepare_estimate(
    da: xr.DataArray,
    reference=None,
    *,
    upsample_factor: int = 10,
    dim: Hashable = "time",
    max_shift=None,
    smooth: int | None = None,
    bad_frame_threshold: float = 6.0,
    method: str = "rigid",
    block_size=(128, 128),
    overlap: float = 0.5,
    min_quality: float = 0.3,
    clip=CLIP_PERCENTILES,
    weights=None,
    whole_frame: bool = False,
    spatial_dims=None,
) -> Estimator:
    """Check the options, build the reference if none is given, prepare its plan.

    Shared by :func:`estimate` and the one-pass pipeline (:mod:`xreg.pipeline`).
    """
    spatial = frame_dims(da, dim, spatial_dims)
    # Every option checked before any work (building a reference can take a while).
    options = validate.estimate_options(
        tuple(da.sizes[d] for d in spatial),
        upsample_factor=upsample_factor,
        max_shift=max_shift,
        smooth=smooth,
        bad_frame_threshold=bad_frame_threshold,
        method=method,
        block_size=block_size,
        overlap=overlap,
        min_quality=min_quality,
        clip=clip,
        weights=weights,
        whole_frame=whole_frame,
    )
    (
        upsample_factor,
        max_shift,
        smooth,
        bad_frame_threshold,
        method,
        block_size,
        overlap,
        min_quality,
        clip,
        weights,
    ) = (options[k] for k in validate.ESTIMATE_OPTIONS)
    attrs = {}
    if reference is None:
        reference = build_reference(
            da, dim=dim, max_shift=max_shift, clip=clip, spatial_dims=spatial
        )
    attrs.update(reference_attrs(reference))
    reference = reference_array(reference, da, spatial)
    make = functools.partial(
        weighted_plan,
        reference,
        clip=clip,
        piecewise=method == "piecewise",
        max_shift=max_shift,
        whole_frame=whole_frame,
        block_size=block_size,
        overlap=overlap,
        weights=weights,
    )
    sample = noise_sample(da, dim, spatial)
    if da.chunks is None:
        plan, weighting = make(sample), None
    else:
        # The plan is made in the graph; here only what the layout needs of it.
        plan, weighting = make.func(reference, None, layout=True, **make.keywords), (make, sample)
    ndim = len(spatial)
    if method == "piecewise":
        function, rigid_plan = _estimate_piecewise_chunk, plan.rigid
        width = (ndim + 1) * (1 + int(np.prod(plan.grid.grid_shape)))
        kwargs = {"upsample_factor": upsample_factor, "min_quality": min_quality}
    else:
        rigid_plan = plan
        function, width, kwargs = _estimate_chunk, ndim + 1, {"upsample_factor": upsample_factor}
    attrs.update(
        estimate_attrs(rigid_plan, upsample_factor, whole_frame, bad_frame_threshold, clip, weights)
    )
    return Estimator(spatial, plan, function, width, kwargs, attrs, options, weighting)


class PlanLayout(NamedTuple):
    """What a displacement's layout needs of a rigid plan (its search range), before
    the plan itself is made: a lazy movie's is made in the estimate's graph."""

    max_shift: tuple[int, ...]


def weighted_plan(
    reference,
    sample,
    *,
    clip,
    piecewise,
    max_shift,
    whole_frame,
    block_size,
    overlap,
    weights=None,
    layout=False,
):
    """The plan (rigid or piecewise) with its clip and noise weighting from the noise
    fitted on ``sample`` (None: the clip percentiles as they are, no weighting); with
    ``layout``, a :class:`PlanLayout` in place of the rigid plan and no block plans.

    One BLAS thread, wherever it runs (here, in a Dask task, on a Spark driver): a
    threaded matrix product sums in another order, and the plan's last bits (hence
    the estimate's) would depend on where it was made.
    """
    if layout:
        shape = reference.shape
        rigid = PlanLayout(core.search_range(shape, shape if whole_frame else max_shift))
        if piecewise:
            return core.PiecewisePlan(rigid, core.block_grid(shape, block_size, overlap), None, ())
        return rigid
    with threadpool_limits(limits=1, user_api="blas"):
        core.check_reference(reference)  # first: the percentiles below would warn on NaN
        bounds = core.clip_bounds(reference, clip)
        # The noise the reference's expected look is averaged over (DECISIONS: "The
        # frames' noise, fitted"); None if too small to matter.  The stabilising
        # transform (the core's ``offset``) stays off: measured, it is not the default.
        noise = None if sample is None else core.fit_noise(sample)
        if noise is not None and not noise.matters(reference):
            noise = None
        # The rigid estimate weighs pixels only on the per-frame overlap's path of 2-D frames.
        weighted = weights == "noise" and core.weighting_applies(reference.shape)
        rigid_bounds = bounds
        if noise is not None:
            # Bounds inside the noise of photon-starved frames move out of it
            # (DECISIONS: "The clip spares the noise"); with ``weights="noise"``
            # always for the rigid estimate, which then weighs pixels by their noise
            # (DECISIONS: "Noise weights").  Blocks and whole frames are not weighted.
            bounds = noise.spare_noise(reference, bounds)
            rigid_bounds = noise.spare_noise(reference, rigid_bounds, weighted=weighted)
        if whole_frame:
            return core.prepare_whole_frame(reference, clip=bounds, noise=noise)
        if piecewise:
            return core.prepare_piecewise(
                reference,
                block_size=block_size,
                overlap=overlap,
                max_shift=max_shift,
                clip=rigid_bounds,
                block_clip=bounds,
                noise=noise,
                weights=weighted,
            )
        return core.prepare_reference(
            reference, max_shift=max_shift, clip=rigid_bounds, noise=noise, weights=weighted
        )


def reference_attrs(reference) -> dict:
    """How the reference was made, for the displacement's attrs (``reference_*``).

    A reference that records its ``method`` in its attrs (as :func:`build_reference`
    does) passes its attrs on; any other reference is ``given``.
    """
    attrs = getattr(reference, "attrs", {})
    if "method" not in attrs:
        return {"reference_method": "given"}
    return {f"reference_{k}": v for k, v in attrs.items()}


def estimate(
    da: xr.DataArray, reference=None, *, dim: Hashable = "time", **options
) -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.estimate`.

    ``options`` are :func:`prepare_estimate`'s (its signature holds the defaults);
    ``whole_frame=True`` correlates whole frames circularly over every shift (no
    border window): thunder-registration's CrossCorr, for the model API.
    """
    est = prepare_estimate(da, reference, dim=dim, **options)
    plan = est.plan if da.chunks is None else graph_plan(est)
    values = _per_frame(da, dim, est.spatial, est.function, est.width, plan=plan, **est.kwargs)
    smooth, min_quality = est.options["smooth"], est.options["min_quality"]
    shifts = displacements(
        values, est.plan, time_coords(da, dim), dim, est.spatial, est.attrs, smooth, min_quality
    )
    return with_pixel_size(shifts, da.coords, est.spatial)


def displacements(values, plan, labels, dim, spatial, attrs, smooth=None, min_quality=None):
    """The displacement DataArray from the per-frame table the estimate chunks return.

    ``plan`` is the rigid plan or a piecewise plan (then ``values`` holds the rigid
    columns, then each block's); ``attrs`` from :func:`estimate_attrs`; bad frames are
    flagged at ``attrs["bad_frame_threshold"]`` and left out of the ``smooth`` median.
    """
    ndim = len(spatial)
    shifts, quality = values[:, :ndim], values[:, ndim]
    bad = core.flag_bad_frames(quality, attrs["bad_frame_threshold"])
    attrs = dict(attrs)
    if smooth:
        shifts = core.rolling_median(shifts, int(smooth), bad)
        attrs["smooth"] = int(smooth)
    rigid = displacement_array(shifts, quality, labels, dim, spatial, attrs, bad)
    if not isinstance(plan, core.PiecewisePlan):
        return rigid
    blocks = values[:, ndim + 1 :].reshape((len(values),) + plan.grid.grid_shape + (ndim + 1,))
    block_shifts = blocks[..., :ndim]
    if smooth:
        flat = block_shifts.reshape(len(values), -1)
        block_shifts = core.rolling_median(flat, int(smooth), bad).reshape(block_shifts.shape)
    return piecewise_array(block_shifts, blocks[..., ndim], rigid, plan.grid, spatial, min_quality)


def with_pixel_size(shifts: xr.DataArray, coords, spatial) -> xr.DataArray:
    """``shifts`` with a ``pixel_size`` coordinate along ``axis``, if the movie has one.

    The pixel size along an axis is the step of its coordinate in ``coords``; it
    is there only when every spatial coordinate is numeric and evenly spaced.
    """
    steps, units = [], set()
    for d in spatial:
        if d not in coords or coords[d].ndim != 1 or coords[d].dtype.kind not in "iuf":
            return shifts
        values = np.asarray(coords[d].values, dtype=np.float64)
        if len(values) < 2:
            return shifts
        step = (values[-1] - values[0]) / (len(values) - 1)
        if step == 0 or not np.allclose(np.diff(values), step, rtol=1e-6, atol=0):
            return shifts
        steps.append(float(step))
        units.add(coords[d].attrs.get("units"))
    attrs = {"long_name": "coordinate step along each axis (signed)"}
    if len(units) == 1 and None not in units:
        attrs["units"] = units.pop()
    return shifts.assign_coords({PIXEL_SIZE: (AXIS, steps, attrs)})


def physical(shifts: xr.DataArray) -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.physical`."""
    if not isinstance(shifts, xr.DataArray) or AXIS not in shifts.dims:
        raise XregError("`physical` is for displacement arrays, as `estimate` returns them.")
    if PIXEL_SIZE not in shifts.coords:
        raise XregError(
            "These displacements have no `pixel_size` coordinate: the movie's spatial "
            "coordinates were missing or not evenly spaced. Give the movie coordinates "
            "in physical units before estimating, e.g. "
            "`movie.assign_coords(y=0.5 * np.arange(movie.sizes['y']), x=...)`, or "
            "multiply by the pixel size yourself."
        )
    size = shifts[PIXEL_SIZE]
    out = shifts * size
    out.attrs = dict(shifts.attrs, units=size.attrs.get("units", "coordinate units"))
    out.attrs["long_name"] = shifts.attrs.get("long_name", "displacement") + ", in coordinate units"
    return out.rename(shifts.name)


def block_dims(spatial) -> list[str]:
    return [f"block_{d}" for d in spatial]


def piecewise_array(block_shifts, block_quality, rigid, grid, spatial, min_quality):
    """The piecewise layout: dims (time, block_y, block_x, axis), block centres as coords,
    the rigid part as the coordinate ``rigid`` (time, axis)."""
    dim = rigid.dims[0]
    blocks = block_dims(spatial)
    coords = {name: coord for name, coord in rigid.coords.items() if name != QUALITY}
    coords.update({b: centres for b, centres in zip(blocks, grid.centres, strict=True)})
    coords[QUALITY] = ((dim, *blocks), block_quality)
    coords["rigid"] = rigid.variable.copy()
    coords["rigid_quality"] = (dim, rigid[QUALITY].values)
    attrs = dict(rigid.attrs)
    attrs.update(
        {
            "method": "piecewise",
            "long_name": "displacement of each block of each frame relative to the reference",
            "block_size": list(grid.block_size),
            "block_starts": [list(s) for s in grid.starts],
            "frame_shape": list(grid.shape),
            "min_quality": float(min_quality),
        }
    )
    return DisplacementArray(
        block_shifts, dims=(dim, *blocks, AXIS), coords=coords, name=DISPLACEMENT, attrs=attrs
    )


def is_piecewise(shifts) -> bool:
    """Whether ``shifts`` are piecewise displacements (a DataArray with block dims)."""
    return isinstance(shifts, xr.DataArray) and any(
        str(d).startswith("block_") for d in shifts.dims
    )


def grid_of(shifts: xr.DataArray) -> core.BlockGrid:
    """The block grid a piecewise displacement array was estimated on."""
    try:
        return core.BlockGrid(
            tuple(shifts.attrs["frame_shape"]),
            tuple(shifts.attrs["block_size"]),
            tuple(tuple(s) for s in shifts.attrs["block_starts"]),
        )
    except KeyError as error:
        raise XregError(
            f"These shifts lack the block layout ({error.args[0]!r} attr); pass the array "
            "`estimate(method='piecewise')` returned, with its attrs."
        ) from error


def noise_sample(da: xr.DataArray, dim, spatial):
    """The movie's first frames (``core.noise_sample_size``), for the noise fit: a
    fixed sample, so that the estimate does not depend on the movie's chunking.  A
    numpy array, or a Dask array (not read here) for a lazy movie."""
    first = da.isel({dim: slice(0, core.noise_sample_size)}).transpose(dim, *spatial)
    return first.data if da.chunks is not None else np.asarray(first.values)


def estimate_attrs(
    plan, upsample_factor, whole_frame, bad_frame_threshold, clip=None, weights=None
) -> dict:
    """The attrs every displacement array carries: units, method and its settings
    (``weights`` only where set)."""
    attrs = {
        "units": "pixel",
        "long_name": "displacement of each frame relative to the reference",
        "method": "rigid, whole frame" if whole_frame else "rigid",
        "upsample_factor": int(upsample_factor),
        "max_shift": list(plan.max_shift),
        "bad_frame_threshold": float(bad_frame_threshold),
    }
    if weights is not None:
        attrs["weights"] = weights
    return attrs | clip_attrs(clip)


def clip_attrs(clip) -> dict:
    """The attr that records percentile clipping, if any."""
    return {} if clip is None else {"clip_percentiles": [float(c) for c in clip]}


def displacement_array(shifts, quality, labels, dim, spatial, attrs, bad=None) -> xr.DataArray:
    """Wrap (n, ndim) shifts and (n,) quality in the documented displacement layout.

    ``labels`` are the coordinates along ``dim`` to carry over (a mapping); ``bad``
    flags frames (default: quality outliers at ``attrs["bad_frame_threshold"]``, or
    the default threshold; see :func:`xreg.core.flag_bad_frames`).
    """
    coords = dict(labels)
    coords[AXIS] = [str(d) for d in spatial]
    coords[QUALITY] = ((dim,), np.asarray(quality, dtype=np.float64))
    if bad is None:
        bad = core.flag_bad_frames(quality, attrs.get("bad_frame_threshold", 6.0))
    coords[BAD_FRAME] = ((dim,), np.asarray(bad))
    # A DataArray whose .plot() draws lines over time (xreg.plot); otherwise plain.
    return DisplacementArray(
        np.asarray(shifts, dtype=np.float64),
        dims=(dim, AXIS),
        coords=coords,
        name=DISPLACEMENT,
        attrs=attrs,
    )


# --------------------------------------------------------------------------- apply


def _shift_chunk(frames, shifts, *, order, mode, cval):
    frame_shape = frames.shape[-shifts.shape[-1] :]
    lead = frames.shape[: -len(frame_shape)]
    n = int(np.prod(lead, dtype=np.int64))
    # Extra dims (channel, ...) arrive as length-1 axes of the shifts: one per frame.
    shifts = np.broadcast_to(shifts, lead + shifts.shape[-1:])
    out = core.shift_frames(
        frames.reshape((n,) + frame_shape),
        shifts.reshape(n, -1),
        order=order,
        mode=mode,
        cval=cval,
    )
    return out.reshape(frames.shape)


def _warp_chunk(frames, shifts, *, grid, order, mode, cval):
    lead = frames.shape[: -len(grid.shape)]
    n = int(np.prod(lead, dtype=np.int64))
    shifts = np.broadcast_to(shifts, lead + shifts.shape[-len(grid.shape) - 1 :])
    out = core.warp_frames(
        frames.reshape((n,) + grid.shape),
        shifts.reshape((n,) + grid.grid_shape + (len(grid.shape),)),
        grid,
        order=order,
        mode=mode,
        cval=cval,
    )
    return out.reshape(frames.shape)


def shifts_axes(shifts, da: xr.DataArray):
    """The spatial dims named by the shifts' ``axis`` coordinate, if they are the movie's."""
    if isinstance(shifts, xr.DataArray) and AXIS in shifts.coords and shifts[AXIS].ndim == 1:
        axes = [str(a) for a in shifts[AXIS].values]
        names = {str(d): d for d in da.dims}
        if all(a in names for a in axes):
            return tuple(d for d in da.dims if str(d) in axes)  # the movie's order
    return None


def shifts_array(shifts, da: xr.DataArray, dim: Hashable, spatial, blocks=()) -> np.ndarray:
    """Check ``shifts`` against the movie; return them as numpy (n, [*grid,] ndim)."""
    n = da.sizes[dim]
    names = [str(d) for d in spatial]
    expected = (dim, *blocks, AXIS)
    if isinstance(shifts, xr.Dataset):
        raise XregError(
            f"The shifts are a Dataset (as `xr.open_dataset` gives them back); pass its "
            f"displacements, one of {list(shifts.data_vars)}: e.g. `shifts['displacement']`, "
            "or read them with `xreg.io.read_displacement`."
        )
    if isinstance(shifts, xr.DataArray):
        if set(shifts.dims) != set(expected):
            raise XregError(
                f"Shifts must have dims {expected}, as `estimate` returns them; got {shifts.dims}."
            )
        if AXIS in shifts.coords:
            given = [str(a) for a in shifts[AXIS].values]
            if sorted(given) != sorted(names):
                raise XregError(f"Shifts are for axes {given}, but the frames have dims {names}.")
            shifts = shifts.sel({AXIS: names})
        if shifts.sizes[dim] != n:
            raise XregError(
                f"There are {shifts.sizes[dim]} shifts for {n} frames. Pass one per frame, "
                f"e.g. `shifts.sel({dim}=movie.{dim})`."
            )
        if dim in shifts.indexes and dim in da.indexes:
            if not shifts.indexes[dim].equals(da.indexes[dim]):
                raise XregError(
                    f"The shifts' {dim!r} coordinate does not match the movie's. Select the "
                    f"shifts of these frames: `shifts.sel({dim}=movie.{dim})`."
                )
        values = shifts.transpose(*expected).values
    else:
        values = np.asarray(shifts)
    if (
        values.ndim != len(expected)
        or values.shape[0] != n
        or values.shape[-1] != len(spatial)
        or values.dtype.kind not in "iuf"
    ):
        raise XregError(
            f"Expected numeric shifts of shape ({n}, {len(spatial)}) (frames, axes "
            f"{tuple(spatial)}); got {values.shape} of dtype {values.dtype}. If other dims "
            "are spatial, name them: `spatial_dims=('y', 'x')`."
        )
    return validate.shift_table(values, tuple(da.sizes[d] for d in spatial))


def apply(
    da: xr.DataArray,
    shifts,
    *,
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
    bad_frames: str = "apply",
    dim: Hashable = "time",
    spatial_dims=None,
) -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.apply`."""
    if spatial_dims is None:
        spatial_dims = shifts_axes(shifts, da)
    spatial, _ = split_dims(da, dim, spatial_dims)
    bad_frames = validate.choice(bad_frames, "bad_frames", BAD_FRAME_CHOICES)
    order, mode = validate.interpolation(order, mode)
    cval = validate.fill_value(cval, da.dtype)
    piecewise = is_piecewise(shifts)
    blocks = block_dims(spatial) if piecewise else []
    values = shifts_array(shifts, da, dim, spatial, blocks)
    if bad_frames != "apply" and isinstance(shifts, xr.DataArray) and BAD_FRAME in shifts.coords:
        bad = shifts[BAD_FRAME].values
        if bad_frames == "leave":
            values = np.where(bad.reshape((-1,) + (1,) * (values.ndim - 1)), 0.0, values)
        else:
            values = core.fill_from_neighbours(values, bad)
    kwargs = {"order": order, "mode": mode, "cval": cval}
    if piecewise:
        grid = grid_of(shifts)
        frame_shape = tuple(da.sizes[d] for d in spatial)
        if grid.shape != frame_shape:
            raise XregError(
                f"These block shifts were estimated on frames of shape {grid.shape}; the "
                f"movie's frames are {frame_shape}."
            )
        if grid.grid_shape != values.shape[1:-1]:
            raise XregError(
                f"These shifts hold {values.shape[1:-1]} blocks of the {grid.grid_shape} "
                "they were estimated on; the field needs every block: pass them all."
            )
        function, kwargs["grid"] = _warp_chunk, grid
    else:
        function = _shift_chunk
    shift_da = xr.DataArray(values, dims=(dim, *blocks, AXIS))
    if da.chunks is not None:
        shift_da = shift_da.chunk({dim: da.chunksizes[dim]})
    out = xr.apply_ufunc(
        function,
        da,
        shift_da,
        input_core_dims=[list(spatial), [*blocks, AXIS]],
        output_core_dims=[list(spatial)],
        dask="parallelized",
        output_dtypes=[da.dtype],
        kwargs=kwargs,
        keep_attrs=True,
    )
    out = out.transpose(*da.dims).rename(da.name)
    out.encoding = dict(da.encoding)
    return out


def field(shifts: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.field`."""
    if not isinstance(shifts, xr.DataArray) or AXIS not in shifts.dims:
        raise XregError("`field` is for displacement arrays, as `estimate` returns them.")
    axes = [str(a) for a in shifts[AXIS].values]
    blocks = [d for d in shifts.dims if str(d).startswith("block_")]
    if not blocks:
        # Rigid: the same displacement at every pixel; shape unknown, so one value each.
        raise XregError(
            "Rigid shifts are one displacement per frame; `field` needs piecewise shifts "
            "(`estimate(method='piecewise')`)."
        )
    grid = grid_of(shifts)
    values = shifts.transpose(..., *blocks, AXIS).values
    lead = values.shape[: -(len(blocks) + 1)]
    dense = core.displacement_field(values.reshape((-1,) + values.shape[-len(blocks) - 1 :]), grid)
    dense = dense.reshape(lead + dense.shape[1:])
    other = [d for d in shifts.dims if d not in blocks and d != AXIS]
    return xr.DataArray(
        dense,
        dims=(*other, AXIS, *axes),
        coords={name: c for name, c in shifts.coords.items() if set(c.dims) <= set(other)}
        | {AXIS: axes},
        name="displacement_field",
        attrs={"units": "pixel", "long_name": "per-pixel displacement"},
    )


# --------------------------------------------------------------------------- reference


def read_frames(da: xr.DataArray, dim: Hashable, index: np.ndarray) -> list[np.ndarray]:
    """The frames ``index`` (sorted) of ``da``, which has ``dim`` first, as numpy arrays:
    one per run of consecutive frames (for a Dask-backed movie, a sample of whole
    chunks: read as they are, in one computation, not copied into one array).
    """
    runs = np.split(index, np.flatnonzero(np.diff(index) != 1) + 1)
    if da.chunks is None or len(runs) > _READ_RUNS:
        return [np.asarray(da.isel({dim: index}).values)]
    return list(dask.compute(*[da.data[run[0] : run[-1] + 1] for run in runs]))


_READ_RUNS = 16  # more runs than this (an even spread): one gather is cheaper


def build_reference(
    da: xr.DataArray,
    *,
    n_frames: int = 200,
    iterations: int = 4,
    upsample_factor: int = 10,
    max_shift=None,
    clip=CLIP_PERCENTILES,
    dim: Hashable = "time",
    spatial_dims=None,
) -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.reference`."""
    spatial = frame_dims(da, dim, spatial_dims)
    options = validate.reference_options(
        tuple(da.sizes[d] for d in spatial),
        n_frames=n_frames,
        iterations=iterations,
        upsample_factor=upsample_factor,
        max_shift=max_shift,
        clip=clip,
    )
    n_frames, iterations, upsample_factor, max_shift, clip = (
        options[k] for k in ("n_frames", "iterations", "upsample_factor", "max_shift", "clip")
    )
    # Only the sampled frames are read (for Dask, only the chunks that hold them: a few,
    # spread over the movie).
    chunks = da.chunksizes.get(dim) if da.chunks is not None else None
    index = core.sample_indices(da.sizes[dim], n_frames, chunks)
    sample = read_frames(da.transpose(dim, *spatial), dim, index)
    image, _ = core.build_reference(
        sample,
        iterations=iterations,
        upsample_factor=upsample_factor,
        max_shift=max_shift,
        clip_percentiles=clip,
        return_shifts=False,  # only the image is wanted: one pass fewer
    )
    return xr.DataArray(
        image,
        dims=spatial,
        coords={d: da[d] for d in spatial if d in da.coords},
        name="reference",
        attrs={
            "method": "iterative",
            "n_frames": len(index),
            "iterations": iterations,
            "upsample_factor": upsample_factor,
            **clip_attrs(clip),
        },
    )


# --------------------------------------------------------------------------- datasets


def registrable(ds: xr.Dataset, dim: Hashable, spatial) -> list[Hashable]:
    """The data variables of ``ds`` that have the frame dim and every spatial dim."""
    return [
        name
        for name, var in ds.data_vars.items()
        if dim in var.dims and all(d in var.dims for d in spatial)
    ]


def dataset_variable(ds: xr.Dataset, var: Hashable | None, dim: Hashable = "time"):
    """The movie ``var`` of a Dataset (default: its only variable with the frame dim)."""
    if not isinstance(ds, xr.Dataset):
        raise XregError(f"Expected an xarray.Dataset; got {type(ds).__name__}.")
    if var is None:
        movies = [n for n, v in ds.data_vars.items() if dim in v.dims and v.ndim >= 3]
        if len(movies) != 1:
            raise XregError(
                f"The Dataset holds movies {movies}; say which to use: `var=...`, "
                "e.g. `ds.reg.estimate(ref, var='red')`."
            )
        var = movies[0]
    if not isinstance(var, Hashable):
        raise XregError(f"`var` names one variable of the Dataset; got {var!r}.")
    if var not in ds.data_vars:
        raise XregError(f"The Dataset has no variable {var!r}; it has {list(ds.data_vars)}.")
    return ds[var]


def apply_dataset(ds: xr.Dataset, shifts, *, dim: Hashable = "time", spatial_dims=None, **options):
    """See :meth:`xreg.accessor.DatasetRegAccessor.apply`."""
    if not isinstance(ds, xr.Dataset):
        raise XregError(f"Expected an xarray.Dataset; got {type(ds).__name__}.")
    if spatial_dims is None and isinstance(shifts, xr.DataArray) and AXIS in shifts.coords:
        spatial_dims = tuple(str(a) for a in shifts[AXIS].values)
    if spatial_dims is None:
        raise XregError(
            "Say which dims are spatial: pass shifts with an `axis` coordinate (as "
            "`estimate` returns them) or `spatial_dims=('y', 'x')`."
        )
    names = registrable(ds, dim, spatial_dims)
    if not names:
        found = {n: v.dims for n, v in ds.data_vars.items()}
        raise XregError(
            f"No variable of the Dataset has the dims {(dim, *spatial_dims)}; its variables "
            f"have dims {found}."
        )
    moved = {}
    for name in names:
        try:
            moved[name] = apply(
                labels_chunked_like_movie(ds[name]),
                shifts,
                dim=dim,
                spatial_dims=spatial_dims,
                **options,
            )
        except XregError as error:  # which variable, among several
            raise XregError(f"Variable {name!r}: {error}") from None
    return ds.assign(moved)
