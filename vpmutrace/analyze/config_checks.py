"""Host configuration checks from the snapshot: is the vPMU on, can the mediated design run here,
did KVM refuse it.

Rules (design §1.2, §2.3, §9): ``kvm.enable_pmu=N`` gives guests no PMU. The mediated vPMU
needs ``kvm_{intel,amd}.enable_mediated_pmu=Y`` (read-only, Linux 7.0+), an in-kernel LAPIC, and an
Intel PMU of version >= 4 with PERF_CAPABILITIES.FW_WRITES (intel_pmu_is_mediated_pmu_supported())
or AMD PerfMonV2 (amd_pmu_is_mediated_pmu_supported()). When perf_create_mediated_pmu() fails at
the first KVM_CREATE_VCPU, kvm_arch_vcpu_precreate() logs "Failed to enable mediated vPMU, try
disabling system wide perf events and nmi_watchdog." and the vCPU is not created. With
``kvm.enable_vmware_backdoor`` RDPMC always exits (kvm_need_rdpmc_intercept()). Each check is a
fact about the snapshot; a check whose input the snapshot lacks is listed as not checked.
"""

from __future__ import annotations

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, missing, rule_of
from vpmutrace.analyze.context import Config
from vpmutrace.model import kernel as K
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("host",)
MEDIATED_FAIL = "Failed to enable mediated vPMU"
KINDS = (FindingKind("mediated_refused", "medium", "fact", "KVM refused a mediated vPMU since boot (dmesg)"),
         FindingKind("vpmu_disabled", "info", "fact", "kvm.enable_pmu=N: guests have no PMU"),
         FindingKind("mediated_available", "info", "fact", "the host could run the mediated vPMU but does not"),
         FindingKind("mediated_unsupported", "low", "fact", "the host PMU cannot run the mediated vPMU"),
         FindingKind("rdpmc_always_exits", "info", "fact", "the VMware backdoor forces RDPMC exits"))


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return Result("config_checks", needs=needs, rule=RULE)
    host = td.meta["host"]
    kvm = host.get("kvm") or {}
    checks: list[dict] = []
    r = Result("config_checks", rule=RULE)

    def check(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    enable_pmu = (kvm.get("kvm") or {}).get("enable_pmu")
    check("kvm.enable_pmu", None if enable_pmu is None else enable_pmu == "Y", f"kvm.enable_pmu={enable_pmu}")
    if enable_pmu == "N":
        r.findings.append(ANALYZER.finding("vpmu_disabled", "kvm.enable_pmu=N: guests get no PMU (CPUID 0xA is zero)"))
    vendor_mod = "kvm_amd" if cfg.vendor.value == "amd" else "kvm_intel"
    med = (kvm.get(vendor_mod) or {}).get("enable_mediated_pmu") if vendor_mod in kvm else None
    check(f"{vendor_mod}.enable_mediated_pmu", None if med is None else med == "Y",
          f"{vendor_mod}.enable_mediated_pmu={med}" if med is not None else
          f"{vendor_mod} has no enable_mediated_pmu (kernel before 7.0)" if vendor_mod in kvm else
          f"{vendor_mod} not loaded")
    hp = cfg.host_pmu.value or {}
    shape = hp.get("shape") if isinstance(hp, dict) else None
    supported = None
    if shape is not None:
        if shape.vendor == "intel":
            fw = hp.get("full_width_writes")
            supported = shape.version >= 4 and fw is not False
            detail = f"host PMU v{shape.version}, FW_WRITES {fw if fw is not None else 'unknown'}"
        else:
            supported = shape.version >= 2
            detail = f"host PerfMonV2 {shape.version >= 2}"
        check("host PMU supports the mediated vPMU", supported, detail)
        kv = K.release_version(host.get("kernel_release"))
        if supported and med != "Y" and kv is not None and kv >= (7, 0):
            r.findings.append(ANALYZER.finding("mediated_available", f"{detail}: set "
                                                                     f"{vendor_mod}.enable_mediated_pmu=1 "
                                               "to give guests the PMU"))
        if med == "Y" and supported is False:
            r.findings.append(ANALYZER.finding("mediated_unsupported", f"enable_mediated_pmu=Y but {detail}"))
    else:
        check("host PMU supports the mediated vPMU", None, f"host PMU unknown ({', '.join(cfg.host_pmu.evidence)})")
    dmesg = host.get("dmesg") or {}
    fails = [ln for ln in dmesg.get("lines", []) if MEDIATED_FAIL in ln]
    if "lines" in dmesg:
        check("no 'Failed to enable mediated vPMU' in dmesg", not fails, f"{len(fails)} such lines")
        if fails:
            ran = ""
            if td.has("kvm_exit"):
                if P.exits_where(td, P.mediated_pmi_exit()).height:
                    ran = "; a mediated VM delivered PMIs in this trace, so the refusal concerned another VM or attempt"
            r.findings.append(ANALYZER.finding("mediated_refused", f"dmesg since boot: KVM could not create a mediated "
                                               f"vPMU {len(fails)} time(s) (a host include-guest perf event or the "
                                               f"perf NMI watchdog existed), and that vCPU was not created{ran}",
                                               len(fails), evidence=fails[:3]))
    else:
        check("no 'Failed to enable mediated vPMU' in dmesg", None, "dmesg not in the snapshot")
    backdoor = (kvm.get("kvm") or {}).get("enable_vmware_backdoor")
    if backdoor is not None:
        check("kvm.enable_vmware_backdoor off", backdoor == "N", f"kvm.enable_vmware_backdoor={backdoor}")
        if backdoor == "Y":
            r.findings.append(ANALYZER.finding("rdpmc_always_exits", "kvm.enable_vmware_backdoor=Y: RDPMC exits "
                                               "under every design"))
    r.summary = {"checks": checks, "mediated_supported": supported}
    return r


def render(r: Result) -> list[str]:
    if not r.computable:
        return []
    mark = {True: "ok ", False: "NO ", None: " ? "}
    return [f"  [{mark[c['ok']]}] {c['check']}: {c['detail']}" for c in r.summary["checks"]]


ANALYZER = Analyzer("config_checks", "host configuration: vPMU on, mediated supported, refused by KVM", RULE, analyze,
                    render, requires=REQUIRES, findings=KINDS, order=15, needs_ns=False,
                    limits=(
                    "reads only what `vpmutrace record` stored in host.json: kvm module parameters "
                    "(enable_mediated_pmu "
                    "exists from 7.0), CPUID through /dev/cpu/0/cpuid, PERF_CAPABILITIES through /dev/cpu/0/msr, dmesg "
                    "(root), /proc/interrupts before and after the capture."))
