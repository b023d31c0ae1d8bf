"""Analyzers: pure functions over a TraceData, found by their registry records (``base.Analyzer``).

``registry()`` discovers every module of this package that defines ``ANALYZER``; ``run()``
gives the JSON document of ``vpmutrace analyze --json``: ``trace``, ``config``, one key per
analyzer (in registry order) and ``findings`` (all findings, most severe first). See
docs/analyze.md (generated from the registry: ``python -m vpmutrace.analyze.docs``).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from functools import cache
from pathlib import Path
from typing import Any

from vpmutrace import progress
from vpmutrace.analyze.base import SEVERITIES, TIME_ORIGIN, TIME_UNIT, Analyzer, Finding, Result, fmt_ts, needs_ns
from vpmutrace.analyze.context import Config
from vpmutrace.tracedata import TraceData, write_frame

FINDINGS_KEY = "findings"


@cache
def registry() -> dict[str, Analyzer]:
    """Every analyzer of this package, by name, in output order."""
    found: list[Analyzer] = []
    for m in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{m.name}")
        a = getattr(mod, "ANALYZER", None)
        if isinstance(a, Analyzer):
            found.append(a)
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"duplicate analyzer names: {names}")
    return {a.name: a for a in sorted(found, key=lambda a: (a.order, a.name))}


def keys() -> list[str]:
    """The stable top-level keys of the JSON document."""
    return ["trace", "config", *registry(), FINDINGS_KEY]


def trace_summary(td: TraceData) -> dict[str, Any]:
    m = td.meta
    return {"format": m.get("format"), "inputs": [i.get("path") for i in m.get("inputs", [])],
            "kernel_release": m.get("kernel_release"), "time_span_ns": m.get("time_span_ns"), "clock": m.get("clock"),
            "cpus": m.get("cpus"), "events": m.get("events"), "lost_events": m.get("lost_events"),
            "unparsed": m.get("unparsed"), "host_snapshot": bool(m.get("host")),
            "time_unit": m.get("time_unit", "ns"),
            "time_bases": [{"path": i.get("path"), "clock": i.get("clock"), **(i.get("time") or {})}
                           for i in m.get("inputs", [])]}


def ranked(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.certainty != "fact", f.analyzer))


def time_origin(td: TraceData) -> int | None:
    """The trace's start: text times are printed from it (``base.TIME_ORIGIN``)."""
    span = td.meta.get("time_span_ns")
    return int(span[0]) if span else None


def run(td: TraceData, cfg: Config, only: list[str] | None = None,
        absolute: bool = False) -> tuple[dict[str, Any], dict[str, Result]]:
    """Every analyzer (or ``only`` those) on ``td``. Times in findings' text are from the trace's start
    (``trace.time_origin_ns`` in the document) unless ``absolute``."""
    reg = registry()
    results: dict[str, Result] = {}
    unit = td.meta.get("time_unit", "ns")
    token = TIME_UNIT.set(unit)
    origin_token = TIME_ORIGIN.set(None if absolute else time_origin(td))
    try:
        for name, a in reg.items():
            if only and name not in only:
                continue
            with progress.stage(f"analysing: {name}"):
                results[name] = _run_one(a, td, cfg, unit)
    finally:
        TIME_UNIT.reset(token)
        TIME_ORIGIN.reset(origin_token)
    doc: dict[str, Any] = {"trace": trace_summary(td), "config": cfg.to_json()}
    doc["trace"]["time_origin_ns"] = None if absolute else time_origin(td)
    for name in reg:
        doc[name] = results[name].to_json() if name in results else None
    doc[FINDINGS_KEY] = [f.to_json() for f in ranked([f for r in results.values() for f in r.findings])]
    return doc, results


def _run_one(a: Analyzer, td: TraceData, cfg: Config, unit: str) -> Result:
    if a.needs_ns and unit != "ns":
        return Result(a.name, needs=[needs_ns(unit)], rule=a.rule)
    r = a.analyze(td, cfg)
    declared = {k.id for k in a.findings}
    bad = [f.kind for f in r.findings if f.kind not in declared]
    if bad:
        raise RuntimeError(f"analyzer {a.name} reported undeclared finding kinds {bad}")
    if unit != "ns":
        r.summary["time_unit"] = unit  # its *_ns fields hold ticks: say so next to them
    return r


def render_text(results: dict[str, Result], doc: dict[str, Any], absolute: bool = False) -> str:
    """The CLI's text output: each analyzer's own rendering, then the ranked findings. Times are from the
    trace's start, stated once at the top on the trace's clock (``absolute``: on the clock)."""
    reg = registry()
    trace = doc.get("trace") or {}
    span = trace.get("time_span_ns")
    origin = None if absolute or not span else int(span[0])
    parts = [origin_line(trace, origin)] if span else []
    token = TIME_UNIT.set(trace.get("time_unit", "ns"))  # durations in the trace's unit
    origin_token = TIME_ORIGIN.set(origin)
    try:
        for name, r in results.items():
            head = f"== {name}"
            if not r.computable:
                head += f": not computable: needs {', '.join(r.needs)}"
            lines = reg[name].render(r) if r.computable or r.summary else []
            parts.append("\n".join([head, *lines]))
        fs = doc.get(FINDINGS_KEY) or []
        if fs:
            lines = ["== findings (most severe first; 'candidate' = timing/pattern evidence, not proof)"]
            for f in fs:
                first = f" (first at {fmt_ts(f['first_ts_ns'])})" if f.get("first_ts_ns") is not None else ""
                lines.append(f"  [{f['severity']}/{f['certainty']}] {f['analyzer']}: {f['text']}{first}")
                for e in f["evidence"][:3]:
                    lines.append(f"      {e}")
            parts.append("\n".join(lines))
    finally:
        TIME_UNIT.reset(token)
        TIME_ORIGIN.reset(origin_token)
    return "\n\n".join(parts)


def origin_line(trace: dict[str, Any], origin: int | None) -> str:
    """The one line that states where text times are counted from."""
    from vpmutrace.clocks import relative_times_note

    span = trace.get("time_span_ns") or [0, 0]
    return relative_times_note(span[0], trace.get("time_unit", "ns"), trace.get("clock"), origin is None)


def write_rows(doc: dict[str, Any], results: dict[str, Result], out: Path) -> None:
    """Row-level results as Parquet (one file per table) and the document as analysis.json, in ``out``."""
    out.mkdir(exist_ok=True)
    for r in results.values():
        for name, df in r.rows.items():
            write_frame(df, out / f"{name}.parquet")
    from vpmutrace.outputs import ANALYSIS_FILE

    (out / ANALYSIS_FILE).write_text(json.dumps(doc, indent=2, default=str) + "\n")


__all__ = ["Config", "keys", "registry", "render_text", "run", "write_rows"]
