"""Scaling out: the measurements behind docs/SCALING.md and the check of its model, in one run.

    python benchmarks/bench_scale.py [--frames 256] [--rounds 3] [--chunks 4000]
                                     [--overhead-rounds 2] [--check 2000] [--json scale.json]
    python benchmarks/bench_scale.py --summarise scale.json   # summary and model again
    python benchmarks/bench_scale.py --check-only scale.json [--rounds 3] [--json check.json]

1. Per frame, in this process on one thread, in memory, for 512 x 512 uint16 and
   float32 frames, rigid and piecewise (the four take turns): CPU seconds of the
   one-pass work (estimate + apply).
2. Per case, in a fresh process each (memory does not depend on the load): the peak
   resident memory of ``xreg.pipeline.run`` on one thread over 64 frames (two 32-frame
   chunks), the process's memory before the run, and the bytes per frame read and
   written as stored.
3. Spark's seconds per task (``local[2]``, empty tasks), for the model's Spark column.
4. ``--rounds`` rounds; in each, these take turns (so that the machine's load falls on
   all of them alike):

   a. throughput of ``xreg.pipeline.run`` (what ``xreg register`` runs) on a
      ``--frames`` 512 x 512 uint16 movie in 32-frame chunks: local disk and an S3 object
      store (moto's server, in its own process), 1 and 2 worker processes
      (``distributed.LocalCluster``), and twice the frames on 2 workers (weak scaling);
   b. in the first ``--overhead-rounds`` rounds, the per-task overhead: a 32 x 32
      movie of ``--chunks`` frames in one-frame chunks (tens of thousands of tasks, as
      a terabyte makes) against the same frames in 8 chunks, on 2 workers;
   c. the model's check: a ``--check``-frame run (1/1000 of 2 million frames) on 2
      workers from local disk, which the model predicts from the same round's (a) and (b).

5. The model for 1 TB (docs/SCALING.md), from the figures above.

``--check-only`` repeats only the model's check (4a's 2-worker disk run as calibration,
then 4c, in turns) with the overhead runs of an earlier full run's JSON: minutes
instead of half an hour, for a machine that is quiet only for a while.

The machine may be shared with other jobs: everything compared is measured in one run,
in turns, and each round's prediction uses that round's calibration.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

import xreg
from xreg import io, pipeline

SHAPE = (512, 512)
CHUNK = 32  # frames per chunk in the throughput runs (16 MiB of uint16)
CASES = [(d, m) for d in ("uint16", "float32") for m in ("rigid", "piecewise")]
PIECEWISE = {"method": "piecewise", "block_size": 128}


# ----------------------------------------------------------------------------- movies


BASE_FRAMES = 64  # distinct frames rendered; longer movies repeat them


def render(n_frames: int = BASE_FRAMES, shape=SHAPE, seed=0) -> xr.DataArray:
    """A drifting two-photon-like movie (uint16 counts), rendered into memory.

    Rendering is slow (seconds per frame on a loaded machine): longer movies
    repeat these frames (:func:`tiled`), which costs the registration the same.
    """
    still = xreg.datasets.large(n_frames=n_frames, shape=shape, seed=seed, chunks=n_frames)
    moved, _ = xreg.datasets.add_motion(still, max_drift=6, subpixel=True, seed=seed)
    return moved.clip(min=0).astype("uint16").rename("movie").compute()


def tiled(base: xr.DataArray, n_frames: int, dtype="uint16", chunks=CHUNK) -> xr.DataArray:
    """``n_frames`` frames cycling through ``base``, Dask-backed in ``chunks``-frame chunks."""
    import dask.array as dsa

    values = base.values.astype(dtype)

    def block(block_info=None):
        start, stop = block_info[None]["array-location"][0]
        return values[np.arange(start, stop) % len(values)]

    time_chunks = dsa.core.normalize_chunks(chunks, (n_frames,))[0]
    data = dsa.map_blocks(
        block, dtype=dtype, chunks=(time_chunks,) + tuple((s,) for s in values.shape[1:])
    )
    return xr.DataArray(
        data,
        dims=base.dims,
        coords={"time": np.arange(n_frames, dtype=float)},
        attrs=base.attrs,
        name="movie",
    )


def store_size(url: str, options: dict | None = None) -> int:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    return sum(fs.du(root, total=False).values()) if fs.exists(root) else 0


def options_of(method: str) -> dict:
    return dict(PIECEWISE) if method == "piecewise" else {}


# ----------------------------------------------------------------------------- 1. per frame


def per_frame(base: xr.DataArray, rounds: int, n_frames: int = 32) -> dict:
    """CPU seconds per frame (estimate + apply, one thread), the four cases taking turns."""
    import dask
    from threadpoolctl import threadpool_limits

    frames = {d: tiled(base, n_frames, d, chunks=n_frames).compute() for d in ("uint16", "float32")}
    refs = {d: frames[d].mean("time") for d in frames}
    cpu = {c: [] for c in CASES}
    with dask.config.set(scheduler="sync"), threadpool_limits(1):
        for _ in range(rounds):
            for dtype, method in CASES:
                start = time.process_time()
                shifts = frames[dtype].reg.estimate(refs[dtype], **options_of(method))
                frames[dtype].reg.apply(shifts)
                cpu[(dtype, method)].append((time.process_time() - start) / n_frames)
    return {
        f"{d} {m}": {"cpu_s_per_frame_min": min(v), "cpu_s_per_frame_median": float(np.median(v))}
        for (d, m), v in cpu.items()
    }


# ----------------------------------------------------------------------------- 2. memory


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def memory_case(folder: str, dtype: str, method: str) -> None:
    """In a fresh process: one chunk task's memory, as a one-thread worker runs it."""
    import dask

    source, output = f"{folder}/{dtype}.zarr", f"{folder}/{dtype}-{method}-out.zarr"
    data = io.open_movie(source)
    gc.collect()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts here
    with dask.config.set(scheduler="sync"):
        pipeline.run(
            data,
            output,
            reference=lambda: io.open_reference("first:32", data),
            settings={"input": source, "method": method},
            estimate_options=options_of(method),
            overwrite=True,
        )
    print(json.dumps({"before": before, "peak": _status("VmHWM")}))


