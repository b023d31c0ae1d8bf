"""Guest PMU MSR accesses as the analyzers share them: catalog names, value-changing writes, the
mediated verdict per access, and the exit each access was handled in.

Rules: an access belongs to the MSR exit of its vCPU thread that precedes it, before that thread's
next entry (kvm_msr fires inside the exit's handling: kvm_{get,set}_msr ->
trace_kvm_msr_{read,write}). A write changes the value when it differs from the last value the
vCPU wrote or read for that MSR (KVM reprograms only then: ``if (data != pmc->eventsel)`` in
intel_pmu_set_msr()/amd_pmu_set_msr(), XOR diff for GLOBAL_CTRL; design §3.5). The mediated
verdict uses the thread's guest PMU shape (model.design.msr_intercepted); an access that raised
#GP never passes through, nor does one to the other vendor's PMU MSRs (KVM's kvm_pmu_ops are the
host vendor's).
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.windows import KEY, exit_intervals_where
from vpmutrace.model import msrs as M
from vpmutrace.model.design import MEDIATED, TRAP, HostSetup, msr_intercepted, verdict
from vpmutrace.tracedata import TraceData


def classify(td: TraceData, cfg: Config) -> pl.DataFrame:
    """PMU kvm_msr rows with name, kind, vendor, index, ``changed`` (writes) and ``mediated``
    (pass-through / intercepted / unknown for this access's guest)."""
    df = td.df("kvm_msr").with_columns(pl.col("source").cast(pl.String)).with_row_index("msr_row")
    cat = M.catalog()
    uniq = [m for m in df["msr"].unique().to_list() if m in cat and cat[m].kind != M.DEBUGCTL]
    lut = pl.DataFrame({"msr": uniq, "name": [cat[m].name for m in uniq], "kind": [cat[m].kind for m in uniq],
                        "vendor": [cat[m].vendor for m in uniq]},
                       schema={"msr": pl.UInt32, "name": pl.String, "kind": pl.String, "vendor": pl.String})
    pmu = df.join(lut, on="msr", how="inner").sort("ts_ns", "seq")
    # the value each access saw or wrote, against the previous one of the same vCPU and MSR
    # (accesses that raised #GP neither change nor show a value)
    gp = pl.col("gp").fill_null(False)
    pmu = pmu.with_columns(pl.when(gp).then(None).otherwise(pl.col("value")).alias("_v"))
    pmu = pmu.with_columns(pl.col("_v").shift(1).forward_fill().over([*KEY, "msr"]).alias("_prev"))
    pmu = pmu.with_columns(pl.when(~pl.col("write") | gp).then(None)
                           .when(pl.col("_prev").is_null()).then(None)
                           .otherwise(pl.col("value") != pl.col("_prev")).alias("changed")).drop("_prev", "_v")
    # the mediated verdict: per (thread shape, msr), #GP'd accesses never pass through
    shapes = cfg.guest_pmu_by_thread
    host = cfg.setup.host
    default = cfg.guest_pmu.value
    keys = pmu.select("source", "pid", "msr").unique()
    vendor = cfg.vendor.value
    # KVM's PMU is the host vendor's (kvm_pmu_ops): the other vendor's PMU MSRs are no PMU MSRs to it
    verdicts = [TRAP if vendor is not None and M.lookup(m).vendor != vendor else
                verdict(msr_intercepted(MEDIATED, m, HostSetup(host, shapes.get((s, p), default))))
                for s, p, m in keys.iter_rows()]
    keys = keys.with_columns(pl.Series("mediated", verdicts, dtype=pl.String))
    pmu = pmu.join(keys, on=["source", "pid", "msr"], how="left")
    return pmu.with_columns(pl.when(pl.col("gp").fill_null(False)).then(pl.lit(TRAP)).otherwise(pl.col("mediated"))
                            .alias("mediated"))


def with_exit_latency(td: TraceData, pmu: pl.DataFrame) -> pl.DataFrame:
    """Each access with the handling time of the exit it was handled in (null without exits)."""
    if not (td.has("kvm_exit") and td.has("kvm_entry")) or pmu.height == 0:
        return pmu.with_columns(pl.lit(None, pl.UInt32).alias("exit_row"), pl.lit(None, pl.Int64).alias("exit_ns"))
    iv = exit_intervals_where(td, P.msr_exit()).select("exit_row", pl.col("ts_ns").alias("exit_ts"), "source", "pid",
                                                        "entry_ts", pl.col("handling_ns").alias("exit_ns"))
    j = pmu.sort("ts_ns").join_asof(iv.sort("exit_ts"), left_on="ts_ns", right_on="exit_ts", by=KEY,
                                    strategy="backward")
    inside = pl.col("exit_ts").is_not_null() & (pl.col("entry_ts").is_null() | (pl.col("ts_ns") <= pl.col("entry_ts")))
    return j.with_columns([pl.when(inside).then(pl.col(c)).otherwise(None).alias(c) for c in ("exit_row", "exit_ns")]) \
        .drop("exit_ts", "entry_ts").sort("msr_row")
