"""vPMU design of the traced host: mediated passthrough, emulated (perf-based), none, or unknown.

Rule (design §3.5, §1.2): the design is a fact of the host: ``kvm.enable_pmu=N`` means no
vPMU; ``kvm_intel.enable_mediated_pmu``/``kvm_amd.enable_mediated_pmu`` = Y means mediated,
N (or no such parameter: kernels before 7.0) means emulated; ``--model`` overrides. Without a
host snapshot a guest whose CPUID leaf 0xA reports PMU version 0 has no vPMU, and otherwise the
trace's signatures decide, as candidates: VMX external-interrupt exits on vector 0xF5
(PERF_GUEST_MEDIATED_PMI_VECTOR, raised only by the mediated design) mean mediated; NMI exits
whose kvm_exit.requests carry KVM_REQ_PMI/KVM_REQ_PMU (set by kvm_perf_overflow() in the
NMI), or NMI exits claimed by perf_event_nmi_handler and followed by an LVTPC injection
before the next entry (the emulated PMI path, §3.3), mean emulated. Conflicting or absent
signatures leave the design unknown, and rules that depend on it say so. Also reported: the
CPU vendor, the kernel version and the NMI event order the pairing assumes (§3.4).
"""

from __future__ import annotations

from vpmutrace.analyze.base import Analyzer, FindingKind, Result, rule_of
from vpmutrace.analyze.context import Config, signatures
from vpmutrace.model.design import UNKNOWN
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
KINDS = (FindingKind("design_unknown", "info", "fact", "the vPMU design could not be determined"),
         FindingKind("design_from_signature", "info", "candidate", "the vPMU design comes from trace signatures"),
         FindingKind("design_conflict", "medium", "candidate",
                     "the trace shows signatures of a design other than the one configured"))


def analyze(td: TraceData, cfg: Config) -> Result:
    sig = signatures(td, cfg)
    d = cfg.design
    summary = {"design": d.value, "source": d.source, "certainty": d.certainty, "evidence": list(d.evidence),
               "signatures": sig, "vendor": cfg.vendor.to_json(),
               "kernel": ".".join(map(str, cfg.kernel)) if cfg.kernel else None,
               "nmi_order": {"order": cfg.nmi_order.order, "why": cfg.nmi_order.why}}
    r = Result("design", summary=summary, rule=RULE)
    if d.value == UNKNOWN:
        r.findings.append(ANALYZER.finding("design_unknown", "vPMU design unknown: " + "; ".join(d.evidence)))
    elif d.source == "trace" and d.certainty == "candidate":
        r.findings.append(ANALYZER.finding("design_from_signature", f"vPMU design {d.value} inferred from the "
                                           "trace (no host snapshot)", evidence=list(d.evidence)))
    other = {"mediated": "emulated", "emulated": "mediated"}.get(d.value or "")
    if other and d.source in ("option", "snapshot") and sig.get(other):
        r.findings.append(ANALYZER.finding("design_conflict", f"configured design {d.value} ({d.source}) but the "
                                           f"trace shows {other} signatures", evidence=sig[other]))
    return r


def render(r: Result) -> list[str]:
    s = r.summary
    v = s["vendor"]
    lines = [f"  design {s['design']} ({s['source']}, {s['certainty']}): {'; '.join(s['evidence'])}",
             f"  vendor {v['value'] or 'unknown'} ({v['source']}); kernel {s['kernel'] or 'unknown'}; "
             f"NMI order: {s['nmi_order']['why']}"]
    for d, ev in s["signatures"].items():
        for e in ev:
            lines.append(f"  {d} signature: {e}")
    return lines


ANALYZER = Analyzer("design", "which vPMU design the host ran (snapshot, signatures, or unknown)", RULE, analyze,
                    render, requires=(), optional=("host", "kvm_exit", "nmi_handler", "kvm_apic_accept_irq",
                                                   "kvm_cpuid"), findings=KINDS, order=10, needs_ns=False,
                    limits=(
                    "a fact only with a host snapshot (or --model). From the trace alone: VMX 0xF5 exits mean "
                    "mediated; "
                    "NMI exits carrying KVM_REQ_PMI (kernels 6.14+, which record requests) or followed by an LVTPC "
                    "injection mean emulated. A guest that never samples, a mediated SVM host (SVM_EXIT_INTR "
                    "carries no "
                    "vector) and a trace without kvm_exit show no signature: unknown."))
