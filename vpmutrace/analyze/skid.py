"""PMI attribution around VM transitions: which PMIs a host would charge to the wrong side.

Rule (reference §3.1 skid, §3.3 emulated PMI path): PMIs are (a) NMI VM-exits
(VMX EXCEPTION_NMI with intr_info 0x80000202, SVM `nmi`), (b) mediated guest PMIs,
external-interrupt exits on vector 0xF5, and (c) host NMIs handled by
perf_event_nmi_handler (handled >= 1). A host NMI (c) that directly follows an NMI
exit (a) on its CPU within the window is that exit's NMI: attributed to the guest,
correctly. Any other host NMI is classified by where it lands on its CPU: within the
window after a VM-exit -> misattributed to host (the overflow happened in the guest
and skidded past the exit); within the window before a VM-entry -> ambiguous;
otherwise host (correct). Rates per CPU. Window: --skid-window (default 10 us).

Samples (perf samples with a CPU and cpumode, when the trace has them) are checked the
same way against the guest windows of their CPU (kvm_entry to the next kvm_exit): a
guest-mode sample outside every guest window is misattributed to the guest unless it
lies within the window after an exit (skid: ambiguous); a host-mode sample inside a guest
window, or within the window after an exit, is misattributed to the host; a sample within
the window before an entry is ambiguous; anything else agrees with where the CPU was
(reference §3.1 skid; EXACT_IP samples are reported separately, they have no skid).
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze.base import Config, Result, missing, not_computable
from vpmutrace.analyze.watchdog import PERF_HANDLER
from vpmutrace.model.design import MEDIATED_PMI_VECTOR, NMI_INTR_INFO
from vpmutrace.tracedata import TraceData

REQUIRES = ["kvm_exit", "nmi_handler"]
RULE = __doc__.split("\n\n", 1)[1]


def nmi_exit_mask() -> pl.Expr:
    vmx = (pl.col("isa") == 1) & (pl.col("exit_reason") == 0) & (pl.col("intr_info") == NMI_INTR_INFO)
    svm = (pl.col("isa") == 2) & (pl.col("exit_reason") == 0x61)
    return vmx | svm


def mediated_pmi_mask() -> pl.Expr:
    vmx = (pl.col("isa") == 1) & (pl.col("exit_reason") == 1) & \
        ((pl.col("intr_info") & 0xFF) == MEDIATED_PMI_VECTOR) & ((pl.col("intr_info") & 0x80000000) != 0)
    return vmx


def classify(td: TraceData, window_ns: int) -> pl.DataFrame:
    """Host perf NMIs with their class: guest_exit, misattributed_host, ambiguous, host."""
    nmi = td.df("nmi_handler").filter(pl.col("handler").str.starts_with(PERF_HANDLER) & (pl.col("handled") >= 1)) \
        .select("ts_ns", "cpu", "pid", "handler").with_row_index("nmi_row")
    ex = td.df("kvm_exit").select("ts_ns", "cpu", "exit_reason", "isa", "intr_info").with_columns(
        nmi_exit_mask().alias("is_nmi_exit"))
    en = td.df("kvm_entry").select("ts_ns", "cpu") if td.has("kvm_entry") else pl.DataFrame(
        schema={"ts_ns": pl.Int64, "cpu": pl.Int32})
    left = nmi.sort("ts_ns")
    prev_exit = left.join_asof(ex.sort("ts_ns").rename({"ts_ns": "exit_ts"}), left_on="ts_ns", right_on="exit_ts",
                               by="cpu", strategy="backward")
    next_entry = left.join_asof(en.sort("ts_ns").rename({"ts_ns": "entry_ts"}), left_on="ts_ns",
                                right_on="entry_ts", by="cpu", strategy="forward")
    j = prev_exit.join(next_entry.select("nmi_row", "entry_ts"), on="nmi_row")
    after_exit = (pl.col("ts_ns") - pl.col("exit_ts")) <= window_ns
    before_entry = (pl.col("entry_ts") - pl.col("ts_ns")) <= window_ns
    cls = (pl.when(pl.col("exit_ts").is_not_null() & after_exit & pl.col("is_nmi_exit").fill_null(False))
           .then(pl.lit("guest_exit"))
           .when(pl.col("exit_ts").is_not_null() & after_exit).then(pl.lit("misattributed_host"))
           .when(pl.col("entry_ts").is_not_null() & before_entry).then(pl.lit("ambiguous"))
           .otherwise(pl.lit("host")))
    return j.with_columns(cls.alias("class")).sort("nmi_row")


SAMPLE_CLASSES = ("correct", "misattributed_host", "misattributed_guest", "ambiguous")


def classify_samples(td: TraceData, window_ns: int) -> pl.DataFrame:
    """perf samples with their class (see the module doc); requires samples with cpu and cpumode."""
    from vpmutrace.analyze.windows import guest_windows

    s = td.df("samples").filter(pl.col("cpu").is_not_null() & pl.col("cpumode").is_not_null()) \
        .select("ts_ns", "cpu", "pid", "event", pl.col("cpumode").cast(pl.String), "exact_ip").with_row_index("s")
    w = guest_windows(td).select("cpu", "start_ns", "end_ns").sort("start_ns")
    left = s.sort("ts_ns")
    prev = left.join_asof(w.rename({"start_ns": "win_start", "end_ns": "win_end"}), left_on="ts_ns",
                          right_on="win_start", by="cpu", strategy="backward")
    nxt = left.join_asof(w.select("cpu", pl.col("start_ns").alias("next_entry")), left_on="ts_ns",
                         right_on="next_entry", by="cpu", strategy="forward")
    j = prev.join(nxt.select("s", "next_entry"), on="s")
    in_guest = pl.col("win_end").is_not_null() & (pl.col("ts_ns") < pl.col("win_end"))
    after_exit = pl.col("win_end").is_not_null() & (pl.col("ts_ns") >= pl.col("win_end")) & \
        (pl.col("ts_ns") - pl.col("win_end") <= window_ns)
    before_entry = pl.col("next_entry").is_not_null() & (pl.col("next_entry") - pl.col("ts_ns") <= window_ns) & \
        ~in_guest
    guest_mode = pl.col("cpumode").str.starts_with("guest")
    cls = (pl.when(in_guest & guest_mode).then(pl.lit("correct"))
           .when(in_guest).then(pl.lit("misattributed_host"))
           .when(after_exit & ~guest_mode).then(pl.lit("misattributed_host"))
           .when(after_exit | before_entry).then(pl.lit("ambiguous"))
           .when(guest_mode).then(pl.lit("misattributed_guest"))
           .otherwise(pl.lit("correct")))
    return j.with_columns(cls.alias("class")).sort("s").drop("s")


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return not_computable("skid", needs, RULE, samples=_samples_summary(td, cfg))
    c = classify(td, cfg.skid_window_ns)
    ex = td.df("kvm_exit")
    counts = {k: 0 for k in ("guest_exit", "misattributed_host", "ambiguous", "host")}
    counts.update({k: n for k, n in c.group_by("class").len().rows()})
    per_cpu = []
    for (cpu,), g in c.group_by(["cpu"], maintain_order=True):
        k = {x: n for x, n in g.group_by("class").len().rows()}
        per_cpu.append({"cpu": cpu, "pmis": g.height, **{x: k.get(x, 0) for x in counts},
                        "misattributed_rate": round(k.get("misattributed_host", 0) / g.height, 6)})
    summary = {
        "window_ns": cfg.skid_window_ns, "host_perf_nmis": c.height, "classes": counts,
        "nmi_exits": ex.filter(nmi_exit_mask()).height, "mediated_pmi_exits": ex.filter(mediated_pmi_mask()).height,
        "misattributed_rate": round(counts["misattributed_host"] / c.height, 6) if c.height else 0.0,
        "per_cpu": sorted(per_cpu, key=lambda r: r["cpu"]),
        "samples": _samples_summary(td, cfg),
    }
    return Result("skid", summary=summary, rows={"pmi_attribution": c}, rule=RULE)


def _samples_summary(td: TraceData, cfg: Config) -> dict | None:
    """Sample attribution, or why it cannot be computed."""
    if not td.has("samples"):
        return None
    if not (td.has("kvm_exit") and td.has("kvm_entry")):
        return {"computable": False, "reason": "not computable: needs kvm:kvm_exit and kvm:kvm_entry events"}
    sc = classify_samples(td, cfg.skid_window_ns)
    if sc.height == 0:
        return {"computable": False, "reason": "not computable: needs samples with CPU and cpumode"}
    k = dict(sc.group_by("class").len().rows())
    return {"computable": True, "samples": sc.height, "classes": {c: k.get(c, 0) for c in SAMPLE_CLASSES},
            "exact_ip": int(sc["exact_ip"].fill_null(False).sum())}
