"""Skid: host perf samples and PMIs that a guest overflow may have charged to the host.

Rule (design §3.1, §3.5): perf decides whether a sample belongs to the guest from
perf_guest_state() -> kvm_guest_state() -> kvm_arch_pmi_in_guest(), which is true only while
KVM handles an interrupt taken from the guest (kvm_before_interrupt(); since 6.9 only an NMI:
812d432373f6), and then records the guest RIP with a guest cpumode (perf_arch_misc_flags()).
An overflow of a host event that counts guest execution and skids past the VM-exit, outside
that window, is recorded as a host sample in KVM's exit path. So:
- mediated design: host events exclude the guest (include-guest events are refused while a
  mediated VM exists) and guest PMIs arrive on 0xF5, which perf does not handle: host-side
  misattribution cannot happen (fact); the analysis only checks for its premise;
- emulated or unknown design: only host sampling that includes the guest can be misattributed
  (perf.data events with exclude_guest=0). A host-mode sample whose symbol is in KVM's VM-exit
  path (vmx_vmexit, __vmx_vcpu_run, vmx_vcpu_enter_exit, the NMI trampolines after an NMI exit,
  __svm_vcpu_run, svm_vcpu_enter_exit: KVM_EXIT_PATH) is a candidate skidded guest overflow;
  without symbols, a host-mode sample within the skid window after a VM-exit of its CPU is a weaker candidate.
  Samples with an exact IP (PEBS) have no skid. Perf-claimed NMIs (nmi:nmi_handler) are classed
  the same way: paired with an NMI exit (the window in which perf attributes to the guest),
  followed by the guest's LVTPC injection before the next entry (a guest counter's overflow that
  KVM delivered: correct), within the window after another exit (candidate skid to host), within
  the window before an entry (ambiguous), or elsewhere (host); only when a host event may count
  guest execution (the perf NMI watchdog per the snapshot, or a recorded include-guest event, or
  nothing known), since otherwise no host event can overflow in the guest. Every class here is
  timing evidence: candidates, never facts.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, missing, rule_of
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.windows import guest_windows
from vpmutrace.model.design import MEDIATED
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
# the code right after VM-exit, where a skidded PMI lands, as kallsyms names it from 5.x to 6.18:
# arch/x86/kvm/vmx/vmenter.S (__vmx_vcpu_run and its vmx_vmexit label; the NMI trampolines
# vmx_do_interrupt_nmi_irqoff up to 6.1, vmx_do_nmi_irqoff from 6.2, vmx_do_fred_nmi_irqoff with FRED),
# vmx.c (vmx_vcpu_enter_exit, vmx_spec_ctrl_restore_host from 5.19, handle_exception_nmi_irqoff before
# NMIs moved into the noinstr vmx_handle_nmi), svm/vmenter.S (__svm_vcpu_run, __svm_sev_es_vcpu_run) and
# svm.c (svm_vcpu_enter_exit); the large run-loop functions around them (vcpu_enter_guest, vmx_vcpu_run,
# svm_vcpu_run) hold legitimate host time and are left out
KVM_EXIT_PATH = ("vmx_vmexit", "__vmx_vcpu_run", "vmx_vcpu_enter_exit", "vmx_spec_ctrl_restore_host",
                 "vmx_do_interrupt_nmi_irqoff", "vmx_do_nmi_irqoff", "vmx_do_fred_nmi_irqoff",
                 "handle_exception_nmi_irqoff", "vmx_handle_nmi", "__svm_vcpu_run", "__svm_sev_es_vcpu_run",
                 "svm_vcpu_enter_exit")
# what follows a function's name in a symbol: perf's +0x offset, GCC's clone suffixes (.isra.0, .cold, ...)
SYM_SUFFIX = r"(\+0x[0-9a-f]+)?$"
CLONE_SUFFIX = r"(\.(isra|constprop|part|cold|lto_priv|llvm)(\.[0-9]+)?)+$"
NMI_CLASSES = ("in_nmi_exit", "delivered_to_guest", "after_exit", "before_entry", "host")
SAMPLE_CLASSES = ("guest", "exact_ip", "kvm_exit_path", "after_exit", "host")
KINDS = (FindingKind("skid_candidates", "medium", "candidate",
                     "host samples/PMIs that may be skidded guest overflows charged to the host"),
         FindingKind("include_guest_under_mediated", "medium", "fact",
                     "host sampling that includes the guest although the design is mediated"))


def _include_guest_events(td: TraceData) -> list[str] | None:
    """Sampling events of the recording that count guest execution (exclude_guest=0)."""
    out, known = [], False
    for i in td.meta.get("inputs", []):
        if i.get("events") is None:
            continue
        known = True
        out += [e["name"] for e in i["events"] if e.get("type") in (0, 4) and not e.get("exclude_guest")
                and not str(e.get("name", "")).startswith("dummy")]
    return out if known else None


def classify_nmis(td: TraceData, cfg: Config) -> pl.DataFrame:
    """Perf-claimed NMIs with a timing class (NMI_CLASSES); needs kvm_exit."""
    w = cfg.options.skid_window_ns
    ex = P.exits(td)
    nmi = P.perf_nmis(td).filter(pl.col("handled") >= 1).select("nmi_row", "ts_ns", "cpu", "pid",
                                                                 pl.col("source").cast(pl.String))
    paired = P.pair_nmi_exits(td, ex, cfg.nmi_order.order, cfg.options.nmi_pair_ns)["nmi_row"].drop_nulls()
    other = ex.filter(~P.nmi_exit() & ~P.nmi_exit_unidentified()).select(pl.col("ts_ns").alias("exit_ts"), "cpu") \
        .sort("exit_ts")
    en = td.scan("kvm_entry").select(pl.col("ts_ns").alias("entry_ts"), "cpu").sort("entry_ts").collect()
    j = nmi.sort("ts_ns").join_asof(other, left_on="ts_ns", right_on="exit_ts", by="cpu", strategy="backward")
    j = j.join_asof(en, left_on="ts_ns", right_on="entry_ts", by="cpu", strategy="forward")
    inj = P.pmi_injections(td)
    if inj.height and td.has("kvm_entry"):
        d = P.next_event_before_entry(j.select("nmi_row", "ts_ns", "source", "pid"), inj, P.entries(td), "inj_ts")
        j = j.join(d.select("nmi_row", "inj_ts"), on="nmi_row", how="left")
    else:
        j = j.with_columns(pl.lit(None, pl.Int64).alias("inj_ts"))
    cls = (pl.when(pl.col("nmi_row").is_in(paired.implode())).then(pl.lit("in_nmi_exit"))
           .when(pl.col("inj_ts").is_not_null()).then(pl.lit("delivered_to_guest"))
           .when(pl.col("exit_ts").is_not_null() & (pl.col("ts_ns") - pl.col("exit_ts") <= w))
           .then(pl.lit("after_exit"))
           .when(pl.col("entry_ts").is_not_null() & (pl.col("entry_ts") - pl.col("ts_ns") <= w))
           .then(pl.lit("before_entry")).otherwise(pl.lit("host")))
    return j.with_columns(cls.alias("class")).sort("nmi_row")


def host_counts_guest(td: TraceData, cfg: Config, include_guest: list[str] | None) -> bool | None:
    """Can a host perf event count guest execution? The perf watchdog (snapshot), or a recorded event
    without exclude_guest; None when neither is known."""
    wd = cfg.watchdog.value or {}
    watchdog = None if wd.get("enabled") is None else bool(wd.get("enabled")) and wd.get("kind") != "buddy"
    if watchdog or include_guest:
        return True
    if watchdog is False and include_guest is not None:
        return False
    return None


def classify_samples(td: TraceData, cfg: Config, events: list[str]) -> pl.DataFrame:
    """Samples of include-guest events with a class (SAMPLE_CLASSES)."""
    w = cfg.options.skid_window_ns
    s = td.scan("samples").filter(pl.col("event").cast(pl.String).is_in(events) & pl.col("cpu").is_not_null()
                                  & pl.col("cpumode").is_not_null()) \
        .select("ts_ns", "cpu", "pid", pl.col("event").cast(pl.String), pl.col("cpumode").cast(pl.String),
                pl.col("sym").cast(pl.String), "exact_ip").with_row_index("s").collect()
    win = guest_windows(td).select("cpu", pl.col("end_ns").alias("exit_ts")).sort("exit_ts") \
        if td.has("kvm_exit") and td.has("kvm_entry") else None
    if win is not None:
        s = s.sort("ts_ns").join_asof(win, left_on="ts_ns", right_on="exit_ts", by="cpu", strategy="backward")
    else:
        s = s.with_columns(pl.lit(None, pl.Int64).alias("exit_ts"))
    sym = pl.col("sym").fill_null("").str.replace(SYM_SUFFIX, "").str.replace(CLONE_SUFFIX, "")
    cls = (pl.when(pl.col("cpumode").str.starts_with("guest")).then(pl.lit("guest"))
           .when(pl.col("exact_ip").fill_null(False)).then(pl.lit("exact_ip"))
           .when(sym.is_in(list(KVM_EXIT_PATH))).then(pl.lit("kvm_exit_path"))
           .when(pl.col("sym").is_null() & pl.col("exit_ts").is_not_null() & (pl.col("ts_ns") - pl.col("exit_ts") <= w))
           .then(pl.lit("after_exit")).otherwise(pl.lit("host")))
    return s.with_columns(cls.alias("class")).sort("s").drop("s")


def analyze(td: TraceData, cfg: Config) -> Result:
    inc = _include_guest_events(td)
    summary: dict = {"design": cfg.model, "window_ns": cfg.options.skid_window_ns, "include_guest_events": inc}
    r = Result("skid", summary=summary, rule=RULE)
    if cfg.model == MEDIATED:
        summary["applicable"] = False
        summary["why"] = ("mediated design: host events exclude the guest and guest PMIs arrive on 0xF5, so no guest "
                          "overflow is charged to the host")
        if inc:
            r.findings.append(ANALYZER.finding("include_guest_under_mediated", f"the recording sampled {inc} including "
                                               "the guest, which perf refuses (-EOPNOTSUPP) while a mediated VM "
                                               "exists: "
                                               "the design or the recording is not what it seems"))
        return r
    summary["applicable"] = True
    rows: dict[str, pl.DataFrame] = {}
    counts_guest = host_counts_guest(td, cfg, inc)
    summary["host_event_counts_guest"] = counts_guest
    if counts_guest is False:
        summary["nmi_classes"] = None
        summary["nmi_needs"] = ["a host event that counts guest execution: the perf watchdog is off and the "
                                "recording excludes the guest, so no host overflow can come from guest time"]
    elif td.has("nmi_handler") and td.has("kvm_exit") and td.has("kvm_entry"):
        c = classify_nmis(td, cfg)
        summary["perf_nmis"] = c.height
        summary["nmi_classes"] = {k: 0 for k in NMI_CLASSES} | dict(c.group_by("class").len().rows())
        rows["pmi_attribution"] = c
    else:
        summary["nmi_classes"] = None
        summary["nmi_needs"] = missing(td, ("nmi_handler", "kvm_exit", "kvm_entry"))
    if td.has("samples") and inc:
        sc = classify_samples(td, cfg, inc)
        summary["samples"] = sc.height
        summary["sample_classes"] = {k: 0 for k in SAMPLE_CLASSES} | dict(sc.group_by("class").len().rows())
        summary["samples_with_symbols"] = int(sc["sym"].is_not_null().sum())
        rows["sample_attribution"] = sc
    else:
        summary["sample_classes"] = None
        summary["samples_why"] = ("no samples of events that include the guest" if inc is not None
                                  else "the input does not say which events include the guest")
    r.rows = rows
    n = (summary["nmi_classes"] or {}).get("after_exit", 0)
    sc = summary["sample_classes"] or {}
    m = sc.get("kvm_exit_path", 0) + sc.get("after_exit", 0)
    if n or m:
        r.findings.append(ANALYZER.finding("skid_candidates", f"{n} perf NMIs within "
                                                              f"{fmt_ns(summary['window_ns'])} after "
                                           f"a VM-exit and {m} host samples in KVM's exit path (or just after an exit) "
                                           "may be guest overflows charged to the host", n + m))
    if not rows:
        r.needs = ["nmi:nmi_handler with kvm:kvm_exit/kvm_entry, or perf samples of events that include the guest"]
    return r


def render(r: Result) -> list[str]:
    s = r.summary
    if not s.get("applicable"):
        return [f"  not applicable: {s.get('why')}"]
    out = []
    if s.get("nmi_classes"):
        out.append(f"  {s['perf_nmis']} perf NMIs: {s['nmi_classes']} (window {fmt_ns(s['window_ns'])}; candidates)")
    if s.get("sample_classes"):
        out.append(f"  {s['samples']} samples of {s['include_guest_events']} ({s['samples_with_symbols']} with "
                   f"symbols): "
                   f"{s['sample_classes']}")
    elif s.get("samples_why"):
        out.append(f"  samples: {s['samples_why']}")
    return out


ANALYZER = Analyzer("skid", "host samples/PMIs a guest overflow may have charged to the host (candidates)", RULE,
                    analyze, render, optional=("nmi_handler", "kvm_exit", "kvm_entry", "samples"), findings=KINDS,
                    order=65,
                    limits=(
                    "timing and symbols only: the trace cannot show where a PMI was raised. Symbols come from the "
                    "samples' `sym` column (unresolved samples fall back to timing). kvm_arch_pmi_in_guest() "
                    "covers only "
                    "NMIs since 6.9 and any interrupt before, so on older kernels host samples in IRQ exits were also "
                    "charged to the guest."))
