"""Self-contained interactive HTML report (plotly.js inlined: works offline, no CDN).

Sections: findings ranked by severity; per-CPU timeline (guest PMU-ownership windows, VM-exits by
reason, PMIs by attribution, watchdog NMIs, silent-error windows) with a whole-trace overview binned
per CPU and full detail for a few windows (the start of the trace, the densest stretch, the stretch
with the most findings: a selector switches between them); exit reasons and latency ECDFs; PMU MSR
traffic; model diff and what-if; trace metadata and host snapshot as tables (raw JSON behind a
disclosure); the sections of the design reference (docs/design.md) the page cites.

Presentation rules: times are relative to the trace's first event (as LISA's normalize_time), whose
absolute time is stated once at the top; MSRs in hex; durations with their unit; every axis has a
title with its unit; legends sit above the plot area (never on an axis title) and show even for one
trace; chart titles are HTML headings, not plotly titles; no thousands separators in numbers.

Every string that comes from a trace is HTML-escaped, and figure JSON is emitted with
<, > and & as unicode escapes, so a task named ``</script><script>...`` stays text.
Size: plotly.js (~4.6 MB) plus at most ``max_points`` detail points (shared by the detail windows)
and a fixed-size overview, so a report stays under ~20 MB whatever the trace size.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import SEVERITIES, Result
from vpmutrace.analyze.windows import exit_intervals, guest_windows
from vpmutrace.report import reference
from vpmutrace.stats import TEXT_CATEGORIES
from vpmutrace.tracedata import TraceData

OVERVIEW_BINS = 400
TOP_REASONS = 10
DETAIL_TABLES = ("kvm_exit", "kvm_msr", "nmi_handler")  # the events whose count sizes a detail window


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _js(obj: Any) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _cite_links(text: str) -> str:
    """Escaped text whose "§N.M" citations link to the design reference's sections on this page."""
    return reference.CITE.sub(lambda m: f"<a href='#design-{m.group(1)}'>§{m.group(1)}</a>", _esc(text))


def findings(doc: dict[str, Any], td: TraceData) -> list[dict[str, Any]]:
    """Findings ranked by severity (the analyzers' own, then the trace's losses and what was not
    computable), each with the analyzer, its certainty, a one-line statement and its first time."""
    out = [{"severity": f["severity"], "certainty": f["certainty"], "analyzer": f["analyzer"],
            "finding": f["text"] + (f" [{'; '.join(f['evidence'][:2])}]" if f.get("evidence") else ""),
            "first_ts_ns": f.get("first_ts_ns")}
           for f in doc.get("findings") or []]
    t = doc.get("trace") or {}
    if t.get("lost_events"):
        out.append({"severity": "medium", "certainty": "fact", "analyzer": "trace",
                    "finding": f"the tracer lost {t['lost_events']} events", "first_ts_ns": None})
    if t.get("unparsed"):
        out.append({"severity": "medium", "certainty": "fact", "analyzer": "trace",
                    "finding": f"{t['unparsed']} input lines/records could not be parsed", "first_ts_ns": None})
    for name, r in doc.items():
        if isinstance(r, dict) and r.get("computable") is False:
            out.append({"severity": "info", "certainty": "fact", "analyzer": name,
                        "finding": r.get("reason", "not computable"), "first_ts_ns": None})
    return sorted(out, key=lambda x: SEVERITIES.index(x["severity"]))


def time_note(td: TraceData) -> str:
    """How the trace's times came to be in their unit, input by input."""
    from vpmutrace.report.text import time_text

    return "Times: " + "; ".join(f"{i.get('path')}: clock {i.get('clock') or 'not recorded'}, "
                                 f"{time_text(i.get('time') or {})}" for i in td.meta.get("inputs", []))


def time_axis(td: TraceData) -> tuple[float, str]:
    """(divisor, unit) of the time axes: seconds, or the trace's ticks when its clock could not be
    converted to ns (the figures never call ticks seconds)."""
    unit = td.meta.get("time_unit", "ns")
    return (1e9, "s") if unit == "ns" else (1.0, "events" if unit == "events" else "ticks")


