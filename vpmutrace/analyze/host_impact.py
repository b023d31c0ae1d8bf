"""Host-side impact of the vPMU: what host profiling loses while guests own or share the PMU.

Rule (design §2.1-§2.3, §3.1, §9): under the mediated design, perf_load_guest_context()
schedules out every host exclude_guest event of the core PMU for each ownership window, so the
host PMU is unavailable to host perf for the guest's share of each CPU (the ownership analyzer's
residency); KVM's fastpath runs inside the window, so it cannot be profiled ("the fastpath run
loop is also a blind spot"); and while the guest LVTPC is loaded perf_event_nmi_handler() returns
NMI_DONE, so an NMI that reaches perf then is logged with handled=0. Under the emulated design the
host PMU stays with host perf, but each guest counter is a host perf event. Reported: perf NMIs
with handled=0 that no other handler claimed (perf returns NMI_DONE for every NMI that is not its
own, e.g. IPI backtraces), per CPU, and how many fell in guest windows or paired with NMI exits;
the host-PMU unavailable time (guest runs: a lower bound, the ownership windows also hold the
fastpath exits, mediated only); the exits that may stay in the fastpath and their handling time
(an upper bound, mediated only).
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, records, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.windows import exit_intervals, fastpath_column, guest_windows
from vpmutrace.errors import plural
from vpmutrace.model.design import MEDIATED
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
KINDS = (FindingKind("perf_nmi_unhandled", "low", "fact", "NMIs that reached perf's handler and were not claimed"),
         FindingKind("host_pmu_unavailable", "info", "fact", "time the host PMU belonged to guests"))


def analyze(td: TraceData, cfg: Config) -> Result:
    summary: dict = {"design": cfg.model}
    r = Result("host_impact", summary=summary, rule=RULE)
    if td.has("nmi_handler"):
        # perf's handler returns handled=0 for every NMI that is not its own (an IPI backtrace, ...): only
        # NMIs that no other handler claimed at the same time (1 us, same CPU) are unexplained
        claimed = td.scan("nmi_handler").filter(pl.col("handled") >= 1).select(pl.col("ts_ns").alias("_c"), "cpu") \
            .sort("_c").collect()
        n = P.perf_nmis(td).filter(pl.col("handled") == 0).sort("ts_ns")
        if n.height and claimed.height:
            n = n.join_asof(claimed, left_on="ts_ns", right_on="_c", by="cpu", strategy="nearest",
                            tolerance=1_000).filter(pl.col("_c").is_null()).drop("_c")
        summary["perf_nmis_unhandled"] = n.height
        if n.height and td.has("kvm_exit") and td.has("kvm_entry"):
            w = guest_windows(td).select("cpu", "start_ns", "end_ns").sort("start_ns")
            j = n.sort("ts_ns").join_asof(w, left_on="ts_ns", right_on="start_ns", by="cpu", strategy="backward")
            inside = j.filter(pl.col("end_ns").is_not_null() & (pl.col("ts_ns") < pl.col("end_ns"))).height
            paired = P.pair_nmi_exits(td, P.exits_where(td, P.any_nmi_exit()), cfg.nmi_order.order,
                                      cfg.options.nmi_pair_ns)
            at_exit = paired.filter(pl.col("handled") == 0).height
            summary.update({"unhandled_in_guest_windows": inside, "unhandled_at_nmi_exits": at_exit})
        summary["per_cpu"] = records(n.group_by("cpu").len().rename({"len": "unhandled"}).sort("cpu"))
        if n.height:
            r.findings.append(ANALYZER.finding("perf_nmi_unhandled", f"{plural(n.height, 'NMI')} reached "
                                               "perf_event_nmi_handler "
                                               "and no handler claimed them (handled=0)" + (
                                                   ": under the mediated design perf returns NMI_DONE while the guest "
                                                   "LVTPC is loaded" if cfg.model == MEDIATED else ""), n.height,
                                               int(n["ts_ns"].min())))
    else:
        summary["perf_nmis_unhandled"] = None
    if cfg.model == MEDIATED and td.has("kvm_exit") and td.has("kvm_entry"):
        runs = guest_windows(td)
        span = td.meta.get("time_span_ns") or [0, 0]
        cpus = max(1, int(td.meta.get("cpus") or runs["cpu"].n_unique() or 1))
        guest_ns = int((runs["end_ns"] - runs["start_ns"]).sum() or 0)
        iv = exit_intervals(td)
        fp = iv.filter(fastpath_column(iv, cfg.kernel))
        summary.update({"host_pmu_unavailable_ns": guest_ns,
                        "host_pmu_unavailable_share": round(guest_ns / max(1, (span[1] - span[0]) * cpus), 6),
                        "fastpath_exits": fp.height, "fastpath_handling_ns": int(fp["handling_ns"].sum() or 0)})
        r.findings.append(ANALYZER.finding("host_pmu_unavailable", f"the host PMU belonged to guests for at least "
                                           f"{fmt_ns(guest_ns)} ({100 * summary['host_pmu_unavailable_share']:.2f}% "
                                           f"of CPU time); up to {fp.height} fastpath exits "
                                           f"({fmt_ns(summary['fastpath_handling_ns'])}) are invisible to host perf",
                                           certainty=cfg.design.certainty))
    if not td.has("nmi_handler") and cfg.model != MEDIATED:
        r.needs = ["nmi:nmi_handler events (or the mediated design with kvm_exit/kvm_entry)"]
    return r


def render(r: Result) -> list[str]:
    s = r.summary
    out = []
    if s.get("perf_nmis_unhandled") is not None:
        out.append(f"  perf NMIs not claimed (handled=0): {s['perf_nmis_unhandled']}"
                   + (f", {s['unhandled_in_guest_windows']} in guest windows, {s['unhandled_at_nmi_exits']} at "
                      f"NMI exits"
                      if "unhandled_in_guest_windows" in s else ""))
    if "host_pmu_unavailable_ns" in s:
        out.append(f"  host PMU unavailable to host perf {fmt_ns(s['host_pmu_unavailable_ns'])} "
                   f"({100 * s['host_pmu_unavailable_share']:.2f}% of CPU time); fastpath blind spot "
                   f"{s['fastpath_exits']} exits, {fmt_ns(s['fastpath_handling_ns'])}")
    if s.get("per_cpu"):
        out += text_table(s["per_cpu"], [("cpu", "cpu", 4), ("unhandled", "unhandled", 10)])
    return out


ANALYZER = Analyzer("host_impact", "what host profiling loses: unclaimed perf NMIs, host-PMU unavailable time, "
                                   "fastpath blind spot", RULE, analyze, render,
                    optional=("nmi_handler", "kvm_exit", "kvm_entry"), findings=KINDS, order=75,
                    limits=(
                    "handled=0 shows only perf's own handler; an NMI no handler claims appears in dmesg ('Uhhuh. NMI "
                    "received for unknown reason'), not here. The unavailable time uses guest runs, a lower "
                    "bound of the ownership windows."))
