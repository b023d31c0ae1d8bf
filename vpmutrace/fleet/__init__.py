"""Fleets: many hosts' captures ingested and analysed as tasks on Dask, merged into fleet tables and one report.

A fleet tree is hive-partitioned: ``ROOT/host=NAME/capture=NAME/`` holds one capture. Before
``vpmutrace fleet ingest`` a capture directory holds its trace files (perf.data, trace.dat, text;
several are merged as ``vpmutrace ingest`` merges them) and optionally its ``host.json``; after it,
the same path under the output root is that capture's dataset (``<table>.parquet`` +
``trace_meta.json``), so ``pl.scan_parquet("ROOT/**/kvm_exit.parquet", hive_partitioning=True)``
reads one table across the fleet with ``host`` and ``capture`` columns. ``vpmutrace fleet analyze``
runs every analyzer on each capture (the same code as ``vpmutrace analyze`` on that dataset alone),
writes each capture's analysis.json and HTML report, and merges them into fleet tables
(``tables.py``) and a fleet report ranking hosts by findings (``html.py``).

Engine: Dask distributed (``engine.py``), an optional extra (``pip install 'vpmutrace[fleet]'``).
Why Dask rather than Ray: per-capture work is a few hundred independent Python tasks with small
results, which both run. Dask's scheduler and workers are pure-Python wheels (about 42 MB installed
with their dependencies here), start a 2-worker local cluster in about 5 s on this 2-core machine
(shared with other jobs), need no daemons besides the worker processes, and
``Client("tcp://scheduler:8786")`` reaches a real cluster unchanged. Ray's wheel carries a C++ core
(GCS server, raylet, object store) several times that size and starts those services on
``ray.init()``: more install weight and startup than a fleet job on one machine should pay, for
features (actors, a shared object store) these tasks do not use.
"""

from __future__ import annotations

from vpmutrace.fleet.tree import Capture, captures

__all__ = ["Capture", "captures"]