@dataclass(frozen=True)
class Clock:
    """Relative time: trace timestamps minus the first event's, shown in s, ms or µs by the trace's
    span (ticks or events when its clock could not be made ns); ``abs_div``/``abs_unit`` give the
    trace clock's own seconds (or ticks) for the one absolute time the page states."""

    t0: int
    div: float
    unit: str
    abs_div: float
    abs_unit: str

    @staticmethod
    def of(td: TraceData) -> Clock:
        abs_div, abs_unit = time_axis(td)
        span = td.meta.get("time_span_ns") or [0, 0]
        div, unit = abs_div, abs_unit
        if abs_unit == "s":
            length = span[1] - span[0]
            div, unit = (1e9, "s") if length >= 1e9 else (1e6, "ms") if length >= 1e6 else (1e3, "µs")
        return Clock(int(span[0]), div, unit, abs_div, abs_unit)

    @property
    def is_ns(self) -> bool:
        return self.abs_unit == "s"

    def x(self, ts: pl.Series) -> list:
        return ((ts - self.t0) / self.div).to_list()

    def num(self, ts: int) -> str:
        v = (ts - self.t0) / self.div
        return f"{v:.6f}" if self.unit == "s" else f"{v:.3f}" if self.is_ns else f"{v:.0f}"

    def rel(self, ts: int | None) -> str:
        """A timestamp as text relative to the trace start ('-' when unknown)."""
        return "-" if ts is None else f"{self.num(ts)} {self.unit}"

    def absolute(self, ts: int) -> str:
        return f"{ts / self.abs_div:.6f} {self.abs_unit}" if self.is_ns else f"{ts} {self.abs_unit}"

    @property
    def title(self) -> str:
        return f"time since trace start ({self.unit})"


def _layout(x_title: str, y_title: str, height: int, **extra: Any) -> dict[str, Any]:
    """A figure layout: axis titles with units, the legend above the plot area (shown for one trace
    too), margins that grow to fit tick labels, no thousands separators."""
    lay: dict[str, Any] = {
        "showlegend": True, "separators": ".", "height": height, "hovermode": "closest",
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0,
                   "traceorder": "normal"},

        "margin": {"t": 30, "r": 20, "l": 60, "b": 50},
        "xaxis": {"title": {"text": x_title}, "automargin": True},
        "yaxis": {"title": {"text": y_title}, "automargin": True}}
    for k, v in extra.items():
        lay[k] = {**lay[k], **v} if isinstance(v, dict) and isinstance(lay.get(k), dict) else v
    return lay


@dataclass(frozen=True)
class Window:
    """A detail window of the timeline: [start, end) on the trace clock, what it is, how many events."""

    name: str
    start: int
    end: int
    events: int


def _detail_events(td: TraceData) -> np.ndarray:
    ts = [td.scan(t, ["ts_ns"]).collect()["ts_ns"] for t in DETAIL_TABLES if td.has(t)]
    return pl.concat(ts).sort().to_numpy() if ts else np.zeros(0, np.int64)


