"""Bad and extreme input, one table: every case raises XregError naming the option, or
returns a result checked against the ground truth the case builds.

Each case runs in a worker thread with a deadline (CASE_SECONDS), enforced here: a case
that hangs fails the test instead of stalling the suite (the first report of issue 14
was an estimate that ran for 14 minutes).
"""

from __future__ import annotations

import contextlib
import functools
import io as stdio
import threading
import time

import numpy as np
import pytest
import tifffile
import xarray as xr
from conftest import smooth_image

from xreg import CrossCorr, XregError, io, validate
from xreg import spark as xspark
from xreg.cli import main

# A generous deadline for cases that take milliseconds: the machine is shared.
CASE_SECONDS = 5.0
SIZE = 64
# Whole-pixel displacements, inside the default border band (8 px on 64 px frames).
TRUTH = np.array([[0, 0], [3, -2], [-5, 4], [1, 7], [-6, -1]], dtype=float)


@functools.cache
def scene() -> np.ndarray:
    """A smooth random image larger than the frames, so motion brings new content in."""
    return smooth_image((SIZE + 32, SIZE + 32), seed=4) * 1000


def frames_at(shifts, size=SIZE) -> np.ndarray:
    """Views of the scene moved by each whole-pixel displacement (content enters at the
    border, as in a real movie): frame = scipy.ndimage.shift(reference, d)."""
    big = scene()
    return np.stack(
        [big[16 - int(a) : 16 - int(a) + size, 16 - int(b) : 16 - int(b) + size] for a, b in shifts]
    )


def reference(size=SIZE) -> np.ndarray:
    return frames_at([(0, 0)], size)[0]


def movie(dtype="float64", backend="numpy", frames=None) -> xr.DataArray:
    values = frames_at(TRUTH) if frames is None else frames
    da = xr.DataArray(values.astype(dtype), dims=("time", "y", "x"))
    da = da.assign_coords(time=np.arange(len(values)) * 0.5)
    return da.chunk(time=2) if backend == "dask" else da


def tiny(shape) -> xr.DataArray:
    values = np.random.default_rng(0).random((3, *shape))
    return xr.DataArray(values, dims=("time", "y", "x"))


def piecewise_shifts() -> xr.DataArray:
    return movie().reg.estimate(reference(), method="piecewise", block_size=32)


# --------------------------------------------------------------------------- expectations


def refused(*names):
    """XregError whose message names each of ``names``."""
    return ("error", names)


def holds(check):
    """A result, which ``check(result)`` tests against the truth (asserting)."""
    return ("ok", check)


def exact_truth(atol=1e-9):
    def check(shifts):
        np.testing.assert_allclose(shifts.values, TRUTH, atol=atol)

    return check


def cli(tmp, *args):
    """Run the command in-process; (exit code, stderr)."""
    err = stdio.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main([str(a).format(tmp=tmp) for a in args] + ["--quiet"])
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    return code, err.getvalue()


def cli_refuses(*names):
    """Exit status 2, one line of error naming each of ``names``, no traceback."""

    def check(result):
        code, err = result
        assert code == 2, err
        assert "Traceback" not in err
        assert "error:" in err.strip().splitlines()[-1]
        for name in names:
            assert name in err, err

    return ("ok", check)


def store(tmp, frames, name="in.zarr", dims=("time", "y", "x")) -> str:
    path = tmp / name
    da = xr.DataArray(frames, dims=dims, coords={dims[0]: np.arange(len(frames))})
    io.to_zarr(da.chunk({dims[0]: 2}).to_dataset(name="movie"), path, mode="w")
    return str(path)


def tif(tmp, array, name="stack.tif") -> str:
    path = tmp / name
    tifffile.imwrite(path, array)
    return str(path)


# --------------------------------------------------------------------------- ground truth


def _whole_pixel_exact(shifts):
    exact_truth()(shifts)
    assert np.all(shifts.quality.values > 0.999)


def _with_flipped_reference():
    """The movie's reference with its ``y`` labels (and rows) in reverse order."""
    labelled = movie().assign_coords(y=np.arange(SIZE))
    ref = xr.DataArray(reference(), dims=("y", "x"), coords={"y": np.arange(SIZE)})
    return labelled.reg.estimate(ref.isel(y=slice(None, None, -1)), upsample_factor=1)


def _nan_frame(shifts):
    np.testing.assert_allclose(shifts.values[[0, 1, 3, 4]], TRUTH[[0, 1, 3, 4]], atol=1e-9)
    assert shifts.values[2].tolist() == [0.0, 0.0] and shifts.quality.values[2] == 0.0
    assert bool(shifts.bad_frame.values[2])


def _nan_masked_frames():
    values = frames_at(TRUTH)
    values[1, 20:30, 10:40] = np.nan  # a blanked stripe
    values[3, ::7, ::5] = np.inf
    return movie(frames=values)


def _nan_frames():
    values = frames_at(TRUTH)
    values[2] = np.nan
    return movie(frames=values)


