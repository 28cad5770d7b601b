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

from .correlation import (
    _one_blas_thread,
    bin_frames,
    clip_bounds,
    default_max_shift,
    estimate_shifts,
    map_threads,
    prepare_reference,
)
from .series import flag_bad_frames

__all__ = ["build_reference", "sample_indices"]

_SEED_GROUP = 20  # frames averaged for the seed, as in suite2p
_SEED_PIXELS = 128 * 128  # frames are binned down to about this size for the seed
_COARSE_PIXELS = 128 * 128  # ... and for the last register-and-average round
_EARLY_PIXELS = 64 * 64  # ... and the rounds before it
_SAMPLE_SPREAD = 1  # a chunked movie's sample comes from chunks holding this many times it


def sample_indices(n_total: int, n_frames: int, chunks=None) -> np.ndarray:
    """``n_frames`` frame indices spread evenly over ``n_total`` (all if fewer).

    Parameters
    ----------
    n_total : int
        Frames in the movie.
    n_frames : int
        Frames wanted.
    chunks : sequence of int, optional
        The frames per chunk of a movie read chunk by chunk (a chunk is read whole).
        The sample is then taken from chunks spread evenly over the movie (at least
        the first and the last), as few as hold the sample, frames spread evenly
        within them: the sample's read costs about the sample, not the whole movie.

    Returns
    -------
    numpy.ndarray
        Sorted, unique int64 indices.
    """
    if n_frames >= n_total:
        return np.arange(n_total)
    even = np.unique(np.linspace(0, n_total - 1, n_frames).round().astype(np.int64))
    if chunks is None:
        return even
    sizes = np.asarray(chunks, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    # At least the first and the last chunk, so that the sample spans the movie; more
    # while the chosen ones (some may be short) hold too few frames.
    wanted = max(2, int(np.ceil(_SAMPLE_SPREAD * n_frames / max(int(np.median(sizes)), 1))))
    while True:
        chosen = np.unique(np.linspace(0, len(sizes) - 1, wanted).round().astype(np.int64))
        if sizes[chosen].sum() >= _SAMPLE_SPREAD * n_frames or len(chosen) == len(sizes):
            break
        wanted += 1
    touched = np.unique(np.searchsorted(starts, even, side="right") - 1)
    if sizes[chosen].sum() >= sizes[touched].sum():
        return even  # the chunks the even sample touches cost no more
    frames = np.concatenate([np.arange(starts[c], starts[c + 1]) for c in chosen])
    return frames[sample_indices(len(frames), n_frames)]


def _factor(shape, pixels: int) -> int:
    """The power of two that bins a frame of ``shape`` down to at most ``pixels`` pixels."""
    factor = 1
    while np.prod(shape) / factor ** len(shape) > pixels and min(shape) >= 4 * factor:
        factor *= 2
    return factor


def _filled(frames: np.ndarray) -> np.ndarray:
    """``frames`` with NaN and infinite pixels set to the mean of the finite ones (for
    the seed, which compares whole frames; the rounds leave such pixels out)."""
    finite = np.isfinite(frames)
    if finite.all():
        return frames
    return np.where(finite, frames, frames[finite].mean() if finite.any() else 0)


def _seed_members(binned: np.ndarray) -> np.ndarray:
    """Indices of the group of frames that correlate best with one another (suite2p)."""
    flat = binned.reshape(len(binned), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    with _one_blas_thread():  # starting BLAS's threads costs more than this product
        similarity = flat @ flat.T
    group = min(_SEED_GROUP, len(binned))
    top = np.sort(similarity, axis=1)[:, -group:]
    centre = int(np.argmax(top.sum(axis=1)))
    return np.argsort(similarity[centre])[-group:]


def _moved_inside(frame: np.ndarray, shift) -> tuple[np.ndarray, tuple] | None:
    """``frame`` moved by ``shift`` (linear interpolation, as :func:`shift_frames`),
    only where every sample came from inside the frame: the values and the region
    of the output they fill (None if none did).  Slices, no gathers: a whole pixel
    of shift is an offset, a fraction a blend of two neighbouring slices."""
    region = []
    for axis, amount in enumerate(shift):
        size = frame.shape[axis]
        whole = int(np.floor(amount))
        fraction = amount - whole
        # Output pixel x reads x + amount: inside if 0 <= x + amount <= size - 1.
        start, stop = max(0, -whole), min(size, size - whole - (fraction > 0))
        if stop <= start:
            return None
        lead = (slice(None),) * axis
        low = frame[lead + (slice(start + whole, stop + whole),)]
        if fraction > 0:
            high = frame[lead + (slice(start + whole + 1, stop + whole + 1),)]
            frame = np.subtract(high, low)  # then in place: fewer fresh buffers
            frame *= np.float32(fraction)
            frame += low
        else:
            frame = low
        region.append(slice(start, stop))
    return frame, tuple(region)


def _count_regions(regions, shape) -> np.ndarray:
    """How many of the boxes ``regions`` (tuples of slices) cover each pixel.

    A box is an outer product of one interval per axis, so the count is a matrix
    product of the intervals' indicators: exact (whole numbers), and far cheaper
    than adding each box.
    """
    if not regions:
        return np.zeros(shape)
    inside = []
    for axis, size in enumerate(shape):
        rows = np.zeros((len(regions), size))
        for row, region in zip(rows, regions, strict=True):
            row[region[axis]] = 1
        inside.append(rows)
    rest = inside[-1]
    for rows in reversed(inside[1:-1]):
        rest = (rows[:, :, None] * rest[:, None, :]).reshape(len(regions), -1)
    return (inside[0].T @ rest).reshape(shape)


_AVERAGE_BATCH = 16  # frames summed per task: the same sums on any number of threads


def _average_registered(frames, shifts, index=None, workers=None):
    """Mean of ``frames[index]`` (an array of frames, or a list of them) moved by
    ``shifts``, counting only pixels that stayed inside.

    Linear interpolation: fast, and its slight smoothing averages out over frames
    with different fractional shifts; non-finite pixels are left out.  A few frames
    per task, on ``workers`` threads; the tasks' sums are added in order, so the
    result does not depend on the threads.
    """
    index = np.arange(len(frames)) if index is None else np.asarray(index)
    shape = np.shape(frames[0])
    batches = [
        range(i, min(i + _AVERAGE_BATCH, len(index))) for i in range(0, len(index), _AVERAGE_BATCH)
    ]
    sums = [None] * len(batches)

    def add(number):
        total, count = np.zeros(shape), np.zeros(shape)
        regions = []  # of the frames with every value finite: counted at once, below
        for i in batches[number]:
            with np.errstate(invalid="ignore"):  # inf - inf: NaN, left out below
                moved = _moved_inside(np.asarray(frames[index[i]], dtype=np.float32), shifts[i])
            if moved is None:
                continue
            values, region = moved
            if np.isfinite(values.sum()):  # one pass, no mask (an overflow only costs time)
                total[region] += values
                regions.append(region)
            else:
                finite = np.isfinite(values)
                total[region] += np.where(finite, values, 0)
                count[region] += finite
        sums[number] = total, count + _count_regions(regions, shape)

    map_threads(add, range(len(batches)), workers)
    total, count = np.zeros(shape), np.zeros(shape)
    for batch_total, batch_count in sums:
        total += batch_total
        count += batch_count
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
    frames : numpy.ndarray or sequence of numpy.ndarray
        A sample of the movie's frames, ``(n, *frame_shape)``, or its runs of
        frames (arrays of such frames, as read chunk by chunk: used as they are, not
        copied into one); NaN pixels are ignored.
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
    runs = [np.asarray(frames)] if isinstance(frames, np.ndarray) else list(frames)
    every = [frame for run in runs for frame in run]  # views, for the final average
    n = len(every)
    # The rounds only choose frames and align them for the next average: the last runs
    # on frames binned down to about _COARSE_PIXELS (a displacement of s binned pixels
    # is one of factor * s pixels), the ones before (and the seed) on frames binned
    # further, to about _EARLY_PIXELS; the final average is taken of the full frames.
    factor = _factor(every[0].shape, _COARSE_PIXELS)
    coarse = np.concatenate([bin_frames(run, factor, workers) for run in runs])
    early_factor = _factor(coarse.shape[1:], _EARLY_PIXELS) if iterations > 1 else 1
    early = bin_frames(coarse, early_factor, workers) if early_factor > 1 else coarse
    filled = _filled(early)
    seed = _seed_members(bin_frames(filled, _factor(early.shape[1:], _SEED_PIXELS)))
    reference = filled[seed].astype(np.float64).mean(axis=0)
    full_search = default_max_shift(every[0].shape) if max_shift is None else max_shift
    full_search = np.broadcast_to(np.asarray(full_search), (every[0].ndim,))
    for round_ in range(iterations):
        last = round_ == iterations - 1
        level, scale = (coarse, factor) if last else (early, factor * early_factor)
        bounds = clip_bounds(reference, clip_percentiles)
        # The fixed-margin estimate: the per-frame overlap estimate costs more and gave
        # no better reference (bench_reference.py, DECISIONS).
        search = tuple(-(-int(m) // scale) for m in full_search)
        plan = prepare_reference(reference, max_shift=search, clip=bounds, overlap=False)
        result = estimate_shifts(level, plan, upsample_factor=upsample_factor, workers=workers)
        shifts, quality = result[:, :-1], result[:, -1]
        if not last:
            # Average the best-matching frames, more of them each round (suite2p); at
            # the next round's level.
            keep = max(2, int(n * (1 + round_) / (2 * iterations)))
            chosen = np.argsort(quality)[-keep:]
            if round_ + 1 == iterations - 1:
                reference = _average_registered(
                    coarse, early_factor * shifts[chosen], chosen, workers
                )
            else:
                reference = _average_registered(early, shifts[chosen], chosen, workers)
        else:
            # Last round: every trustworthy frame, so that no one state of the tissue
            # (say, of its activity) dominates; at the sample's median position; of
            # the full frames.
            chosen = np.flatnonzero(~flag_bad_frames(quality))
            centre = np.median(shifts[chosen], axis=0)
            reference = _average_registered(
                every, factor * (shifts[chosen] - centre), chosen, workers
            )
    if iterations == 0:  # the seed itself, of the full frames
        reference = _filled(np.stack([every[i] for i in seed])).astype(np.float64).mean(axis=0)
    if not return_shifts:
        return reference, None
    bounds = clip_bounds(reference, clip_percentiles)
    plan = prepare_reference(reference, max_shift=max_shift, clip=bounds)
    frames = runs[0] if len(runs) == 1 else np.concatenate(runs)
    result = estimate_shifts(frames, plan, upsample_factor=upsample_factor, workers=workers)
    return reference, result
