"""The trace replayed against the reference model of its design: where it does what the design
forbids.

Rules (section of docs/design.md in brackets), applied for the design the context established (design
analyzer); with an unknown design nothing is checked, since any divergence would be an artefact
of a guessed design. A divergence is a fact only when every input it rests on is one: the design
(host snapshot or ``--model``), the guest and host PMU shapes and the vendor where the rule uses
them, and an exact rule; otherwise a candidate (timing pairing, signature design, guessed shape).
  mediated:
    pmu_msr_exit_passthrough  kvm_msr on an MSR the design passes through for this guest's PMU
                              shape, without #GP (vmx/svm_recalc_pmu_msr_intercepts())     [§1.3]
    rdpmc_exit_passthrough    RDPMC exits although kvm_need_rdpmc_intercept() is false      [§1.4]
    perf_nmi_exit             an NMI exit perf_event_nmi_handler claimed (handled >= 1): perf
                              returns NMI_DONE while the guest LVTPC is loaded, and no host
                              include-guest event can exist (candidate: pairs by timing)   [§2.3, §3.1]
    pmi_via_nmi_exit          a guest PMI injected after an NMI exit instead of a 0xF5 exit  [§3.1, §3.2]
  emulated:
    mediated_pmi_vector       external-interrupt exits on 0xF5, the mediated PMI vector     [§3.1]
  none (no vPMU):
    guest_pmi                 guest PMIs injected although the guest has no PMU             [§3.5]
Each divergence: rule, count, first timestamp, an example row, its certainty. Configuration that
forbids the design (the perf NMI watchdog, KVM's refusal in dmesg) is reported by the watchdog and
config_checks analyzers, not here.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ts, rule_of, weakest
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.msr_access import classify
from vpmutrace.errors import plural
from vpmutrace.model.design import EMULATED, MEDIATED, NO_VPMU, PASS, rdpmc_intercepted
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
KINDS = (FindingKind("divergence", "high", "fact", "the trace does what its vPMU design forbids"),
         FindingKind("divergence_candidate", "medium", "candidate",
                     "the trace may do what its vPMU design forbids (timing or inferred design)"))


def _div(rule: str, df: pl.DataFrame, section: str, explain: str, certainty: str) -> dict[str, Any] | None:
    if df.height == 0:
        return None
    first = df.sort("ts_ns").row(0, named=True)
    example = {k: _shown(k, v) for k, v in first.items() if v is not None and not k.startswith("_")}
    return {"rule": rule, "section": section, "count": df.height, "first_ts_ns": int(first["ts_ns"]),
            "example": example, "explain": explain, "certainty": certainty}


_HEX = ("intr_info", "rip", "msr", "requests", "value", "info1", "info2", "error_code", "handler_addr")


def _shown(key: str, v: object) -> object:
    """An example row's value as a KVM engineer reads it: registers and addresses in hex."""
    if isinstance(v, int) and not isinstance(v, bool) and any(h in key for h in _HEX):
        return hex(v)
    return v if isinstance(v, int | float | bool) else str(v)


