"""The ``.reg`` accessor on :class:`xarray.DataArray`: a thin, stateless front."""

from __future__ import annotations

import functools
from collections.abc import Hashable

import xarray as xr

from . import _metrics, _scanphase, _xarray, pipeline, validate


@xr.register_dataarray_accessor("reg")
class RegAccessor:
    """Registration (motion correction) of a movie: ``movie.reg.estimate(...)``.

    The frame dim is ``time`` unless ``dim=`` says otherwise; the spatial dims (2 or
    3) are the others, except extra dims such as ``channel`` or ``camera``, which
    :meth:`apply` broadcasts (``spatial_dims=`` says which are spatial where the
    names do not).  Nothing is stored here: each method validates its input and
    returns a new object.
    """

    def __init__(self, obj: xr.DataArray) -> None:
        self._given = obj

    @functools.cached_property
    def _obj(self) -> xr.DataArray:
        # Labels stored in other chunks than the frames (as zarr opens them) would make
        # xarray refuse the movie's chunks in every method.  Rechunked on a method's
        # first use, not on `.reg`: 0.45 s for a label beside 200,000 frames.
        return _xarray.labels_chunked_like_movie(self._given)

    def reference(
        self,
        *,
        n_frames: int = 200,
        iterations: int = 4,
        upsample_factor: int = 10,
        max_shift=None,
        clip=_xarray.CLIP_PERCENTILES,
        dim: Hashable = "time",
        spatial_dims=None,
    ) -> xr.DataArray:
        """Build a sharp reference from the movie itself.

        Samples ``n_frames`` frames spread over the movie (for Dask, only their
        chunks are read), seeds with the mean of the group of frames that are most
        alike (suite2p), then registers and averages the best-matching frames
        ``iterations`` times.  The result sits at the sample's median position, so
        displacements measured against it have no arbitrary offset.

        Parameters
        ----------
        n_frames : int, default 200
            Frames sampled.
        iterations : int, default 4
            Register-and-average rounds.
        upsample_factor : int, default 10
            Subpixel precision used inside the rounds.
        max_shift : int or sequence of int, optional
            Search range in pixels per axis (default: 10 % of each axis, at least 8).
        clip : (float, float) or None, default (1, 99)
            Percentile clipping inside the rounds, as in :meth:`estimate`.
        dim : hashable, default "time"
            The frame dim.
        spatial_dims : sequence of hashable, optional
            The spatial dims (default: the dims other than ``dim``, ``channel``,
            ``camera``, ``c`` and ``wavelength``).  A movie with any other dim (a
            ``channel``) is refused with the fix: build the reference from one
            channel, ``movie.sel(channel=...)``.

        Returns
        -------
        xarray.DataArray
            The reference frame, dims and coords of one frame, float64; its attrs
            record the method and settings.

        Examples
        --------
        >>> import xreg
        >>> movie, truth = xreg.datasets.add_motion(xreg.datasets.mouse(n_frames=60), seed=1)
        >>> movie.reg.reference().dims
        ('y', 'x')
        """
        return _xarray.build_reference(
            self._obj,
            n_frames=n_frames,
            iterations=iterations,
            upsample_factor=upsample_factor,
            max_shift=max_shift,
            clip=clip,
            dim=dim,
            spatial_dims=spatial_dims,
        )

    def estimate(
        self,
        reference=None,
        *,
        upsample_factor: int = 10,
        dim: Hashable = "time",
        max_shift=None,
        smooth: int | None = None,
        bad_frame_threshold: float = 6.0,
        method: str = "rigid",
        block_size=(128, 128),
        overlap: float = 0.5,
        min_quality: float = 0.3,
        clip=_xarray.CLIP_PERCENTILES,
        weights: str | None = None,
        spatial_dims=None,
    ) -> xr.DataArray:
        """Estimate the displacement of every frame relative to a reference.

        Parameters
        ----------
        reference : xarray.DataArray or numpy.ndarray, optional
            A frame with the movie's spatial dims (or shape).  ``None`` builds one
            with :meth:`reference`.
        upsample_factor : int, default 10
            ``1`` gives integer shifts; larger values a continuous subpixel estimate
            (Newton steps on the score; see ``xreg.core.estimate_shifts``).
        dim : hashable, default "time"
            The frame dim.
        max_shift : int or sequence of int, optional
            Largest displacement searched and reported, per axis, in pixels
            (larger motion comes out at the bound).  Default: 10 % of each axis, at
            least 8 px.  Each frame is compared over the pixels it shares with the
            reference at its own displacement, so content moving across the border
            cannot bias the estimate.
        smooth : int, optional
            Replace the displacements by their centred rolling median over this many
            frames (bad frames left out), for low-SNR movies.  Off by default.
        bad_frame_threshold : float, default 6.0
            Frames whose quality lies more than this many robust standard deviations
            below the movie's median quality are flagged in ``bad_frame``.
        method : {"rigid", "piecewise"}, default "rigid"
            ``"piecewise"``: after the rigid step, one subpixel shift per
            overlapping block (non-rigid motion, as suite2p and NoRMCorre).
        block_size : int or sequence of int, default (128, 128)
            Piecewise only: block size in pixels per axis.
        overlap : float, default 0.5
            Piecewise only: fraction of a block shared with its neighbour.  Less
            overlap means fewer blocks: faster (0.25: about 1.4 x on 512 x 512
            frames) for a coarser displacement field.
        min_quality : float, default 0.3
            Piecewise only: a block whose correlation peak is weaker than this
            takes the frame's rigid displacement.
        clip : (float, float) or None, default (1, 99)
            Percentiles of the reference: the reference and every frame are
            clipped to the intensities there before they are compared, so that
            cells lit by a calcium transient cannot dominate the match (as
            suite2p does).  In photon-starved frames, where bounds this close
            would cut more than a tenth of the frames' information on the motion
            (their noise crosses them), they move out by one noise standard
            deviation.  ``None`` compares raw intensities.  With
            ``reference=None`` it applies to building the reference too.
        weights : {None, "noise"}, default None
            ``"noise"``: the rigid estimate ends with a step of the fit that weighs
            each pixel by its noise, fitted on the first frames (bright pixels are
            noisier under shot noise), which brings it close to the physical limit
            (within 1.14 x the Cramér-Rao bound in ``benchmarks/bench_accuracy.py``,
            where the default is within 1.20 x) at about 0.9 x the default's rate; the
            clip's bounds then spare the noise.  It acts only where the noise grows
            with the intensity enough to matter, on 2-D frames of at least 32 px per
            axis without NaN pixels, and with ``upsample_factor > 1``; elsewhere, and
            with ``None``, every pixel weighs the same.  Piecewise blocks are not
            weighted.  The request is recorded in the attrs as ``weights`` (also where
            it could not act; not with ``upsample_factor=1``, where it is dropped).
        spatial_dims : sequence of hashable, optional
            As in :meth:`reference`.  A movie with a ``channel`` dim is refused
            with the fix: estimate on one channel (``movie.sel(channel="red")``)
            and apply the shifts to the whole movie.

        Returns
        -------
        xarray.DataArray
            ``displacement``, dims ``(time, axis)``, ``axis`` = the spatial dim
            names, the movie's ``time`` coordinate (and any other coordinate along
            ``time``), a ``quality`` coordinate (normalised correlation at the
            peak, 0..1), a boolean ``bad_frame`` coordinate (quality outliers:
            blanked frames, noise, sudden z-motion) and attrs with units, method
            and settings.  Piecewise: dims ``(time, block_y, block_x, axis)``, the
            block centres (pixels) as ``block_*`` coordinates, ``quality`` per block,
            and the rigid part as the coordinate ``rigid`` ``(time, axis)``.
            Computed (numpy-backed), also for a Dask-backed movie, whose chunks
            are each read once.

        Raises
        ------
        XregError
            If the movie or reference is malformed (the message says how to fix it).

        Notes
        -----
        Sign: a frame equal to ``scipy.ndimage.shift(reference, d)`` has
        displacement ``d`` (the motion that happened); :meth:`apply` moves it by
        ``-d``.  This is the opposite sign of
        ``skimage.registration.phase_cross_correlation``.

        The score is a normalised cross-correlation in which each frame is weighted
        by a window that is zero within ``max_shift`` of its border, normalised by
        the reference's local variance under the shifted window; its peak is
        refined by an upsampled matrix-multiply DFT [1]_.  Pixels that are NaN are
        left out of the comparison; a frame with no contrast gets displacement 0
        and quality 0.

        References
        ----------
        .. [1] M. Guizar-Sicairos, S. T. Thurman and J. R. Fienup, "Efficient
           subpixel image registration algorithms", Opt. Lett. 33, 156-158 (2008),
           :doi:`10.1364/OL.33.000156`.

        Examples
        --------
        >>> import xreg
        >>> movie, truth = xreg.datasets.add_motion(xreg.datasets.mouse(n_frames=20), seed=0)
        >>> shifts = movie.reg.estimate(xreg.datasets.mouse(n_frames=1).isel(time=0))
        >>> shifts.dims, shifts.axis.values.tolist()
        (('time', 'axis'), ['y', 'x'])
        """
        return _xarray.estimate(
            self._obj,
            reference,
            upsample_factor=upsample_factor,
            dim=dim,
            max_shift=max_shift,
            smooth=smooth,
            bad_frame_threshold=bad_frame_threshold,
            method=method,
            block_size=block_size,
            overlap=overlap,
            min_quality=min_quality,
            clip=clip,
            weights=weights,
            spatial_dims=spatial_dims,
        )

    def apply(
        self,
        shifts,
        *,
        order: int = 1,
        mode: str = "nearest",
        cval: float = 0.0,
        bad_frames: str = "apply",
        dim: Hashable = "time",
        spatial_dims=None,
    ) -> xr.DataArray:
        """Move every frame back by its displacement: the registered movie.

        Dims that are neither ``dim`` nor spatial (``channel``, ``camera``, ...)
        are broadcast: each frame's displacement moves all its channels.

        Parameters
        ----------
        shifts : xarray.DataArray or array-like
            Displacements as :meth:`estimate` returns them (dims ``(time, axis)``),
            or an array of shape ``(n_frames, n_axes)``.  A ``time`` coordinate must
            match the movie's.  Piecewise shifts (with ``block_*`` dims) are turned
            into a smooth per-pixel field (linear between block centres) that warps
            each frame.
        order : int, default 1
            Interpolation order for fractional shifts (0 to 5).  Integer shifts are
            applied exactly, by moving samples.
        mode : {"nearest", "constant", "reflect", "mirror", "wrap"}, default "nearest"
            How pixels that come in from beyond the border are filled.
        cval : float, default 0.0
            Fill value for ``mode="constant"``.
        bad_frames : {"apply", "leave", "interpolate"}, default "apply"
            For frames flagged in ``shifts.bad_frame``: move them by their estimate,
            leave them as they are, or move them by a displacement interpolated
            from the good frames around them.
        dim : hashable, default "time"
            The frame dim.
        spatial_dims : sequence of hashable, optional
            The spatial dims; default: the shifts' ``axis`` coordinate (for an
            array without one, as in :meth:`reference`).

        Returns
        -------
        xarray.DataArray
            Same dims, coords, attrs, name and dtype as the movie (integers rounded
            and clipped, never wrapped).  Lazy for a Dask-backed movie.

        Examples
        --------
        >>> import xreg
        >>> movie, truth = xreg.datasets.add_motion(xreg.datasets.mouse(n_frames=20), seed=0)
        >>> fixed = movie.reg.apply(truth)
        >>> fixed.dims == movie.dims and fixed.dtype == movie.dtype
        True
        """
        return _xarray.apply(
            self._obj,
            shifts,
            order=order,
            mode=mode,
            cval=cval,
            bad_frames=bad_frames,
            dim=dim,
            spatial_dims=spatial_dims,
        )

    def register(
        self,
        reference=None,
        *,
        order: int = 1,
        mode: str = "nearest",
        cval: float = 0.0,
        bad_frames: str = "apply",
        dim: Hashable = "time",
        channel=None,
        **estimate_options,
    ) -> tuple[xr.DataArray, xr.DataArray]:
        """Estimate and apply in one pass: the registered movie and its displacements.

        For a Dask-backed movie both are lazy and are two views of one graph, with one
        task per chunk that reads the chunk once, estimates its displacements and moves
        its frames back; computing or writing both together (``xr.Dataset({...}).to_zarr``
        or ``dask.compute``) reads each chunk once.  ``movie.reg.estimate`` followed by
        ``movie.reg.apply`` reads it twice.

        Parameters
        ----------
        reference : xarray.DataArray or numpy.ndarray, optional
            As in :meth:`estimate`.  ``None`` builds one with :meth:`reference` first
            (this reads the sampled frames now; the rest stays lazy).
        order, mode, cval, bad_frames, dim
            As in :meth:`apply`.
        channel : hashable or int, optional
            For a movie with a ``channel`` dim (or another extra dim): the channel whose
            frames give the displacements, by label (``"red"``) or by position when the
            labels are not numbers; every channel is moved by them, in the same task.
            The ``reference`` is then one of that channel's frames.
        **estimate_options
            Those of :meth:`estimate` (``upsample_factor``, ``method``, ``clip``, ...).

        Returns
        -------
        fixed : xarray.DataArray
            As :meth:`apply` returns it.
        shifts : xarray.DataArray
            As :meth:`estimate` returns it, but lazy for a Dask-backed movie.

        Notes
        -----
        ``smooth`` and ``bad_frames="leave"`` or ``"interpolate"`` make a frame's
        displacement depend on other frames', so they take two passes: the
        displacements are estimated (and computed) first, then applied lazily.

        Examples
        --------
        >>> import xreg
        >>> movie, truth = xreg.datasets.add_motion(xreg.datasets.mouse(n_frames=20), seed=0)
        >>> fixed, shifts = movie.chunk(time=10).reg.register(movie.isel(time=0))
        >>> fixed.chunks is not None, shifts.dims
        (True, ('time', 'axis'))
        """
        validate.keywords(estimate_options, RegAccessor.estimate, "register")
        return pipeline.register(
            self._obj,
            reference,
            order=order,
            mode=mode,
            cval=cval,
            bad_frames=bad_frames,
            dim=dim,
            channel=channel,
            **estimate_options,
        )

    def field(self) -> xr.DataArray:
        """The per-pixel displacement field of piecewise shifts (this array).

        Returns
        -------
        xarray.DataArray
            ``displacement_field``, dims ``(time, axis, y, x)``: block displacements
            interpolated linearly between block centres, as :meth:`apply` uses them.

        Examples
        --------
        >>> import xreg
        >>> movie = xreg.datasets.mouse(n_frames=4, shape=(96, 96))
        >>> shifts = movie.reg.estimate(movie.mean("time"), method="piecewise", block_size=48)
        >>> shifts.reg.field().isel(time=0).dims
        ('axis', 'y', 'x')
        """
        return _xarray.field(self._obj)

    def metrics(self, registered=None, *, border=None, dim: Hashable = "time") -> xr.Dataset:
        """How good a registration is, as NoRMCorre reports it, for this movie and its
        registered versions.

        Parameters
        ----------
        registered : xarray.DataArray or dict of str to DataArray, optional
            The registered movie (``movie.reg.apply(shifts)``), named ``"registered"``,
            or several by name, e.g. ``{"rigid": fixed, "piecewise": fixed_pw}``.
            Same dims and sizes as this movie.
        border : int or sequence of int, optional
            Pixels left out at each edge of every axis, where registration moves in
            filler (default: the estimator's default ``max_shift``, 10 % of each axis,
            at least 8 px).
        dim : hashable, default "time"
            The frame dim.

        Returns
        -------
        xarray.Dataset
            Dim ``version`` = ``["raw", *names]``: ``crispness`` (version), the norm of
            the gradient of the mean image (higher is sharper); ``correlation``
            (version, time), each frame's Pearson correlation with its version's mean
            image (higher and steadier is better); ``mean_image`` (version, y, x).
            Computed; a Dask-backed movie is read twice (the means, then the
            correlations).

        Raises
        ------
        XregError
            If a registered version does not match the movie, or ``border`` leaves
            nothing.

        Notes
        -----
        Crispness is the Frobenius norm of the gradient magnitude of the mean image
        [1]_ (CaImAn's ``compute_metrics``, there called smoothness); a registration
        that aligns the frames makes the mean sharper and each frame more like it.
        Compare values on the same movie only: crispness scales with brightness.

        References
        ----------
        .. [1] E. A. Pnevmatikakis and A. Giovannucci, "NoRMCorre: An online algorithm
           for piecewise rigid motion correction of calcium imaging data", J. Neurosci.
           Methods 291, 83-94 (2017), :doi:`10.1016/j.jneumeth.2017.07.031`.

        Examples
        --------
        >>> import xreg
        >>> movie, truth = xreg.datasets.add_motion(xreg.datasets.mouse(n_frames=40), seed=0)
        >>> scores = movie.reg.metrics(movie.reg.apply(truth))
        >>> scores.version.values.tolist()
        ['raw', 'registered']
        >>> bool(scores.crispness.sel(version="registered") > scores.crispness.sel(version="raw"))
        True
        """
        return _metrics.metrics(self._obj, registered, border=border, dim=dim)

    def physical(self) -> xr.DataArray:
        """These displacements in the units of the movie's spatial coordinates (µm).

        :meth:`estimate` adds a ``pixel_size`` coordinate along ``axis`` (the step
        of each spatial coordinate, with its ``units``) when the movie's spatial
        coordinates are numeric and evenly spaced; this multiplies by it.

        Returns
        -------
        xarray.DataArray
            Same dims and coords; attrs ``units`` from the coordinates'.

        Raises
        ------
        XregError
            If the displacements have no ``pixel_size`` coordinate.

        Examples
        --------
        >>> import numpy as np, xreg
        >>> movie, truth = xreg.datasets.add_motion(xreg.datasets.mouse(n_frames=8), seed=0)
        >>> movie = movie.assign_coords(y=0.5 * np.arange(64), x=0.5 * np.arange(64))
        >>> movie.y.attrs["units"] = movie.x.attrs["units"] = "µm"
        >>> shifts = movie.reg.estimate(movie.isel(time=0))
        >>> shifts.pixel_size.values.tolist(), shifts.reg.physical().attrs["units"]
        ([0.5, 0.5], 'µm')
        """
        return _xarray.physical(self._obj)

    def scan_phase(
        self,
        *,
        per: str | None = None,
        window: int | None = None,
        n_frames: int = 200,
        max_offset: int | None = None,
        dims=None,
        dim: Hashable = "time",
    ) -> xr.DataArray:
        """Estimate the bidirectional scan phase: the offset of backward lines along x.

        Resonant scanners write the even lines (0, 2, ...) forward and the odd lines
        backward; the odd lines come out sampled at ``x + offset``.  Correct it with
        :meth:`correct_scan_phase` before estimating motion.

        Parameters
        ----------
        per : {"movie", "frame"}, optional
            ``"movie"`` (the default without ``window``): one offset from
            ``n_frames`` frames spread over the movie (for Dask, only their chunks
            are read).  ``"frame"``: one offset per frame (every frame is read), from
            that frame alone or from the ``window`` frames centred on it.
        window : int, optional
            Frames pooled into each frame's offset (implies ``per="frame"``); the
            offset drifts slowly, so a window of tens of frames gives a steady
            estimate that still follows it.
        n_frames : int, default 200
            Frames sampled for ``per="movie"``.
        max_offset : int, optional
            Search ``-max_offset .. max_offset`` px (default 10, at most an eighth
            of the line; at most a quarter when given).
        dims : (hashable, hashable), optional
            The line dim and the scan dim.  Default ``("y", "x")`` when the movie
            has both, else its last two dims.  Other dims (planes, channels) are
            pooled: one offset serves them all.
        dim : hashable, default "time"
            The frame dim.

        Returns
        -------
        xarray.DataArray
            ``scan_phase`` in pixels, to 0.001 px: 0-d for ``per="movie"``, dims
            ``(time,)`` with the movie's ``time`` coordinate otherwise.  A
            ``quality`` coordinate holds the normalised correlation at the peak
            (0..1); attrs record units, which lines are forward, the dims and the
            settings.  Per frame, NaN marks a frame with nothing to compare (blank
            or NaN lines) or a peak at the edge of the search range.

        Raises
        ------
        XregError
            If the frames have fewer than 3 lines, the options are out of range, or
            (``per="movie"``) no offset can be measured.

        Notes
        -----
        Each line with a line above and below is compared with their mean (the
        other direction, at the line's own height on average), by a normalised
        cross-correlation along x evaluated at subpixel lags by trigonometric
        interpolation of the summed cross-power spectrum.  Lines holding NaN are
        left out.  See ``docs/DECISIONS.md``.

        Examples
        --------
        >>> import xreg
        >>> movie = xreg.datasets.mouse(n_frames=20)
        >>> skewed = movie.reg.correct_scan_phase(-1.5, order=3)  # odd lines at x + 1.5
        >>> round(float(skewed.reg.scan_phase()), 1)
        1.5
        """
        return _scanphase.scan_phase(
            self._obj,
            per=per,
            window=window,
            n_frames=n_frames,
            max_offset=max_offset,
            dims=dims,
            dim=dim,
        )

    def correct_scan_phase(
        self,
        offset,
        *,
        order: int = 1,
        mode: str = "nearest",
        cval: float = 0.0,
        dims=None,
        dim: Hashable = "time",
    ) -> xr.DataArray:
        """Move every backward (odd) line by ``-offset`` along x: the phase undone.

        Parameters
        ----------
        offset : float, xarray.DataArray or array-like
            Pixels, as :meth:`scan_phase` returns it: one for the movie, or one per
            frame (dims ``(time,)``; a NaN leaves its frame as it is).  At most a
            quarter of the line.
        order, mode, cval
            Interpolation, as in :meth:`apply`.
        dims : (hashable, hashable), optional
            The line dim and the scan dim; default: those recorded on ``offset``,
            else as in :meth:`scan_phase`.  Every other dim (channels, planes) takes
            the frame's offset.
        dim : hashable, default "time"
            The frame dim.

        Returns
        -------
        xarray.DataArray
            Same dims, coords, attrs, name and dtype as the movie (integers rounded
            and clipped); the even lines are unchanged.  Lazy for a Dask-backed movie.

        Notes
        -----
        Correct the phase first, then estimate and apply motion: motion moves
        whole frames, which mixes forward and backward lines when it moves by a
        fraction of a line, and the comb can no longer be undone line by line.

        Examples
        --------
        >>> import xreg
        >>> movie = xreg.datasets.mouse(n_frames=4)
        >>> fixed = movie.reg.correct_scan_phase(0.8)
        >>> bool((fixed.isel(y=slice(0, None, 2)) == movie.isel(y=slice(0, None, 2))).all())
        True
        """
        return _scanphase.correct_scan_phase(
            self._obj, offset, order=order, mode=mode, cval=cval, dims=dims, dim=dim
        )


