"""VM exits: counts and handling time per reason, vCPU and VM (what `perf kvm stat` reports), and the
share of exits the kernel may have handled in its fastpath.

Rule: each kvm_exit is paired with the next kvm_entry of the same vCPU thread; the handling
time is the difference (perf kvm stat's vmexit pairing; kvm_exit/kvm_entry fire in
vmx_vcpu_run()/svm_vcpu_run(), i.e. on every pass of the inner run loop). A pair is not
trusted, and the exit is counted as unpaired with the reason, when events were lost on the CPU
between the two or when the entry resumes the guest away from the exit's instruction (entry
rip outside [exit rip, exit rip + 15]), as across a gap in a trace excerpt. Per reason:
samples, samples %, time %, min, max, mean, p50, p99 and perf's "±%" (100 * stddev / sqrt(n) /
mean). Fastpath: exits of the reasons (and, for WRMSR, the MSRs) the running kernel handles in
vmx_exit_handlers_fastpath()/svm_exit_handlers_fastpath() without leaving the run loop
(model.kernel.fastpath_eligible; no tracepoint marks the fastpath, so this is the share that
*may* have re-entered fast). Design §2.1, §5.3.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, missing, records, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.windows import exit_intervals, fastpath_flags
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("kvm_exit", "kvm_entry")
KINDS = (FindingKind("unpaired_exits", "low", "fact",
                     "exits whose pairing with an entry cannot be trusted (lost events, rip jump)"),)


def stats(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """perf kvm stat's per-group statistics of ``handling_ns``."""
    h = pl.col("handling_ns")
    total_n = df.height
    total_t = df["handling_ns"].sum() or 0
    out = df.group_by(by).agg(
        pl.len().alias("samples"), h.sum().alias("time_ns"), h.min().alias("min_ns"), h.max().alias("max_ns"),
        h.mean().alias("mean_ns"), h.median().alias("p50_ns"), h.quantile(0.99, "nearest").alias("p99_ns"),
        h.std().alias("stddev_ns"))
    return out.with_columns(
        (100.0 * pl.col("samples") / max(total_n, 1)).alias("samples_pct"),
        (100.0 * pl.col("time_ns") / max(total_t, 1)).alias("time_pct"),
        pl.when(pl.col("samples") > 1).then(
            100.0 * pl.col("stddev_ns") / pl.col("samples").sqrt() / pl.col("mean_ns")).otherwise(0.0)
        .alias("rel_stderr_pct")).sort(["samples", *by], descending=[True] + [False] * len(by))


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        partial = {}
        if td.has("kvm_exit"):  # counts need no pairing
            ex = td.df("kvm_exit")
            partial["exits_total"] = ex.height
            partial["by_reason_counts"] = {r: n for r, n in ex.group_by("reason").len().sort("reason").rows()}
        return Result("exits", needs=needs, summary=partial, rule=RULE)
    iv = exit_intervals(td)
    iv = iv.with_columns(fastpath_flags(td, iv, cfg.kernel).alias("fastpath_eligible"))
    paired = iv.filter(pl.col("handling_ns").is_not_null())
    by_reason = stats(paired, ["reason", "exit_reason", "isa"])
    fp = iv.group_by("reason").agg(pl.col("fastpath_eligible").sum().alias("fastpath_eligible"))
    by_reason = by_reason.join(fp, on="reason", how="left")
    by_vcpu = stats(paired, ["source", "pid", "vcpu_id"])
    vm_of = _vm_map(td)
    tgid = td.scan("kvm_exit", ["tgid"]).with_row_index("exit_row").collect()
    if vm_of:
        vm = paired.with_columns(pl.col("pid").replace_strict(vm_of, default=None, return_dtype=pl.Int64)
                                 .alias("vm_pid"))
        grouping = "host snapshot vCPU threads"
    elif tgid["tgid"].null_count() < tgid.height:
        vm = paired.join(tgid, on="exit_row", how="left").with_columns(pl.col("tgid").cast(pl.Int64).alias("vm_pid"))
        grouping = "VMM process (tgid) of each vCPU thread"
    else:
        vm, grouping = None, "unknown (no host snapshot, no process ids in the trace): per vCPU thread only"
    by_vm = stats(vm, ["vm_pid"]) if vm is not None else None
    unpaired = dict(iv.filter(pl.col("unpaired").is_not_null()).group_by("unpaired").len().rows())
    n_fp = int(iv["fastpath_eligible"].sum())
    summary = {
        "exits_total": iv.height, "exits_paired": paired.height, "exits_unpaired": iv.height - paired.height,
        "unpaired_by_cause": {k: unpaired.get(k, 0) for k in ("no_entry", "lost", "rip_jump")},
        "handling_ns_total": int(paired["handling_ns"].sum() or 0),
        "fastpath_eligible": n_fp, "fastpath_share": round(n_fp / iv.height, 6) if iv.height else None,
        "by_reason": records(by_reason), "by_vcpu": records(by_vcpu),
        "by_vm": records(by_vm) if by_vm is not None else None, "vm_grouping": grouping,
    }
    r = Result("exits", summary=summary, rows={"exit_intervals": iv, "exits_by_reason": by_reason}, rule=RULE)
    broken = unpaired.get("lost", 0) + unpaired.get("rip_jump", 0)
    if broken:
        ex = iv.filter(pl.col("unpaired").is_in(["lost", "rip_jump"])).sort("ts_ns")
        ev = [f"{u} at {t} ns: {rs} exit of thread {'-' if p is None else p}" for t, rs, p, u in
              ex.select("ts_ns", "reason", "pid", "unpaired").head(3).iter_rows()]
        r.findings.append(ANALYZER.finding("unpaired_exits", f"{broken} exits not timed: their next entry lies after "
                                           f"lost events ({unpaired.get('lost', 0)}) or resumes elsewhere "
                                           f"({unpaired.get('rip_jump', 0)})", broken, int(ex["ts_ns"][0]), ev))
    return r


