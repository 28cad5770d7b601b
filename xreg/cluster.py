"""Where a command's Dask work runs: threads here, a local cluster, or an existing one.

The library itself needs nothing of this: with a ``distributed.Client`` started, the
usual calls (``movie.reg.estimate``, ``.to_zarr``, :func:`xreg.pipeline.run`) run on
its cluster, as every Dask computation does.  This module is for the command line:
``--scheduler`` (an address or a scheduler file), ``--processes N``, ``--workers N``,
and a progress bar that follows the tasks wherever they run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from .errors import XregError

__all__ = ["check_cluster_options", "compute_on_cluster", "connect"]

CONNECT_TIMEOUT = "5s"  # to reach a scheduler; a cluster that is up answers at once


def check_cluster_options(scheduler: str | None, processes: int | None, threads: int | None):
    """Refuse combinations that cannot mean anything, before any work.

    Raises
    ------
    XregError
        If both ``scheduler`` and ``processes`` are given, if ``threads`` is given with
        ``scheduler`` (a cluster's workers set their own), or if ``scheduler`` is
        neither an address (``tcp://HOST:PORT``) nor an existing scheduler file.
    """
    if scheduler is not None and processes is not None:
        raise XregError(
            "--scheduler runs on an existing cluster and --processes starts a new one; "
            "give one of them."
        )
    if scheduler is not None and threads is not None:
        raise XregError(
            "--workers sets threads on this machine; the workers of a cluster set their "
            "own (`dask worker --nthreads N`). Drop --workers."
        )
    if scheduler is not None and "://" not in scheduler and not Path(scheduler).is_file():
        raise XregError(
            f"--scheduler {scheduler}: expected an address such as tcp://HOST:8786 or a "
            "scheduler file written by `dask scheduler --scheduler-file FILE`."
        )


@contextlib.contextmanager
def connect(scheduler: str | None = None, processes: int | None = None, threads: int | None = None):
    """Run the Dask work inside on a cluster, or on ``threads`` threads here.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://HOST:PORT``) or its scheduler file.
    processes : int, optional
        Start a ``LocalCluster`` of this many worker processes (``threads`` threads each,
        default 1), stopped on leaving.
    threads : int, optional
        Without a cluster: threads of the local scheduler (default: all cores).

    Yields
    ------
    distributed.Client or None
    """
    import dask

    check_cluster_options(scheduler, processes, threads)
    if scheduler is None and processes is None:
        with dask.config.set(scheduler="threads", num_workers=threads):
            yield None
        return
    try:
        import distributed
    except ImportError as error:
        raise XregError(
            "a Dask cluster needs `distributed`; install it with `pip install xreg[distributed]`."
        ) from error
    if processes is not None:
        with (
            distributed.LocalCluster(
                n_workers=processes,
                threads_per_worker=threads or 1,
                processes=True,
                dashboard_address=None,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
        return
    where = {"address": scheduler} if "://" in scheduler else {"scheduler_file": scheduler}
    try:
        client = distributed.Client(**where, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as error:
        raise XregError(
            f"--scheduler {scheduler}: cannot reach the Dask scheduler within "
            f"{CONNECT_TIMEOUT} ({error}). Is it running, and is the address right?"
        ) from error
    with client:
        yield client


def compute_on_cluster(array, report: Callable[[int], None]) -> bool:
    """Compute a Dask array of counts on the current ``distributed`` client, if any.

    ``report(count)`` is called as each block's task finishes on the cluster (the
    local schedulers' callbacks do not see a cluster's tasks).  Returns False, having
    done nothing, when no client is Dask's current scheduler.
    """
    client = _current_client()
    if client is None:
        return False
    from distributed import as_completed

    futures = client.compute(list(array.to_delayed().ravel()))
    for future in as_completed(futures):
        report(int(future.result()[0]))
    return True


def _current_client():
    """The ``distributed`` client Dask computes on now, if any."""
    import dask

    try:
        from distributed import default_client
    except ImportError:
        return None
    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    try:
        return default_client()
    except ValueError:
        return None