def memory_and_bytes(base: xr.DataArray, folder: Path, n_frames: int = 64) -> dict:
    """Peak memory of a one-thread run and the stored bytes per frame, per case."""
    out = {}
    for dtype in ("uint16", "float32"):
        io.to_zarr(tiled(base, n_frames, dtype).to_dataset(), folder / f"{dtype}.zarr", mode="w")
    for dtype, method in CASES:
        command = [sys.executable, __file__, "--memory-case", str(folder), dtype, method]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        source, output = folder / f"{dtype}.zarr", folder / f"{dtype}-{method}-out.zarr"
        out[f"{dtype} {method}"] = {
            "rss_before_bytes": figures["before"],
            "peak_rss_bytes": figures["peak"],
            "chunk_frames": CHUNK,
            "raw_bytes_per_frame": int(np.prod(SHAPE)) * np.dtype(dtype).itemsize,
            "stored_in_bytes_per_frame": store_size(str(source / "movie")) / n_frames,
            "stored_out_bytes_per_frame": store_size(str(output / "movie")) / n_frames,
            # displacements, the run's records and the reference, per frame of this run
            "other_out_bytes_per_frame": (
                store_size(str(output)) - store_size(str(output / "movie"))
            )
            / n_frames,
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
                    self.__exit__()
                    raise
                time.sleep(0.2)
        import s3fs

        s3fs.S3FileSystem(endpoint_url=self.endpoint).mkdir("bench")
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


# ----------------------------------------------------------------------------- one run


def pass_tasks(stream, after: float) -> dict:
    """Worker seconds in the pass's tasks (those started after ``after``, a time.time()).

    Per kind: ``read`` (opening and slicing the input chunk), ``register`` (estimate and
    apply), ``write`` (encode and store the frames, record the chunk as done); their sum
    ``task_s``; and ``span_s``, from the first start to the last end.
    """
    seconds = {"read": 0.0, "register": 0.0, "write": 0.0}
    starts, stops = [], []
    for task in stream:
        key = str(task["key"])
        kind = (
            "register" if "register_block" in key else "write" if "write_block" in key else "read"
        )
        for span in task["startstops"]:
            if span["action"] == "compute" and span["start"] >= after:
                seconds[kind] += span["stop"] - span["start"]
                starts.append(span["start"])
                stops.append(span["stop"])
    return {"task_s": sum(seconds.values()), "span_s": max(stops) - min(starts), **seconds}


def worker_cpu(client) -> float:
    """CPU seconds used so far by the cluster's worker processes."""

    def used():
        import psutil

        times = psutil.Process().cpu_times()
        return times.user + times.system

    return sum(client.run(used).values())


def worker_peak_rss(client) -> int:
    """The largest high-water mark of resident memory among the workers (bytes)."""
    return max(client.run(_status, "VmHWM").values())


def register(client, source: str, output: str, options: dict | None, chunk: int | None = None):
    """One ``xreg register``-like run on ``client``: wall, CPU and task figures."""
    from distributed import get_task_stream

    data = io.open_movie(source, chunk_frames=chunk, storage_options=options)
    with client.as_current(), get_task_stream(client) as stream:
        cpu0, main0 = worker_cpu(client), time.process_time()
        start = time.perf_counter()
        reference_s, reference_end = [], []

        def reference():
            begin = time.perf_counter()
            image = io.open_reference("first:32", data, storage_options=options)
            reference_s.append(time.perf_counter() - begin)
            reference_end.append(time.time())  # the task stream's clock
            return image

        pipeline.run(
            data,
            output,
            reference=reference,
            settings={"input": source},
            overwrite=True,
            storage_options=options,
        )
        wall = time.perf_counter() - start
        # This process: the client and, in a LocalCluster, the scheduler (the serial part).
        main = time.process_time() - main0
        cpu = worker_cpu(client) - cpu0
    return {
        "frames": data.sizes["time"],
        "chunks": len(data.chunks[0]),
        "workers": len(client.scheduler_info()["workers"]),
        "wall_s": wall,
        "worker_cpu_s": cpu,
        "main_cpu_s": main,
        "reference_s": reference_s[0],
        **pass_tasks(stream.data, reference_end[0]),
        "tasks": len(stream.data),
    }


# ----------------------------------------------------------------------------- 3. spark


def spark_overhead(n_tasks: int = 500) -> dict | None:
    """Seconds per task of a local[2] Spark job of empty tasks, over a 2-task job."""
    if importlib.util.find_spec("pyspark") is None:
        return None
    from xreg.spark import local_context

    sc = local_context("xreg-bench-scale", settings={"spark.python.worker.reuse": "true"})
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


# ----------------------------------------------------------------------------- 5. the model


def calibrate(run: dict, small: dict, big: dict) -> dict:
    """The model's inputs from one calibrating run and one pair of overhead runs.

    ``c``: worker seconds per frame in the pass's tasks (read, estimate, apply, encode,
    write), which is ``cpu`` (worker CPU seconds per frame) over ``share`` (of a
    core).  ``serial``: this process's CPU seconds per chunk beyond the work (client,
    scheduler, the per-chunk records), from the one-frame-chunk run against the
    8-chunk run of the same frames.  ``fixed``: what the calibrating run spent beyond
    its workers' share of the work and the serial part (reference, layout,
    displacements, start-up).
    """
    serial = (small["main_cpu_s"] - big["main_cpu_s"]) / (small["chunks"] - big["chunks"])
    c = run["task_s"] / run["frames"]
    work = run["frames"] * c / run["workers"]
    return {
        "c_s": c,
        "serial_s_per_chunk": serial,
        "fixed_s": run["wall_s"] - max(work, run["chunks"] * serial),
        # c split into what the workers' cores did and the share of a core they had:
        # c = cpu / share (the share is the machine's load, not xreg's).
        "cpu_s": run["worker_cpu_s"] / run["frames"],
        "share": run["worker_cpu_s"] / run["task_s"],
    }


def check_round(calibration: dict, small: dict, big: dict, measured: dict) -> dict:
    """One round's check: the model's inputs from its calibrating run and overhead pair,
    and its prediction of the ``measured`` check run."""
    inputs = calibrate(calibration, small, big)
    predicted = predict(measured["frames"], 2, inputs)
    return {"inputs": inputs, "predicted": predicted, "measured": measured}


def show_check(round_: int, item: dict) -> None:
    predicted, measured = item["predicted"]["wall_s"], item["measured"]["wall_s"]
    print(
        f"round {round_ + 1} check: predicted {predicted:.1f} s, measured {measured:.1f} s "
        f"({measured / predicted - 1:+.0%})",
        flush=True,
    )


def predict(frames: int, workers: int, inputs: dict, chunk: int = CHUNK) -> dict:
    """Wall seconds of a run: its fixed part, then the slower of the workers and the serial part.

    The workers' part counts whole chunks: the busiest worker does ``ceil(K / N)`` of
    the K chunks (63 chunks on 2 workers: 32, not 31.5).
    """
    chunks = math.ceil(frames / chunk)
    work = min(frames, math.ceil(chunks / workers) * chunk) * inputs["c_s"]
    serial = chunks * inputs["serial_s_per_chunk"]
    return {
        "work_s": work,
        "serial_s": serial,
        "fixed_s": inputs["fixed_s"],
        "wall_s": inputs["fixed_s"] + max(work, serial),
    }


def terabyte(figures: dict, store_mb_s: float, price: float) -> list[dict]:
    """The model for 2 million 512 x 512 uint16 frames on N one-core workers.

    CPU: the worker CPU seconds per frame of the 1-worker S3 runs (what a dedicated
    core needs, HTTP client and codecs included).  Store: the raw frames in and out
    (512 KiB each way, no compression: the worst case) at ``store_mb_s`` per worker
    (an assumption).  Serial: Dask, the measured CPU seconds per chunk of the client
    and scheduler; Spark, the driver's seconds per task (one task per chunk).
    Memory: the peak of a one-thread run (uint16 rigid) plus the worker's own.
    """
    frames, raw = 2_000_000, SHAPE[0] * SHAPE[1] * 2
    chunks = frames / CHUNK
    cpu = figures["summary"]["s3 1"]["worker_cpu_s_per_frame_median"]
    serials = {"dask": figures["summary"]["model_inputs_median"]["serial_s_per_chunk"]}
    if figures.get("spark"):
        serials["spark"] = figures["spark"]["s_per_task"]
    memory = figures["memory"]["uint16 rigid"]["peak_rss_bytes"]
    rows = []
    for engine, per_chunk in serials.items():
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
                    "memory_gb": memory / 1e9,
                    **{f"{k}_h": v / 3600 for k, v in parts.items()},
                }
            )
    return rows


