"""The shared option checks, used once at every public boundary.

Every public entry point (the accessor and the glue it calls, :class:`xreg.CrossCorr`,
:mod:`xreg.spark`, the command line, the readers) checks its options here, before any
work, and passes the *normalised* values on; the core trusts them.  Each check raises
:class:`~xreg.XregError` naming the option, what it got and what to pass instead.

Whole-number options take Python or numpy integers, or floats with a whole value
(``10.0``); they refuse ``2.5``, ``"10"``, ``None`` and ``True`` rather than guess.
Only numpy, the error class and two constants of the core are imported: no xarray.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import re

import numpy as np

from .core.piecewise import block_counts
from .core.shift import MODES
from .errors import XregError

__all__ = [
    "ESTIMATE_OPTIONS",
    "MAX_BLOCKS",
    "MAX_BLOCK_COVERAGE",
    "MAX_ITERATIONS",
    "MAX_UPSAMPLE_FACTOR",
    "METHODS",
    "MIN_FRAME_SIZE",
    "WEIGHTS",
    "block_layout",
    "channel",
    "check_max_shift",
    "check_upsample_factor",
    "check_weights",
    "choice",
    "dim_names",
    "estimate_options",
    "fill_value",
    "frame_shape",
    "keywords",
    "interpolation",
    "per_axis",
    "percentiles",
    "real",
    "reference_options",
    "shift_table",
    "whole",
]

# 1/1000 px is already finer than the noise allows on any real frame (the Cramer-Rao
# bound of a clean 512 x 512 frame is about 0.003 px), and each 4 x finer refinement
# stage costs another DFT: beyond this, work grows and precision does not.
MAX_UPSAMPLE_FACTOR = 1000
# Smallest frame axis for the windowed estimator: the search range, a zero band at the
# border and a ramp must fit, with content left to compare (also the smallest block).
MIN_FRAME_SIZE = 8
# Piecewise layouts: at most this many blocks per frame, and the blocks together at
# most this many times the frame's pixels (overlap 0.75 in 2-D; 0.6 in 3-D).  Plans,
# crops and spectra grow with both; suite2p's default is 7 x 7 = 49 blocks.
MAX_BLOCKS = 4096
MAX_BLOCK_COVERAGE = 16


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _bounds_text(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def whole(value, name: str, *, minimum=None, maximum=None, fix: str = "") -> int:
    """``value`` as an int, if it is a whole number within ``minimum..maximum``.

    Parameters
    ----------
    value
        An int, a numpy integer, or a float with a whole value.
    name : str
        The option's name, for the message.
    minimum, maximum : int, optional
        Inclusive bounds.
    fix : str, optional
        Extra advice appended to the message.

    Returns
    -------
    int

    Raises
    ------
    XregError
        If ``value`` is not a whole number (``2.5``, ``"10"``, ``None``, ``True``) or
        lies outside the bounds.
    """
    number = None
    if _is_real(value) and math.isfinite(value) and float(value) == int(value):
        number = int(value)
    if (
        number is None
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
    ):
        raise XregError(
            f"`{name}` must be a whole number{_bounds_text(minimum, maximum)}; "
            f"got {value!r}.{' ' + fix if fix else ''}"
        )
    return number


def real(
    value,
    name: str,
    *,
    minimum=None,
    maximum=None,
    below=None,
    above=None,
    finite: bool = True,
    fix: str = "",
) -> float:
    """``value`` as a float within bounds (``minimum``/``maximum`` inclusive,
    ``above``/``below`` exclusive), finite unless ``finite=False``.

    Raises
    ------
    XregError
        If ``value`` is not a real number (``"0.5"``, ``None``, ``True``), is NaN or
        infinite (when ``finite``), or lies outside the bounds.
    """
    number = float(value) if _is_real(value) else None
    bad = (
        number is None
        or (finite and not math.isfinite(number))
        or (minimum is not None and not number >= minimum)
        or (maximum is not None and not number <= maximum)
        or (above is not None and not number > above)
        or (below is not None and not number < below)
    )
    if bad:
        limits = []
        if minimum is not None:
            limits.append(f">= {minimum}")
        if above is not None:
            limits.append(f"> {above}")
        if maximum is not None:
            limits.append(f"<= {maximum}")
        if below is not None:
            limits.append(f"< {below}")
        kind = "a finite number" if finite else "a number"
        where = f" {' and '.join(limits)}" if limits else ""
        raise XregError(f"`{name}` must be {kind}{where}; got {value!r}.{' ' + fix if fix else ''}")
    return number


def choice(value, name: str, choices):
    """``value``, if it is one of ``choices`` (compared as strings are).

    Raises
    ------
    XregError
        Otherwise, listing the choices.
    """
    if not (isinstance(value, str) and value in choices):
        raise XregError(f"`{name}` must be one of {', '.join(map(str, choices))}; got {value!r}.")
    return value


def channel(value, labels, name: str = "channel", dim: str = "channel") -> int:
    """The position of the channel ``value`` names among ``labels``.

    ``value`` is a label, compared as given, as text and as a number (so that the text
    ``"561"`` from a command line names the label ``561``), or a position ``0..n-1``
    when the labels are not numbers (text labels; a dim without a coordinate passes
    its positions as labels): a number never means a position where it could mean a
    label.

    Parameters
    ----------
    value : str, int or None
        The channel asked for; None raises (a movie with channels needs one).
    labels : sequence
        The labels of the channel dim, in order (plain Python values).
    name : str
        The option's name, for the message (``--channel`` on the command line).
    dim : str
        The channel dim's name, for the message.

    Returns
    -------
    int

    Raises
    ------
    XregError
        If ``value`` is None, names no channel or more than one, listing the channels.
    """
    labels = list(labels)
    if not labels:
        raise XregError(f"The movie's {dim!r} dim is empty: there is no {dim} to estimate on.")
    available = f"its {dim}s are {labels}"
    numeric = all(_is_real(label) for label in labels)
    if not numeric:
        available += f", or positions 0..{len(labels) - 1}"
    if value is None:
        example = f"{name} {labels[0]}" if name.startswith("-") else f"{name}={labels[0]!r}"
        raise XregError(
            f"The movie has {len(labels)} {dim}s ({available}): estimate on one with "
            f"`{name}`, e.g. `{example}`; its displacements move every {dim}."
        )
    text = str(value).strip()
    found = [i for i, label in enumerate(labels) if label == value or str(label) == text]
    if not found and numeric:
        try:
            number = float(text)
        except ValueError:
            number = None
        found = [i for i, label in enumerate(labels) if label == number]
    if not found and not numeric and re.fullmatch(r"\d+", text):
        found = [int(text)] if int(text) < len(labels) else []
    if len(found) != 1:
        why = "names several" if found else "is not one of the movie's"
        raise XregError(f"`{name}` {value!r} {why} {dim}s; {available}.")
    return found[0]


def keywords(options: dict, function, name: str) -> None:
    """Refuse keyword arguments that ``function`` (a public method whose ``**options``
    are passed on) does not take: a typo, named with the nearest keyword.

    Raises
    ------
    XregError
        Naming the first unknown keyword and the ones ``name`` takes.
    """
    known = [
        keyword
        for keyword, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is parameter.KEYWORD_ONLY
    ]
    for keyword in options:
        if keyword not in known:
            near = difflib.get_close_matches(str(keyword), known, n=1)
            hint = f" Did you mean `{near[0]}`?" if near else ""
            raise XregError(
                f"`{name}` takes no option `{keyword}`.{hint} It takes: {', '.join(known)}."
            )


def dim_names(value, name: str, dims, *, exclude=()) -> tuple:
    """A sequence of distinct names, each one of ``dims`` and none of ``exclude``.

    Raises
    ------
    XregError
        If ``value`` is a string or not a sequence, repeats a name, or names a dim
        that is not there (or excluded), listing the dims to choose from.
    """
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise XregError(f"`{name}` must be a tuple of dim names, e.g. ('y', 'x'); got {value!r}.")
    names = tuple(value)
    allowed = [d for d in dims if d not in exclude]
    if len(set(names)) != len(names) or any(d not in allowed for d in names):
        raise XregError(f"`{name}` {names} must be distinct dims among {tuple(allowed)}.")
    return names


def per_axis(value, name: str, ndim: int, *, minimum=0, maximum=None) -> tuple[int, ...]:
    """One whole number per spatial axis: a single number is used for every axis.

    Parameters
    ----------
    value : int or sequence of int
    name : str
    ndim : int
        Number of spatial axes.
    minimum, maximum : int, optional
        Inclusive bounds for every entry.

    Returns
    -------
    tuple of int

    Raises
    ------
    XregError
        If ``value`` has the wrong length or an entry is not a whole number in range.
    """
    values = [value] * ndim if _is_real(value) else value
    if isinstance(values, str | bytes) or not np.iterable(values):
        values = None
    else:
        values = list(values)
    if values is None or len(values) != ndim:
        raise XregError(
            f"`{name}` must be a whole number or one per spatial axis ({ndim}); got {value!r}."
        )
    return tuple(whole(v, name, minimum=minimum, maximum=maximum) for v in values)


def percentiles(value, name: str = "clip") -> tuple[float, float] | None:
    """``value`` as two percentiles ``0 <= low < high <= 100``, or None.

    Raises
    ------
    XregError
        If it is anything else.
    """
    if value is None:
        return None
    parts = None if isinstance(value, str | bytes) or not np.iterable(value) else list(value)
    if parts is not None and len(parts) == 2:
        try:
            low, high = (real(p, name, minimum=0, maximum=100) for p in parts)
        except XregError:
            low = high = None
        if low is not None and low < high:
            return low, high
    raise XregError(
        f"`{name}` must be two percentiles of the reference, 0 <= low < high <= 100, "
        f"or None; got {value!r}."
    )


def check_upsample_factor(value) -> int:
    """``upsample_factor``: a whole number from 1 to 1000 (1: whole pixels; above 1 the
    continuous subpixel estimate, the value setting its fallback lattice)."""
    return whole(
        value,
        "upsample_factor",
        minimum=1,
        maximum=MAX_UPSAMPLE_FACTOR,
        fix=f"{MAX_UPSAMPLE_FACTOR} (1/{MAX_UPSAMPLE_FACTOR} px) is already finer than "
        "the noise of any real frame allows.",
    )


def interpolation(order, mode) -> tuple[int, str]:
    """``order`` (0..5) and ``mode`` (one of :data:`MODES`) for moving frames."""
    mode = choice(mode, "mode", MODES)
    return whole(order, "order", minimum=0, maximum=5), mode


def fill_value(cval, dtype=None) -> float:
    """``cval`` for ``mode="constant"``: a number the movie's ``dtype`` can hold (NaN
    only for float data)."""
    if dtype is None:
        return real(cval, "cval", finite=False)
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    fix = f"The movie's dtype {dtype} holds {info.min:g} to {info.max:g}"
    fix += "; fill with a number in that range." if dtype.kind in "iu" else " (and NaN)."
    value = real(cval, "cval", finite=dtype.kind in "iu", fix=fix)
    if math.isfinite(value) and not float(info.min) <= value <= float(info.max):
        raise XregError(f"`cval` {value:g} does not fit the movie. {fix}")
    return value


def frame_shape(shape, *, whole_frame: bool = False) -> tuple[int, ...]:
    """Check that frames of ``shape`` are large enough to register.

    The windowed estimator needs at least :data:`MIN_FRAME_SIZE` pixels per axis (room
    for the search range, the zero band at the border and content to compare);
    whole-frame circular correlation (thunder's CrossCorr) needs 2.

    Raises
    ------
    XregError
        If an axis is shorter, naming it and the fix.
    """
    shape = tuple(int(n) for n in shape)
    smallest = 2 if whole_frame else MIN_FRAME_SIZE
    if min(shape) < smallest:
        raise XregError(
            f"Frames of shape {shape} are too small to register: each axis needs at least "
            f"{smallest} pixels, to hold the search range (`max_shift`) plus content to "
            "compare. Register larger frames, or register a volume's planes one by one "
            "(a 2-D movie per plane)."
            + (
                " If an axis is not spatial (a camera, a channel xreg does not know), select "
                "it (`movie.isel(cam=0)`) or name the spatial dims: `spatial_dims=('y', 'x')`."
                if len(shape) == 3
                else ""
            )
        )
    return shape


def check_max_shift(value, shape) -> tuple[int, ...] | None:
    """The search range per axis (None: the default), at most ``(n - 1) // 2``.

    Searching ``-h..h`` along an axis of ``n`` pixels must not visit a shift twice.

    Raises
    ------
    XregError
        If it is not a whole number per axis >= 0, or does not fit the frame.
    """
    if value is None:
        return None
    values = per_axis(value, "max_shift", len(shape), minimum=0)
    for size, h in zip(shape, values, strict=True):
        if h > (size - 1) // 2:
            raise XregError(
                f"`max_shift` {values} does not fit frames of shape {tuple(shape)}: along an "
                f"axis of {size} pixels it can be at most {(size - 1) // 2}. Pass a smaller "
                "`max_shift` (or None for the default)."
            )
    return values


def block_layout(shape, block_size, overlap) -> tuple[tuple[int, ...], float]:
    """Piecewise blocks: ``block_size`` per axis (>= 8) and ``overlap`` in [0, 1), with
    a block count and total block area in proportion to the frame.

    Returns
    -------
    (tuple of int, float)
        The block size per axis, capped at the frame size, and the overlap.

    Raises
    ------
    XregError
        If an option is malformed, or the layout needs more than :data:`MAX_BLOCKS`
        blocks or more than :data:`MAX_BLOCK_COVERAGE` times the frame's pixels.
    """
    overlap = real(overlap, "overlap", minimum=0, below=1)
    sizes = per_axis(block_size, "block_size", len(shape), minimum=MIN_FRAME_SIZE)
    sizes = tuple(min(b, n) for b, n in zip(sizes, shape, strict=True))
    counts = block_counts(shape, sizes, overlap)
    blocks = math.prod(counts)
    coverage = blocks * math.prod(sizes) / math.prod(shape)
    if blocks > MAX_BLOCKS or coverage > MAX_BLOCK_COVERAGE:
        raise XregError(
            f"`block_size` {sizes} with `overlap` {overlap} cuts frames of shape "
            f"{tuple(shape)} into {blocks} blocks covering {coverage:.0f} x the frame; the "
            f"limits are {MAX_BLOCKS} blocks and {MAX_BLOCK_COVERAGE} x (work and memory "
            "grow with both). Use larger blocks or less overlap (e.g. overlap=0.5)."
        )
    return sizes, overlap


# Register-and-average rounds of `reference()`, at most (suite2p uses 8; more change
# nothing measurable, and each costs a pass over the sample).
MAX_ITERATIONS = 20
METHODS = ("rigid", "piecewise")
# How the rigid estimate weighs pixels: None (equally), "noise" (by the fitted noise).
WEIGHTS = ("noise",)
# The keys of `estimate_options`' result, in the order of `estimate`'s signature.
ESTIMATE_OPTIONS = (
    "upsample_factor",
    "max_shift",
    "smooth",
    "bad_frame_threshold",
    "method",
    "block_size",
    "overlap",
    "min_quality",
    "clip",
    "weights",
)


def check_weights(value) -> str | None:
    """``weights``: None (equal weights) or one of :data:`WEIGHTS`."""
    if value is None or (isinstance(value, str) and value in WEIGHTS):
        return None if value is None else str(value)
    raise XregError(
        f"`weights` must be None (every pixel weighs the same) or 'noise' (each by its "
        f"noise, fitted on the first frames: more accurate under shot noise); "
        f"got {value!r}."
    )


def estimate_options(
    shape,
    *,
    upsample_factor=10,
    max_shift=None,
    smooth=None,
    bad_frame_threshold=6.0,
    method="rigid",
    block_size=(128, 128),
    overlap=0.5,
    min_quality=0.3,
    clip=(1, 99),
    weights=None,
    whole_frame=False,
) -> dict:
    """Every option of ``estimate`` checked for frames of ``shape``, normalised.

    The one check behind the accessor, :mod:`xreg.spark`, :class:`xreg.CrossCorr` and
    the command line.  The piecewise options are checked only for
    ``method="piecewise"`` (otherwise they are ignored, and returned as given).

    Returns
    -------
    dict
        The options (keys :data:`ESTIMATE_OPTIONS`) as the core takes them.

    Raises
    ------
    XregError
        Naming the first option that is wrong and the fix.
    """
    frame_shape(shape, whole_frame=whole_frame)
    method = choice(method, "method", METHODS)
    options = {
        "upsample_factor": check_upsample_factor(upsample_factor),
        "max_shift": None if whole_frame else check_max_shift(max_shift, shape),
        "smooth": None if smooth is None else whole(smooth, "smooth", minimum=1),
        # inf never flags a frame; NaN is refused.
        "bad_frame_threshold": real(
            bad_frame_threshold, "bad_frame_threshold", above=0, finite=False
        ),
        "method": method,
        "block_size": block_size,
        "overlap": overlap,
        "min_quality": min_quality,
        "clip": percentiles(clip),
        "weights": check_weights(weights),
    }
    if options["upsample_factor"] == 1:
        # Whole pixels: there is no subpixel fit to weigh (nor to record as weighted).
        options["weights"] = None
    if method == "piecewise":
        sizes, overlap = block_layout(shape, block_size, overlap)
        options.update(
            block_size=sizes,
            overlap=overlap,
            min_quality=real(
                min_quality,
                "min_quality",
                minimum=0,
                maximum=1,
                fix="It is a correlation peak: blocks below it take the rigid displacement.",
            ),
        )
    return options


def reference_options(
    shape, *, n_frames=200, iterations=4, upsample_factor=10, max_shift=None, clip=(1, 99)
) -> dict:
    """Every option of ``reference`` checked for frames of ``shape``, normalised."""
    frame_shape(shape)
    return {
        "n_frames": whole(n_frames, "n_frames", minimum=1),
        "iterations": whole(iterations, "iterations", minimum=0, maximum=MAX_ITERATIONS),
        "upsample_factor": check_upsample_factor(upsample_factor),
        "max_shift": check_max_shift(max_shift, shape),
        "clip": percentiles(clip),
    }


def shift_table(values, shape) -> np.ndarray:
    """Displacements ``(n, [*blocks,] ndim)`` for frames of ``shape``: finite ones at most
    the frame's size per axis (beyond that nothing of the frame is left; NaN or inf
    leaves a frame unmoved, as documented)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.where(np.isfinite(values), np.abs(values), 0.0)
    limit = np.asarray(shape, dtype=np.float64)
    if values.size and np.any(finite > limit):
        axis = int(np.argmax(np.any(finite.reshape(-1, len(shape)) > limit, axis=0)))
        raise XregError(
            f"`shifts` hold a displacement of {float(finite[..., axis].max()):g} px along axis "
            f"{axis}, larger than the frame ({shape[axis]} px): nothing of the frame would be "
            "left. Check the shifts (units are pixels), or mark frames to leave as NaN."
        )
    return values
