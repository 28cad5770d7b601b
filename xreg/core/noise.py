"""The movie's noise, measured from its frames, for the estimate's noise weighting.

Photon-counting detectors give Poisson-Gaussian noise: ``var(x) = gain * x + floor``
in the data's own units (an offset and a gain the user need not know).  The
variance-stabilising transform for it (Anscombe's, generalised) is, up to a scale
that does not move the correlation peak, ``sqrt(x + offset)`` with one number,
``offset = floor / gain + 3 gain / 8``: comparing transformed frames with the
transformed reference weights each pixel by its noise (bright pixels, noisier, weigh
less), which brings the estimate closer to the Cramér-Rao bound under shot noise.
Without shot noise (``gain`` about 0) the transform is the identity: equal weights.

The same model says what the intensity clip costs (:meth:`NoiseModel.information_kept`)
and moves its bounds out of the noise where that cost is large
(:meth:`NoiseModel.spare_noise`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

__all__ = ["NoiseModel", "fit_noise", "noise_sample_size"]

# Frames the model is fitted on: the movie's first ones (so the fit, made once per
# movie, does not depend on its chunking); 8 frames of 64 x 64 already hold 8192 2x2
# blocks.
noise_sample_size = 8
# Intensity bins of the fit (equal counts); within each, detail coefficients beyond
# _TRIM times the bin's mean square (edges of the scene, not noise) are dropped.
_BINS = 16
_MAX_BLOCKS = 2**17
_TRIM = 16.0
# The transform is used only where it changes the weights by more than this ratio
# between the reference's darkest and brightest (1st and 99th percentile) pixels.
_MIN_WEIGHT_RATIO = 1.1
# Clipping at the percentiles may cost the estimate at most this share of the
# information the frames hold on the motion (DECISIONS: "The clip spares the noise").
# Up to it the clip tames calcium transients at a small price; beyond it (its bounds
# lie inside the noise of photon-starved frames) it mostly cuts noise.
_MAX_CLIP_LOSS = 0.1
# Pixels the clip's cost is measured on (every few of the reference's): enough for a
# share, cheap (10 ms at 512 x 512, once per plan).
_MAX_PIXELS = 2**15
# Noise below this fraction of the reference's spread (1st to 99th percentile) at its
# median is not weighted: it barely moves the estimate, and what the fit measures there
# may be the scene's own fine detail, not noise.
_MIN_NOISE = 0.01
# Noise weights (``1 / variance``) differ by at most this factor: a fitted variance near
# 0 at the darkest pixels is the fit's error, not noise-free pixels.
_MAX_WEIGHT_SPREAD = 100.0
_TINY_VARIANCE = 1e-30
# Pixels are weighted by their noise where that brings the estimate's RMS error down by
# at least this factor, to first order.
_MIN_WEIGHTING_GAIN = 1.02
# Intensities at which the clipped noise's variance is tabulated for the weights.
_WEIGHT_LEVELS = 4096


class NoiseModel(tuple):
    """``(gain, floor)``: the noise variance at intensity ``x`` is ``gain * x + floor``."""

    __slots__ = ()

    def __new__(cls, gain: float, floor: float):
        return super().__new__(cls, (float(gain), float(floor)))

    @property
    def gain(self) -> float:
        return self[0]

    @property
    def floor(self) -> float:
        return self[1]

    def std(self, intensity: float) -> float:
        """The noise standard deviation at ``intensity`` (0 where the model is negative)."""
        return float(np.sqrt(max(self.gain * intensity + self.floor, 0.0)))

    def offset(self, reference: np.ndarray, bounds=None) -> float | None:
        """The stabilising transform's ``offset`` for this reference, or None (no shot
        noise worth weighting: equal weights).

        ``bounds`` (the clip's, if any) limit the intensities considered.  The offset is
        at least ``3 gain / 8 - darkest`` (so ``x + offset > 0`` on the reference: a
        fitted floor below what the darkest pixels show is not believed).
        """
        if not (self.gain > 0 and self.matters(reference)):
            return None
        low, high = np.nanpercentile(reference, (1, 99))
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        offset = max(self.floor / self.gain, -low) + 3 * self.gain / 8
        if not np.isfinite(offset) or high + offset < _MIN_WEIGHT_RATIO * (low + offset):
            return None
        return float(offset)

    def information_kept(self, reference: np.ndarray, bounds) -> float:
        """The share of the frames' information on the motion that the estimate keeps
        when frames with this noise are clipped to ``bounds``: 1, none lost; above 1,
        the clip helps (it tames the noisiest pixels, as weights would).

        To first order a frame compared with the reference by unweighted least squares
        errs by ``sum g^2 e / sum g^2`` over its pixels (``g`` the reference's
        gradient, ``e`` the pixel's error).  Clipped, a pixel's expected value follows
        the motion only by the share ``P`` of its noise inside the bounds, and its
        noise is the censored Gaussian's.  The share is the ratio of the two
        precisions, ``(sum g^2 P)^2 / sum g^2 var_clipped`` to
        ``(sum g^2)^2 / sum g^2 var``.
        """
        slope, reference = _sampled_slopes(reference)
        inside, clipped_variance, variance = self._censored(reference, bounds)
        with np.errstate(divide="ignore", invalid="ignore"):
            kept = np.sum(slope * inside) ** 2 / np.sum(slope * clipped_variance)
            share = kept / (np.sum(slope) ** 2 / np.sum(slope * variance))
        # A flat reference (no gradient): nothing to lose.
        return float(share) if np.isfinite(share) else 1.0

    def spare_noise(self, reference: np.ndarray, bounds, weighted: bool = False):
        """``bounds`` as they are, or moved out by one noise standard deviation each
        where clipping at them would cut the frames' noise, not only transients: where
        it would cost the estimate more than ``_MAX_CLIP_LOSS`` of the information
        (:meth:`information_kept`; the bounds then lie inside the noise of
        photon-starved frames) and, for an estimate that weighs pixels by their noise
        (``weighted``, where :meth:`weighs`), always: there clipping noise costs more
        than that first-order share says (DECISIONS, "Noise weights").  None stays
        None."""
        if bounds is None or (
            not (weighted and self.weighs(reference))
            and self.information_kept(reference, bounds) >= 1 - _MAX_CLIP_LOSS
        ):
            return bounds
        low, high = bounds
        return (low - self.std(low), high + self.std(high))

    def _censored(self, reference: np.ndarray, bounds):
        """Per pixel of ``reference``: the share of its noise inside ``bounds``, the
        variance of its value clipped to them (the censored Gaussian's), and the
        variance unclipped."""
        low, high = bounds
        variance = np.maximum(self.gain * reference + self.floor, 0.0)
        # Noise-free pixels get a tiny sigma: clipped or not, then, without overflow.
        sigma = np.maximum(np.sqrt(variance), 1e-6 * (high - low))
        a, b = (low - reference) / sigma, (high - reference) / sigma
        below, inside = ndtr(a), ndtr(b) - ndtr(a)
        above = 1.0 - below - inside
        pdf_a, pdf_b = (np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi) for z in (a, b))
        # The censored Gaussian's mean and second moment.
        mean = low * below + high * above + reference * inside + sigma * (pdf_a - pdf_b)
        second = (
            low**2 * below
            + high**2 * above
            + (reference**2 + sigma**2) * inside
            + 2 * reference * sigma * (pdf_a - pdf_b)
            + sigma**2 * (a * pdf_a - b * pdf_b)
        )
        return inside, np.maximum(second - mean**2, 0.0), sigma**2

    def weighting_gain(self, reference: np.ndarray) -> float:
        """How much an estimate that weights each pixel by the inverse of its noise
        variance beats an unweighted one, to first order: the ratio of their RMS errors
        on frames showing ``reference`` (1: equal weights are as good, as under noise
        that does not depend on the intensity).

        An unweighted least-squares estimate errs by ``sum g^2 var / (sum g^2)^2``
        (variance; ``g`` the reference's gradient), the weighted one by
        ``1 / sum (g^2 / var)``.
        """
        slope, reference = _sampled_slopes(reference)
        variance = _at_least(self.gain * reference + self.floor)
        ratio = np.sum(slope * variance) * np.sum(slope / variance) / np.sum(slope) ** 2
        return float(np.sqrt(ratio)) if np.isfinite(ratio) and ratio > 0 else 1.0

    def weighs(self, reference: np.ndarray) -> bool:
        """Whether estimates on frames showing ``reference`` weigh each pixel by its
        noise: where that brings their RMS error down by at least ``_MIN_WEIGHTING_GAIN``
        (:meth:`weighting_gain`).  Under noise that does not depend on the intensity it
        cannot, and the weighted step costs time."""
        return self.weighting_gain(reference) >= _MIN_WEIGHTING_GAIN

    def weights(self, reference: np.ndarray, bounds=None) -> np.ndarray:
        """Each pixel's noise weight, ``1 / variance`` (float32), as a frame showing
        ``reference`` and clipped to ``bounds`` (if any) has it: the clip leaves a pixel
        near a bound less noise, so it weighs more.  The weights differ by at most
        ``_MAX_WEIGHT_SPREAD`` (100) across the frame."""
        reference = np.asarray(reference, dtype=np.float64)
        if bounds is None:
            variance = self.gain * reference + self.floor
        else:
            # A smooth function of the intensity alone: tabulated, then looked up at the
            # nearest level (the censored Gaussian's moments cost a dozen special
            # functions a pixel).  The table spans the bounds and 8 noise standard
            # deviations beyond (past them a pixel is always clipped): an outlying
            # pixel cannot coarsen it.
            low = max(reference.min(), bounds[0] - 8 * self.std(bounds[0]))
            high = min(reference.max(), bounds[1] + 8 * self.std(bounds[1]))
            if not high > low:
                high = low + 1.0
            levels = np.linspace(low, high, _WEIGHT_LEVELS)
            step = (high - low) / (_WEIGHT_LEVELS - 1)
            nearest = np.rint((np.clip(reference, low, high) - low) / step).astype(np.intp)
            variance = self._censored(levels, bounds)[1][nearest]
        return (1.0 / _at_least(variance)).astype(np.float32)

    def matters(self, reference: np.ndarray) -> bool:
        """Whether the noise is large enough to weigh: at the reference's median, at
        least ``_MIN_NOISE`` of its spread (1st to 99th percentile)."""
        low, middle, high = np.nanpercentile(reference, (1, 50, 99))
        return self.std(middle) >= _MIN_NOISE * (high - low)


def _sampled_slopes(reference):
    """The squared gradient of ``reference`` and its values, at every few of its pixels
    (at most about ``_MAX_PIXELS``), flat, float64: enough for a first-order share."""
    reference = np.asarray(reference, dtype=np.float64)
    step = -(-reference.size // _MAX_PIXELS)
    slope = sum(np.square(g) for g in np.gradient(reference)).ravel()[::step]
    return slope, reference.ravel()[::step]


def _at_least(variance: np.ndarray) -> np.ndarray:
    """``variance``, at least ``1 / _MAX_WEIGHT_SPREAD`` of its largest value: a fitted
    variance near 0 (the darkest pixels; a clipped pixel beyond its bound) is the fit's
    error or a pixel without information, whose weight would swamp the rest."""
    lowest = max(float(np.max(variance)), _TINY_VARIANCE) / _MAX_WEIGHT_SPREAD
    return np.maximum(variance, lowest)


def fit_noise(frames: np.ndarray) -> NoiseModel:
    """Fit ``var(x) = gain * x + floor`` to frames, as Foi et al. (2008) do.

    The Haar diagonal detail of each 2x2 block of the last two axes,
    ``(a - b - c + d) / 2``, holds almost no signal of a band-limited scene and has the
    variance of one pixel's noise; binned by the block's mean, its mean square per bin
    (trimmed of scene edges) against the bin's mean intensity is a straight line, fitted
    by weighted least squares.

    Parameters
    ----------
    frames : numpy.ndarray
        ``(n, *frame_shape)``, at least 2 x 2 per frame; NaN pixels are left out.

    Returns
    -------
    NoiseModel
        ``(0, 0)`` if there are too few finite blocks to fit.

    References
    ----------
    .. [1] A. Foi, M. Trimeche, V. Katkovnik and K. Egiazarian, "Practical
       Poissonian-Gaussian noise modeling and fitting for single-image raw-data",
       IEEE Trans. Image Process. 17, 1737-1754 (2008), :doi:`10.1109/TIP.2008.2001399`.
    """
    frames = np.asarray(frames)
    h, w = (frames.shape[-2] // 2) * 2, (frames.shape[-1] // 2) * 2
    # Every few rows of blocks, at most _MAX_BLOCKS in all: enough for the fit, cheap.
    step = 2 * max(1, -(-frames.size // (4 * _MAX_BLOCKS)))
    a, b = (frames[..., 0:h:step, j:w:2].astype(np.float32) for j in (0, 1))
    c, d = (frames[..., 1:h:step, j:w:2].astype(np.float32) for j in (0, 1))
    squares = np.square((a - b - c + d) * np.float32(0.5)).ravel()
    mean = ((a + b + c + d) * np.float32(0.25)).ravel()
    if not np.isfinite(squares.sum() + mean.sum()):
        finite = np.isfinite(squares) & np.isfinite(mean)
        squares, mean = squares[finite], mean[finite]
    if len(squares) < 4 * _BINS:
        return NoiseModel(0.0, 0.0)
    # Bins of equal counts; sums per bin by bincount (no sort: this runs once per movie,
    # on the estimate's path).
    edges = np.quantile(mean, np.linspace(0, 1, _BINS + 1)[1:-1])
    index = np.searchsorted(edges, mean)
    count = np.bincount(index, minlength=_BINS).astype(np.float64)
    level = np.bincount(index, mean, minlength=_BINS) / np.maximum(count, 1)
    variance = np.bincount(index, squares, minlength=_BINS) / np.maximum(count, 1)
    for _ in range(3):
        kept = squares <= (_TRIM * variance).astype(np.float32)[index]
        count = np.bincount(index, kept, minlength=_BINS)
        variance = np.bincount(index, np.where(kept, squares, 0), minlength=_BINS)
        variance /= np.maximum(count, 1)
    # A bin without noise (blocks of zero photons everywhere) says nothing of the line's
    # slope, and its weight below would swamp every other bin: left out.
    used = (count > 0) & (variance > 0)
    if used.sum() < 2:
        return NoiseModel(0.0, 0.0)
    level, variance, count = level[used], variance[used], count[used]
    # A bin's mean square has variance ~ 2 var^2 / count: weight by its inverse (the
    # variance at least a hundredth of the median's: a nearly silent bin, dark pixels of
    # a few photons, would otherwise decide the line alone).
    weight = np.sqrt(count) / np.maximum(variance, 0.01 * np.median(variance))
    design = np.stack([level, np.ones(len(level))], axis=1) * weight[:, None]
    gain, floor = np.linalg.lstsq(design, variance * weight, rcond=None)[0]
    return NoiseModel(gain, floor)
