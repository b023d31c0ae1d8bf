"""PMU ownership windows per CPU: when the guest owns the PMU, and what switching it costs.

Rule (mediated design, reference §2.1): the guest PMU is loaded before VM-entry and
put after every non-fastpath VM-exit, so each guest run [kvm_entry, next kvm_exit of
the vCPU thread) on a CPU is a guest-ownership window and each window costs one
load+put pair. Per CPU: windows, guest time, residency (guest time / traced span),
context switches, and the estimated switch cost = switches * switch_cost_ns
(default from the published figure in §7). Traces give no fastpath marker (§2.1), so
every exit is counted as a slow-path exit: the cost is an upper bound.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze.base import Config, Result, missing, not_computable
from vpmutrace.analyze.windows import guest_windows
from vpmutrace.model.design import MEDIATED, SWITCH_COST_SOURCE, context_switches_per_exit
from vpmutrace.tracedata import TraceData

REQUIRES = ["kvm_exit", "kvm_entry"]
RULE = __doc__.split("\n\n", 1)[1]


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return not_computable("ownership", needs, RULE)
    w = guest_windows(td).with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("guest_ns"))
    span = td.meta.get("time_span_ns") or [0, 0]
    span_ns = max(1, span[1] - span[0])
    per_cpu = w.group_by("cpu").agg(pl.len().alias("windows"), pl.col("guest_ns").sum(),
                                    pl.col("guest_ns").max().alias("longest_window_ns"),
                                    pl.col("pid").n_unique().alias("vcpu_threads")).sort("cpu")
    cost = cfg.setup.switch_cost_ns
    per_exit = context_switches_per_exit(MEDIATED)
    per_cpu = per_cpu.with_columns(
        (pl.col("guest_ns") / span_ns).alias("residency"),
        (pl.col("windows") * per_exit).alias("context_switches"),
        (pl.col("windows") * per_exit * cost).alias("est_switch_cost_ns"))
    summary = {
        "span_ns": span_ns, "windows_total": w.height, "guest_ns_total": int(w["guest_ns"].sum() or 0),
        "context_switches_total": w.height * per_exit, "switch_cost_ns": cost,
        "switch_cost_source": SWITCH_COST_SOURCE, "est_switch_cost_ns_total": w.height * per_exit * cost,
        "per_cpu": [dict(r) for r in per_cpu.iter_rows(named=True)],
    }
    return Result("ownership", summary=summary, rows={"ownership_windows": w}, rule=RULE)