def _constant_frame():
    values = frames_at(TRUTH)
    values[4] = 7.0
    return movie(frames=values)


def _constant_frame_check(shifts):
    np.testing.assert_allclose(shifts.values[:4], TRUTH[:4], atol=1e-9)
    assert shifts.values[4].tolist() == [0.0, 0.0] and shifts.quality.values[4] == 0.0


def _registered_exactly(fixed, original=None):
    """Moving each frame back by its whole-pixel displacement gives the reference,
    wherever the content came from inside the frame."""
    ref = reference()
    inner = (slice(8, -8), slice(8, -8))
    for frame in np.asarray(fixed):
        np.testing.assert_allclose(frame[inner], ref[inner], rtol=1e-6)


def _unchanged(fixed):
    np.testing.assert_array_equal(np.asarray(fixed), frames_at(TRUTH))


def _nan_border(fixed):
    values = np.asarray(fixed)
    # Frame 1 moved by (3, -2): its last 3 rows and first 2 columns come from outside.
    assert np.isnan(values[1, -3:, :]).all() and np.isnan(values[1, :, :2]).all()
    _registered_exactly(np.nan_to_num(values))


def _rigid_blocks(shifts):
    """Piecewise shifts of a rigidly moved movie: the centre block's is the truth; blocks
    at the border, cut partly from beyond the frame (edge-padded), stay within a pixel."""
    np.testing.assert_allclose(shifts.isel(block_y=1, block_x=1).values, TRUTH, atol=0.15)
    assert np.abs(shifts.values - TRUTH[:, None, None]).max() < 1


def _uniform_field(field):
    # At the centre block's centre (31.5, 31.5) the field is that block's displacement.
    assert field.dims == ("time", "axis", "y", "x")
    centre = field.values[:, :, 31:33, 31:33]
    np.testing.assert_allclose(
        centre, np.broadcast_to(TRUTH[:, :, None, None], centre.shape), atol=0.15
    )
    assert np.abs(field.values - TRUTH[:, :, None, None]).max() < 1


def _reference_centred(ref):
    # Built from the frames themselves; it sits at the sample's median position, so the
    # displacements against it are the truth minus that median.
    shifts = movie().reg.estimate(ref, upsample_factor=1)
    np.testing.assert_allclose(shifts.values, TRUTH - np.median(TRUTH, axis=0), atol=1e-9)


def _crosscorr_truth(model):
    np.testing.assert_allclose(model.toarray(), TRUTH, atol=1e-9)


def _thunder_tiny(model):
    np.testing.assert_allclose(model.toarray(), [[1, 2]])


def _csv_truth(result, tmp):
    code, err = result
    assert code == 0, err
    np.testing.assert_allclose(io.read_displacement(tmp / "out.csv").values, TRUTH, atol=1e-9)


def channel_store(tmp, labels=("red", "green")) -> str:
    """A Zarr movie (time, channel, y, x): both channels moved by TRUTH, the second one
    other content; ``labels`` None stores no channel coordinate."""
    frames = np.stack([frames_at(TRUTH), 100 + frames_at(TRUTH)[:, ::-1] / 2], axis=1)
    coords = {"time": np.arange(len(TRUTH))}
    if labels is not None:
        coords["channel"] = list(labels)
    da = xr.DataArray(frames, dims=("time", "channel", "y", "x"), coords=coords)
    path = tmp / "channels.zarr"
    io.to_zarr(da.chunk(time=2).to_dataset(name="movie"), path, mode="w")
    return str(path)


def _refused_before_any_work(*names):
    """As ``cli_refuses``, for ``(result, output)``: and nothing was written to ``output``."""
    _, check = cli_refuses(*names)

    def both(pair):
        result, output = pair
        check(result)
        assert not output.exists()

    return ("ok", both)


def _tiff_frames(opened):
    assert opened.dims == ("time", "y", "x") and opened.chunks is not None
    np.testing.assert_array_equal(opened.values, frames_at(TRUTH).astype(np.uint16))


# --------------------------------------------------------------------------- the table

REF = reference


def est(**options):
    return lambda tmp: movie().reg.estimate(REF(), **options)


def pw(**options):
    return lambda tmp: movie().reg.estimate(REF(), method="piecewise", **options)


def app(shifts=None, **options):
    return lambda tmp: movie().reg.apply(TRUTH if shifts is None else shifts, **options)


def rf(**options):
    return lambda tmp: movie().reg.reference(**options)


