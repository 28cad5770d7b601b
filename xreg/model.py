"""The thunder-registration API over xreg's core: ``CrossCorr().fit(images, reference)``.

Notebooks written for thunder-registration run with only the import changed::

    from xreg import CrossCorr
    model = CrossCorr().fit(images, reference=ref)
    model.transformations[(0,)]      # Displacement(delta=[-4, -2])
    model.toarray()                  # (n, ndim)
    registered = model.transform(images)

``images`` may be a numpy array ``(n, *frame)``, a DataArray with a ``time`` dim
or a Spark RDD of ``(key, frame)`` records; ``transform`` returns the same kind.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import _xarray, core, validate
from .errors import XregError

__all__ = ["CrossCorr", "Displacement", "LocalDisplacement", "RegistrationModel"]


def _is_rdd(images) -> bool:
    return type(images).__module__.startswith("pyspark")


def _plain(values):
    """Whole numbers as ints, for a repr that reads like thunder's."""
    values = np.asarray(values, dtype=float)
    return values.astype(int).tolist() if np.all(values == np.round(values)) else values.tolist()


class Displacement:
    """A rigid displacement ``delta`` (pixels per axis) of one image.

    Sign as everywhere in xreg: an image made by shifting the reference by ``d``
    has ``delta == d``; :meth:`apply` moves it back by ``-d``.
    """

    def __init__(self, delta):
        self.delta = _plain(delta)

    def toarray(self) -> np.ndarray:
        """The displacement as a float array."""
        return np.asarray(self.delta, dtype=float)

    def apply(self, image, *, order: int = 1, mode: str = "nearest") -> np.ndarray:
        """Move one image back onto the reference."""
        order, mode = validate.interpolation(order, mode)
        image = np.asarray(image)
        return core.shift_frames(image[None], self.toarray()[None], order=order, mode=mode)[0]

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and np.array_equal(self.toarray(), other.toarray())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(delta={self.delta})"


class LocalDisplacement(Displacement):
    """One 2-D displacement per plane along ``axis`` of a volume (per-plane registration)."""

    def __init__(self, delta, axis: int):
        super().__init__(delta)
        self.axis = int(axis)

    def apply(self, image, *, order: int = 1, mode: str = "nearest") -> np.ndarray:
        """Move every plane of one volume back by its own displacement."""
        order, mode = validate.interpolation(order, mode)
        planes = np.moveaxis(np.asarray(image), self.axis, 0)
        moved = core.shift_frames(planes, self.toarray(), order=order, mode=mode)
        return np.moveaxis(moved, 0, self.axis)

    def __repr__(self) -> str:
        return f"LocalDisplacement(delta={self.delta}, axis={self.axis})"


class RegistrationModel:
    """Per-image transformations, keyed ``(0,)``, ``(1,)``, ... as in thunder.

    Built by :meth:`CrossCorr.fit`.  ``to_dataarray()`` gives the displacement
    DataArray that ``movie.reg.estimate`` returns.
    """

    def __init__(self, displacement: xr.DataArray, algorithm: str, axis: int | None = None):
        self._displacement = displacement
        self.algorithm = algorithm
        self.axis = axis

    @property
    def transformations(self) -> dict:
        values = self._displacement.values
        if self.axis is None:
            return {(i,): Displacement(v) for i, v in enumerate(values)}
        return {(i,): LocalDisplacement(v, self.axis) for i, v in enumerate(values)}

    def __len__(self) -> int:
        return self._displacement.shape[0]

    def __repr__(self) -> str:
        return f"RegistrationModel(length={len(self)}, algorithm={self.algorithm!r})"

    def toarray(self) -> np.ndarray:
        """Transformations stacked in key order: ``(n, ndim)``, or ``(n, planes, 2)``."""
        return self._displacement.values.copy()

    def to_dataarray(self) -> xr.DataArray:
        """The displacements as a labelled DataArray (dims ``(time, [plane,] axis)``)."""
        return self._displacement.copy()

    def transform(self, images, *, order: int = 1, mode: str = "nearest"):
        """Apply the transformations to ``images`` (same kind and shape back).

        Parameters
        ----------
        images : numpy.ndarray, xarray.DataArray or pyspark.RDD
            As many images as the model has transformations, in the same order.
        order, mode
            As in :meth:`xreg.accessor.RegAccessor.apply`.
        """
        if _is_rdd(images):
            from . import spark

            return spark.apply(images, self._displacement, order=order, mode=mode, axis=self.axis)
        movie, unwrap = _as_movie(images)
        if movie.sizes["time"] != len(self):
            raise XregError(
                f"The model has {len(self)} transformations but {movie.sizes['time']} images "
                "were given. Transform the images the model was fitted to."
            )
        shifts = self._displacement
        if self.axis is None:
            out = movie.reg.apply(shifts.drop_vars(_xarray.QUALITY), order=order, mode=mode)
        else:
            plane_dim = _plane_dim(movie, self.axis)
            planes = [
                movie.isel({plane_dim: p}).reg.apply(
                    shifts.isel({plane_dim: p}).drop_vars(
                        [_xarray.QUALITY, plane_dim], errors="ignore"
                    ),
                    order=order,
                    mode=mode,
                )
                for p in range(movie.sizes[plane_dim])
            ]
            out = xr.concat(planes, dim=plane_dim).transpose(*movie.dims)
        return unwrap(out)


