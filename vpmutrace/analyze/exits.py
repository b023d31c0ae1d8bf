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

import numpy as np
import polars as pl

from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, fmt_ts, missing, records, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.runloop import exit_interval_chunks
from vpmutrace.analyze.windows import fastpath_column
from vpmutrace.errors import InputError, plural
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("kvm_exit", "kvm_entry")
KINDS = (FindingKind("unpaired_exits", "low", "fact",
                     "exits whose pairing with an entry cannot be trusted (lost events, rip jump)"),)


def stats(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """perf kvm stat's per-group statistics of ``handling_ns``."""
    return stats_of_counts(df.group_by([*by, "handling_ns"]).agg(pl.len().cast(pl.Int64).alias("n")), by)


def stats_of_counts(counts: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """``stats`` from how many exits of each group took each handling time (``n`` per ``by`` +
    ``handling_ns``): exact, and as small as the distinct times, so a trace is counted range by
    range. Median as polars' (the middle value, or the mean of the two middle ones), p99 the
    nearest rank (sorted index floor((n - 1) * 0.99 + 0.5)), stddev with n - 1."""
    c = counts.filter(pl.col("n") > 0).sort([*by, "handling_ns"])
    g = c.group_by(by, maintain_order=True).agg(
        pl.col("n").sum().alias("samples"), (pl.col("handling_ns") * pl.col("n")).sum().alias("time_ns"),
        pl.col("handling_ns").min().alias("min_ns"), pl.col("handling_ns").max().alias("max_ns"),
        pl.col("handling_ns").alias("_v"), pl.col("n").alias("_n"))
    p50, p99, sd = [], [], []
    for v, n in zip(g["_v"].to_list(), g["_n"].to_list(), strict=True):
        v, cum = np.array(v, dtype=np.float64), np.cumsum(np.array(n, dtype=np.int64))
        total = int(cum[-1])

        def kth(k: int, v: np.ndarray = v, cum: np.ndarray = cum) -> float:
            return float(v[int(np.searchsorted(cum, k, "right"))])
        p50.append(kth(total // 2) if total % 2 else (kth(total // 2 - 1) + kth(total // 2)) / 2)
        p99.append(kth(int(np.floor((total - 1) * 0.99 + 0.5))))
        mean = float(np.dot(v, n)) / total
        sd.append(float(np.sqrt(np.dot(n, (v - mean) ** 2) / (total - 1))) if total > 1 else None)
    total_n = int(g["samples"].sum() or 0)
    total_t = int(g["time_ns"].sum() or 0)
    out = g.drop("_v", "_n").with_columns(
        pl.col("samples").cast(pl.UInt32), (pl.col("time_ns") / pl.col("samples")).alias("mean_ns"),
        pl.Series("p50_ns", p50, dtype=pl.Float64), pl.Series("p99_ns", p99, dtype=pl.Float64),
        pl.Series("stddev_ns", sd, dtype=pl.Float64))
    out = out.select(*by, "samples", "time_ns", "min_ns", "max_ns", "mean_ns", "p50_ns", "p99_ns", "stddev_ns")
    return out.with_columns(
        (100.0 * pl.col("samples") / max(total_n, 1)).alias("samples_pct"),
        (100.0 * pl.col("time_ns") / max(total_t, 1)).alias("time_pct"),
        pl.when(pl.col("samples") > 1).then(
            100.0 * pl.col("stddev_ns") / pl.col("samples").sqrt() / pl.col("mean_ns")).otherwise(0.0)
        .alias("rel_stderr_pct")).sort(["samples", *by], descending=[True] + [False] * len(by))


class _Counts:
    """Exits per group and handling time, added range by range and merged as they grow."""

    def __init__(self, by: list[str]) -> None:
        self.by, self.parts = by, []

    def add(self, paired: pl.DataFrame) -> None:
        part = paired.group_by([*self.by, "handling_ns"]).agg(pl.len().cast(pl.Int64).alias("n"))
        self.parts.append(part)
        if len(self.parts) > 8:
            self.parts = [self.frame()]

    def frame(self) -> pl.DataFrame:
        if not self.parts:
            return pl.DataFrame()
        return pl.concat(self.parts, how="vertical_relaxed").group_by([*self.by, "handling_ns"]).agg(pl.col("n").sum())


REASON_KEY = ["reason", "exit_reason", "isa"]


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        partial = {}
        if td.has("kvm_exit"):  # counts need no pairing
            n = td.scan("kvm_exit", ["reason"]).group_by("reason").len().collect()
            partial["exits_total"] = int(n["len"].sum())
            partial["by_reason_counts"] = {r: k for r, k in n.sort("reason").rows()}
        return Result("exits", needs=needs, summary=partial, rule=RULE)
    vm_pid, grouping = _vm_pids(td)
    o = cfg.options
    if o.vm is not None and vm_pid is None:
        raise InputError("--vm", f"this trace does not say which VM a vCPU thread belongs to ({grouping})")
    vcpu_key = ["source", *(["vm_pid"] if vm_pid is not None else []), "pid", "vcpu_id"]
    tallies = {"reason": _Counts(REASON_KEY), "vcpu": _Counts(vcpu_key),
               "vm": _Counts(["vm_pid"]) if vm_pid is not None else None}
    fp, causes, vms, vcpus, kept, broken = [], [], [], [], [], []
    total = paired_n = handling = n_fp = 0
    for iv in exit_interval_chunks(td):
        iv = iv.with_columns(fastpath_column(iv, cfg.kernel).alias("fastpath_eligible"))
        if vm_pid is not None:
            iv = iv.with_columns(vm_pid)
        iv = iv.drop("tgid")
        vms.append(iv.select("vm_pid").unique() if vm_pid is not None else pl.DataFrame())
        if o.vm is not None:
            iv = iv.filter(pl.col("vm_pid") == o.vm)
        vcpus.append(iv.select("vcpu_id").unique())
        if o.vcpu is not None:
            iv = iv.filter(pl.col("vcpu_id") == o.vcpu)
        paired = iv.filter(pl.col("handling_ns").is_not_null())
        for t in tallies.values():
            if t is not None:
                t.add(paired)
        fp.append(iv.group_by("reason").agg(pl.col("fastpath_eligible").sum()))
        causes.append(iv.filter(pl.col("unpaired").is_not_null()).group_by("unpaired").len())
        bad = iv.filter(pl.col("unpaired").is_in(["lost", "rip_jump"]))
        broken.append(bad.select("ts_ns", "reason", "pid", "unpaired").sort("ts_ns").head(3))
        total, paired_n = total + iv.height, paired_n + paired.height
        handling += int(paired["handling_ns"].sum() or 0)
        n_fp += int(iv["fastpath_eligible"].sum())
        if o.row_tables:
            kept.append(iv)
    selection = _check_selection(o.vcpu, o.vm, vms, vcpus)
    by_reason = stats_of_counts(tallies["reason"].frame(), REASON_KEY) if paired_n else stats(
        pl.DataFrame(schema={"reason": pl.String, "exit_reason": pl.UInt32, "isa": pl.UInt8,
                             "handling_ns": pl.Int64}), REASON_KEY)
    fp_by = pl.concat(fp).group_by("reason").agg(pl.col("fastpath_eligible").sum())
    by_reason = by_reason.join(fp_by, on="reason", how="left")
    by_vcpu = stats_of_counts(tallies["vcpu"].frame(), vcpu_key) if paired_n else None
    by_vm = stats_of_counts(tallies["vm"].frame(), ["vm_pid"]) if tallies["vm"] is not None and paired_n else None
    unpaired = dict(pl.concat(causes).group_by("unpaired").agg(pl.col("len").sum()).rows()) if causes else {}
    summary = {
        "exits_total": total, "exits_paired": paired_n, "exits_unpaired": total - paired_n,
        "unpaired_by_cause": {k: unpaired.get(k, 0) for k in ("no_entry", "lost", "rip_jump")},
        "handling_ns_total": handling,
        "fastpath_eligible": n_fp, "fastpath_share": round(n_fp / total, 6) if total else None,
        "by_reason": records(by_reason), "by_vcpu": records(by_vcpu) if by_vcpu is not None else [],
        "by_vm": records(by_vm) if by_vm is not None else ([] if vm_pid is not None else None),
        "vm_grouping": grouping, "by": o.exits_by, "selection": selection,
    }
    rows = {"exits_by_reason": by_reason}
    if o.row_tables:
        rows = {"exit_intervals": pl.concat(kept).sort("exit_row"), **rows}
    r = Result("exits", summary=summary, rows=rows, rule=RULE)
    n_broken = unpaired.get("lost", 0) + unpaired.get("rip_jump", 0)
    if n_broken:
        first = pl.concat(broken).sort("ts_ns").head(3)
        ev = [f"{u} at {fmt_ts(t)}: {rs} exit of thread {'-' if p is None else p}" for t, rs, p, u in first.iter_rows()]
        text = (f"{plural(n_broken, 'exit')} not timed: their next entry lies after lost events "
                f"({unpaired.get('lost', 0)}) or resumes elsewhere ({unpaired.get('rip_jump', 0)})")
        r.findings.append(ANALYZER.finding("unpaired_exits", text, n_broken, int(first["ts_ns"][0]), ev))
    return r


def _vm_pids(td: TraceData) -> tuple[pl.Expr | None, str]:
    """The VM of each exit: the VMM process of its vCPU thread, from the host snapshot's running VMs,
    else the thread's tgid when the trace records it (perf.data samples do), else unknown."""
    vm_of = _vm_map(td)
    if vm_of:
        return (pl.col("pid").replace_strict(vm_of, default=None, return_dtype=pl.Int64).alias("vm_pid"),
                "host snapshot vCPU threads")
    if td.scan("kvm_exit", ["tgid"]).select(pl.col("tgid").is_not_null().any()).collect().item():
        return pl.col("tgid").cast(pl.Int64).alias("vm_pid"), "VMM process (tgid) of each vCPU thread"
    return None, "unknown (no host snapshot, no process ids in the trace): per vCPU thread only"


def _check_selection(vcpu: int | None, vm: int | None, vms: list[pl.DataFrame],
                     vcpus: list[pl.DataFrame]) -> dict | None:
    """``exits --vcpu N --vm PID`` name a vCPU and a VM that have exits (the VM's exits for --vcpu)."""
    if vcpu is None and vm is None:
        return None
    if vm is not None:
        known = sorted({x for f in vms for x in f["vm_pid"].to_list() if x is not None})
        if vm not in known:
            raise InputError("--vm", f"no exits of VM {vm}; VMs in the trace: {', '.join(map(str, known)) or 'none'}")
    if vcpu is not None:
        ids = sorted({x for f in vcpus for x in f["vcpu_id"].to_list() if x is not None})
        if not ids:
            raise InputError("--vcpu", "this trace's kvm_exit events carry no vcpu_id")
        if vcpu not in ids:
            raise InputError("--vcpu", f"no exits of vCPU {vcpu}; vCPUs: {', '.join(map(str, ids))}")
    return {"vcpu": vcpu, "vm": vm}


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
