"""Analyzers: pure functions over a TraceData, each with its rule and required events.

`run(td, cfg, only)` gives the JSON document of `vpmutrace analyze --json`, with the
stable top-level keys trace, exits, pmu_msr, ownership, watchdog, skid, silent, diff,
what_if (timestamps in ns; see docs/analyze.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vpmutrace.analyze import diff, exits, ownership, pmu_msr, silent, skid, watchdog
from vpmutrace.analyze.base import Config, Result
from vpmutrace.tracedata import TraceData

ANALYZERS: dict[str, Callable[[TraceData, Config], Result]] = {
    "exits": exits.analyze, "pmu_msr": pmu_msr.analyze, "ownership": ownership.analyze,
    "watchdog": watchdog.analyze, "skid": skid.analyze, "silent": silent.analyze, "diff": diff.analyze,
}
KEYS = ["trace", *ANALYZERS, "what_if"]


def trace_summary(td: TraceData) -> dict[str, Any]:
    m = td.meta
    return {"format": m.get("format"), "inputs": [i.get("path") for i in m.get("inputs", [])],
            "kernel_release": m.get("kernel_release"), "time_span_ns": m.get("time_span_ns"),
            "cpus": m.get("cpus"), "events": m.get("events"), "lost_events": m.get("lost_events"),
            "unparsed": m.get("unparsed")}


def run(td: TraceData, cfg: Config, only: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Result]]:
    names = [n for n in ANALYZERS if not only or n in only]
    results = {n: ANALYZERS[n](td, cfg) for n in names}
    doc: dict[str, Any] = {"trace": trace_summary(td), "config": {
        "model": cfg.model, "setup": cfg.setup.to_json(), "skid_window_ns": cfg.skid_window_ns,
        "watchdog_tolerance": cfg.watchdog_tolerance, "storm_writes_per_ms": cfg.storm_writes_per_ms}}
    for n in ANALYZERS:
        doc[n] = results[n].to_json() if n in results else None
    doc["what_if"] = diff.what_if(td, cfg) if (not only or "what_if" in only or "diff" in only) else None
    return doc, results