def _as_movie(images):
    """A DataArray view of ``images`` and a function that turns a result back."""
    if isinstance(images, xr.DataArray):
        return _xarray.labels_chunked_like_movie(images), lambda out: out
    if isinstance(images, xr.Dataset):
        raise XregError("Expected one movie; got a Dataset. Pick its variable, e.g. `ds['movie']`.")
    try:
        array = np.asarray(images)
    except ValueError as error:  # ragged lists of images
        raise XregError(
            f"The images do not form one array ({error}). Pass images of one shape, "
            "stacked: `np.stack(images)`."
        ) from error
    if array.ndim not in (3, 4):
        raise XregError(
            f"Expected a stack of 2-D or 3-D images, shape (n, y, x) or (n, z, y, x); got "
            f"shape {array.shape}. Stack single images with `np.stack(images)`."
        )
    spatial = ("y", "x") if array.ndim == 3 else ("z", "y", "x")
    return xr.DataArray(array, dims=("time",) + spatial), lambda out: out.values


def _plane_dim(movie: xr.DataArray, axis: int):
    spatial = [d for d in movie.dims if d != "time"]
    if len(spatial) != 3 or not 0 <= axis < 3:
        raise XregError(
            f"Per-plane registration (axis={axis}) needs 3-D images and axis 0, 1 or 2; "
            f"got images with spatial dims {tuple(spatial)}."
        )
    return spatial[axis]


class CrossCorr:
    """Rigid registration by cross-correlation with a reference (thunder's CrossCorr).

    Parameters
    ----------
    axis : int, optional
        Register every plane along this axis of a volume on its own.
    upsample_factor : int, default 1
        ``1`` gives integer shifts (as thunder); larger values give a continuous
        subpixel estimate (see ``xreg.core.estimate_shifts``).
    windowed : bool, default False
        ``False`` correlates whole images circularly, as thunder did; ``True`` uses
        the border-safe windowed estimator of ``movie.reg.estimate``.

    Examples
    --------
    >>> import numpy as np
    >>> from xreg import CrossCorr
    >>> reference = np.arange(25.0).reshape(5, 5)
    >>> images = np.stack([np.roll(reference, (1, 2), axis=(0, 1))])
    >>> CrossCorr().fit(images, reference=reference).toarray()
    array([[1., 2.]])
    """

    def __init__(
        self, axis: int | None = None, *, upsample_factor: int = 1, windowed: bool = False
    ):
        self.axis = None if axis is None else validate.whole(axis, "axis", minimum=0, maximum=2)
        self.upsample_factor = validate.check_upsample_factor(upsample_factor)
        if not isinstance(windowed, bool | np.bool_):
            raise XregError(f"`windowed` must be True or False; got {windowed!r}.")
        self.windowed = bool(windowed)

    def __repr__(self) -> str:
        return f"CrossCorr(axis={self.axis}, upsample_factor={self.upsample_factor})"

    def _options(self):
        options = {"upsample_factor": self.upsample_factor, "whole_frame": not self.windowed}
        if not self.windowed:
            options["clip"] = None  # thunder compared raw intensities
        return options

    def fit(self, images, reference) -> RegistrationModel:
        """Estimate each image's displacement relative to ``reference``.

        Parameters
        ----------
        images : numpy.ndarray, xarray.DataArray or pyspark.RDD
            ``(n, *image)`` array, a DataArray with a ``time`` dim, or an RDD of
            ``(key, image)`` records.  (For the labelled API on a numpy stack, wrap
            it: ``xr.DataArray(images, dims=("time", "y", "x")).reg.estimate(...)``.)
        reference : array-like
            One image of the same shape.

        Returns
        -------
        RegistrationModel
        """
        if _is_rdd(images):
            from . import spark

            displacement = spark.estimate(images, reference, axis=self.axis, **self._options())
            return RegistrationModel(displacement, "CrossCorr", self.axis)
        movie, _ = _as_movie(images)
        if self.axis is None:
            displacement = _xarray.estimate(movie, reference, **self._options())
        else:
            displacement = _estimate_planes(movie, reference, self.axis, self._options())
        return RegistrationModel(displacement, "CrossCorr", self.axis)

    def fit_and_transform(self, images, reference, **options):
        """``fit(images, reference).transform(images)``."""
        return self.fit(images, reference).transform(images, **options)


def _estimate_planes(movie, reference, axis, options) -> xr.DataArray:
    plane_dim = _plane_dim(movie, axis)
    spatial = _xarray.frame_dims(movie)
    reference = xr.DataArray(_xarray.reference_array(reference, movie, spatial), dims=spatial)
    planes = [
        _xarray.estimate(movie.isel({plane_dim: p}), reference.isel({plane_dim: p}), **options)
        for p in range(movie.sizes[plane_dim])
    ]
    out = xr.concat(planes, dim=plane_dim, coords="different", compat="equals")
    return out.transpose("time", plane_dim, _xarray.AXIS)
