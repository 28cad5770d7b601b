"""Scaling out: the measurements behind docs/SCALING.md, taking turns in one run.

    python benchmarks/bench_scale.py [--frames 256] [--rounds 2] [--chunks 8000]
                                     [--check 2000] [--json scale.json]

1. Per frame, in one process on one thread, for 512 x 512 uint16 and float32 frames,
   rigid and piecewise (the four take turns): CPU seconds of the one-pass work
   (estimate + apply), the bytes read and written (raw, and as stored), and the peak
   memory a chunk of 32 frames needs (tracemalloc, numpy's buffers included).
2. Throughput of ``xreg.pipeline.run`` (what ``xreg register`` runs) on a 512 x 512
   uint16 movie: 1 against 2 worker processes (``distributed.LocalCluster``), local
   disk against an S3 object store (moto's server, in its own process), the four
   taking turns; worker CPU seconds per frame and each worker's share of a core.
3. The scheduler's overhead per task: the same run on a tiny-frame movie cut into
   ``--chunks`` one-frame chunks (tens of thousands of tasks, as a terabyte makes)
   against the same frames in 8 chunks, on the 2-process cluster.
4. Spark's overhead per task (local[2]), for the model's Spark column.
5. The model (docs/SCALING.md) predicts the wall time of a ``--check``-frame run
   (1/1000 of 2 million frames) on 2 worker processes from 1-4; then that run is
   made and the two compared.

The machine may be shared with other jobs: everything that is compared is measured
in the same run, in turns; the worker's share of a core is measured, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import xarray as xr

import xreg
from xreg import io, pipeline

SHAPE = (512, 512)
CHUNK = 32  # frames per chunk in the throughput runs (16 MiB of uint16)


# ----------------------------------------------------------------------------- movies


def movie(n_frames: int, dtype="uint16", shape=SHAPE, chunks=CHUNK, seed=0) -> xr.DataArray:
    """A drifting two-photon-like movie, Dask-backed, rendered on demand."""
    still = xreg.datasets.large(n_frames=n_frames, shape=shape, seed=seed, chunks=chunks)
    moved, _ = xreg.datasets.add_motion(still, max_drift=6, subpixel=True, seed=seed)
    if np.dtype(dtype).kind == "u":
        moved = moved - min(0, float(moved.min()))  # int16 counts made non-negative
    return moved.astype(dtype).rename("movie")


def store_size(url: str, options: dict | None) -> int:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    return sum(fs.du(root, total=False).values()) if fs.exists(root) else 0


# ----------------------------------------------------------------------------- 1. per frame


def per_frame(rounds: int, n_frames: int = 32) -> dict:
    """CPU seconds per frame and peak memory per chunk, the four cases taking turns."""
    import dask
    from threadpoolctl import threadpool_limits

    cases = [(d, m) for d in ("uint16", "float32") for m in ("rigid", "piecewise")]
    frames = {d: movie(n_frames, d, chunks=n_frames).compute() for d in ("uint16", "float32")}
    refs = {d: frames[d].mean("time") for d in frames}
    cpu = {c: [] for c in cases}
    peak = {}
    with dask.config.set(scheduler="sync"), threadpool_limits(1):
        for _ in range(rounds):
            for dtype, method in cases:
                data = frames[dtype]
                options = {"method": method, "block_size": 128} if method == "piecewise" else {}
                start = time.process_time()
                shifts = data.reg.estimate(refs[dtype], **options)
                data.reg.apply(shifts)
                cpu[(dtype, method)].append((time.process_time() - start) / n_frames)
                if (dtype, method) not in peak:
                    tracemalloc.start()
                    shifts = data.reg.estimate(refs[dtype], **options)
                    data.reg.apply(shifts)
                    peak[(dtype, method)] = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
    out = {}
    for dtype, method in cases:
        raw = int(np.prod(SHAPE)) * np.dtype(dtype).itemsize
        out[f"{dtype} {method}"] = {
            "cpu_s_per_frame": float(np.median(cpu[(dtype, method)])),
            "raw_bytes_per_frame": raw,
            "peak_bytes_per_chunk": int(peak[(dtype, method)]),
            "chunk_frames": n_frames,
            "peak_over_chunk": peak[(dtype, method)] / (raw * n_frames),
        }
    return out


# ----------------------------------------------------------------------------- object store


class MotoServer:
    """moto's S3 server in its own process (so it does not share our interpreter)."""

    def __enter__(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        code = (
            "import logging; logging.getLogger('werkzeug').setLevel(logging.ERROR);"
            "from moto.server import ThreadedMotoServer as S;"
            f"s = S(ip_address='127.0.0.1', port={port}, verbose=False); s.start();"
            "import time\nwhile True: time.sleep(3600)"
        )
        self.process = subprocess.Popen([sys.executable, "-c", code])
        self.endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
        )
        self.options = {"endpoint_url": self.endpoint, "key": "bench", "secret": "bench"}
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        import s3fs

        s3fs.S3FileSystem(endpoint_url=self.endpoint).mkdir("bench")
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


