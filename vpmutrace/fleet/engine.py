"""Per-capture tasks on Dask distributed: a local cluster of worker processes, or a running scheduler.

Dask is an optional extra (``pip install 'vpmutrace[fleet]'``); without it the fleet commands stop
with one line saying so. Workers are processes with one thread each (the analyzers hold the GIL
in places; polars and the Parquet reader use their own threads inside a task).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from vpmutrace.errors import InputError

EXTRA = "pip install 'vpmutrace[fleet]'"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError("vpmutrace fleet", f"needs the optional Dask engine: {EXTRA} "
                                            "(scripts/setup installs it)") from None
    return distributed


def run_tasks(fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], scheduler: str | None = None,
              workers: int | None = None) -> list[Any]:
    """``fn(*job)`` for every job as Dask tasks, results in job order. ``scheduler``: the address of a
    running Dask scheduler (``tcp://host:8786``); else a local cluster of ``workers`` processes
    (default: one per CPU) is started and stopped around the run."""
    distributed = _distributed()
    cluster = None
    if scheduler is None:
        cluster = distributed.LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                           processes=True, dashboard_address=":0",
                                           silence_logs=logging.ERROR)
    try:
        try:
            client = distributed.Client(cluster if cluster is not None else scheduler)
        except OSError as e:
            raise InputError(scheduler or "local cluster", f"cannot reach the Dask scheduler ({e})") from None
        with client:
            futures = [client.submit(fn, *job, pure=False) for job in jobs]
            return client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()
