"""Rigid shift estimation by windowed, normalised cross-correlation.

Each frame is compared with the reference by a normalised cross-correlation in
which the *frame* is weighted by a fixed window that is zero within ``margin``
pixels of its border and rises smoothly inside.  Content that a motion of up to
``margin`` pixels pushes across the border (which the reference cannot contain)
therefore never enters the score, and the normalisation by the reference's local
energy under the shifted window removes the pull towards zero shift that plain
(phase) correlation and ordinary apodisation show.  At the true displacement the
score is exactly 1 for noise-free data, so the peak is unbiased.

By default each frame then gets a window of its own (:func:`_estimate_overlap`):
an integer search on frames binned by up to 4 finds its shift within two pixels, and
the frame is compared over every pixel whose content lies inside the reference at
that shift (a box with a 4-px raised-cosine edge, 13 px inside the edge where new
content enters and 8 px from the reference's edge), not only inside a fixed band
of ``max_shift`` pixels.  The local energy under any such box, and its gradient,
come from summed-area tables of the reference, so the own window costs no extra
transform.

The numerator is one batched ``rfftn`` per chunk of frames; the reference's
spectra and its local-energy map under the window (and that map's exact gradient)
are computed once, in :func:`prepare_reference`.  The integer peak is refined in
continuous coordinates by Newton steps on the normalised score, whose value and
first and second derivatives come from a matrix-multiply DFT of the cross-power
spectrum at one point (as in Guizar-Sicairos et al. 2008, with the derivative
factors in the kernel), vectorised over frames.

Sign convention: a frame equal to ``scipy.ndimage.shift(reference, d)`` has
displacement ``d``; this is the opposite sign of
``skimage.registration.phase_cross_correlation``.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import scipy.fft as sfft
from scipy import ndimage
from threadpoolctl import ThreadpoolController

from ..errors import XregError

__all__ = [
    "ReferencePlan",
    "bin_frames",
    "check_reference",
    "clip_bounds",
    "default_max_shift",
    "estimate_shifts",
    "overlap_applies",
    "prepare_reference",
    "prepare_whole_frame",
    "search_range",
    "stack_plans",
    "weighting_applies",
    "window_profile",
]

# Frames per FFT batch: large enough to amortise Python overhead, small enough that
# a batch's complex spectra stay in cache-friendly sizes (about 16 MB at 512x512).
_TARGET_BATCH_PIXELS = 4 * 1024 * 1024
# Spectrum entries per item above which a stack of per-item matrix products beats one
# product over a copy of the whole batch (and below which their overhead dominates).
_LARGE_ITEM = 16 * 1024
_TINY = 1e-12
# Batches a thread estimates before the weighted steps of those batches are taken.
_STEP_GROUP = 4
# Half-width of the stencil that interpolates the local energy between integer
# shifts (2: quartic), and hence the extra pixels its window keeps each side.
_STENCIL = 2
# Each subpixel refinement stage evaluates this many points each side of its centre
# per axis, and is this many times finer than the one before.
_REFINE_REACH = 2
_REFINE_RATIO = 4
# Grid moves per refinement stage, at most.  The first stage starts within half a pixel
# of the integer peak and walks 0.2 px a move inside +-1 px (8 moves); later stages
# start within a move of their maximum.  A bound, so no input (a flat or NaN score, or
# float32 rounding that makes two points trade places) can make the walk go on forever.
_REFINE_MOVES = 16


def default_max_shift(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Default search range per axis: 10 % of the axis, at least 8 px, at most half.

    Parameters
    ----------
    shape : tuple of int
        The frame shape.

    Returns
    -------
    tuple of int
    """
    return tuple(min(max(math.ceil(0.1 * n), 8), (n - 1) // 2) for n in shape)


def clip_bounds(reference: np.ndarray, percentiles) -> tuple[float, float] | None:
    """The reference's intensities at two percentiles: bounds for ``clip``.

    Parameters
    ----------
    reference : numpy.ndarray
        The reference frame.
    percentiles : (float, float) or None
        Low and high percentile, ``0 <= low < high <= 100`` (checked by
        :func:`xreg.validate.percentiles`).

    Returns
    -------
    (float, float) or None
        None if ``percentiles`` is None, or if both bounds coincide (a reference
        mostly at one value would be clipped flat).
    """
    if percentiles is None:
        return None
    bounds = np.nanpercentile(reference, percentiles)
    return None if bounds[0] == bounds[1] else (float(bounds[0]), float(bounds[1]))


def overlap_applies(shape: tuple[int, ...]) -> bool:
    """Whether frames of ``shape`` are compared over the pixels they share with the
    reference (the per-frame overlap estimate, with its noise weights where asked):
    at least ``_OVERLAP_MIN_SIZE`` px per axis.  Smaller frames keep the fixed window."""
    return min(shape) >= _OVERLAP_MIN_SIZE


def weighting_applies(shape: tuple[int, ...]) -> bool:
    """Whether frames of ``shape`` can have their overlap estimate weighted by their
    noise (:class:`NoiseWeighting`): 2-D frames on the overlap estimate's path."""
    return len(shape) == 2 and overlap_applies(shape)


def check_reference(reference: np.ndarray) -> None:
    """Refuse a reference with NaN or infinite values, or with no contrast, saying what
    to pass instead.

    Raises
    ------
    XregError
    """
    if not np.all(np.isfinite(reference)):
        raise XregError(
            "The reference contains NaN or infinite values. "
            "Fill them first, e.g. `reference.fillna(reference.mean())`."
        )
    if np.ptp(reference) == 0:
        raise XregError(
            "The reference is constant, so nothing can be matched against it. "
            "Use a frame or an average with visible structure."
        )


def window_profile(length: int, margin: int, ramp: int) -> np.ndarray:
    """1-D weight: 0 within ``margin`` of either end, a raised-cosine ``ramp``, then 1.

    Parameters
    ----------
    length : int
        Number of samples.
    margin : int
        Samples at each end with weight exactly zero.
    ramp : int
        Samples over which the weight rises from 0 to 1 after the margin.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(length,)``.
    """
    distance = np.minimum(np.arange(length), np.arange(length)[::-1]).astype(float)
    rise = (distance - margin + 1) / (ramp + 1)
    return np.where(
        distance < margin, 0.0, np.where(rise >= 1, 1.0, 0.5 - 0.5 * np.cos(np.pi * rise))
    )


@dataclass(frozen=True)
class OverlapTables:
    """What the per-frame overlap estimate needs beyond the plan's spectra.

    ``tables`` holds summed-area tables (a zero row and column first) of the
    normalised reference ``r``, of ``r ** 2``, of ``r * D_a r`` and of ``D_a r`` per
    axis ``a`` (``D_a`` the band-limited derivative): the local energy under any
    ramped box and its exact gradient are then a few lookups (:func:`_box_sums`).
    ``coarse`` is the plan of the reference binned by ``factor`` per axis, for the
    integer search.
    """

    tables: np.ndarray  # float64 (2 + 2 * ndim, *(shape + 1))
    coarse: ReferencePlan
    factor: tuple[int, ...]


@dataclass(frozen=True)
class NoiseWeighting:
    """What the noise-weighted step of the overlap estimate needs (2-D frames).

    Its instruments ``Z_a = L(w * S_a)`` are the reference's negated slope ``S_a``
    along each axis (a fourth-order difference of the normalised reference), weighted
    by ``w``, the inverse of the frames' noise variance smoothed over
    ``_WEIGHT_SMOOTHING`` px, and limited to the band ``|f| <= _WEIGHT_BAND`` (``L``).
    ``instruments`` holds their conjugate spectra on that band of the half spectrum
    (rows ``rows``, the first ``columns`` columns, each column but the first counted
    twice for its twin), so each frame's sums against them come from its own
    spectrum; ``tables`` the summed-area tables (a zero row and column first) of
    ``Z_a * r`` and of ``Z_a`` (``r`` the normalised reference), for the same sums
    over the model; ``jacobian`` the sum of ``Z_a * S_b`` over a box of the
    reference, per unit of the box's weight.
    """

    rows: np.ndarray  # int64
    columns: int
    instruments: np.ndarray  # complex64 (ndim, len(rows), columns)
    tables: np.ndarray  # float64 (2 * ndim, *(shape + 1))
    jacobian: np.ndarray  # float64 (ndim, ndim)


@dataclass(frozen=True)
class ReferencePlan:
    """Everything about a reference that is computed once and reused for every frame.

    Built by :func:`prepare_reference`; treat as opaque.  Holds only arrays and
    numbers, so it can be shipped to workers (Dask, Spark broadcast).
    """

    shape: tuple[int, ...]
    max_shift: tuple[int, ...]
    weight: np.ndarray  # float32, frame shape: the window applied to each frame
    weight_sum: float | np.ndarray  # an array for stacked plans
    conj_ref: np.ndarray  # complex64, conj(rfftn(normalised reference))
    conj_ref_sq: np.ndarray  # complex64, conj(rfftn(normalised reference ** 2))
    local_energy: np.ndarray  # float64 window: reference variance under shifted window
    # conj(rfftn(reference * its band-limited derivative along each axis)), (ndim, ...)
    conj_ref_slope: np.ndarray
    energy_slope: np.ndarray  # float64 (ndim, *window): the local energy's exact gradient
    clip: tuple[float, float] | None = None  # intensity bounds applied to every frame
    # The noise weighting: frames (after clipping) become sqrt(max(x + offset, 0)).
    offset: float | None = None
    # For a whole-frame circular plan (:func:`prepare_whole_frame`): the windowed plan
    # that refines each frame's subpixel shift once its whole pixels are undone.
    residual: ReferencePlan | None = None
    # For the per-frame overlap estimate (:func:`_estimate_overlap`), None if not built.
    overlap: OverlapTables | None = None
    # With it, each frame's overlap estimate ends with a step that weighs every pixel by
    # its noise (:func:`_weighted_step`); None where equal weights do as well.
    weighting: NoiseWeighting | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stacked(self) -> int:
        """How many references a plan from :func:`stack_plans` holds; 0 for one reference."""
        return self.conj_ref.shape[0] if self.conj_ref.ndim > self.ndim else 0


def stack_plans(plans) -> ReferencePlan:
    """Several references of one shape as one plan: :func:`estimate_shifts` then takes
    frames of shape ``(n, len(plans), *shape)`` and compares item ``p`` of every frame
    with reference ``p``, in one batched pass.

    Parameters
    ----------
    plans : sequence of ReferencePlan
        Same shape and search range.

    Returns
    -------
    ReferencePlan
        Its arrays carry a leading axis, one entry per plan (the window: one entry
        when all plans share it).
    """
    first = plans[0]
    if any(
        p.shape != first.shape
        or p.max_shift != first.max_shift
        or p.clip != first.clip
        or p.offset != first.offset
        for p in plans
    ):
        raise XregError("Stacked references must share their shape, search range, clip and offset.")
    # Blocks of one shape share their window: keep one copy, not one per block.
    shared = all(np.array_equal(p.weight, first.weight) for p in plans)
    kept = plans[:1] if shared else plans
    return ReferencePlan(
        shape=first.shape,
        max_shift=first.max_shift,
        weight=np.stack([p.weight for p in kept]),
        weight_sum=np.array([p.weight_sum for p in kept]),
        conj_ref=np.stack([p.conj_ref for p in plans]),
        conj_ref_sq=np.stack([p.conj_ref_sq for p in plans]),
        local_energy=np.stack([p.local_energy for p in plans]),
        conj_ref_slope=np.stack([p.conj_ref_slope for p in plans]),
        energy_slope=np.stack([p.energy_slope for p in plans]),
        clip=first.clip,
        offset=first.offset,
    )


def _window_indices(plan_shape, half_widths):
    """Wrapped indices -h..h along each axis (the shifts searched), as open index."""
    return [np.arange(-h, h + 1) % n for n, h in zip(plan_shape, half_widths, strict=True)]


def _correlate_window(spectrum, shape, half_widths, workers=1):
    """Circular correlation from its rfftn spectrum, only at shifts -h..h per axis.

    Inverts the full axes first, keeps the needed slices, and inverts the last
    (real) axis only for those: cheaper than a full ``irfftn`` when the search
    range is small compared with the frame.
    """
    lead = tuple(range(spectrum.ndim - len(shape), spectrum.ndim))
    out = spectrum
    idx = _window_indices(shape, half_widths)
    for axis, index in zip(lead[:-1], idx[:-1], strict=True):
        size = spectrum.shape[axis]
        if len(index) < 4 * math.log2(size):
            # Few shifts (block searches): a matrix DFT is cheaper than the whole FFT.
            matrix = np.exp(2j * np.pi * np.outer(index, np.arange(size)) / size) / size
            matrix = matrix.astype(np.complex64)
            inner = math.prod(out.shape[axis + 1 :])
            if axis == spectrum.ndim - 2 and size * inner >= _LARGE_ITEM:
                # Large items (whole frames): one product per item, in place, saves
                # the copy that moving the axis to the front makes.
                out = matrix @ out
                continue
            # One matrix product over every item at once: a stack of small products
            # (numpy's broadcasting matmul) ran 10-100 x slower, worst on a busy machine.
            moved = np.moveaxis(out, axis, 0)
            product = matrix @ moved.reshape(size, -1)
            out = np.moveaxis(product.reshape((len(index),) + moved.shape[1:]), 0, axis)
        else:
            out = sfft.ifft(out, axis=axis, workers=workers, overwrite_x=out is not spectrum)
            out = np.take(out, index, axis=axis)
    out = sfft.irfft(out, n=shape[-1], axis=-1, workers=workers)
    return np.take(out, idx[-1], axis=-1)


def prepare_reference(
    reference: np.ndarray,
    *,
    max_shift: int | tuple[int, ...] | None = None,
    margin: int | tuple[int, ...] | None = None,
    clip: tuple[float, float] | None = None,
    overlap: bool = True,
    offset: float | None = None,
    noise=None,
    weights: bool = False,
) -> ReferencePlan:
    """Precompute the reference's spectra and local energy for :func:`estimate_shifts`.

    Parameters
    ----------
    reference : numpy.ndarray
        The reference frame, 2-D or 3-D, finite, not constant.
    max_shift : int or tuple of int, optional
        Largest displacement searched and reported per axis, in pixels (larger
        motion comes out at the bound).  Default: 10 % of each axis (at least 8 px,
        at most half the axis).
    margin : int or tuple of int, optional
        Border (per axis) given zero weight in each frame.  Default: ``max_shift``,
        capped at a quarter of the axis, so that content moved across the border
        never biases the estimate.  ``0`` gives a plain circular cross-correlation
        over the whole frame (what thunder-registration did).
    clip : (float, float), optional
        Intensity bounds: the reference and every frame are clipped to them before
        they are compared, so that pixels far outside the reference's usual range
        (cells lit by a calcium transient) weigh less.  The same clipping on both
        sides keeps the estimate exact for whole-pixel motion.
    overlap : bool, default True
        Also prepare the per-frame overlap estimate (used with the default
        ``margin`` on frames of at least 32 px per axis): each frame is then
        compared over every pixel it shares with the reference at its own
        displacement, not only inside the fixed ``margin``.
    offset : float, optional
        Noise weighting: the reference and every frame, once clipped, are compared
        as ``sqrt(max(x + offset, 0))`` (the variance-stabilising transform of
        Poisson-Gaussian noise, see :class:`xreg.core.noise.NoiseModel`), so that
        each pixel weighs by its noise.  None: the intensities themselves.
    noise : xreg.core.NoiseModel, optional
        The frames' noise: the reference is then compared as what a frame showing it
        looks like on average once clipped and stabilised (its noise clipped too), so
        that the clip, which still clips transients as hard, biases no estimate by
        clipping noise.  None: the reference clipped and stabilised as it is.
    weights : bool, default False
        With ``noise``: each frame's overlap estimate ends with a step that weighs every
        pixel by the inverse of its noise variance (:class:`NoiseWeighting`), which
        brings it close to the Cramér-Rao bound under shot noise, at about the rate of
        the unweighted estimate; only where the noise depends on the intensity enough
        to matter (:meth:`xreg.core.NoiseModel.weighs`), and only on the overlap
        estimate's path of 2-D frames (not with ``offset``, ``margin`` or
        ``overlap=False``, nor for volumes, frames under 32 px per axis, or frames that
        take the fixed window: NaN pixels, a box too small).  Otherwise every pixel
        weighs the same.

    Returns
    -------
    ReferencePlan

    Raises
    ------
    XregError
        If the reference is not 2-D or 3-D, is not finite, or has no contrast.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim not in (2, 3):
        raise XregError(
            f"Frames must be 2-D or 3-D; got a reference with {ref.ndim} dims. "
            "Pass one frame (y, x) or volume (z, y, x)."
        )
    check_reference(ref)
    if clip is not None:
        low, high = (float(c) for c in clip)
        if not low < high:
            raise XregError(f"`clip` must be two intensities, low < high; got {clip!r}.")
        clip = (low, high)
    if offset is not None:
        offset = float(offset)
    raw = ref
    ref = _expected(ref, clip, offset, noise)
    check_reference(ref)  # once more: the clip may have left it flat
    std = ref.std()
    shape = ref.shape
    wants_overlap = overlap and margin is None and overlap_applies(shape)
    max_shift = search_range(shape, max_shift)
    default_margin = tuple(min(m, n // 4) for m, n in zip(max_shift, shape, strict=True))
    margin = _per_axis(margin, default_margin, shape)
    margin = tuple(int(math.ceil(m)) for m in margin)
    weight = np.ones(shape)
    for axis, (n, m) in enumerate(zip(shape, margin, strict=True)):
        # A smooth rise keeps the local-energy map smooth, which the subpixel step needs.
        ramp = 0 if m == 0 else max(2, n // 8)
        profile = window_profile(n, m, min(ramp, max(0, n // 2 - m - 1)))
        weight = weight * profile.reshape((-1,) + (1,) * (len(shape) - axis - 1))
    if weight.sum() == 0:
        raise XregError(
            f"The margin {margin} leaves no pixel of a {shape} frame to compare. "
            "Pass a smaller `max_shift`."
        )

    normalised = (ref - ref.mean()) / std
    axes = tuple(range(len(shape)))
    ref_spectrum = sfft.rfftn(normalised, axes=axes)
    ref_sq_spectrum = sfft.rfftn(normalised**2, axes=axes)
    weight_spectrum = sfft.rfftn(weight, axes=axes)
    slopes = [
        sfft.irfftn(derivative, shape, axes=axes)
        for derivative in _derivative_spectra(ref_spectrum, shape)
    ]
    conj_ref_slope = np.stack(
        [sfft.rfftn(normalised * slope, axes=axes).conj() for slope in slopes]
    )
    local_energy, energy_slope = _local_energy(
        weight_spectrum,
        weight.sum(),
        ref_spectrum.conj(),
        ref_sq_spectrum.conj(),
        conj_ref_slope,
        shape,
        tuple(m + _STENCIL for m in max_shift),
    )
    return ReferencePlan(
        shape=shape,
        max_shift=max_shift,
        weight=weight.astype(np.float32),
        weight_sum=float(weight.sum()),
        conj_ref=ref_spectrum.conj().astype(np.complex64),
        conj_ref_sq=ref_sq_spectrum.conj().astype(np.complex64),
        local_energy=local_energy,
        conj_ref_slope=conj_ref_slope.astype(np.complex64),
        energy_slope=energy_slope,
        clip=clip,
        offset=offset,
        overlap=_overlap_tables(ref, normalised, slopes, max_shift) if wants_overlap else None,
        weighting=(
            _noise_weighting(noise, raw, clip, normalised)
            if weights and wants_overlap and offset is None and weighting_applies(shape)
            else None
        ),
    )


# The noise-weighted step: the frames' noise variance is smoothed by a Gaussian of this
# many pixels (the step's sums are interpolated between whole-pixel shifts, which needs
# smooth weights; smoothing by 2 px kept the whole gain on the accuracy benchmark), and
# its instruments are limited to this band (cycles per pixel), where nearly all of a
# microscope image's slope lies: each frame's sums against them read an eighth of its
# spectrum.
_WEIGHT_SMOOTHING = 2.0
_WEIGHT_BAND = 0.25


def _noise_weighting(noise, reference, clip, normalised):
    """:attr:`ReferencePlan.weighting` for frames with ``noise`` showing ``reference``
    (as given, before clipping) clipped to ``clip``, ``normalised`` being the reference
    the frames are compared with; None where equal weights do as well."""
    if noise is None or not noise.weighs(reference):
        return None
    shape, ndim = normalised.shape, normalised.ndim
    variance = ndimage.gaussian_filter(
        1.0 / noise.weights(reference, clip).astype(np.float64), _WEIGHT_SMOOTHING, mode="wrap"
    )
    weight = 1.0 / variance
    weight /= weight.mean()
    wrapped = np.pad(normalised, 2, mode="wrap")
    slopes = np.stack([_slope(wrapped, axis) for axis in range(ndim)])
    axes = tuple(range(1, ndim + 1))
    spectra = sfft.rfftn(weight * slopes, axes=axes)
    rows = np.nonzero(np.abs(sfft.fftfreq(shape[0])) <= _WEIGHT_BAND)[0]
    columns = int(_WEIGHT_BAND * shape[-1]) + 1
    band = np.zeros(spectra.shape[1:], bool)
    band[rows[:, None], np.arange(columns)] = True
    spectra *= band
    instruments = sfft.irfftn(spectra, shape, axes=axes)
    tables = _summed_area_tables([*(z * normalised for z in instruments), *instruments])
    margin = _OVERLAP_REACH + _STENCIL + _OVERLAP_GUARD
    box = functools.reduce(
        np.multiply.outer, [window_profile(n, margin, _OVERLAP_RAMP) for n in shape]
    )
    flat = instruments.reshape(ndim, -1) * box.ravel()
    jacobian = flat @ slopes.reshape(ndim, -1).T / box.sum()
    twins = np.where(np.arange(columns) == 0, 1.0, 2.0)
    return NoiseWeighting(
        rows=rows,
        columns=columns,
        instruments=(spectra[:, rows, :columns].conj() * twins).astype(np.complex64),
        tables=tables,
        jacobian=jacobian,
    )


# Gauss-Hermite nodes of the reference's expected look over the frames' noise.
_NOISE_NODES = 24


def _expected(reference, clip, offset, noise):
    """``reference`` clipped and stabilised, on average over a frame's noise (Gaussian,
    of the variance ``noise`` gives at each pixel; none if ``noise`` is None)."""

    def conditioned(values):
        values = values if clip is None else np.clip(values, *clip)
        return values if offset is None else _stabilised(values, offset)

    if noise is None:
        return conditioned(reference)
    sigma = np.sqrt(np.maximum(noise.gain * reference + noise.floor, 0.0))
    nodes, weights = np.polynomial.hermite_e.hermegauss(_NOISE_NODES)
    weights = weights / weights.sum()
    return sum(w * conditioned(reference + x * sigma) for x, w in zip(nodes, weights, strict=True))


def _stabilised(values, offset, out=None):
    """``sqrt(max(values + offset, 0))`` (into ``out`` if given)."""
    out = np.add(values, offset, out=out, dtype=out.dtype if out is not None else None)
    np.maximum(out, 0, out=out)
    return np.sqrt(out, out=out)


def _conditioned(frame, plan, out):
    """``frame`` clipped to ``plan.clip`` and stabilised by ``plan.offset``, into
    ``out`` (float32); ``frame`` itself if the plan does neither."""
    if plan.clip is None and plan.offset is None:
        return frame
    if plan.clip is not None:
        frame = np.clip(frame, *plan.clip, out=out)
    if plan.offset is not None:
        frame = _stabilised(frame, plan.offset, out=out)
    return frame


def search_range(shape: tuple[int, ...], max_shift=None) -> tuple[int, ...]:
    """The largest shift searched per axis by a plan of frames of ``shape``.

    Parameters
    ----------
    shape : tuple of int
    max_shift : int or tuple of int, optional
        As in :func:`prepare_reference` (default: :func:`default_max_shift`).

    Returns
    -------
    tuple of int
        Whole pixels, at most ``(n - 1) // 2``: searching ``-h..h`` must not visit a
        shift twice.
    """
    max_shift = _per_axis(max_shift, default_max_shift(shape), shape)
    return tuple(
        min(int(math.ceil(m)), (n - 1) // 2) for m, n in zip(max_shift, shape, strict=True)
    )


def _per_axis(value, default, shape):
    """``value`` (checked at the boundary: :func:`xreg.validate.max_shift`) per axis."""
    if value is None:
        return default
    return tuple(np.broadcast_to(np.asarray(value, dtype=float), (len(shape),)).tolist())


def _derivative_spectra(spectrum, shape):
    """Spectra of the band-limited derivative along each spatial axis of the items
    whose half spectra ``spectrum`` holds (the Nyquist bin, a cosine, has slope 0 at
    whole pixels): a list of ndim arrays shaped like ``spectrum``."""
    ndim = len(shape)
    out = []
    for axis, size in enumerate(shape):
        if axis == ndim - 1:
            freqs = np.arange(spectrum.shape[-1]).astype(float)
        else:
            freqs = sfft.fftfreq(size, 1 / size)
        if size % 2 == 0:
            freqs[size // 2] = 0.0
        factor = (2j * np.pi * freqs / size).reshape((-1,) + (1,) * (ndim - axis - 1))
        out.append(spectrum * factor)
    return out


def _local_energy(weight_spectrum, weight_sum, conj_ref, conj_ref_sq, conj_ref_slope, shape, half):
    """Weighted variance of the reference under the window shifted by each s, and its
    exact gradient in s.

    ``E(s) = sum_x w(x) r(x - s)^2 - (sum_x w(x) r(x - s))^2 / sum w``, for |s| <= half;
    the gradient along axis a is ``-2 sum_x w r D_a r (x - s) + 2 (sum_x w r(x - s))
    (sum_x w D_a r(x - s)) / sum w`` with ``D_a r`` the band-limited derivative, and
    ``conj_ref_slope`` (…, ndim, *spectrum) the conjugate spectra of ``r D_a r``.  The
    gradient at whole pixels is what keeps whole-pixel motion exact under the
    continuous refinement (an interpolated gradient is off by about 1 %).
    ``weight_spectrum`` and ``weight_sum`` may carry a leading batch axis (per-frame
    masks).  Returns the energy (…, *window) and the gradient (…, ndim, *window).
    """
    second = _correlate_window(weight_spectrum * conj_ref_sq, shape, half)
    first = _correlate_window(weight_spectrum * conj_ref, shape, half)
    weight_sum = np.maximum(weight_sum, _TINY)
    # An item with no valid pixel has weight_sum 0: energy 0, not 0 / 0.
    energy = np.maximum(second - first**2 / weight_sum, 0.0)
    slopes = []
    ndim = len(shape)
    derivatives = _derivative_spectra(conj_ref.conj(), shape)
    for axis in range(ndim):
        pair = _correlate_window(
            weight_spectrum * np.take(conj_ref_slope, axis, axis=-ndim - 1), shape, half
        )
        mean_slope = _correlate_window(weight_spectrum * derivatives[axis].conj(), shape, half)
        slopes.append(-2 * pair + 2 * first * mean_slope / weight_sum)
    return energy, np.stack(slopes, axis=-ndim - 1)


def _batches(n, frame_size, workers=1):
    """Slices of about _TARGET_BATCH_PIXELS each, of equal size (no small remainder),
    as many as a multiple of ``workers`` (so that no thread waits alone on the last)."""
    count = math.ceil(n * max(frame_size, 1) / _TARGET_BATCH_PIXELS)
    count = min(n, math.ceil(count / workers) * workers)
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


def estimate_shifts(
    frames: np.ndarray,
    plan: ReferencePlan,
    *,
    upsample_factor: int = 10,
    workers: int | None = None,
) -> np.ndarray:
    """Displacement and quality of each frame relative to the planned reference.

    Parameters
    ----------
    frames : numpy.ndarray
        Shape ``(n, *plan.shape)``, any real numeric dtype; with a plan from
        :func:`stack_plans` of ``p`` references, ``(n, p, *plan.shape)``: item ``i``
        of each frame is compared with reference ``i``.  Pixels that are NaN are
        left out of the comparison (the frame's window is zero there).
    plan : ReferencePlan
        From :func:`prepare_reference` or :func:`stack_plans`.
    upsample_factor : int, default 10
        ``1`` gives integer shifts.  Any larger value gives a continuous subpixel
        estimate: Newton steps on the normalised score, evaluated with its first and
        second derivatives from the cross-power spectrum, so noise, not a grid, sets
        the error.  The value only sets the lattice (``1 / upsample_factor`` pixel)
        of the fallback search used where the score is not concave near its peak;
        it is kept for compatibility.
    workers : int, optional
        Threads over batches of frames; default: all cores.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(n, ndim + 1)`` (``(n, p, ndim + 1)`` for a stacked
        plan): the displacement per axis, then the quality (the normalised
        correlation at the peak, 0..1).  Constant or empty frames get displacement
        0 and quality 0.

    Notes
    -----
    A frame equal to ``scipy.ndimage.shift(reference, d)`` gets displacement
    ``d`` (the opposite sign of ``skimage.registration.phase_cross_correlation``).

    References
    ----------
    .. [1] M. Guizar-Sicairos, S. T. Thurman and J. R. Fienup, "Efficient subpixel
       image registration algorithms", Opt. Lett. 33, 156-158 (2008),
       :doi:`10.1364/OL.33.000156`.
    """
    frames = np.asarray(frames)
    item_shape = ((plan.stacked,) if plan.stacked else ()) + plan.shape
    if frames.shape[1:] != item_shape:
        raise XregError(
            f"Frames of shape {frames.shape[1:]} do not match the reference's {item_shape}."
        )
    upsample_factor = int(upsample_factor)  # 1..MAX_UPSAMPLE_FACTOR, checked at the boundary
    if plan.residual is not None and upsample_factor > 1:
        return _estimate_whole_frame(frames, plan, upsample_factor, workers)
    items = frames if plan.stacked else frames[:, None]
    out = np.zeros(items.shape[:2] + (plan.ndim + 1,))
    workers = _workers(workers)
    batches = _batches(len(items), int(np.prod(items.shape[1:])), workers)

    steps = []  # the weighted steps' work, (batch, frames, arguments) per batch

    def run(batch):
        if plan.overlap is not None and upsample_factor > 1:
            out[batch, 0] = _estimate_overlap(
                items[batch, 0], plan, upsample_factor, lambda *step: steps.append((batch, *step))
            )
        else:
            out[batch] = _estimate_batch(items[batch], plan, upsample_factor)

    # The weighted steps run after the threads, not in them: they are many small array
    # operations, which hold the interpreter's lock and, among the threads' transforms,
    # cost several times their own time.  A few batches a thread at a time, so that the
    # bands they hold stay a bounded share of the frames; without them, all at once.
    group = _STEP_GROUP * workers if plan.weighting is not None else max(len(batches), 1)
    for first in range(0, len(batches), group):
        map_threads(run, batches[first : first + group], workers)
        if steps:
            with _one_blas_thread():
                for batch, frames, guess, arguments in steps:
                    out[batch, 0][frames, : plan.ndim] = guess + _weighted_step(*arguments, plan)
            steps.clear()
    if plan.stacked:
        # Piecewise blocks search around the rigid shift within a range of their own,
        # not the user's max_shift: not clipped to it.
        return out
    # Nothing beyond max_shift is reported: the binned search that sizes each frame's
    # window, and the subpixel walk from a peak on the search's edge, can reach past
    # it when the motion does.
    shifts = out[:, 0, : plan.ndim]
    limit = np.asarray(plan.max_shift, dtype=np.float64)
    np.clip(shifts, -limit, limit, out=shifts)
    return out[:, 0]


def prepare_whole_frame(
    reference: np.ndarray, *, clip=None, offset=None, noise=None
) -> ReferencePlan:
    """A plan that correlates whole frames circularly over every shift (thunder's
    CrossCorr), with a windowed plan for the subpixel step.

    The circular correlation finds each frame's whole-pixel shift anywhere in the
    frame, but content wrapped around the border biases its peak's shape, so the
    subpixel part is estimated afresh: the frame is moved back by its whole pixels,
    the band that wrapped is left out (NaN), and the windowed estimator (search
    range 2 px) measures what remains.  Whole-pixel motion stays exact.

    Parameters
    ----------
    reference : numpy.ndarray
    clip, offset, noise : optional
        As in :func:`prepare_reference`.

    Returns
    -------
    ReferencePlan
    """
    circular = prepare_reference(
        reference,
        max_shift=np.shape(reference),
        margin=0,
        clip=clip,
        overlap=False,
        offset=offset,
        noise=noise,
    )
    residual = prepare_reference(
        reference, max_shift=_RESIDUAL_SHIFT, clip=clip, overlap=False, offset=offset, noise=noise
    )
    return replace(circular, residual=residual)


# Search range of the windowed step after the whole-frame circular one: the circular
# peak can be a pixel off when wrapped content pulls it.
_RESIDUAL_SHIFT = 2


def _estimate_whole_frame(frames, plan, upsample_factor, workers):
    """Whole pixels from the circular plan, the rest from ``plan.residual``."""
    ndim = plan.ndim
    coarse = estimate_shifts(
        frames, replace(plan, residual=None), upsample_factor=1, workers=workers
    )
    whole = coarse[:, :ndim].astype(np.int64)
    back = np.empty(frames.shape, np.float32)
    for i, (frame, shift) in enumerate(zip(frames, whole, strict=True)):
        # frame[p] shows reference[p - shift]: rolled back, the band that wrapped is NaN.
        rolled = np.roll(frame, tuple(-shift), axis=tuple(range(ndim)))
        back[i] = rolled
        for axis, k in enumerate(shift):
            band = [slice(None)] * ndim
            band[axis] = slice(plan.shape[axis] - k, None) if k > 0 else slice(0, -k)
            if k:
                back[i][tuple(band)] = np.nan
    fine = estimate_shifts(back, plan.residual, upsample_factor=upsample_factor, workers=workers)
    size = np.asarray(plan.shape)
    fine[:, :ndim] = (fine[:, :ndim] + whole + size / 2) % size - size / 2
    constant = coarse[:, ndim] == 0  # constant frames: displacement 0, quality 0
    fine[constant] = 0.0
    return fine


def map_threads(function, items, workers: int | None = None) -> None:
    """Call ``function`` on each item, on ``workers`` threads (default: all cores).

    Parameters
    ----------
    function : callable
        Called for its effect; what it returns is dropped.
    items : sequence
    workers : int, optional
    """
    workers = _workers(workers)
    # One BLAS thread always: our threads already use every core (BLAS threads on top
    # only contend), and a threaded matrix product sums in another order, so the
    # subpixel result would depend on ``workers`` in its last bits.
    with _one_blas_thread():
        if workers == 1 or len(items) <= 1:
            for item in items:
                function(item)
            return
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(function, items))


def _workers(workers):
    """Threads to use: ``workers``, or all cores if None."""
    return (os.cpu_count() or 1) if workers is None else max(1, int(workers))


_BLAS = []  # the ThreadpoolController, made once (it costs ms; using it costs us)


def _one_blas_thread():
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _estimate_batch(frames, plan, upsample_factor):
    """``frames`` is (m, p, *shape): p items per frame, item i against reference i
    (p = 1 for a plan of one reference).  Returns (m, p, ndim + 1)."""
    ndim = plan.ndim
    m, count = frames.shape[:2]
    axes = tuple(range(2, ndim + 2))
    expand = (-1,) + (1,) * ndim

    # The plan's arrays with a leading axis over references (of length 1 when shared).
    def per_reference(array):
        array = np.asarray(array)
        return array if plan.stacked else array[None]

    conj_ref = per_reference(plan.conj_ref)
    weight = per_reference(plan.weight)[None]
    weight_sum = np.broadcast_to(per_reference(plan.weight_sum), (m, count)).astype(np.float64)
    frames = frames.astype(np.float32, copy=False)
    # A NaN or inf anywhere makes the item's sum non-finite: the cheap test.
    masked = ~np.isfinite(frames.reshape(m, count, -1).sum(axis=2))
    if masked.any():
        # Invalid pixels are left out: zero, and zero weight.  Where the window is
        # already zero there (a block cut across the frame's border by less than its
        # margin) nothing else changes and the item keeps the plan's energy maps;
        # only the others get their own window (and energy maps, below).
        rows, cols = np.nonzero(masked)
        sub = frames[rows, cols]
        finite = np.isfinite(sub)
        item_weight = weight[0, cols % weight.shape[1]]
        hits = (np.where(finite, np.float32(0), item_weight) > 0).reshape(len(rows), -1).any(1)
        frames = frames.copy()
        frames[rows, cols] = np.where(finite, sub, np.float32(0))
        masked = np.zeros_like(masked)
        masked[rows[hits], cols[hits]] = True
        if hits.any():
            weight = np.broadcast_to(weight, (m, count) + plan.shape).copy()
            weight[rows, cols] = np.where(finite, item_weight, np.float32(0))
            weight_sum = weight.sum(axis=axes, dtype=np.float64)
    # centred = w * (f - mean_w(f)), and its energy sum w (f - mean)^2 from the
    # deviations themselves (sum centred * f would equal it in exact arithmetic, but
    # in float32 a large offset, 1e6 over a contrast of 100, swamps it).  Frame by frame
    # and in place: whole-batch temporaries cost more than the FFT.
    centred = np.empty(frames.shape, np.float32)
    clipped = np.empty(frames.shape[1:], np.float32)
    deviation = np.empty(frames.shape[1:], np.float32)
    mean = np.empty((m, count))
    frame_energy = np.empty((m, count))
    for i, frame in enumerate(frames):
        item_weight, out = weight[i if len(weight) > 1 else 0], centred[i]
        frame = _conditioned(frame, plan, clipped)
        np.multiply(frame, item_weight, out=out)
        mean[i] = out.reshape(count, -1).sum(axis=1, dtype=np.float64)
        mean[i] /= np.maximum(weight_sum[i], _TINY)
        np.subtract(frame, mean[i].astype(np.float32).reshape(expand), out=deviation)
        np.multiply(deviation, item_weight, out=out)
        frame_energy[i] = np.einsum(
            "ij,ij->i", out.reshape(count, -1), deviation.reshape(count, -1)
        )

    cross = sfft.rfftn(centred, axes=axes, workers=1)
    cross *= conj_ref
    half = plan.max_shift
    numerator = _correlate_window(cross, plan.shape, half)

    energy = per_reference(plan.local_energy)[None]
    slope = per_reference(plan.energy_slope)[None]
    if masked.any():
        # Items with invalid pixels need their own window, hence their own energy map.
        energy = np.broadcast_to(energy, (m, count) + energy.shape[2:]).copy()
        slope = np.broadcast_to(slope, (m, count) + slope.shape[2:]).copy()
        # Each masked item's reference (the only one, for a plan of one reference).
        which = np.nonzero(masked)[1] % len(conj_ref)
        energy[masked], slope[masked] = _local_energy(
            sfft.rfftn(weight[masked], axes=tuple(range(1, ndim + 1)), workers=1),
            weight_sum[masked].reshape(expand),
            conj_ref[which],
            per_reference(plan.conj_ref_sq)[which],
            per_reference(plan.conj_ref_slope)[which],
            plan.shape,
            tuple(h + _STENCIL for h in half),
        )

    # The energy window has _STENCIL extra pixels each side of the searched shifts.
    inner = (Ellipsis,) + (slice(_STENCIL, -_STENCIL),) * ndim
    score = numerator / np.sqrt(np.maximum(energy[inner], _TINY))
    score = score.reshape((m * count,) + score.shape[2:])
    peak_index, best = _argmax(score)
    peak = peak_index - np.asarray(half)

    around = slopes = None
    if upsample_factor > 1:
        around = _around_peaks(energy, peak_index, count)
        slopes = np.stack(
            [_around_peaks(slope[:, :, a], peak_index, count) for a in range(ndim)], axis=1
        )
    result = _finish(
        score,
        peak_index,
        peak,
        best,
        cross.reshape((m * count,) + cross.shape[2:]),
        around,
        slopes,
        (frame_energy.ravel(), weight_sum.ravel(), mean.ravel()),
        plan.shape,
        upsample_factor,
    )
    return result.reshape(m, count, ndim + 1)


def _finish(
    score,
    peak_index,
    peak,
    best,
    cross,
    around,
    slopes,
    sums,
    shape,
    upsample_factor,
    origin=0,
    evaluations=None,
):
    """Subpixel refinement from the integer peak, the quality, and the signed range.

    ``score`` (items, *grid) holds the normalised score on a grid of integer shifts,
    ``peak_index`` its maximum's index there and ``peak`` that shift in pixels;
    ``around`` and ``slopes`` the local energy and its gradient on the
    (2 * _STENCIL + 1) ** ndim shifts around the peak; ``sums`` each item's frame
    energy, window sum and mean; ``origin`` is added to the refined shifts (the
    spectra in ``cross`` are of frames moved back by it).  Returns (items, ndim + 1):
    shifts, then quality.
    """
    shifts = peak.astype(np.float64)
    if upsample_factor > 1:
        start = _parabolic_offsets(score, peak_index)
        refined, best_refined, good = _newton(
            cross, around, slopes, shifts, start, shape, evaluations
        )
        if not good.all():
            # Rare (a flat or odd-shaped peak): the lattice search, which cannot diverge.
            bad = ~good
            refined[bad], best_refined[bad] = _refine(
                cross[bad], around[bad], shifts[bad], start[bad], shape, upsample_factor
            )
        # Digits below _RESOLUTION are float32 rounding, not information: dropping
        # them makes whole-pixel motion come out as exact whole numbers.
        shifts, best = np.round(refined / _RESOLUTION) * _RESOLUTION, best_refined
    shifts = shifts + origin
    frame_energy, weight_sum, mean = sums
    quality = best / np.sqrt(np.maximum(frame_energy, _TINY))
    # Constant frames: what is left after centring is float32 rounding of the mean
    # (half a step, 6e-8 of it); a standard deviation under 1e-6 of the mean (8 float32
    # steps) is that, not contrast.  A frame of contrast 100 over an offset of 1e6 is not.
    flat_frames = frame_energy <= 1e-12 * weight_sum * (mean**2 + _TINY)
    shifts[flat_frames] = 0.0
    quality[flat_frames] = 0.0
    # Wrap to the signed range, for searches that span the whole axis.
    size = np.asarray(shape)
    shifts = (shifts + size / 2) % size - size / 2
    return np.concatenate([shifts, np.clip(quality, 0.0, 1.0)[:, None]], axis=1)


# The per-frame overlap estimate.  Frames smaller than this (per axis) keep the fixed
# window; the integer search runs on frames binned by 2 along axes at least twice this
# long, by 4 along axes at least four times this long.
_OVERLAP_MIN_SIZE = 32
# Integer shifts scored each side of the coarse guess (the search binned by up to 4 is
# within two pixels of the peak), and pixels kept between the box and the reference's
# edge, where the band-limited interpolant of a reference that is not periodic rings
# (2 px: 0.0035 px of error on noise-free frames; 8 px: 0.0015).
_OVERLAP_REACH = 3
_OVERLAP_GUARD = 8
# The box's weight rises over this many pixels from each edge (a raised cosine, as in
# :func:`window_profile`): the local energy under a hard-edged box is too rough
# between whole-pixel shifts for its interpolation (0.003 px of bias, noise-free).
_OVERLAP_RAMP = 4
# That profile as a sum of nested boxes: box j (0..ramp) is j pixels inside the
# outer one and weighs _RAMP_STEPS[j].
_RAMP_STEPS = np.diff(
    window_profile(2 * _OVERLAP_RAMP + 2, 0, _OVERLAP_RAMP)[: _OVERLAP_RAMP + 1], prepend=0.0
)


def _overlap_tables(reference, normalised, slopes, max_shift):
    """:class:`OverlapTables` of a (clipped) reference, its normalised form and the
    band-limited derivative of that along each axis."""
    images = [normalised, normalised**2, *(normalised * s for s in slopes), *slopes]
    tables = _summed_area_tables(images)
    # Binned to at least _OVERLAP_MIN_SIZE px per axis, by 4 at most.
    factor = tuple(
        4 if n >= 4 * _OVERLAP_MIN_SIZE else 2 if n >= 2 * _OVERLAP_MIN_SIZE else 1
        for n in normalised.shape
    )
    coarse = prepare_reference(
        bin_frames(reference[None], factor)[0],
        max_shift=tuple(math.ceil(m / f) for m, f in zip(max_shift, factor, strict=True)),
        overlap=False,
    )
    return OverlapTables(tables=tables, coarse=coarse, factor=factor)


def bin_frames(frames: np.ndarray, factor, workers: int = 1) -> np.ndarray:
    """Frames block-averaged by ``factor`` (one int for every frame axis, or one per
    axis), as float32, the remainder of each axis cropped.

    A displacement of ``s`` binned pixels is one of ``factor * s`` pixels of the frame.
    Strided sums, one axis at a time, accumulated in place: numpy reduces a short inner
    axis several times slower.

    Parameters
    ----------
    frames : numpy.ndarray
        Shape ``(n, *shape)``.
    factor : int or tuple of int
    workers : int, default 1
        Threads over the frames (``None``: all cores); the result does not depend on it.

    Returns
    -------
    numpy.ndarray
    """
    factors = np.broadcast_to(factor, (frames.ndim - 1,))
    if np.prod(factors) == 1:
        return frames.astype(np.float32, copy=False)
    if _workers(workers) > 1 and len(frames) > 1:
        shape = tuple(size // f for size, f in zip(frames.shape[1:], factors, strict=True))
        out = np.empty((len(frames), *shape), np.float32)
        bounds = np.linspace(0, len(frames), min(len(frames), 4 * _workers(workers)) + 1)
        bounds = bounds.round().astype(int)
        parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

        def fill(part):
            out[part] = bin_frames(frames[part], factor)

        map_threads(fill, parts, workers)
        return out
    binned = frames.astype(np.float32, copy=False)
    for axis, f in enumerate(factors, start=1):
        if f > 1:
            size = binned.shape[axis] // f
            lead = (slice(None),) * axis
            total = binned[lead + (slice(0, size * f, f),)].astype(np.float32)  # a copy
            for k in range(1, f):
                total += binned[lead + (slice(k, size * f, f),)]
            binned = total
    binned /= np.float32(np.prod(factors))  # binned is a fresh sum: divided in place
    return binned


def _summed_area_tables(images):
    """float64 summed-area tables of ``images`` (K, *shape), a zero row and column
    first: (K, *(shape + 1))."""
    images = np.asarray(images, dtype=np.float64)
    ndim = images.ndim - 1
    tables = np.zeros((len(images), *(n + 1 for n in images.shape[1:])))
    inner = tables[(slice(None),) + (slice(1, None),) * ndim]
    inner[...] = images
    for axis in range(1, ndim + 1):
        np.cumsum(inner, axis=axis, out=inner)
    return tables


def _box_faces(low, high, base, offsets, combination):
    """One axis of :func:`_box_sums`: the table indices (n, P) and their weights
    (n, P, U) that give, for each of U outputs, the sum under the ramped box
    ``[low, high)`` (n,) of a frame moved by ``base + offsets[s]`` (``base`` (n,) whole
    pixels), combined over ``s`` by ``combination`` ((S, U) or (n, S, U)).

    The ramped box is ``_RAMP_STEPS``-weighted nested boxes, box ``j`` being ``j`` px
    inside the outer one: along one axis each is a difference of two table entries, at
    its high face and its low face, and every shift and nested box only moves those.
    """
    ramp = np.arange(_OVERLAP_RAMP + 1)
    high_moves = np.arange(offsets.min(), offsets.max() + _OVERLAP_RAMP + 1)
    low_moves = np.arange(-offsets.max(), _OVERLAP_RAMP - offsets.min() + 1)
    # (moves, S): the steps of the nested boxes whose face a shift puts at each move.
    high_spread = (offsets[:, None] + ramp == high_moves[:, None, None]) @ _RAMP_STEPS
    low_spread = (ramp - offsets[:, None] == low_moves[:, None, None]) @ _RAMP_STEPS
    index = np.concatenate(
        [(high - base)[:, None] - high_moves, (low - base)[:, None] + low_moves], axis=1
    )
    weight = np.concatenate([high_spread @ combination, -(low_spread @ combination)], axis=-2)
    return index, np.broadcast_to(weight, (len(index), *weight.shape[-2:]))


def _box_sums(tables, faces):
    """Sums under ramped boxes from summed-area ``tables`` (K, *(shape + 1)) and the
    per-axis ``faces`` of :func:`_box_faces`: (K, n, U_0, ..., U_last)."""
    ndim = len(faces)
    n = len(faces[0][0])
    where = [
        index.reshape((n,) + (1,) * axis + (-1,) + (1,) * (ndim - axis - 1))
        for axis, (index, _) in enumerate(faces)
    ]
    values = tables[(slice(None), *where)]  # (K, n, P_0, ..., P_last)
    for axis, (_, weight) in enumerate(faces):
        moved = np.moveaxis(values, 2 + axis, -1)
        shape = moved.shape
        product = moved.reshape(shape[0], n, -1, shape[-1]) @ weight[None]
        values = np.moveaxis(product.reshape(shape[:-1] + (weight.shape[-1],)), -1, 2 + axis)
    return values


@functools.lru_cache(maxsize=256)
def _ramp_profile(length):
    """The ramped box's 1-D weights over ``length`` pixels (float32, shared: read only)."""
    profile = window_profile(length, 0, _OVERLAP_RAMP).astype(np.float32)
    profile.flags.writeable = False
    return profile


def _estimate_overlap(frames, plan, upsample_factor, defer_step):
    """Displacement and quality of single-reference ``frames`` (m, *shape), each
    compared over every pixel it shares with the reference.

    An integer search on binned frames gives each frame's shift to within two pixels;
    the frame is then weighted by the box of pixels whose content lies inside the
    reference at every shift within ``_OVERLAP_REACH + _STENCIL`` of that guess (less
    a guard band), the normalised score is evaluated there, and its peak refined as
    by the fixed window.  The local energy under the box and its exact gradient come
    from summed-area tables, so a per-frame window costs no extra transform.  Frames
    this cannot serve (NaN pixels, a box too small, a peak on the edge of the
    scored shifts) take the fixed window's path.  With a plan that weighs pixels by
    their noise, ``defer_step(frames, guess, arguments)`` is given the weighted step's
    work (:func:`_weighted_step`'s arguments but the plan) for the frames it replaces
    the estimate of, and their guess, to be done by the caller.
    """
    ndim, shape = plan.ndim, np.asarray(plan.shape)
    tables = plan.overlap.tables
    original = frames
    frames = frames.astype(np.float32, copy=False)
    m = len(frames)
    finite, guess = _overlap_guesses(frames, plan)
    reach = _OVERLAP_REACH + _STENCIL
    # The box keeps _OVERLAP_GUARD px inside the reference at every shift scored, and
    # reaches the frame's own edge wherever the reference lies beyond it there (the
    # frame is not interpolated: its edge needs no guard).
    margin = reach + _OVERLAP_GUARD
    low = np.maximum(guess + margin, 0)
    high = np.minimum(shape + guess - margin, shape)
    usable = finite & np.all(high - low >= _OVERLAP_MIN_SIZE // 2, axis=1)
    out = np.empty((m, ndim + 1))
    picked = np.nonzero(usable)[0]
    n = len(picked)
    if n:
        low, high, guess = low[picked], high[picked], guess[picked]
        centred, mean, frame_energy, weight_sum = _centred_boxes(
            frames, picked, low, high, guess, plan
        )
        # Frame by frame, so that each spectrum is still in cache when its band (which
        # the weighted step reads) is copied and when it is multiplied.
        cross = np.empty((n, *plan.conj_ref.shape), np.complex64)
        band = None if plan.weighting is None else _band_buffer(n, plan.weighting)
        for i in range(n):
            spectrum = sfft.rfftn(centred[i], workers=1)
            if band is not None:
                _copy_band(spectrum, plan.weighting, band[i])
            np.multiply(spectrum, plan.conj_ref, out=cross[i])
        numerator = _correlate_window(cross, plan.shape, (_OVERLAP_REACH,) * ndim)
        shifts = np.arange(-reach, reach + 1)
        sums = _box_sums(
            tables,
            [
                _box_faces(low[:, a], high[:, a], guess[:, a], shifts, np.eye(len(shifts)))
                for a in range(ndim)
            ],
        )
        count = weight_sum.reshape((n,) + (1,) * ndim)
        energy = np.maximum(sums[1] - sums[0] ** 2 / count, 0.0)
        slope = np.stack(
            [-2 * sums[2 + a] + 2 * sums[0] * sums[2 + ndim + a] / count for a in range(ndim)],
            axis=1,
        )
        inner = (Ellipsis,) + (slice(_STENCIL, -_STENCIL),) * ndim
        score = numerator / np.sqrt(np.maximum(energy[inner], _TINY))
        peak_index, best = _argmax(score)
        around = _around_peaks(energy[:, None], peak_index, 1)
        slopes = np.stack([_around_peaks(slope[:, None, a], peak_index, 1) for a in range(ndim)], 1)
        out[picked] = _finish(
            score,
            peak_index,
            peak_index - _OVERLAP_REACH,
            best,
            cross,
            around,
            slopes,
            (frame_energy, weight_sum, mean),
            plan.shape,
            upsample_factor,
            origin=guess,
            # The weighted step linearises about the estimate: one Newton step from the
            # parabola's vertex brings it close enough (its error is then second order).
            evaluations=None if plan.weighting is None else 1,
        )
        # A peak on the edge of the scored shifts: the binned guess was off.
        edge = np.any((peak_index == 0) | (peak_index == 2 * _OVERLAP_REACH), axis=1)
        usable[picked[edge]] = False
        # Not the frames with an edge peak (the fixed window's) or without contrast.
        inside = ~edge & (out[picked, ndim] > 0)
        if plan.weighting is not None and inside.any():
            start = out[picked, :ndim] - guess
            peak = peak_index - _OVERLAP_REACH
            # The unweighted fit at the estimate: the local energy and the box's sum of
            # the reference there, and the score (the quality times the frame's root
            # energy) over the root of that energy, its scale.
            kernels = list(_lagrange_weights(start - peak, _STENCIL).transpose(1, 0, 2)[..., None])
            energy = _contract(around, kernels).reshape(-1)
            level = _contract(_around_peaks(sums[0][:, None], peak_index, 1), kernels)
            score = out[picked, ndim] * np.sqrt(frame_energy)
            defer_step(
                picked[inside],
                guess[inside],
                (
                    band[inside],
                    start[inside],
                    (score / np.sqrt(np.maximum(energy, _TINY)))[inside],
                    level.reshape(-1)[inside] / weight_sum[inside],
                    (low - guess)[inside],
                    (high - guess)[inside],
                    peak[inside],
                    weight_sum[inside],
                ),
            )
    if not usable.all():
        rest = ~usable
        out[rest] = _estimate_batch(original[rest][:, None], plan, upsample_factor)[:, 0]
    return out


def _weighted_step(band, start, scale, level, low, high, whole, weight_sum, plan):
    """One step, from ``start`` (n, ndim), that weighs each pixel by its noise: what
    brings the overlap estimate close to the Cramér-Rao bound under shot noise.

    The correlation's estimate solves the unweighted least-squares fit of each frame
    by ``scale * r(p - s) + b`` over its ramped box ``B`` on ``[low, high)`` (``r`` the
    normalised reference; ``level`` the box's mean of ``r(p - s)``).  The step solves,
    to first order about it, the fit's equations with each pixel weighted by its
    noise: ``sum Z_a(p - s) e(p) = 0`` per axis, for the instruments ``Z_a`` of
    :class:`NoiseWeighting` and the residual ``e = B (f - mean) - scale * B (r(p - s) -
    level)``.  The frame's sums come from ``band`` (the instruments' band of the rfftn
    of its centred box, :func:`_copy_band`); the model's from summed-area tables,
    interpolated from the whole-pixel shifts around ``whole``.  Any instruments leave a
    frame that fits exactly where it is, so whole-pixel motion stays exact.
    Coordinates are those of the frames moved back by their guess.  A step of more than
    half a pixel, or without a positive scale, keeps ``start``.
    """
    weighting, shape = plan.weighting, plan.shape
    # sum_p f(p) Z_a(p - s): the inverse DFT of F conj(Z_a) at s, on the band.
    rows = sfft.fftfreq(shape[0])[weighting.rows]
    columns = np.arange(weighting.columns) / shape[1]
    band *= np.exp(2j * np.pi * start[:, :1] * rows).astype(np.complex64)[:, :, None]
    band *= np.exp(2j * np.pi * start[:, 1:] * columns).astype(np.complex64)[:, None, :]
    instruments = weighting.instruments.reshape(len(weighting.instruments), -1)
    frame_terms = (band.reshape(len(band), -1) @ instruments.T).real / np.prod(shape)
    model = _interpolated_box_sums(weighting.tables, low, high, whole, start - whole)
    ndim = start.shape[1]
    residual = frame_terms - scale[:, None] * (model[:, :ndim] - level[:, None] * model[:, ndim:])
    jacobian = weight_sum[:, None, None] * weighting.jacobian
    step = np.linalg.solve(jacobian, residual[:, :, None])[:, :, 0] / scale[:, None]
    good = (scale > 0) & np.all(np.abs(step) <= 0.5, axis=1)
    out = start.copy()
    out[good] = np.round((start[good] + step[good]) / _RESOLUTION) * _RESOLUTION
    return out


def _band_buffer(n, weighting):
    """An empty array for the bands of ``n`` spectra (:func:`_copy_band`)."""
    return np.empty((n, len(weighting.rows), weighting.columns), np.complex64)


def _copy_band(spectrum, weighting, out):
    """Copy the instruments' band of the half ``spectrum`` into ``out``."""
    # The band's rows are the first ones and the last ones: two slices, no copy between.
    rows, columns = weighting.rows, weighting.columns
    first = int(np.sum(rows <= rows.max() // 2))
    out[:first] = spectrum[:first, :columns]
    out[first:] = spectrum[len(spectrum) - (len(rows) - first) :, :columns]


def _interpolated_box_sums(tables, low, high, whole, offset):
    """Each image's sum under each frame's ramped box ``[low, high)`` (n, ndim) at the
    shift ``whole + offset`` (``whole`` whole pixels, ``offset`` within a pixel of it),
    Lagrange-interpolated from the whole-pixel shifts within ``_STENCIL`` of ``whole``,
    from summed-area ``tables`` (K, *(shape + 1)): (n, K)."""
    nodes = np.arange(-_STENCIL, _STENCIL + 1)
    faces = [
        _box_faces(
            low[:, a],
            high[:, a],
            whole[:, a],
            nodes,
            _lagrange_weights(offset[:, a], _STENCIL)[:, :, None],
        )
        for a in range(low.shape[1])
    ]
    return _box_sums(tables, faces).reshape(len(tables), len(low)).T


def _slope(region, axis):
    """The derivative along ``axis`` of ``region`` less its 2-px rim, by the
    fourth-order central difference, negated."""

    def at(offset):
        return region[
            tuple(
                slice(2 + offset, n - 2 + offset) if a == axis else slice(2, n - 2)
                for a, n in enumerate(region.shape)
            )
        ]

    return ((at(2) - at(-2)) - 8 * (at(1) - at(-1))) / np.float32(12)


def _overlap_guesses(frames, plan):
    """Which float32 ``frames`` are finite, and each one's displacement in whole
    pixels from the integer search on frames binned by ``plan.overlap.factor``.

    Frame by frame (clipped into one buffer, then binned) so that no copy of the
    whole batch is made: the work stays in cache.
    """
    factor = plan.overlap.factor
    finite = np.zeros(len(frames), bool)
    binned = np.zeros(
        (len(frames), *(n // f for n, f in zip(plan.shape, factor, strict=True))), np.float32
    )
    clipped = np.empty(plan.shape, np.float32)
    for i, frame in enumerate(frames):
        # A NaN or inf anywhere makes the sum non-finite (as may a float32 overflow: such
        # frames merely take the fixed window's path).
        finite[i] = np.isfinite(frame.sum())
        if finite[i]:
            binned[i] = bin_frames(_conditioned(frame, plan, clipped)[None], factor)[0]
    coarse = _estimate_batch(binned[:, None], plan.overlap.coarse, 1)[:, 0, : plan.ndim]
    return finite, np.rint(coarse * factor).astype(np.int64)


def _centred_boxes(frames, picked, low, high, guess, plan):
    """Frames ``picked`` weighted by their ramped box ``[low, high)`` and moved back by
    ``guess``: ``w * (f - mean_w(f))`` in zeros (n, *shape), with each one's weighted
    mean, energy ``sum w (f - mean) ** 2`` and weight sum.

    The box's weight is the outer product of one ramped profile per axis, so its sums
    are matrix-vector products, and it differs from 1 only in ``_OVERLAP_RAMP``-pixel
    slabs at the faces: each frame is read a few times, and no weight array is made.
    """
    n, ndim = len(picked), frames.ndim - 1
    centred = np.zeros((n, *frames.shape[1:]), np.float32)
    squares = np.empty(frames.shape[1:], np.float32)
    mean, frame_energy, weight_sum = np.empty(n), np.empty(n), np.empty(n)
    for i, index in enumerate(picked):
        box = tuple(slice(a, b) for a, b in zip(low[i], high[i], strict=True))
        profiles = [_ramp_profile(b - a) for a, b in zip(low[i], high[i], strict=True)]
        # Moved back by the guess (exact: the correlation is circular; the box never
        # wraps), every frame's peak is near zero: one small window of shifts for all.
        moved = tuple(
            slice(a - g, b - g) for a, b, g in zip(low[i], high[i], guess[i], strict=True)
        )
        item = centred[i][moved]
        if plan.clip is None and plan.offset is None:
            item[...] = frames[index][box]
        else:
            _conditioned(frames[index][box], plan, item)
        weight_sum[i] = np.prod([p.sum(dtype=np.float64) for p in profiles])
        mean[i] = _profile_sum(item, profiles) / weight_sum[i]
        item -= np.float32(mean[i])
        frame_energy[i] = _profile_sum(np.square(item, out=squares[box]), profiles)
        for axis, profile in enumerate(profiles):
            for face in (slice(None, _OVERLAP_RAMP), slice(-_OVERLAP_RAMP, None)):
                slab = (slice(None),) * axis + (face,)
                item[slab] *= profile[face].reshape((-1,) + (1,) * (ndim - axis - 1))
    return centred, mean, frame_energy, weight_sum


def _profile_sum(array, profiles):
    """``sum array * outer(*profiles)``, one axis at a time from the last (BLAS
    matrix-vector products on the strided view), in float64 at the end."""
    for profile in profiles[:0:-1]:
        array = array @ profile
    return float(np.dot(array.astype(np.float64), profiles[0]))


def _around_peaks(energy, peak_index, count):
    """Each item's local energy around its peak, (items, 2 * _STENCIL + 1, ...), from
    ``energy`` (frames or 1, references or 1, *window); items run frame-major."""
    items, ndim = peak_index.shape
    rows = np.arange(items)
    where = [rows // count if len(energy) > 1 else 0, rows % count if count > 1 else 0]
    where = [np.reshape(w, (-1,) + (1,) * ndim) for w in where]
    offsets = np.arange(2 * _STENCIL + 1)
    for axis in range(ndim):
        grid_shape = [1] * ndim
        grid_shape[axis] = -1
        where.append(peak_index[:, axis].reshape((-1,) + (1,) * ndim) + offsets.reshape(grid_shape))
    return energy[tuple(where)]


def _argmax(score):
    """Index (per axis) and value of the maximum of each frame's score."""
    flat = score.reshape(len(score), -1)
    position = flat.argmax(axis=1)
    index = np.stack(np.unravel_index(position, score.shape[1:]), axis=1)
    return index, flat[np.arange(len(flat)), position]


def _lagrange_weights(t, half):
    """Weights of the Lagrange polynomial through nodes -half..half, evaluated at t.

    ``t`` has any shape; the weights get a trailing axis of length ``2 * half + 1``.
    """
    nodes = np.arange(-half, half + 1)
    weights = np.ones(np.shape(t) + (len(nodes),))
    for j, node in enumerate(nodes):
        for other in nodes[nodes != node]:
            weights[..., j] *= (t - other) / (node - other)
    return weights


def _contract(values, kernels):
    """Contract axis ``a + 1`` of ``values`` (n, ...) with ``kernels[a]`` (n, size, U)."""
    n = len(values)
    for axis in reversed(range(len(kernels))):
        moved = np.moveaxis(values, axis + 1, -1)
        kernel = kernels[axis].reshape((n,) + (1,) * (moved.ndim - 3) + kernels[axis].shape[1:])
        values = np.moveaxis(moved @ kernel, -1, axis + 1)
    return values


def _axis_frequencies(half_length, size, last):
    """The integer frequencies of one axis of a half (rfftn) spectrum, and their weights.

    Along the last axis (``last``) the half spectrum stands for its conjugate twin too,
    so each bin counts twice but 0 and Nyquist; the other axes hold every frequency once.
    """
    if last:
        freqs = np.arange(half_length)
        return freqs, np.where((freqs == 0) | (2 * freqs == size), 1.0, 2.0)
    return np.fft.fftfreq(size, 1 / size).astype(np.int64), np.ones(size)


def _dft_at(spectrum, shape, origin, grid):
    """Inverse DFT of each item's half spectrum at ``origin + grid`` per axis.

    ``spectrum`` is (n, *half_spectrum), ``origin`` (n, ndim) in pixels, ``grid``
    (U,) offsets shared by all items; returns the real part, (n, U, ..., U).  The
    phase factorises into a ramp per item (n, size) and a kernel shared by all items
    (size, U), so each axis costs one elementwise product and one matrix product
    over all items together (not one small product per item).
    """
    n = len(spectrum)
    values = spectrum
    for axis in reversed(range(len(shape))):
        size = shape[axis]
        freqs, weights = _axis_frequencies(spectrum.shape[-1], size, axis == len(shape) - 1)
        ramp = (weights * np.exp(2j * np.pi * freqs * origin[:, axis, None] / size)).astype(
            np.complex64
        )
        shared = np.exp(2j * np.pi * freqs[:, None] * grid / size).astype(np.complex64)
        moved = np.moveaxis(values, axis + 1, -1)
        ramped = np.empty(moved.shape, np.complex64)
        np.multiply(moved, ramp.reshape((n,) + (1,) * (moved.ndim - 2) + (-1,)), out=ramped)
        product = ramped.reshape(-1, len(freqs)) @ shared
        values = np.moveaxis(product.reshape(moved.shape[:-1] + (len(grid),)), -1, axis + 1)
    return values.real / np.prod(shape)


def _parabolic_offsets(score, peak_index):
    """Per-axis vertex of the parabola through the score at the integer peak and its
    two neighbours: a first subpixel guess, within half a pixel of the peak."""
    n, ndim = peak_index.shape
    items = np.arange(n)
    middle = score[(items, *peak_index.T)]
    offsets = np.zeros((n, ndim))
    for axis in range(ndim):
        size = score.shape[axis + 1]
        lower, upper = peak_index.copy(), peak_index.copy()
        lower[:, axis] = np.maximum(lower[:, axis] - 1, 0)
        upper[:, axis] = np.minimum(upper[:, axis] + 1, size - 1)
        before, after = score[(items, *lower.T)], score[(items, *upper.T)]
        curvature = before - 2 * middle + after
        inside = (peak_index[:, axis] > 0) & (peak_index[:, axis] < size - 1) & (curvature < 0)
        vertex = 0.5 * (before - after) / np.where(inside, curvature, -1.0)
        offsets[:, axis] = np.where(inside, np.clip(vertex, -0.5, 0.5), 0.0)
    return offsets


def _refine(cross, local_energy, peak, start, shape, upsample_factor):
    """Subpixel peak of the normalised correlation, to 1/upsample_factor pixel.

    The numerator is evaluated by a matrix-multiply DFT of the cross-power spectrum
    on a small grid around the peak (Guizar-Sicairos et al. 2008): a grid of
    (2 * _REFINE_REACH + 1) points per axis around ``start`` (a first guess, in
    pixels from the integer ``peak``), at about 0.1 px spacing, then _REFINE_RATIO
    times finer until it is 1/upsample_factor.  Where the best point of an item is
    on the edge of its grid, the grid moves there and is evaluated again, so each
    item ends at a local maximum on the 1/upsample_factor lattice (within a pixel
    of the integer peak), or after _REFINE_MOVES moves per stage at most: the stages
    are at most ``log4(upsample_factor / 10) + 2``, so the work is bounded.  The
    local energy is smooth, so it is interpolated between integer shifts from
    ``local_energy`` (the (2 * _STENCIL + 1)**ndim neighbourhood of the peak) by
    Lagrange weights.
    """
    n, ndim = peak.shape
    centre = np.rint(start * upsample_factor).astype(np.int64)  # in 1/upsample_factor units
    best = np.zeros(n)
    step = max(1, upsample_factor // 10)
    while True:
        grid_units = np.arange(-_REFINE_REACH, _REFINE_REACH + 1) * step
        grid = grid_units / upsample_factor
        todo = slice(None)  # every item at first, then those whose grid moves
        for _ in range(_REFINE_MOVES):
            if not centre[todo].size:
                break
            origin = peak[todo] + centre[todo] / upsample_factor
            numerator = _dft_at(cross[todo], shape, origin, grid)
            offsets = (centre[todo] / upsample_factor)[:, :, None] + grid  # (items, ndim, U)
            lagrange = _lagrange_weights(offsets, _STENCIL).transpose(1, 0, 3, 2)
            energy = _contract(local_energy[todo], list(lagrange))
            index, best[todo] = _argmax(numerator / np.sqrt(np.maximum(energy, _TINY)))
            centre[todo] += grid_units[index]
            on_edge = ((index == 0) | (index == len(grid) - 1)).any(axis=1)
            near = (np.abs(centre[todo]) < upsample_factor).all(axis=1)
            todo = np.arange(n)[todo][on_edge & near]
        if step == 1:
            return peak + centre / upsample_factor, best
        step = max(1, step // _REFINE_RATIO)


# Newton refinement: at most this many evaluations of the score and its derivatives;
# it stops once a step is below _NEWTON_TOL px (the error left after that step is far
# below the noise), and a step longer than _NEWTON_MAX_STEP px or a score that is not
# concave sends the item to the lattice search instead.
_NEWTON_EVALUATIONS = 4
_NEWTON_TOL = 0.001
_NEWTON_MAX_STEP = 0.75
# The continuous estimate is rounded to this (px): the float32 spectra leave about
# 1e-7 px of rounding in it, and the noise limit of real frames is above 1e-3 px.
_RESOLUTION = 1e-4


def _derivative_orders(ndim):
    """Index tuples into a (3,) * ndim table of derivative orders: value, gradient
    (ndim,), Hessian (ndim, ndim)."""
    unit = np.eye(ndim, dtype=int)
    gradient = [tuple(u) for u in unit]
    hessian = [[tuple(unit[a] + unit[b]) for b in range(ndim)] for a in range(ndim)]
    return (0,) * ndim, gradient, hessian


def _pad_orders(table):
    """A (n, 2, ..., 2) table of orders 0..1 per axis as (n, 3, ..., 3), zeros for 2."""
    padded = np.zeros((len(table),) + (3,) * (table.ndim - 1), table.dtype)
    padded[(slice(None),) + (slice(0, 2),) * (table.ndim - 1)] = table
    return padded


def _split_orders(table):
    """(n, 3, ..., 3) table of mixed partial derivatives -> value, gradient, Hessian."""
    n, ndim = len(table), table.ndim - 1
    value_at, gradient_at, hessian_at = _derivative_orders(ndim)
    value = table[(slice(None), *value_at)]
    gradient = np.stack([table[(slice(None), *g)] for g in gradient_at], axis=1)
    hessian = np.stack(
        [np.stack([table[(slice(None), *h)] for h in row], axis=1) for row in hessian_at], axis=1
    )
    return value, gradient.reshape(n, ndim), hessian.reshape(n, ndim, ndim)


def _dft_derivatives(spectrum, shape, point, orders=3):
    """Inverse DFT of each item's half spectrum, and its first and second derivatives,
    at the continuous position ``point`` (n, ndim) in pixels.

    Returns the real (n, orders, ..., orders) table of mixed partial derivatives
    (order 0 to ``orders - 1`` per axis).  Each axis is one batched matrix product
    with a kernel per item: the phase ramp times the derivative factors
    ``(2 pi i k / size) ** order``.  The Nyquist bin of an even axis counts half at
    ``+size / 2`` and half at ``-size / 2`` (a cosine), so the interpolant is the
    real, symmetric one: its slope at whole pixels is that of the correlation with
    the band-limited reference, which whole-pixel exactness needs.
    """
    n = len(spectrum)
    values = spectrum
    for axis in reversed(range(len(shape))):
        size = shape[axis]
        freqs, weights = _axis_frequencies(spectrum.shape[-1], size, axis == len(shape) - 1)
        kernel = _ramp_kernel(weights, freqs, size, point[:, axis], orders)
        if size % 2 == 0:
            nyquist = size // 2
            twin = _ramp_kernel(
                weights[nyquist : nyquist + 1],
                -freqs[nyquist : nyquist + 1],
                size,
                point[:, axis],
                orders,
            )
            kernel[:, nyquist] = 0.5 * (kernel[:, nyquist] + twin[:, 0])
        moved = np.moveaxis(values, axis + 1, -1)
        product = moved.reshape(n, -1, len(freqs)) @ kernel.astype(np.complex64)
        values = np.moveaxis(product.reshape(moved.shape[:-1] + (orders,)), -1, axis + 1)
    return values.real.astype(np.float64) / np.prod(shape)


def _ramp_kernel(weights, freqs, size, position, orders):
    """(n, len(freqs), orders): ``weights * exp(i w x) * (i w) ** order``, with
    ``w = 2 pi freqs / size`` for whole-number ``freqs``.  The phase factors are
    powers of one per item, by a running product (no transcendental per entry: this
    was the refinement's largest cost on small blocks)."""
    steps = np.abs(freqs).astype(np.int64)
    base = np.exp(2j * np.pi * position / size)
    powers = np.ones((len(position), steps.max() + 1), np.complex128)
    if steps.max():
        np.cumprod(np.repeat(base[:, None], steps.max(), axis=1), axis=1, out=powers[:, 1:])
    ramp = powers[:, steps]
    ramp = np.where(freqs < 0, ramp.conj(), ramp) * weights
    omega = 2 * np.pi * freqs / size
    factors = np.stack([np.ones_like(omega), 1j * omega, -(omega**2)], axis=1)[:, :orders]
    return ramp[:, :, None] * factors


@functools.lru_cache(maxsize=8)
def _lagrange_coefficients(half):
    """Column j: the monomial coefficients of the Lagrange basis polynomial of node j
    of -half..half (read only: shared)."""
    nodes = np.arange(-half, half + 1)
    coefficients = np.linalg.inv(np.vander(nodes, increasing=True).astype(float))
    coefficients.flags.writeable = False
    return coefficients


def _lagrange_derivatives(t, half):
    """Lagrange weights through nodes -half..half and their first and second
    derivatives at ``t`` (n,): shape (n, 2 * half + 1, 3)."""
    coefficients = _lagrange_coefficients(half)
    powers = np.arange(2 * half + 1)
    t = np.asarray(t, dtype=float)[:, None]
    monomials = np.stack(
        [
            t**powers,
            powers * t ** np.maximum(powers - 1, 0),
            powers * (powers - 1) * t ** np.maximum(powers - 2, 0),
        ],
        axis=-1,
    )  # (n, degree + 1, 3)
    return np.einsum("mj,nmd->njd", coefficients, monomials)


def _score_derivatives(cross, local_energy, energy_slope, peak, offset, shape, second=True):
    """The normalised score ``N / sqrt(E)`` at ``peak + offset``, its gradient and
    (if ``second``, else None) Hessian: N from the cross-power spectrum; E from the
    local energy around the integer peak and its gradient from the exact gradient
    there (``energy_slope``, (n, ndim, ...)), each interpolated by Lagrange weights
    (as in :func:`_refine`)."""
    n, ndim = offset.shape
    table = _dft_derivatives(cross, shape, peak + offset, 3 if second else 2)
    value, gradient, hessian = _split_orders(table if second else _pad_orders(table))
    kernels = [_lagrange_derivatives(offset[:, a], _STENCIL) for a in range(ndim)]
    e = _contract(local_energy, [k[:, :, :1] for k in kernels]).reshape(n)
    e_gradient = np.empty((n, ndim))
    e_hessian = np.empty((n, ndim, ndim))
    for a in range(ndim):
        # The gradient's component a, interpolated, and its slope along each axis b.
        table = _contract(energy_slope[:, a], [k[:, :, :2] for k in kernels])
        e_gradient[:, a], e_hessian[:, a], _ = _split_orders(_pad_orders(table))
    e_hessian = 0.5 * (e_hessian + e_hessian.transpose(0, 2, 1))
    e = np.maximum(e, _TINY)
    root = np.sqrt(e)
    score = value / root
    # d(N e^-1/2) and d2(N e^-1/2), by the product and chain rules.
    score_gradient = gradient / root[:, None] - 0.5 * (value / (e * root))[:, None] * e_gradient
    if not second:
        return score, score_gradient, None
    outer = gradient[:, :, None] * e_gradient[:, None, :]
    score_hessian = (
        hessian / root[:, None, None]
        - 0.5 * (outer + outer.transpose(0, 2, 1)) / (e * root)[:, None, None]
        - 0.5 * (value / (e * root))[:, None, None] * e_hessian
        + 0.75
        * (value / (e * e * root))[:, None, None]
        * e_gradient[:, :, None]
        * e_gradient[:, None, :]
    )
    return score, score_gradient, score_hessian


def _newton(cross, local_energy, energy_slope, peak, start, shape, evaluations=None):
    """Continuous subpixel peak of the normalised score by Newton steps from ``start``.

    The first evaluation gives the score's gradient and Hessian; later ones only the
    gradient (two thirds of the cost), stepping with the first Hessian (a chord
    method: from within a few hundredths of a pixel it converges as fast as Newton).
    Returns the shifts, the score and a mask of the items that converged inside the
    pixel around their integer peak with a concave score; the rest are for
    :func:`_refine`'s lattice search.  With ``evaluations`` (fewer than
    ``_NEWTON_EVALUATIONS``), the steps stop there and count as converged: for a caller
    that takes a step of its own from them.
    """
    n, ndim = peak.shape
    offset = start.astype(np.float64).copy()
    best = np.zeros(n)
    good = np.ones(n, bool)
    todo = np.arange(n)
    hessian = None
    for _ in range(evaluations or _NEWTON_EVALUATIONS):
        if not todo.size:
            break
        every = todo.size == n  # then no copy of the spectra
        pick = slice(None) if every else todo
        score, gradient, curvature = _score_derivatives(
            cross[pick],
            local_energy[pick],
            energy_slope[pick],
            peak[pick],
            offset[pick],
            shape,
            second=hessian is None,
        )
        if hessian is None:
            concave = np.all(np.linalg.eigvalsh(curvature) < 0, axis=1)
            good &= concave
            hessian = np.where(concave[:, None, None], curvature, -np.eye(ndim))
        best[todo] = score
        step = -np.linalg.solve(hessian[todo], gradient[:, :, None])[:, :, 0]
        size = np.abs(step).max(axis=1)
        good[todo] &= size <= _NEWTON_MAX_STEP
        offset[todo] += np.where(good[todo, None], step, 0.0)
        todo = todo[good[todo] & (size >= _NEWTON_TOL)]
    good &= np.all(np.abs(offset) < 1, axis=1)
    if evaluations is None:
        good[todo] = False  # not converged within the evaluations allowed
    return peak + offset, best, good
