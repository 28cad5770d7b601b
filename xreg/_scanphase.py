"""Glue for the bidirectional scan phase: dims, chunks, sampling, labels.

The numerics are in :mod:`xreg.core.scanphase`; the accessor only delegates here.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from . import core, validate
from .core import scanphase as _core
from .errors import XregError

SCAN_PHASE = "scan_phase"
PER_CHOICES = ("movie", "frame")
_RESULT = "_scan_phase_result"
_TERMS = "_scan_phase_terms"


# --------------------------------------------------------------------------- checks


def scan_dims(da, dims=None, dim: Hashable = "time", *, min_lines: int = 3):
    """The line dim and the scan dim of a movie, after checking it can be corrected.

    ``dims=None`` takes ``("y", "x")`` when the movie has both, else its last two dims
    other than the frame dim.
    """
    if not isinstance(da, xr.DataArray):
        raise XregError(f"Expected an xarray.DataArray; got {type(da).__name__}.")
    if dim not in da.dims:
        raise XregError(
            f"The movie has no {dim!r} dim; its dims are {da.dims}. Pass the frame dim "
            "as `dim=...`."
        )
    others = [d for d in da.dims if d != dim]
    if dims is None:
        dims = ("y", "x") if {"y", "x"} <= set(others) else tuple(others[-2:])
    dims = validate.dim_names(dims, "dims", da.dims, exclude=(dim,))
    if len(dims) != 2:
        raise XregError(
            f"`dims` must name the line dim and the scan dim, two of {tuple(others)}; "
            f"got {dims!r}. E.g. `dims=('y', 'x')`: lines along y, each scanned along x."
        )
    if da.sizes[dim] == 0:
        raise XregError(f"The movie has no frames (its {dim!r} dim is empty).")
    if da.dtype.kind not in "iuf":
        raise XregError(
            f"Frames must hold real numbers; got dtype {da.dtype}. Convert first, "
            "e.g. `da.astype('float32')`."
        )
    line, scan = dims
    _core.check_lines(da.sizes[line], da.sizes[scan], minimum=min_lines)
    if da.chunks is not None:
        split = [d for d in dims if len(da.chunksizes[d]) > 1]
        if split:
            raise XregError(
                f"Frames are split into chunks along {split}; lines must be whole. "
                f"Chunk over {dim!r} only: `da.chunk({line}=-1, {scan}=-1)`."
            )
    return line, scan


def check_max_offset(max_offset, width: int) -> int:
    """The search range in px: the default for ``None``, else a whole number 1..width/4."""
    if max_offset is None:
        return _core.default_max_offset(width)
    return validate.whole(
        max_offset,
        "max_offset",
        minimum=1,
        maximum=width // 4,
        fix=f"(A quarter of the {width}-px line at most.)",
    )


def check_per(per, window) -> tuple[str, int]:
    """``per`` and ``window`` as ("movie", 0) or ("frame", frames per window)."""
    if window is not None:
        window = validate.whole(window, "window", minimum=1)
    if per is None:
        per = "movie" if window is None else "frame"
    per = validate.choice(per, "per", PER_CHOICES)
    if per == "movie":
        if window is not None:
            raise XregError(
                "`window` gives one offset per frame, from the frames around it; pass "
                "`per='frame'` with it (or leave `per` out)."
            )
        return per, 0
    return per, 1 if window is None else window


def check_n_frames(n_frames) -> int:
    return validate.whole(n_frames, "n_frames", minimum=1)


# --------------------------------------------------------------------------- estimate


def rolling_sum(table, window: int):
    """Each row replaced by the sum of the ``window`` rows centred on it (fewer at the
    ends); numpy or Dask."""
    if window == 1:
        return table
    n = table.shape[0]
    index = np.arange(n)
    start = np.clip(index - (window - 1) // 2, 0, n)
    stop = np.clip(index + window // 2 + 1, 0, n)
    total = np.concatenate([np.zeros_like(table[:1]), np.cumsum(table, axis=0)], axis=0)
    return total[stop] - total[start]


def refine_rows(terms, *, width, max_offset):
    offset, quality = _core.phase_from_terms(terms, width=width, max_offset=max_offset)
    return np.stack([offset, quality], axis=1)


def _terms_chunk(frames, *, max_offset, workers):
    return _core.phase_terms(frames, max_offset=max_offset, workers=workers)


def scan_phase(
    da: xr.DataArray,
    *,
    per: str | None = None,
    window: int | None = None,
    n_frames: int = 200,
    max_offset: int | None = None,
    dims=None,
    dim: Hashable = "time",
) -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.scan_phase`."""
    line, scan = scan_dims(da, dims, dim)
    per, window = check_per(per, window)
    n_frames = check_n_frames(n_frames)
    width = da.sizes[scan]
    max_offset = check_max_offset(max_offset, width)
    others = [d for d in da.dims if d not in (dim, line, scan)]
    ordered = da.transpose(dim, *others, line, scan)
    if per == "movie":
        index = core.sample_indices(da.sizes[dim], n_frames)
        # Only the sampled frames are read (for Dask, only the chunks that hold them).
        sample = np.asarray(ordered.isel({dim: index}).values)
        terms = _core.phase_terms(sample, max_offset=max_offset, workers=None)
        terms = terms.sum(axis=0, keepdims=True)
        return movie_phase(terms, width, max_offset, (line, scan), len(index))
    if others and da.chunks is not None:
        split = [d for d in others if len(da.chunksizes[d]) > 1]
        if split:
            raise XregError(
                f"The movie is split into chunks along {split}; per-frame scan phases pool "
                f"a frame's planes and channels. Chunk over {dim!r} only: "
                f"`da.chunk({', '.join(f'{d}=-1' for d in split)})`."
            )
    table = xr.apply_ufunc(
        _terms_chunk,
        ordered,
        input_core_dims=[[*others, line, scan]],
        output_core_dims=[[_TERMS]],
        dask="parallelized",
        output_dtypes=[np.complex128],
        dask_gufunc_kwargs={"output_sizes": {_TERMS: _core.terms_width(width)}},
        # Dask already runs chunks in parallel; numpy input gets the core's threads.
        kwargs={"max_offset": max_offset, "workers": 1 if da.chunks is not None else None},
        keep_attrs=False,
    ).data
    table = rolling_sum(table, window)
    if da.chunks is None:
        values = refine_rows(table, width=width, max_offset=max_offset)
    else:
        values = table.map_blocks(
            refine_rows,
            width=width,
            max_offset=max_offset,
            chunks=(table.chunks[0], (2,)),
            dtype=np.float64,
        ).compute()
    labels = {name: c for name, c in da.coords.items() if c.dims == (dim,)}
    return frame_phase(values, labels, dim, (line, scan), max_offset, window)