CASES = [
    # estimate: upsample_factor (the 14-minute hang, None, 2.5 read as 2, '10' as 10)
    ("estimate-upsample-huge", est(upsample_factor=10**6), refused("upsample_factor", "1000")),
    ("estimate-upsample-none", est(upsample_factor=None), refused("upsample_factor")),
    ("estimate-upsample-2.5", est(upsample_factor=2.5), refused("upsample_factor", "2.5")),
    ("estimate-upsample-str", est(upsample_factor="10"), refused("upsample_factor", "'10'")),
    ("estimate-upsample-bool", est(upsample_factor=True), refused("upsample_factor")),
    ("estimate-upsample-0", est(upsample_factor=0), refused("upsample_factor")),
    ("estimate-upsample-neg", est(upsample_factor=-4), refused("upsample_factor")),
    ("estimate-upsample-nan", est(upsample_factor=float("nan")), refused("upsample_factor")),
    # At 1/1000 px, float32 spectra leave a lattice step or two of rounding noise.
    ("estimate-upsample-max", est(upsample_factor=1000), holds(exact_truth(2e-3))),
    ("estimate-upsample-np-int", est(upsample_factor=np.int64(4)), holds(_whole_pixel_exact)),
    (
        "estimate-upsample-whole-float",
        est(upsample_factor=20.0),
        holds(lambda s: (_whole_pixel_exact(s), s.attrs["upsample_factor"] == 20)),
    ),
    # estimate: max_shift
    ("estimate-max-shift-neg", est(max_shift=-1), refused("max_shift")),
    ("estimate-max-shift-3-axes", est(max_shift=(1, 2, 3)), refused("max_shift")),
    ("estimate-max-shift-str", est(max_shift="5"), refused("max_shift")),
    ("estimate-max-shift-too-big", est(max_shift=40), refused("max_shift", "31")),
    ("estimate-max-shift-float", est(max_shift=2.5), refused("max_shift")),
    ("estimate-max-shift-per-axis", est(max_shift=(7, 9)), holds(_whole_pixel_exact)),
    # estimate: smooth, bad_frame_threshold, method, clip, dim
    ("estimate-smooth-0", est(smooth=0), refused("smooth")),
    ("estimate-smooth-2.5", est(smooth=2.5), refused("smooth")),
    ("estimate-smooth-str", est(smooth="3"), refused("smooth")),
    ("estimate-threshold-neg", est(bad_frame_threshold=-1), refused("bad_frame_threshold")),
    ("estimate-threshold-nan", est(bad_frame_threshold=np.nan), refused("bad_frame_threshold")),
    ("estimate-threshold-str", est(bad_frame_threshold="6"), refused("bad_frame_threshold")),
    (
        "estimate-threshold-inf",
        est(bad_frame_threshold=np.inf),
        holds(lambda s: (_whole_pixel_exact(s), not s.bad_frame.values.any())),
    ),
    ("estimate-method-unknown", est(method="elastic"), refused("method", "rigid")),
    ("estimate-method-none", est(method=None), refused("method")),
    ("estimate-clip-reversed", est(clip=(99, 1)), refused("clip")),
    ("estimate-clip-str", est(clip="1,99"), refused("clip")),
    ("estimate-clip-three", est(clip=(1, 50, 99)), refused("clip")),
    ("estimate-clip-negative", est(clip=(-5, 50)), refused("clip")),
    ("estimate-clip-nan", est(clip=(1, np.nan)), refused("clip")),
    ("estimate-weights-unknown", est(weights="poisson"), refused("weights", "'noise'")),
    ("estimate-weights-true", est(weights=True), refused("weights", "None")),
    ("estimate-dim-missing", est(dim="frame"), refused("dim=")),
    # estimate: the reference
    (
        "estimate-reference-shape",
        lambda tmp: movie().reg.estimate(REF()[:, :60]),
        refused("reference", "shape"),
    ),
    (
        "estimate-reference-nan",
        lambda tmp: movie().reg.estimate(np.where(np.eye(SIZE) > 0, np.nan, REF())),
        refused("reference", "NaN"),
    ),
    (
        "estimate-reference-constant",
        lambda tmp: movie().reg.estimate(np.ones((SIZE, SIZE))),
        refused("reference", "constant"),
    ),
    (
        "estimate-reference-text",
        lambda tmp: movie().reg.estimate(np.full((SIZE, SIZE), "a")),
        refused("reference", "real numbers"),
    ),
    # estimate: the movie (dtypes, dims, shapes, NaN/inf)
    (
        "estimate-movie-complex",
        lambda tmp: movie("complex64").reg.estimate(REF()),
        refused("dtype", "astype"),
    ),
    ("estimate-movie-bool", lambda tmp: movie("bool").reg.estimate(REF()), refused("dtype")),
    (
        "estimate-frames-3x3",
        lambda tmp: tiny((3, 3)).reg.estimate(np.random.default_rng(1).random((3, 3))),
        refused("too small", "max_shift"),
    ),
    (
        "estimate-frames-1xN",
        lambda tmp: tiny((1, 40)).reg.estimate(np.random.default_rng(1).random((1, 40))),
        refused("too small"),
    ),
    (
        "estimate-frames-3x3-no-reference",
        lambda tmp: tiny((3, 3)).reg.estimate(),
        refused("too small"),
    ),
    (
        "estimate-frames-1d",
        lambda tmp: xr.DataArray(np.ones((3, 40)), dims=("time", "x")).reg.estimate(),
        refused("2-D", "3-D"),
    ),
    (
        "estimate-frames-4d",
        lambda tmp: xr.DataArray(
            np.ones((2, 2, 9, 9, 9)), dims=("time", "c", "z", "y", "x")
        ).reg.estimate(),
        refused("movie.sel(c=...)"),  # `c` is a channel dim: estimate on one channel
    ),
    (
        "estimate-no-frames",
        lambda tmp: movie().isel(time=slice(0, 0)).reg.estimate(REF()),
        refused("no frames"),
    ),
    (
        "estimate-chunked-in-space",
        lambda tmp: movie(backend="dask").chunk(y=16).reg.estimate(REF()),
        refused("chunk(y=-1, x=-1)"),
    ),
    # Integer and half-precision frames, each against the reference in the same dtype.
    (
        "estimate-uint16",
        lambda tmp: movie("uint16").reg.estimate(REF().astype("uint16")),
        holds(_whole_pixel_exact),
    ),
    (
        "estimate-int16-negative",
        lambda tmp: movie("int16", frames=frames_at(TRUTH) - 500).reg.estimate(
            (REF() - 500).astype("int16")
        ),
        holds(_whole_pixel_exact),
    ),
    (
        "estimate-float16",
        lambda tmp: movie("float16").reg.estimate(REF().astype("float16")),
        holds(_whole_pixel_exact),
    ),
    (
        "estimate-dask",
        lambda tmp: movie(backend="dask").reg.estimate(REF()),
        holds(_whole_pixel_exact),
    ),
    ("estimate-nan-frame", lambda tmp: _nan_frames().reg.estimate(REF()), holds(_nan_frame)),
    (
        "estimate-nan-and-inf-pixels",
        lambda tmp: _nan_masked_frames().reg.estimate(REF()),
        holds(exact_truth()),
    ),
    (
        "estimate-constant-frame",
        lambda tmp: _constant_frame().reg.estimate(REF()),
        holds(_constant_frame_check),
    ),
    # piecewise (the 9 GB case: overlap near 1 with small blocks)
    ("piecewise-overlap-near-1", pw(block_size=8, overlap=0.99), refused("overlap", "4096")),
    ("piecewise-overlap-0.9-small", pw(block_size=8, overlap=0.9), refused("block_size", "blocks")),
    ("piecewise-overlap-str", pw(overlap="0.5"), refused("overlap", "'0.5'")),
    ("piecewise-overlap-1", pw(overlap=1.0), refused("overlap")),
    ("piecewise-overlap-neg", pw(overlap=-0.1), refused("overlap")),
    ("piecewise-overlap-nan", pw(overlap=np.nan), refused("overlap")),
    ("piecewise-block-4", pw(block_size=4), refused("block_size", "8")),
    ("piecewise-block-3-axes", pw(block_size=(32, 32, 32)), refused("block_size")),
    ("piecewise-block-str", pw(block_size="32"), refused("block_size")),
    ("piecewise-block-float", pw(block_size=32.5), refused("block_size")),
    ("piecewise-min-quality-30", pw(min_quality=30), refused("min_quality")),
    ("piecewise-min-quality-none", pw(min_quality=None), refused("min_quality")),
    (
        "piecewise-block-larger-than-frame",
        pw(block_size=1024),
        holds(lambda s: np.testing.assert_allclose(s.values[:, 0, 0], TRUTH, atol=1e-9)),
    ),
    (
        "piecewise-rigid-motion",
        pw(block_size=32, overlap=0.5),
        holds(_rigid_blocks),
    ),
    # reference
    ("reference-n-frames-str", rf(n_frames="a"), refused("n_frames")),
    ("reference-n-frames-0", rf(n_frames=0), refused("n_frames")),
    ("reference-n-frames-2.5", rf(n_frames=2.5), refused("n_frames")),
    ("reference-iterations-neg", rf(iterations=-1), refused("iterations")),
    ("reference-iterations-huge", rf(iterations=10**6), refused("iterations", "20")),
    ("reference-iterations-none", rf(iterations=None), refused("iterations")),
    ("reference-max-shift-neg", rf(max_shift=-2), refused("max_shift")),
    ("reference-clip-one", rf(clip=(5,)), refused("clip")),
    ("reference-upsample-huge", rf(upsample_factor=10**6), refused("upsample_factor")),
    ("reference-tiny-frames", lambda tmp: tiny((3, 3)).reg.reference(), refused("too small")),
    ("reference-valid", rf(n_frames=5, iterations=2), holds(_reference_centred)),
    # apply
    ("apply-cval-str", app(mode="constant", cval="x"), refused("cval")),
    (
        "apply-cval-beyond-float32",
        lambda tmp: movie("float32").reg.apply(TRUTH, mode="constant", cval=1e300),
        refused("cval", "float32"),
    ),
    (
        "apply-cval-beyond-uint8",
        lambda tmp: movie("uint8").reg.apply(TRUTH, mode="constant", cval=300),
        refused("cval", "0 to 255"),
    ),
    (
        "apply-cval-nan-integers",
        lambda tmp: movie("uint16").reg.apply(TRUTH, mode="constant", cval=np.nan),
        refused("cval", "uint16"),
    ),
    ("apply-order-7", app(order=7), refused("order")),
    ("apply-order-1.5", app(order=1.5), refused("order")),
    ("apply-order-str", app(order="1"), refused("order")),
    ("apply-mode-unknown", app(mode="bogus"), refused("mode", "nearest")),
    ("apply-mode-none", app(mode=None), refused("mode")),
    ("apply-bad-frames-unknown", app(bad_frames="skip"), refused("bad_frames", "interpolate")),
    ("apply-shifts-shape", app(np.zeros((5, 3))), refused("shifts", "(5, 2)")),
    ("apply-shifts-text", app(np.full((5, 2), "a")), refused("shifts")),
    ("apply-shifts-huge", app(TRUTH * 1e9), refused("shifts", "larger than the frame")),
    ("apply-shifts-nan", app(np.full((5, 2), np.nan)), holds(_unchanged)),
    ("apply-shifts-inf", app(np.full((5, 2), np.inf)), holds(_unchanged)),
    ("apply-whole-pixel", app(order=3), holds(_registered_exactly)),
    (
        "apply-dask",
        lambda tmp: movie(backend="dask").reg.apply(TRUTH).compute(),
        holds(_registered_exactly),
    ),
    ("apply-constant-nan", app(mode="constant", cval=np.nan), holds(_nan_border)),
    (
        "apply-piecewise-huge",
        lambda tmp: movie().reg.apply(piecewise_shifts() * 1e12),
        refused("shifts", "larger than the frame"),
    ),
    # field
    (
        "field-of-rigid-shifts",
        lambda tmp: movie().reg.estimate(REF()).reg.field(),
        refused("piecewise"),
    ),
    ("field-of-a-movie", lambda tmp: movie().reg.field(), refused("field")),
    (
        "field-without-layout",
        lambda tmp: piecewise_shifts().drop_attrs().reg.field(),
        refused("block layout"),
    ),
    ("field-rigid-motion", lambda tmp: piecewise_shifts().reg.field(), holds(_uniform_field)),
    # CrossCorr (thunder's API)
    ("crosscorr-upsample-0", lambda tmp: CrossCorr(upsample_factor=0), refused("upsample_factor")),
    (
        "crosscorr-upsample-2.5",
        lambda tmp: CrossCorr(upsample_factor=2.5),
        refused("upsample_factor"),
    ),
    ("crosscorr-axis-5", lambda tmp: CrossCorr(axis=5), refused("axis")),
    ("crosscorr-axis-str", lambda tmp: CrossCorr(axis="0"), refused("axis")),
    ("crosscorr-windowed-str", lambda tmp: CrossCorr(windowed="yes"), refused("windowed")),
    (
        "crosscorr-ragged-images",
        lambda tmp: CrossCorr().fit([np.ones((8, 8)), np.ones((9, 9))], REF()),
        refused("np.stack"),
    ),
    (
        "crosscorr-dataset",
        lambda tmp: CrossCorr().fit(movie().to_dataset(name="movie"), REF()),
        refused("Dataset", "ds['movie']"),
    ),
    ("crosscorr-one-image", lambda tmp: CrossCorr().fit(REF(), REF()), refused("(n, y, x)")),
    (
        "crosscorr-reference-shape",
        lambda tmp: CrossCorr().fit(frames_at(TRUTH), REF()[:10]),
        refused("reference", "shape"),
    ),
    (
        "crosscorr-transform-order",
        lambda tmp: CrossCorr().fit(frames_at(TRUTH), REF()).transform(frames_at(TRUTH), order=9),
        refused("order"),
    ),
    (
        "crosscorr-windowed-numpy",
        lambda tmp: CrossCorr(windowed=True).fit(frames_at(TRUTH), REF()),
        holds(_crosscorr_truth),
    ),
    (
        "crosscorr-thunder-5x5",
        lambda tmp: CrossCorr().fit(
            np.roll(np.arange(25.0).reshape(5, 5), (1, 2), axis=(0, 1))[None],
            np.arange(25.0).reshape(5, 5),
        ),
        holds(_thunder_tiny),
    ),
    # readers
    ("open-movie-missing", lambda tmp: io.open_movie(tmp / "nope.zarr"), refused("no such file")),
    ("open-movie-not-a-path", lambda tmp: io.open_movie(42), refused("path")),
    (
        "open-movie-chunk-0",
        lambda tmp: io.open_movie(store(tmp, frames_at(TRUTH)), chunk_frames=0),
        refused("chunk_frames"),
    ),
    (
        "open-movie-chunk-str",
        lambda tmp: io.open_movie(store(tmp, frames_at(TRUTH)), chunk_frames="10"),
        refused("chunk_frames"),
    ),
    (
        "open-movie-var",
        lambda tmp: io.open_movie(store(tmp, frames_at(TRUTH)), "nope"),
        refused("'nope'", "--var"),
    ),
    (
        "open-movie-frame-dim",
        lambda tmp: io.open_movie(store(tmp, frames_at(TRUTH), dims=("frame", "y", "x"))),
        refused("'time'", "dim="),
    ),
    (
        "open-movie-text-file",
        lambda tmp: (tmp / "a.txt").write_text("hi") and io.open_movie(tmp / "a.txt"),
        refused("Zarr store"),
    ),
    (
        "open-movie-broken-tiff",
        lambda tmp: (tmp / "b.tif").write_bytes(b"II*\x00junk") and io.open_movie(tmp / "b.tif"),
        refused("not a readable TIFF"),
    ),
    (
        "open-movie-single-image-tiff",
        lambda tmp: io.open_movie(tif(tmp, np.zeros((16, 16), np.uint16))),
        refused("stack of frames"),
    ),
    (
        "open-movie-tiff",
        lambda tmp: io.open_movie(tif(tmp, frames_at(TRUTH).astype(np.uint16))),
        holds(_tiff_frames),
    ),
    (
        "open-reference-first-0",
        lambda tmp: io.open_reference("first:0", movie()),
        refused("first:10"),
    ),
    (
        "open-reference-wrong-ndim",
        lambda tmp: (
            np.save(tmp / "r.npy", frames_at(TRUTH))
            or io.open_reference(str(tmp / "r.npy"), movie())
        ),
        refused("--reference", "one frame"),
    ),
    (
        "read-displacement-missing",
        lambda tmp: io.read_displacement(tmp / "none.nc"),
        refused("no such file"),
    ),
    (
        "read-displacement-foreign-csv",
        lambda tmp: (
            (tmp / "t.csv").write_text("a,b\n1,2\n") and io.read_displacement(tmp / "t.csv")
        ),
        refused("quality"),
    ),
    (
        "write-displacement-suffix",
        lambda tmp: io.write_displacement(movie().reg.estimate(REF()), tmp / "s.txt"),
        refused(".zarr, .nc or .csv"),
    ),
    # the command line
    (
        "cli-upsample-2.5",
        lambda tmp: cli(
            tmp, "estimate", store(tmp, frames_at(TRUTH)), "{tmp}/o.csv", "--upsample-factor", "2.5"
        ),
        cli_refuses("--upsample-factor", "whole number"),
    ),
    (
        "cli-upsample-huge",
        lambda tmp: cli(tmp, "estimate", "x.zarr", "o.csv", "--upsample-factor", "1000000"),
        cli_refuses("--upsample-factor", "1000"),
    ),
    (
        "cli-overlap-1.5",
        lambda tmp: cli(tmp, "estimate", "x.zarr", "o.csv", "--overlap", "1.5"),
        cli_refuses("--overlap"),
    ),
    (
        "cli-overlap-text",
        lambda tmp: cli(tmp, "estimate", "x.zarr", "o.csv", "--overlap", "half"),
        cli_refuses("--overlap"),
    ),
    (
        "cli-block-size-4",
        lambda tmp: cli(tmp, "estimate", "x.zarr", "o.csv", "--block-size", "4"),
        cli_refuses("--block-size", "8"),
    ),
    (
        "cli-chunk-frames-0",
        lambda tmp: cli(tmp, "estimate", "x.zarr", "o.csv", "--chunk-frames", "0"),
        cli_refuses("--chunk-frames"),
    ),
    (
        "cli-workers-negative",
        lambda tmp: cli(tmp, "estimate", "x.zarr", "o.csv", "--workers", "-1"),
        cli_refuses("--workers"),
    ),
    (
        "cli-clip-reversed",
        lambda tmp: cli(tmp, "estimate", "x.zarr", "o.csv", "--clip", "99,1"),
        cli_refuses("--clip", "LOW < HIGH"),
    ),
    (
        "cli-weights-unknown",
        lambda tmp: cli(tmp, "estimate", "x.zarr", "o.csv", "--weights", "poisson"),
        cli_refuses("--weights", "noise"),
    ),
    (
        "cli-tiny-frames",
        lambda tmp: cli(tmp, "estimate", store(tmp, tiny((3, 3)).values), "{tmp}/o.csv"),
        cli_refuses("too small"),
    ),
    (
        "cli-too-many-blocks",
        lambda tmp: cli(
            tmp,
            "register",
            store(tmp, frames_at(TRUTH)),
            "{tmp}/out.zarr",
            *("--method", "piecewise", "--block-size", "8", "--overlap", "0.99"),
        ),
        cli_refuses("overlap", "4096"),
    ),
    (
        "cli-estimate-csv",
        lambda tmp: (
            cli(
                tmp,
                "estimate",
                store(tmp, frames_at(TRUTH)),
                "{tmp}/out.csv",
                *("--reference", "first:1"),
            ),
            tmp,
        ),
        holds(lambda pair: _csv_truth(*pair)),
    ),
    # --channel: which channel of a multi-channel movie gives the displacements
    (
        "cli-channel-missing",
        lambda tmp: cli(tmp, "estimate", channel_store(tmp), "{tmp}/o.csv"),
        cli_refuses("2 channels", "--channel", "'red', 'green'"),
    ),
    (
        "cli-register-channel-missing",
        lambda tmp: (cli(tmp, "register", channel_store(tmp), "{tmp}/out.zarr"), tmp / "out.zarr"),
        _refused_before_any_work("--channel red", "positions 0..1"),
    ),
    (
        "cli-channel-unknown",
        lambda tmp: (
            cli(tmp, "register", channel_store(tmp), "{tmp}/out.zarr", "--channel", "blue"),
            tmp / "out.zarr",
        ),
        _refused_before_any_work("--channel", "'blue'", "'red', 'green'"),
    ),
    (
        "cli-channel-position-beyond",
        lambda tmp: cli(tmp, "estimate", channel_store(tmp, None), "{tmp}/o.csv", "--channel", "2"),
        cli_refuses("--channel", "'2'", "[0, 1]"),
    ),
    (
        "cli-channel-numbers-are-labels",  # never positions: 0 is not a wavelength here
        lambda tmp: cli(
            tmp, "estimate", channel_store(tmp, (488, 561)), "{tmp}/o.csv", "--channel", "0"
        ),
        cli_refuses("--channel", "[488, 561]"),
    ),
    (
        "cli-channel-without-channels",
        lambda tmp: cli(
            tmp, "estimate", store(tmp, frames_at(TRUTH)), "{tmp}/o.csv", "--channel", "red"
        ),
        cli_refuses("--channel", "no channel dim"),
    ),
    (
        "cli-channel-by-label-number",
        lambda tmp: (
            cli(
                tmp,
                "estimate",
                channel_store(tmp, (488, 561)),
                "{tmp}/out.csv",
                *("--channel", "488", "--reference", "first:1"),
            ),
            tmp,
        ),
        holds(lambda pair: _csv_truth(*pair)),
    ),
    (
        "register-channel-unknown",
        lambda tmp: movie().expand_dims(channel=["red"], axis=1).reg.register(REF(), channel=3),
        refused("`channel` 3", "['red']"),
    ),
    # Keyword typos, Datasets where one array belongs: named, not a TypeError.
    (
        "register-typo-option",
        lambda tmp: movie().reg.register(REF(), upsample=3),
        refused("`upsample`", "`upsample_factor`"),
    ),
    (
        "dataset-estimate-typo-option",
        lambda tmp: movie().to_dataset(name="m").reg.estimate(REF(), max_shfit=4),
        refused("`max_shfit`", "`max_shift`"),
    ),
    (
        "dataset-apply-unknown-option",
        lambda tmp: movie().to_dataset(name="m").reg.apply(movie().reg.estimate(REF()), foo=1),
        refused("`foo`", "bad_frames"),
    ),
    (
        "dataset-estimate-var-list",
        lambda tmp: movie().to_dataset(name="m").reg.estimate(REF(), var=["m"]),
        refused("`var` names one variable", "['m']"),
    ),
    (
        "estimate-reference-dataset",
        lambda tmp: movie().reg.estimate(movie().isel(time=0).to_dataset(name="r")),
        refused("Dataset", "['r']"),
    ),
    (
        "apply-shifts-dataset",
        lambda tmp: movie().reg.apply(movie().reg.estimate(REF()).to_dataset()),
        refused("Dataset", "read_displacement"),
    ),
    (
        # float32 inside: a large offset (3e7 over a contrast of 600) must not swamp the
        # contrast (it made every frame "constant": displacement 0, quality 0, no warning).
        "estimate-large-offset",
        lambda tmp: (movie() + 3e7).reg.estimate(REF() + 3e7),
        holds(exact_truth(atol=0.02)),
    ),
    (
        "dataset-apply-names-the-variable",
        lambda tmp: (
            movie()
            .to_dataset(name="m")
            .assign(mask=movie() > 500)
            .reg.apply(movie().reg.estimate(REF()))
        ),
        refused("Variable 'mask'", "bool"),
    ),
    (
        # An extra dim xreg does not know is read as z, too short for a volume: the
        # message says how to say it is not spatial.
        "estimate-unknown-extra-dim",
        lambda tmp: (
            movie().expand_dims(cam=2, axis=1).reg.estimate(movie().isel(time=0).expand_dims(cam=2))
        ),
        refused("too small", "spatial_dims=", "isel"),
    ),
    (
        "estimate-integer-dim-names",
        lambda tmp: xr.DataArray(frames_at(TRUTH), dims=(0, 1, 2)).reg.estimate(
            REF(), dim=0, upsample_factor=1
        ),
        holds(exact_truth()),
    ),
    (
        "estimate-reference-flipped-coords",
        # The movie's own frame with its y labels reversed: taken by label, not position.
        lambda tmp: _with_flipped_reference(),
        holds(exact_truth()),
    ),
]


