"""Glue for registration metrics: crop, means, per-frame correlations, as a Dataset."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import dask
import numpy as np
import xarray as xr

from . import _xarray, core, validate
from .core.metrics import crispness, frame_correlation
from .errors import XregError

RAW = "raw"
VERSION = "version"


def _versions(movie, registered, dim, spatial) -> dict:
    """``{"raw": movie, name: registered movie, ...}``, each checked against the movie."""
    if registered is None:
        named = {}
    elif isinstance(registered, xr.DataArray):
        named = {"registered": registered}
    elif isinstance(registered, Mapping):
        named = dict(registered)
    else:
        raise XregError(
            "`registered` must be a DataArray (`movie.reg.apply(shifts)`) or a dict of them, "
            f"e.g. {{'rigid': fixed, 'piecewise': fixed_pw}}; got {type(registered).__name__}."
        )
    for name, other in named.items():
        if not isinstance(name, str) or name == RAW:
            raise XregError(
                f"Registered versions are named by strings other than {RAW!r}; got {name!r}."
            )
        if (
            not isinstance(other, xr.DataArray)
            or _xarray.frame_dims(other, dim) != spatial
            or other.sizes != movie.sizes
        ):
            raise XregError(
                f"Registered version {name!r} must have the movie's dims and sizes "
                f"{dict(movie.sizes)}; got {dict(getattr(other, 'sizes', {}))}."
            )
    return {RAW: movie} | named


def _border(border, frame_shape) -> tuple[int, ...]:
    if border is None:
        return core.default_max_shift(frame_shape)
    values = validate.per_axis(border, "border", len(frame_shape), minimum=0)
    fix = "The border must leave part of each frame."
    return tuple(
        validate.whole(b, "border", maximum=(n - 1) // 2, fix=fix)
        for b, n in zip(values, frame_shape, strict=True)
    )


def metrics(
    movie: xr.DataArray,
    registered=None,
    *,
    border=None,
    dim: Hashable = "time",
) -> xr.Dataset:
    """See :meth:`xreg.accessor.RegAccessor.metrics`."""
    spatial = _xarray.frame_dims(movie, dim)
    versions = _versions(movie, registered, dim, spatial)
    border = _border(border, tuple(movie.sizes[d] for d in spatial))
    inner = {d: slice(b, movie.sizes[d] - b) for d, b in zip(spatial, border, strict=True)}
    cropped = {name: da.isel(inner).transpose(dim, *spatial) for name, da in versions.items()}
    # First pass: the means (reductions; Dask shares the reads of a common source).
    means = dask.compute(*[da.mean(dim) for da in cropped.values()])
    # Second pass: each frame against its version's mean.
    correlations = dask.compute(
        *[
            xr.apply_ufunc(
                frame_correlation,
                da,
                mean.values,
                input_core_dims=[list(spatial), list(spatial)],
                dask="parallelized",
                output_dtypes=[np.float64],
                keep_attrs=False,
            )
            for da, mean in zip(cropped.values(), means, strict=True)
        ]
    )
    # The movie's labels along time, attrs (units) included.
    correlations = [c.assign_coords(_xarray.time_coords(movie, dim)) for c in correlations]
    names = list(versions)
    units = movie.attrs.get("units")
    return xr.Dataset(
        {
            "crispness": (
                VERSION,
                [crispness(mean.values) for mean in means],
                {
                    "long_name": "crispness of the mean image (norm of its gradient)",
                    **({"units": f"{units} / pixel"} if units else {}),
                },
            ),
            "correlation": xr.concat(
                [c.drop_vars(list(spatial), errors="ignore") for c in correlations], VERSION
            ).assign_attrs(long_name="correlation with the mean image"),
            "mean_image": xr.concat(list(means), VERSION).assign_attrs(
                long_name="mean image", **({"units": units} if units else {})
            ),
        },
        coords={VERSION: names},
        attrs={
            "border": list(border),
            "reference": "NoRMCorre (Pnevmatikakis & Giovannucci, 2017)",
        },
    )
