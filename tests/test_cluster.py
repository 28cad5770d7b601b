"""The command line on a real Dask ``distributed`` cluster (2 worker processes)."""

import pytest
import xarray as xr

import xreg
from xreg import XregError, cluster, io
from xreg.cli import main


def make_store(path, n_frames=48, chunk=6, shape=(64, 64), seed=0):
    still = xreg.datasets.mouse(n_frames=n_frames, shape=shape, seed=seed)
    moved, truth = xreg.datasets.add_motion(still, max_drift=3, subpixel=True, seed=seed)
    io.to_zarr(moved.chunk(time=chunk).to_dataset(name="movie"), path, mode="w")
    return moved, truth


def test_estimate_on_the_cluster_matches_threads(dask_cluster, tmp_path):
    from distributed import Client

    make_store(tmp_path / "in.zarr")
    common = ["estimate", str(tmp_path / "in.zarr"), "--reference", "first:5", "--quiet"]
    with Client(dask_cluster) as client:
        before = sum(client.run(lambda dask_worker: len(dask_worker.data)).values())
        assert (
            main(
                [
                    *common,
                    str(tmp_path / "cluster.csv"),
                    "--scheduler",
                    dask_cluster.scheduler_address,
                ]
            )
            == 0
        )
        tasks = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.task_prefixes))
    assert before == 0 and tasks > 0  # the work went to the cluster's scheduler
    assert main([*common, str(tmp_path / "threads.csv")]) == 0
    xr.testing.assert_identical(
        io.read_displacement(tmp_path / "cluster.csv"),
        io.read_displacement(tmp_path / "threads.csv"),
    )


def test_reference_built_with_a_cluster_client_matches_threads(dask_cluster, tmp_path):
    """The sample is read through whichever scheduler is active: the same reference."""
    from distributed import Client

    make_store(tmp_path / "in.zarr")
    movie = xr.open_zarr(tmp_path / "in.zarr")["movie"]
    with Client(dask_cluster):
        on_cluster = movie.reg.reference(n_frames=30)
    xr.testing.assert_identical(on_cluster, movie.reg.reference(n_frames=30))


def test_processes_start_a_local_cluster_of_their_own(tmp_path, capsys):
    make_store(tmp_path / "in.zarr", n_frames=12)
    common = ["estimate", str(tmp_path / "in.zarr"), "--reference", "first:5", "--quiet"]
    assert main([*common, str(tmp_path / "own.csv"), "--processes", "1"]) == 0
    assert main([*common, str(tmp_path / "threads.csv")]) == 0
    xr.testing.assert_identical(
        io.read_displacement(tmp_path / "own.csv"),
        io.read_displacement(tmp_path / "threads.csv"),
    )
    with pytest.raises(SystemExit) as exit_info:
        main([*common, str(tmp_path / "bad.csv"), "--processes", "0"])
    assert exit_info.value.code == 2 and "processes" in capsys.readouterr().err


def test_cluster_options_are_checked_before_any_work(tmp_path):
    with pytest.raises(XregError, match="give one of them"):
        cluster.check_cluster_options("tcp://127.0.0.1:1", 2, None)
    with pytest.raises(XregError, match="Drop --workers"):
        cluster.check_cluster_options("tcp://127.0.0.1:1", None, 2)
    with pytest.raises(XregError, match="expected an address"):
        cluster.check_cluster_options(str(tmp_path / "missing.json"), None, None)


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    import socket
    import time

    make_store(tmp_path / "in.zarr", n_frames=6)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    code = main(
        [
            "estimate",
            str(tmp_path / "in.zarr"),
            str(tmp_path / "s.csv"),
            "--quiet",
            "--scheduler",
            f"tcp://127.0.0.1:{port}",
        ]
    )
    assert code == 2 and time.monotonic() - start < 30
    assert not (tmp_path / "s.csv").exists()


def _store_files(path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_register_on_the_cluster_matches_threads_and_shows_progress(dask_cluster, tmp_path, capsys):
    source = tmp_path / "in.zarr"
    make_store(source, n_frames=48, chunk=6)
    common = ["register", str(source), "--reference", "first:5"]
    assert main([*common, str(tmp_path / "threads.zarr"), "--quiet"]) == 0
    capsys.readouterr()
    address = dask_cluster.scheduler_address
    assert main([*common, str(tmp_path / "cluster.zarr"), "--scheduler", address]) == 0
    bar = capsys.readouterr().err
    assert "48/48" in bar and "registered 48 frames" in bar
    xr.testing.assert_identical(
        xr.open_zarr(tmp_path / "threads.zarr"), xr.open_zarr(tmp_path / "cluster.zarr")
    )
    movie = lambda name: {  # noqa: E731
        k: v for k, v in _store_files(tmp_path / name).items() if k.parts[0] == "movie"
    }
    assert movie("threads.zarr") == movie("cluster.zarr")


def test_a_worker_killed_mid_run_costs_a_retry_not_the_run(dask_cluster, tmp_path):
    import os
    import signal
    import threading
    import time

    from distributed import Client

    from xreg import pipeline

    source = tmp_path / "in.zarr"
    make_store(source, n_frames=240, chunk=4)
    common = ["register", str(source), "--reference", "first:5", "--quiet"]
    assert main([*common, str(tmp_path / "clean.zarr")]) == 0

    with Client(dask_cluster) as client:
        pids = sorted(client.run(os.getpid).values())
    output = tmp_path / "disturbed.zarr"
    done = output / pipeline.DONE_PREFIX
    codes = []
    address = dask_cluster.scheduler_address
    run = threading.Thread(
        target=lambda: codes.append(main([*common, str(output), "--scheduler", address]))
    )
    run.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.is_alive():
        if done.exists() and len(list(done.iterdir())) >= 3:
            break
        time.sleep(0.005)
    assert run.is_alive(), "the run finished before a worker could be killed"
    finished_at_kill = len(list(done.iterdir()))
    os.kill(pids[0], signal.SIGKILL)  # one worker process ends, its tasks with it
    run.join(120)
    assert codes == [0] and finished_at_kill < 60
    with Client(dask_cluster) as client:
        client.wait_for_workers(2, timeout=60)  # the nanny restarted it
        assert pids[0] not in client.run(os.getpid).values()
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "clean.zarr"), xr.open_zarr(output))
    movie = lambda name: {  # noqa: E731
        k: v for k, v in _store_files(tmp_path / name).items() if k.parts[0] == "movie"
    }
    assert movie("clean.zarr") == movie("disturbed.zarr")
