"""Reading movies (Zarr, TIFF), writing results (Zarr, netCDF, CSV), resumable runs.

:func:`register_to_zarr` is what ``xreg register`` runs: estimate, then apply and
write chunk by chunk, recording each finished chunk so that a killed run resumes
where it stopped and ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
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
    "register_to_zarr",
    "to_zarr",
    "write_displacement",
]

RUN_FILE = "xreg-run.json"  # inside OUTPUT: the settings and state of the run that owns it
DONE_FILE = "xreg-done.txt"  # inside OUTPUT: one line per output chunk fully written
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


@contextlib.contextmanager
def _zarr_quietly():
    """Silence Zarr's notes on format-3 consolidated metadata (we write and read it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
        # Our run records (xreg-run.json, xreg-done.txt) live inside the output store.
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


def open_movie(path, var: str | None = None, *, chunk_frames: int | None = None) -> xr.DataArray:
    """Open a movie lazily from a Zarr store or a TIFF stack.

    Parameters
    ----------
    path : str or path-like
        A Zarr store (directory) or a TIFF file (read through tifffile's Zarr
        interface, page by page).
    var : str, optional
        The variable of a Zarr store; default: its only data variable.
    chunk_frames : int, optional
        Frames per chunk; default: the store's own chunking (TIFF: 64 frames).

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
    path = _existing(path)
    if path.name.lower().endswith(TIFF_SUFFIXES):
        movie = _open_tiff(path)
        chunk_frames = chunk_frames or 64
    elif path.is_dir() and _is_zarr(path):
        try:
            with _zarr_quietly():
                dataset = xr.open_zarr(path)
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
    spatial = [d for d in movie.dims if d != "time"]
    if chunk_frames:
        movie = movie.chunk({"time": int(chunk_frames), **{d: -1 for d in spatial}})
    elif movie.chunks is not None and any(len(movie.chunksizes[d]) > 1 for d in spatial):
        movie = movie.chunk({d: -1 for d in spatial})
    _xarray.frame_dims(movie)  # 2-D or 3-D frames of numbers, or a clear error
    return movie


def _open_tiff(path: Path) -> xr.DataArray:
    import dask.array as dsa
    import tifffile
    import zarr

    try:
        store = tifffile.imread(path, aszarr=True)
        array = zarr.open(store, mode="r")
    except Exception as error:
        raise XregError(f"{path}: not a readable TIFF ({error}).") from error
    if isinstance(array, zarr.Group):  # pyramidal files: the full-resolution level
        array = array["0"]
    if array.ndim not in (3, 4):
        raise XregError(
            f"{path}: expected a stack of frames (time, y, x) or (time, z, y, x); "
            f"got shape {array.shape}."
        )
    dims = ("time", "y", "x") if array.ndim == 3 else ("time", "z", "y", "x")
    return xr.DataArray(dsa.from_zarr(array), dims=dims, name=path.name.split(".")[0])


def open_reference(
    spec: str, movie: xr.DataArray, *, clip=_xarray.CLIP_PERCENTILES
) -> xr.DataArray:
    """The reference a command line asked for.

    ``auto`` builds one (``movie.reg.reference(clip=clip)``); ``mean`` is the mean of all
    frames (one extra pass); ``first:N`` the mean of the first N frames; anything
    else is a file: ``.npy``, a TIFF, or a Zarr/netCDF whose first variable is a frame.
    """
    spatial = [d for d in movie.dims if d != "time"]
    if spec == "auto":
        return movie.reg.reference(clip=clip)
    if spec == "mean":
        return movie.mean("time").compute()
    if spec.startswith("first:"):
        try:
            count = int(spec.split(":", 1)[1])
        except ValueError:
            count = 0
        if count < 1:
            raise XregError(f"--reference {spec}: N must be a positive whole number (first:10).")
        return movie.isel(time=slice(0, count)).mean("time").compute()
    path = Path(spec)
    if not path.exists():
        raise XregError(f"--reference {spec}: not a file, and not one of auto, mean, first:N.")
    if path.suffix == ".npy":
        image = np.load(path, allow_pickle=False)
    elif path.name.lower().endswith(TIFF_SUFFIXES):
        import tifffile

        image = tifffile.imread(path)
    else:
        with xr.open_dataset(path, engine="zarr" if _is_zarr(path) else None) as dataset:
            image = dataset[next(iter(dataset.data_vars))].values
    image = np.squeeze(image)
    if image.ndim != len(spatial):
        raise XregError(
            f"--reference {spec}: holds an array of shape {image.shape}; expected one frame "
            f"of the movie's {len(spatial)} spatial dims {tuple(spatial)}."
        )
    return xr.DataArray(image, dims=spatial)


def check_displacement_path(path, *, overwrite: bool = False, blocks: bool = False) -> Path:
    """The path displacements will be written to, checked before any work is done.

    ``blocks``: the displacements are piecewise (per block), which a CSV cannot hold.

    Raises
    ------
    XregError
        If it exists and ``overwrite`` is false, or its suffix is not .zarr, .nc, .csv
        (not .csv for ``blocks``).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise XregError(f"{path} exists; pass --overwrite to replace it.")
    if path.suffix not in (".zarr", ".nc", ".csv"):
        raise XregError(f"{path}: save displacements as .zarr, .nc or .csv.")
    if blocks and path.suffix == ".csv":
        raise XregError(
            f"{path}: a CSV holds one row per frame, and piecewise displacements have one "
            "per block. Save them as .zarr or .nc."
        )
    return path


