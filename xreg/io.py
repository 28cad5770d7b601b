"""Reading movies (Zarr, TIFF) and writing results (Zarr, netCDF, CSV).

A whole registration run (``xreg register``) is :func:`xreg.pipeline.run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from . import _xarray, validate
from ._displacement import DisplacementArray
from .errors import XregError

__all__ = [
    "check_displacement_path",
    "open_movie",
    "open_reference",
    "read_displacement",
    "to_zarr",
    "write_displacement",
]

CSV_DECIMALS = 6  # a millionth of a pixel: far below any estimate's precision
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


# ----------------------------------------------------------------------------- paths and URLs


def is_url(path) -> bool:
    """A store named by an fsspec URL (``s3://``, ``gs://``, ...), not a local path.

    ``file://`` URLs are local paths and are handled as such.
    """
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def local_path(path):
    """The local path of a path or a ``file://`` URL (anything else as it is)."""
    if isinstance(path, str) and path.startswith("file://"):
        return Path(path[len("file://") :])
    return Path(path) if isinstance(path, str | os.PathLike) else path


def _probe_options(url: str, storage_options: dict | None) -> dict:
    """Storage options for a quick check: connect in 2 s, one attempt, a fresh client.

    A run keeps the user's options (and the library's retries for transient errors);
    only the check before it must fail fast when the endpoint cannot be reached.
    """
    options = {**(storage_options or {}), "skip_instance_cache": True}
    if url.split("://", 1)[0] in ("s3", "s3a"):
        config = {"connect_timeout": 2, "retries": {"max_attempts": 1}}
        options["config_kwargs"] = {**config, **options.get("config_kwargs", {})}
    return options


def _store_error(url: str, error: BaseException) -> XregError:
    """One line naming what went wrong with a store and how to fix it."""
    chain, cause = [], error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        why = (
            "no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a "
            "profile), or pass --storage-option key=... --storage-option secret=..."
        )
    elif any(isinstance(e, PermissionError) for e in chain) or "access denied" in text:
        why = (
            "access denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or --storage-option key=/secret=) and the bucket's permissions"
        )
    elif names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionError",
        "ClientConnectorError",
        "ServerTimeoutError",
        "TimeoutError",
        "ConnectionRefusedError",
    }:
        why = (
            "cannot reach the storage endpoint; check the URL, the network and the endpoint "
            "(AWS_ENDPOINT_URL or --storage-option endpoint_url=...)"
        )
    elif "bucket does not exist" in text or "nosuchbucket" in text:
        why = "the bucket does not exist; create it or correct the URL"
    elif any(isinstance(e, FileNotFoundError) for e in chain):
        why = "no such store"
    elif any(isinstance(e, ImportError) for e in chain):
        why = f"{error}; install the fsspec backend for this protocol (s3: `pip install s3fs`)"
    else:
        why = f"{type(error).__name__}: {error}"
    return XregError(f"{url}: {why}.")


def check_store(url: str, storage_options: dict | None = None, *, write: bool = False) -> bool:
    """Check a store named by a URL before any work; whether it exists.

    For reading (``write=False``) the store must exist; for writing, the bucket (the
    first part of the path) must.  Fails within seconds with an :class:`XregError`
    naming the cause: a missing bucket or store, credentials refused, an endpoint
    that cannot be reached.
    """
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url, **_probe_options(url, storage_options))
        if hasattr(fs, "retries"):
            fs.retries = 1  # s3fs retries with back-off; a check must not wait for that
        if not write:
            fs.info(root)
            return True
        bucket = root.split("/", 1)[0]
        fs.info(bucket)
        return fs.exists(root)
    except XregError:
        raise
    except Exception as error:  # backends raise many kinds; the user needs one line
        raise _store_error(url, error) from error


def _filesystem(url: str, storage_options: dict | None = None):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except Exception as error:
        raise _store_error(url, error) from error


