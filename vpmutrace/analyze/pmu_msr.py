"""PMU MSR traffic KVM handled: by MSR and kind, rate and exit latency, value-changing writes, RDPMC
exits, and what the mediated design would do with each access for this guest.

Rule: every kvm:kvm_msr row on an MSR of the PMU catalog (model/msrs.py, design §1.1) is one
guest access KVM handled (trace_kvm_msr_{read,write} in kvm_{get,set}_msr paths; §1.6: the
emulated design traps all of them). Each access belongs to the MSR exit of its vCPU thread
that precedes it (before that thread's next entry); that exit's handling time is the
access's latency. A write changes the value when it differs from the last value this vCPU
wrote or read for that MSR (unknown for the first one seen): the emulated vPMU reprograms a
counter only then (intel_pmu_set_msr()/amd_pmu_set_msr(): ``if (data != pmc->eventsel)``,
design §3.5). The mediated verdict uses the guest's own PMU shape (guest_pmu analyzer;
§1.3): an access that raised #GP never passes through, a guest with PMU version 0 passes
nothing, and a verdict that depends on an unknown shape is "unknown". RDPMC exits (VMX 15, SVM
0x6F) are counted with their rate and latency, and the mediated RDPMC verdict of §1.4.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, missing, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.msr_access import classify, with_exit_latency
from vpmutrace.analyze.windows import exit_intervals_where
from vpmutrace.model.design import MEDIATED, PASS, rdpmc_intercepted, verdict
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("kvm_msr",)
KINDS = (FindingKind("pmu_msr_exits_removable", "info", "fact",
                     "PMU MSR exits the mediated design would not take for this guest"),
         FindingKind("pmu_msr_gp", "low", "fact", "guest PMU MSR accesses that raised #GP"))


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return Result("pmu_msr", needs=needs, rule=RULE)
    pmu = with_exit_latency(td, classify(td, cfg))
    span = td.meta.get("time_span_ns") or [0, 0]
    # rates need seconds: none on a trace whose clock stayed in ticks
    span_s = max(1e-9, (span[1] - span[0]) / 1e9) if td.meta.get("time_unit", "ns") == "ns" else None
    lat = pl.col("exit_ns")
    by_msr = pmu.group_by("msr", "name", "kind", "vendor").agg(
        (~pl.col("write")).sum().alias("reads"), pl.col("write").sum().alias("writes"),
        pl.col("gp").fill_null(False).sum().alias("gp"),
        (pl.col("changed") == True).sum().alias("writes_changed"),  # noqa: E712 (null-aware)
        (pl.col("changed") == False).sum().alias("writes_unchanged"),  # noqa: E712
        (pl.col("mediated") == PASS).sum().alias("would_pass"),
        (pl.col("mediated") == "unknown").sum().alias("verdict_unknown"),
        pl.col("mediated").unique().sort().str.join("/").alias("mediated"),
        lat.mean().alias("exit_mean_ns"), lat.median().alias("exit_p50_ns"),
        lat.filter(pl.col("changed") == True).mean().alias("exit_changed_mean_ns"),  # noqa: E712
        lat.filter(pl.col("changed") == False).mean().alias("exit_unchanged_mean_ns"),  # noqa: E712
    ).with_columns(((pl.col("reads") + pl.col("writes")) / span_s if span_s else pl.lit(None, pl.Float64))
                   .alias("per_s")).sort("msr")
    by_kind = dict(pmu.group_by("kind").len().sort("kind").rows())
    rd = P.exits_where(td, P.rdpmc_exit()) if td.has("kvm_exit") else None
    rd_lat = None
    if rd is not None and rd.height and td.has("kvm_entry"):
        iv = exit_intervals_where(td, P.rdpmc_exit())
        rd_lat = {"mean_ns": iv["handling_ns"].mean(), "p50_ns": iv["handling_ns"].median()}
    would = int((pmu["mediated"] == PASS).sum())
    unknown = int((pmu["mediated"] == "unknown").sum())
    summary = {
        "msr_accesses_total": td.row_counts().get("kvm_msr", 0), "pmu_msr_accesses": pmu.height,
        "pmu_msr_gp": int(pmu["gp"].fill_null(False).sum()), "by_kind": by_kind,
        "by_msr": [{**r, "msr_hex": f"{r['msr']:#x}"} for r in by_msr.to_dicts()],
        "accesses_mediated_would_pass_through": would if not unknown else None,
        "accesses_mediated_verdict_unknown": unknown,
        "writes_changed": int((pmu["changed"] == True).sum()),  # noqa: E712
        "writes_unchanged": int((pmu["changed"] == False).sum()),  # noqa: E712
        "rdpmc_exits": rd.height if rd is not None else None,
        "rdpmc_per_s": round(rd.height / span_s, 3) if rd is not None and span_s else None,
        "rdpmc_exit_latency": rd_lat,
        "rdpmc_mediated": verdict(rdpmc_intercepted(MEDIATED, cfg.setup)),
        "span_s": span_s,
    }
    r = Result("pmu_msr", summary=summary, rows={"pmu_msr_accesses": pmu}, rule=RULE)
    if would:
        r.findings.append(ANALYZER.finding("pmu_msr_exits_removable", f"{would} of {pmu.height} PMU MSR accesses "
                                           "exited although the mediated design passes them through for this guest",
                                           would))
    if summary["pmu_msr_gp"]:
        g = pmu.filter(pl.col("gp").fill_null(False))
        names = g.group_by("name").len().sort(["len", "name"], descending=[True, False]).rows()
        r.findings.append(ANALYZER.finding("pmu_msr_gp", f"{g.height} guest PMU MSR accesses raised #GP (MSRs this "
                                           "guest's PMU does not have)", g.height, int(g["ts_ns"].min()),
                                           [f"{n}: {c}" for n, c in names[:5]]))
    return r


def render(r: Result) -> list[str]:
    s = r.summary
    if not r.computable:
        return []
    would = s["accesses_mediated_would_pass_through"]
    out = [f"  {s['pmu_msr_accesses']} PMU MSR accesses handled by KVM ({s['pmu_msr_gp']} #GP); writes changing "
           f"the value {s['writes_changed']}, unchanged {s['writes_unchanged']}; "
           f"{'-' if would is None else would} would pass through under the mediated design"
           + (f" ({s['accesses_mediated_verdict_unknown']} unknown: guest PMU shape)"
              if s["accesses_mediated_verdict_unknown"] else ""),
           f"  RDPMC exits {'-' if s['rdpmc_exits'] is None else s['rdpmc_exits']} "
           f"({'-' if s['rdpmc_per_s'] is None else s['rdpmc_per_s']}/s; mediated: {s['rdpmc_mediated']})"]
    rows = [{**r, "label": f"{r['msr_hex']:<10} {r['name']}"} for r in s["by_msr"]]  # hex index beside the name
    return out + text_table(rows, [("label", "MSR", 40), ("reads", "reads", 7),
                                          ("writes", "writes", 7), ("writes_changed", "changed", 8), ("gp", "#GP", 5),
                                          ("per_s", "per s", 9), ("exit_mean_ns", "exit avg", 10),
                                          ("mediated", "mediated", 13)]) + \
        ([f"  exit latency: {fmt_ns(s['rdpmc_exit_latency']['mean_ns'])} avg RDPMC"] if s["rdpmc_exit_latency"] else [])


ANALYZER = Analyzer("pmu_msr", "PMU MSR traffic: by MSR, rate, exit latency, value-changing writes, mediated verdict",
                    RULE, analyze, render, requires=REQUIRES, optional=("kvm_exit", "kvm_entry", "kvm_cpuid"),
                    findings=KINDS, order=40, needs_ns=False,
                    limits=(
                    "only accesses KVM intercepts are traced: under the mediated design guest counter accesses "
                    "and RDPMCs "
                    "that pass through are invisible, and under both designs RDPMC exits carry no counter value."))