def detail_windows(td: TraceData, doc: dict[str, Any], max_points: int,
                   window: tuple[int, int] | None) -> list[Window]:
    """The timeline's detail windows. A trace whose events fit in ``max_points`` is one window (the
    whole trace); a larger one gets up to three windows of equal event count (``max_points`` shared):
    its start, its densest stretch (the shortest span holding that many events) and the stretch
    holding the most findings' first timestamps, duplicates dropped. ``window`` (``--window``) is
    the only window when given."""
    span = td.meta.get("time_span_ns") or [0, 1]
    ts = _detail_events(td)
    if window:
        return [Window("chosen window (--window)", window[0], window[1],
                       int(((ts >= window[0]) & (ts < window[1])).sum()))]
    if len(ts) <= max_points:
        return [Window("whole trace", span[0], span[1] + 1, len(ts))]
    k = max(1, max_points // 3)

    def at(i: int, name: str) -> Window:
        i = max(0, min(i, len(ts) - k))
        return Window(name, int(ts[i]), int(ts[i + k - 1]) + 1, k)

    out = [at(0, "start of the trace")]
    spans = ts[k - 1:] - ts[:len(ts) - k + 1]
    out.append(at(int(np.argmin(spans)), "densest stretch"))
    fts = np.array(sorted(f["first_ts_ns"] for f in doc.get("findings") or [] if f.get("first_ts_ns") is not None),
                   np.int64)
    if len(fts):
        starts = np.searchsorted(ts, fts, side="left")  # a window starting at each finding's first event
        ends = ts[np.minimum(starts + k - 1, len(ts) - 1)]
        held = np.searchsorted(fts, ends, side="right") - np.arange(len(fts))
        out.append(at(int(starts[int(np.argmax(held))]), f"most findings ({int(held.max())})"))
    unique: dict[tuple[int, int], Window] = {}
    for w in out:
        unique.setdefault((w.start, w.end), w)
    return list(unique.values())


def _lines(df: pl.DataFrame, y: pl.Expr | str, clk: Clock) -> tuple[list, list]:
    """Segments [start, end) as one line trace with gaps (x relative, in the time axis' unit)."""
    xs: list = []
    ys: list = []
    for a, b, yy in df.select("start_ns", "end_ns", y).iter_rows():
        xs += [(a - clk.t0) / clk.div, (b - clk.t0) / clk.div, None]
        ys += [yy, yy, None]
    return xs, ys


def timeline_data(td: TraceData, results: dict[str, Result], max_points: int, a: int, b: int) -> list[dict]:
    """The timeline's traces for the detail window [a, b)."""
    clk = Clock.of(td)
    dur = "ns" if clk.is_ns else clk.unit
    data: list[dict] = []
    has_exits = td.has("kvm_exit") and td.has("kvm_entry")
    if has_exits:
        own = results.get("ownership")
        ow = own.rows.get("ownership_windows") if own is not None else None
        w = (ow if ow is not None else guest_windows(td)).filter((pl.col("end_ns") > a) & (pl.col("start_ns") < b))
        xs, ys = _lines(w.head(max_points // 2), "cpu", clk)
        data.append({"type": "scattergl", "mode": "lines", "x": xs, "y": ys, "hoverinfo": "skip",
                     "name": "guest owns PMU (mediated, fastpath merged)" if ow is not None else "guest runs",
                     "line": {"width": 10, "color": "rgba(46,139,87,0.45)"}})
        iv = exit_intervals(td).filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") < b))
        top = iv.group_by("reason").len().sort("len", descending=True)["reason"].head(TOP_REASONS).to_list()
        iv = iv.with_columns(pl.when(pl.col("reason").is_in(top)).then(pl.col("reason")).otherwise(pl.lit("other"))
                             .alias("group"))
        for (reason,), g in iv.group_by(["group"], maintain_order=True):
            g = g.head(max_points // 4)
            data.append({"type": "scattergl", "mode": "markers", "name": f"exit {_esc(reason)}",
                         "x": clk.x(g["ts_ns"]), "y": (g["cpu"].cast(pl.Float64) + 0.18).to_list(),
                         "marker": {"size": 6, "symbol": "line-ns-open"},
                         "text": [_esc(f"vcpu {v} {r} ({c}) handled in {h if h is not None else '?'} {dur}, "
                                       f"{cm}-{p}")
                                  for v, r, c, h, p, cm in g.select("vcpu_id", "reason", "exit_reason", "handling_ns",
                                                                    "pid", "comm").iter_rows()],
                         "hovertemplate": "%{text}<extra></extra>"})
    elif td.has("kvm_msr"):
        m = td.scan("kvm_msr").filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") < b)).head(max_points // 2).collect()
        data.append({"type": "scattergl", "mode": "markers", "name": "guest MSR access (kvm_msr)",
                     "x": clk.x(m["ts_ns"]), "y": (m["cpu"].cast(pl.Float64) + 0.18).to_list(),
                     "marker": {"size": 5},
                     "text": [_esc(f"{'write' if w_ else 'read'} {ms:#x} = {v:#x}{' #GP' if gp else ''} ({c})")
                              for w_, ms, v, gp, c in m.select("write", "msr", "value", "gp", "comm").iter_rows()],
                     "hovertemplate": "%{text}<extra></extra>"})
    if td.has("nmi_handler"):
        wd = P.perf_nmis(td).filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") < b))
        data.append({"type": "scattergl", "mode": "markers", "name": "host perf NMI",
                     "x": clk.x(wd["ts_ns"]), "y": (wd["cpu"].cast(pl.Float64) - 0.22).to_list(),
                     "marker": {"size": 9, "symbol": "diamond", "color": "#d62728"},
                     "text": [_esc(f"{h} handled={n} ({d} ns)") for h, n, d in
                              wd.select("handler", "handled", "delta_ns").iter_rows()],
                     "hovertemplate": "%{text}<extra></extra>"})
        sk = results.get("skid")
        att = sk.rows.get("pmi_attribution") if sk is not None else None
        if att is not None:
            att = att.filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") < b))
            colors = {"in_nmi_exit": "#2ca02c", "after_exit": "#ff7f0e", "before_entry": "#9467bd"}
            for cls, col in colors.items():
                g = att.filter(pl.col("class") == cls)
                data.append({"type": "scattergl", "mode": "markers", "name": f"perf NMI {cls.replace('_', ' ')}",
                             "x": clk.x(g["ts_ns"]), "y": (g["cpu"].cast(pl.Float64) - 0.08).to_list(),
                             "marker": {"size": 8, "symbol": "x", "color": col}, "hoverinfo": "x+name"})
    pm = results.get("pmi")
    pe = pm.rows.get("pmi_exits") if pm is not None else None
    if pe is not None and pe.height:
        pe = pe.filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") < b))
        data.append({"type": "scattergl", "mode": "markers", "name": "guest PMI exit",
                     "x": clk.x(pe["ts_ns"]), "y": (pe["cpu"].cast(pl.Float64) + 0.32).to_list(),
                     "marker": {"size": 8, "symbol": "star", "color": "#17becf"},
                     "text": [_esc(f"{p} ({c}), injected after {i if i is not None else '?'} {dur}") for p, c, i in
                              pe.select("path", "certainty", "to_injection_ns").iter_rows()],
                     "hovertemplate": "%{text}<extra></extra>"})
    sil = results.get("silent")
    if sil is not None and sil.computable and sil.rows.get("silent_windows") is not None and has_exits:
        sw = sil.rows["silent_windows"]
        cpu_of = exit_intervals(td).group_by("pid").agg(pl.col("cpu").mode().first())
        sw = sw.join(cpu_of, on="pid", how="left").with_columns((pl.col("cpu").cast(pl.Float64) - 0.35).alias("y"))
        xs, ys = _lines(sw.filter(pl.col("cpu").is_not_null()), "y", clk)
        data.append({"type": "scattergl", "mode": "lines", "name": "silent-error window", "x": xs, "y": ys,
                     "line": {"width": 6, "color": "rgba(214,39,40,0.6)"}, "hoverinfo": "name"})
    return data


def coverage(td: TraceData, w: Window) -> str:
    """What a detail window covers, relative to the trace: 'a .. b s of D s (n events)'."""
    clk = Clock.of(td)
    span = td.meta.get("time_span_ns") or [0, 0]
    return (f"{w.name}: {clk.num(w.start)} .. {clk.num(min(w.end, span[1]))} {clk.unit} of "
            f"{clk.rel(span[1])} ({w.events} events)")


def timeline(td: TraceData, results: dict[str, Result], max_points: int,
             windows: list[Window]) -> tuple[dict, list[dict]]:
    """The timeline figure of the first window and every window's data (the selector's)."""
    clk = Clock.of(td)
    per = max(1, max_points // len(windows))
    views = [{"name": w.name, "start": w.start, "end": w.end, "coverage": coverage(td, w),
              "data": timeline_data(td, results, per, w.start, w.end)} for w in windows]
    lay = _layout(f"{clk.title}; detail {views[0]['coverage']}", "CPU (number)",
                  260 + 60 * max(1, int(td.meta.get("cpus") or 1)), yaxis={"dtick": 1})
    return {"data": views[0]["data"], "layout": lay}, views


def _overview(td: TraceData, windows: list[Window]) -> dict:
    """Whole trace: events per CPU per time bin (a heatmap of fixed size), the detail window shaded."""
    span = td.meta.get("time_span_ns") or [0, 1]
    parts = [td.scan(t, ["ts_ns", "cpu"]).collect() for t in ("kvm_exit", "kvm_msr", "nmi_handler", "kvm_entry")
             if td.has(t)]
    if not parts:
        return {"data": [], "layout": _layout("", "", 120, annotations=[
            {"text": "no KVM events", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}])}
    ev = pl.concat(parts).drop_nulls("cpu")
    width = max(1, (span[1] - span[0]) // OVERVIEW_BINS + 1)
    h = ev.with_columns(((pl.col("ts_ns") - span[0]) // width).alias("bin")).group_by("cpu", "bin").len()
    cpus = sorted(h["cpu"].unique().to_list())
    z = [[0] * OVERVIEW_BINS for _ in cpus]
    for cpu, bn, n in h.iter_rows():
        z[cpus.index(cpu)][min(int(bn), OVERVIEW_BINS - 1)] = n
    clk = Clock.of(td)
    x = [((i + 0.5) * width) / clk.div for i in range(OVERVIEW_BINS)]
    w = windows[0]
    shade = {"type": "rect", "xref": "x", "yref": "paper", "y0": 0, "y1": 1, "x0": (w.start - clk.t0) / clk.div,
             "x1": (w.end - clk.t0) / clk.div, "fillcolor": "rgba(255,255,255,0.25)",
             "line": {"color": "#ffffff", "width": 2}}
    # a colorbar of a short heatmap crowds its ticks: the figure is at least 300 px, with at most 5 ticks
    return {"data": [{"type": "heatmap", "z": z, "x": x, "y": [str(c) for c in cpus], "colorscale": "Viridis",
                      "name": "KVM events per bin", "showscale": True,
                      "colorbar": {"title": {"text": "events per bin", "side": "right"}, "nticks": 5,
                                   "thickness": 14}}],
            "layout": _layout(clk.title, "CPU (number)", max(300, 160 + 40 * len(cpus)), shapes=[shade],
                              yaxis={"type": "category"})}


def exit_figures(results: dict[str, Result]) -> list[tuple[str, dict]]:
    r = results.get("exits")
    if r is None or not r.computable:
        return []
    iv = r.rows["exit_intervals"].filter(pl.col("handling_ns").is_not_null())
    by = r.rows["exits_by_reason"].head(TOP_REASONS)
    reasons = [_esc(x) for x in by["reason"].to_list()]
    bar = {"data": [{"type": "bar", "orientation": "h", "y": reasons[::-1], "x": by["samples"].to_list()[::-1],
                     "name": "VM-exits"}],
           "layout": _layout("exits (count)", "", 140 + 26 * len(reasons))}  # the labels name the axis
    ecdf = []
    for reason in by["reason"].to_list():
        v = iv.filter(pl.col("reason") == reason)["handling_ns"].sort()
        if v.len() > 2000:  # an ECDF keeps its shape with 2000 quantiles
            v = v.gather([int(i * (v.len() - 1) / 1999) for i in range(2000)])
        n = v.len()
        ecdf.append({"type": "scatter", "mode": "lines", "name": _esc(reason), "x": (v / 1000).to_list(),
                     "y": [(i + 1) / n for i in range(n)], "line": {"shape": "hv"}})
    return [("VM-exits by reason", bar),
            ("Exit handling latency per reason (ECDF)",
             {"data": ecdf, "layout": _layout("exit handling latency (µs, log scale)", "fraction of exits", 420,
                                              xaxis={"type": "log"}, yaxis={"range": [0, 1.02]})})]


def msr_figure(results: dict[str, Result]) -> list[tuple[str, dict]]:
    """Accesses per PMU MSR (horizontal bars: the labels read whole): reads and writes stacked to the
    total, and the accesses that took #GP as a marker (a subset of the reads and writes, not a third
    kind)."""
    r = results.get("pmu_msr")
    if r is None or not r.computable or not r.summary["by_msr"]:
        return []
    rows = r.summary["by_msr"][::-1]
    names = [_esc(f"{x['msr']:#x} {x['name']} ({x['mediated']})") for x in rows]
    data = [{"type": "bar", "orientation": "h", "name": "reads", "y": names, "x": [x["reads"] for x in rows]},
            {"type": "bar", "orientation": "h", "name": "writes", "y": names, "x": [x["writes"] for x in rows]}]
    if any(x["gp"] for x in rows):
        data.append({"type": "scatter", "mode": "markers", "name": "of which #GP", "y": names,
                     "x": [x["gp"] or None for x in rows], "marker": {"symbol": "x-thin-open", "size": 12,
                                                                      "color": "#d62728", "line": {"width": 2}}})
    return [("PMU MSR accesses handled by KVM (mediated verdict in brackets)",
             {"data": data, "layout": _layout("guest accesses (count)", "", 140 + 26 * len(rows),
                                              barmode="stack")})]


def what_if_figure(doc: dict) -> list[tuple[str, dict]]:
    """Saved, added and net exit-handling time as ranges (low bar and the span to high)."""
    w = doc.get("what_if") or {}
    if not w.get("applicable") or w.get("time_removed_ns") is None:
        return []
    lows = [w["time_removed_ns"] + w["recost_saving_ns"][0], w["switch_cost_added_ns"][0], w["net_saving_ns"][0]]
    highs = [w["time_removed_ns"] + w["recost_saving_ns"][1], w["switch_cost_added_ns"][1], w["net_saving_ns"][1]]
    x = ["exit handling saved", "PMU switch cost added", "net saving"]
    return [("What-if: this trace under the mediated design (range)",
             {"data": [{"type": "bar", "x": x, "y": [v / 1e6 for v in lows], "name": "low",
                        "marker": {"color": "#1f77b4"}},
                       {"type": "bar", "x": x, "y": [(h - lo) / 1e6 for h, lo in zip(highs, lows, strict=True)],
                        "name": "range to high", "marker": {"color": "rgba(31,119,180,0.35)"}}],
              "layout": _layout("", "exit-handling time (ms)", 360, barmode="stack")})]


# ---- tables a person reads ------------------------------------------------------------------------

def _table(rows: list[dict[str, str]], cols: list[str], raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw`` (cells already HTML)."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{r.get(c, '') if raw else _esc(r.get(c, ''))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _raw(obj: Any, what: str = "raw JSON") -> str:
    return (f"<details><summary>{_esc(what)}</summary><pre>"
            f"{_esc(json.dumps(obj, indent=2, default=str, ensure_ascii=False))}"
            "</pre></details>")


def _duration(ns: float, clk: Clock) -> str:
    if not clk.is_ns:
        return f"{ns:.0f} {clk.unit}"
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if abs(ns) >= div:
            return f"{ns / div:.3f} {unit}"
    return f"{ns:.0f} ns"


_WORDS = {"ns": "", "msr": "MSR", "pmu": "PMU", "rdpmc": "RDPMC", "cpuid": "CPUID"}


def _label(key: str) -> str:
    words = [_WORDS.get(w, w) for w in key.split("_")]
    return " ".join(w for w in words if w)


def _value(key: str, v: Any, clk: Clock) -> str:
    """A value as a person reads it: yes/no, durations with units, ranges as 'lo .. hi', MSRs in hex."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if key.endswith("_ns") and isinstance(v, list) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
        return f"{_duration(v[0], clk)} .. {_duration(v[1], clk)}"
    if key in ("ts_ns", "first_ts_ns", "start_ns", "end_ns") and isinstance(v, int | float):
        return clk.rel(int(v))
    if key.endswith("_ns") and isinstance(v, int | float):
        return _duration(v, clk)
    if key in ("msr", "ecx") and isinstance(v, int):
        return f"{v:#x}"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return str(v)


def _example(ex: dict[str, Any], clk: Clock) -> str:
    """An example row: its fields (row numbers and the input order left out), times relative."""
    out = []
    for k, v in ex.items():
        if k.endswith("_row") or k == "seq":
            continue
        if (k == "ts_ns" or k.endswith("_ts")) and isinstance(v, int):
            out.append(f"{'at' if k == 'ts_ns' else k.removesuffix('_ts') + ' at'} {clk.rel(v)}")
        else:
            out.append(f"{k}={_value(k, v, clk)}")
    return ", ".join(out)


def _trace_table(td: TraceData, doc: dict[str, Any], clk: Clock) -> str:
    m = td.meta
    span = m.get("time_span_ns") or [0, 0]
    rows = [("inputs", "; ".join(f"{i.get('path')} ({i.get('format')}, {i.get('tool') or '?'}, "
                                 f"{i.get('size_bytes', 0)} bytes)" for i in m.get("inputs", []))),
            ("kernel", m.get("kernel_release") or "unknown"),
            ("clock", f"{m.get('clock') or 'not recorded'}; times in {m.get('time_unit', 'ns')}"),
            ("trace start (absolute)", f"{clk.absolute(span[0])} on the trace clock"),
            ("duration", _duration(span[1] - span[0], clk)),
            ("CPUs", m.get("cpus") if m.get("cpus") is not None else "unknown"),
            ("lost events", f"{m.get('lost_events', 0)} in {m.get('lost_notices', 0)} notices"),
            ("unparsed records", m.get("unparsed", 0))]
    ev = sorted((m.get("events") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    out = _table([{"what": k, "value": str(v)} for k, v in rows], ["what", "value"])
    out += "<h3>Events</h3>" + _table([{"event": k, "count": str(n)} for k, n in ev], ["event", "count"])
    return out + _raw(doc.get("trace"), "trace metadata as JSON")


def _host_table(host: dict[str, Any] | None) -> str:
    if not host:
        return "<p>None (the trace was not captured with <code>vpmutrace record</code> and no host.json was " \
               "given).</p>"
    kvm = host.get("kvm") or {}
    wd = host.get("watchdog") or {}
    pc = host.get("pmu_counters") or {}
    rows = [("CPU", f"{host.get('cpu_model') or '?'} ({host.get('cpu_vendor') or '?'}), "
                    f"{host.get('cpus_online')} CPUs online"),
            ("kernel", host.get("kernel_release") or "?"),
            ("TSC", f"{host['tsc_khz'] / 1e6:.6f} GHz" if host.get("tsc_khz") else "unknown"),
            ("KVM parameters", "; ".join(f"{mod}.{k}={v}" for mod, ps in kvm.items() for k, v in ps.items()) or "-"),
            ("host PMU", ", ".join(f"{k.replace('_', ' ')} {v:#x}" if k == "perf_capabilities" and isinstance(v, int)
                                   else f"{k.replace('_', ' ')} {v}" for k, v in pc.items()) or "-"),
            ("NMI watchdog", f"nmi_watchdog={wd.get('nmi_watchdog')}, kind {wd.get('kind') or '?'}, "
                             f"watchdog_thresh={wd.get('watchdog_thresh')} s"),
            ("running VMs", "; ".join(f"pid {v.get('pid')}: {len(v.get('vcpus') or [])} vCPUs"
                                      for v in host.get("running_vms") or []) or "none seen"),
            ("dmesg (KVM, perf)", " | ".join((host.get("dmesg") or {}).get("lines") or []) or "-")]
    return _table([{"what": k, "value": str(v)} for k, v in rows], ["what", "value"]) + _raw(host, "host snapshot "
                                                                                                  "as JSON")


def _what_if_table(w: dict[str, Any], clk: Clock) -> str:
    rows = [{"what": _label(k), "value": _value(k, v, clk)} for k, v in w.items() if k != "findings"]
    return _table(rows, ["what", "value"]) + _raw({k: v for k, v in w.items() if k != "findings"}, "what-if as JSON")


def _rule_sections() -> dict[str, list[str]]:
    """{analyzer: the design sections its rule cites} (the registry's rule texts)."""
    from vpmutrace.analyze import registry

    return {name: reference.cited(a.rule) for name, a in registry().items()}


def _reference_section(nums: list[str]) -> str:
    secs = reference.sections()
    if not nums:
        return ""
    where = reference.path()
    parts = ["<h2 id='design'>Design reference (the sections cited on this page)</h2>",
             f"<p>From the project's design reference, {_esc(reference.DOC)}"
             f"{f' (here: {_esc(where)})' if where else ''}.</p>"]
    for n in sorted(nums, key=lambda s: [int(x) for x in s.split(".")]):
        title, text = secs.get(n, ("(section not found in this version of the reference)", ""))
        parts.append(f"<section id='design-{_esc(n)}' class='ref'><h3>§{_esc(n)} {_esc(title)}</h3>"
                     f"<div class='reftext'>{_esc(text)}</div></section>")
    return "".join(parts)


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:110em}h1{font-size:1.5em}
h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}.high{background:#fde0dc}.medium{background:#fff4d6}.info{background:#eef5ff}pre{background:#f6f6f6;
padding:.8em;overflow:auto;max-height:30em;font-size:.85em}.reftext{white-space:pre-wrap;font-size:.85em;
background:#fafafa;padding:.5em;border-left:3px solid #ccd}.start{background:#f3f3f3;padding:.4em .6em}
select{font-size:.95em}"""

# a compact mode bar (zoom, pan, reset, save): it covers less of the legend when it shows
CONFIG = _js({"responsive": True, "displaylogo": False,
              "modeBarButtonsToRemove": ["select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "hoverClosestCartesian",
                                         "hoverCompareCartesian", "toggleSpikelines", "autoScale2d"]})

SELECTOR_JS = """function vpmuWindow(i){var v=VPMU_VIEWS[i];var el=document.getElementById('timeline');
var lay=Object.assign({},el.layout);lay.xaxis=Object.assign({},lay.xaxis,{autorange:true,
title:{text:VPMU_XTITLE+'; detail '+v.coverage}});Plotly.react(el,v.data,lay);
document.getElementById('coverage').textContent=v.coverage;
document.getElementById('window-cmd').textContent=v.cmd;
var ov=document.getElementById('overview');if(ov&&ov.layout&&ov.layout.shapes&&ov.layout.shapes.length){
Plotly.relayout(ov,{'shapes[0].x0':v.x0,'shapes[0].x1':v.x1});}}"""


def build(td: TraceData, doc: dict[str, Any], results: dict[str, Result], out: Path, max_points: int = 60_000,
          window: tuple[int, int] | None = None, title: str | None = None) -> Path:
    plotly_js = resources.files("plotly").joinpath("package_data/plotly.min.js").read_text()
    clk = Clock.of(td)
    windows = detail_windows(td, doc, max_points, window)
    tl, views = timeline(td, results, max_points, windows)
    figs: list[tuple[str, str, dict]] = [("timeline", "", tl),
                                         ("overview", "Whole trace: KVM events per CPU per time bin",
                                          _overview(td, windows))]
    figs += [(f"exits{i}", t, f) for i, (t, f) in enumerate(exit_figures(results))]
    figs += [(f"msr{i}", t, f) for i, (t, f) in enumerate(msr_figure(results))]
    figs += [(f"whatif{i}", t, f) for i, (t, f) in enumerate(what_if_figure(doc))]
    fnd = findings(doc, td)
    rule_refs = _rule_sections()
    cfg = doc.get("config") or {}
    design = (cfg.get("design") or {}).get("value")
    inputs = ", ".join(str(i.get("path")) for i in td.meta.get("inputs", []))
    span = td.meta.get("time_span_ns") or [0, 0]
    cites: list[str] = []
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title or 'vpmutrace report')}</title>",
             f"<style>{CSS}</style><script>{plotly_js}</script></head><body>",
             f"<h1>{_esc(title or 'vpmutrace report')}</h1><p>{_esc(inputs)} &mdash; vPMU design: "
             f"{_esc(design)} ({_esc((cfg.get('design') or {}).get('source'))})</p>",
             f"<p class='start' id='trace-start'>Trace start: <b>{clk.absolute(span[0])}</b> on the trace "
             f"clock ({_esc(td.meta.get('clock') or 'not recorded')}); every time on this page is relative to it. "
             f"Duration {_esc(_duration(span[1] - span[0], clk))}.</p>",
             "<h2>Findings</h2>"]
    if fnd:
        refs = {id(f): list(dict.fromkeys(reference.cited(f["finding"]) + rule_refs.get(f["analyzer"], [])))
                for f in fnd}
        cites += [c for f in fnd for c in refs[id(f)]]
        parts.append("<table><thead><tr><th>severity</th><th>certainty</th><th>analyzer</th><th>finding</th>"
                     "<th>first at</th><th>design</th></tr></thead><tbody>"
                     + "".join(f"<tr class='{f['severity']}'><td>{_esc(f['severity'])}</td><td>{_esc(f['certainty'])}"
                               f"</td><td>{_esc(f['analyzer'])}</td><td>{_cite_links(f['finding'])}</td>"
                               f"<td>{_esc(clk.rel(f['first_ts_ns']))}</td>"
                               f"<td>{_cite_links(' '.join('§' + c for c in refs[id(f)]))}</td></tr>" for f in fnd)
                     + "</tbody></table><p>A <i>candidate</i> rests on timing or a pattern (its evidence is shown); "
                       "a <i>fact</i> follows from the trace and the kernel code the rule cites "
                       "(<a href='#design'>design reference</a>).</p>")
    else:
        parts.append("<p>No findings.</p>")
    for v in views:
        v["cmd"] = (f"vpmutrace report --window {clk.absolute(v['start']).split()[0]}:"
                    f"{clk.absolute(v['end']).split()[0]} (absolute trace-clock {clk.abs_unit}) renders this window "
                    "alone with the full point budget")
        v["x0"], v["x1"] = (v["start"] - clk.t0) / clk.div, (v["end"] - clk.t0) / clk.div
    parts.append(f"<h2>Timeline</h2><p>{_esc(time_note(td))}</p>")
    if len(views) > 1:
        parts.append("<p><label for='window'>Detail window: </label><select id='window' "
                     "onchange='vpmuWindow(this.selectedIndex)'>"
                     + "".join(f"<option>{_esc(v['coverage'])}</option>" for v in views)
                     + "</select> (the trace has more events than one detail window holds; the overview below "
                       "shows the whole trace with the window outlined)</p>")
    parts.append(f"<p>Detail <span id='coverage'>{_esc(views[0]['coverage'])}</span>; zoom with the mouse. "
                 f"<code id='window-cmd'>{_esc(views[0]['cmd'])}</code>.</p>")
    for fid, ftitle, _ in figs:
        if fid == "exits0":
            parts.append("<h2>VM-exits</h2>")
        if fid == "msr0":
            parts.append("<h2>PMU MSR traffic</h2>")
        if fid == "whatif0":
            parts.append("<h2>What-if</h2>")
        if ftitle:
            parts.append(f"<h3>{_esc(ftitle)}</h3>")
        parts.append(f"<div id='{fid}' class='fig'></div>")
    d = doc.get("diff") or {}
    parts.append("<h2>Model diff</h2>")
    if d.get("divergences"):
        cites += [c for x in d["divergences"] for c in reference.cited(x.get("section") or "")]
        rows = [{"rule": _esc(x["rule"]), "section": _cite_links(x.get("section") or ""), "events": str(x["count"]),
                 "certainty": _esc(x.get("certainty")), "first at": _esc(clk.rel(x.get("first_ts_ns"))),
                 "what": _esc(x.get("explain")), "first example": _esc(_example(x.get("example") or {}, clk))}
                for x in d["divergences"]]
        parts.append(_table(rows, ["rule", "section", "events", "certainty", "first at", "what", "first example"],
                            raw=True) + _raw(d["divergences"], "divergences as JSON"))
    else:
        parts.append(f"<p>No divergence from the {_esc(d.get('model'))} design.</p>")
    if d.get("rules_not_checked"):
        parts.append("<p>Not checked: " + _esc("; ".join(d["rules_not_checked"])) + "</p>")
    if doc.get("what_if"):
        parts.append("<h3>What-if in numbers</h3>" + _what_if_table(doc["what_if"], clk))
    if design in ("mediated", "emulated"):
        from vpmutrace.model.design import HostSetup, PmuShape, describe

        hp = (cfg.get("host_pmu") or {}).get("value") or {}
        setup = HostSetup(PmuShape.from_json(hp.get("shape")), PmuShape.from_json((cfg.get("guest_pmu") or {})
                                                                                  .get("value")))
        m = describe(design, setup)
        parts.append(f"<h2>Reference model: {_esc(m['design'])} design</h2><p>RDPMC: {_esc(m['rdpmc'])}; "
                     f"guest PMIs: {_esc(m['pmi_vector'])}; PMU context switch: {_esc(m['context_switch'])}</p>")
        parts.append(_table([{**r, "msr": f"{r['msr']:#x}"} for r in m["msrs"]], ["msr", "name", "kind", "verdict"]))
    counted = [{"category": e.category, "event or record": e.name or "-", "count": e.count, "file": e.source_file,
                "first": "; ".join(e.examples[:2])} for e in td.stats.entries()]
    parts.append("<h2>Counted: skipped, unparsed, lost, fallbacks</h2>"
                 + (_table(counted, ["category", "event or record", "count", "file", "first"]) if counted else
                    "<p>Nothing skipped, lost or decoded by fallback.</p>")
                 + "<p>Rows printed as text without their print fmt are counted too (categories "
                 + _esc(", ".join(TEXT_CATEGORIES)) + ") once text is printed.</p>")
    parts.append("<h2>Trace</h2>" + _trace_table(td, doc, clk))
    parts.append("<h2>Host snapshot</h2>" + _host_table(td.meta.get("host")))
    parts.append(_reference_section(list(dict.fromkeys(cites))))
    x_title = clk.title
    parts.append("<script>" + f"var VPMU_VIEWS={_js(views)};var VPMU_XTITLE={_js(x_title)};{SELECTOR_JS}"
                 + "".join(f"Plotly.newPlot({_js(fid)},"
                           f"{'VPMU_VIEWS[0].data' if fid == 'timeline' else _js(f['data'])},{_js(f['layout'])},"
                           f"{CONFIG});" for fid, _, f in figs) + "</script></body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts))
    return out

