"""The numerical core: plain numpy and scipy, no xarray.

Everything here takes and returns numpy arrays with the frame axis first.
"""

from .correlation import ReferencePlan, default_max_shift, estimate_shifts, prepare_reference
from .reference import build_reference, sample_indices
from .shift import MODES, shift_frames

__all__ = [
    "MODES",
    "ReferencePlan",
    "build_reference",
    "default_max_shift",
    "estimate_shifts",
    "prepare_reference",
    "sample_indices",
    "shift_frames",
]
