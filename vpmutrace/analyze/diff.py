"""The trace replayed through the reference model: divergences, and the what-if projection.

Divergence rules (reference section in brackets), applied for the chosen design:
  mediated:
    pmu_msr_exit_passthrough   a guest PMU MSR access KVM handled (kvm_msr) on an MSR the
                               mediated design passes through for this guest shape  [§1.3]
    rdpmc_exit_passthrough     an RDPMC exit although all counters are exposed       [§1.4]
    host_pmi_during_guest      an NMI exit whose NMI perf_event_nmi_handler claimed
                               (handled >= 1): perf returns NMI_DONE while the guest
                               LVTPC is loaded, so a claimed NMI means a host include-
                               guest event, which the design rejects               [§2.3, §3.1]
    pmi_via_nmi_exit           guest PMI injected (kvm_apic_accept_irq, NMI mode) right
                               after an NMI exit instead of a 0xF5 interrupt exit    [§3.1, §3.2]
    watchdog_enabled           the host snapshot has nmi_watchdog=1: a mediated VM cannot
                               be created while the perf watchdog exists            [§4]
  emulated:
    mediated_pmi_vector        external-interrupt exits on vector 0xF5, the mediated PMI
                               vector                                               [§3.1]
Each divergence: rule, count, first timestamp, an example row.

What-if (emulated trace -> mediated design): exits the mediated design removes (PMU MSR
accesses it passes through, RDPMC exits when RDPMC passes through) and their handling
time (kvm_msr matched to its enclosing exit), and the PMU context switches it adds (one
load+put per remaining exit, at switch_cost_ns each, §2.1, §7).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from vpmutrace.analyze.base import Config, Result
from vpmutrace.analyze.pmu_msr import classify, rdpmc_exits, rdpmc_mask
from vpmutrace.analyze.skid import mediated_pmi_mask, nmi_exit_mask
from vpmutrace.analyze.watchdog import PERF_HANDLER
from vpmutrace.analyze.windows import exit_intervals
from vpmutrace.model import msrs as M
from vpmutrace.model.design import EMULATED, MEDIATED, host_pmi_possible_during_guest, rdpmc_intercepted
from vpmutrace.tracedata import TraceData

RULE = __doc__.split("\n\n", 1)[1]


def _div(rule: str, df: pl.DataFrame, section: str, explain: str) -> dict[str, Any] | None:
    if df.height == 0:
        return None
    first = df.sort("ts_ns").row(0, named=True)
    example = {k: (str(v) if not isinstance(v, int | float | bool | type(None)) else v) for k, v in first.items()}
    return {"rule": rule, "section": section, "count": df.height, "first_ts_ns": int(first["ts_ns"]),
            "example": example, "explain": explain}


def _pmu_rows(td: TraceData, cfg: Config) -> pl.DataFrame:
    if not td.has("kvm_msr"):
        return pl.DataFrame()
    return classify(td.df("kvm_msr"), cfg).filter(pl.col("kind").is_not_null() & (pl.col("kind") != M.DEBUGCTL))


def divergences(td: TraceData, cfg: Config) -> tuple[list[dict], list[str]]:
    out: list[dict | None] = []
    unchecked: list[str] = []
    ex = td.df("kvm_exit")
    if cfg.model == MEDIATED:
        pmu = _pmu_rows(td, cfg)
        if pmu.height:
            out.append(_div("pmu_msr_exit_passthrough", pmu.filter(~pl.col("mediated_traps")), "§1.3",
                            "guest access to a passed-through PMU MSR was handled by KVM"))
        elif not td.has("kvm_msr"):
            unchecked.append("pmu_msr_exit_passthrough (needs kvm:kvm_msr)")
        if td.has("kvm_exit"):
            if not rdpmc_intercepted(MEDIATED, cfg.setup):
                out.append(_div("rdpmc_exit_passthrough", rdpmc_exits(td), "§1.4",
                                "RDPMC exited although all counters are exposed"))
            if td.has("nmi_handler") and not host_pmi_possible_during_guest(cfg.model):
                out.append(_div("host_pmi_during_guest", _claimed_nmi_exits(td), "§2.3, §3.1",
                                "perf claimed an NMI that exited the guest: a host event counted guest time"))
            else:
                unchecked.append("host_pmi_during_guest (needs nmi:nmi_handler)")
            if td.has("kvm_apic_accept_irq"):
                out.append(_div("pmi_via_nmi_exit", _pmi_after_nmi_exit(td), "§3.1, §3.2",
                                "guest PMI injected after an NMI exit, not after a 0xF5 interrupt exit"))
            else:
                unchecked.append("pmi_via_nmi_exit (needs kvm:kvm_apic_accept_irq)")
        else:
            unchecked += ["rdpmc_exit_passthrough (needs kvm:kvm_exit)", "host_pmi_during_guest (needs kvm:kvm_exit)",
                          "pmi_via_nmi_exit (needs kvm:kvm_exit)"]
        host = td.meta.get("host") or {}
        if (host.get("watchdog") or {}).get("nmi_watchdog"):
            out.append({"rule": "watchdog_enabled", "section": "§4", "count": 1, "first_ts_ns": None,
                        "example": {"nmi_watchdog": 1},
                        "explain": "a mediated VM cannot be created while the perf NMI watchdog exists"})
    elif cfg.model == EMULATED:
        if td.has("kvm_exit"):
            out.append(_div("mediated_pmi_vector", ex.filter(mediated_pmi_mask()), "§3.1",
                            "interrupt exits on the mediated PMI vector 0xF5"))
        else:
            unchecked.append("mediated_pmi_vector (needs kvm:kvm_exit)")
    return [d for d in out if d is not None], unchecked


def _claimed_nmi_exits(td: TraceData) -> pl.DataFrame:
    ex = td.df("kvm_exit").filter(nmi_exit_mask()).select("ts_ns", "cpu", "pid", "vcpu_id", "reason")
    nmi = td.df("nmi_handler").filter(pl.col("handler").str.starts_with(PERF_HANDLER) & (pl.col("handled") >= 1)) \
        .select(pl.col("ts_ns").alias("nmi_ts"), "cpu", "handled")
    if ex.height == 0 or nmi.height == 0:
        return ex.clear()
    j = ex.sort("ts_ns").join_asof(nmi.sort("nmi_ts"), left_on="ts_ns", right_on="nmi_ts", by="cpu",
                                   strategy="forward", tolerance=1_000_000)
    nxt = td.df("kvm_entry").select(pl.col("ts_ns").alias("entry_ts"), "pid").sort("entry_ts")
    j = j.sort("ts_ns").join_asof(nxt, left_on="ts_ns", right_on="entry_ts", by="pid", strategy="forward")
    return j.filter(pl.col("nmi_ts").is_not_null() & (pl.col("entry_ts").is_null() | (pl.col("nmi_ts")
                                                                                        < pl.col("entry_ts"))))


def _pmi_after_nmi_exit(td: TraceData) -> pl.DataFrame:
    acc = td.df("kvm_apic_accept_irq").filter(pl.col("delivery_mode") == "NMI").select("ts_ns", "pid", "vector")
    iv = exit_intervals(td).select(pl.col("ts_ns").alias("exit_ts"), "pid", "exit_reason", "isa", "intr_info")
    if acc.height == 0 or iv.height == 0:
        return acc.clear()
    j = acc.sort("ts_ns").join_asof(iv.sort("exit_ts"), left_on="ts_ns", right_on="exit_ts", by="pid",
                                    strategy="backward")
    return j.filter(nmi_exit_mask())


def what_if(td: TraceData, cfg: Config) -> dict[str, Any]:
    """Emulated trace projected onto the mediated design (model arithmetic, see the module doc)."""
    s = cfg.setup
    pmu = _pmu_rows(td, cfg)
    removed_msr = pmu.filter(~pl.col("mediated_traps")) if pmu.height else pmu
    rd = rdpmc_exits(td) if td.has("kvm_exit") else None
    rdpmc_removed = 0 if rd is None or rdpmc_intercepted(MEDIATED, s) else rd.height
    out: dict[str, Any] = {
        "computable": td.has("kvm_msr") or td.has("kvm_exit"),
        "pmu_msr_exits_removed": removed_msr.height, "rdpmc_exits_removed": rdpmc_removed,
        "exits_removed": removed_msr.height + rdpmc_removed, "switch_cost_ns": s.switch_cost_ns,
    }
    if not (td.has("kvm_exit") and td.has("kvm_entry")):
        out.update({"time_removed_ns": None, "exits_total": td.df("kvm_exit").height if td.has("kvm_exit") else None,
                    "switches_added": None, "switch_cost_added_ns": None, "net_saving_ns": None,
                    "needs": "kvm:kvm_exit and kvm:kvm_entry for times and switch counts"})
        return out
    iv = exit_intervals(td).filter(pl.col("handling_ns").is_not_null())
    # each removed kvm_msr belongs to the exit of its vCPU thread that precedes it
    if removed_msr.height:
        m = removed_msr.select("ts_ns", pl.col("source").cast(pl.String), "pid").sort("ts_ns")
        e = iv.select(pl.col("ts_ns").alias("exit_ts"), "source", "pid", "handling_ns", "exit_row").sort("exit_ts")
        j = m.join_asof(e, left_on="ts_ns", right_on="exit_ts", by=["source", "pid"], strategy="backward")
        j = j.filter(pl.col("exit_ts").is_not_null()
                     & (pl.col("ts_ns") <= pl.col("exit_ts") + pl.col("handling_ns")))
        exits_of_msr = j.unique("exit_row")
    else:
        exits_of_msr = iv.clear()
    t_msr = int(exits_of_msr["handling_ns"].sum() or 0)
    rd_rows = iv.filter(rdpmc_mask()) if rdpmc_removed else iv.clear()
    t_rd = int(rd_rows["handling_ns"].sum() or 0)
    removed_exits = exits_of_msr.height + rd_rows.height
    remaining = iv.height - removed_exits
    added = remaining * s.switch_cost_ns
    out.update({"exits_total": iv.height, "exits_removed_matched": removed_exits,
                "time_removed_ns": t_msr + t_rd, "switches_added": remaining, "switch_cost_added_ns": added,
                "net_saving_ns": t_msr + t_rd - added})
    return out


def analyze(td: TraceData, cfg: Config) -> Result:
    divs, unchecked = divergences(td, cfg)
    summary = {"model": cfg.model, "divergences": divs, "divergent_events": sum(d["count"] for d in divs),
               "rules_not_checked": unchecked}
    return Result("diff", summary=summary, rule=RULE)
