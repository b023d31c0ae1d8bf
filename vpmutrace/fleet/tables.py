"""Fleet tables: the per-capture analysis documents merged into one row set per question.

``captures``: one row per capture with what it says about its host: the vPMU design and the guest PMU
shape (with their sources), the exit mix (total, top reason and its share, mean handling time),
watchdog and silent-error findings, skid candidates, the what-if saving range, and its findings
counted by severity. ``exits``: one row per capture and exit reason (``exits.by_reason``).
``findings``: every finding with its capture. ``hosts``: captures summed per host and ranked by
findings (most high, then medium, low, info). Every number is read from the capture's analysis
document (docs/analyze.md keys), so it is the number ``vpmutrace analyze`` gives that capture alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from vpmutrace.analyze.base import SEVERITIES
from vpmutrace.fleet.tree import Capture

KEYS = {"host": pl.String, "capture": pl.String}
CAPTURE_SCHEMA = {
    **KEYS, "error": pl.String, "format": pl.String, "kernel_release": pl.String, "events": pl.Int64,
    "lost_events": pl.Int64, "unparsed": pl.Int64,
    "design": pl.String, "design_source": pl.String, "design_certainty": pl.String,
    "vendor": pl.String, "guest_pmu": pl.String, "guest_pmu_version": pl.Int64, "guest_gp": pl.Int64,
    "guest_fixed": pl.Int64, "guest_pmu_source": pl.String,
    "exits": pl.Int64, "exits_paired": pl.Int64, "exit_mean_ns": pl.Float64, "top_exit_reason": pl.String,
    "top_exit_pct": pl.Float64, "pmi_exits": pl.Int64,
    "watchdog_kind": pl.String, "watchdog_findings": pl.Int64, "silent_findings": pl.Int64,
    "skid_candidates": pl.Int64, "what_if_exits_removed": pl.Int64, "what_if_saving_lo_ns": pl.Float64,
    "what_if_saving_hi_ns": pl.Float64,
    **{f"findings_{s}": pl.Int64 for s in SEVERITIES},
}
EXIT_COLUMNS = {"reason": pl.String, "exit_reason": pl.Int64, "isa": pl.Int64, "samples": pl.Int64,
                "samples_pct": pl.Float64, "time_pct": pl.Float64, "mean_ns": pl.Float64, "p50_ns": pl.Float64,
                "p99_ns": pl.Float64, "max_ns": pl.Float64}
FINDING_COLUMNS = {"analyzer": pl.String, "kind": pl.String, "severity": pl.String, "certainty": pl.String,
                   "count": pl.Int64, "text": pl.String}


def _get(doc: dict[str, Any], *path: str) -> Any:
    v: Any = doc
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def capture_row(cap: Capture, doc: dict[str, Any]) -> dict[str, Any]:
    """One capture's row of the ``captures`` table, from its analysis document."""
    findings = doc.get("findings") or []
    trace, cfg = doc.get("trace") or {}, doc.get("config") or {}
    shape = _get(cfg, "guest_pmu", "value") or {}
    by_reason = _get(doc, "exits", "by_reason") or []
    top = max(by_reason, key=lambda r: (r["samples"], r["reason"] or ""), default=None)
    paired, handling = _get(doc, "exits", "exits_paired"), _get(doc, "exits", "handling_ns_total")
    saving = _get(doc, "what_if", "net_saving_ns") or [None, None]
    n_of = [f for f in findings if f["analyzer"] == "skid" and f["kind"] == "skid_candidates"]
    return {
        "host": cap.host, "capture": cap.capture, "error": None, "format": trace.get("format"),
        "kernel_release": trace.get("kernel_release"), "events": sum((trace.get("events") or {}).values()),
        "lost_events": trace.get("lost_events"), "unparsed": trace.get("unparsed"),
        "design": _get(doc, "design", "design"), "design_source": _get(doc, "design", "source"),
        "design_certainty": _get(doc, "design", "certainty"), "vendor": _get(cfg, "vendor", "value"),
        "guest_pmu": _get(doc, "guest_pmu", "guest_text"), "guest_pmu_version": shape.get("version"),
        "guest_gp": shape.get("nr_gp"), "guest_fixed": shape.get("nr_fixed"),
        "guest_pmu_source": _get(cfg, "guest_pmu", "source"),
        "exits": _get(doc, "exits", "exits_total"), "exits_paired": paired,
        "exit_mean_ns": handling / paired if paired and handling is not None else None,
        "top_exit_reason": top["reason"] if top else None, "top_exit_pct": top["samples_pct"] if top else None,
        "pmi_exits": _get(doc, "pmi", "pmi_exits"), "watchdog_kind": _get(doc, "watchdog", "kind"),
        "watchdog_findings": sum(f["analyzer"] == "watchdog" for f in findings),
        "silent_findings": sum(f["analyzer"] == "silent" for f in findings),
        "skid_candidates": sum(f["count"] or 0 for f in n_of),
        "what_if_exits_removed": _get(doc, "what_if", "exits_removed"),
        "what_if_saving_lo_ns": saving[0], "what_if_saving_hi_ns": saving[1],
        **{f"findings_{s}": sum(f["severity"] == s for f in findings) for s in SEVERITIES},
    }


def fleet_tables(results: Sequence[tuple[Capture, dict[str, Any]]]) -> dict[str, pl.DataFrame]:
    """{"captures", "exits", "findings", "hosts"} from (capture, task result) pairs (``tasks.analyze_capture``)."""
    rows, exits, findings = [], [], []
    for cap, res in results:
        if "error" in res:
            rows.append({"host": cap.host, "capture": cap.capture, "error": res["error"]})
            continue
        doc = res["doc"]
        rows.append(capture_row(cap, doc))
        for r in _get(doc, "exits", "by_reason") or []:
            exits.append({"host": cap.host, "capture": cap.capture, **{k: r.get(k) for k in EXIT_COLUMNS}})
        for f in doc.get("findings") or []:
            findings.append({"host": cap.host, "capture": cap.capture, **{k: f.get(k) for k in FINDING_COLUMNS}})
    caps = pl.DataFrame(rows, schema=CAPTURE_SCHEMA)
    return {"captures": caps, "exits": pl.DataFrame(exits, schema={**KEYS, **EXIT_COLUMNS}),
            "findings": pl.DataFrame(findings, schema={**KEYS, **FINDING_COLUMNS}), "hosts": hosts(caps)}


def hosts(caps: pl.DataFrame) -> pl.DataFrame:
    """Captures summed per host, ranked by findings: most high-severity first, then medium, low, info;
    ``rank`` 1 is the host most in need of a look."""
    sev = [f"findings_{s}" for s in SEVERITIES]
    h = caps.group_by("host").agg(
        pl.len().alias("captures"), pl.col("error").drop_nulls().len().alias("failed"),
        pl.col("design").drop_nulls().unique().sort().str.join("/").alias("designs"),
        *[pl.col(c).sum() for c in (*sev, "watchdog_findings", "silent_findings", "skid_candidates", "exits")],
        pl.col("what_if_saving_lo_ns").sum().alias("what_if_saving_lo_ns"),
        pl.col("what_if_saving_hi_ns").sum().alias("what_if_saving_hi_ns"))
    h = h.sort([*sev, "host"], descending=[True] * len(sev) + [False])
    return h.with_row_index("rank", offset=1)
