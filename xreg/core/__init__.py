"""The numerical core: plain numpy and scipy, no xarray.

Everything here takes and returns numpy arrays with the frame axis first.
"""

from .correlation import (
    ReferencePlan,
    check_reference,
    clip_bounds,
    default_max_shift,
    estimate_shifts,
    prepare_reference,
    prepare_whole_frame,
    search_range,
    weighting_applies,
)
from .noise import NoiseModel, fit_noise, noise_sample_size
from .piecewise import (
    BlockGrid,
    PiecewisePlan,
    block_counts,
    block_grid,
    displacement_field,
    estimate_piecewise,
    prepare_piecewise,
    warp_frames,
)
from .reference import build_reference, sample_indices
from .series import fill_from_neighbours, flag_bad_frames, rolling_median
from .shift import MODES, round_to_dtype, shift_frames

__all__ = [
    "MODES",
    "NoiseModel",
    "fit_noise",
    "noise_sample_size",
    "BlockGrid",
    "PiecewisePlan",
    "block_counts",
    "block_grid",
    "displacement_field",
    "estimate_piecewise",
    "prepare_piecewise",
    "warp_frames",
    "ReferencePlan",
    "check_reference",
    "clip_bounds",
    "weighting_applies",
    "build_reference",
    "default_max_shift",
    "estimate_shifts",
    "fill_from_neighbours",
    "flag_bad_frames",
    "prepare_reference",
    "prepare_whole_frame",
    "rolling_median",
    "search_range",
    "round_to_dtype",
    "sample_indices",
    "shift_frames",
]
