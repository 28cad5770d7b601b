"""The ``xreg`` command: register, estimate, demo.

Errors print one line (``xreg: error: ...``) and exit non-zero; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xreg", description="Register (motion-correct) image time series."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub):
        sub.add_argument("input", help="Zarr store or TIFF stack with dims (time, [z,] y, x)")
        sub.add_argument("--var", help="variable of the Zarr store (default: its only movie)")
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
        "it with `xreg register`, print the error against the truth and save a plot.",
    )
    demo.add_argument("--output", default="demo-output", help="folder for the files")
    demo.add_argument("--frames", type=_positive_int("frames"), default=400)
    demo.add_argument("--quiet", action="store_true")
    return parser


def _progress(total: int, quiet: bool, label: str):
    from .pipeline import progress_bar

    return progress_bar(total, quiet=quiet, label=label)


@contextmanager
def _scheduler(workers):
    import dask

    with dask.config.set(scheduler="threads", num_workers=workers):
        yield


def _estimate_options(args) -> dict:
    """Keyword arguments of ``.reg.estimate`` from the command line."""
    options = {"upsample_factor": args.upsample_factor, "method": args.method, "clip": args.clip}
    if args.method == "piecewise":
        options.update(block_size=args.block_size, overlap=args.overlap)
    return options


def _check_options(args, movie) -> None:
    """Every estimate option against the movie's frames, before any work is done."""
    frame_shape = tuple(size for dim, size in movie.sizes.items() if dim != "time")
    validate.estimate_options(frame_shape, **_estimate_options(args))


def _without_scan_phase(movie, choice, workers):
    """The movie with its scan phase undone (lazily), as ``--scan-phase`` asks: first,
    so that motion is estimated and applied on the corrected frames."""
    if choice == "none":
        return movie
    with _scheduler(workers):
        offset = movie.reg.scan_phase() if choice == "auto" else choice
    corrected = movie.reg.correct_scan_phase(offset)
    # The offset used rides along in the registered movie's attrs.
    return corrected.assign_attrs(xreg_scan_phase=float(offset))


def _settings(args) -> dict:
    options = _estimate_options(args)
    if options["clip"] is not None:
        options["clip"] = list(options["clip"])  # as JSON gives it back
    return {
        "input": str(Path(args.input).resolve()),
        "var": args.var,
        "reference": args.reference,
        "chunk_frames": args.chunk_frames,
        "compression": args.compression,
        "scan_phase": args.scan_phase,
        # Every estimator setting, so that a run made with other settings is not resumed.
        "estimate": options,
    }


def run_register(args) -> int:
    from . import io, pipeline

    movie = io.open_movie(args.input, args.var, chunk_frames=args.chunk_frames)
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise XregError("OUTPUT is the INPUT; xreg never writes into its input.")
    _check_options(args, movie)
    movie = _without_scan_phase(movie, args.scan_phase, args.workers)
    n = movie.sizes["time"]
    with _scheduler(args.workers), _progress(n, args.quiet, "register") as update:
        pipeline.run(
            movie,
            str(args.output),
            reference=lambda: io.open_reference(args.reference, movie, clip=args.clip),
            settings=_settings(args),
            estimate_options=_estimate_options(args),
            overwrite=args.overwrite,
            compression=args.compression,
            progress=update,
        )
    if not args.quiet:
        print(f"registered {n} frames into {args.output}", file=sys.stderr)
    return 0


def run_estimate(args) -> int:
    from . import io

    output = io.check_displacement_path(
        args.output, overwrite=args.overwrite, blocks=args.method == "piecewise"
    )
    movie = io.open_movie(args.input, args.var, chunk_frames=args.chunk_frames)
    _check_options(args, movie)
    movie = _without_scan_phase(movie, args.scan_phase, args.workers)
    with _scheduler(args.workers):
        reference = io.open_reference(args.reference, movie, clip=args.clip)
        shifts = movie.reg.estimate(reference, **_estimate_options(args))
    io.write_displacement(shifts, output, overwrite=args.overwrite)
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


def main(argv=None) -> int:
    """Entry point of the ``xreg`` command."""
    args = _parser().parse_args(argv)
    _return_freed_memory_to_the_system()
    commands = {"register": run_register, "estimate": run_estimate, "demo": run_demo}
    try:
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
