"""Figures for checking a registration by eye: displacement lines and a one-call summary.

- :class:`DisplacementArray`: what ``estimate`` returns; a plain
  :class:`xarray.DataArray` whose ``.plot()`` draws lines over time.
- :func:`displacement`: those lines on any displacement array (for example one
  read back from a file).
- :func:`summary`: the classic checks of a registration in one figure.

matplotlib is imported only when a figure is drawn (``pip install xreg[plot]``).
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from . import _xarray, core, validate
from ._displacement import DisplacementArray
from .core.metrics import crispness
from .errors import XregError

__all__ = ["DisplacementArray", "displacement", "summary"]


def _layout(shifts) -> tuple[str, Hashable] | None:
    """("rigid" | "piecewise", time dim) if ``shifts`` is a displacement layout, else None."""
    if not isinstance(shifts, xr.DataArray) or _xarray.AXIS not in shifts.dims:
        return None
    blocks = [d for d in shifts.dims if str(d).startswith("block_")]
    other = [d for d in shifts.dims if d != _xarray.AXIS and d not in blocks]
    if len(other) != 1:
        return None
    return ("piecewise" if blocks else "rigid"), other[0]


def _units(da, default: str = "pixel") -> str:
    return str(da.attrs.get("units", default))


def _mark_bad_frames(ax, shifts, dim, values) -> None:
    """Red crosses on ``values`` (time, k) at the frames flagged in ``bad_frame``."""
    if _xarray.BAD_FRAME not in shifts.coords:
        return
    bad = np.asarray(shifts[_xarray.BAD_FRAME].values, dtype=bool)
    if not bad.any():
        return
    times = np.asarray(shifts[dim].values)[bad]
    values = np.asarray(values)[bad]
    ax.scatter(
        np.repeat(times, values.shape[1]),
        values.ravel(),
        marker="x",
        color="red",
        zorder=3,
        label=f"bad frame ({int(bad.sum())})",
    )


def displacement(shifts: xr.DataArray, *, truth: xr.DataArray | None = None, ax=None, **kwargs):
    """Draw displacements over time: one line per axis, or per block for piecewise shifts.

    Rigid shifts (dims ``(time, axis)``) give one line per axis over the time
    coordinate, a legend naming the axes, the units on the y axis and the frames
    flagged in ``bad_frame`` marked with red crosses.  Piecewise shifts (with
    ``block_*`` dims) give the magnitude of each block's displacement over time, one
    thin line per block, with the rigid part's magnitude on top.  Datetime time
    coordinates work as in any xarray line plot.

    Parameters
    ----------
    shifts : xarray.DataArray
        Displacements as ``movie.reg.estimate`` returns them.
    truth : xarray.DataArray, optional
        True rigid displacements in the same layout (dims ``(time, axis)``), drawn as
        wide pale lines behind the estimates.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: the current axes).
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` for the estimate lines.

    Returns
    -------
    list of matplotlib.lines.Line2D
        The estimate lines: one per axis (rigid), or one per block then the rigid
        line (piecewise).

    Raises
    ------
    XregError
        If ``shifts`` is not a displacement layout, or ``truth`` is given for
        piecewise shifts or does not match.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import xreg
    >>> movie, truth = xreg.datasets.add_motion(xreg.datasets.mouse(n_frames=20), seed=0)
    >>> lines = movie.reg.estimate(movie.mean("time")).plot()
    >>> [line.get_label() for line in lines]
    ['y', 'x']
    """
    import matplotlib.pyplot as plt

    layout = _layout(shifts)
    if layout is None:
        raise XregError(
            f"Expected displacements as `estimate` returns them (dims (time, axis), or with "
            f"block_* dims); got dims {shifts.dims if isinstance(shifts, xr.DataArray) else ()}."
        )
    kind, dim = layout
    ax = plt.gca() if ax is None else ax
    plain = xr.DataArray(shifts)  # xarray's own line plot, never this module's
    if kind == "piecewise":
        return _piecewise_lines(plain, dim, truth, ax, kwargs)
    plain = plain.transpose(dim, _xarray.AXIS)
    if truth is not None:
        truth = xr.DataArray(truth)
        if _layout(truth) != ("rigid", dim) or truth.sizes != plain.sizes:
            raise XregError(
                f"`truth` must have the layout of the shifts, dims {plain.dims} and sizes "
                f"{dict(plain.sizes)}; got dims {truth.dims}."
            )
        truth = truth.transpose(dim, _xarray.AXIS)
        true_lines = truth.plot.line(x=dim, hue=_xarray.AXIS, ax=ax, add_legend=False)
        for line, name in zip(true_lines, truth[_xarray.AXIS].values, strict=True):
            line.set(linewidth=5, alpha=0.3, label=f"{name}, true")
    lines = plain.plot.line(x=dim, hue=_xarray.AXIS, ax=ax, add_legend=False, **kwargs)
    for index, (line, name) in enumerate(zip(lines, plain[_xarray.AXIS].values, strict=True)):
        line.set_label(str(name))
        if truth is not None:
            line.set_color(true_lines[index].get_color())
    _mark_bad_frames(ax, plain, dim, plain.values)
    ax.set_ylabel(f"displacement ({_units(plain)})")
    ax.set_title("")
    ax.legend(title=_xarray.AXIS, fontsize="small")
    return lines


def _piecewise_lines(shifts, dim, truth, ax, kwargs):
    if truth is not None:
        raise XregError("`truth` is drawn for rigid shifts only; pass truth=None.")
    blocks = [d for d in shifts.dims if str(d).startswith("block_")]
    magnitude = np.sqrt((shifts**2).sum(_xarray.AXIS)).transpose(dim, *blocks)
    table = xr.DataArray(
        magnitude.values.reshape(magnitude.sizes[dim], -1),
        dims=(dim, "block"),
        coords={dim: shifts[dim]},
    )
    style = {"color": "C0", "linewidth": 0.8, "alpha": 0.5} | kwargs
    lines = table.plot.line(x=dim, hue="block", ax=ax, add_legend=False, **style)
    for line in lines[1:]:
        line.set_label("_nolegend_")
    lines[0].set_label(f"each block ({len(lines)})")
    if "rigid" in shifts.coords:
        rigid = np.sqrt((shifts["rigid"] ** 2).sum(_xarray.AXIS))
        lines += rigid.plot.line(x=dim, ax=ax, color="black", linewidth=1.5, label="rigid part")
    _mark_bad_frames(ax, shifts, dim, table.values)
    ax.set_ylabel(f"displacement magnitude ({_units(shifts)})")
    ax.set_title("")
    ax.legend(fontsize="small")
    return lines


# --------------------------------------------------------------------------- summary


def _frame_of_largest_motion(shifts, dim) -> int:
    """The frame that moved most, among those not flagged bad (a bad frame, noise or a
    blank, would show nothing of whether registration worked), if any is left."""
    rigid = shifts["rigid"] if "rigid" in shifts.coords else shifts
    blocks = [d for d in rigid.dims if d not in (dim, _xarray.AXIS)]
    magnitude = np.sqrt((rigid**2).sum(_xarray.AXIS))
    if blocks:
        magnitude = magnitude.max(blocks)
    magnitude = magnitude.transpose(dim).values
    if _xarray.BAD_FRAME in shifts.coords:
        bad = np.asarray(shifts[_xarray.BAD_FRAME].values, dtype=bool)
        if not bad.all():
            magnitude = np.where(bad, -np.inf, magnitude)
    return int(np.nanargmax(magnitude))


def _plane(image: xr.DataArray, spatial) -> xr.DataArray:
    """A 2-D view of one frame: the middle plane of a volume."""
    if len(spatial) == 3:
        return image.isel({spatial[0]: image.sizes[spatial[0]] // 2})
    return image


def _image(ax, image: xr.DataArray, title: str, **kwargs):
    """``imshow`` with axis labels that carry units (pixels where there are no coords)."""
    # Row 0 at the top, as image viewers show frames.
    artist = image.plot.imshow(
        ax=ax, add_colorbar=False, add_labels=False, yincrease=False, **kwargs
    )
    row, col = image.dims
    ax.set_ylabel(_axis_label(image, row))
    ax.set_xlabel(_axis_label(image, col))
    ax.set_title(title, fontsize="medium")
    ax.set_aspect("equal")
    return artist


def _axis_label(image, dim) -> str:
    if dim in image.coords:
        return f"{dim} ({_units(image[dim], 'pixel')})"
    return f"{dim} (pixel)"


def summary(
    movie: xr.DataArray,
    registered: xr.DataArray,
    shifts: xr.DataArray,
    *,
    truth: xr.DataArray | None = None,
    frame: int | None = None,
    dim: Hashable = "time",
    figsize=(11, 12),
):
    """One figure of the classic checks that a registration worked.

    Rows: the mean image before and after (one colour scale, one colour bar; the
    registered mean should be crisper) and their difference; one frame before and
    after and their difference; the displacements over time (and the truth, if
    given); the quality of each frame's match, with bad frames marked.

    Only what the figure shows is read: for a Dask-backed movie the two means are
    reductions computed in one pass, and the frame is one frame.

    Parameters
    ----------
    movie, registered : xarray.DataArray
        The movie and its registered version (``movie.reg.apply(shifts)``), same
        dims and sizes.
    shifts : xarray.DataArray
        The displacements (rigid or piecewise) as ``estimate`` returns them.
    truth : xarray.DataArray, optional
        True rigid displacements, dims ``(time, axis)``.
    frame : int, optional
        Position of the frame shown (default: the one that moved most, frames flagged
        bad aside).
    dim : hashable, default "time"
        The frame dim.
    figsize : (float, float), default (11, 12)
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Its axes are labelled (``fig.axes[i].get_label()``): ``mean before``,
        ``mean after``, ``mean difference``, ``frame before``, ``frame after``,
        ``frame difference``, ``displacement`` and ``quality`` (then colour bars).

    Raises
    ------
    XregError
        If the movies do not match each other or the shifts.
    """
    import dask
    import matplotlib.pyplot as plt

    movie, registered = map(_xarray.labels_chunked_like_movie, (movie, registered))
    spatial = _xarray.frame_dims(movie, dim)
    if _xarray.frame_dims(registered, dim) != spatial or registered.sizes != movie.sizes:
        raise XregError(
            f"`registered` must have the movie's dims and sizes {dict(movie.sizes)}; got "
            f"{dict(registered.sizes)}. Pass `movie.reg.apply(shifts)`."
        )
    if _layout(shifts) is None or shifts.sizes.get(dim) != movie.sizes[dim]:
        raise XregError(
            f"`shifts` must be displacements of the movie's {movie.sizes[dim]} frames, as "
            "`movie.reg.estimate` returns them."
        )
    if frame is None:
        frame = _frame_of_largest_motion(shifts, dim)
    frame = validate.whole(frame, "frame", minimum=0, maximum=movie.sizes[dim] - 1)

    # The means (two reductions, one pass: dask shares the reads) and one frame of each.
    mean_before, mean_after, frame_before, frame_after = dask.compute(
        _plane(movie.mean(dim), spatial),
        _plane(registered.mean(dim), spatial),
        _plane(movie.isel({dim: frame}), spatial).astype(np.float64),
        _plane(registered.isel({dim: frame}), spatial).astype(np.float64),
    )
    border = core.default_max_shift(tuple(movie.sizes[d] for d in spatial))
    plane_dims = spatial[-2:]
    inner = {d: slice(b, -b) for d, b in zip(plane_dims, border[-2:], strict=True)}
    crisp = [crispness(m.isel(inner).values) for m in (mean_before, mean_after)]

    fig, axes = plt.subplot_mosaic(
        [
            ["mean before", "mean after", "mean difference"],
            ["frame before", "frame after", "frame difference"],
            ["displacement"] * 3,
            ["quality"] * 3,
        ],
        figsize=figsize,
        height_ratios=[1, 1, 0.7, 0.5],
        layout="constrained",
    )
    for name, ax in axes.items():
        ax.set_label(name)
    units = _units(movie, "a.u.")
    quantity = movie.attrs.get("long_name", movie.name or "intensity")
    where = "" if len(spatial) == 2 else f", {spatial[0]} = {mean_before[spatial[0]].item()}"
    time_label = _time_label(movie, dim, frame)
    rows = [
        ("mean", mean_before, mean_after, [f"crispness {c:.4g}" for c in crisp]),
        ("frame", frame_before, frame_after, [time_label] * 2),
    ]
    for row, before, after, notes in rows:
        low, high = np.nanpercentile(
            np.concatenate([before.values.ravel(), after.values.ravel()]), [1, 99.5]
        )
        image = None
        for when, data, note in (("before", before, notes[0]), ("after", after, notes[1])):
            image = _image(
                axes[f"{row} {when}"],
                data,
                f"{row}, {when} registration\n({note}{where})",
                cmap="gray",
                vmin=low,
                vmax=high,
            )
        fig.colorbar(
            image,
            ax=[axes[f"{row} before"], axes[f"{row} after"]],
            shrink=0.8,
            label=f"{quantity} ({units})",
        )
        difference = after - before
        limit = float(np.nanpercentile(np.abs(difference.values), 99.5)) or 1.0
        image = _image(
            axes[f"{row} difference"],
            difference,
            f"{row}, after - before",
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
        )
        fig.colorbar(image, ax=axes[f"{row} difference"], shrink=0.8, label=f"difference ({units})")

    displacement(shifts, truth=truth, ax=axes["displacement"])
    axes["displacement"].axvline(
        shifts[dim].values[frame], color="gray", linestyle=":", label="frame shown"
    )
    axes["displacement"].legend(fontsize="small", ncols=2)
    _quality(axes["quality"], shifts, dim)
    return fig


def _time_label(movie, dim, frame) -> str:
    if dim not in movie.coords:
        return f"frame {frame}"
    value = movie[dim].values[frame]
    if np.issubdtype(np.asarray(value).dtype, np.number):
        units = movie[dim].attrs.get("units")
        return f"frame {frame}, {dim} = {value:.4g}{' ' + units if units else ''}"
    return f"frame {frame}, {dim} = {value}"


def _quality(ax, shifts, dim) -> None:
    """Quality of each frame's match over time (and the blocks' median), bad frames marked."""
    piecewise = "rigid_quality" in shifts.coords
    name = "rigid_quality" if piecewise else _xarray.QUALITY
    if name not in shifts.coords:
        ax.set_visible(False)
        return
    quality = xr.DataArray(shifts[name].variable, coords={dim: shifts[dim]})
    quality.plot.line(x=dim, ax=ax, color="C2", label="whole frame")
    if piecewise:
        blocks = [d for d in shifts[_xarray.QUALITY].dims if d != dim]
        median = xr.DataArray(shifts[_xarray.QUALITY]).median(blocks)
        median.plot.line(x=dim, ax=ax, color="C1", linewidth=0.8, label="blocks' median")
    _mark_bad_frames(ax, shifts, dim, quality.values[:, None])
    ax.set_ylabel("quality\n(correlation peak)")
    ax.set_title("")
    ax.legend(fontsize="small")
