"""Plain-text and JSON summaries of a TraceData (what `vpmutrace info` prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpmutrace.clocks import NS, UNIT_TEXT
from vpmutrace.stats import CATEGORIES

if TYPE_CHECKING:
    from vpmutrace.tracedata import TraceData


def info_dict(td: TraceData) -> dict[str, Any]:
    m = td.meta
    span = m.get("time_span_ns")
    return {
        "format": m.get("format"),
        "inputs": m.get("inputs", []),
        "tool": sorted({i.get("tool", "") for i in m.get("inputs", [])}),
        "kernel_release": m.get("kernel_release"),
        "clock": m.get("clock"),
        "time_unit": m.get("time_unit", "ns"),
        "cpus": m.get("cpus"),
        "sources": m.get("sources", []),
        "time_span_ns": span,
        "duration_ns": (span[1] - span[0]) if span else None,
        "events": m.get("events", {}),
        "tables": dict(sorted(td.row_counts().items())),
        "lost_events": m.get("lost_events", 0),
        "lost_notices": m.get("lost_notices", 0),
        "unparsed": m.get("unparsed", 0),
        "fallback_events": m.get("fallback_events", []),
        "stats": [{"file": e.source_file, "category": e.category, "name": e.name, "count": e.count,
                   "severity": CATEGORIES[e.category].severity if e.category in CATEGORIES else None,
                   "examples": e.examples} for e in td.stats.entries()],
        "host": m.get("host"),
        "host_snapshot": m.get("host_snapshot"),
        "symbols": {i["path"]: i["symbols"] for i in m.get("inputs", []) if i.get("symbols")},
    }


def time_text(t: dict[str, Any]) -> str:
    """One input's time base in words: the unit its timestamps had and how they became ns, if they did."""
    if not t:
        return "ns"
    unit, rec = t.get("unit", NS), t.get("recorded_unit", NS)
    text = (f"{UNIT_TEXT.get(rec, rec)} -> ns: {t.get('source')}" if unit != rec else
            f"{UNIT_TEXT.get(unit, unit)} ({t.get('source')})")
    if t.get("checked"):
        text += f"; {t['checked']}"
    return text


def render_info(d: dict[str, Any]) -> str:
    out: list[str] = []
    for i in d["inputs"]:
        out.append(f"input      {i['path']}  ({i['format']}, {i.get('tool') or '?'}, {i.get('size_bytes', 0)} bytes)")
        t = i.get("time") or {}
        out.append(f"  time     clock {i.get('clock') or 'not recorded'}; {time_text(t)}")
    out.append(f"kernel     {d['kernel_release'] or 'unknown'}")
    unit = d.get("time_unit", "ns")
    out.append(f"clock      {d['clock'] or 'unknown'}; times in {UNIT_TEXT.get(unit, unit)}")
    if d.get("host_snapshot"):
        out.append(f"snapshot   {d['host_snapshot']}")
    out.append(f"cpus       {d['cpus'] if d['cpus'] is not None else 'unknown'}")
    out.append(f"sources    {', '.join(d['sources']) or '-'}")
    span = d["time_span_ns"]
    if span and unit == NS:
        out.append(f"time span  {span[0] / 1e9:.6f} .. {span[1] / 1e9:.6f} s  ({d['duration_ns'] / 1e6:.3f} ms)")
    elif span:
        out.append(f"time span  {span[0]} .. {span[1]} ({d['duration_ns']} {UNIT_TEXT.get(unit, unit)}, not ns)")
    for path, sy in (d.get("symbols") or {}).items():
        out.extend(render_symbols(path, sy))
    out.append(f"lost       {d['lost_events']} events in {d['lost_notices']} notices")
    out.append(f"unparsed   {d['unparsed']}")
    if d["fallback_events"]:
        out.append(f"fallback   {', '.join(d['fallback_events'])} (print fmt not evaluable; raw fields kept)")
    host = d.get("host")
    if host:
        kvm = host.get("kvm", {})
        params = {f"{m}.{k}": v for m, ps in kvm.items() for k, v in ps.items()
                  if k in ("enable_pmu", "enable_mediated_pmu", "pmu", "enable_vmware_backdoor")}
        wd = host.get("watchdog", {})
        out.append(f"host       {host.get('cpu_model') or '?'}; {host.get('cpus_online')} CPUs; "
                   f"nmi_watchdog={wd.get('nmi_watchdog')} watchdog_thresh={wd.get('watchdog_thresh')}")
        if params:
            out.append("kvm        " + " ".join(f"{k}={v}" for k, v in sorted(params.items())))
        pc = host.get("pmu_counters", {})
        out.append("pmu        " + ", ".join(f"{k}={v}" for k, v in pc.items()))
    out.append("")
    out.append(f"{'event':<40} {'count':>12}")
    for name, n in sorted(d["events"].items(), key=lambda kv: (-kv[1], kv[0])):
        out.append(f"{name:<40} {n:>12}")
    if d["stats"]:
        out.append("")
        out.append("stats (skipped, unparsed, lost, fallbacks):")
        for s in d["stats"]:
            out.append(f"  {s['category']:<20} {s['name'] or '-':<28} {s['count']:>10}  {s['file']}  "
                       f"[{s.get('severity', '')}]")
            for ex in s["examples"][:3]:
                out.append(f"      {ex}")
    return "\n".join(out)


def render_symbols(path: str, sy: dict[str, Any]) -> list[str]:
    """Where a perf.data's sample symbols came from, and how many samples stay unnamed and why."""
    k = sy.get("kernel") or {}
    if k.get("source"):
        kern = f"kernel from {k['source']} ({k['verified']}; relocation {k.get('relocation_delta')})"
    else:
        kern = f"kernel unresolved ({k.get('unresolved_reason')}: {'; '.join(k.get('tried') or []) or 'no source'})"
    un = ", ".join(f"{r} {n}" for r, n in (sy.get("unresolved") or {}).items()) or "none"
    users = sy.get("user_dsos") or {}
    return [f"symbols    {path}: {sy.get('resolved')} of {sy.get('samples')} samples named; unresolved: {un}",
            f"           {kern}",
            f"           user DSOs: {len(users.get('with_symbols') or [])} with symbols, "
            f"{len(users.get('without') or [])} without"]
