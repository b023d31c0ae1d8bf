"""Guest PMI delivery: which exits carried a guest PMI, how long KVM took to inject it, and whether
the host's count of mediated PMIs matches.

Rule (design §3.1-§3.4): a guest counter overflow reaches KVM as
- mediated design: a host interrupt on vector 0xF5 (sysvec_perf_guest_mediated_pmi_handler ->
  kvm_handle_guest_mediated_pmi() -> KVM_REQ_PMI): a VMX external-interrupt exit with
  intr_info 0x800000f5 (fact), or an SVM interrupt exit (no vector in the exit) followed by the
  guest's LVTPC injection (candidate);
- emulated design: a host NMI (perf_event_nmi_handler -> kvm_perf_overflow() ->
  KVM_REQ_PMI/KVM_REQ_PMU): an NMI exit classified as guest_pmi (predicates.classify_nmi_exits:
  requests bits where the format has them, else the LVTPC injection that follows).
At the next entry kvm_pmu_deliver_pmi() -> kvm_apic_local_deliver(APIC_LVTPC) fires
kvm:kvm_apic_accept_irq on the vCPU's own thread (NMI mode for Linux guests, a fixed vector
for others), and on kernels >= 6.14 kvm_entry's intr_info shows the injected NMI (VMX 0x80000202, SVM
0x80000200; 0 with AMD vNMI).
Per vCPU: PMI exits, injections, latency exit -> injection -> entry (p50/p99/max), the LVTPC
mode, and injections with no PMI exit before them (the overflow arrived while the vCPU thread
was in the host: no exit, the request is served at the next entry). With a host snapshot
taken before and after the capture, 0xF5 exits are compared with the /proc/interrupts VPMI
delta (every mediated PMI, including those taken in host context).

With kvm-pmu probes the delivery latency is measured, not inferred from exits: from the overflow
reaching KVM (kvm_perf_overflow() in the host NMI, emulated; kvm_handle_guest_mediated_pmi() on
vector 0xF5, mediated) to the LVTPC injection (kvm_pmu_deliver_pmi()) on the same vCPU thread; each
injection pairs with the first overflow since the thread's previous injection (several overflows
before one injection are one PMI: KVM_REQ_PMI is a flag). ``delivery.source`` says probes or inferred.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, missing, records, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.windows import exit_intervals_where
from vpmutrace.model import kernel as K
from vpmutrace.model.design import MEDIATED
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("kvm_exit",)
KINDS = (FindingKind("guest_pmis", "info", "fact", "guest PMIs delivered through exits"),
         FindingKind("pmis_outside_exits", "info", "candidate", "guest PMI injections with no PMI exit before them"),
         FindingKind("vpmi_mismatch", "low", "fact", "0xF5 exits exceed the host's VPMI interrupt count"))


def pmi_exits(td: TraceData, cfg: Config) -> pl.DataFrame:
    """All guest-PMI exits (both designs) with path, certainty, injection time and entry."""
    ex = P.exits_where(td, P.any_nmi_exit() | P.mediated_pmi_exit() | P.extint_exit())  # the exits read below
    cols = ["exit_row", "ts_ns", "cpu", pl.col("source").cast(pl.String), "pid", "inj_ts", "lvtpc", "certainty"]
    # SVM interrupt exits carry no vector: they count as mediated PMIs only when the design is mediated
    med = P.mediated_pmi_exits(td, ex, svm=cfg.model == MEDIATED).select(*cols) \
        .with_columns(pl.lit("0xf5 interrupt").alias("path"))
    nmi = P.classify_nmi_exits(td, ex, cfg.nmi_order.order, cfg.options.nmi_pair_ns) \
        .filter(pl.col("class") == P.GUEST_PMI).select(*cols).with_columns(pl.lit("NMI").alias("path"))
    out = pl.concat([med, nmi], how="vertical_relaxed").sort("ts_ns")
    if td.has("kvm_entry"):
        iv = exit_intervals_where(td, pl.col("exit_row").is_in(out["exit_row"].implode())).select(
            "exit_row", "entry_ts", "entry_intr_info")
        out = out.join(iv, on="exit_row", how="left")
    else:
        out = out.with_columns(pl.lit(None, pl.Int64).alias("entry_ts"),
                               pl.lit(None, pl.UInt32).alias("entry_intr_info"))
    return out.with_columns((pl.col("inj_ts") - pl.col("ts_ns")).alias("to_injection_ns"),
                            (pl.col("entry_ts") - pl.col("ts_ns")).alias("to_entry_ns"),
                            ((pl.col("entry_intr_info") & K.ENTRY_NMI_MASK) == K.ENTRY_NMI).alias("entry_nmi"))


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return Result("pmi", needs=needs, rule=RULE)
    pe = pmi_exits(td, cfg)
    inj = P.pmi_injections(td)
    # injections not preceded (on their thread, since the previous entry) by a PMI exit
    orphan = 0
    if inj.height and td.has("kvm_entry"):
        en = P.entries(td).sort("entry_ts")
        i = inj.select("ts_ns", pl.col("source").cast(pl.String), "pid").sort("ts_ns")
        # the entry before the injection: strictly (an injection and its entry share a us in text traces)
        prev_entry = i.join_asof(en.select("source", "pid", "entry_ts"), left_on="ts_ns", right_on="entry_ts",
                                 by=["source", "pid"], strategy="backward", allow_exact_matches=False)
        last_pmi = i.join_asof(pe.select("source", "pid", pl.col("ts_ns").alias("pmi_ts")).sort("pmi_ts"),
                               left_on="ts_ns", right_on="pmi_ts", by=["source", "pid"], strategy="backward")
        j = prev_entry.with_columns(last_pmi["pmi_ts"])
        orphan = j.filter(pl.col("pmi_ts").is_null() | (pl.col("entry_ts").is_not_null()
                                                        & (pl.col("pmi_ts") < pl.col("entry_ts")))).height
    per_vcpu = pe.group_by("source", "pid").agg(
        pl.len().alias("pmi_exits"), pl.col("inj_ts").is_not_null().sum().alias("injected"),
        pl.col("path").mode().first().alias("path"), pl.col("lvtpc").drop_nulls().mode().first().alias("lvtpc"),
        pl.col("to_injection_ns").median().alias("to_injection_p50_ns"),
        pl.col("to_entry_ns").median().alias("to_entry_p50_ns"),
        pl.col("to_entry_ns").quantile(0.99, "nearest").alias("to_entry_p99_ns"),
        pl.col("to_entry_ns").max().alias("to_entry_max_ns"),
        pl.col("entry_nmi").sum().alias("entries_injecting_nmi")).sort("source", "pid")
    f5 = pe.filter(pl.col("path") == "0xf5 interrupt").height
    vpmi = _vpmi_delta(td)
    summary = {"pmi_exits": pe.height, "by_path": dict(pe.group_by("path").len().sort("path").rows()),
               "by_certainty": dict(pe.group_by("certainty").len().sort("certainty").rows()),
               "injections": inj.height, "injections_without_pmi_exit": orphan if td.has("kvm_entry") else None,
               "f5_exits": f5, "vpmi_delta": vpmi,
               "to_entry_p50_ns": pe["to_entry_ns"].median(), "to_entry_p99_ns": pe["to_entry_ns"].quantile(0.99),
               "per_vcpu": records(per_vcpu)}
    summary["delivery"] = _delivery(td, pe)
    r = Result("pmi", summary=summary, rows={"pmi_exits": pe}, rule=RULE)
    if pe.height:
        cert = "fact" if (pe["certainty"] == "fact").all() else "candidate"
        r.findings.append(ANALYZER.finding("guest_pmis", f"{pe.height} guest PMIs through exits "
                                           f"({summary['by_path']}, {summary['by_certainty']}), median exit->entry "
                                           f"{fmt_ns(summary['to_entry_p50_ns'])}", pe.height, int(pe["ts_ns"][0]),
                                           certainty=cert))
    if orphan:
        r.findings.append(ANALYZER.finding("pmis_outside_exits", f"{orphan} LVTPC injections with no PMI exit since "
                                           "the previous entry: the overflow arrived while the vCPU thread was in "
                                           "the host (or its exit was not recognised)", orphan))
    if vpmi is not None and f5 > vpmi:
        r.findings.append(ANALYZER.finding("vpmi_mismatch", f"{f5} 0xF5 exits but the host counted {vpmi} VPMI "
                                           "interrupts over the capture", f5))
    return r


def _delivery(td: TraceData, pe: pl.DataFrame) -> dict:
    """Overflow -> LVTPC injection latency: from probes when recorded, else from the PMI exits."""
    deliver, _ = P.probe_rows(td, K.FN_DELIVER_PMI)
    over, f = P.probe_rows(td, (K.FN_PERF_OVERFLOW, K.FN_MEDIATED_PMI))
    if deliver is None or over is None:
        lat = pe["to_injection_ns"].drop_nulls()
        return {"source": "inferred", "from": "PMI exit", "pairs": int(lat.len()), "p50_ns": lat.median(),
                "p99_ns": lat.quantile(0.99, "nearest"), "max_ns": lat.max()}
    d = deliver.select(pl.col("ts_ns").alias("d_ts"), "source", "pid").sort("d_ts")
    d = d.with_columns(pl.col("d_ts").shift(1).over(["source", "pid"]).alias("prev_d"))
    o = over.select(pl.col("ts_ns").alias("o_ts"), "source", "pid").sort("o_ts")
    # the first overflow after the previous injection: as-of forward from the previous injection
    j = d.with_columns(pl.col("prev_d").fill_null(-1).alias("_from")).sort("_from") \
        .join_asof(o, left_on="_from", right_on="o_ts", by=["source", "pid"], strategy="forward",
                   allow_exact_matches=False)
    j = j.filter(pl.col("o_ts").is_not_null() & (pl.col("o_ts") <= pl.col("d_ts")))
    lat = (j["d_ts"] - j["o_ts"])
    return {"source": "probes", "from": f, "overflows": over.height, "injections": deliver.height,
            "pairs": int(lat.len()), "p50_ns": lat.median(), "p99_ns": lat.quantile(0.99, "nearest"),
            "max_ns": lat.max()}


def _vpmi_delta(td: TraceData) -> int | None:
    """Mediated PMIs the host counted during the capture (/proc/interrupts VPMI, after - before)."""
    host = td.meta.get("host") or {}
    d = (host.get("interrupts_delta") or {}).get("VPMI")
    return int(d) if d is not None else None


def render(r: Result) -> list[str]:
    if not r.computable:
        return []
    s = r.summary
    out = [f"  {s['pmi_exits']} guest-PMI exits {s['by_path']} ({s['by_certainty']}); {s['injections']} LVTPC "
           f"injections, {'-' if s['injections_without_pmi_exit'] is None else s['injections_without_pmi_exit']} "
           f"without a PMI exit; exit->entry p50 {fmt_ns(s['to_entry_p50_ns'])}, p99 {fmt_ns(s['to_entry_p99_ns'])}"]
    d = s["delivery"]
    out.append(f"  overflow -> LVTPC injection ({d['source']}, from {d['from']}): {d['pairs']} PMIs, p50 "
               f"{fmt_ns(d['p50_ns'])}, p99 {fmt_ns(d['p99_ns'])}, max {fmt_ns(d['max_ns'])}")
    if s["vpmi_delta"] is not None:
        out.append(f"  0xF5 exits {s['f5_exits']} vs host VPMI interrupts {s['vpmi_delta']}")
    return out + text_table(s["per_vcpu"], [("pid", "vcpu thread", 11), ("path", "path", 15), ("pmi_exits", "PMIs", 6),
                                            ("injected", "injected", 8), ("lvtpc", "LVTPC", 10),
                                            ("to_injection_p50_ns", "->inject", 10), ("to_entry_p50_ns", "->entry", 10),
                                            ("to_entry_max_ns", "max", 10)])


ANALYZER = Analyzer("pmi", "guest PMI delivery: PMI exits, LVTPC injection latency per vCPU, VPMI count", RULE,
                    analyze, render, requires=REQUIRES,
                    optional=("kvm_entry", "nmi_handler", "kvm_apic_accept_irq", "kvm_msr", "host", "kvm-pmu"),
                    findings=KINDS, order=55,
                    limits=(
                    "SVM interrupt exits carry no vector, so mediated PMIs on SVM are recognised only by the LVTPC "
                    "injection after them (candidates); kvm_entry's intr_info exists from 6.14; a fixed-vector LVTPC "
                    "(Windows) is known from the guest's LVTPC writes or inferred; the VPMI comparison needs the "
                    "before/after snapshot of `vpmutrace record`."))
