"""The xreg command and out-of-core runs, on real Zarr stores and TIFF files on disk."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

import xreg
from xreg import io
from xreg.cli import main


def make_store(path: Path, n_frames=60, chunk=10, shape=(64, 64), seed=0):
    movie = xreg.datasets.mouse(n_frames=n_frames, shape=shape, seed=seed)
    moved, truth = xreg.datasets.add_motion(movie, max_drift=3, subpixel=True, seed=seed)
    moved = moved.assign_attrs(session="s1").chunk(time=chunk)
    io.to_zarr(moved.to_dataset(name="movie"), path, mode="w")
    return movie, moved, truth


def open_output(path: Path) -> xr.Dataset:
    return xr.open_zarr(path)


def run(*args) -> int:
    return main([str(a) for a in args])


def test_register_zarr_keeps_everything_and_matches_the_library(tmp_path, capsys):
    source, output = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _, moved, _ = make_store(source)
    reference = tmp_path / "ref.npy"
    np.save(reference, moved.mean("time").values)
    assert run("register", source, output, "--reference", reference, "--quiet") == 0
    result = open_output(output)
    fixed = result["movie"]
    assert fixed.dims == moved.dims and fixed.dtype == moved.dtype
    assert fixed.attrs["session"] == "s1"
    assert fixed.chunksizes["time"] == moved.chunksizes["time"]
    np.testing.assert_array_equal(fixed.time, moved.time)
    expected_shifts = moved.reg.estimate(moved.mean("time"))
    np.testing.assert_allclose(result["displacement"].values, expected_shifts.values)
    np.testing.assert_array_equal(fixed.values, moved.reg.apply(expected_shifts).values)
    assert list(result["displacement"].axis.values) == ["y", "x"]
    # Running the finished command again changes nothing and succeeds.
    assert run("register", source, output, "--reference", reference, "--quiet") == 0


def test_register_tiff_and_estimate_csv(tmp_path):
    _, moved, _ = make_store(tmp_path / "in.zarr")
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, moved.values)
    output = tmp_path / "out.zarr"
    assert run("register", stack, output, "--reference", "first:20", "--quiet") == 0
    assert open_output(output)["stack"].shape == moved.shape
    expected = moved.reg.estimate(moved.mean("time"))
    for suffix in (".csv", ".nc", ".zarr"):
        table = tmp_path / f"shifts{suffix}"
        assert run("estimate", stack, table, "--reference", "mean", "--quiet") == 0
        shifts = io.read_displacement(table)
        assert shifts.dims == ("time", "axis") and list(shifts.axis.values) == ["y", "x"]
        # The CSV holds numbers rounded to a millionth; the binary formats hold them exactly.
        decimals = io.CSV_DECIMALS if suffix == ".csv" else 15
        np.testing.assert_allclose(shifts.values, np.round(expected.values, decimals))
        np.testing.assert_allclose(shifts.quality.values, np.round(expected.quality, decimals))
        np.testing.assert_array_equal(shifts.bad_frame.values, expected.bad_frame.values)
    weighted = tmp_path / "weighted.nc"
    assert run("estimate", stack, weighted, "--reference", "mean", "--weights", "noise") == 0
    weighted = io.read_displacement(weighted)
    assert weighted.attrs["weights"] == "noise"
    expected = moved.reg.estimate(moved.mean("time"), weights="noise")
    np.testing.assert_allclose(weighted.values, expected.values)
    text = (tmp_path / "shifts.csv").read_text()
    assert text.splitlines()[0] == "time,y,x,quality,bad_frame"
    # Every number as short as it is precise: no float noise such as -0.09999999999999432
    # (the subpixel estimate is continuous, rounded to 1e-4 px: at most 4 decimals).
    numbers = [v for line in text.splitlines()[1:] for v in line.split(",")[1:3]]
    assert max(len(v.lstrip("-").split(".")[-1]) for v in numbers) <= 4


def test_output_that_is_not_ours_is_refused(tmp_path, capsys):
    source, output = tmp_path / "in.zarr", tmp_path / "out.zarr"
    make_store(source)
    output.mkdir()
    (output / "precious.txt").write_text("keep me")
    assert run("register", source, output, "--quiet") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (output / "precious.txt").read_text() == "keep me"
    assert run("register", source, output, "--quiet", "--overwrite") == 0
    assert not (output / "precious.txt").exists()


def test_a_run_with_other_settings_is_not_resumed(tmp_path, capsys):
    source, output = tmp_path / "in.zarr", tmp_path / "out.zarr"
    make_store(source)
    assert run("register", source, output, "--quiet") == 0
    assert run("register", source, output, "--quiet", "--upsample-factor", "3") == 2
    assert "other settings" in capsys.readouterr().err


def test_order_moves_frames_as_apply_does_and_is_part_of_the_run(tmp_path, capsys):
    source, output = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _, moved, _ = make_store(source, n_frames=30)
    reference = tmp_path / "ref.npy"
    np.save(reference, moved.mean("time").values)
    assert run("register", source, output, "--reference", reference, "--order", 3, "--quiet") == 0
    fixed = open_output(output)["movie"].values
    shifts = moved.reg.estimate(moved.mean("time"))
    np.testing.assert_array_equal(fixed, moved.reg.apply(shifts, order=3).values)
    assert not np.array_equal(fixed, moved.reg.apply(shifts).values)  # not the linear default
    # A run resumes only with the order it started with.
    assert run("register", source, output, "--reference", reference, "--order", 1, "--quiet") == 2
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # refused before any work
        run("register", source, tmp_path / "other.zarr", "--order", 7)
    assert exit_info.value.code == 2 and "from 0 to 5" in capsys.readouterr().err
    assert not (tmp_path / "other.zarr").exists()


def test_register_and_estimate_piecewise(tmp_path, capsys):
    source, output = tmp_path / "in.zarr", tmp_path / "out.zarr"
    still = xreg.datasets.mouse(n_frames=12, shape=(96, 96), seed=1)
    moved, _ = xreg.datasets.add_nonrigid_motion(still, max_shift=2, seed=1)
    io.to_zarr(moved.chunk(time=4).to_dataset(name="movie"), source, mode="w")
    reference = tmp_path / "ref.npy"
    np.save(reference, still.mean("time").values)
    options = ["--method", "piecewise", "--block-size", "48", "--overlap", "0.25"]
    assert run("register", source, output, "--reference", reference, *options, "--quiet") == 0
    result = open_output(output)
    expected = moved.reg.estimate(
        still.mean("time"), method="piecewise", block_size=48, overlap=0.25
    )
    shifts = result["displacement"]
    assert shifts.dims == ("time", "block_y", "block_x", "axis") and shifts.shape[1:3] == (3, 3)
    np.testing.assert_allclose(shifts.values, expected.values)
    np.testing.assert_array_equal(result["movie"].values, moved.reg.apply(expected).values)
    # Other blocks are other settings: not resumed.
    assert run("register", source, output, "--reference", reference, "--quiet") == 2
    assert "other settings" in capsys.readouterr().err

    table = tmp_path / "blocks.nc"
    assert run("estimate", source, table, "--reference", reference, *options, "--quiet") == 0
    np.testing.assert_allclose(io.read_displacement(table).values, expected.values)
    # A CSV has one row per frame: refused before any work, with the formats that do hold it.
    assert run("estimate", source, tmp_path / "b.csv", *options, "--quiet") == 2
    assert ".zarr or .nc" in capsys.readouterr().err
    assert not (tmp_path / "b.csv").exists()


def test_clip_option(tmp_path, capsys):
    source = tmp_path / "in.zarr"
    _, moved, _ = make_store(source, n_frames=20)
    reference = moved.mean("time")
    for option, clip in (([], (1, 99)), (["--clip", "none"], None), (["--clip", "5,95"], (5, 95))):
        table = tmp_path / f"shifts{len(option)}{clip is None}.nc"
        assert run("estimate", source, table, "--reference", "mean", *option, "--quiet") == 0
        expected = moved.reg.estimate(reference, clip=clip)
        np.testing.assert_allclose(io.read_displacement(table).values, expected.values)
    with pytest.raises(SystemExit) as exit_info:
        run("estimate", source, tmp_path / "x.nc", "--clip", "99,1")
    assert exit_info.value.code == 2 and "0 <= LOW < HIGH <= 100" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["register", "{missing}", "{out}"], "no such file"),
        (["register", "{store}", "{out}", "--var", "nope"], "no variable 'nope'"),
        (["register", "{text}", "{out}"], "expected a Zarr store"),
        (["register", "{badtif}", "{out}"], "not a readable TIFF"),
        (["register", "{flat}", "{out}"], "stack of frames"),
        (["register", "{store}", "{store}"], "never writes into its input"),
        # --overwrite removes OUTPUT whole: never one that holds the input.
        (["register", "{store}", "{tmp}", "--overwrite"], "OUTPUT holds INPUT"),
        (
            ["register", "{store}", "{refs}", "--reference", "{ref}", "--overwrite"],
            "OUTPUT holds the",
        ),
        (["register", "{store}", "{out}", "--reference", "{small}"], "expected one frame"),
        (["estimate", "{store}", "{out}", "--reference", "{nanref}"], "NaN"),  # no warning
        (["register", "{store}", "{out}", "--reference", "{texttif}"], "not a readable frame"),
        (["register", "{store}", "{out}", "--reference", "first:x"], "first:10"),
        (["register", "{store}", "{out}", "--reference", "nofile.npy"], "not a file"),
        (["estimate", "{store}", "{out_txt}"], ".zarr, .nc or .csv"),
        (["register", "{frames}", "{out}"], "must be called 'time'"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, args, message):
    paths = {
        "store": tmp_path / "in.zarr",
        "out": tmp_path / "out.zarr",
        "out_txt": tmp_path / "out.txt",
        "missing": tmp_path / "missing.zarr",
        "text": tmp_path / "notes.txt",
        "badtif": tmp_path / "broken.tif",
        "flat": tmp_path / "flat.tif",
        "frames": tmp_path / "frames.zarr",
        "tmp": tmp_path,
        "refs": tmp_path / "refs",
        "ref": tmp_path / "refs" / "ref.npy",
        "small": tmp_path / "small.npy",
        "texttif": tmp_path / "notes.tif",
        "nanref": tmp_path / "nan.npy",
    }
    np.save(paths["nanref"], np.full((64, 64), np.nan))
    paths["texttif"].write_text("not a TIFF")
    paths["refs"].mkdir()
    np.save(paths["ref"], np.ones((64, 64)))
    np.save(paths["small"], np.ones((8, 8)))
    make_store(paths["store"], n_frames=20)
    paths["text"].write_text("hello")
    paths["badtif"].write_bytes(b"II*\x00garbage")
    tifffile.imwrite(paths["flat"], np.zeros((16, 16), np.uint16))
    io.to_zarr(xr.Dataset({"movie": (("frame", "y", "x"), np.zeros((3, 8, 8)))}), paths["frames"])
    before = sorted(p.name for p in (tmp_path / "in.zarr").rglob("*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's, printed before the error
        code = main([a.format(**paths) for a in args] + ["--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("xreg: error:") and message in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert sorted(p.name for p in (tmp_path / "in.zarr").rglob("*")) == before
    assert paths["ref"].exists()


def test_overwrite_removes_the_old_output_only_once_the_new_run_can_start(tmp_path, capsys):
    source, output = tmp_path / "in.zarr", tmp_path / "out.zarr"
    make_store(source, n_frames=20)
    assert run("register", source, output, "--quiet") == 0
    before = open_output(output)["movie"].values
    np.save(tmp_path / "small.npy", np.ones((8, 8)))
    np.save(tmp_path / "nan.npy", np.full((64, 64), np.nan))
    np.save(tmp_path / "flat.npy", np.ones((64, 64)))
    for bad in ("small.npy", "nan.npy", "flat.npy", "first:0"):
        spec = bad if bad.startswith("first") else tmp_path / bad
        assert run("register", source, output, "--overwrite", "--reference", spec, "--quiet") == 2
        assert "reference" in capsys.readouterr().err
        np.testing.assert_array_equal(open_output(output)["movie"].values, before)


def test_help_on_each_subcommand():
    for command in (["--help"], ["register", "--help"], ["estimate", "--help"], ["demo", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "xreg", *command], capture_output=True, text=True
        )
        assert result.returncode == 0 and "usage: xreg" in result.stdout


def test_lazy_pipeline_end_to_end_with_default_scheduler_and_local_cluster(tmp_path):
    from distributed import Client, LocalCluster

    source = tmp_path / "in.zarr"
    still, moved, truth = make_store(source, n_frames=40, chunk=8)
    reference = still.mean("time")
    expected = moved.reg.apply(moved.reg.estimate(reference)).values
    for use_cluster in (False, True):
        out = tmp_path / f"out-{use_cluster}.zarr"
        cluster = (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            if use_cluster
            else None
        )
        client = Client(cluster) if cluster else None
        try:
            movie = xr.open_zarr(source)["movie"]
            shifts = movie.reg.estimate(reference)
            fixed = movie.reg.apply(shifts)
            assert fixed.chunks is not None
            io.to_zarr(fixed.to_dataset(), out, mode="w")
        finally:
            if client:
                client.close()
                cluster.close()
        values = xr.open_zarr(out)["movie"].values
        assert np.abs(shifts.values - truth.values).max() < 0.5
        np.testing.assert_array_equal(values, expected)