@xr.register_dataset_accessor("reg")
class DatasetRegAccessor:
    """Registration of the movies in a Dataset: ``ds.reg.estimate(ref, var="red")``.

    Estimate on one variable, apply to every variable that has the frame and
    spatial dims; a thin front over :class:`RegAccessor`.
    """

    def __init__(self, obj: xr.Dataset) -> None:
        self._obj = obj

    def reference(self, *, var: Hashable | None = None, dim: Hashable = "time", **options):
        """Build a reference from the movie ``var``; see :meth:`RegAccessor.reference`.

        ``var`` defaults to the Dataset's only variable with the frame dim.
        """
        validate.keywords(options, RegAccessor.reference, "reference")
        movie = _xarray.dataset_variable(self._obj, var, dim)
        return movie.reg.reference(dim=dim, **options)

    def estimate(
        self, reference=None, *, var: Hashable | None = None, dim: Hashable = "time", **options
    ) -> xr.DataArray:
        """Displacements of the movie ``var``; see :meth:`RegAccessor.estimate`.

        Examples
        --------
        >>> import xarray as xr, xreg
        >>> movie, truth = xreg.datasets.add_motion(xreg.datasets.mouse(n_frames=20), seed=0)
        >>> ds = xr.Dataset({"red": movie, "green": movie * 2, "speed": movie.time * 0.1})
        >>> shifts = ds.reg.estimate(movie.isel(time=0), var="red")
        >>> sorted(ds.reg.apply(shifts).data_vars)
        ['green', 'red', 'speed']
        """
        validate.keywords(options, RegAccessor.estimate, "estimate")
        movie = _xarray.dataset_variable(self._obj, var, dim)
        return movie.reg.estimate(reference, dim=dim, **options)

    def apply(self, shifts, *, dim: Hashable = "time", spatial_dims=None, **options) -> xr.Dataset:
        """Register every variable that has the frame dim and the spatial dims.

        Parameters
        ----------
        shifts : xarray.DataArray
            Displacements as :meth:`RegAccessor.estimate` returns them.
        dim : hashable, default "time"
        spatial_dims : sequence of hashable, optional
            Default: the shifts' ``axis`` coordinate.
        **options
            ``order``, ``mode``, ``cval``, ``bad_frames``, as in
            :meth:`RegAccessor.apply`.

        Returns
        -------
        xarray.Dataset
            The same Dataset with those variables registered (lazily for
            Dask-backed ones; extra dims such as ``channel`` broadcast) and the
            others, coordinates and attrs passed through.
        """
        validate.keywords(options, RegAccessor.apply, "apply")
        return _xarray.apply_dataset(
            self._obj, shifts, dim=dim, spatial_dims=spatial_dims, **options
        )