def write_displacement(shifts: xr.DataArray, path, *, overwrite: bool = False) -> None:
    """Save displacements as Zarr (``.zarr``), netCDF (``.nc``) or CSV (``.csv``).

    The CSV has one row per frame: the time coordinate, one column per axis and
    the quality.
    """
    path = check_displacement_path(path, overwrite=overwrite, blocks=shifts.ndim > 2)
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if path.suffix == ".csv":
        table = shifts.to_pandas()
        table.columns = [str(c) for c in table.columns]
        table[_xarray.QUALITY] = shifts[_xarray.QUALITY].values
        table.to_csv(path)
    elif path.suffix == ".nc":
        shifts.to_dataset().to_netcdf(path)
    else:
        to_zarr(shifts.to_dataset(), path, mode="w-")


def read_displacement(path) -> xr.DataArray:
    """Read displacements written by :func:`write_displacement` or ``xreg register``."""
    import pandas as pd

    path = _existing(path)
    if path.suffix == ".csv":
        table = pd.read_csv(path, index_col=0)
        if _xarray.QUALITY not in table or table.shape[1] < 2:
            raise XregError(
                f"{path}: expected the CSV `xreg estimate` writes (time, one column per "
                f"axis, {_xarray.QUALITY}); got columns {list(table.columns)}."
            )
        quality = table.pop(_xarray.QUALITY)
        shifts = xr.DataArray(
            table.values,
            dims=("time", _xarray.AXIS),
            coords={"time": table.index.values, _xarray.AXIS: list(table.columns)},
            name=_xarray.DISPLACEMENT,
        )
        return DisplacementArray(shifts.assign_coords({_xarray.QUALITY: ("time", quality.values)}))
    engine = "zarr" if _is_zarr(path) else None
    with _zarr_quietly(), xr.open_dataset(path, engine=engine) as dataset:
        if _xarray.DISPLACEMENT not in dataset:
            raise XregError(
                f"{path} holds no {_xarray.DISPLACEMENT!r} variable; it has "
                f"{list(dataset.data_vars)}. Read a file `xreg estimate` or `register` wrote."
            )
        shifts = dataset[_xarray.DISPLACEMENT].load()
    axes = [str(a) for a in shifts[_xarray.AXIS].values]
    return DisplacementArray(shifts.assign_coords({_xarray.AXIS: axes}))  # .plot() draws lines


# ----------------------------------------------------------------------------- resumable runs


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _claim_output(output: Path, settings: dict, overwrite: bool) -> dict | None:
    """Make OUTPUT ours. Returns the recorded state of a matching earlier run, if any."""
    run_file = output / RUN_FILE
    if output.exists():
        if overwrite:
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        elif not run_file.exists():
            raise XregError(
                f"{output} exists and was not started by xreg register; "
                "pass --overwrite to replace it."
            )
        else:
            state = json.loads(run_file.read_text())
            if state.get("settings") != settings:
                raise XregError(
                    f"{output} holds a run with other settings or input; pass --overwrite "
                    "to start again, or repeat the earlier command to resume it."
                )
            return state
    output.mkdir(parents=True)
    state = {"settings": settings, "stage": "estimating"}
    _atomic_write(run_file, json.dumps(state, indent=1))
    return state


def _clear_except_run_file(output: Path) -> None:
    for entry in output.iterdir():
        if entry.name != RUN_FILE:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _chunk_groups(movie: xr.DataArray, group: int):
    """Consecutive groups of ``group`` time chunks: (chunk indices, frame slice)."""
    bounds = np.cumsum((0,) + movie.chunksizes["time"])
    count = len(bounds) - 1
    for first in range(0, count, group):
        last = min(first + group, count)
        yield range(first, last), slice(int(bounds[first]), int(bounds[last]))


