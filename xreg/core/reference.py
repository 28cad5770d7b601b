"""Building a sharp, centred reference from the moving frames themselves.

The plain mean of a moving movie is blurred by the motion and biases every
estimate towards the mean position.  Following suite2p's procedure: seed with
the average of the frames that correlate best with one another (the frames that
sit at a common position, even when the drift is large compared with the cells),
then register the sample to the reference and average the best-matching frames,
several times, taking more frames each time.  Two additions: frames are
registered at subpixel precision with an interpolation that keeps detail, and the
final average is taken at the sample's *median* position, so the displacements
measured against it carry no arbitrary offset (as NoRMCorre's median-of-means).
"""

from __future__ import annotations

import numpy as np

from .correlation import clip_bounds, estimate_shifts, prepare_reference
from .series import flag_bad_frames
from .shift import shift_frames

__all__ = ["build_reference", "sample_indices"]

_SEED_GROUP = 20  # frames averaged for the seed, as in suite2p
_SEED_PIXELS = 128 * 128  # frames are binned down to about this size for the seed


def sample_indices(n_total: int, n_frames: int) -> np.ndarray:
    """``n_frames`` frame indices spread evenly over ``n_total`` (all if fewer).

    Parameters
    ----------
    n_total : int
        Frames in the movie.
    n_frames : int
        Frames wanted.

    Returns
    -------
    numpy.ndarray
        Sorted, unique int64 indices.
    """
    if n_frames >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n_frames).round().astype(np.int64))


def _binned(frames: np.ndarray) -> np.ndarray:
    """Frames block-averaged until they have about _SEED_PIXELS pixels, flattened."""
    factor = 1
    while np.prod(frames.shape[1:]) / factor ** (frames.ndim - 1) > _SEED_PIXELS:
        factor *= 2
    if factor > 1:
        cropped = frames[(slice(None),) + tuple(slice(0, s - s % factor) for s in frames.shape[1:])]
        shape = [len(frames)]
        for s in cropped.shape[1:]:
            shape += [s // factor, factor]
        frames = cropped.reshape(shape).mean(axis=tuple(range(2, len(shape), 2)))
    return frames.reshape(len(frames), -1)


def seed_reference(frames: np.ndarray) -> np.ndarray:
    """Mean of the group of frames that correlate best with one another (suite2p).

    Parameters
    ----------
    frames : numpy.ndarray
        Sample of frames, ``(n, *frame_shape)``, finite.

    Returns
    -------
    numpy.ndarray
        float64 frame.
    """
    flat = _binned(frames.astype(np.float32, copy=False))
    flat = flat - flat.mean(axis=1, keepdims=True)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    similarity = flat @ flat.T
    group = min(_SEED_GROUP, len(frames))
    top = np.sort(similarity, axis=1)[:, -group:]
    centre = int(np.argmax(top.sum(axis=1)))
    members = np.argsort(similarity[centre])[-group:]
    return frames[members].astype(np.float64).mean(axis=0)


def _inside(shape, shift):
    """Pixels of a frame moved by ``-shift`` whose value came from inside the frame."""
    inside = np.ones(shape, bool)
    for axis, (size, amount) in enumerate(zip(shape, shift, strict=True)):
        source = np.arange(size) + amount
        along = (source >= 0) & (source <= size - 1)
        inside &= along.reshape((-1,) + (1,) * (len(shape) - axis - 1))
    return inside


def _average_registered(frames, shifts):
    """Mean of the frames moved by ``shifts``, counting only pixels that stayed inside.

    Linear interpolation: fast, and its slight smoothing averages out over frames
    with different fractional shifts.  One frame at a time, to keep memory flat.
    """
    total = np.zeros(frames.shape[1:])
    count = np.zeros(frames.shape[1:])
    for frame, shift in zip(frames, shifts, strict=True):
        moved = shift_frames(frame[None].astype(np.float32, copy=False), shift[None], order=1)[0]
        valid = _inside(frame.shape, shift) & np.isfinite(moved)
        total += np.where(valid, moved, 0)
        count += valid
    mean = total / np.maximum(count, 1)
    # Pixels no frame covered: the mean of the rest (they carry no weight anyway).
    return np.where(count > 0, mean, mean[count > 0].mean())


def build_reference(
    frames: np.ndarray,
    *,
    iterations: int = 4,
    upsample_factor: int = 10,
    max_shift=None,
    clip_percentiles=None,
    workers: int | None = None,
    return_shifts: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A sharp reference at the sample's median position.

    Parameters
    ----------
    frames : numpy.ndarray
        A sample of the movie's frames, ``(n, *frame_shape)``; NaN pixels are
        ignored.
    iterations : int, default 4
        Register-and-average rounds after the seed.
    upsample_factor : int, default 10
        Subpixel precision of the registration inside each round.
    max_shift : int or tuple of int, optional
        Search range, as in :func:`prepare_reference`.
    clip_percentiles : (float, float), optional
        In each round, frames are compared with the reference clipped to the
        reference's intensities at these percentiles (see :func:`clip_bounds`).
    workers : int, optional
        Threads, as in :func:`estimate_shifts`.
    return_shifts : bool, default True
        Also estimate the sample against the final reference (one more pass over
        the sample); ``False`` returns ``None`` for them, when only the reference is
        wanted.

    Returns
    -------
    reference : numpy.ndarray
        float64 frame.
    shifts : numpy.ndarray or None
        ``(n, ndim + 1)``: each sampled frame's displacement and quality relative
        to the returned reference (None if ``return_shifts=False``).
    """
    frames = np.asarray(frames)
    if np.isfinite(frames).all():
        reference = seed_reference(frames)
    else:
        reference = seed_reference(np.where(np.isfinite(frames), frames, np.nanmean(frames)))
    n = len(frames)
    for round_ in range(iterations + 1):
        if round_ == iterations and not return_shifts:
            return reference, None
        bounds = clip_bounds(reference, clip_percentiles)
        plan = prepare_reference(reference, max_shift=max_shift, clip=bounds)
        result = estimate_shifts(frames, plan, upsample_factor=upsample_factor, workers=workers)
        shifts, quality = result[:, :-1], result[:, -1]
        if round_ == iterations:
            break
        if round_ < iterations - 1:
            # Average the best-matching frames, more of them each round (suite2p).
            keep = max(2, int(n * (1 + round_) / (2 * iterations)))
            chosen, centre = np.argsort(quality)[-keep:], 0.0
        else:
            # Last round: every trustworthy frame, so that no one state of the tissue
            # (say, of its activity) dominates; at the sample's median position.
            chosen = np.flatnonzero(~flag_bad_frames(quality))
            centre = np.median(shifts[chosen], axis=0)
        reference = _average_registered(frames[chosen], shifts[chosen] - centre)
    return reference, result