def run_with_deadline(function, seconds=CASE_SECONDS):
    """``function()`` in a daemon thread; its result, its exception, or a failure if it
    has not finished within ``seconds`` (a hung case is left behind, not waited for)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the case ran for more than {seconds} s (a hang or unbounded work)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], time.perf_counter() - start


def test_the_table_is_large_and_covers_every_entry_point():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    for prefix in (
        "estimate",
        "reference",
        "apply",
        "piecewise",
        "field",
        "crosscorr",
        "open-movie",
        "cli",
    ):
        assert sum(i.startswith(prefix) for i in ids) >= 4, prefix


@pytest.mark.parametrize("case, expect", [pytest.param(c, e, id=i) for i, c, e in CASES])
def test_bad_or_extreme_input(case, expect, tmp_path):
    kind, detail = expect
    if kind == "error":
        with pytest.raises(XregError) as raised:
            run_with_deadline(lambda: case(tmp_path))
        message = str(raised.value)
        for name in detail:
            assert name in message, message
    else:
        result, _ = run_with_deadline(lambda: case(tmp_path))
        detail(result)


def test_the_deadline_catches_a_hang():
    with pytest.raises(pytest.fail.Exception, match="more than 0.2 s"):
        run_with_deadline(lambda: time.sleep(2), seconds=0.2)


def test_limits_are_what_the_docs_say():
    assert validate.MAX_UPSAMPLE_FACTOR == 1000
    assert validate.MIN_FRAME_SIZE == 8
    # The default layout on 512 x 512 frames (7 x 7 blocks of 128) is far inside the limits.
    sizes, overlap = validate.block_layout((512, 512), 128, 0.5)
    assert sizes == (128, 128) and overlap == 0.5


def test_refinement_work_is_bounded_in_the_core():
    # The core trusts its caller; even so, its refinement walk has a bound: 10**6 (which
    # the boundary refuses) used to run for 14 minutes and now takes about a second.
    from xreg import core

    frames = frames_at(TRUTH[:3])
    frames[1, :, :] = np.nan  # a score with no maximum to walk to
    plan = core.prepare_reference(reference())
    result, _ = run_with_deadline(lambda: core.estimate_shifts(frames, plan, upsample_factor=10**6))
    np.testing.assert_allclose(result[[0, 2], :2], TRUTH[[0, 2]], atol=5e-3)
    assert result[1].tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- xreg.spark


def rdd(sc):
    return xspark.to_rdd(movie(), sc, npartitions=2)


SPARK_CASES = [
    (
        "spark-estimate-upsample-huge",
        lambda sc: xspark.estimate(rdd(sc), REF(), upsample_factor=10**6),
        refused("upsample_factor"),
    ),
    (
        "spark-estimate-too-many-blocks",
        lambda sc: xspark.estimate(rdd(sc), REF(), method="piecewise", block_size=8, overlap=0.99),
        refused("overlap", "4096"),
    ),
    (
        "spark-estimate-axis",
        lambda sc: xspark.estimate(rdd(sc), REF(), axis=5),
        refused("axis"),
    ),
    (
        "spark-estimate-tiny",
        lambda sc: xspark.estimate(rdd(sc), np.ones((3, 3))),
        refused("too small"),
    ),
    (
        "spark-estimate-clip",
        lambda sc: xspark.estimate(rdd(sc), REF(), clip="1,99"),
        refused("clip"),
    ),
    ("spark-apply-order", lambda sc: xspark.apply(rdd(sc), TRUTH, order=9), refused("order")),
    ("spark-apply-mode", lambda sc: xspark.apply(rdd(sc), TRUTH, mode="x"), refused("mode")),
    (
        "spark-apply-huge-blocks",
        lambda sc: xspark.apply(rdd(sc), piecewise_shifts() * 1e12),
        refused("shifts", "larger than the frame"),
    ),
    (
        "spark-to-rdd-partitions",
        lambda sc: xspark.to_rdd(movie(), sc, npartitions=0),
        refused("npartitions"),
    ),
    (
        "spark-estimate-truth",
        lambda sc: xspark.estimate(rdd(sc), REF()),
        holds(_whole_pixel_exact),
    ),
]


@pytest.mark.parametrize("case, expect", [pytest.param(c, e, id=i) for i, c, e in SPARK_CASES])
def test_spark_boundary(spark_context, case, expect):
    kind, detail = expect
    # Spark's first job on a fresh context starts Python workers: a longer deadline.
    seconds = 60.0
    if kind == "error":
        with pytest.raises(XregError) as raised:
            run_with_deadline(lambda: case(spark_context), seconds)
        for text in detail:
            assert text in str(raised.value), str(raised.value)
    else:
        result, _ = run_with_deadline(lambda: case(spark_context), seconds)
        detail(result)