# ----------------------------------------------------------------------------- main


def summarise(runs: dict, check: list, n_check: int) -> dict:
    """Min and median of each kind of run; each round's prediction of its check."""
    out = {}
    for name, values in runs.items():
        if name.startswith("tiny"):
            continue
        f = values[0]["frames"]
        walls = [v["wall_s"] for v in values]
        out[name] = {
            "frames": f,
            "workers": values[0]["workers"],
            "wall_s_min": min(walls),
            "wall_s_median": float(np.median(walls)),
            "frames_per_s_best": f / min(walls),
            "frames_per_s_median": f / float(np.median(walls)),
            "worker_cpu_s_per_frame_median": float(np.median([v["worker_cpu_s"] for v in values]))
            / f,
            **{
                f"{kind}_s_per_frame_median": float(np.median([v[kind] for v in values])) / f
                for kind in ("task_s", "read", "register", "write")
            },
            "core_share_per_worker_median": float(
                np.median([v["worker_cpu_s"] / v["wall_s"] / v["workers"] for v in values])
            ),
        }
    small, big = runs["tiny small"], runs["tiny big"]
    tasks = small[0]["tasks"] - big[0]["tasks"]
    per_task = [(s["wall_s"] - b["wall_s"]) / tasks for s, b in zip(small, big, strict=True)]
    serial = [(s["main_cpu_s"] - b["main_cpu_s"]) / tasks for s, b in zip(small, big, strict=True)]
    out["overhead"] = {
        "frames": small[0]["frames"],
        "tasks_small_chunks": small[0]["tasks"],
        "tasks_big_chunks": big[0]["tasks"],
        "tasks_per_chunk": small[0]["tasks"] / small[0]["chunks"],
        "wall_s_per_task_min": min(per_task),
        "wall_s_per_task_median": float(np.median(per_task)),
        "serial_cpu_s_per_task_min": min(serial),
        "serial_cpu_s_per_task_median": float(np.median(serial)),
        "worker_cpu_s_per_task_median": float(
            np.median(
                [
                    (s["worker_cpu_s"] - b["worker_cpu_s"]) / tasks
                    for s, b in zip(small, big, strict=True)
                ]
            )
        ),
    }
    # The model's inputs at the min and the median over rounds, and its check.
    inputs = [item["inputs"] for item in check]
    measured = [item["measured"]["wall_s"] for item in check]
    # The work term alone, in CPU seconds (what the load does not change), each round;
    # and the wall time with the share of a core the check's workers actually had.
    out["check_rounds"] = []
    for item in check:
        run, cal = item["measured"], item["inputs"]
        share = run["worker_cpu_s"] / run["task_s"]
        at_share = predict(n_check, 2, dict(cal, c_s=cal["cpu_s"] / share))["wall_s"]
        out["check_rounds"].append(
            {
                "predicted_wall_s": item["predicted"]["wall_s"],
                "measured_wall_s": run["wall_s"],
                "wall_error": run["wall_s"] / item["predicted"]["wall_s"] - 1,
                "predicted_worker_cpu_s": n_check * cal["cpu_s"],
                "measured_worker_cpu_s": run["worker_cpu_s"],
                "cpu_error": run["worker_cpu_s"] / (n_check * cal["cpu_s"]) - 1,
                "share_calibration": cal["share"],
                "share_check": share,
                "predicted_wall_at_check_share_s": at_share,
                "wall_at_check_share_error": run["wall_s"] / at_share - 1,
            }
        )
    for stat, f in (("min", min), ("median", lambda v: float(np.median(v)))):
        chosen = {k: f([i[k] for i in inputs]) for k in inputs[0]}
        out[f"model_inputs_{stat}"] = chosen
        predicted = predict(n_check, 2, chosen)["wall_s"]
        out[f"check_{stat}"] = {
            "predicted_s": predicted,
            "measured_s": f(measured),
            "error": f(measured) / predicted - 1,
        }
    return out