def register_to_zarr(
    movie: xr.DataArray,
    output,
    *,
    reference: Callable[[], xr.DataArray],
    settings: dict,
    estimate_options: dict | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> xr.Dataset:
    """Register ``movie`` into a new Zarr store, resumably.

    Parameters
    ----------
    movie : xarray.DataArray
        Dask-backed movie, ``(time, ...)``, chunked over time.
    output : path-like
        The Zarr store to create.  If it holds an unfinished run with the same
        ``settings``, that run resumes; a store this function did not start is
        never touched unless ``overwrite``.
    reference : callable
        Returns the reference; called only when displacements must be estimated.
    settings : dict
        JSON-serialisable description of the run (input, options); a resumed run
        must match it.
    estimate_options : dict, optional
        Keyword arguments of :meth:`xreg.accessor.RegAccessor.estimate` (for example
        ``upsample_factor``, ``method="piecewise"``, ``block_size``).
    overwrite : bool, default False
    workers : int, optional
        Chunks computed at once (default: all cores); memory grows with it.
    progress : callable, optional
        Called as ``progress(stage, frames)`` when frames are done, ``stage`` being
        ``"estimate"`` or ``"write"``.

    Returns
    -------
    xarray.Dataset
        The output store, opened lazily: the registered movie (same name, dims,
        coords, attrs, dtype and chunks as ``movie``), ``displacement`` and
        ``reference``.

    Notes
    -----
    The output is written chunk group by chunk group; a group is recorded in
    ``xreg-done.txt`` only after its data are on disk, so a run killed at any point
    resumes by rewriting at most the groups it was writing.  Every value is a
    deterministic function of the input, so the result is identical to an
    uninterrupted run's.
    """
    output = Path(output)
    name = movie.name if movie.name is not None else "movie"
    group = workers or os.cpu_count() or 1
    state = _claim_output(output, settings, overwrite)
    run_file = output / RUN_FILE
    done_file = output / DONE_FILE
    report = progress or (lambda stage, frames: None)

    if state["stage"] == "estimating":
        _clear_except_run_file(output)  # anything here is from a run killed mid-estimate
        ref = reference()
        parts = []
        for _, frames in _chunk_groups(movie, group):
            part = movie.isel(time=frames).reg.estimate(ref, **(estimate_options or {}))
            parts.append(part)
            report("estimate", frames.stop - frames.start)
        shifts = xr.concat(parts, dim="time", combine_attrs="override")
        template = xr.Dataset(
            {
                name: movie.reg.apply(shifts),
                _xarray.DISPLACEMENT: shifts,
                "reference": ref.astype(np.float32),
            },
            attrs={"history": "registered by xreg"},
        )
        for variable in template.variables.values():
            variable.encoding = {}
        # Stored in the movie's time chunks: `quality` becomes a coordinate of the whole
        # store, and chunks that disagree along time would trip up readers.
        frames_per_chunk = movie.chunksizes["time"][0]
        for name_along_time in [_xarray.DISPLACEMENT, *shifts.coords]:
            variable = template[name_along_time].variable
            if variable.dims[:1] == ("time",) and name_along_time != "time":
                variable.encoding["chunks"] = (frames_per_chunk,) + variable.shape[1:]
        # Writes metadata, coordinates and the small variables; the movie comes later.
        to_zarr(template, output, mode="a", compute=False)
        state["stage"] = "writing"
        _atomic_write(run_file, json.dumps(state, indent=1))

    with _zarr_quietly():
        shifts = xr.open_zarr(output)[_xarray.DISPLACEMENT].load()
    fixed = movie.reg.apply(shifts)
    unlabelled = [c for c in fixed.coords if "time" not in fixed[c].dims]
    done = set(done_file.read_text().split()) if done_file.exists() else set()
    with open(done_file, "a") as log:
        for chunks, frames in _chunk_groups(movie, group):
            if all(str(i) in done for i in chunks):
                report("write", frames.stop - frames.start)
                continue
            region = {"time": frames}
            part = fixed.isel(region).to_dataset(name=name).drop_vars(unlabelled)
            to_zarr(part, output, region=region)
            log.write("".join(f"{i}\n" for i in chunks))
            log.flush()
            os.fsync(log.fileno())
            report("write", frames.stop - frames.start)
    state["stage"] = "complete"
    _atomic_write(run_file, json.dumps(state, indent=1))
    with _zarr_quietly():
        return xr.open_zarr(output)
