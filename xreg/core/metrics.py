"""Registration quality as NoRMCorre reports it: crispness of the mean image and the
correlation of each frame with it (Pnevmatikakis & Giovannucci, 2017)."""

from __future__ import annotations

import numpy as np

__all__ = ["crispness", "frame_correlation"]


def crispness(image: np.ndarray) -> float:
    """The Frobenius norm of the gradient magnitude of an image: sharper is larger.

    ``sqrt(sum over pixels of |grad image|^2)``, the gradient by central differences
    inside and one-sided differences at the edges (:func:`numpy.gradient`); NaN
    pixels are left out.

    Parameters
    ----------
    image : numpy.ndarray
        A 2-D or 3-D image (usually a movie's mean).

    Returns
    -------
    float
        In the image's units per pixel.

    References
    ----------
    .. [1] E. A. Pnevmatikakis and A. Giovannucci, "NoRMCorre: An online algorithm for
       piecewise rigid motion correction of calcium imaging data", J. Neurosci.
       Methods 291, 83-94 (2017), :doi:`10.1016/j.jneumeth.2017.07.031`.
    """
    gradients = np.gradient(np.asarray(image, dtype=np.float64))
    if not isinstance(gradients, list | tuple):  # 1-D input
        gradients = [gradients]
    squared = sum(g**2 for g in gradients)
    return float(np.sqrt(np.nansum(squared)))


def frame_correlation(frames: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Pearson correlation of each frame with ``image`` over their finite pixels.

    Parameters
    ----------
    frames : numpy.ndarray
        ``(n, *image.shape)``.
    image : numpy.ndarray
        The image compared with (usually the movie's mean).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64 in -1..1; NaN for a frame (or image) with no contrast.
    """
    n = frames.shape[0]
    f = np.asarray(frames, dtype=np.float64).reshape(n, -1)
    m = np.broadcast_to(np.asarray(image, dtype=np.float64).ravel(), f.shape)
    valid = np.isfinite(f) & np.isfinite(m)
    count = valid.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(valid, f - np.where(valid, f, 0).sum(1, keepdims=True) / count, 0)
        dm = np.where(valid, m - np.where(valid, m, 0).sum(1, keepdims=True) / count, 0)
        return (df * dm).sum(1) / np.sqrt((df**2).sum(1) * (dm**2).sum(1))
