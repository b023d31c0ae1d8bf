"""PMU ownership windows per CPU: when the guest owns the PMU, and how often ownership switches.

Rule (reference §2.1, §3.5): under the mediated design kvm_mediated_pmu_load() runs in
vcpu_enter_guest() before the inner run loop and kvm_mediated_pmu_put() after it, so one
ownership window spans every guest run between two exits that leave the loop; fastpath
re-entries (model.kernel.fastpath_eligible) stay inside it. Ownership windows are therefore
guest runs merged across fastpath-eligible exits, and the number of load/put pairs lies
between the number of merged windows (every eligible exit re-entered fast) and the number of
guest runs (none did). Where msr:* events were recorded, the real switches are seen: the put
saves each counter with RDPMC and the load rewrites counters and event selects, so an exit
whose exit->entry interval has host RDPMC or PMU-MSR writes on its CPU switched, and one
without did not. Switches exist only under the mediated design and for a guest with a PMU
(kvm_vcpu_has_mediated_pmu()); under the emulated design the host perf core owns the PMU and
guest counters are host perf events. Per CPU: windows, guest time, residency (guest time /
traced span), switches, and their cost range (model.costs, per vendor).
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, missing, records, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.windows import exit_intervals, fastpath_flags, guest_windows, ownership_windows
from vpmutrace.model import costs
from vpmutrace.model import msrs as M
from vpmutrace.model.design import EMULATED, MEDIATED, NO_VPMU, has_mediated_pmu
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("kvm_exit", "kvm_entry")
KINDS = (FindingKind("switch_count_range", "info", "fact",
                     "PMU context switches under the mediated design lie in a range (fastpath unknown)"),
         FindingKind("switches_observed", "info", "fact", "PMU load/put seen in host MSR events"))


def observed_switches(td: TraceData, iv: pl.DataFrame) -> pl.Series | None:
    """Per exit: did its exit->entry interval have host PMU MSR traffic (RDPMC or a write to a PMU
    MSR) on its CPU, i.e. a kvm_mediated_pmu_put()/load()? None without msr:* events."""
    if not td.has("host_msr"):
        return None
    pmu_msrs = [a for a, m in M.catalog().items() if m.kind != M.DEBUGCTL]
    h = td.scan("host_msr").with_columns(pl.col("op").cast(pl.String)).filter(
        (pl.col("op") == "rdpmc") | ((pl.col("op") == "write") & pl.col("msr").is_in(pmu_msrs))).collect()
    e = iv.select("exit_row", "ts_ns", "cpu", "entry_ts").sort("ts_ns")
    j = e.join_asof(h.select(pl.col("ts_ns").alias("h_ts"), "cpu").sort("h_ts"), left_on="ts_ns", right_on="h_ts",
                    by="cpu", strategy="forward")
    hit = pl.col("h_ts").is_not_null() & pl.col("entry_ts").is_not_null() & (pl.col("h_ts") <= pl.col("entry_ts"))
    return j.sort("exit_row").select(hit.alias("switched"))["switched"]


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return Result("ownership", needs=needs, rule=RULE)
    iv = exit_intervals(td)
    fp = fastpath_flags(td, iv, cfg.kernel)
    runs = guest_windows(td).with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("guest_ns"))
    own = ownership_windows(td, fp).with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("window_ns"))
    span = td.meta.get("time_span_ns") or [0, 0]
    span_ns = max(1, span[1] - span[0])
    design = cfg.model
    mediated_pmu = has_mediated_pmu(cfg.setup)
    switching = design == MEDIATED and mediated_pmu is not False
    lo_ns, hi_ns, cost_src = costs.switch_cost_range(cfg.vendor.value, cfg.options.switch_cost_ns)
    per_cpu = runs.group_by("cpu").agg(pl.len().alias("guest_runs"), pl.col("guest_ns").sum(),
                                       pl.col("guest_ns").max().alias("longest_run_ns"),
                                       pl.col("pid").n_unique().alias("vcpu_threads"))
    per_cpu = per_cpu.join(own.group_by("cpu").agg(pl.len().alias("ownership_windows")), on="cpu", how="left") \
        .with_columns((pl.col("guest_ns") / span_ns).alias("residency")).sort("cpu")
    obs = observed_switches(td, iv) if switching else None
    if switching:
        per_cpu = per_cpu.with_columns(pl.col("ownership_windows").alias("switches_min"),
                                       pl.col("guest_runs").alias("switches_max"))
    summary = {
        "design": design, "span_ns": span_ns, "guest_runs": runs.height,
        "guest_ns_total": int(runs["guest_ns"].sum() or 0),
        "ownership_windows": own.height if switching else None,
        "switches": ({"min": own.height, "max": runs.height, "observed": int(obs.sum()) if obs is not None else None,
                      "cost_ns_per_switch": [lo_ns, hi_ns], "cost_source": cost_src,
                      "cost_ns_total": [own.height * lo_ns, runs.height * hi_ns]} if switching else None),
        "why_no_switches": (None if switching else
                            "emulated design: the host perf core owns the PMU" if design == EMULATED else
                            "no vPMU (the guest has no PMU)" if design == NO_VPMU or mediated_pmu is False else
                            "design unknown: give --model or a host snapshot"),
        "per_cpu": records(per_cpu),
    }
    rows = {"guest_runs": runs}
    if switching:
        rows["ownership_windows"] = own
    r = Result("ownership", summary=summary, rows=rows, rule=RULE)
    if switching:
        if obs is not None:
            r.findings.append(ANALYZER.finding("switches_observed", f"{int(obs.sum())} PMU load/put pairs seen in host "
                                               f"MSR events over {iv.height} exits", int(obs.sum()),
                                               certainty=cfg.design.certainty))
        else:
            r.findings.append(ANALYZER.finding("switch_count_range", f"{own.height}..{runs.height} PMU context "
                                                                     f"switches "
                                               f"({fmt_ns(own.height * lo_ns)}..{fmt_ns(runs.height * hi_ns)}); record "
                                               "msr:rdpmc/write_msr to see the real count", own.height,
                                               certainty=cfg.design.certainty))
    return r


def render(r: Result) -> list[str]:
    if not r.computable:
        return []
    s = r.summary
    out = [f"  {s['guest_runs']} guest runs, guest time {fmt_ns(s['guest_ns_total'])} over {fmt_ns(s['span_ns'])}"]
    sw = s["switches"]
    if sw:
        obs = f", observed {sw['observed']}" if sw["observed"] is not None else ""
        out.append(f"  {s['ownership_windows']} ownership windows; PMU switches {sw['min']}..{sw['max']}{obs}, "
                   f"{fmt_ns(sw['cost_ns_total'][0])}..{fmt_ns(sw['cost_ns_total'][1])} "
                   f"({sw['cost_ns_per_switch'][0]:.0f}..{sw['cost_ns_per_switch'][1]:.0f} ns each)")
    else:
        out.append(f"  no PMU ownership switches: {s['why_no_switches']}")
    return out + text_table(s["per_cpu"], [("cpu", "cpu", 4), ("guest_runs", "runs", 8),
                                           ("ownership_windows", "windows", 8), ("guest_ns", "guest", 12),
                                           ("residency", "residency", 10), ("longest_run_ns", "longest", 12)])


ANALYZER = Analyzer("ownership", "guest PMU ownership windows per CPU, residency, switch count and cost range", RULE,
                    analyze, render, requires=REQUIRES, optional=("kvm_msr", "host_msr", "lost"), findings=KINDS,
                    order=50,
                    limits=(
                    "no tracepoint marks kvm_mediated_pmu_load()/put() or a fastpath re-entry: without msr:* "
                    "events (very "
                    "high rate: `--events vpmu,host-msr`) the number of switches is a range."))