@contextlib.contextmanager
def _zarr_quietly():
    """Silence Zarr's notes on format-3 consolidated metadata (we write and read it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
        # Our run records (xreg-run.json, xreg-done/) live inside the output store.
        warnings.filterwarnings("ignore", message="Object at xreg-")
        yield


def to_zarr(dataset: xr.Dataset, path, **options):
    """``dataset.to_zarr(path, **options)``, with text labels stored portably.

    Fixed-width numpy strings (the ``axis`` coordinate) have no stable Zarr v3
    encoding; variable-length strings do.
    """
    text = {
        name: var.astype(object) for name, var in dataset.variables.items() if var.dtype.kind == "U"
    }
    with _zarr_quietly():
        return dataset.assign(text).to_zarr(path, **options)


def _existing(path) -> Path:
    """``path`` as a Path, if it names something that exists."""
    if not isinstance(path, str | os.PathLike):
        raise XregError(f"Expected a path (str or pathlib.Path); got {type(path).__name__}.")
    path = Path(path)
    if not path.exists():
        raise XregError(f"{path}: no such file or directory.")
    return path


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists()


def open_movie(
    path,
    var: str | None = None,
    *,
    chunk_frames: int | None = None,
    storage_options: dict | None = None,
) -> xr.DataArray:
    """Open a movie lazily from a Zarr store, an OME-Zarr image or a TIFF stack.

    Parameters
    ----------
    path : str or path-like
        A Zarr store (directory, or an fsspec URL such as ``s3://bucket/movie.zarr``),
        an OME-Zarr image (NGFF 0.4 or 0.5, local; see :func:`open_ome_zarr`) or a
        local TIFF file (read through tifffile's Zarr interface, page by page, with
        dims from its metadata: a ``channel`` dim for multi-channel ImageJ, OME and
        ScanImage files).
    var : str, optional
        The variable of a Zarr store; default: its only data variable.
    chunk_frames : int, optional
        Frames per chunk; default: the store's own chunking (TIFF: 64 frames).
    storage_options : dict, optional
        For fsspec, when ``path`` is a URL (credentials, ``endpoint_url``, ...);
        what boto and fsspec read from the environment applies too.

    Returns
    -------
    xarray.DataArray
        Dask-backed, frames whole in space.

    Raises
    ------
    XregError
        If the file is missing, not a Zarr store or TIFF, or ``var`` is wrong.
    """
    if chunk_frames is not None:
        chunk_frames = validate.whole(chunk_frames, "chunk_frames", minimum=1)
    zarr_options = {}
    if is_url(path):
        if path.lower().rstrip("/").endswith(TIFF_SUFFIXES):
            raise XregError(
                f"{path}: TIFF stacks are read from local files only; copy it here, or "
                "convert it to Zarr (`xreg register` reads a local TIFF)."
            )
        check_store(path, storage_options)
        zarr_options = {"storage_options": storage_options} if storage_options else {}
    else:
        path = _existing(local_path(path))
    if not is_url(path) and path.name.lower().endswith(TIFF_SUFFIXES):
        movie = _open_tiff(path)
        chunk_frames = chunk_frames or 64
    elif not is_url(path) and path.is_dir() and _is_ome_zarr(path):
        movie = open_ome_zarr(path)
    elif is_url(path) or (path.is_dir() and _is_zarr(path)):
        try:
            with _zarr_quietly():
                dataset = xr.open_zarr(path, **zarr_options)
        except Exception as error:  # zarr raises many kinds; the user needs one line
            raise XregError(f"{path}: not a readable Zarr store ({error}).") from error
        names = list(dataset.data_vars)
        if var is None:
            candidates = [n for n in names if dataset[n].ndim >= 3]
            if len(candidates) != 1:
                raise XregError(
                    f"{path} holds variables {names}; say which movie to use with --var."
                )
            var = candidates[0]
        if var not in dataset:
            raise XregError(f"{path} has no variable {var!r}; it has {names}. Use --var.")
        movie = dataset[var]
        # Labels are small: load them, so their own chunking cannot clash with the movie's.
        movie = movie.assign_coords(
            {name: coord.load() for name, coord in movie.coords.items() if name not in movie.dims}
        )
    else:
        raise XregError(f"{path}: expected a Zarr store (directory) or a TIFF file (.tif).")
    if "time" not in movie.dims:
        raise XregError(
            f"{path}: the movie has dims {movie.dims}; its frame dim must be called 'time'. "
            "Rename it in the store, or register from Python with `dim=...`."
        )
    # Frames whole in space; a channel dim keeps its stored chunks, so that estimating on
    # one channel reads only that channel (`register` gives each task every channel).
    spatial = [d for d in movie.dims if d != "time" and d not in _xarray.EXTRA_DIMS]
    if chunk_frames:
        movie = movie.chunk({"time": int(chunk_frames), **{d: -1 for d in spatial}})
    elif movie.chunks is not None and any(len(movie.chunksizes[d]) > 1 for d in spatial):
        # The frames only: `movie.chunk` would chunk the (loaded) labels too, a per-frame
        # label into one chunk that no longer matches the movie's time chunks.
        whole = {movie.dims.index(d): -1 for d in spatial}
        movie = movie.copy(data=movie.data.rechunk(whole))
    _xarray.split_dims(movie)  # 2-D or 3-D frames of numbers (+ channels), or a clear error
    return movie


# tifffile's axis letters: time, depth, channel (and RGB samples), rows, columns.
TIFF_DIMS = {"T": "time", "Z": "z", "C": "channel", "S": "channel", "Y": "y", "X": "x"}


def _open_tiff(path: Path) -> xr.DataArray:
    """A TIFF's first series with dims from its metadata (ImageJ, OME, ScanImage).

    tifffile names the axes (``TZCYX`` for an ImageJ hyperstack, ``TCYX`` for an
    OME-TIFF, ``ZTCYX`` for ScanImage); a plain stack of pages (``I``, ``Q``) is
    taken as time.  Older ScanImage files keep the channel count in their
    description; their interleaved pages are split into a ``channel`` dim.
    """
    import dask.array as dsa
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, kind = series.axes, series.kind
            channels = _scanimage_channels(tif) if kind == "scanimage" else 1
            store = series.aszarr()
        array = zarr.open(store, mode="r")
    except Exception as error:
        raise XregError(f"{path}: not a readable TIFF ({error}).") from error
    if isinstance(array, zarr.Group):  # pyramidal files: the full-resolution level
        array = array["0"]
    data = dsa.from_zarr(array)
    if "C" in axes and "S" in axes:
        axes = axes.replace("S", "s")  # RGB samples of each channel: not the channel
    dims = [TIFF_DIMS.get(a, a.lower()) for a in axes]
    if "time" not in dims and axes[0] in "IQ":
        dims[0] = "time"  # a plain stack of pages
    if channels > 1 and dims[0] == "time" and "channel" not in dims:
        if data.shape[0] % channels:
            raise XregError(
                f"{path}: ScanImage saved {channels} channels, but the file has "
                f"{data.shape[0]} pages, not a multiple of it."
            )
        # Interleaved pages: frame 0 channel 0, frame 0 channel 1, frame 1 channel 0, ...
        data = data.reshape((data.shape[0] // channels, channels) + data.shape[1:])
        dims.insert(1, "channel")
    if len(dims) < 3 or "time" not in dims:
        raise XregError(
            f"{path}: expected a stack of frames (time, [channel,] [z,] y, x); "
            f"got axes {axes!r} of shape {data.shape}."
        )
    return xr.DataArray(data, dims=tuple(dims), name=path.name.split(".")[0])


def _scanimage_channels(tif) -> int:
    """Channels saved, from an older ScanImage description (3.x, 4, 5); 1 if unsaid."""
    import re

    text = tif.pages.first.description + "\n" + tif.pages.first.software
    found = re.search(r"(?:numberOfChannelsSave|channelsSave|channelSave)\s*=\s*(\S+)", text)
    if not found:
        return 1
    value = found.group(1).strip("'\"")
    if value.startswith("["):  # a list of saved channel ids: [1;2] or [1 2]
        return len(re.findall(r"\d+", value))
    return int(value) if value.isdigit() and "numberOf" in found.group(0) else 1


def _is_ome_zarr(path: Path) -> bool:
    """Whether a Zarr store is an OME-Zarr image (NGFF 0.4 ``.zattrs``, 0.5 ``zarr.json``)."""
    for name in (".zattrs", "zarr.json"):
        file = path / name
        if file.is_file():
            attrs = json.loads(file.read_text() or "{}")
            attrs = attrs.get("attributes", attrs)
            if "multiscales" in attrs.get("ome", attrs):
                return True
    return False


# NGFF axis types -> xreg dims; space axes keep their names (z, y, x).
NGFF_DIMS = {"time": "time", "channel": "channel"}


def open_ome_zarr(path) -> xr.DataArray:
    """The full-resolution image of an OME-Zarr store (NGFF 0.4 or 0.5), labelled.

    Read with ``ome-zarr`` (the ``zarr`` extra).  Dims come from the
    ``multiscales`` axes: the ``time`` axis becomes ``time``, the ``channel`` axis
    ``channel`` (labelled by the ``omero`` channel names when there are any), and
    space axes keep their names.  Each axis gets a coordinate from the level's
    scale and translation, in the axis' unit (``units`` attr), so that evenly
    spaced physical pixel sizes reach ``estimate``'s ``pixel_size``.

    Raises
    ------
    XregError
        If ``ome-zarr`` is missing or the store is not an OME-Zarr image.
    """
    try:
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Multiscales, Reader
    except ImportError as error:
        raise XregError("Reading OME-Zarr needs ome-zarr: `pip install xreg[zarr]`.") from error
    path = Path(path)
    with _zarr_quietly(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on format versions
        location = parse_url(str(path))
        nodes = [] if location is None else list(Reader(location)())
    images = [n for n in nodes if any(isinstance(s, Multiscales) for s in n.specs)]
    if not images:
        raise XregError(f"{path}: no OME-Zarr image (no `multiscales` metadata) found.")
    node = images[0]
    meta = node.metadata
    data = node.data[0]  # the full-resolution level
    axes = meta.get("axes") or [{"name": n} for n in "tczyx"[-data.ndim :]]
    dims = [NGFF_DIMS.get(a.get("type"), a["name"]) for a in axes]
    transforms = (meta.get("coordinateTransformations") or [[]])[0]
    scale, offset = [1.0] * data.ndim, [0.0] * data.ndim
    for transform in transforms:
        if transform.get("type") == "scale":
            scale = [float(v) for v in transform["scale"]]
        elif transform.get("type") == "translation":
            offset = [float(v) for v in transform["translation"]]
    coords = {}
    for i, (dim, axis) in enumerate(zip(dims, axes, strict=True)):
        if dim == "channel":
            names = meta.get("channel_names")
            if names and len(names) == data.shape[i] and len(set(names)) == len(names):
                coords[dim] = (dim, [str(n) for n in names])
            continue
        attrs = {"units": axis["unit"]} if axis.get("unit") else {}
        coords[dim] = (dim, offset[i] + scale[i] * np.arange(data.shape[i]), attrs)
    return xr.DataArray(data, dims=tuple(dims), coords=coords, name=meta.get("name") or "image")


def open_reference(
    spec: str,
    movie: xr.DataArray,
    *,
    clip=_xarray.CLIP_PERCENTILES,
    storage_options: dict | None = None,
) -> xr.DataArray:
    """The reference a command line asked for.

    ``auto`` builds one (``movie.reg.reference(clip=clip)``); ``mean`` is the mean of all
    frames (one extra pass); ``first:N`` the mean of the first N frames; anything
    else is a file: ``.npy``, a TIFF, or a Zarr/netCDF whose first variable is a frame,
    a local path or an fsspec URL (read with ``storage_options``).
    """
    spatial = [d for d in movie.dims if d != "time"]
    # Each kind records its `method`, which the displacements carry as `reference_method`.
    if spec == "auto":
        return movie.reg.reference(clip=clip)
    if spec == "mean":
        return movie.mean("time").compute().assign_attrs(method="mean of all frames")
    if spec.startswith("first:"):
        try:
            count = int(spec.split(":", 1)[1])
        except ValueError:
            count = 0
        if count < 1:
            raise XregError(f"--reference {spec}: N must be a positive whole number (first:10).")
        first = movie.isel(time=slice(0, count)).mean("time").compute()
        return first.assign_attrs(method=f"mean of the first {count} frames")
    if is_url(spec):  # a frame is small: read from a copy
        check_store(spec, storage_options)
        read = lambda local: open_reference(str(local), movie, clip=clip)  # noqa: E731
        return _read_remote_file(spec, storage_options, read)
    path = local_path(spec)
    if not path.exists():
        raise XregError(f"--reference {spec}: not a file, and not one of auto, mean, first:N.")
    try:
        image = np.squeeze(_read_frame(path))
    except Exception as error:
        raise XregError(
            f"--reference {spec}: not a readable frame ({type(error).__name__}: {error}); "
            "give a .npy, a TIFF, or a Zarr/netCDF holding one frame."
        ) from error
    shape = tuple(movie.sizes[d] for d in spatial)
    if image.shape != shape:
        raise XregError(
            f"--reference {spec}: holds an array of shape {image.shape}; expected one frame "
            f"of the movie, {dict(zip(spatial, shape, strict=True))}."
        )
    return xr.DataArray(image, dims=spatial, attrs={"method": f"file {spec}"})


def _read_frame(path: Path) -> np.ndarray:
    """The array a reference file holds: .npy, TIFF, or the first variable of a
    Zarr/netCDF."""
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.name.lower().endswith(TIFF_SUFFIXES):
        import tifffile

        return tifffile.imread(path)
    with xr.open_dataset(path, engine="zarr" if _is_zarr(path) else None) as dataset:
        return dataset[next(iter(dataset.data_vars))].values


def check_displacement_path(
    path, *, overwrite: bool = False, blocks: bool = False, storage_options: dict | None = None
):
    """The path displacements will be written to, checked before any work is done.

    ``blocks``: the displacements are piecewise (per block), which a CSV cannot hold.
    ``path`` may be an fsspec URL (returned as a string, local paths as a ``Path``).

    Raises
    ------
    XregError
        If it exists and ``overwrite`` is false, or its suffix is not .zarr, .nc, .csv
        (not .csv for ``blocks``); for a URL, if its bucket cannot be written to.
    """
    path = path if is_url(path) else local_path(path)
    exists = check_store(path, storage_options, write=True) if is_url(path) else path.exists()
    if exists and not overwrite:
        raise XregError(f"{path} exists; pass --overwrite to replace it.")
    suffix = Path(str(path).rstrip("/")).suffix
    if suffix not in (".zarr", ".nc", ".csv"):
        raise XregError(f"{path}: save displacements as .zarr, .nc or .csv.")
    if blocks and suffix == ".csv":
        raise XregError(
            f"{path}: a CSV holds one row per frame, and piecewise displacements have one "
            "per block. Save them as .zarr or .nc."
        )
    return path


def write_displacement(
    shifts: xr.DataArray, path, *, overwrite: bool = False, storage_options: dict | None = None
) -> None:
    """Save displacements as Zarr (``.zarr``), netCDF (``.nc``) or CSV (``.csv``).

    The CSV has one row per frame: the time coordinate, one column per axis, the
    quality and ``bad_frame``; numbers are rounded to ``CSV_DECIMALS`` decimals (a
    millionth of a pixel), so that they read as written (``-0.1``, not
    ``-0.09999999999999432``).
    ``path`` may be an fsspec URL, written with ``storage_options``.
    """
    if is_url(path):
        _write_remote_displacement(shifts, path, overwrite, storage_options)
        return
    path = check_displacement_path(path, overwrite=overwrite, blocks=shifts.ndim > 2)
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if path.suffix == ".csv":
        table = shifts.to_pandas().round(CSV_DECIMALS)
        table.columns = [str(c) for c in table.columns]
        table[_xarray.QUALITY] = np.round(shifts[_xarray.QUALITY].values, CSV_DECIMALS)
        if _xarray.BAD_FRAME in shifts.coords:
            table[_xarray.BAD_FRAME] = shifts[_xarray.BAD_FRAME].values
        table.to_csv(path)
    elif path.suffix == ".nc":
        shifts.to_dataset().to_netcdf(path)
    else:
        to_zarr(shifts.to_dataset(), path, mode="w-")


def read_displacement(path, *, storage_options: dict | None = None) -> xr.DataArray:
    """Read displacements written by :func:`write_displacement` or ``xreg register``.

    ``path`` may be an fsspec URL, read with ``storage_options``.
    """
    import pandas as pd

    options = {}
    if is_url(path):
        check_store(path, storage_options)
        if not path.rstrip("/").endswith(".zarr"):  # a CSV or netCDF: read from a copy
            return _read_remote_file(path, storage_options, read_displacement)
        options = {"storage_options": storage_options} if storage_options else {}
    else:
        path = _existing(local_path(path))
    if not is_url(path) and path.suffix == ".csv":
        table = pd.read_csv(path, index_col=0)
        if _xarray.QUALITY not in table or table.shape[1] < 2:
            raise XregError(
                f"{path}: expected the CSV `xreg estimate` writes (time, one column per "
                f"axis, {_xarray.QUALITY}); got columns {list(table.columns)}."
            )
        labels = {_xarray.QUALITY: ("time", table.pop(_xarray.QUALITY).values)}
        if _xarray.BAD_FRAME in table:
            labels[_xarray.BAD_FRAME] = ("time", table.pop(_xarray.BAD_FRAME).values.astype(bool))
        shifts = xr.DataArray(
            table.values,
            dims=("time", _xarray.AXIS),
            coords={"time": table.index.values, _xarray.AXIS: list(table.columns)},
            name=_xarray.DISPLACEMENT,
        )
        return DisplacementArray(shifts.assign_coords(labels))
    engine = "zarr" if is_url(path) or _is_zarr(path) else None
    with _zarr_quietly(), xr.open_dataset(path, engine=engine, **options) as dataset:
        if _xarray.DISPLACEMENT not in dataset:
            raise XregError(
                f"{path} holds no {_xarray.DISPLACEMENT!r} variable; it has "
                f"{list(dataset.data_vars)}. Read a file `xreg estimate` or `register` wrote."
            )
        shifts = dataset[_xarray.DISPLACEMENT].load()
    axes = [str(a) for a in shifts[_xarray.AXIS].values]
    return DisplacementArray(shifts.assign_coords({_xarray.AXIS: axes}))  # .plot() draws lines


def _write_remote_displacement(shifts, url: str, overwrite: bool, storage_options) -> None:
    """:func:`write_displacement` to a store: Zarr directly, CSV and netCDF via a copy."""
    import tempfile

    options = {"overwrite": overwrite, "blocks": shifts.ndim > 2}
    check_displacement_path(url, storage_options=storage_options, **options)
    fs, root = _filesystem(url, storage_options)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    if url.rstrip("/").endswith(".zarr"):
        options = {"storage_options": storage_options} if storage_options else {}
        to_zarr(shifts.to_dataset(), url, mode="w-", **options)
        return
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / Path(root).name
        write_displacement(shifts, local)
        fs.put_file(str(local), root)


def _read_remote_file(url: str, storage_options, read):
    """``read(local copy)`` of one object (or small Zarr store) of a store."""
    import tempfile

    fs, root = _filesystem(url, storage_options)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / Path(root).name
        fs.get(root, str(local), recursive=True)
        return read(local)