def _attrs(dims, per, max_offset) -> dict:
    return {
        "units": "pixel",
        "long_name": "bidirectional scan phase: odd lines sampled at x + offset",
        "forward_lines": "even",
        "line_dim": str(dims[0]),
        "scan_dim": str(dims[1]),
        "per": per,
        "max_offset": int(max_offset),
    }


def movie_phase(terms, width, max_offset, dims, n_frames) -> xr.DataArray:
    """The 0-d result from the summed terms of the sampled frames (raises if none)."""
    offset, quality = _core.phase_from_terms(terms, width=width, max_offset=max_offset)
    if np.isnan(offset[0]):
        raise XregError(_no_offset_message(quality[0], max_offset))
    attrs = _attrs(dims, "movie", max_offset) | {"n_frames": int(n_frames)}
    return xr.DataArray(offset[0], coords={"quality": quality[0]}, name=SCAN_PHASE, attrs=attrs)


def frame_phase(values, labels, dim, dims, max_offset, window) -> xr.DataArray:
    """The per-frame result from an (n, 2) table of offsets and qualities."""
    coords = dict(labels)
    coords["quality"] = (dim, np.asarray(values)[:, 1])
    attrs = _attrs(dims, "frame", max_offset) | {"window": int(window)}
    return xr.DataArray(
        np.asarray(values)[:, 0], dims=(dim,), coords=coords, name=SCAN_PHASE, attrs=attrs
    )