def divergences(td: TraceData, cfg: Config) -> tuple[list[dict], list[str]]:
    out: list[dict | None] = []
    unchecked: list[str] = []
    design = cfg.model
    exact = weakest(cfg.design.certainty)
    shape = weakest(cfg.design.certainty, cfg.guest_pmu.certainty, cfg.vendor.certainty)
    shapes = weakest(shape, cfg.host_pmu.certainty)
    # the exits read below (RDPMC, NMI and 0xF5 exits), not the table
    ex = P.exits_where(td, P.rdpmc_exit() | P.any_nmi_exit() | P.mediated_pmi_exit()) if td.has("kvm_exit") else None
    if design == MEDIATED:
        if td.has("kvm_msr"):
            pmu = classify(td, cfg)
            out.append(_div("pmu_msr_exit_passthrough", pmu.filter(pl.col("mediated") == PASS), "§1.3",
                            "a guest access to a PMU MSR the design passes through for this guest was handled by KVM",
                            shape))
            if (pmu["mediated"] == "unknown").any():
                unchecked.append("pmu_msr_exit_passthrough for MSRs whose verdict needs the guest PMU shape")
        else:
            unchecked.append("pmu_msr_exit_passthrough (needs kvm:kvm_msr)")
        if ex is not None:
            rd = rdpmc_intercepted(MEDIATED, cfg.setup)
            if rd is False:
                out.append(_div("rdpmc_exit_passthrough", ex.filter(P.rdpmc_exit()), "§1.4",
                                "RDPMC exited although the guest sees every host counter at full width", shapes))
            elif rd is None:
                unchecked.append("rdpmc_exit_passthrough (needs the guest and host PMU shapes)")
            if td.has("nmi_handler"):
                pairs = P.pair_nmi_exits(td, ex, cfg.nmi_order.order, cfg.options.nmi_pair_ns)
                claimed = pairs.filter(pl.col("handled") >= 1)
                out.append(_div("perf_nmi_exit", claimed, "§2.3, §3.1",
                                "perf claimed an NMI that exited the guest: a host event counted guest time",
                                "candidate"))
            else:
                unchecked.append("perf_nmi_exit (needs nmi:nmi_handler)")
            if td.has("kvm_apic_accept_irq"):
                cls = P.classify_nmi_exits(td, ex, cfg.nmi_order.order, cfg.options.nmi_pair_ns)
                out.append(_div("pmi_via_nmi_exit", cls.filter(pl.col("class") == P.GUEST_PMI), "§3.1, §3.2",
                                "guest PMI delivered through an NMI exit, not a 0xF5 interrupt exit", "candidate"))
            else:
                unchecked.append("pmi_via_nmi_exit (needs kvm:kvm_apic_accept_irq)")
        else:
            unchecked += ["rdpmc_exit_passthrough", "perf_nmi_exit", "pmi_via_nmi_exit"]
    elif design == EMULATED:
        if ex is not None:
            out.append(_div("mediated_pmi_vector", ex.filter(P.mediated_pmi_exit()), "§3.1",
                            "interrupt exits on the mediated PMI vector 0xF5",
                            exact if (cfg.kernel or (0, 0)) >= (7, 0) else "candidate"))
        else:
            unchecked.append("mediated_pmi_vector (needs kvm:kvm_exit)")
    elif design == NO_VPMU:
        if td.has("kvm_apic_accept_irq") and td.has("kvm_exit"):
            out.append(_div("guest_pmi", P.pmi_injections(td), "§3.5",
                            "LVTPC injections although the guest has no PMU", "candidate"))
    else:
        unchecked.append("every rule: the design is unknown (give --model, or record with a host snapshot)")
    return [d for d in out if d is not None], unchecked


def analyze(td: TraceData, cfg: Config) -> Result:
    divs, unchecked = divergences(td, cfg)
    summary = {"model": cfg.model, "design_source": cfg.design.source, "divergences": divs,
               "divergent_events": sum(d["count"] for d in divs), "rules_not_checked": unchecked}
    r = Result("diff", summary=summary, rule=RULE)
    for d in divs:
        kind = "divergence" if d["certainty"] == "fact" else "divergence_candidate"
        r.findings.append(ANALYZER.finding(kind, f"{d['rule']} (design {d['section']}): {plural(d['count'], 'event')} "
                                           f"diverge{'s' if d['count'] == 1 else ''} from the {cfg.model} design - "
                                           f"{d['explain']}", d["count"], d["first_ts_ns"], [str(d["example"])[:300]]))
    return r


def render(r: Result) -> list[str]:
    s = r.summary
    n = len(s["divergences"])
    out = [f"  design {s['model']} ({s['design_source']}): {plural(n, 'rule')} {'diverges' if n == 1 else 'diverge'}, "
           f"{plural(s['divergent_events'], 'event')}"]
    for d in s["divergences"]:
        out.append(f"  [design {d['section']}] {d['rule']} ({d['certainty']}): {d['count']} (first at "
                   f"{fmt_ts(d['first_ts_ns'])}) - {d['explain']}")
    out += [f"  not checked: {u}" for u in s["rules_not_checked"]]
    return out


ANALYZER = Analyzer("diff", "divergences of the trace from its vPMU design's reference model", RULE, analyze, render,
                    optional=("kvm_exit", "kvm_msr", "nmi_handler", "kvm_apic_accept_irq", "host"), findings=KINDS,
                    order=80,
                    limits=(
                    "the design must be known (snapshot or --model); rules that pair an NMI with its exit rest "
                    "on timing "
                    "and are candidates."))
