"""Exit/entry pairing shared by the analyzers: exit-handling intervals and guest-run windows.

A vCPU is identified by its host thread (``source``, ``pid``): kvm_exit and kvm_entry
fire on the vCPU thread. An exit's handling interval runs to the next kvm_entry of that
thread (perf kvm stat pairs the same way); a guest window runs from a kvm_entry to the
thread's next kvm_exit, on the CPU of the entry.
"""

from __future__ import annotations

import warnings

import polars as pl

from vpmutrace.tracedata import TraceData

# every as-of join here sorts both sides by time first; polars cannot verify sortedness
# within `by` groups and would warn on each call
warnings.filterwarnings("ignore", message="Sortedness of columns cannot be checked")

KEY = ["source", "pid"]


def _timeline(td: TraceData) -> pl.DataFrame:
    ex = td.df("kvm_exit").select(
        "ts_ns", "seq", "cpu", "source", "pid", pl.col("comm").cast(pl.String), "vcpu_id", "exit_reason", "reason",
        "isa", "intr_info", pl.lit("exit").alias("kind")).with_row_index("exit_row")
    en = td.df("kvm_entry").select("ts_ns", "seq", "cpu", "source", "pid", pl.col("vcpu_id"),
                                   pl.lit("entry").alias("kind"))
    both = pl.concat([ex.with_columns(pl.col("source").cast(pl.String)),
                      en.with_columns(pl.col("source").cast(pl.String), pl.lit(None, pl.UInt32).alias("exit_row"),
                                      pl.lit(None, pl.UInt32).alias("exit_reason"),
                                      pl.lit(None, pl.String).alias("reason"), pl.lit(None, pl.UInt8).alias("isa"),
                                      pl.lit(None, pl.UInt32).alias("intr_info"))], how="diagonal_relaxed")
    return both.sort([*KEY, "ts_ns", "seq"])


def exit_intervals(td: TraceData) -> pl.DataFrame:
    """One row per kvm_exit: reason, vcpu, and ``handling_ns`` to the next entry (null if none)."""
    t = _timeline(td)
    t = t.with_columns(
        pl.col("kind").shift(-1).over(KEY).alias("next_kind"),
        pl.col("ts_ns").shift(-1).over(KEY).alias("next_ts"))
    ex = t.filter(pl.col("kind") == "exit")
    return ex.with_columns(
        pl.when(pl.col("next_kind") == "entry").then(pl.col("next_ts") - pl.col("ts_ns")).otherwise(None)
        .alias("handling_ns")).select("exit_row", "ts_ns", "cpu", "source", "pid", "comm", "vcpu_id",
                                      "exit_reason", "reason", "isa", "intr_info", "handling_ns").sort("exit_row")


def guest_windows(td: TraceData) -> pl.DataFrame:
    """One row per guest run: [start_ns, end_ns) from a kvm_entry to the thread's next kvm_exit."""
    t = _timeline(td).with_columns(
        pl.col("kind").shift(-1).over(KEY).alias("next_kind"),
        pl.col("ts_ns").shift(-1).over(KEY).alias("next_ts"),
        pl.col("reason").shift(-1).over(KEY).alias("exit_reason_name"))
    w = t.filter((pl.col("kind") == "entry") & (pl.col("next_kind") == "exit"))
    return w.select("cpu", "source", "pid", "vcpu_id", pl.col("ts_ns").alias("start_ns"),
                    pl.col("next_ts").alias("end_ns"), "exit_reason_name").sort("cpu", "start_ns")


def overlap_ns(start: int, end: int, windows: pl.DataFrame) -> int:
    """Total length of ``windows`` inside [start, end)."""
    if windows.height == 0:
        return 0
    w = windows.filter((pl.col("end_ns") > start) & (pl.col("start_ns") < end))
    if w.height == 0:
        return 0
    s = w.select((pl.min_horizontal(pl.col("end_ns"), pl.lit(end)) - pl.max_horizontal(pl.col("start_ns"),
                                                                                         pl.lit(start))).sum())
    return int(s.item())
