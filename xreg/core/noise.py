"""The movie's noise, measured from its frames, for the estimate's noise weighting.

Photon-counting detectors give Poisson-Gaussian noise: ``var(x) = gain * x + floor``
in the data's own units (an offset and a gain the user need not know).  The
variance-stabilising transform for it (Anscombe's, generalised) is, up to a scale
that does not move the correlation peak, ``sqrt(x + offset)`` with one number,
``offset = floor / gain + 3 gain / 8``: comparing transformed frames with the
transformed reference weights each pixel by its noise (bright pixels, noisier, weigh
less), which brings the estimate closer to the Cramér-Rao bound under shot noise.
Without shot noise (``gain`` about 0) the transform is the identity: equal weights.
"""

from __future__ import annotations

import numpy as np

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
# Noise below this fraction of the reference's spread (1st to 99th percentile) at its
# median is not weighted: it barely moves the estimate, and what the fit measures there
# may be the scene's own fine detail, not noise.
_MIN_NOISE = 0.01


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

    def matters(self, reference: np.ndarray) -> bool:
        """Whether the noise is large enough to weigh: at the reference's median, at
        least ``_MIN_NOISE`` of its spread (1st to 99th percentile)."""
        low, middle, high = np.nanpercentile(reference, (1, 50, 99))
        return self.std(middle) >= _MIN_NOISE * (high - low)


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
    used = count > 0
    level, variance, count = level[used], variance[used], count[used]
    # A bin's mean square has variance ~ 2 var^2 / count: weight by its inverse.
    weight = np.sqrt(count) / np.maximum(variance, 1e-30)
    design = np.stack([level, np.ones(len(level))], axis=1) * weight[:, None]
    gain, floor = np.linalg.lstsq(design, variance * weight, rcond=None)[0]
    return NoiseModel(gain, floor)
