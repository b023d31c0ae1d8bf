"""The two fleet jobs: ingest a tree of raw captures, analyse a tree of datasets (tasks on Dask)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from vpmutrace.fleet import engine, tasks
from vpmutrace.fleet.html import render
from vpmutrace.fleet.tables import fleet_tables
from vpmutrace.fleet.tree import Capture, captures
from vpmutrace.tracedata import write_frame

OUT_DIR = "_fleet"  # default output under the fleet root (a leading '_' keeps hive readers out of it)
REPORT = "fleet.html"


def ingest(src: Path, root: Path, scheduler: str | None = None,
           workers: int | None = None) -> list[tuple[Capture, dict[str, Any]]]:
    """Each capture of the raw tree ``src`` ingested into ``root``/host=H/capture=C (one task each)."""
    caps = captures(src)
    res = engine.run_tasks(tasks.ingest_capture, [(str(src / c.rel), str(root / c.rel)) for c in caps],
                           scheduler, workers)
    return list(zip(caps, res, strict=True))


def analyze(root: Path, out: Path | None = None, scheduler: str | None = None, workers: int | None = None,
            reports: bool = True) -> tuple[Path, dict[str, pl.DataFrame]]:
    """Every capture's analysis (one task each) merged into the fleet tables, written as
    ``out``/<table>.parquet with the fleet report ``out``/fleet.html; each capture's analysis.json and
    report under ``out``/host=H/capture=C/."""
    out = out or root / OUT_DIR
    caps = captures(root)
    jobs = [(str(root / c.rel), str(out / c.rel), f"vpmutrace: host {c.host}, capture {c.capture}", reports)
            for c in caps]
    res = engine.run_tasks(tasks.analyze_capture, jobs, scheduler, workers)
    tables = fleet_tables(list(zip(caps, res, strict=True)))
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        write_frame(df, out / f"{name}.parquet")
    return render(tables, out / REPORT, reports), tables
