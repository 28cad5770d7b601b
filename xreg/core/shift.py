"""Moving frames back onto the reference.

``shift_frames(frames, d)`` returns ``g(x) = f(x + d)`` for each frame: the
inverse of the motion ``f = scipy.ndimage.shift(reference, d)``.  Integer shifts
are exact gathers along each axis; fractional shifts of order 0 and 1 are
separable too (nearest sample, or two samples and a linear blend per axis);
higher orders use ``scipy.ndimage.shift`` (B-spline interpolation), with NaN pixels
kept local (:func:`spline_resample`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

from ..errors import XregError

__all__ = ["MODES", "round_to_dtype", "shift_frames", "spline_resample"]

# Boundary modes, named as in scipy.ndimage.  "constant" fills with ``cval`` and
# "wrap" is periodic: scipy's "grid-constant" and "grid-wrap" (the frame is not
# extended by interpolation first).
MODES = ("nearest", "constant", "reflect", "mirror", "wrap")
SCIPY_MODES = {"constant": "grid-constant", "wrap": "grid-wrap"}


def round_to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values ready to store as ``dtype``: integers rounded and clipped, never wrapped."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max)
    return values


def _source_index(index: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Map sample positions outside 0..size-1 back inside, per boundary mode."""
    if mode == "nearest" or mode == "constant":
        return np.clip(index, 0, size - 1)
    if mode == "wrap":
        return index % size
    if mode == "reflect":  # d c b a | a b c d | d c b a
        folded = index % (2 * size)
        return np.where(folded >= size, 2 * size - 1 - folded, folded)
    # mirror: d c b | a b c d | c b a
    if size == 1:
        return np.zeros_like(index)
    folded = index % (2 * size - 2)
    return np.where(folded >= size, 2 * size - 2 - folded, folded)


def _gather(frame, axis, offset, mode, cval):
    """``frame`` sampled at ``i + offset`` along ``axis`` (integer offset)."""
    size = frame.shape[axis]
    index = np.arange(size) + offset
    out = np.take(frame, _source_index(index, size, mode), axis=axis)
    if mode == "constant":
        outside = (index < 0) | (index >= size)
        if outside.any():
            where = [slice(None)] * frame.ndim
            where[axis] = outside
            out[tuple(where)] = cval
    return out


def _shift_separable(frame, shift, order, mode, cval):
    out = frame
    for axis, amount in enumerate(shift):
        if order == 0:
            amount = np.floor(amount + 0.5)
        whole = int(np.floor(amount))
        fraction = amount - whole
        if whole == 0 and fraction == 0:
            continue
        low = _gather(out, axis, whole, mode, cval)
        if fraction == 0:
            out = low
        else:
            high = _gather(out, axis, whole + 1, mode, cval)
            out = low + np.asarray(fraction, low.dtype) * (high - low)
    return out


def spline_resample(frame, resample, order: int, mode: str, cval: float) -> np.ndarray:
    """``resample(frame, order=, mode=, cval=)`` (scipy's B-spline ``shift`` or
    ``map_coordinates``, its motion bound in, ``order`` >= 2; ``mode`` as in
    :data:`MODES`), with non-finite pixels and a non-finite ``cval`` kept local.

    The spline's prefilter spreads one NaN over the whole frame, so non-finite pixels
    are first filled with their nearest finite neighbour (and a non-finite ``cval``
    with 0); after, the pixels whose spline samples reach them are set to NaN (to
    ``cval``): the footprint of linear interpolation, grown by ``order // 2`` pixels.
    """
    spline_mode = SCIPY_MODES.get(mode, mode)
    bad = ~np.isfinite(frame)
    unknown_inside = bool(bad.any())
    unknown_outside = mode == "constant" and not math.isfinite(cval)
    if not (unknown_inside or unknown_outside):
        return resample(frame, order=order, mode=spline_mode, cval=cval)
    if unknown_inside:
        nearest = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
        frame = frame[tuple(nearest)]
    moved = resample(frame, order=order, mode=spline_mode, cval=0.0 if unknown_outside else cval)
    # Grown by a box, not a cross: the spline's support is a square (cube) of samples.
    box = np.ones((3,) * frame.ndim, bool)
    reach = order // 2
    if unknown_inside:
        touched = resample(bad.astype(frame.dtype), order=1, mode=spline_mode, cval=0.0) > 0
        moved[ndimage.binary_dilation(touched, structure=box, iterations=reach)] = np.nan
    if unknown_outside:
        touched = resample(np.zeros_like(frame), order=1, mode=spline_mode, cval=1.0) > 0
        moved[ndimage.binary_dilation(touched, structure=box, iterations=reach)] = cval
    return moved


def _working_dtype(dtype: np.dtype) -> np.dtype:
    """float32 where it holds every value exactly (and for float32 itself), else float64."""
    if dtype == np.float32 or (dtype.kind in "iu" and dtype.itemsize <= 2):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def shift_frames(
    frames: np.ndarray,
    shifts: np.ndarray,
    *,
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
) -> np.ndarray:
    """Undo each frame's displacement: ``out[i](x) = frames[i](x + shifts[i])``.

    Parameters
    ----------
    frames : numpy.ndarray
        Shape ``(n, *frame_shape)``, real numeric dtype.
    shifts : numpy.ndarray
        Shape ``(n, ndim)``: each frame's displacement, as :func:`estimate_shifts`
        returns it.  Non-finite shifts leave the frame unchanged.
    order : int, default 1
        Interpolation order for fractional shifts: 0 (nearest sample), 1 (linear)
        up to 5 (B-spline).  Integer shifts are exact at any order.
    mode : {"nearest", "constant", "reflect", "mirror", "wrap"}, default "nearest"
        How pixels moved in from beyond the border are filled.
    cval : float, default 0.0
        Fill value for ``mode="constant"``.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``frames``; integer results are rounded and clipped
        to the dtype's range (never wrapped).
    """
    frames = np.asarray(frames)
    shifts = np.asarray(shifts, dtype=np.float64)
    if shifts.shape != (frames.shape[0], frames.ndim - 1):
        raise XregError(
            f"Expected one shift per frame and axis, shape {(frames.shape[0], frames.ndim - 1)}; "
            f"got {shifts.shape}."
        )
    work = _working_dtype(frames.dtype)
    out = np.empty(frames.shape, dtype=frames.dtype)
    for i, (frame, shift) in enumerate(zip(frames, shifts, strict=True)):
        frame = frame.astype(work, copy=False)
        if not np.all(np.isfinite(shift)):
            moved = frame
        elif order <= 1 or np.all(shift == np.round(shift)):
            moved = _shift_separable(frame, shift, order, mode, cval)
        else:
            resample = functools.partial(ndimage.shift, shift=-shift)
            moved = spline_resample(frame, resample, order, mode, cval)
        out[i] = round_to_dtype(moved, frames.dtype)
    return out
