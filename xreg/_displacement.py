"""The displacement array type: a DataArray whose ``.plot()`` draws lines over time.

Kept apart from :mod:`xreg.plot` (which draws) so the glue can build it without
importing any plotting code.
"""

from __future__ import annotations

import xarray as xr
from xarray.plot.accessor import DataArrayPlotAccessor

# Keywords that ask for one of xarray's own layouts: ``shifts.plot(col="axis")`` keeps
# meaning what it means for any DataArray.
_XARRAY_LAYOUT_KEYWORDS = {"x", "y", "hue", "row", "col", "col_wrap"}


class DisplacementPlotAccessor(DataArrayPlotAccessor):
    """xarray's plot accessor, except that calling it draws displacement lines."""

    __slots__ = ()

    def __call__(self, **kwargs):
        """Lines over time (see :func:`xreg.plot.displacement`) for a displacement
        layout; xarray's default plot for anything else, or when a layout keyword
        (``x``, ``hue``, ``row``, ``col``, ...) is given."""
        from .plot import _layout, displacement

        if _layout(self._da) is None or _XARRAY_LAYOUT_KEYWORDS & kwargs.keys():
            return super().__call__(**kwargs)
        return displacement(self._da, **kwargs)


class DisplacementArray(xr.DataArray):
    """A DataArray of displacements whose ``.plot()`` draws one line per axis over time.

    Everything else is :class:`xarray.DataArray`'s: xarray keeps the subclass through
    arithmetic, selection and ``xr.concat``, writes it like any DataArray, and
    ``.plot.line``, ``.plot.imshow`` and the other explicit methods are unchanged.
    A plain DataArray read back from a file becomes one with ``DisplacementArray(da)``.
    """

    __slots__ = ()

    @property
    def plot(self) -> DisplacementPlotAccessor:
        return DisplacementPlotAccessor(self)