# ----------------------------------------------------------------------------- 2. throughput


def register(source: str, output: str, options: dict | None, chunk: int | None = None) -> float:
    """One ``xreg register``-like run on the current Dask client; its wall seconds."""
    start = time.perf_counter()
    data = io.open_movie(source, chunk_frames=chunk, storage_options=options)
    pipeline.run(
        data,
        output,
        reference=lambda: io.open_reference("first:32", data, storage_options=options),
        settings={"input": source},
        overwrite=True,
        storage_options=options,
    )
    return time.perf_counter() - start


def chunk_task_seconds(stream) -> float:
    """Seconds the workers spent in the pipeline's chunk tasks (one per chunk)."""
    total = 0.0
    for task in stream:
        if "write_block" in str(task["key"]):
            spans = [s for s in task["startstops"] if s["action"] == "compute"]
            total += sum(s["stop"] - s["start"] for s in spans)
    return total


def worker_cpu(client) -> float:
    """CPU seconds used so far by the cluster's worker processes (their own, and children)."""

    def used():
        import psutil

        times = psutil.Process().cpu_times()
        return times.user + times.system

    return sum(client.run(used).values())


def throughput(folder: Path, moto: MotoServer, clients: dict, n_frames: int, rounds: int):
    """Frames/s and worker CPU per frame: disk and object store, 1 and 2 workers, in turns."""
    from distributed import get_task_stream

    local_in = str(folder / "through-in.zarr")
    remote_in = "s3://bench/through-in.zarr"
    data = movie(n_frames).to_dataset()
    io.to_zarr(data, local_in, mode="w")
    io.to_zarr(data, remote_in, mode="w", storage_options=moto.options)
    stores = {
        "disk": (local_in, str(folder / "through-out.zarr"), None),
        "s3": (remote_in, "s3://bench/through-out.zarr", moto.options),
    }
    runs = {(s, n): [] for s in stores for n in clients}
    for _ in range(rounds):
        for store, (source, output, options) in stores.items():
            for n, client in clients.items():
                with client.as_current(), get_task_stream(client) as stream:
                    cpu0 = worker_cpu(client)
                    wall = register(source, output, options)
                    cpu = worker_cpu(client) - cpu0
                runs[(store, n)].append((wall, cpu, chunk_task_seconds(stream.data)))
    out = {}
    for (store, n), values in runs.items():
        wall = float(np.median([w for w, _, _ in values]))
        cpu = float(np.median([c for _, c, _ in values]))
        tasks = float(np.median([t for _, _, t in values]))
        source, output, options = stores[store]
        out[f"{store} {n}"] = {
            "frames": n_frames,
            "wall_s": wall,
            "frames_per_s": n_frames / wall,
            "worker_cpu_s_per_frame": cpu / n_frames,
            "core_share_per_worker": cpu / wall / n,
            # The chunk tasks (read, estimate, apply, write a chunk): worker seconds
            # per frame, and what the rest of the run took (reference, layout, finish).
            "chunk_task_s_per_frame": tasks / n_frames,
            "fixed_s": wall - tasks / n,
            "stored_in_bytes_per_frame": store_size(source, options) / n_frames,
            "stored_out_bytes_per_frame": store_size(output, options) / n_frames,
        }
    return out


# ----------------------------------------------------------------------------- 3. scheduler


