"""VM exits: counts and handling time per reason, per vCPU and per VM (what `perf kvm stat` reports).

Rule: each kvm_exit is paired with the next kvm_entry of the same vCPU thread; the
handling time is the difference (perf kvm stat's vmexit event pairing). Per reason:
samples (paired exits), samples %, time %, min, max, mean, p50, p99, and perf's
"±%" (relative standard error of the mean: 100 * stddev / sqrt(n) / mean).
Exits with no following entry are counted as unpaired. Reference §5.3 (exit reasons).
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze.base import Config, Result, missing, not_computable
from vpmutrace.analyze.windows import exit_intervals
from vpmutrace.tracedata import TraceData

REQUIRES = ["kvm_exit", "kvm_entry"]
RULE = __doc__.split("\n\n", 1)[1]


def _stats(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
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
        return not_computable("exits", needs, RULE, **partial)
    iv = exit_intervals(td)
    paired = iv.filter(pl.col("handling_ns").is_not_null())
    by_reason = _stats(paired, ["reason", "exit_reason", "isa"])
    by_vcpu = _stats(paired, ["source", "pid", "vcpu_id"])
    vm_of = _vm_map(td)
    tgid = td.df("kvm_exit").select("tgid").with_row_index("exit_row")
    if vm_of:
        vm = paired.with_columns(pl.col("pid").replace_strict(vm_of, default=None, return_dtype=pl.Int64)
                                 .alias("vm_pid"))
        grouping = "host snapshot vCPU threads"
    elif tgid["tgid"].null_count() < tgid.height:
        vm = paired.join(tgid.with_columns(pl.col("exit_row").cast(pl.UInt32)), on="exit_row", how="left") \
            .with_columns(pl.col("tgid").cast(pl.Int64).alias("vm_pid"))
        grouping = "VMM process (tgid) of each vCPU thread"
    else:
        vm, grouping = None, "unknown (no host snapshot, no process ids in the trace): per vCPU thread only"
    by_vm = _stats(vm, ["vm_pid"]) if vm is not None else None
    summary = {
        "exits_total": iv.height, "exits_paired": paired.height, "exits_unpaired": iv.height - paired.height,
        "handling_ns_total": int(paired["handling_ns"].sum() or 0),
        "by_reason": _records(by_reason), "by_vcpu": _records(by_vcpu),
        "by_vm": _records(by_vm) if by_vm is not None else None,
        "vm_grouping": grouping,
    }
    return Result("exits", summary=summary, rows={"exit_intervals": iv, "exits_by_reason": by_reason}, rule=RULE)


def _vm_map(td: TraceData) -> dict[int, int]:
    host = td.meta.get("host") or {}
    return {v["tid"]: vm["pid"] for vm in host.get("running_vms", []) for v in vm.get("vcpus", [])}


def _records(df: pl.DataFrame) -> list[dict]:
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in df.iter_rows(named=True)]
