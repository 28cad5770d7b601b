"""The one-pass pipeline: lazy `register`, one read per chunk, resumable `xreg register`."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import ChunkReads, raise_if_dask_computes

import xreg
from xreg import io, pipeline
from xreg.cli import main


def moved_movie(n_frames=40, shape=(64, 64), seed=0):
    still = xreg.datasets.mouse(n_frames=n_frames, shape=shape, seed=seed)
    moved, truth = xreg.datasets.add_motion(still, max_drift=3, subpixel=True, seed=seed)
    return still, moved, truth


@pytest.mark.parametrize("method", ["rigid", "piecewise"])
def test_register_equals_estimate_then_apply(backend, method):
    still, moved, truth = moved_movie()
    movie = moved.chunk(time=8) if backend == "dask" else moved
    reference = still.mean("time")
    options = {"method": method, "block_size": 32} if method == "piecewise" else {}
    fixed, shifts = movie.reg.register(reference, **options)
    assert (fixed.chunks is not None) == (backend == "dask")
    expected_shifts = movie.reg.estimate(reference, **options)
    xr.testing.assert_identical(shifts.compute(), expected_shifts)
    xr.testing.assert_identical(fixed.compute(), movie.reg.apply(expected_shifts).compute())
    if method == "rigid":
        assert np.abs(shifts.values - truth.values).max() < 0.5  # sanity; identity is the test


def test_register_is_lazy_and_reads_each_chunk_once():
    still, moved, _ = moved_movie(n_frames=48)
    counted = ChunkReads(moved.values, chunk=8)
    with raise_if_dask_computes():
        fixed, shifts = counted.movie.reg.register(still.mean("time").values)
    assert counted.reads == {}
    assert fixed.chunks is not None and shifts.chunks is not None
    dask.compute(fixed, shifts)
    assert sorted(counted.reads) == list(range(0, 48, 8))
    assert set(counted.reads.values()) == {1}

    # Writing both to Zarr: one graph, again one read per chunk.
    counted.reads.clear()
    xr.Dataset({"movie": fixed, "displacement": shifts}).to_zarr(
        Path(pytest.importorskip("tempfile").mkdtemp()) / "out.zarr"
    )
    assert set(counted.reads.values()) == {1} and len(counted.reads) == 6
    # estimate then apply (two calls, two passes) reads each chunk twice, for comparison.
    counted.reads.clear()
    counted.movie.reg.apply(counted.movie.reg.estimate(still.mean("time"))).compute()
    assert set(counted.reads.values()) == {2}


def test_smooth_takes_two_passes_and_matches(backend):
    still, moved, _ = moved_movie(n_frames=30)
    movie = moved.chunk(time=10) if backend == "dask" else moved
    reference = still.mean("time")
    fixed, shifts = movie.reg.register(reference, smooth=5, bad_frames="interpolate")
    expected = movie.reg.estimate(reference, smooth=5)
    xr.testing.assert_identical(shifts, expected)
    xr.testing.assert_identical(
        fixed.compute(), movie.reg.apply(expected, bad_frames="interpolate").compute()
    )


def test_labels_chunked_unlike_the_movie(tmp_path):
    """A per-frame label stored plain beside a chunked movie, opened with open_zarr."""
    still, moved, _ = moved_movie(n_frames=30)
    trial = np.repeat(np.arange(6), 5)
    source = tmp_path / "labelled.zarr"
    dataset = moved.chunk(time=10).to_dataset(name="movie").assign_coords(trial=("time", trial))
    io.to_zarr(dataset, source, mode="w")
    movie = xr.open_zarr(source)["movie"]
    assert movie["trial"].chunks != movie.chunks[:1]  # the case in hand
    reference = movie.reg.reference(n_frames=20)
    shifts = movie.reg.estimate(reference)
    np.testing.assert_array_equal(shifts["trial"].values, trial)
    fixed = movie.reg.apply(shifts)
    together, lazy_shifts = movie.reg.register(reference)
    for name, result in [("apply", fixed), ("register", together)]:
        out = tmp_path / f"{name}.zarr"
        result.to_dataset().to_zarr(out)
        back = xr.open_zarr(out)
        np.testing.assert_array_equal(back["trial"].values, trial)
        np.testing.assert_array_equal(back["movie"].values, fixed.values)
    np.testing.assert_array_equal(lazy_shifts["trial"].values, trial)
    # And through the command line, label kept in the output store.
    output = tmp_path / "cli.zarr"
    assert main(["register", str(source), str(output), "--quiet"]) == 0
    np.testing.assert_array_equal(xr.open_zarr(output)["trial"].values, trial)


def make_store(path: Path, n_frames, chunk, shape=(64, 64)):
    _, moved, _ = moved_movie(n_frames=n_frames, shape=shape)
    io.to_zarr(moved.chunk(time=chunk).to_dataset(name="movie"), path, mode="w")


def test_progress_counts_each_frame_once(tmp_path):
    source, output = tmp_path / "in.zarr", tmp_path / "out.zarr"
    make_store(source, n_frames=60, chunk=10)
    movie = io.open_movie(source)

    def run(reports):
        return pipeline.run(
            movie,
            str(output),
            reference=lambda: movie.reg.reference(n_frames=20),
            settings={"input": str(source)},
            progress=reports.append,
        )

    fresh = []
    run(fresh)
    assert fresh[0] == 0 and sum(fresh) == 60 and fresh[1:] == [10] * 6
    finished = []
    run(finished)
    assert finished == [60]  # a finished store is complete at once

    # Resumed: what a run killed after 2 of 6 chunks leaves, then the rest.
    state = json.loads((output / pipeline.RUN_FILE).read_text())
    state["stage"] = "writing"
    (output / pipeline.RUN_FILE).write_text(json.dumps(state))
    for chunk in (1, 3, 4, 5):
        (output / pipeline.DONE_PREFIX / str(chunk)).unlink()
    resumed = []
    run(resumed)
    assert resumed == [20, 10, 10, 10, 10]

    # The command's bar says so too: frames counted once, a finished store complete.
    fresh_output, first = tmp_path / "bar.zarr", True
    for _ in range(2):
        subprocess_result = subprocess.run(
            [sys.executable, "-m", "xreg", "register", str(source), str(fresh_output)],
            capture_output=True,
            text=True,
        )
        assert subprocess_result.returncode == 0
        counts = _bar_counts(subprocess_result.stderr)
        assert counts[-1] == (60, 60) and all(total == 60 for _, total in counts)
        assert counts[0] == ((0, 60) if first else (60, 60))  # a finished store is complete
        first = False


def test_reference_auto_is_recorded(tmp_path):
    source, output = tmp_path / "in.zarr", tmp_path / "out.zarr"
    make_store(source, n_frames=30, chunk=10)
    assert main(["register", str(source), str(output), "--quiet"]) == 0
    attrs = xr.open_zarr(output)["displacement"].attrs
    assert attrs["reference_method"] == "iterative" and attrs["reference_n_frames"] == 30
    table = tmp_path / "shifts.nc"
    assert main(["estimate", str(source), str(table), "--reference", "first:5", "--quiet"]) == 0
    assert io.read_displacement(table).attrs["reference_method"] == "mean of the first 5 frames"


def _bar_counts(stderr: str) -> list:
    """The (done, total) frame counts a tqdm bar printed, in order."""
    return [(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+) \[", stderr)]


def _chunk_files(store: Path, var: str) -> dict:
    return {p.relative_to(store): p.read_bytes() for p in (store / var).rglob("*") if p.is_file()}


def _kill_when(process, condition, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            break
        time.sleep(0.002)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


def _done(output: Path) -> set:
    """The chunks recorded done; as for the run, a record cut short by the kill (being
    written when it landed) does not count."""
    folder = output / pipeline.DONE_PREFIX
    done = set()
    for record in folder.iterdir() if folder.exists() else ():
        try:
            json.loads(record.read_text())
        except ValueError:
            continue
        done.add(record.name)
    return done


@pytest.fixture(scope="module")
def killable(tmp_path_factory):
    """A 400-frame store in 10-frame chunks, the command on it, and an uninterrupted run."""
    folder = tmp_path_factory.mktemp("killable")
    source = folder / "in.zarr"
    make_store(source, n_frames=400, chunk=10, shape=(96, 96))

    def command(output, *extra):
        return [
            sys.executable,
            "-m",
            "xreg",
            "register",
            str(source),
            str(output),
            "--workers",
            "1",
            *extra,
        ]

    clean = folder / "clean.zarr"
    subprocess.run(command(clean, "--quiet"), check=True)
    return command, clean


def test_killed_runs_resume_to_identical_output(tmp_path, killable):
    command, clean = killable

    # Killed in the middle of the pass: chunks being read, estimated, moved and written.
    killed = tmp_path / "killed.zarr"
    process = subprocess.Popen(command(killed, "--quiet"))
    _kill_when(process, lambda: len(_done(killed)) >= 3)
    state = json.loads((killed / pipeline.RUN_FILE).read_text())
    before = _done(killed)
    assert state["stage"] == "writing" and 3 <= len(before) < 40
    times = {c: (killed / pipeline.DONE_PREFIX / c).stat().st_mtime_ns for c in before}
    resumed = subprocess.run(command(killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # It resumed from the chunks already done: its bar starts there, and they were not redone.
    counts = _bar_counts(resumed.stderr)
    assert counts[0] == (10 * len(before), 400) and counts[-1] == (400, 400)
    for chunk, mtime in times.items():
        assert (killed / pipeline.DONE_PREFIX / chunk).stat().st_mtime_ns == mtime
    assert json.loads((killed / pipeline.RUN_FILE).read_text())["stage"] == "complete"
    xr.testing.assert_identical(xr.open_zarr(clean), xr.open_zarr(killed))
    assert _chunk_files(clean, "movie") == _chunk_files(killed, "movie")

    # Killed while the reference is being built, before any chunk: starts again cleanly.
    early = tmp_path / "early.zarr"
    process = subprocess.Popen(command(early, "--quiet"))
    _kill_when(process, lambda: (early / pipeline.RUN_FILE).exists())
    assert not _done(early)
    subprocess.run(command(early, "--quiet"), check=True)
    xr.testing.assert_identical(xr.open_zarr(clean), xr.open_zarr(early))
    assert _chunk_files(clean, "movie") == _chunk_files(early, "movie")


def test_compression_option(tmp_path):
    _, moved, _ = moved_movie(n_frames=20)
    assert moved.dtype.kind in "iu"
    codecs = {}
    for kind, movie in (("int", moved), ("float", moved.astype("float32"))):
        source = tmp_path / f"{kind}.zarr"
        io.to_zarr(movie.chunk(time=10).to_dataset(name="movie"), source, mode="w")
        for option in ("auto", "lz4"):
            output = tmp_path / f"{kind}-{option}.zarr"
            assert main(["register", str(source), str(output), "--compression", option]) == 0
            codecs[kind, option] = str(zarr.open_array(output, path="movie").compressors)
    assert "zstd" in codecs["int", "auto"] and codecs["float", "auto"] == "()"
    assert "lz4" in codecs["int", "lz4"] and "lz4" in codecs["float", "lz4"]


def _data_chunks(store: Path, var: str = "movie") -> list:
    """The chunk objects of ``var``'s data written so far (not its metadata)."""
    folder = store / var / "c"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_done_records_of_an_empty_folder_are_none(tmp_path):
    """A kill between creating the records' folder and writing the first record into it
    leaves the folder empty: no chunk is done (the resume crashed on it)."""
    (tmp_path / "out.zarr" / pipeline.DONE_PREFIX).mkdir(parents=True)
    store = pipeline.RunStore(str(tmp_path / "out.zarr"))
    assert store.done() == {}
    (tmp_path / "out.zarr" / pipeline.DONE_PREFIX / "2").write_text("[[0.5, -1.0, 0.9]]")
    (tmp_path / "out.zarr" / pipeline.DONE_PREFIX / "3").write_text("[[0.5, -1")  # cut short
    assert list(store.done()) == [2]
    np.testing.assert_array_equal(store.done()[2], [[0.5, -1.0, 0.9]])


def test_killed_while_writing_chunks_resumes_to_identical_output(tmp_path, killable):
    """SIGKILL the moment the registered movie's first chunk objects appear in the store."""
    command, clean = killable
    killed = tmp_path / "killed.zarr"
    process = subprocess.Popen(command(killed, "--quiet"))
    _kill_when(process, lambda: len(_data_chunks(killed)) > 0)
    # It did land while the frames were being written: some chunk objects, not all
    # chunks recorded done, the run not complete.
    written, done = _data_chunks(killed), _done(killed)
    assert 1 <= len(written) and len(done) < 40
    assert json.loads((killed / pipeline.RUN_FILE).read_text())["stage"] == "writing"
    # What a kill inside zarr's own write of an object leaves (it writes a `.partial`
    # file, then renames it), whether or not this kill left one: the resume removes it.
    (killed / "movie" / "c" / "0.0123456789abcdef.partial").write_bytes(b"half")
    resumed = subprocess.run(command(killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _bar_counts(resumed.stderr)[0] == (10 * len(done), 400)
    xr.testing.assert_identical(xr.open_zarr(clean), xr.open_zarr(killed))
    assert _chunk_files(clean, "movie") == _chunk_files(killed, "movie")
