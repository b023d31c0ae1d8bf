"""Self-contained interactive HTML report (plotly.js inlined: works offline, no CDN).

Sections: findings ranked by severity; per-CPU timeline (guest PMU-ownership windows,
VM-exits by reason, PMIs by attribution, watchdog NMIs, silent-error windows) with a
whole-trace overview binned per CPU and full detail for one window; exit reasons and
latency ECDFs; PMU MSR traffic; model diff and what-if; trace metadata and host snapshot.

Every string that comes from a trace is HTML-escaped, and figure JSON is emitted with
<, > and & as unicode escapes, so a task named ``</script><script>...`` stays text.
Size: plotly.js (~4.6 MB) plus at most ``max_points`` detail points and a fixed-size
overview, so a report stays under ~20 MB whatever the trace size.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import SEVERITIES, Result
from vpmutrace.analyze.windows import exit_intervals, guest_windows
from vpmutrace.tracedata import TraceData

OVERVIEW_BINS = 400
TOP_REASONS = 10


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _cell(row: dict[str, Any], col: str) -> str:
    """A table cell: '-' for a value that could not be computed (None), empty for a missing column."""
    v = row.get(col, "")
    return "-" if v is None else _esc(v)


def _js(obj: Any) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def findings(doc: dict[str, Any], td: TraceData) -> list[dict[str, str]]:
    """Findings ranked by severity (the analyzers' own, then the trace's losses and what was not
    computable), each with the analyzer, its certainty and a one-line statement."""
    out = [{"severity": f["severity"], "certainty": f["certainty"], "analyzer": f["analyzer"],
            "finding": f["text"] + (f" [{'; '.join(f['evidence'][:2])}]" if f.get("evidence") else "")}
           for f in doc.get("findings") or []]
    t = doc.get("trace") or {}
    if t.get("lost_events"):
        out.append({"severity": "medium", "certainty": "fact", "analyzer": "trace",
                    "finding": f"the tracer lost {t['lost_events']} events"})
    if t.get("unparsed"):
        out.append({"severity": "medium", "certainty": "fact", "analyzer": "trace",
                    "finding": f"{t['unparsed']} input lines/records could not be parsed"})
    for name, r in doc.items():
        if isinstance(r, dict) and r.get("computable") is False:
            out.append({"severity": "info", "certainty": "fact", "analyzer": name,
                        "finding": r.get("reason", "not computable")})
    return sorted(out, key=lambda x: SEVERITIES.index(x["severity"]))


def time_note(td: TraceData) -> str:
    """How the trace's times came to be in their unit, input by input."""
    from vpmutrace.report_text import time_text

    return "Times: " + "; ".join(f"{i.get('path')}: clock {i.get('clock') or 'not recorded'}, "
                                 f"{time_text(i.get('time') or {})}" for i in td.meta.get("inputs", []))


def _detail_range(td: TraceData, max_points: int, window: tuple[int, int] | None) -> tuple[int, int]:
    span = td.meta.get("time_span_ns") or [0, 1]
    if window:
        return window
    ts = [td.df(t)["ts_ns"] for t in ("kvm_exit", "kvm_msr", "nmi_handler") if td.has(t)]
    if not ts:
        return span[0], span[1]
    allts = pl.concat(ts).sort()
    if allts.len() <= max_points:
        return span[0], span[1]
    return int(allts[0]), int(allts[max_points - 1])


def time_axis(td: TraceData) -> tuple[float, str]:
    """(divisor, unit) of the time axes: seconds, or the trace's ticks when its clock could not be
    converted to ns (the figures never call ticks seconds)."""
    unit = td.meta.get("time_unit", "ns")
    return (1e9, "s") if unit == "ns" else (1.0, "events" if unit == "events" else "ticks")


def _lines(df: pl.DataFrame, y: pl.Expr | str, div: float) -> tuple[list, list]:
    """Segments [start, end) as one line trace with gaps (x in the time axis' unit)."""
    xs: list = []
    ys: list = []
    for a, b, yy in df.select("start_ns", "end_ns", y).iter_rows():
        xs += [a / div, b / div, None]
        ys += [yy, yy, None]
    return xs, ys


