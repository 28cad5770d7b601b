"""Bidirectional scan phase: the offset along x between forward and backward lines.

A resonant scanner writes lines in both directions.  Forward lines are the even
rows (0, 2, ...) of each frame, backward lines the odd rows; the backward lines
come out sampled at ``x + offset`` instead of ``x``.  ``offset > 0`` means an odd
line shows, at column ``x``, what lies at ``x + offset`` in the scene.

Estimate.  Every line ``t`` that has a line above and below is compared with the
mean of those two neighbours, which are of the other direction and sit, on
average, at the line's own height (so oriented structure, which a comparison of
adjacent lines mistakes for an offset, pulls neither way).  An odd line peaks at
``+offset``, an even one at ``-offset``; both are folded into one score.  The
score is a normalised cross-correlation along x in which the line is weighted by
a window that is zero within ``max_offset`` of either end (so no shift searched
reaches outside the neighbours) and normalised by the neighbours' energy under the
shifted window: for noise-free lines it is exactly 1 at the true offset.  Every
line's cross-power spectrum is summed into one spectrum per frame, and frames' sums
add (per movie, per window).  The correlation is a trigonometric polynomial of the
lag, evaluated exactly at any subpixel lag from that spectrum (the neighbours are
mirrored at their ends first, so the interpolation sees no jump): the integer
peak, then three ten-fold finer grids, to 0.001 px.

Correction moves the odd lines by ``-offset`` along x (even lines are kept as they
are, bit for bit), with :func:`xreg.core.shift_frames`.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..errors import XregError
from .correlation import map_threads, window_profile
from .shift import shift_frames

__all__ = [
    "check_offset",
    "correct_scan_phase",
    "default_max_offset",
    "phase_from_terms",
    "phase_terms",
    "terms_width",
]

# Frames (planes) per FFT batch in phase_terms: each holds two complex spectra per line.
_BATCH = 8
# Subpixel stages after the integer peak: (step in px, points each side).
_STAGES = ((0.1, 6), (0.01, 10), (0.001, 10))


def default_max_offset(width: int) -> int:
    """Default search range: 10 px (suite2p's), at most an eighth of the line."""
    return max(1, min(10, width // 8))


def check_lines(n_lines: int, width: int, *, minimum: int = 3) -> None:
    """Raise unless frames have ``minimum`` lines and room along x to compare."""
    if n_lines < minimum:
        raise XregError(
            f"Frames have {n_lines} line(s); the scan phase needs at least {minimum} "
            "(lines alternate forward and backward along the line dim). Check which dims "
            "are the lines and the scan: pass `dims=(line_dim, scan_dim)`."
        )
    if width < 8:
        raise XregError(f"Lines of {width} pixels are too short to compare; need at least 8.")


def check_offset(offset, width: int, name: str = "offset") -> np.ndarray:
    """Offsets as float64, after checking each finite one is within a quarter of the width.

    NaN is allowed (that frame is left as it is); infinities are not.
    """
    values = np.asarray(offset, dtype=np.float64)
    if np.isinf(values).any():
        raise XregError(f"`{name}` must be finite (or NaN to leave a frame as it is).")
    limit = width / 4
    too_large = np.abs(np.nan_to_num(values)) > limit
    if too_large.any():
        worst = float(np.nanmax(np.abs(values)))
        raise XregError(
            f"A scan-phase `{name}` of {worst:g} px is more than a quarter of the "
            f"{width}-px line ({limit:g} px): no scanner is that far out of phase. Check "
            "the units (pixels) and the dims (`dims=(line_dim, scan_dim)`)."
        )
    return values


def terms_width(width: int) -> int:
    """Columns of the per-frame table :func:`phase_terms` returns for lines of ``width``."""
    return (width // 2 + 1) + (width + 1) + 2


def _split(terms: np.ndarray, width: int):
    """The cross spectrum, energy spectrum, line energy and line count of a table."""
    half = width // 2 + 1
    return (
        terms[:, :half],
        terms[:, half : half + width + 1],
        terms[:, -2].real,
        terms[:, -1].real,
    )


def _mirror(lines: np.ndarray) -> np.ndarray:
    """Lines followed by their mirror image: periodic with no jump at either end."""
    return np.concatenate([lines, lines[..., ::-1]], axis=-1)


def _frame_terms(frames, weight, weight_spectrum, finite):
    """Cross and energy spectra, line energy and line count of each (plane of a) frame."""
    width = frames.shape[-1]
    rows = finite.all(axis=-1)  # lines without NaN or inf
    if not finite.all():
        frames = np.where(finite, frames, 0)
    line = frames[:, 1:-1]
    neighbours = 0.5 * (frames[:, :-2] + frames[:, 2:])
    valid = (rows[:, 1:-1] & rows[:, :-2] & rows[:, 2:]).astype(frames.dtype)[..., None]
    centred = line - (line @ weight)[..., None] / weight.sum()
    weighted = (weight * centred) * valid
    neighbours = (neighbours - neighbours.mean(axis=-1, keepdims=True)) * valid
    # The straight line through each neighbour line's end points is taken out before
    # the FFT, so the periodic interpolation sees no jump at the wrap; its part of the
    # correlation is added back exactly: the weighted line has zero mean, so a line
    # a + b x contributes b * sum(w a_c x) at every lag, a constant.
    x = np.arange(width, dtype=frames.dtype)
    slope = (neighbours[..., -1:] - neighbours[..., :1]) / (width - 1)
    straight = neighbours[..., :1] + slope * x
    constant = slope[..., 0].astype(np.float64) * (weighted @ x)
    product = np.conj(sfft.rfft(weighted, axis=-1))
    product *= sfft.rfft(neighbours - straight, axis=-1)
    product[..., 0] += width * constant
    # Line t (1-based among all rows) peaks at +offset if odd, -offset if even: the even
    # ones enter conjugated, i.e. with the lag reversed.
    odd, even = slice(0, None, 2), slice(1, None, 2)
    cross = product[:, odd].sum(axis=1, dtype=np.complex128)
    cross += np.conj(product[:, even].sum(axis=1, dtype=np.complex128))
    square = neighbours.astype(np.float64) ** 2
    energy = np.conj(weight_spectrum) * sfft.rfft(_mirror(square[:, odd].sum(axis=1)), axis=-1)
    energy += np.conj(
        np.conj(weight_spectrum) * sfft.rfft(_mirror(square[:, even].sum(axis=1)), axis=-1)
    )
    norm = (weighted.astype(np.float64) * centred).sum(axis=(1, 2))
    return cross, energy, norm, valid.sum(axis=(1, 2))


def phase_terms(frames: np.ndarray, *, max_offset: int, workers: int | None = 1) -> np.ndarray:
    """Each frame's scan-phase statistics, as rows that add across frames.

    Parameters
    ----------
    frames : numpy.ndarray
        Shape ``(n, ..., lines, width)``: the lines are the second-last axis, the scan
        the last.  Any axes in between (planes, channels) are pooled per frame.  Lines
        holding NaN or inf are left out.
    max_offset : int
        The largest offset that will be searched (sets the window's zero band).
    workers : int, optional
        Threads over batches of frames; ``None``: all cores.

    Returns
    -------
    numpy.ndarray
        complex128, shape ``(n, terms_width(width))``: the summed cross-power spectrum
        (``width + 1`` values), the neighbours' energy spectrum (``width + 1``), the
        lines' weighted energy and the number of lines used.  Sums of rows (over
        frames, or a moving window of frames) are the statistics of those frames
        together; :func:`phase_from_terms` turns them into offsets.
    """
    frames = np.asarray(frames)
    n, width = frames.shape[0], frames.shape[-1]
    check_lines(frames.shape[-2], width)
    planes = frames.reshape((-1,) + frames.shape[-2:])
    per_frame = planes.shape[0] // n if n else 1
    work = np.float64 if frames.dtype == np.float64 else np.float32
    ramp = max(2, width // 8)
    band = min(max_offset + 1, width // 2 - 1)
    weight = window_profile(width, band, min(ramp, max(0, width // 2 - band - 1))).astype(work)
    weight_spectrum = sfft.rfft(weight.astype(np.float64), n=2 * width)
    out = np.zeros((planes.shape[0], terms_width(width)), np.complex128)
    half = width // 2 + 1

    def run(start):
        batch = planes[start : start + _BATCH].astype(work, copy=False)
        finite = np.isfinite(batch) if batch.dtype.kind == "f" else np.ones(batch.shape, bool)
        cross, energy, norm, count = _frame_terms(batch, weight, weight_spectrum, finite)
        rows = out[start : start + len(batch)]
        rows[:, :half], rows[:, half : half + width + 1] = cross, energy
        rows[:, -2], rows[:, -1] = norm, count

    map_threads(run, range(0, planes.shape[0], _BATCH), workers)
    return out.reshape(n, per_frame, -1).sum(axis=1)


def _coefficients(size: int, count: int) -> np.ndarray:
    """Weights that turn a half (rfft) spectrum into the real inverse transform."""
    weights = np.full(count, 2.0)
    weights[0] = 1.0
    if size % 2 == 0:
        weights[-1] = 1.0
    return weights / size


def _trig(spectrum, size, centre, offsets):
    """The real signal of half-spectrum ``spectrum`` (period ``size``) at lags
    ``centre[:, None] + offsets``: trigonometric interpolation, a ramp per item times
    a kernel shared by all."""
    freqs = np.arange(spectrum.shape[1])
    phase = 2j * np.pi * freqs / size
    ramp = _coefficients(size, len(freqs)) * np.exp(phase * centre[:, None])
    return ((spectrum * ramp) @ np.exp(phase[:, None] * offsets[None, :])).real


def _score(numerator, energy, norm):
    denominator = energy * norm[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = numerator / np.sqrt(denominator)
    return np.where(denominator > 0, score, -np.inf)


def phase_from_terms(
    terms: np.ndarray, *, width: int, max_offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and peak quality from (summed) rows of :func:`phase_terms`.

    Parameters
    ----------
    terms : numpy.ndarray
        Shape ``(m, terms_width(width))``.
    width : int
        The frames' line length.
    max_offset : int
        Search ``-max_offset .. max_offset`` px.

    Returns
    -------
    offset : numpy.ndarray
        float64 ``(m,)``, to 0.001 px.  NaN where there was nothing to compare (no line
        with valid neighbours, or no contrast) and where the peak lies on the edge of
        the search range (the offset may be larger).
    quality : numpy.ndarray
        The normalised correlation at the peak, 0..1 (0 where there was nothing to
        compare).
    """
    cross, energy, norm, _ = _split(np.asarray(terms), width)
    lags = np.arange(-max_offset, max_offset + 1)
    score = _score(
        sfft.irfft(cross, n=width, axis=1)[:, lags % width],
        sfft.irfft(energy, n=2 * width, axis=1)[:, lags % (2 * width)],
        norm,
    )
    best = np.argmax(score, axis=1)
    usable = np.isfinite(score[np.arange(len(score)), best])
    centre = lags[best].astype(np.float64)
    for step, reach in _STAGES:
        grid = step * np.arange(-reach, reach + 1)
        stage = _score(
            _trig(cross, width, centre, grid), _trig(energy, 2 * width, centre, grid), norm
        )
        centre = centre + grid[np.argmax(stage, axis=1)]
    zero = np.zeros(1)
    peak = _score(_trig(cross, width, centre, zero), _trig(energy, 2 * width, centre, zero), norm)
    # A peak on (or refined past) the edge of the range: the offset may lie beyond it.
    at_edge = np.abs(centre) >= max_offset
    offset = np.where(usable & ~at_edge, np.round(centre, 3), np.nan)
    quality = np.where(usable, np.clip(peak[:, 0], 0, 1), 0.0)
    return offset, quality


def correct_scan_phase(
    frames: np.ndarray,
    offsets,
    *,
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
) -> np.ndarray:
    """Move the backward (odd) lines of each frame by ``-offset`` along x.

    Parameters
    ----------
    frames : numpy.ndarray
        Shape ``(n, ..., lines, width)``; axes between the first and the last two
        (planes, channels) take their frame's offset.
    offsets : array-like
        ``(n,)`` offsets in pixels (the odd lines were sampled at ``x + offset``), or
        one for all frames.  A NaN offset leaves its frame as it is.
    order, mode, cval
        Interpolation as in :func:`xreg.core.shift_frames`.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype; the even lines unchanged, integers rounded and clipped.
    """
    frames = np.asarray(frames)
    n, lines, width = frames.shape[0], frames.shape[-2], frames.shape[-1]
    check_lines(lines, width, minimum=2)
    offsets = np.broadcast_to(check_offset(offsets, width), (n,))
    out = np.empty_like(frames)
    # A few frames at a time, so the odd lines' copies stay small (and in cache).
    for start in range(0, n, _BATCH):
        batch = slice(start, start + _BATCH)
        out[batch] = frames[batch]
        odd = frames[batch, ..., 1::2, :]
        stacked = odd.reshape((-1,) + odd.shape[-2:])
        shifts = np.zeros((stacked.shape[0], 2))
        shifts[:, 1] = -np.repeat(offsets[batch], stacked.shape[0] // len(odd))
        moved = shift_frames(stacked, shifts, order=order, mode=mode, cval=cval)
        out[batch, ..., 1::2, :] = moved.reshape(odd.shape)
    return out
