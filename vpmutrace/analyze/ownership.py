"""PMU ownership windows per CPU: when the guest owns the PMU, and how often ownership switches.

Rule (design §2.1, §3.5): under the mediated design kvm_mediated_pmu_load() runs in
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

With kvm-pmu probes (`vpmutrace record --events kvm-pmu`: collectors/probes.py) the windows are not
inferred: each load..put on a vCPU thread is one window (windows.probe_windows), the switch count is
the number of puts, fastpath exits are the exits inside a window, and the cost is measured: the
load and put durations (their return probes), the host's time between a put and the next load, and
the exit latency of exits that switched (a put between exit and entry) against those that stayed
in the window. kvm_mediated_pmu_load()/put() run for every vCPU on 7.0+ (returning at once without a
mediated PMU), so they count as switches only under the mediated design; perf_load_guest_context()/
perf_put_guest_context() run only for mediated vCPUs. ``source`` says which: "probes" or "inferred".
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, missing, records, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.windows import (
    KEY,
    exit_intervals,
    fastpath_column,
    guest_windows,
    ownership_windows,
    probe_windows,
)
from vpmutrace.errors import plural
from vpmutrace.model import costs
from vpmutrace.model import kernel as K
from vpmutrace.model import msrs as M
from vpmutrace.model.design import EMULATED, MEDIATED, NO_VPMU, has_mediated_pmu
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("kvm_exit", "kvm_entry")
KINDS = (FindingKind("switch_count_range", "info", "fact",
                     "PMU context switches under the mediated design lie in a range (fastpath unknown)"),
         FindingKind("switches_probed", "info", "fact", "PMU load/put counted and timed by kvm-pmu probes"),
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
    fp = fastpath_column(iv, cfg.kernel)
    runs = guest_windows(td).with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("guest_ns"))
    own = ownership_windows(td, fp).with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("window_ns"))
    span = td.meta.get("time_span_ns") or [0, 0]
    span_ns = max(1, span[1] - span[0])
    design = cfg.model
    probed = probe_windows(td)
    if probed is not None and (design == MEDIATED or probed[1].startswith(K.FN_PERF_LOAD_GUEST)):
        return _from_probes(td, cfg, iv, runs, probed[0], probed[1], span_ns)
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
    summary["source"] = "inferred"
    if probed is not None:
        summary["probes_unused"] = (f"{probed[1]} probes recorded but the design is {design}: these functions "
                                    "run for every vCPU on 7.0+ and return at once without a mediated PMU")
    r = Result("ownership", summary=summary, rows=rows, rule=RULE)
    if switching:
        if obs is not None:
            pairs = plural(int(obs.sum()), "PMU load/put pair")
            r.findings.append(ANALYZER.finding("switches_observed", f"{pairs} seen in "
                                               f"host MSR events over {plural(iv.height, 'exit')}", int(obs.sum()),
                                               certainty=cfg.design.certainty))
        else:
            r.findings.append(ANALYZER.finding("switch_count_range", f"{own.height}..{runs.height} PMU context "
                                                                     f"switches "
                                               f"({fmt_ns(own.height * lo_ns)}..{fmt_ns(runs.height * hi_ns)}); record "
                                               "msr:rdpmc/write_msr to see the real count", own.height,
                                               certainty=cfg.design.certainty))
    return r


def _from_probes(td: TraceData, cfg: Config, iv: pl.DataFrame, runs: pl.DataFrame, w: pl.DataFrame, funcs: str,
                 span_ns: int) -> Result:
    """Ownership windows, switches and their cost from load/put probes (the module docstring)."""
    closed = w.filter(pl.col("end_ns").is_not_null())
    w = w.with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("window_ns"))
    # an exit switched when its thread put the PMU between the exit and its entry
    puts = closed.select(pl.col("end_ns").alias("p_ts"), "source", "pid").sort("p_ts")
    e = iv.select("exit_row", "ts_ns", "source", "pid", "entry_ts", "handling_ns").sort("ts_ns") \
        .join_asof(puts, left_on="ts_ns", right_on="p_ts", by=KEY, strategy="forward")
    e = e.with_columns((pl.col("p_ts").is_not_null() & pl.col("entry_ts").is_not_null()
                        & (pl.col("p_ts") <= pl.col("entry_ts"))).alias("switched"))
    lat = {k: {"exits": int(g.height), "handling_p50_ns": g["handling_ns"].median(),
               "handling_mean_ns": g["handling_ns"].mean()}
           for k, g in (("switched", e.filter(pl.col("switched"))), ("stayed", e.filter(~pl.col("switched"))))}
    sw = closed.with_columns((pl.col("load_ns") + pl.col("put_ns")).alias("switch_ns"))
    per_cpu = runs.group_by("cpu").agg(pl.len().alias("guest_runs"), pl.col("guest_ns").sum(),
                                       pl.col("longest_run_ns").max() if "longest_run_ns" in runs.columns
                                       else pl.col("guest_ns").max().alias("longest_run_ns"))
    per_cpu = per_cpu.join(w.group_by("cpu").agg(pl.len().alias("ownership_windows"),
                                                 pl.col("end_ns").is_not_null().sum().alias("switches"),
                                                 pl.col("window_ns").sum().alias("owned_ns")), on="cpu", how="left") \
        .with_columns((pl.col("owned_ns") / span_ns).alias("residency")).sort("cpu")
    measured = sw["switch_ns"].drop_nulls()
    summary = {
        "design": cfg.model, "source": "probes", "probes": funcs, "span_ns": span_ns, "guest_runs": runs.height,
        "guest_ns_total": int(runs["guest_ns"].sum() or 0), "ownership_windows": w.height,
        "windows_open_at_end": w.height - closed.height, "windows_across_loss": int(w["lost"].sum()),
        "switches": {"count": closed.height, "fastpath_exits": int(w["fastpath_exits"].sum()),
                     "cost_ns_per_switch_p50": measured.median(), "cost_ns_total": int(measured.sum() or 0)
                     if measured.len() else None, "measured": int(measured.len()),
                     "load_p50_ns": sw["load_ns"].median(), "put_p50_ns": sw["put_ns"].median(),
                     "host_owned_p50_ns": closed["gap_ns"].median(),
                     "exit_latency": lat},
        "per_cpu": records(per_cpu),
    }
    r = Result("ownership", summary=summary, rows={"guest_runs": runs, "ownership_windows": w}, rule=RULE)
    cost = (f", {fmt_ns(summary['switches']['cost_ns_per_switch_p50'])} each (median load+put)"
            if measured.len() else "")
    r.findings.append(ANALYZER.finding(
        "switches_probed", f"{closed.height} PMU put/load switches ({funcs} probes) over {runs.height} guest runs; "
        f"{summary['switches']['fastpath_exits']} fastpath exits stayed inside a window{cost}", closed.height))
    return r


def render(r: Result) -> list[str]:
    if not r.computable:
        return []
    s = r.summary
    if s.get("source") == "probes":
        sw = s["switches"]
        lat = sw["exit_latency"]
        return [f"  {s['guest_runs']} guest runs; {s['ownership_windows']} ownership windows from {s['probes']} "
                f"probes ({s['windows_open_at_end']} open at the end)",
                f"  {sw['count']} switches; {sw['fastpath_exits']} fastpath exits inside windows; load p50 "
                f"{fmt_ns(sw['load_p50_ns'])}, put p50 {fmt_ns(sw['put_p50_ns'])}, host-owned put->load p50 "
                f"{fmt_ns(sw['host_owned_p50_ns'])}",
                f"  exit latency p50: switched {fmt_ns(lat['switched']['handling_p50_ns'])} "
                f"({lat['switched']['exits']}), stayed {fmt_ns(lat['stayed']['handling_p50_ns'])} "
                f"({lat['stayed']['exits']})"]
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
                    analyze, render, requires=REQUIRES, optional=("kvm_msr", "host_msr", "lost", "kvm-pmu"),
                    findings=KINDS,
                    order=50,
                    limits=(
                    "no tracepoint marks kvm_mediated_pmu_load()/put() or a fastpath re-entry: without kvm-pmu "
                    "probes (`--events vpmu,kvm-pmu`, hosts with kprobe or fprobe events) or msr:* events (very "
                    "high rate: `--events vpmu,host-msr`) the number of switches is a range."))
