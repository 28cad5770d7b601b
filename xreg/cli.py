"""The ``xreg`` command: register, estimate, demo.

Errors print one line (``xreg: error: ...``) and exit non-zero; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from . import validate
from ._xarray import CLIP_PERCENTILES
from .errors import XregError
from .pipeline import COMPRESSIONS

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _number(text: str):
    """A command-line number: an int if it is written as one, else a float, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _checked(check):
    """An argparse type from a validator: a number from the command line, checked."""

    def convert(text: str):
        try:
            return check(_number(text))
        except XregError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _positive_int(name: str):
    return _checked(lambda value: validate.whole(value, name, minimum=1))


def _percentiles(text: str) -> tuple[float, float] | None:
    if text.strip().lower() == "none":
        return None
    try:
        return validate.percentiles([_number(part) for part in text.split(",")])
    except XregError:
        raise argparse.ArgumentTypeError(
            f"expected two percentiles LOW,HIGH with 0 <= LOW < HIGH <= 100, or none; got {text!r}"
        ) from None


def _scan_phase(text: str):
    """``--scan-phase``: auto, none, or an offset in pixels."""
    word = text.strip().lower()
    if word in ("auto", "none"):
        return word
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(
            f"expected auto, none or an offset in pixels (e.g. 1.5); got {text!r}"
        )
    return value


def _storage_option(text: str) -> tuple[list[str], object]:
    """KEY=VALUE: the value read as JSON if it is (true, 3, {...}), else as text.

    A dotted KEY sets a nested option: ``client_kwargs.region_name=eu-west-1``.
    """
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (for example endpoint_url=http://host:9000), got {text!r}"
        )
    try:
        value = json.loads(value)
    except ValueError:
        pass
    return key.strip().split("."), value


