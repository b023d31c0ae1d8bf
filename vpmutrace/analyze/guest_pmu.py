"""Guest PMU shape: what the guest was told its PMU is, and what that means for pass-through.

Rule (design §1.3, §1.4, §3.5): what the mediated design passes through depends on the
guest's PMU, not the host's. The shape is read from the answers KVM gave the guest's CPUID
(kvm:kvm_cpuid, the last answer per leaf and vCPU thread): Intel leaf 0xA (EAX version [7:0],
GP counters [15:8], width [23:16]; EDX fixed counters [4:0], width [12:5]) and PERF_CAPABILITIES
reads (0x345, FW_WRITE bit 13); AMD leaves 0x80000001 (ECX[23] PerfCtrExtCore) and 0x80000022
(EAX[0] PerfMonV2, EBX[3:0] counters). Else from the VMM command line of a host snapshot
(``-cpu ...,pmu=off``), else from ``--guest-gp/--guest-fixed``, else unknown. A guest with PMU
version 0 has no vPMU: kvm_vcpu_has_mediated_pmu() is false, every PMU MSR access exits or
#GPs, and nothing passes through. Under the mediated design, the global MSRs pass through only
when the guest sees every host counter and has PERF_GLOBAL_CTRL
(kvm_need_perf_global_ctrl_intercept()), RDPMC only when counts and widths equal the host's
(kvm_need_rdpmc_intercept()).
"""

from __future__ import annotations

from vpmutrace.analyze.base import Analyzer, FindingKind, Result, rule_of
from vpmutrace.analyze.context import Config
from vpmutrace.model.design import MEDIATED, PmuShape, global_msrs_intercepted, rdpmc_intercepted, verdict
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
KINDS = (FindingKind("guest_no_pmu", "info", "fact", "the guest has no PMU (version 0)"),
         FindingKind("guest_pmu_unknown", "info", "fact", "the guest PMU shape is unknown"),
         FindingKind("guest_pmu_partial", "info", "fact",
                     "the guest sees fewer counters than the host: global MSRs and RDPMC keep exiting under "
                     "the mediated design"))


def _shape_text(s: PmuShape | None) -> str:
    if s is None:
        return "unknown"
    if s.version == 0:
        return f"{s.vendor}, no PMU (version 0)"
    fixed = f", {s.nr_fixed} fixed x {s.fixed_width} bits" if s.vendor == "intel" else ""
    return f"{s.vendor} v{s.version}, {s.nr_gp} GP x {s.gp_width} bits{fixed}"


def analyze(td: TraceData, cfg: Config) -> Result:
    g = cfg.guest_pmu
    setup = cfg.setup
    host = setup.host
    threads = [{"source": k[0], "pid": k[1], "shape": v.to_json()} for k, v in sorted(cfg.guest_pmu_by_thread.items())]
    summary = {"guest": g.to_json(), "guest_text": _shape_text(g.value),
               "host": host.to_json() if host else None, "host_text": _shape_text(host),
               "host_source": cfg.host_pmu.source, "per_thread": threads,
               "mediated_global_msrs": verdict(global_msrs_intercepted(setup)) if g.value else "unknown",
               "mediated_rdpmc": verdict(rdpmc_intercepted(MEDIATED, setup)) if g.value else "unknown"}
    r = Result("guest_pmu", summary=summary, rule=RULE)
    if isinstance(g.value, PmuShape) and g.value.version == 0:
        r.findings.append(ANALYZER.finding("guest_no_pmu", "the guest has no PMU: no PMU MSR access can pass through "
                                           "under any design", evidence=list(g.evidence)))
    elif g.value is None and any(td.has(t) for t in ("kvm_exit", "kvm_msr", "kvm_cpuid")):
        r.findings.append(ANALYZER.finding("guest_pmu_unknown", "guest PMU shape unknown: pass-through verdicts that "
                                           "depend on it are 'unknown'", evidence=list(g.evidence)))
    elif setup.all_counters_exposed is False:
        r.findings.append(ANALYZER.finding("guest_pmu_partial", f"guest PMU {_shape_text(g.value)} vs host "
                                           f"{_shape_text(host)}: under the mediated design GLOBAL_CTRL/STATUS and "
                                           "RDPMC stay intercepted", evidence=list(g.evidence)))
    return r


def render(r: Result) -> list[str]:
    s = r.summary
    g = s["guest"]
    lines = [f"  guest {s['guest_text']} ({g['source']}, {g['certainty']})",
             f"  host  {s['host_text']} ({s['host_source']})",
             f"  under the mediated design: global MSRs {s['mediated_global_msrs']}, RDPMC {s['mediated_rdpmc']}"]
    lines += [f"  evidence: {e}" for e in g["evidence"][:4]]
    return lines


ANALYZER = Analyzer("guest_pmu", "the guest's PMU shape and what it means for pass-through", RULE, analyze, render,
                    optional=("kvm_cpuid", "kvm_msr", "host"), findings=KINDS, order=20, needs_ns=False,
                    limits=(
                    "guests ask CPUID 0xA when their kernel boots, so a capture of a running VM usually has no "
                    "kvm_cpuid "
                    "answer; then the shape comes from --guest-gp/--guest-fixed or a `-cpu ...,pmu=off` VMM "
                    "command line, "
                    "else it is unknown. PERF_CAPABILITIES (FW_WRITE) is seen only if the guest reads it."))
