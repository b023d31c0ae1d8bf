"""The fleet report: one self-contained HTML page (no scripts, no external resources: opens offline).

Hosts ranked by findings (``tables.hosts``), each with a drill-down link to every capture's own report
(``host=H/capture=C/report.html``, relative, so the output directory can be moved or copied as a whole),
then one row per capture: design and guest PMU shape, exit mix and latency, watchdog, silent-error and
skid counts, what-if saving. Every string from a trace or a path is HTML-escaped; links are
percent-encoded.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl

from vpmutrace.analyze.base import SEVERITIES
from vpmutrace.fleet.tasks import REPORT
from vpmutrace.fleet.tree import Capture

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;
font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}.high{background:#f8d0d0}.medium{background:#fbe8c8}.err{color:#a00}"""


def _esc(v: Any) -> str:
    return "-" if v is None else html.escape(str(v), quote=True)


def _ns(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, div in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3f} {unit}"
    return f"{v:.0f} ns"


def _link(cap: Capture, has_report: bool) -> str:
    text = _esc(cap.capture)
    if not has_report:
        return text
    return f'<a href="{quote((cap.rel / REPORT).as_posix())}">{text}</a>'


def render(tables: dict[str, pl.DataFrame], out: Path, reports: bool = True) -> Path:
    """Write the fleet report to ``out`` (an .html file beside the captures' output directories)."""
    hosts, caps = tables["hosts"], tables["captures"]
    by_host: dict[str, list[dict[str, Any]]] = {}
    for r in caps.sort("host", "capture").iter_rows(named=True):
        by_host.setdefault(r["host"], []).append(r)
    sev = [f"findings_{s}" for s in SEVERITIES]
    head = ["rank", "host", "captures (report)", "designs", *SEVERITIES, "watchdog", "silent", "skid cand.",
            "exits", "what-if saving"]
    rows = []
    for h in hosts.iter_rows(named=True):
        links = ", ".join(_link(Capture(h["host"], c["capture"]), reports and c["error"] is None)
                          for c in by_host[h["host"]])
        cls = "high" if h["findings_high"] else "medium" if h["findings_medium"] else ""
        saving = f"{_ns(h['what_if_saving_lo_ns'])} .. {_ns(h['what_if_saving_hi_ns'])}"
        cells = [h["rank"], _esc(h["host"]), links, _esc(h["designs"] or None), *[h[s] for s in sev],
                 h["watchdog_findings"], h["silent_findings"], h["skid_candidates"], h["exits"], saving]
        rows.append(f'<tr class="{cls}">' + "".join(
            f'<td class="l">{c}</td>' if i in (1, 2, 3) else f"<td>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    ccols = ["host", "capture", "design", "design_source", "guest_pmu", "kernel_release", "events", "exits",
             "top_exit_reason", "top_exit_pct", "exit_mean_ns", "pmi_exits", "watchdog_kind", "watchdog_findings",
             "silent_findings", "skid_candidates", "what_if_exits_removed"]
    crow = []
    for r in caps.sort("host", "capture").iter_rows(named=True):
        if r["error"] is not None:
            crow.append(f'<tr><td class="l">{_esc(r["host"])}</td><td class="l">{_esc(r["capture"])}</td>'
                        f'<td class="l err" colspan="{len(ccols) - 2}">failed: {_esc(r["error"])}</td></tr>')
            continue
        cells = [_ns(r[c]) if c.endswith("_ns") else (f"{r[c]:.1f}%" if c == "top_exit_pct" and r[c] is not None
                                                      else _esc(r[c])) for c in ccols]
        crow.append("<tr>" + "".join(f'<td class="l">{c}</td>' if i < 6 or i in (8, 12) else f"<td>{c}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")
    failed = int(caps["error"].is_not_null().sum())
    doc = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>vpmutrace fleet</title>
<style>{STYLE}</style></head><body>
<h1>vpmutrace fleet: {hosts.height} hosts, {caps.height} captures{f", {failed} failed" if failed else ""}</h1>
<p>Hosts ranked by findings (most high-severity first, then medium, low, info). A capture's link opens its own
report. Candidates rest on timing or patterns; see each report for the evidence.</p>
<h2>Hosts</h2><table><tr>{"".join(f'<th class="l">{h}</th>' if i in (1, 2, 3) else f"<th>{h}</th>"
                                 for i, h in enumerate(head))}</tr>{"".join(rows)}</table>
<h2>Captures</h2><table><tr>{"".join(f"<th>{_esc(c)}</th>" for c in ccols)}</tr>{"".join(crow)}</table>
</body></html>
"""
    out.write_text(doc)
    return out
