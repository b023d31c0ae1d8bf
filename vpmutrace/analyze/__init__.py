"""Analyzers: pure functions over a TraceData, found by their registry records (``base.Analyzer``).

``registry()`` discovers every module of this package that defines ``ANALYZER``; ``run()``
gives the JSON document of ``vpmutrace analyze --json``: ``trace``, ``config``, one key per
analyzer (in registry order) and ``findings`` (all findings, most severe first). See
docs/analyze.md (generated from the registry: ``python -m vpmutrace.analyze.docs``).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from vpmutrace.analyze.base import SEVERITIES, TIME_UNIT, Analyzer, Finding, Result, needs_ns
from vpmutrace.analyze.context import Config
from vpmutrace.tracedata import TraceData

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
            "kernel_release": m.get("kernel_release"), "time_span_ns": m.get("time_span_ns"),
            "cpus": m.get("cpus"), "events": m.get("events"), "lost_events": m.get("lost_events"),
            "unparsed": m.get("unparsed"), "host_snapshot": bool(m.get("host")),
            "time_unit": m.get("time_unit", "ns"),
            "time_bases": [{"path": i.get("path"), "clock": i.get("clock"), **(i.get("time") or {})}
                           for i in m.get("inputs", [])]}


def ranked(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.certainty != "fact", f.analyzer))


def run(td: TraceData, cfg: Config, only: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Result]]:
    reg = registry()
    results: dict[str, Result] = {}
    unit = td.meta.get("time_unit", "ns")
    token = TIME_UNIT.set(unit)
    try:
        for name, a in reg.items():
            if only and name not in only:
                continue
            results[name] = _run_one(a, td, cfg, unit)
    finally:
        TIME_UNIT.reset(token)
    doc: dict[str, Any] = {"trace": trace_summary(td), "config": cfg.to_json()}
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


def render_text(results: dict[str, Result], doc: dict[str, Any]) -> str:
    """The CLI's text output: each analyzer's own rendering, then the ranked findings."""
    reg = registry()
    parts = []
    token = TIME_UNIT.set((doc.get("trace") or {}).get("time_unit", "ns"))  # durations in the trace's unit
    try:
        for name, r in results.items():
            head = f"== {name}"
            if not r.computable:
                head += f": not computable: needs {', '.join(r.needs)}"
            lines = reg[name].render(r) if r.computable or r.summary else []
            parts.append("\n".join([head, *lines]))
    finally:
        TIME_UNIT.reset(token)
    fs = doc.get(FINDINGS_KEY) or []
    if fs:
        lines = ["== findings (most severe first; 'candidate' = timing/pattern evidence, not proof)"]
        for f in fs:
            lines.append(f"  [{f['severity']}/{f['certainty']}] {f['analyzer']}: {f['text']}")
            for e in f["evidence"][:3]:
                lines.append(f"      {e}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


__all__ = ["Config", "keys", "registry", "render_text", "run"]