def overhead(folder: Path, client, chunks: int, rounds: int) -> dict:
    """Scheduler seconds per task: one-frame chunks against 8 chunks, same frames."""
    from distributed import get_task_stream

    shape = (32, 32)
    source = str(folder / "tiny-in.zarr")
    io.to_zarr(movie(chunks, "uint16", shape=shape, chunks=1).to_dataset(), source, mode="w")
    runs = {chunks: [], 8: []}
    tasks = {}
    for _ in range(rounds):
        for n_chunks in runs:
            with client.as_current(), get_task_stream(client) as stream:
                wall = register(source, str(folder / "tiny-out.zarr"), None, -(-chunks // n_chunks))
            runs[n_chunks].append(wall)
            tasks[n_chunks] = len(stream.data)
    small, big = (float(np.median(runs[k])) for k in (chunks, 8))
    return {
        "frames": chunks,
        "tasks_small_chunks": tasks[chunks],
        "tasks_big_chunks": tasks[8],
        "wall_small_chunks_s": small,
        "wall_big_chunks_s": big,
        "s_per_task": (small - big) / (tasks[chunks] - tasks[8]),
        "tasks_per_chunk": tasks[chunks] / chunks,
    }


# ----------------------------------------------------------------------------- 4. spark


def spark_overhead(n_tasks: int = 2000) -> dict | None:
    """Seconds per task of a local[2] Spark job of empty tasks, over a 2-task job."""
    try:
        import pyspark
    except ImportError:
        return None
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = (
        pyspark.SparkConf()
        .setMaster("local[2]")
        .setAppName("xreg-bench-scale")
        .set("spark.ui.enabled", "false")
        .set("spark.driver.host", "127.0.0.1")
        .set("spark.driver.bindAddress", "127.0.0.1")
        .set("spark.python.worker.reuse", "true")
    )
    sc = pyspark.SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    try:
        sc.parallelize(range(2), 2).map(lambda x: x).count()  # start the Python workers
        walls = {}
        for n in (2, n_tasks):
            start = time.perf_counter()
            sc.parallelize(range(n), n).map(lambda x: x).count()
            walls[n] = time.perf_counter() - start
    finally:
        sc.stop()
    return {"tasks": n_tasks, "s_per_task": (walls[n_tasks] - walls[2]) / (n_tasks - 2)}


# ----------------------------------------------------------------------------- 5. model


def predict(
    frames: int,
    workers: int,
    task_s_per_frame: float,
    fixed_s: float,
    s_per_task: float,
    tasks_per_chunk: float,
    chunk: int = CHUNK,
) -> dict:
    """Wall seconds of a run: its fixed part, then the slower of workers and scheduler."""
    workers_s = frames * task_s_per_frame / workers
    scheduler_s = frames / chunk * tasks_per_chunk * s_per_task
    return {
        "workers_s": workers_s,
        "scheduler_s": scheduler_s,
        "fixed_s": fixed_s,
        "wall_s": fixed_s + max(workers_s, scheduler_s),
    }


def terabyte(figures: dict, store_mb_s: float, price: float) -> list[dict]:
    """The model for 2 million 512 x 512 uint16 frames on N one-core workers.

    CPU seconds per frame: the chunk tasks' worker time per frame on one worker, times
    the core share it had (what a dedicated core would need).  Store traffic: the raw
    frames in and out (1 MiB a frame, the worst case: no compression), at
    ``store_mb_s`` per worker (an assumption, see docs/SCALING.md).  Scheduler: the
    measured seconds per task, times the tasks (``tasks_per_chunk`` per 32-frame chunk),
    one scheduler for all workers.  Memory: a worker's own, plus the peak working set
    of a chunk and its input and output.
    """
    frames, raw = 2_000_000, SHAPE[0] * SHAPE[1] * 2
    one = figures["throughput"]["disk 1"]
    cpu = one["chunk_task_s_per_frame"] * min(1.0, one["core_share_per_worker"])
    chunks = frames / CHUNK
    overheads = {"dask": figures["overhead"]["s_per_task"] * figures["overhead"]["tasks_per_chunk"]}
    if figures.get("spark"):
        overheads["spark"] = figures["spark"]["s_per_task"]  # one task per chunk
    chunk_memory = figures["per_frame"]["uint16 rigid"]["peak_bytes_per_chunk"] + 2 * raw * CHUNK
    rows = []
    for engine, per_chunk in overheads.items():
        for n in (1, 16, 64, 256, 1024, 4096):
            parts = {
                "CPU": frames * cpu / n,
                "store": frames * 2 * raw / (n * store_mb_s * 1e6),
                "scheduler": chunks * per_chunk,
            }
            wall = max(parts.values())
            rows.append(
                {
                    "engine": engine,
                    "workers": n,
                    "wall_h": wall / 3600,
                    "bottleneck": max(parts, key=parts.get),
                    "cost": n * wall / 3600 * price,
                    "memory_gb": (figures["worker_rss_bytes"] + chunk_memory) / 1e9,
                    **{f"{k}_h": v / 3600 for k, v in parts.items()},
                }
            )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256, help="frames of the throughput runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=8000, help="one-frame chunks (overhead)")
    parser.add_argument("--check", type=int, default=2000, help="frames of the model's check")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--store-mb-s",
        type=float,
        default=100.0,
        help="object-store bandwidth per worker assumed for 1 TB (MB/s)",
    )
    parser.add_argument(
        "--price",
        type=float,
        default=0.05,
        help="price of a one-core worker per hour assumed for 1 TB",
    )
    parser.add_argument("--skip", nargs="*", default=[], help="sections to skip: frame spark")
    args = parser.parse_args()

    from distributed import Client, LocalCluster, get_task_stream

    figures = {"load_average_at_start": os.getloadavg()}
    if "frame" not in args.skip:
        figures["per_frame"] = per_frame(args.rounds)
        print(json.dumps(figures["per_frame"], indent=1), flush=True)
    if "spark" not in args.skip:
        figures["spark"] = spark_overhead()
        print(json.dumps(figures["spark"], indent=1), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="xreg-bench-scale-"))
    clusters = {
        n: LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        for n in (1, 2)
    }
    clients = {n: Client(c, set_as_default=False) for n, c in clusters.items()}
    try:
        rss = clients[1].run(lambda: __import__("psutil").Process().memory_info().rss)
        figures["worker_rss_bytes"] = max(rss.values())  # a worker before any work
        with MotoServer() as moto:
            figures["throughput"] = throughput(folder, moto, clients, args.frames, args.rounds)
        print(json.dumps(figures["throughput"], indent=1), flush=True)
        figures["overhead"] = overhead(folder, clients[2], args.chunks, 1)
        print(json.dumps(figures["overhead"], indent=1), flush=True)

        # The model's check: 2 workers, local disk, `--check` frames, predicted from the
        # 2-worker disk runs above (per-frame task time and fixed part) and the overhead.
        run = figures["throughput"]["disk 2"]
        prediction = predict(
            args.check,
            2,
            run["chunk_task_s_per_frame"],
            run["fixed_s"],
            figures["overhead"]["s_per_task"],
            figures["overhead"]["tasks_per_chunk"],
        )
        source = str(folder / "check-in.zarr")
        io.to_zarr(movie(args.check).to_dataset(), source, mode="w")
        with clients[2].as_current(), get_task_stream(clients[2]) as stream:
            cpu0 = worker_cpu(clients[2])
            wall = register(source, str(folder / "check-out.zarr"), None)
            share = (worker_cpu(clients[2]) - cpu0) / wall / 2
        tasks = chunk_task_seconds(stream.data)
        figures["check"] = {
            "frames": args.check,
            "predicted": prediction,
            "measured_wall_s": wall,
            "measured_core_share_per_worker": share,
            "measured_chunk_task_s_per_frame": tasks / args.check,
            "measured_fixed_s": wall - tasks / 2,
            "error": wall / prediction["wall_s"] - 1,
        }
        print(json.dumps(figures["check"], indent=1), flush=True)
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()
        shutil.rmtree(folder, ignore_errors=True)
    figures["load_average_at_end"] = os.getloadavg()
    if "per_frame" in figures:
        figures["terabyte"] = terabyte(figures, args.store_mb_s, args.price)
        for row in figures["terabyte"]:
            print(
                f"{row['engine']:6} N={row['workers']:5d}  wall {row['wall_h']:8.2f} h  "
                f"(CPU {row['CPU_h']:.2f}, store {row['store_h']:.2f}, scheduler "
                f"{row['scheduler_h']:.2f})  bottleneck {row['bottleneck']:9}  "
                f"cost {row['cost']:7.1f}  memory/worker {row['memory_gb']:.2f} GB"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