def check_only(args) -> None:
    """The model's check alone: in each round the calibrating run, then the check."""
    from distributed import Client, LocalCluster

    earlier = json.loads(args.check_only.read_text())["runs"]
    small, big = earlier["tiny small"][-1], earlier["tiny big"][-1]
    figures = {"argv": sys.argv[1:], "load_average_at_start": os.getloadavg()}
    base = render()
    with contextlib.ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="xreg-bench-check-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        cluster = stack.enter_context(
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        )
        client = stack.enter_context(Client(cluster, set_as_default=False))
        inputs = {"disk 2": folder / "in.zarr", "check": folder / "check-in.zarr"}
        io.to_zarr(tiled(base, args.frames).to_dataset(), inputs["disk 2"], mode="w")
        io.to_zarr(tiled(base, args.check).to_dataset(), inputs["check"], mode="w")
        register(client, str(inputs["disk 2"]), str(folder / "out.zarr"), None)  # warm-up
        runs, check = {"disk 2": [], "check": []}, []
        for round_ in range(args.rounds):
            for name, source in inputs.items():
                runs[name].append(register(client, str(source), str(folder / "out.zarr"), None))
            check.append(check_round(runs["disk 2"][-1], small, big, runs["check"][-1]))
            show_check(round_, check[-1])
    runs.update({"tiny small": [small], "tiny big": [big]})
    figures.update(runs=runs, check_rounds=check, load_average_at_end=os.getloadavg())
    figures["summary"] = summarise(runs, check, args.check)
    print(
        json.dumps(
            {k: figures["summary"][k] for k in ("check_rounds", "check_min", "check_median")},
            indent=1,
        )
    )
    start, end = figures["load_average_at_start"], figures["load_average_at_end"]
    print(f"load average: start {start}, end {end}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256, help="frames of the throughput runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=4000, help="one-frame chunks (overhead)")
    parser.add_argument(
        "--overhead-rounds", type=int, default=2, help="rounds that include the overhead runs"
    )
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
    parser.add_argument("--memory-case", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--summarise", type=Path, help="recompute the summary and model from a --json file"
    )
    parser.add_argument(
        "--check-only", type=Path, help="only the check, with the overhead runs of a --json file"
    )
    args = parser.parse_args()
    if args.memory_case:
        memory_case(*args.memory_case)
        return
    if args.check_only:
        check_only(args)
        return
    if args.summarise:
        figures = json.loads(args.summarise.read_text())
        runs, n_check = figures["runs"], figures["runs"]["check"][0]["frames"]
        check = []
        for round_, measured in enumerate(runs["check"]):
            pair = min(round_, len(runs["tiny small"]) - 1)  # the latest overhead runs
            check.append(
                check_round(
                    runs["disk 2"][round_],
                    runs["tiny small"][pair],
                    runs["tiny big"][pair],
                    measured,
                )
            )
        summary = summarise(runs, check, n_check)
        figures["summary"] = summary
        if "s3 1" not in summary or "memory" not in figures:  # a --check-only file
            print(json.dumps({"summary": summary}, indent=1))
            print("(no 1 TB table: this file holds only the check; give a full run's --json)")
            return
        figures["terabyte"] = terabyte(figures, args.store_mb_s, args.price)
        print(json.dumps({"summary": summary, "terabyte": figures["terabyte"]}, indent=1))
        return

    from distributed import Client, LocalCluster

    def show(name, value):
        print(f"{name} (at {time.perf_counter() - started:.0f} s): {json.dumps(value, indent=1)}")
        sys.stdout.flush()

    started = time.perf_counter()
    figures = {"argv": sys.argv[1:], "load_average_at_start": os.getloadavg()}
    base = render()
    figures["rendered_s"] = time.perf_counter() - started
    figures["per_frame"] = per_frame(base, args.rounds)
    show("per_frame", figures["per_frame"])
    folder = Path(tempfile.mkdtemp(prefix="xreg-bench-scale-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        (folder / "memory").mkdir()
        figures["memory"] = memory_and_bytes(base, folder / "memory")
        show("memory", figures["memory"])
        figures["spark"] = spark_overhead()
        show("spark", figures["spark"])

        moto = stack.enter_context(MotoServer())
        clusters = {
            n: stack.enter_context(
                LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
                )
            )
            for n in (1, 2)
        }
        clients = {
            n: stack.enter_context(Client(c, set_as_default=False)) for n, c in clusters.items()
        }
        rss = clients[1].run(_status, "VmRSS")
        figures["worker_rss_bytes_idle"] = max(rss.values())

        # The inputs, written once.
        inputs = {
            "disk": str(folder / "in.zarr"),
            "s3": "s3://bench/in.zarr",
            "weak": str(folder / "weak-in.zarr"),
            "check": str(folder / "check-in.zarr"),
            "tiny": str(folder / "tiny-in.zarr"),
        }
        data = tiled(base, args.frames).to_dataset()
        io.to_zarr(data, inputs["disk"], mode="w")
        io.to_zarr(data, inputs["s3"], mode="w", storage_options=moto.options)
        io.to_zarr(tiled(base, 2 * args.frames).to_dataset(), inputs["weak"], mode="w")
        io.to_zarr(tiled(base, args.check).to_dataset(), inputs["check"], mode="w")
        tiny = tiled(render(shape=(32, 32)), args.chunks, chunks=1).to_dataset()
        io.to_zarr(tiny, inputs["tiny"], mode="w")
        figures["inputs_written_s"] = time.perf_counter() - started

        # (name, client, input, output, storage options, frames per chunk)
        kinds = [
            ("disk 1", 1, "disk", str(folder / "out.zarr"), None, None),
            ("disk 2", 2, "disk", str(folder / "out.zarr"), None, None),
            ("s3 1", 1, "s3", "s3://bench/out.zarr", moto.options, None),
            ("s3 2", 2, "s3", "s3://bench/out.zarr", moto.options, None),
            ("disk 2 weak", 2, "weak", str(folder / "out.zarr"), None, None),
            ("tiny small", 2, "tiny", str(folder / "tiny-out.zarr"), None, 1),
            ("tiny big", 2, "tiny", str(folder / "tiny-out.zarr"), None, -(-args.chunks // 8)),
            ("check", 2, "check", str(folder / "check-out.zarr"), None, None),
        ]
        # Warm-up: each cluster's first run on each store imports and connects.
        for _, n, source, output, options, chunk in kinds[:4]:
            register(clients[n], inputs[source], output, options, chunk)
        runs = {kind[0]: [] for kind in kinds}
        check = []
        peaks = {}
        for round_ in range(args.rounds):
            for name, n, source, output, options, chunk in kinds:
                if name.startswith("tiny") and round_ >= args.overhead_rounds:
                    continue
                result = register(clients[n], inputs[source], output, options, chunk)
                runs[name].append(result)
                elapsed = time.perf_counter() - started
                print(f"round {round_ + 1} {name} (at {elapsed:.0f} s): {json.dumps(result)}")
                sys.stdout.flush()
            peaks = {n: worker_peak_rss(c) for n, c in clients.items()}
            check.append(
                check_round(
                    runs["disk 2"][-1],
                    runs["tiny small"][-1],
                    runs["tiny big"][-1],
                    runs["check"][-1],
                )
            )
            show_check(round_, check[-1])
        figures["runs"] = runs
        figures["check_rounds"] = check
        figures["worker_peak_rss_bytes"] = peaks
    figures["load_average_at_end"] = os.getloadavg()
    figures["total_s"] = time.perf_counter() - started
    if args.json:  # the raw figures, kept even if what follows fails
        args.json.write_text(json.dumps(figures, indent=1))
    figures["summary"] = summarise(runs, check, args.check)
    show("summary", figures["summary"])
    figures["terabyte"] = terabyte(figures, args.store_mb_s, args.price)
    for row in figures["terabyte"]:
        print(
            f"{row['engine']:6} N={row['workers']:5d}  wall {row['wall_h']:8.2f} h  "
            f"(CPU {row['CPU_h']:.2f}, store {row['store_h']:.2f}, scheduler "
            f"{row['scheduler_h']:.2f})  bottleneck {row['bottleneck']:9}  "
            f"cost {row['cost']:7.1f}  memory/worker {row['memory_gb']:.2f} GB"
        )
    start_load, end_load = figures["load_average_at_start"], figures["load_average_at_end"]
    print(f"load average: start {start_load}, end {end_load}; {figures['total_s']:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
