"""Glue between labelled arrays and the numpy core: dims, chunks, coords, attrs.

Everything that knows about xarray or Dask lives here; the accessor only
delegates, and the core never sees a label.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from . import core
from .errors import XregError

AXIS = "axis"
QUALITY = "quality"
BAD_FRAME = "bad_frame"
BAD_FRAME_CHOICES = ("apply", "leave", "interpolate")
DISPLACEMENT = "displacement"


# --------------------------------------------------------------------------- checks


def frame_dims(da: xr.DataArray, dim: Hashable = "time") -> tuple[Hashable, ...]:
    """The spatial dims of a movie, in order, after checking it can be registered.

    Raises
    ------
    XregError
        If the frame dim is missing or empty, the frames are not 2-D or 3-D, the
        dtype is not real numeric, or the frames are split into chunks in space.
    """
    if not isinstance(da, xr.DataArray):
        raise XregError(f"Expected an xarray.DataArray; got {type(da).__name__}.")
    if dim not in da.dims:
        raise XregError(
            f"The movie has no {dim!r} dim; its dims are {da.dims}. Pass the frame "
            f"dim as `dim=...`, or rename it: `da.rename({{'frame': {dim!r}}})`."
        )
    spatial = tuple(d for d in da.dims if d != dim)
    if len(spatial) not in (2, 3):
        raise XregError(
            f"Frames must be 2-D (y, x) or 3-D (z, y, x); dims {da.dims} give "
            f"{len(spatial)}-D frames {spatial}. Select or stack the extra dims "
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
    return spatial


def reference_array(reference, da: xr.DataArray, spatial: Sequence[Hashable]) -> np.ndarray:
    """The reference as a float numpy frame with the movie's spatial shape and order."""
    frame_shape = tuple(da.sizes[d] for d in spatial)
    if isinstance(reference, xr.DataArray):
        if set(reference.dims) != set(spatial):
            raise XregError(
                f"The reference has dims {reference.dims}; it must have the frame dims "
                f"{tuple(spatial)}. Pass one frame, e.g. `movie.isel(time=0)`, or an average."
            )
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


# --------------------------------------------------------------------------- estimate


def _estimate_chunk(frames, *, plan, upsample_factor, workers):
    n = frames.shape[0]
    return core.estimate_shifts(
        frames.reshape((n,) + plan.shape), plan, upsample_factor=upsample_factor, workers=workers
    )


