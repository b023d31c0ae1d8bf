"""What-if: this emulated-vPMU trace under the mediated design, as a range.

Rule (design §1.3, §1.4, §2.1, §3.5, §7): for a trace of the emulated design whose guest PMU
shape is known,
- removed: the exits of PMU MSR accesses the mediated design passes through for this guest
  (no #GP), and RDPMC exits when kvm_need_rdpmc_intercept() is false; their measured handling
  time is saved;
- re-costed: event-select, FIXED_CTR_CTRL and GLOBAL_CTRL writes stay intercepted, but no perf
  event is reprogrammed (only eventsel_hw and the filter are refreshed), so a value-changing
  write costs what a plain MSR exit costs: the median of this trace's value-unchanged control
  writes (no reprogram under either design), else of its other MSR_WRITE exits that leave the
  fastpath, else the published MSR_WRITE range (model.costs);
- added: one kvm_mediated_pmu_put()+load() per remaining exit that leaves the fastpath, at the
  per-vendor cost range of model.costs, or the cost calibrated from an emulated/mediated pair of
  traces (``vpmutrace compare``), or --switch-cost-ns. Fastpath-eligible exits keep the guest
  PMU loaded when they re-enter fast (§2.1), but the 7.0 fastpath refuses to emulate while guest
  counters count instructions or branches (kvm_pmu_is_fastpath_emulation_allowed()) and HLT
  re-enters only with a wake pending: the low end counts no switch for them, the high end one.
- accesses whose pass-through verdict needs an unknown PMU shape are removed at the high end only.
Net saving = saved + re-cost saving - added, a range. Exit handling only: guest-side gains
(no exits on counter reads, no multiplexing by host perf) are not in it.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, missing, rule_of
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.msr_access import classify, with_exit_latency
from vpmutrace.analyze.windows import exit_intervals, fastpath_column
from vpmutrace.errors import plural
from vpmutrace.model import costs
from vpmutrace.model import msrs as M
from vpmutrace.model.design import EMULATED, MEDIATED, NO_VPMU, PASS, rdpmc_intercepted
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("kvm_exit", "kvm_entry")
CONTROL = (M.GP_SELECTOR, M.FIXED_CTRL, M.GLOBAL_CTRL)
KINDS = (FindingKind("mediated_saving", "info", "candidate", "projected exit-handling saving under the mediated "
                                                             "design"),)


def analyze(td: TraceData, cfg: Config) -> Result:
    if cfg.model in (MEDIATED, NO_VPMU):
        why = "the trace is already of the mediated design" if cfg.model == MEDIATED else "the guest has no vPMU"
        return Result("what_if", summary={"applicable": False, "why": why}, rule=RULE)
    needs = missing(td, REQUIRES)
    if cfg.setup.guest is None:
        needs.append("the guest PMU shape (kvm:kvm_cpuid events, a host snapshot, or --guest-gp/--guest-fixed)")
    if needs:
        return Result("what_if", needs=needs, summary={"applicable": True}, rule=RULE)
    iv = exit_intervals(td)
    iv = iv.with_columns(fastpath_column(iv, cfg.kernel).alias("fastpath"))
    timed = iv.filter(pl.col("handling_ns").is_not_null())
    pmu = with_exit_latency(td, classify(td, cfg)) if td.has("kvm_msr") else None
    removed_rows: set[int] = set()
    maybe_rows: set[int] = set()
    if pmu is not None:
        removed_rows |= set(pmu.filter((pl.col("mediated") == PASS) & pl.col("exit_row").is_not_null())["exit_row"]
                            .to_list())
        maybe_rows = set(pmu.filter((pl.col("mediated") == "unknown") & pl.col("exit_row").is_not_null())["exit_row"]
                         .to_list()) - removed_rows
    rd = timed.filter(P.rdpmc_exit())
    rd_pass = rdpmc_intercepted(MEDIATED, cfg.setup) is False
    if rd_pass:
        removed_rows |= set(rd["exit_row"].to_list())
    removed = timed.filter(pl.col("exit_row").is_in(list(removed_rows)))
    saved = int(removed["handling_ns"].sum() or 0)
    maybe = timed.filter(pl.col("exit_row").is_in(list(maybe_rows)))
    saved_maybe = int(maybe["handling_ns"].sum() or 0)
    # re-costed control writes
    base, base_src = _msr_baseline(pmu, timed)
    recost = 0.0
    changed = pmu.filter(pl.col("write") & pl.col("kind").is_in(list(CONTROL)) & (pl.col("changed") == True)  # noqa
                         & pl.col("exit_ns").is_not_null()) if pmu is not None else None
    if changed is not None and changed.height:
        per_exit = changed.unique("exit_row")
        recost = float((per_exit["exit_ns"].cast(pl.Float64) - base[1]).clip(lower_bound=0).sum())
        recost_hi = float((per_exit["exit_ns"].cast(pl.Float64) - base[0]).clip(lower_bound=0).sum())
    else:
        recost_hi = 0.0
    remaining = timed.filter(~pl.col("exit_row").is_in(list(removed_rows)))
    slow = remaining.filter(~pl.col("fastpath"))
    fast = remaining.height - slow.height
    calib = cfg.options.calibration
    override = cfg.options.switch_cost_ns or (tuple(calib["switch_cost_ns"]) if calib else None)
    lo, hi, src = costs.switch_cost_range(cfg.vendor.value, override, td.meta.get("host"))
    if calib and not cfg.options.switch_cost_ns:
        src = calib.get("source", "calibrated from a pair of traces")
    added = ((slow.height - maybe.height) * lo, (slow.height + fast) * hi)
    net = (saved + recost - added[1], saved + saved_maybe + recost_hi - added[0])
    summary: dict[str, Any] = {
        "applicable": True, "design": cfg.model, "exits_total": timed.height,
        "pmu_msr_exits_removed": len(removed_rows - set(rd["exit_row"].to_list())) if rd_pass else len(removed_rows),
        "rdpmc_exits_removed": rd.height if rd_pass else 0, "exits_removed": removed.height,
        "time_removed_ns": saved, "exits_removed_if_shape_allows": maybe.height,
        "time_removed_if_shape_allows_ns": saved_maybe,
        "control_writes_recosted": 0 if changed is None else changed.height,
        "recost_saving_ns": [round(recost, 1), round(recost_hi, 1)], "msr_exit_baseline_ns": list(base),
        "msr_exit_baseline_source": base_src, "slow_path_exits_remaining": slow.height,
        "fastpath_exits_remaining": remaining.height - slow.height, "switch_cost_ns": [lo, hi],
        "switch_cost_source": src, "switch_cost_added_ns": list(added), "net_saving_ns": [round(net[0], 1),
                                                                                           round(net[1], 1)],
        "trace_design": cfg.model if cfg.model == EMULATED else f"{cfg.model} (assumed emulated)",
    }
    r = Result("what_if", summary=summary, rule=RULE)
    r.findings.append(ANALYZER.finding("mediated_saving", f"under the mediated design: "
                                       f"{plural(removed.height, 'exit')} removed "
                                       f"({fmt_ns(saved)}), {plural(slow.height, 'PMU switch', 'PMU switches')} added "
                                       f"({fmt_ns(added[0])}..{fmt_ns(added[1])}); net "
                                       f"{fmt_ns(net[0])}..{fmt_ns(net[1])}"
                                       " of exit handling", removed.height, evidence=[src]))
    return r


def _msr_baseline(pmu: pl.DataFrame | None, timed: pl.DataFrame) -> tuple[tuple[float, float], str]:
    """(low, high) ns of a plain MSR-write exit on this host, and where it comes from."""
    if pmu is not None:
        un = pmu.filter(pl.col("write") & pl.col("kind").is_in(list(CONTROL)) & (pl.col("changed") == False)  # noqa
                        & pl.col("exit_ns").is_not_null())["exit_ns"]
        if un.len() >= 5:
            return (float(un.quantile(0.25)), float(un.quantile(0.75))), \
                f"value-unchanged PMU control writes in this trace (p25..p75 of {un.len()})"
    msr_rows = set(pmu["exit_row"].drop_nulls().to_list()) if pmu is not None else set()
    other = timed.filter(P.msr_exit() & ~pl.col("fastpath") & ~pl.col("exit_row").is_in(list(msr_rows)))
    if other.height >= 5:
        h = other["handling_ns"]
        return (float(h.quantile(0.25)), float(h.quantile(0.75))), \
            f"other slow-path MSR exits in this trace (p25..p75 of {other.height})"
    lo, hi = costs.PUBLISHED_EXIT_AVG_US["MSR_WRITE"]
    return (lo * 1000, hi * 1000), "published perf kvm stat MSR_WRITE averages (model.costs)"


def render(r: Result) -> list[str]:
    s = r.summary
    if not s.get("applicable"):
        return [f"  not applicable: {s.get('why')}"]
    if not r.computable:
        return []
    return [f"  removes {s['exits_removed']} exits ({fmt_ns(s['time_removed_ns'])}: PMU MSR "
            f"{s['pmu_msr_exits_removed']},"
            f" RDPMC {s['rdpmc_exits_removed']}); re-costs {s['control_writes_recosted']} control writes "
            f"(saves {fmt_ns(s['recost_saving_ns'][0])}..{fmt_ns(s['recost_saving_ns'][1])})",
            f"  adds {s['slow_path_exits_remaining']}.."
            f"{s['slow_path_exits_remaining'] + s['fastpath_exits_remaining']} PMU switches at "
            f"{s['switch_cost_ns'][0]:.0f}.."
            f"{s['switch_cost_ns'][1]:.0f} ns ({s['switch_cost_source']})",
            f"  net saving {fmt_ns(s['net_saving_ns'][0])} .. {fmt_ns(s['net_saving_ns'][1])} of exit handling"]


ANALYZER = Analyzer("what_if", "this emulated trace under the mediated design: exits removed, switches added (range)",
                    RULE, analyze, render, requires=REQUIRES, optional=("kvm_msr", "kvm_cpuid", "host"),
                    findings=KINDS, order=90,
                    limits=(
                    "exit handling only; the switch cost is a range from published figures unless `--calibrate-with` "
                    "gives a mediated-design trace of the same workload on the same host (or --switch-cost-ns)."))
