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

from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, fmt_ts, missing, records, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.windows import exit_intervals, fastpath_flags
from vpmutrace.errors import InputError, plural
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
    vm_pid, grouping = _vm_pids(td, iv)
    if vm_pid is not None:
        iv = iv.with_columns(vm_pid)
    iv, selection = _select(iv, cfg.options.vcpu, cfg.options.vm, grouping)
    paired = iv.filter(pl.col("handling_ns").is_not_null())
    by_reason = stats(paired, ["reason", "exit_reason", "isa"])
    fp = iv.group_by("reason").agg(pl.col("fastpath_eligible").sum().alias("fastpath_eligible"))
    by_reason = by_reason.join(fp, on="reason", how="left")
    by_vcpu = stats(paired, ["source", *(["vm_pid"] if vm_pid is not None else []), "pid", "vcpu_id"])
    by_vm = stats(paired, ["vm_pid"]) if vm_pid is not None else None
    unpaired = dict(iv.filter(pl.col("unpaired").is_not_null()).group_by("unpaired").len().rows())
    n_fp = int(iv["fastpath_eligible"].sum())
    summary = {
        "exits_total": iv.height, "exits_paired": paired.height, "exits_unpaired": iv.height - paired.height,
        "unpaired_by_cause": {k: unpaired.get(k, 0) for k in ("no_entry", "lost", "rip_jump")},
        "handling_ns_total": int(paired["handling_ns"].sum() or 0),
        "fastpath_eligible": n_fp, "fastpath_share": round(n_fp / iv.height, 6) if iv.height else None,
        "by_reason": records(by_reason), "by_vcpu": records(by_vcpu),
        "by_vm": records(by_vm) if by_vm is not None else None, "vm_grouping": grouping,
        "by": cfg.options.exits_by, "selection": selection,
    }
    r = Result("exits", summary=summary, rows={"exit_intervals": iv, "exits_by_reason": by_reason}, rule=RULE)
    broken = unpaired.get("lost", 0) + unpaired.get("rip_jump", 0)
    if broken:
        ex = iv.filter(pl.col("unpaired").is_in(["lost", "rip_jump"])).sort("ts_ns")
        ev = [f"{u} at {fmt_ts(t)}: {rs} exit of thread {'-' if p is None else p}" for t, rs, p, u in
              ex.select("ts_ns", "reason", "pid", "unpaired").head(3).iter_rows()]
        text = (f"{plural(broken, 'exit')} not timed: their next entry lies after lost events "
                f"({unpaired.get('lost', 0)}) or resumes elsewhere ({unpaired.get('rip_jump', 0)})")
        r.findings.append(ANALYZER.finding("unpaired_exits", text, broken, int(ex["ts_ns"][0]), ev))
    return r


def _vm_pids(td: TraceData, iv: pl.DataFrame) -> tuple[pl.Series | None, str]:
    """The VM of each exit: the VMM process of its vCPU thread, from the host snapshot's running VMs,
    else the thread's tgid when the trace records it (perf.data samples do), else unknown."""
    vm_of = _vm_map(td)
    if vm_of:
        return (iv["pid"].replace_strict(vm_of, default=None, return_dtype=pl.Int64).alias("vm_pid"),
                "host snapshot vCPU threads")
    tgid = td.scan("kvm_exit", ["tgid"]).collect()["tgid"]
    if tgid.null_count() < tgid.len():
        return tgid.cast(pl.Int64).gather(iv["exit_row"]).alias("vm_pid"), "VMM process (tgid) of each vCPU thread"
    return None, "unknown (no host snapshot, no process ids in the trace): per vCPU thread only"


