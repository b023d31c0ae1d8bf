"""NMI-watchdog coverage per CPU: where the host had no hard-lockup NMI.

Rule (reference §4): the perf hard-lockup detector raises one NMI per
watchdog_thresh seconds per CPU, seen as nmi:nmi_handler for perf_event_nmi_handler
with handled >= 1. Per CPU, gaps between consecutive watchdog NMIs (and from the trace
start to the first, and from the last to the trace end) longer than
period * (1 + tolerance) are blind gaps; for each, the guest time inside it (from the
ownership windows, when kvm_entry exists) is reported. Coverage = time within one
period after a watchdog NMI / traced span. With nmi_watchdog=0 in the host snapshot,
or a mediated VM (the watchdog cannot coexist with it), the whole span is blind.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze.base import Config, Result, missing, not_computable
from vpmutrace.analyze.windows import guest_windows, overlap_ns
from vpmutrace.model.design import watchdog_possible_during_guest
from vpmutrace.tracedata import TraceData

REQUIRES = ["nmi_handler"]
RULE = __doc__.split("\n\n", 1)[1]
PERF_HANDLER = "perf_event_nmi_handler"


def watchdog_nmis(td: TraceData) -> pl.DataFrame:
    """Perf NMIs claimed by perf that are not guest PMIs.

    A guest PMI of the emulated design is an NMI that perf claims right after an NMI exit,
    followed by the LVTPC injection (kvm_apic_accept_irq in NMI mode) before the vCPU's next
    entry (reference §3.3); those are excluded.
    """
    n = td.df("nmi_handler").filter(pl.col("handler").str.starts_with(PERF_HANDLER) & (pl.col("handled") >= 1))
    if n.height == 0 or not (td.has("kvm_exit") and td.has("kvm_apic_accept_irq")):
        return n
    from vpmutrace.analyze.skid import nmi_exit_mask
    from vpmutrace.analyze.windows import exit_intervals

    iv = exit_intervals(td).filter(nmi_exit_mask() & pl.col("handling_ns").is_not_null())
    acc = td.df("kvm_apic_accept_irq").filter(pl.col("delivery_mode") == "NMI").select("ts_ns", "pid")
    if iv.height == 0 or acc.height == 0:
        return n
    iv = iv.with_columns((pl.col("ts_ns") + pl.col("handling_ns")).alias("end_ns"))
    pmi_exits = iv.sort("ts_ns").join_asof(acc.sort("ts_ns").rename({"ts_ns": "acc_ts"}), left_on="ts_ns",
                                           right_on="acc_ts", by="pid", strategy="forward") \
        .filter(pl.col("acc_ts").is_not_null() & (pl.col("acc_ts") <= pl.col("end_ns")))
    # the perf NMI that belongs to such an exit: on its CPU, inside its handling interval
    tagged = n.with_row_index("_r").sort("ts_ns").join_asof(
        pmi_exits.select(pl.col("ts_ns").alias("exit_ts"), "end_ns", "cpu").sort("exit_ts"), left_on="ts_ns",
        right_on="exit_ts", by="cpu", strategy="backward")
    guest = tagged.filter(pl.col("exit_ts").is_not_null() & (pl.col("ts_ns") <= pl.col("end_ns")))["_r"]
    return n.with_row_index("_r").filter(~pl.col("_r").is_in(guest.implode())).drop("_r")


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return not_computable("watchdog", needs, RULE)
    period = int(cfg.setup.watchdog_thresh_s * 1e9)
    limit = period * (1 + cfg.watchdog_tolerance)
    span = td.meta.get("time_span_ns") or [0, 0]
    t0, t1 = span
    nmis = watchdog_nmis(td)
    wins = guest_windows(td) if td.has("kvm_exit") and td.has("kvm_entry") else None
    cpus = sorted(set(c for t in ("nmi_handler", "kvm_exit", "sched_switch") if td.has(t)
                      for c in td.df(t)["cpu"].drop_nulls().unique().to_list()))
    gaps, per_cpu = [], []
    for cpu in cpus:
        ts = nmis.filter(pl.col("cpu") == cpu)["ts_ns"].sort().to_list()
        edges = [t0] + ts + [t1]
        covered = 0
        longest = 0
        for a, b in zip(edges, edges[1:], strict=False):
            length = b - a
            longest = max(longest, length)
            # time right after an NMI (not after the trace start) is covered for one period
            covered += min(length, period) if a in ts else 0
            if length > limit:
                w = wins.filter(pl.col("cpu") == cpu) if wins is not None else None
                gaps.append({"cpu": cpu, "start_ns": a, "end_ns": b, "length_ns": length,
                             "guest_ns": overlap_ns(a, b, w) if w is not None else None})
        span_ns = max(1, t1 - t0)
        per_cpu.append({"cpu": cpu, "watchdog_nmis": len(ts), "longest_gap_ns": longest,
                        "blind_gaps": sum(1 for g in gaps if g["cpu"] == cpu),
                        "coverage_pct": round(100.0 * min(covered, span_ns) / span_ns, 3)})
    summary = {
        "period_ns": period, "tolerance": cfg.watchdog_tolerance, "nmi_watchdog_enabled": cfg.setup.nmi_watchdog,
        "watchdog_possible_during_guest": watchdog_possible_during_guest(cfg.model, cfg.setup),
        "watchdog_nmis": nmis.height, "blind_gaps": len(gaps),
        "longest_gap_ns": max((g["length_ns"] for g in gaps), default=0),
        "blind_guest_ns": sum(g["guest_ns"] or 0 for g in gaps) if wins is not None else None,
        "per_cpu": per_cpu, "gaps": gaps,
    }
    schema = {"cpu": pl.Int32, "start_ns": pl.Int64, "end_ns": pl.Int64, "length_ns": pl.Int64,
              "guest_ns": pl.Int64}
    return Result("watchdog", summary=summary, rows={"watchdog_gaps": pl.DataFrame(gaps, schema=schema)},
                  rule=RULE)