def _vm_map(td: TraceData) -> dict[int, int]:
    host = td.meta.get("host") or {}
    return {v["tid"]: vm["pid"] for vm in host.get("running_vms", []) for v in vm.get("vcpus", [])}


def render(r: Result) -> list[str]:
    s = r.summary
    if not r.computable:
        return [f"  {s['exits_total']} exits (counts only): {s['by_reason_counts']}"] if "exits_total" in s else []
    u = s["unpaired_by_cause"]
    out = [f"  {s['exits_total']} exits, {s['exits_paired']} timed, {s['exits_unpaired']} unpaired (no entry "
           f"{u['no_entry']}, lost events {u['lost']}, rip jump {u['rip_jump']}); handling time "
           f"{fmt_ns(s['handling_ns_total'])}; fastpath-eligible {s['fastpath_eligible']}"]
    return out + text_table(s["by_reason"], [("reason", "reason", 22), ("samples", "samples", 8),
                                             ("samples_pct", "samples%", 9), ("time_pct", "time%", 7),
                                             ("min_ns", "min", 11), ("max_ns", "max", 11), ("mean_ns", "avg", 11),
                                             ("rel_stderr_pct", "+-%", 7), ("p99_ns", "p99", 11),
                                             ("fastpath_eligible", "fastpath?", 9)])


ANALYZER = Analyzer("exits", "VM exits per reason / vCPU / VM with handling-time statistics (perf kvm stat view)",
                    RULE, analyze, render, requires=REQUIRES, optional=("kvm_msr", "lost", "host"), findings=KINDS,
                    order=30, needs_ns=False,
                    limits=(
                    "kvm_exit fires for fastpath exits on VMX since 5.8 and on SVM since 6.5; kvm_entry fires for "
                    "fastpath re-entries only since ~5.11, so on VMX 5.8-5.10 such an exit has no entry and stays "
                    "unpaired. kvm_pvm hosts emit neither event. Fastpath eligibility follows the kernel release (5.8, "
                    "6.12, 6.18 rules); unknown releases get the newest rules."))
