"""Property-based tests (hypothesis): random frame sizes, whole-pixel shifts, dtypes, NaN
masks and options.  No call raises anything but XregError; for valid input the estimate
is the truth.

Examples are derandomised (the same ones on every run, so CI cannot flake) and few, so
the module runs in seconds; each call also runs under the per-case deadline of
``test_bad_input``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr
from conftest import smooth_image
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_bad_input import run_with_deadline

from xreg import XregError
from xreg.core import default_max_shift

# XREG_HYPOTHESIS_EXAMPLES=1000 explores further, with fresh random examples each run.
EXPLORE = int(os.environ.get("XREG_HYPOTHESIS_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=EXPLORE or 50,
    deadline=None,  # the deadline is run_with_deadline's, in seconds, not hypothesis' own
    derandomize=not EXPLORE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = ["uint8", "uint16", "int16", "float16", "float32", "float64"]
PAD = 24


def scene(shape, dtype, seed) -> np.ndarray:
    """A smooth random scene larger than the frames by PAD each side, in ``dtype``
    (rounded first, so that frames cut from it are exact copies of one another)."""
    image = smooth_image(tuple(n + 2 * PAD for n in shape), sigma=3.0, seed=seed)
    top = 200 if dtype == "uint8" else 1000
    offset = -400 if dtype == "int16" else 0
    return (np.rint(image * top) + offset).astype(dtype)


def cut(big, shape, shift) -> np.ndarray:
    """The frame of ``shape`` that shows ``big`` moved by ``shift`` (whole pixels)."""
    return big[
        tuple(slice(PAD - int(s), PAD - int(s) + n) for s, n in zip(shift, shape, strict=True))
    ]


def reach(shape) -> list[int]:
    """Per axis, the motion that stays inside the border band the estimator leaves out
    (where a whole-pixel estimate is exact by construction)."""
    return [min(m, n // 4) for m, n in zip(default_max_shift(shape), shape, strict=True)]


def with_nans(frames, mask, draw):
    """NaN where ``mask`` says: none, scattered pixels, a stripe, or a whole frame."""
    if mask == "none" or frames.dtype.kind != "f":
        return frames
    frames = frames.astype(np.float32 if frames.dtype == np.float16 else frames.dtype)
    which = draw(st.integers(0, len(frames) - 1))
    if mask == "pixels":
        rng = np.random.default_rng(draw(st.integers(0, 99)))
        frames[which][rng.random(frames.shape[1:]) < 0.05] = np.nan
    elif mask == "stripe":
        frames[which][..., 2:5, :] = np.nan
    else:
        frames[which] = np.nan
    return frames


# Values that are right, wrong in kind, or wrong in range, for each option.
ANY_NUMBER = st.one_of(
    st.integers(-3, 3000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, "10", True, (1, 2)]),
)
OPTIONS = {
    "upsample_factor": ANY_NUMBER,
    "max_shift": st.one_of(st.none(), st.integers(-2, 40), st.tuples(st.integers(0, 9))),
    "clip": st.one_of(
        st.none(),
        st.tuples(st.floats(-10, 110), st.floats(-10, 110)),
        st.sampled_from([(1, 99), "1,99"]),
    ),
    "method": st.sampled_from(["rigid", "rigid", "piecewise", "affine"]),
    "block_size": st.one_of(st.integers(0, 80), st.sampled_from([(16, 24), "32", 12.5])),
    "overlap": st.one_of(st.floats(-0.5, 1.5), st.sampled_from(["0.5", None])),
    "min_quality": st.one_of(st.floats(-1, 2), st.none()),
    "smooth": st.one_of(st.none(), st.integers(-1, 8), st.just(2.5)),
    "bad_frame_threshold": st.one_of(st.floats(allow_nan=True), st.just("6")),
}


@st.composite
def movies(draw, min_size=1, max_size=56, whole_frames_valid=False):
    """(movie, reference, truth): a whole-pixel moving view of a random scene."""
    ndim = draw(st.sampled_from([2, 2, 2, 3]))
    top = max_size if ndim == 2 else max(min_size, 20)  # volumes: small, for speed
    shape = tuple(draw(st.integers(min_size, top)) for _ in range(ndim))
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(1, 4))
    truth = np.array(
        [[draw(st.integers(-r, r)) for r in reach(shape)] for _ in range(n)], dtype=float
    ).reshape(n, ndim)
    big = scene(shape, dtype, draw(st.integers(0, 3)))
    frames = np.stack([cut(big, shape, d) for d in truth])
    mask = draw(st.sampled_from(["none", "none", "pixels", "stripe", "frame"]))
    frames = with_nans(frames, mask, draw)
    dims = ("time", "y", "x") if ndim == 2 else ("time", "z", "y", "x")
    movie = xr.DataArray(frames, dims=dims)
    if draw(st.booleans()):
        movie = movie.chunk(time=2)
    return movie, cut(big, shape, (0,) * ndim), truth, mask


@SETTINGS
@given(data=st.data())
def test_any_options_give_a_result_or_xreg_error(data):
    movie, reference, _, _ = data.draw(movies(min_size=4))
    # Each option given now and then (so that some calls are valid), with any value.
    chosen = st.sampled_from([False, False, False, True])
    options = {name: data.draw(strategy) for name, strategy in OPTIONS.items() if data.draw(chosen)}
    try:
        shifts, _ = run_with_deadline(lambda: movie.reg.estimate(reference, **options))
    except XregError as error:
        assert str(error)  # a message, naming the problem
        event("refused")
        return
    event("estimated")
    assert shifts.sizes["time"] == movie.sizes["time"]
    quality = shifts.quality.values
    assert np.all((quality >= 0) & (quality <= 1))
    assert np.all(np.isfinite(shifts.values))


@SETTINGS
@given(
    data=st.data(),
    upsample_factor=st.sampled_from([1, 1, 2, 10, 20, 100]),
    clip=st.sampled_from([None, (1, 99), (5, 95)]),
)
def test_valid_input_gives_the_truth(data, upsample_factor, clip):
    # Frames of at least 32 px per axis: below that the subpixel refinement is not
    # trustworthy (docs/DECISIONS.md, issue 14), though whole pixels (factor 1) are.
    movie, reference, truth, mask = data.draw(movies(min_size=32))
    shifts, _ = run_with_deadline(
        lambda: movie.reg.estimate(reference, upsample_factor=upsample_factor, clip=clip)
    )
    values = shifts.values
    if mask == "frame":  # the blank frame: displacement 0, quality 0
        blank = np.all(np.isnan(movie.values.reshape(len(truth), -1)), axis=1)
        assert np.all(values[blank] == 0) and np.all(shifts.quality.values[blank] == 0)
        values, truth = values[~blank], truth[~blank]
    np.testing.assert_allclose(values, truth, atol=1e-9 if upsample_factor == 1 else 0.1)


@SETTINGS
@given(
    data=st.data(),
    order=st.one_of(st.integers(0, 5), st.integers(0, 5), st.integers(-1, 7), st.just("1")),
    mode=st.sampled_from(["nearest", "constant", "reflect", "mirror", "wrap", "edge"]),
    cval=st.one_of(st.floats(-10, 10), st.floats(-10, 10), st.floats(), st.just("x")),
)
def test_apply_gives_the_reference_or_xreg_error(data, order, mode, cval):
    movie, reference, truth, mask = data.draw(movies(min_size=8))
    try:
        fixed, _ = run_with_deadline(
            lambda: movie.reg.apply(truth, order=order, mode=mode, cval=cval).values
        )
    except XregError as error:
        assert str(error)
        event("refused")
        return
    event("applied")
    assert fixed.shape == movie.shape and fixed.dtype == movie.dtype
    if mask == "none":
        # Moved back by whole pixels, each frame is the reference wherever its content
        # came from inside the frame (the border band the motion stays within).
        inner = tuple(
            slice(r, n - r) for r, n in zip(reach(reference.shape), reference.shape, strict=True)
        )
        for frame in fixed:
            np.testing.assert_array_equal(frame[inner], reference[inner])


@pytest.mark.parametrize("size", [3, 7])
def test_frames_below_the_minimum_are_refused_whatever_the_options(size):
    movie = xr.DataArray(np.random.default_rng(0).random((2, size, 40)), dims=("time", "y", "x"))
    with pytest.raises(XregError, match="too small"):
        movie.reg.estimate(movie.isel(time=0), upsample_factor=1)
