"""Displacement series over time: flagging bad frames, smoothing, filling gaps."""

from __future__ import annotations

import numpy as np

__all__ = ["fill_from_neighbours", "flag_bad_frames", "rolling_median"]

# A quality spread below this is treated as this: clean synthetic movies have almost
# none, and a frame 1e-4 below its peers is not "bad".
_MIN_SPREAD = 0.01


def flag_bad_frames(quality: np.ndarray, threshold: float = 6.0) -> np.ndarray:
    """Frames whose quality is an outlier below the movie's typical quality.

    Parameters
    ----------
    quality : numpy.ndarray
        Per-frame normalised correlation peak, 0..1.
    threshold : float, default 6.0
        How many robust standard deviations (1.4826 x the median absolute
        deviation, at least 0.01) below the median quality flags a frame.

    Returns
    -------
    numpy.ndarray
        Boolean, True for frames that cannot be trusted (blanked, replaced by
        noise, out of focus).
    """
    quality = np.asarray(quality, dtype=float)
    if quality.size == 0:
        return np.zeros(0, bool)
    median = np.median(quality)
    spread = max(1.4826 * np.median(np.abs(quality - median)), _MIN_SPREAD)
    return quality < median - threshold * spread


def rolling_median(shifts: np.ndarray, window: int, bad: np.ndarray | None = None) -> np.ndarray:
    """Centred rolling median of each column over ``window`` frames, skipping bad frames.

    Parameters
    ----------
    shifts : numpy.ndarray
        ``(n, ndim)``.
    window : int
        Frames in the window (odd values centre it exactly).
    bad : numpy.ndarray, optional
        Boolean ``(n,)``: frames left out of every median.

    Returns
    -------
    numpy.ndarray
        Same shape; the ends use the frames available.
    """
    import pandas as pd

    values = np.array(shifts, dtype=float)
    if bad is not None:
        values[np.asarray(bad)] = np.nan
    table = pd.DataFrame(values).rolling(int(window), center=True, min_periods=1).median()
    return fill_from_neighbours(table.to_numpy(), np.isnan(table.to_numpy()).any(axis=1))


def fill_from_neighbours(shifts: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Replace the rows of bad frames by linear interpolation between good neighbours.

    Parameters
    ----------
    shifts : numpy.ndarray
        ``(n, ...)``.
    bad : numpy.ndarray
        Boolean ``(n,)``.

    Returns
    -------
    numpy.ndarray
        A copy; frames before the first (after the last) good frame take its value.
        With no good frame at all, the input is returned unchanged.
    """
    shifts = np.array(shifts, dtype=float)
    bad = np.asarray(bad, bool)
    good = np.flatnonzero(~bad)
    if good.size == 0 or not bad.any():
        return shifts
    flat = shifts.reshape(len(shifts), -1)
    frames = np.arange(len(shifts))
    for column in range(flat.shape[1]):
        flat[bad, column] = np.interp(frames[bad], good, flat[good, column])
    return flat.reshape(shifts.shape)
