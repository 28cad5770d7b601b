"""xreg: registration (motion correction) of image time series held in xarray.

Importing xreg registers the ``.reg`` accessor on :class:`xarray.DataArray`::

    shifts = movie.reg.estimate(reference)
    fixed = movie.reg.apply(shifts)
"""

from . import datasets, plot
from .accessor import RegAccessor
from .errors import XregError
from .model import CrossCorr, Displacement, LocalDisplacement, RegistrationModel

__all__ = [
    "CrossCorr",
    "Displacement",
    "LocalDisplacement",
    "RegAccessor",
    "RegistrationModel",
    "XregError",
    "datasets",
    "plot",
]
__version__ = "0.1.0"