def estimate(
    da: xr.DataArray,
    reference=None,
    *,
    upsample_factor: int = 10,
    dim: Hashable = "time",
    max_shift=None,
    smooth: int | None = None,
    bad_frame_threshold: float = 6.0,
    whole_frame: bool = False,
) -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.estimate`.

    ``whole_frame=True`` correlates whole frames circularly over every shift (no
    border window): thunder-registration's CrossCorr, for the model API.
    """
    spatial = frame_dims(da, dim)
    attrs = {}
    if reference is None:
        reference = build_reference(da, dim=dim, max_shift=max_shift)
        attrs.update({f"reference_{k}": v for k, v in reference.attrs.items()})
    else:
        attrs["reference_method"] = "given"
    plan = make_plan(reference_array(reference, da, spatial), max_shift, whole_frame)
    lazy = da.chunks is not None
    result = xr.apply_ufunc(
        _estimate_chunk,
        da,
        input_core_dims=[list(spatial)],
        output_core_dims=[["_result"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"_result": len(spatial) + 1}},
        kwargs={
            "plan": plan,
            "upsample_factor": upsample_factor,
            # Dask already runs chunks in parallel; numpy input gets the core's threads.
            "workers": 1 if lazy else None,
        },
        keep_attrs=False,
    ).transpose(dim, "_result")
    if lazy:
        with threadpool_limits(limits=1, user_api="blas"):
            result = result.compute()
    values = result.values
    shifts, quality = values[:, :-1], values[:, -1]
    bad = core.flag_bad_frames(quality, bad_frame_threshold)
    attrs.update(estimate_attrs(plan, upsample_factor, whole_frame))
    attrs["bad_frame_threshold"] = float(bad_frame_threshold)
    if smooth:
        if int(smooth) < 1:
            raise XregError(f"`smooth` must be a number of frames >= 1; got {smooth!r}.")
        shifts = core.rolling_median(shifts, int(smooth), bad)
        attrs["smooth"] = int(smooth)
    return displacement_array(shifts, quality, time_coords(da, dim), dim, spatial, attrs, bad)


def make_plan(reference: np.ndarray, max_shift=None, whole_frame: bool = False):
    """The core's reference plan: windowed (default) or whole-frame circular (thunder)."""
    if whole_frame:
        return core.prepare_reference(reference, max_shift=reference.shape, margin=0)
    return core.prepare_reference(reference, max_shift=max_shift)


def estimate_attrs(plan, upsample_factor, whole_frame) -> dict:
    """The attrs every displacement array carries: units, method and its settings."""
    return {
        "units": "pixel",
        "long_name": "displacement of each frame relative to the reference",
        "method": "rigid, whole frame" if whole_frame else "rigid",
        "upsample_factor": int(upsample_factor),
        "max_shift": list(plan.max_shift),
    }


def displacement_array(shifts, quality, labels, dim, spatial, attrs, bad=None) -> xr.DataArray:
    """Wrap (n, ndim) shifts and (n,) quality in the documented displacement layout.

    ``labels`` are the coordinates along ``dim`` to carry over (a mapping); ``bad``
    flags frames (default: quality outliers, see :func:`xreg.core.flag_bad_frames`).
    """
    coords = dict(labels)
    coords[AXIS] = [str(d) for d in spatial]
    coords[QUALITY] = (dim, np.asarray(quality, dtype=np.float64))
    coords[BAD_FRAME] = (dim, core.flag_bad_frames(quality) if bad is None else np.asarray(bad))
    return xr.DataArray(
        np.asarray(shifts, dtype=np.float64),
        dims=(dim, AXIS),
        coords=coords,
        name=DISPLACEMENT,
        attrs=attrs,
    )


# --------------------------------------------------------------------------- apply


def _shift_chunk(frames, shifts, *, order, mode, cval):
    frame_shape = frames.shape[-shifts.shape[-1] :]
    n = int(np.prod(frames.shape[: -len(frame_shape)], dtype=np.int64))
    out = core.shift_frames(
        frames.reshape((n,) + frame_shape),
        shifts.reshape(n, -1),
        order=order,
        mode=mode,
        cval=cval,
    )
    return out.reshape(frames.shape)


def shifts_array(shifts, da: xr.DataArray, dim: Hashable, spatial) -> np.ndarray:
    """Check ``shifts`` against the movie and return them as (n, ndim) numpy."""
    n = da.sizes[dim]
    names = [str(d) for d in spatial]
    if isinstance(shifts, xr.DataArray):
        if set(shifts.dims) != {dim, AXIS}:
            raise XregError(
                f"Shifts must have dims ({dim!r}, {AXIS!r}), as `estimate` returns them; "
                f"got {shifts.dims}."
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
        values = shifts.transpose(dim, AXIS).values
    else:
        values = np.asarray(shifts)
    if values.shape != (n, len(spatial)) or values.dtype.kind not in "iuf":
        raise XregError(
            f"Expected numeric shifts of shape ({n}, {len(spatial)}) (frames, axes); "
            f"got {values.shape} of dtype {values.dtype}."
        )
    return values.astype(np.float64)


def apply(
    da: xr.DataArray,
    shifts,
    *,
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
    bad_frames: str = "apply",
    dim: Hashable = "time",
) -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.apply`."""
    spatial = frame_dims(da, dim)
    if bad_frames not in BAD_FRAME_CHOICES:
        raise XregError(
            f"`bad_frames` must be one of {', '.join(BAD_FRAME_CHOICES)}; got {bad_frames!r}."
        )
    if mode not in core.MODES:
        raise XregError(f"Unknown mode {mode!r}; use one of {', '.join(core.MODES)}.")
    if not (isinstance(order, int | np.integer) and 0 <= order <= 5):
        raise XregError(f"`order` must be an integer from 0 to 5; got {order!r}.")
    values = shifts_array(shifts, da, dim, spatial)
    if bad_frames != "apply" and isinstance(shifts, xr.DataArray) and BAD_FRAME in shifts.coords:
        bad = shifts[BAD_FRAME].values
        if bad_frames == "leave":
            values = np.where(bad[:, None], 0.0, values)
        else:
            values = core.fill_from_neighbours(values, bad)
    shift_da = xr.DataArray(values, dims=(dim, AXIS))
    if da.chunks is not None:
        shift_da = shift_da.chunk({dim: da.chunksizes[dim], AXIS: -1})
    out = xr.apply_ufunc(
        _shift_chunk,
        da,
        shift_da,
        input_core_dims=[list(spatial), [AXIS]],
        output_core_dims=[list(spatial)],
        dask="parallelized",
        output_dtypes=[da.dtype],
        kwargs={"order": int(order), "mode": mode, "cval": cval},
        keep_attrs=True,
    )
    out = out.transpose(*da.dims).rename(da.name)
    out.encoding = dict(da.encoding)
    return out


# --------------------------------------------------------------------------- reference


def build_reference(
    da: xr.DataArray,
    *,
    n_frames: int = 200,
    iterations: int = 4,
    upsample_factor: int = 10,
    max_shift=None,
    dim: Hashable = "time",
) -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.reference`."""
    spatial = frame_dims(da, dim)
    if int(n_frames) < 1 or int(iterations) < 0:
        raise XregError(
            f"`n_frames` must be >= 1 and `iterations` >= 0; got {n_frames} and {iterations}."
        )
    index = core.sample_indices(da.sizes[dim], int(n_frames))
    # Only the sampled frames are read (for Dask, only the chunks that hold them).
    sample = np.asarray(da.isel({dim: index}).transpose(dim, *spatial).values)
    image, _ = core.build_reference(
        sample, iterations=int(iterations), upsample_factor=upsample_factor, max_shift=max_shift
    )
    return xr.DataArray(
        image,
        dims=spatial,
        coords={d: da[d] for d in spatial if d in da.coords},
        name="reference",
        attrs={
            "method": "iterative",
            "n_frames": len(index),
            "iterations": int(iterations),
            "upsample_factor": int(upsample_factor),
        },
    )
