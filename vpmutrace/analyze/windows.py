"""Exit/entry pairing shared by the analyzers: exit-handling intervals, guest-run windows and PMU
ownership windows.

A vCPU is identified by its host thread (``source``, ``pid``): kvm_exit and kvm_entry fire on
the vCPU thread (vmx_vcpu_run()/svm_vcpu_run(), once per pass of the inner run loop, fastpath
re-entries included). An exit's handling interval runs to the next kvm_entry of that thread
(perf kvm stat pairs the same way), except where the pair cannot be trusted:

- the tracer lost events on that CPU (a ``lost`` row) between the two: ``lost``;
- the entry resumes the guest away from the exit's instruction (entry rip outside
  [exit rip, exit rip + 15] modulo 2^64, 15 bytes being the longest x86 instruction), i.e. events
  are missing between them, as across a gap in a trace excerpt: ``rip_jump``. Unless the rip
  change is explained: exits that move the guest elsewhere (VMX TRIPLE_FAULT, INIT, SIPI,
  TASK_SWITCH, VMLAUNCH/VMRESUME; SVM init, task_switch, shutdown, vmrun), or, on the thread
  between the two, an emulated instruction (kvm_emulate_insn), a return to user space
  (kvm_userspace_exit: the VMM may set registers), a nested transition
  (kvm_nested_vmexit_inject, kvm_nested_vmenter/vmrun) or an SMM transition.

A guest window runs from a kvm_entry to the thread's next kvm_exit on the CPU of the entry
(not across a loss). PMU ownership windows (mediated design) merge guest windows across exits
the kernel may re-enter from the fastpath without putting the guest PMU (design §2.1, §3.5;
``model.kernel.fastpath_eligible``).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.runloop import KEY, crosses_loss, exit_interval_chunks, losses
from vpmutrace.model import kernel as K
from vpmutrace.tracedata import TraceData


def _timeline(td: TraceData) -> pl.DataFrame:
    ex = P.exits(td).select(
        "ts_ns", "seq", "cpu", pl.col("source").cast(pl.String), "pid", pl.col("comm").cast(pl.String), "vcpu_id",
        "exit_reason", "basic", pl.col("reason").cast(pl.String), "isa", "intr_info", "requests", "guest_rip",
        "exit_row", pl.lit("exit").alias("kind"))
    en = td.scan("kvm_entry").select("ts_ns", "seq", "cpu", pl.col("source").cast(pl.String), "pid", "vcpu_id",
                                     pl.col("rip").alias("entry_rip"), pl.col("intr_info").alias("entry_intr_info"),
                                     pl.lit("entry").alias("kind")).collect()
    return pl.concat([ex, en], how="diagonal_relaxed").sort([*KEY, "ts_ns", "seq"])


def exit_intervals(td: TraceData) -> pl.DataFrame:
    """One row per kvm_exit: reason, vCPU and ``handling_ns`` to the thread's next entry, null when
    unpaired; ``unpaired`` says why (no_entry, lost, rip_jump); ``entry_intr_info`` is what the
    entry injected (kernels >= 6.14); ``msr_written``: the MSR an MSR-write exit wrote (its
    thread's first kvm_msr write before its next entry or exit). Computed range by range
    (``runloop.exit_interval_chunks``), in exit order."""
    parts = list(exit_interval_chunks(td))
    return pl.concat(parts).drop("tgid").sort("exit_row")


def exit_intervals_where(td: TraceData, keep: pl.Expr) -> pl.DataFrame:
    """``exit_intervals(td).filter(keep)``, holding the rows kept, not every exit's."""
    return pl.concat([c.filter(keep) for c in exit_interval_chunks(td)]).drop("tgid").sort("exit_row")


def guest_windows(td: TraceData) -> pl.DataFrame:
    """One row per guest run: [start_ns, end_ns) from a kvm_entry to the thread's next kvm_exit
    (windows that span a loss of events are dropped), with the reason of the exit that ends it."""
    t = _timeline(td).with_columns(
        pl.col("kind").shift(-1).over(KEY).alias("next_kind"),
        pl.col("ts_ns").shift(-1).over(KEY).alias("next_ts"),
        pl.col("reason").shift(-1).over(KEY).alias("exit_reason_name"),
        pl.col("exit_row").shift(-1).over(KEY).alias("end_exit_row"))
    w = t.filter((pl.col("kind") == "entry") & (pl.col("next_kind") == "exit"))
    w = w.select("cpu", "source", "pid", "vcpu_id", pl.col("ts_ns").alias("start_ns"),
                 pl.col("next_ts").alias("end_ns"), "exit_reason_name", "end_exit_row")
    w = w.filter(~crosses_loss(w, "start_ns", "end_ns", losses(td)))
    return w.sort("cpu", "start_ns")


def fastpath_column(iv: pl.DataFrame, version: tuple[int, int] | None) -> pl.Series:
    """Per exit of ``iv`` (exit_intervals: ``isa``, ``basic``, ``msr_written``): may the kernel have
    handled it in the fastpath (re-entering without leaving the inner run loop)? See
    ``model.kernel.fastpath_eligible``; the rule is asked once per distinct (isa, basic reason, MSR),
    not per exit."""
    keys = ["isa", "basic", "msr_written"]
    combos = iv.select(keys).unique()
    combos = combos.with_columns(pl.Series("_fp", [K.fastpath_eligible(isa, basic, msr, version) for isa, basic, msr
                                                   in combos.iter_rows()], dtype=pl.Boolean))
    return iv.select(keys).join(combos, on=keys, how="left", nulls_equal=True, maintain_order="left")["_fp"]


def ownership_windows(td: TraceData, fastpath: pl.Series) -> pl.DataFrame:
    """Guest windows merged across exits that may have re-entered from the fastpath: a merged
    window is one PMU load..put under the mediated design (the lower bound of switches)."""
    w = guest_windows(td)
    if w.height == 0:
        return w.with_columns(pl.lit(0, pl.UInt32).alias("runs"))
    fp = pl.DataFrame({"exit_row": pl.Series(range(len(fastpath)), dtype=pl.UInt32), "_fp": fastpath})
    w = w.join(fp.rename({"exit_row": "end_exit_row"}), on="end_exit_row", how="left").sort([*KEY, "start_ns"])
    # a new ownership window starts after an exit that left the fastpath loop (or at the first run)
    w = w.with_columns(pl.col("_fp").shift(1).over(KEY).fill_null(False).alias("_cont"))
    w = w.with_columns((~pl.col("_cont")).cum_sum().over(KEY).alias("_grp"))
    return w.group_by([*KEY, "_grp"], maintain_order=True).agg(
        pl.col("cpu").first(), pl.col("vcpu_id").first(), pl.col("start_ns").min(), pl.col("end_ns").max(),
        pl.len().alias("runs"), pl.col("exit_reason_name").last()).drop("_grp").sort("cpu", "start_ns")


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


class Overlap:
    """``overlap_ns(start, end, windows)`` for many intervals over the same windows, each query in
    O(log n) instead of a pass over the windows.

    Windows with a null start or end are left out (``overlap_ns``'s filter drops them). Sorted by
    start (then end), the windows that meet [a, b) (end > a and start < b) are one run of indices
    when their ends are sorted too (a vCPU thread's runs, one after the other), and their total
    inside [a, b) is sum(end - start) over the run (a prefix sum) minus (end - b) for those ending
    after b and (a - start) for those starting before a. Windows whose ends are not in start order,
    or sums that could pass 2^62, are answered by ``overlap_ns`` itself."""

    def __init__(self, windows: pl.DataFrame) -> None:
        w = windows.select("start_ns", "end_ns").drop_nulls().sort("start_ns", "end_ns")
        self.windows = windows
        self.s = w["start_ns"].to_numpy()
        self.e = w["end_ns"].to_numpy()
        n = len(self.s)
        self.exact = n == 0 or (bool((np.diff(self.e) >= 0).all())
                                and n * (int(self.e.max()) - int(self.s.min()) + 1) < 2**62)
        self.cum = np.concatenate([[0], np.cumsum(self.e - self.s)]) if self.exact else None

    def __call__(self, start: int, end: int) -> int:
        if not self.exact:
            return overlap_ns(start, end, self.windows)
        s, e = self.s, self.e
        i = int(np.searchsorted(e, start, "right"))  # the first window ending after start
        j = int(np.searchsorted(s, end, "left"))  # the first window starting at or after end
        if j <= i:
            return 0
        total = int(self.cum[j] - self.cum[i])
        p = max(i, int(np.searchsorted(e, end, "right")))  # [p, j): end after ``end``
        if p < j:
            total -= int((e[p:j] - end).sum())
        q = min(j, int(np.searchsorted(s, start, "left")))  # [i, q): start before ``start``
        if q > i:
            total -= int((start - s[i:q]).sum())
        return total


def thread_overlaps(windows: pl.DataFrame) -> dict[tuple[str, int], Overlap]:
    """An ``Overlap`` per vCPU thread (``source``, ``pid``) of ``windows``: the windows
    ``windows.filter((pl.col("source") == source) & (pl.col("pid") == pid))`` selects (threads with a null
    source or pid are left out: that filter selects none of their windows)."""
    parts = windows.filter(pl.col("source").is_not_null() & pl.col("pid").is_not_null()) \
        .partition_by(KEY, as_dict=True, maintain_order=True)
    return {(str(src), int(pid)): Overlap(g) for (src, pid), g in parts.items()}


def probe_windows(td: TraceData) -> tuple[pl.DataFrame, str] | None:
    """PMU ownership windows from load/put probes (mediated design; design §2.1-§2.2): on each vCPU
    thread a window opens at a load (perf_load_guest_context(), which kvm_mediated_pmu_load() calls
    first for a mediated vCPU only, else kvm_mediated_pmu_load(), which runs for every vCPU on 7.0+ and
    returns at once without a mediated PMU) and closes at the thread's next put (perf_put_guest_context(),
    else kvm_mediated_pmu_put());
    a window still open at the end of the trace has a null end. Each window has ``load_ns`` / ``put_ns``
    (the functions' durations, where their return probes were recorded; null otherwise), the guest runs
    (kvm_entry) and ``fastpath_exits``, the exits re-entered inside it (all but the one the put
    follows); ``gap_ns`` is the host time until the thread's next load (put ->
    load: the host owns the PMU). Returns (windows, the function pair used) or None when neither load nor
    put probes were recorded. Windows that span a loss of events on their CPU are marked ``lost``."""
    pairs = []
    for lf, pf in ((K.FN_PERF_LOAD_GUEST, K.FN_PERF_PUT_GUEST), (K.FN_MEDIATED_LOAD, K.FN_MEDIATED_PUT)):
        load, _ = P.probe_rows(td, lf)
        put, _ = P.probe_rows(td, pf)
        if load is not None and put is not None:
            pairs.append((load.height + put.height > 0, lf, pf, load, put))
    if not pairs:
        return None
    # the perf hooks run only for a mediated vCPU (kvm_mediated_pmu_load() returns before calling them
    # otherwise): preferred when they fired
    _, lf, pf, load, put = sorted(pairs, key=lambda p: not p[0])[0]

    def timed(rows: pl.DataFrame, func: str, kind: str) -> pl.DataFrame:
        df = rows.select("ts_ns", "seq", "cpu", "source", "pid", pl.lit(kind).alias("kind"))
        ret, _ = P.probe_rows(td, func, ret=True)
        if ret is None or ret.height == 0:
            return df.with_columns(pl.lit(None, pl.Int64).alias("dur_ns"))
        r = ret.select(pl.col("ts_ns").alias("r_ts"), "source", "pid").sort("r_ts")
        return df.sort("ts_ns").join_asof(r, left_on="ts_ns", right_on="r_ts", by=KEY, strategy="forward") \
            .with_columns((pl.col("r_ts") - pl.col("ts_ns")).alias("dur_ns")).drop("r_ts")

    ev = pl.concat([timed(load, lf, "load"), timed(put, pf, "put")]).sort([*KEY, "ts_ns", "seq"])
    ev = ev.with_columns(pl.col("kind").shift(-1).over(KEY).alias("next_kind"),
                         pl.col("ts_ns").shift(-1).over(KEY).alias("next_ts"),
                         pl.col("dur_ns").shift(-1).over(KEY).alias("next_dur"))
    w = ev.filter(pl.col("kind") == "load").select(
        "cpu", "source", "pid", pl.col("ts_ns").alias("start_ns"),
        pl.when(pl.col("next_kind") == "put").then(pl.col("next_ts")).alias("end_ns"),
        pl.col("dur_ns").alias("load_ns"),
        pl.when(pl.col("next_kind") == "put").then(pl.col("next_dur")).alias("put_ns"))
    nxt = ev.filter(pl.col("kind") == "load").select(pl.col("ts_ns").alias("_next_load"), "source", "pid") \
        .sort("_next_load")
    w = w.sort("end_ns").join_asof(nxt, left_on="end_ns", right_on="_next_load", by=KEY, strategy="forward",
                                   allow_exact_matches=False) \
        .with_columns((pl.col("_next_load") - pl.col("end_ns")).alias("gap_ns")).drop("_next_load")
    t = _timeline(td).select("ts_ns", "source", "pid", "kind")
    inside = w.select("source", "pid", "start_ns", "end_ns").with_row_index("_w").join(t, on=KEY) \
        .filter((pl.col("ts_ns") > pl.col("start_ns")) & (pl.col("end_ns").is_null()
                                                          | (pl.col("ts_ns") < pl.col("end_ns"))))
    counts = inside.group_by("_w").agg((pl.col("kind") == "entry").sum().alias("runs"),
                                       (pl.col("kind") == "exit").sum().alias("exits_inside"))
    # the exit that ends a window (the put follows it) is not a re-entry inside it
    w = w.with_row_index("_w").join(counts, on="_w", how="left").with_columns(
        pl.col("runs").fill_null(0), (pl.col("exits_inside").fill_null(0)
                                      - pl.col("end_ns").is_not_null().cast(pl.UInt32)).clip(0)
        .alias("fastpath_exits")).drop("_w", "exits_inside")
    w = w.with_columns(crosses_loss(w.with_columns(pl.col("end_ns").fill_null(pl.col("start_ns"))),
                                    "start_ns", "end_ns", losses(td)).alias("lost"))
    return w.sort("cpu", "start_ns"), f"{lf}/{pf}"