def _no_offset_message(quality, max_offset) -> str:
    if quality == 0:
        return (
            "No scan phase could be measured: no frame had a line with valid lines above "
            "and below it and some contrast (are the lines NaN, or the frames blank?)."
        )
    return (
        f"The scan phase peaks at the edge of the search range (+-{max_offset} px), so "
        "the offset may be larger: pass a larger `max_offset` (up to a quarter of the line)."
    )


# --------------------------------------------------------------------------- correct


def _offsets(offset, da, dim, width) -> np.ndarray:
    """One offset per frame (float64), checked."""
    n = da.sizes[dim]
    if isinstance(offset, xr.DataArray) and offset.ndim == 1:
        if offset.dims != (dim,) or offset.sizes[dim] != n:
            raise XregError(
                f"Per-frame offsets must have dims ({dim!r},) and one value per frame ({n}); "
                f"got dims {offset.dims} and shape {offset.shape}."
            )
        if dim in offset.indexes and dim in da.indexes:
            if not offset.indexes[dim].equals(da.indexes[dim]):
                raise XregError(
                    f"The offsets' {dim!r} coordinate does not match the movie's. Select "
                    f"the offsets of these frames: `offset.sel({dim}=movie.{dim})`."
                )
        offset = offset.values
    values = np.asarray(offset.values if isinstance(offset, xr.DataArray) else offset)
    if values.dtype.kind not in "iuf" or values.ndim > 1 or (values.ndim == 1 and len(values) != n):
        raise XregError(
            f"`offset` must be one number (pixels) or one per frame ({n}); got "
            f"{values.shape} of dtype {values.dtype}."
        )
    if values.ndim == 0:
        validate.real(float(values), "offset", fix="Pass the scan phase in pixels.")
    return np.broadcast_to(_core.check_offset(values, width), (n,))


def _correct_chunk(frames, offsets, *, order, mode, cval):
    frame_shape = frames.shape[-2:]
    flat = frames.reshape((-1,) + frame_shape)
    per_plane = np.broadcast_to(offsets, frames.shape[:-2]).reshape(-1)
    out = _core.correct_scan_phase(flat, per_plane, order=order, mode=mode, cval=cval)
    return out.reshape(frames.shape)


def correct_scan_phase(
    da: xr.DataArray,
    offset,
    *,
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
    dims=None,
    dim: Hashable = "time",
) -> xr.DataArray:
    """See :meth:`xreg.accessor.RegAccessor.correct_scan_phase`."""
    if dims is None and isinstance(offset, xr.DataArray) and "line_dim" in offset.attrs:
        dims = (offset.attrs["line_dim"], offset.attrs["scan_dim"])
    line, scan = scan_dims(da, dims, dim, min_lines=2)
    order, mode = validate.interpolation(order, mode)
    cval = validate.fill_value(cval, da.dtype)
    values = _offsets(offset, da, dim, da.sizes[scan])
    offsets = xr.DataArray(np.array(values), dims=(dim,))
    if da.chunks is not None:
        offsets = offsets.chunk({dim: da.chunksizes[dim]})
    out = xr.apply_ufunc(
        _correct_chunk,
        da,
        offsets,
        input_core_dims=[[line, scan], []],
        output_core_dims=[[line, scan]],
        dask="parallelized",
        output_dtypes=[da.dtype],
        kwargs={"order": order, "mode": mode, "cval": cval},
        keep_attrs=True,
    )
    out = out.transpose(*da.dims).rename(da.name)
    out.encoding = dict(da.encoding)
    return out