def _storage_options(pairs) -> dict | None:
    """The ``--storage-option`` flags as one dict for fsspec (None without any)."""
    if not pairs:
        return None
    options: dict = {}
    for keys, value in pairs:
        level = options
        for key in keys[:-1]:
            level = level.setdefault(key, {})
        level[keys[-1]] = value
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xreg", description="Register (motion-correct) image time series."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub):
        sub.add_argument(
            "input", help="Zarr store, OME-Zarr or TIFF stack: dims (time, [channel,] [z,] y, x)"
        )
        sub.add_argument("--var", help="variable of the Zarr store (default: its only movie)")
        sub.add_argument(
            "--channel",
            metavar="NAME_OR_INDEX",
            help="for a movie with channels (OME-Zarr, ImageJ or OME-TIFF, a Zarr movie with "
            "a channel dim): the channel to estimate on, by label (red) or by position "
            "(0, 1, ...; when the labels are not numbers); register moves every channel",
        )
        sub.add_argument(
            "--reference",
            default="auto",
            help="auto (built from the movie, default), mean, first:N, or a file "
            "(.npy, .tif, .zarr, .nc) holding one frame",
        )
        sub.add_argument(
            "--upsample-factor",
            type=_checked(validate.check_upsample_factor),
            default=10,
            help="subpixel precision 1/N px (default 10; 1: whole pixels)",
        )
        sub.add_argument(
            "--method",
            choices=("rigid", "piecewise"),
            default="rigid",
            help="rigid (default): one shift per frame; piecewise: one per block, for "
            "non-rigid motion",
        )
        sub.add_argument(
            "--block-size",
            type=_checked(
                lambda value: validate.whole(value, "block-size", minimum=validate.MIN_FRAME_SIZE)
            ),
            default=128,
            help="piecewise: block size in pixels per axis (default 128)",
        )
        sub.add_argument(
            "--overlap",
            type=_checked(lambda value: validate.real(value, "overlap", minimum=0, below=1)),
            default=0.5,
            help="piecewise: fraction of a block shared with its neighbour (default 0.5)",
        )
        sub.add_argument(
            "--clip",
            type=_percentiles,
            default=",".join(str(p) for p in CLIP_PERCENTILES),
            help="LOW,HIGH: percentiles of the reference that frames and reference are "
            "clipped to before comparing (default %(default)s); none: no clipping",
        )
        sub.add_argument(
            "--weights",
            choices=validate.WEIGHTS,
            default=None,
            help="noise: weigh each pixel by its noise (fitted on the first frames): near "
            "the physical limit under shot noise, at about 0.9 x the rate (default: equal "
            "weights)",
        )
        sub.add_argument(
            "--scan-phase",
            type=_scan_phase,
            default="none",
            metavar="auto|none|VALUE",
            help="resonant (bidirectional) scanning: the offset of the odd lines along x, "
            "undone before motion is estimated; auto: measured on the movie; none "
            "(default): no correction; VALUE: odd lines sampled at x + VALUE px",
        )
        sub.add_argument(
            "--chunk-frames",
            type=_positive_int("chunk-frames"),
            help="frames per chunk (default: the input's chunking)",
        )
        sub.add_argument(
            "--workers",
            type=_positive_int("workers"),
            help="threads (default: all cores); memory grows with it",
        )
        sub.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        cluster = sub.add_argument_group(
            "stores and clusters",
            "INPUT, OUTPUT and a --reference file may be fsspec URLs (s3://bucket/movie.zarr, "
            "gs://..., file://...); credentials and endpoint come from the environment as "
            "boto and fsspec read them (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, AWS_PROFILE, "
            "FSSPEC_S3_ENDPOINT_URL, ...) or from --storage-option.",
        )
        cluster.add_argument(
            "--storage-option",
            dest="storage_options",
            metavar="KEY=VALUE",
            type=_storage_option,
            action="append",
            help="fsspec option for every URL, repeatable: endpoint_url=http://host:9000, "
            "anon=true, key=..., client_kwargs.region_name=... (values read as JSON if they are)",
        )
        cluster.add_argument(
            "--scheduler",
            metavar="ADDRESS",
            help="run on an existing Dask cluster: its scheduler's address (tcp://HOST:8786) "
            "or scheduler file",
        )
        cluster.add_argument(
            "--processes",
            type=_positive_int("processes"),
            metavar="N",
            help="start a local Dask cluster of N worker processes (--workers threads each, "
            "default 1) for this run",
        )

    register = commands.add_parser(
        "register",
        help="register a movie into a new Zarr store (resumes if interrupted)",
        description="Estimate each frame's displacement, move the frames back and write "
        "the registered movie, the displacements and the reference to OUTPUT (Zarr). "
        "One pass: each chunk is read once, estimated, moved back and written; if killed, "
        "the same command resumes from the chunks already written.",
    )
    common(register)
    register.add_argument("output", help="the Zarr store to create")
    register.add_argument(
        "--order",
        type=_checked(lambda value: validate.interpolation(value, "nearest")[0]),
        default=1,
        help="spline order that moves the frames: 0 nearest, 1 linear (default, as "
        "`.reg.apply`), 3 cubic (keeps more detail, costs more)",
    )
    register.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default=COMPRESSIONS[0],
        help="of the registered movie: Blosc level 1 with zstd or lz4, or none; auto "
        "(default): zstd for integer movies, none for float ones (benchmarks/RESULTS.md)",
    )

    estimate = commands.add_parser(
        "estimate",
        help="estimate displacements only",
        description="Estimate each frame's displacement and save it (.zarr, .nc or .csv).",
    )
    common(estimate)
    estimate.add_argument("output", help="file to write: .zarr, .nc or .csv")

    demo = commands.add_parser(
        "demo",
        help="register a synthetic movie with known drift and report the error",
        description="Make a synthetic two-photon movie with known drift (Zarr), register "
        "it with `xreg register`, print the error against the truth and save two figures "
        "(displacement.png, summary.png) beside the movie and the registered store.",
    )
    demo.add_argument("--output", default="demo-output", help="folder for the files")
    demo.add_argument(
        "--frames", type=_positive_int("frames"), default=400, help="frames in the movie"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _progress(total: int, quiet: bool, label: str):
    from .pipeline import progress_bar

    return progress_bar(total, quiet=quiet, label=label)


@contextmanager
def _scheduler(workers):
    import dask

    with dask.config.set(scheduler="threads", num_workers=workers):
        yield


def _cluster(args):
    """Where the run's Dask work goes: --scheduler, --processes, or --workers threads."""
    from .cluster import connect

    return connect(args.scheduler, args.processes, args.workers)


def _estimate_options(args) -> dict:
    """Keyword arguments of ``.reg.estimate`` from the command line."""
    options = {"upsample_factor": args.upsample_factor, "method": args.method, "clip": args.clip}
    if args.weights is not None:
        # Only when asked: a run record written without the option still compares equal.
        options["weights"] = args.weights
    if args.method == "piecewise":
        options.update(block_size=args.block_size, overlap=args.overlap)
    return options


def _check_options(args, movie):
    """``--channel`` and every estimate option against the movie's frames, before any
    work is done; the chosen channel (None for a movie without channels)."""
    from .pipeline import choose_channel

    channel = choose_channel(movie, args.channel, name="--channel")
    one = _on_channel(movie, channel)
    frame_shape = tuple(size for dim, size in one.sizes.items() if dim != "time")
    validate.estimate_options(frame_shape, **_estimate_options(args))
    return channel


def _on_channel(movie, channel):
    """The frames of the chosen channel (the movie itself without channels)."""
    return movie if channel is None else movie.isel({channel.dim: channel.position})


def _without_scan_phase(movie, choice, workers, channel=None):
    """The movie with its scan phase undone (lazily), as ``--scan-phase`` asks: first,
    so that motion is estimated and applied on the corrected frames.  ``auto``
    measures it on the chosen channel, the one whose structure registration uses."""
    if choice == "none":
        return movie
    with _scheduler(workers):
        offset = _on_channel(movie, channel).reg.scan_phase() if choice == "auto" else choice
    corrected = movie.reg.correct_scan_phase(offset)
    # The offset used rides along in the registered movie's attrs.
    return corrected.assign_attrs(xreg_scan_phase=float(offset))


def _store_name(path: str) -> str:
    """A store's name for comparing and recording: a URL as given, a path resolved."""
    from .io import is_url, local_path

    return path.rstrip("/") if is_url(path) else str(local_path(path).resolve())


def _check_not_input(args) -> None:
    """OUTPUT must not hold, be, or lie inside the input or a ``--reference`` file: they
    are never written, nor removed by ``--overwrite`` (which removes OUTPUT whole)."""
    target = _store_name(args.output)
    sources = {"INPUT": args.input}
    if args.reference not in ("auto", "mean") and not args.reference.startswith("first:"):
        sources["the --reference file"] = args.reference
    for name, source in sources.items():
        source = _store_name(source)
        if target == source or target.startswith(source + "/"):
            raise XregError(f"OUTPUT is {name} or inside it; xreg never writes into its input.")
        if source.startswith(target + "/"):
            raise XregError(
                f"OUTPUT holds {name}; xreg never writes over its input (--overwrite would "
                "remove it). Choose an OUTPUT that does not contain it."
            )


def _settings(args) -> dict:
    options = _estimate_options(args)
    if options["clip"] is not None:
        options["clip"] = list(options["clip"])  # as JSON gives it back
    return {
        "input": _store_name(args.input),
        "var": args.var,
        "reference": args.reference,
        "chunk_frames": args.chunk_frames,
        "compression": args.compression,
        "scan_phase": args.scan_phase,
        "order": args.order,
        # Every estimator setting, so that a run made with other settings is not resumed.
        "estimate": options,
    }


def run_register(args, runner=None) -> int:
    """``xreg register``; ``runner``: see :func:`xreg.pipeline.run` (Spark's, for one)."""
    from . import io, pipeline

    options = _storage_options(args.storage_options)
    _check_not_input(args)
    movie = io.open_movie(
        args.input, args.var, chunk_frames=args.chunk_frames, storage_options=options
    )
    channel = _check_options(args, movie)
    movie = _without_scan_phase(movie, args.scan_phase, args.workers, channel)
    output = args.output
    if io.is_url(output):
        io.check_store(output, options, write=True)  # its bucket, within seconds
    else:
        output = str(io.local_path(output))
    n = movie.sizes["time"]
    with _cluster(args), _progress(n, args.quiet, "register") as update:
        pipeline.run(
            movie,
            output,
            # Built from (or checked against) the chosen channel's frames.
            reference=lambda: io.open_reference(
                args.reference, _on_channel(movie, channel), clip=args.clip, storage_options=options
            ),
            settings=_settings(args),
            estimate_options=_estimate_options(args),
            overwrite=args.overwrite,
            compression=args.compression,
            order=args.order,
            progress=update,
            storage_options=options,
            runner=runner,
            channel=None if channel is None else channel.label,
        )
    if not args.quiet:
        print(f"registered {n} frames into {args.output}", file=sys.stderr)
    return 0


def run_estimate(args) -> int:
    from . import io

    options = _storage_options(args.storage_options)
    _check_not_input(args)
    output = io.check_displacement_path(
        args.output,
        overwrite=args.overwrite,
        blocks=args.method == "piecewise",
        storage_options=options,
    )
    movie = io.open_movie(
        args.input, args.var, chunk_frames=args.chunk_frames, storage_options=options
    )
    channel = _check_options(args, movie)
    movie = _without_scan_phase(_on_channel(movie, channel), args.scan_phase, args.workers)
    with _cluster(args):
        reference = io.open_reference(
            args.reference, movie, clip=args.clip, storage_options=options
        )
        shifts = movie.reg.estimate(reference, **_estimate_options(args))
    if channel is not None:
        shifts = shifts.assign_attrs(channel.attrs())
    io.write_displacement(shifts, output, overwrite=args.overwrite, storage_options=options)
    if not args.quiet:
        print(f"estimated {movie.sizes['time']} displacements into {output}", file=sys.stderr)
    return 0


def run_demo(args) -> int:
    from .demo import run

    with _scheduler(None):
        return run(Path(args.output), n_frames=args.frames, quiet=args.quiet)


def _return_freed_memory_to_the_system() -> None:
    """Serve large buffers from mmap, released on free, so a long run's memory stays flat.

    glibc otherwise raises its mmap threshold as buffers are freed and then serves
    frame-sized buffers from a heap that fragments over thousands of chunks.  Only
    for this command's own process; the library never changes allocator settings.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and name:
        m_mmap_threshold = -3
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).mallopt(m_mmap_threshold, 1024 * 1024)


def main(argv=None, *, runner=None) -> int:
    """Entry point of the ``xreg`` command (``runner``: of ``register``, for Spark)."""
    args = _parser().parse_args(argv)
    _return_freed_memory_to_the_system()
    commands = {"register": run_register, "estimate": run_estimate, "demo": run_demo}
    try:
        if runner is not None and args.command == "register":
            return run_register(args, runner)
        return commands[args.command](args)
    except XregError as error:
        print(f"xreg: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("xreg: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else error.strerror or error
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        print(f"xreg: error: {reason}{where}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