def _select(iv: pl.DataFrame, vcpu: int | None, vm: int | None, grouping: str) -> tuple[pl.DataFrame, dict | None]:
    """Only the exits of one vCPU and/or one VM (``exits --vcpu N --vm PID``)."""
    if vcpu is None and vm is None:
        return iv, None
    if vm is not None:
        if "vm_pid" not in iv.columns:
            raise InputError("--vm", f"this trace does not say which VM a vCPU thread belongs to ({grouping})")
        known = sorted(x for x in iv["vm_pid"].unique().to_list() if x is not None)
        if vm not in known:
            raise InputError("--vm", f"no exits of VM {vm}; VMs in the trace: {', '.join(map(str, known)) or 'none'}")
        iv = iv.filter(pl.col("vm_pid") == vm)
    if vcpu is not None:
        ids = sorted(x for x in iv["vcpu_id"].unique().to_list() if x is not None)
        if not ids:
            raise InputError("--vcpu", "this trace's kvm_exit events carry no vcpu_id")
        if vcpu not in ids:
            raise InputError("--vcpu", f"no exits of vCPU {vcpu}; vCPUs: {', '.join(map(str, ids))}")
        iv = iv.filter(pl.col("vcpu_id") == vcpu)
    return iv, {"vcpu": vcpu, "vm": vm}


def _vm_map(td: TraceData) -> dict[int, int]:
    host = td.meta.get("host") or {}
    return {v["tid"]: vm["pid"] for vm in host.get("running_vms", []) for v in vm.get("vcpus", [])}


REASON_COLS = [("reason", "reason", 22)]
VCPU_COLS = [("vm_pid", "VM (pid)", 9), ("pid", "thread", 8), ("vcpu_id", "vcpu", 5)]
VM_COLS = [("vm_pid", "VM (pid)", 9)]
STAT_COLS = [("samples", "samples", 8), ("samples_pct", "samples%", 9), ("time_pct", "time%", 7),
             ("min_ns", "min", 11), ("max_ns", "max", 11), ("mean_ns", "avg", 11), ("rel_stderr_pct", "+-%", 7),
             ("p99_ns", "p99", 11)]


def render(r: Result) -> list[str]:
    s = r.summary
    if not r.computable:
        return [f"  {s['exits_total']} exits (counts only): {s['by_reason_counts']}"] if "exits_total" in s else []
    u = s["unpaired_by_cause"]
    sel = s.get("selection") or {}
    only = ", ".join(f"{k} {v}" for k, v in (("VM", sel.get("vm")), ("vCPU", sel.get("vcpu"))) if v is not None)
    out = [f"  {s['exits_total']} exits{' of ' + only if only else ''}, {s['exits_paired']} timed, "
           f"{s['exits_unpaired']} unpaired (no entry {u['no_entry']}, lost events {u['lost']}, rip jump "
           f"{u['rip_jump']}); handling time {fmt_ns(s['handling_ns_total'])}; fastpath-eligible "
           f"{s['fastpath_eligible']}"]
    by = s.get("by", "reason")
    if by == "vcpu":
        cols = [c for c in VCPU_COLS if c[0] != "vm_pid" or s["by_vm"] is not None]
        return out + [f"  by vCPU (VM: {s['vm_grouping']})"] + text_table(s["by_vcpu"], cols + STAT_COLS)
    if by == "vm":
        if s["by_vm"] is None:
            return out + [f"  by VM: not computable: {s['vm_grouping']}"]
        return out + [f"  by VM ({s['vm_grouping']})"] + text_table(s["by_vm"], VM_COLS + STAT_COLS)
    return out + text_table(s["by_reason"], REASON_COLS + STAT_COLS + [("fastpath_eligible", "fastpath?", 9)])


ANALYZER = Analyzer("exits", "VM exits per reason / vCPU / VM with handling-time statistics (perf kvm stat view)",
                    RULE, analyze, render, requires=REQUIRES, optional=("kvm_msr", "lost", "host"), findings=KINDS,
                    order=30, needs_ns=False,
                    limits=(
                    "kvm_exit fires for fastpath exits on VMX since 5.8 and on SVM since 6.5; kvm_entry fires for "
                    "fastpath re-entries only since ~5.11, so on VMX 5.8-5.10 such an exit has no entry and stays "
                    "unpaired. kvm_pvm hosts emit neither event. Fastpath eligibility follows the kernel release (5.8, "
                    "6.12, 6.18 rules); unknown releases get the newest rules."))