def timeline(td: TraceData, results: dict[str, Result], max_points: int,
             window: tuple[int, int] | None) -> tuple[dict, dict, tuple[int, int]]:
    a, b = _detail_range(td, max_points, window)
    div, tu = time_axis(td)
    dur = "ns" if tu == "s" else tu
    data: list[dict] = []
    has_exits = td.has("kvm_exit") and td.has("kvm_entry")
    if has_exits:
        own = results.get("ownership")
        ow = own.rows.get("ownership_windows") if own is not None else None
        w = (ow if ow is not None else guest_windows(td)).filter((pl.col("end_ns") > a) & (pl.col("start_ns") < b))
        xs, ys = _lines(w.head(max_points // 2), "cpu", div)
        data.append({"type": "scattergl", "mode": "lines", "x": xs, "y": ys, "hoverinfo": "skip",
                     "name": "guest owns PMU (mediated, fastpath merged)" if ow is not None else "guest runs",
                     "line": {"width": 10, "color": "rgba(46,139,87,0.45)"}})
        iv = exit_intervals(td).filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") <= b))
        top = iv.group_by("reason").len().sort("len", descending=True)["reason"].head(TOP_REASONS).to_list()
        iv = iv.with_columns(pl.when(pl.col("reason").is_in(top)).then(pl.col("reason")).otherwise(pl.lit("other"))
                             .alias("group"))
        for (reason,), g in iv.group_by(["group"], maintain_order=True):
            g = g.head(max_points // 4)
            data.append({"type": "scattergl", "mode": "markers", "name": f"exit {_esc(reason)}",
                         "x": (g["ts_ns"] / div).to_list(), "y": (g["cpu"].cast(pl.Float64) + 0.18).to_list(),
                         "marker": {"size": 6, "symbol": "line-ns-open"},
                         "text": [_esc(f"vcpu {v} {r} ({c}) handled in {h if h is not None else '?'} {dur}, "
                                       f"{cm}-{p}")
                                  for v, r, c, h, p, cm in g.select("vcpu_id", "reason", "exit_reason", "handling_ns",
                                                                    "pid", "comm").iter_rows()],
                         "hovertemplate": "%{text}<extra></extra>"})
    elif td.has("kvm_msr"):
        m = td.df("kvm_msr").filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") <= b)).head(max_points // 2)
        data.append({"type": "scattergl", "mode": "markers", "name": "guest MSR access (kvm_msr)",
                     "x": (m["ts_ns"] / div).to_list(), "y": (m["cpu"].cast(pl.Float64) + 0.18).to_list(),
                     "marker": {"size": 5},
                     "text": [_esc(f"{'write' if w_ else 'read'} {ms:#x} = {v:#x}{' #GP' if gp else ''} ({c})")
                              for w_, ms, v, gp, c in m.select("write", "msr", "value", "gp", "comm").iter_rows()],
                     "hovertemplate": "%{text}<extra></extra>"})
    if td.has("nmi_handler"):
        wd = P.perf_nmis(td).filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") <= b))
        data.append({"type": "scattergl", "mode": "markers", "name": "host perf NMI",
                     "x": (wd["ts_ns"] / div).to_list(), "y": (wd["cpu"].cast(pl.Float64) - 0.22).to_list(),
                     "marker": {"size": 9, "symbol": "diamond", "color": "#d62728"},
                     "text": [_esc(f"{h} handled={n} ({d} ns)") for h, n, d in
                              wd.select("handler", "handled", "delta_ns").iter_rows()],
                     "hovertemplate": "%{text}<extra></extra>"})
        sk = results.get("skid")
        att = sk.rows.get("pmi_attribution") if sk is not None else None
        if att is not None:
            att = att.filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") <= b))
            colors = {"in_nmi_exit": "#2ca02c", "after_exit": "#ff7f0e", "before_entry": "#9467bd"}
            for cls, col in colors.items():
                g = att.filter(pl.col("class") == cls)
                data.append({"type": "scattergl", "mode": "markers", "name": f"perf NMI {cls.replace('_', ' ')}",
                             "x": (g["ts_ns"] / div).to_list(), "y": (g["cpu"].cast(pl.Float64) - 0.08).to_list(),
                             "marker": {"size": 8, "symbol": "x", "color": col}, "hoverinfo": "x+name"})
    pm = results.get("pmi")
    pe = pm.rows.get("pmi_exits") if pm is not None else None
    if pe is not None and pe.height:
        pe = pe.filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") <= b))
        data.append({"type": "scattergl", "mode": "markers", "name": "guest PMI exit",
                     "x": (pe["ts_ns"] / div).to_list(), "y": (pe["cpu"].cast(pl.Float64) + 0.32).to_list(),
                     "marker": {"size": 8, "symbol": "star", "color": "#17becf"},
                     "text": [_esc(f"{p} ({c}), injected after {i if i is not None else '?'} {dur}") for p, c, i in
                              pe.select("path", "certainty", "to_injection_ns").iter_rows()],
                     "hovertemplate": "%{text}<extra></extra>"})
    sil = results.get("silent")
    if sil is not None and sil.computable and sil.rows.get("silent_windows") is not None and has_exits:
        sw = sil.rows["silent_windows"]
        cpu_of = exit_intervals(td).group_by("pid").agg(pl.col("cpu").mode().first())
        sw = sw.join(cpu_of, on="pid", how="left").with_columns((pl.col("cpu").cast(pl.Float64) - 0.35).alias("y"))
        xs, ys = _lines(sw.filter(pl.col("cpu").is_not_null()), "y", div)
        data.append({"type": "scattergl", "mode": "lines", "name": "silent-error window", "x": xs, "y": ys,
                     "line": {"width": 6, "color": "rgba(214,39,40,0.6)"}, "hoverinfo": "name"})
    layout = {"title": {"text": f"Per-CPU timeline, detail {a / div:.6f} .. {b / div:.6f} {tu}"},
              "xaxis": {"title": {"text": f"time ({tu})"}}, "yaxis": {"title": {"text": "CPU"}, "dtick": 1},
              "height": 260 + 60 * max(1, int(td.meta.get("cpus") or 1)), "hovermode": "closest",
              "legend": {"orientation": "h"}}
    return {"data": data, "layout": layout}, _overview(td), (a, b)


def _overview(td: TraceData) -> dict:
    """Whole trace: events per CPU per time bin (a heatmap of fixed size)."""
    span = td.meta.get("time_span_ns") or [0, 1]
    parts = [td.df(t).select("ts_ns", "cpu") for t in ("kvm_exit", "kvm_msr", "nmi_handler", "kvm_entry")
             if td.has(t)]
    if not parts:
        return {"data": [], "layout": {"title": {"text": "no KVM events"}}}
    ev = pl.concat(parts).drop_nulls("cpu")
    width = max(1, (span[1] - span[0]) // OVERVIEW_BINS + 1)
    h = ev.with_columns(((pl.col("ts_ns") - span[0]) // width).alias("bin")).group_by("cpu", "bin").len()
    cpus = sorted(h["cpu"].unique().to_list())
    z = [[0] * OVERVIEW_BINS for _ in cpus]
    for cpu, bn, n in h.iter_rows():
        z[cpus.index(cpu)][min(int(bn), OVERVIEW_BINS - 1)] = n
    div, tu = time_axis(td)
    x = [(span[0] + (i + 0.5) * width) / div for i in range(OVERVIEW_BINS)]
    return {"data": [{"type": "heatmap", "z": z, "x": x, "y": cpus, "colorscale": "Viridis",
                      "colorbar": {"title": {"text": "events"}}, "name": "events per bin"}],
            "layout": {"title": {"text": "Whole trace: KVM events per CPU per time bin"},
                       "xaxis": {"title": {"text": f"time ({tu})"}}, "yaxis": {"title": {"text": "CPU"}, "dtick": 1},
                       "height": 200 + 40 * len(cpus)}}


def exit_figures(results: dict[str, Result]) -> list[dict]:
    r = results.get("exits")
    if r is None or not r.computable:
        return []
    iv = r.rows["exit_intervals"].filter(pl.col("handling_ns").is_not_null())
    by = r.rows["exits_by_reason"].head(TOP_REASONS)
    bar = {"data": [{"type": "bar", "x": [_esc(x) for x in by["reason"].to_list()], "y": by["samples"].to_list(),
                     "name": "exits"}], "layout": {"title": {"text": "VM-exits by reason"}, "height": 360}}
    ecdf = []
    for reason in by["reason"].to_list():
        v = iv.filter(pl.col("reason") == reason)["handling_ns"].sort()
        if v.len() > 2000:  # an ECDF keeps its shape with 2000 quantiles
            v = v.gather([int(i * (v.len() - 1) / 1999) for i in range(2000)])
        n = v.len()
        ecdf.append({"type": "scatter", "mode": "lines", "name": _esc(reason), "x": (v / 1000).to_list(),
                     "y": [(i + 1) / n for i in range(n)], "line": {"shape": "hv"}})
    return [bar, {"data": ecdf, "layout": {"title": {"text": "Exit handling latency ECDF per reason"},
                                          "xaxis": {"title": {"text": "us"}, "type": "log"},
                                          "yaxis": {"title": {"text": "fraction"}}, "height": 400}}]


def msr_figure(results: dict[str, Result]) -> list[dict]:
    r = results.get("pmu_msr")
    if r is None or not r.computable or not r.summary["by_msr"]:
        return []
    rows = r.summary["by_msr"]
    names = [_esc(f"{x['name']} ({x['mediated']})") for x in rows]
    return [{"data": [{"type": "bar", "name": "reads", "x": names, "y": [x["reads"] for x in rows]},
                      {"type": "bar", "name": "writes", "x": names, "y": [x["writes"] for x in rows]},
                      {"type": "bar", "name": "#GP", "x": names, "y": [x["gp"] for x in rows]}],
             "layout": {"title": {"text": "PMU MSR accesses handled by KVM (mediated verdict in brackets)"},
                        "barmode": "group", "height": 420}}]


def what_if_figure(doc: dict) -> list[dict]:
    """Saved, added and net exit-handling time as ranges (low bar and the span to high)."""
    w = doc.get("what_if") or {}
    if not w.get("applicable") or w.get("time_removed_ns") is None:
        return []
    lows = [w["time_removed_ns"] + w["recost_saving_ns"][0], w["switch_cost_added_ns"][0], w["net_saving_ns"][0]]
    highs = [w["time_removed_ns"] + w["recost_saving_ns"][1], w["switch_cost_added_ns"][1], w["net_saving_ns"][1]]
    x = ["exit handling saved", "PMU switch cost added", "net saving"]
    return [{"data": [{"type": "bar", "x": x, "y": [v / 1e6 for v in lows], "name": "low",
                       "marker": {"color": "#1f77b4"}},
                      {"type": "bar", "x": x, "y": [(h - lo) / 1e6 for h, lo in zip(highs, lows, strict=True)],
                       "name": "range to high", "marker": {"color": "rgba(31,119,180,0.35)"}}],
             "layout": {"title": {"text": "What-if: this trace under the mediated design (ms, range)"},
                        "barmode": "stack", "height": 360}}]


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r, c)}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.5em}
h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.high{background:#fde0dc}.medium{background:#fff4d6}.info{background:#eef5ff}pre{background:#f6f6f6;padding:.8em;
overflow:auto;max-height:30em;font-size:.85em}"""


def build(td: TraceData, doc: dict[str, Any], results: dict[str, Result], out: Path, max_points: int = 60_000,
          window: tuple[int, int] | None = None, title: str | None = None) -> Path:
    plotly_js = resources.files("plotly").joinpath("package_data/plotly.min.js").read_text()
    tl, overview, (a, b) = timeline(td, results, max_points, window)
    figs = [("timeline", tl), ("overview", overview)]
    figs += [(f"exits{i}", f) for i, f in enumerate(exit_figures(results))]
    figs += [(f"msr{i}", f) for i, f in enumerate(msr_figure(results))]
    figs += [(f"whatif{i}", f) for i, f in enumerate(what_if_figure(doc))]
    fnd = findings(doc, td)
    cfg = doc.get("config") or {}
    design = (cfg.get("design") or {}).get("value")
    inputs = ", ".join(str(i.get("path")) for i in td.meta.get("inputs", []))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title or 'vpmutrace report')}</title>",
             f"<style>{CSS}</style><script>{plotly_js}</script></head><body>",
             f"<h1>{_esc(title or 'vpmutrace report')}</h1><p>{_esc(inputs)} &mdash; vPMU design: "
             f"{_esc(design)} ({_esc((cfg.get('design') or {}).get('source'))})</p>",
             "<h2>Findings</h2>"]
    if fnd:
        parts.append("<table><thead><tr><th>severity</th><th>certainty</th><th>analyzer</th><th>finding</th></tr>"
                     "</thead><tbody>"
                     + "".join(f"<tr class='{f['severity']}'><td>{_esc(f['severity'])}</td><td>{_esc(f['certainty'])}"
                               f"</td><td>{_esc(f['analyzer'])}</td><td>{_esc(f['finding'])}</td></tr>" for f in fnd)
                     + "</tbody></table><p>A <i>candidate</i> rests on timing or a pattern (its evidence is shown); "
                       "a <i>fact</i> follows from the trace and the kernel code the rule cites.</p>")
    else:
        parts.append("<p>No findings.</p>")
    div, tu = time_axis(td)
    parts.append(f"<h2>Timeline</h2><p>{_esc(time_note(td))}</p><p>Detail window {a / div:.6f} .. {b / div:.6f} "
                 f"{tu} (zoom with the mouse; "
                 "`vpmutrace report --window START:END` renders another window in full detail).</p>")
    for fid, _ in figs:
        if fid == "exits0":
            parts.append("<h2>VM-exits</h2>")
        if fid == "msr0":
            parts.append("<h2>PMU MSR traffic</h2>")
        if fid == "whatif0":
            parts.append("<h2>What-if</h2>")
        parts.append(f"<div id='{fid}' class='fig'></div>")
    d = doc.get("diff") or {}
    parts.append("<h2>Model diff</h2>")
    if d.get("divergences"):
        parts.append(_table([{**x, "example": json.dumps(x.get("example"), default=str)} for x in d["divergences"]],
                            ["rule", "section", "count", "first_ts_ns", "explain", "example"]))
    else:
        parts.append(f"<p>No divergence from the {_esc(d.get('model'))} design.</p>")
    if d.get("rules_not_checked"):
        parts.append("<p>Not checked: " + _esc("; ".join(d["rules_not_checked"])) + "</p>")
    if doc.get("what_if"):
        parts.append(_table([{"key": k, "value": v} for k, v in doc["what_if"].items() if k != "findings"],
                            ["key", "value"]))
    cfg = doc.get("config") or {}
    design = (cfg.get("design") or {}).get("value")
    if design in ("mediated", "emulated"):
        from vpmutrace.model.design import HostSetup, PmuShape, describe

        hp = (cfg.get("host_pmu") or {}).get("value") or {}
        setup = HostSetup(PmuShape.from_json(hp.get("shape")), PmuShape.from_json((cfg.get("guest_pmu") or {})
                                                                                  .get("value")))
        m = describe(design, setup)
        parts.append(f"<h2>Reference model: {_esc(m['design'])} design</h2><p>RDPMC: {_esc(m['rdpmc'])}; "
                     f"guest PMIs: {_esc(m['pmi_vector'])}; PMU context switch: {_esc(m['context_switch'])}</p>")
        parts.append(_table([{**r, "msr": f"{r['msr']:#x}"} for r in m["msrs"]], ["msr", "name", "kind", "verdict"]))
    parts.append("<h2>Trace</h2><pre>" + _esc(json.dumps(doc.get("trace"), indent=2, default=str)) + "</pre>")
    host = td.meta.get("host")
    parts.append("<h2>Host snapshot</h2><pre>" + _esc(json.dumps(host, indent=2, default=str) if host else
                                                      "none (not captured with vpmutrace record)") + "</pre>")
    parts.append("<script>" + "".join(f"Plotly.newPlot({_js(fid)},{_js(f['data'])},{_js(f['layout'])},"
                                      "{responsive:true});" for fid, f in figs) + "</script></body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts))
    return out
