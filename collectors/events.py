"""Named event sets for `vpmutrace record`, and which of their events this kernel has.

Sets (documented in `vpmutrace record --help` and the README):
  exits     kvm_exit, kvm_entry: exit/entry pairs only, the lowest overhead
  vpmu      (default) exits plus what the vPMU analyses read: kvm_msr, kvm_inj_virq,
            kvm_apic_accept_irq, kvm_inj_exception, kvm_cpuid, kvm_pio, kvm_userspace_exit,
            nmi:nmi_handler, sched:sched_switch, irq_vectors:local_timer_entry
  host-msr  msr:read_msr, msr:write_msr, msr:rdpmc: every host MSR access and RDPMC; very
            high rate, so only when asked
  full      vpmu + host-msr + more KVM detail (kvm_emulate_insn, kvm_page_fault, kvm_eoi,
            kvm_apic, kvm_msi_set_irq, kvm_hypercall) + sched_wakeup + all irq_vectors entries
  kvm-pmu   dynamic probes (fprobe, else kprobe) on KVM's and perf's PMU functions where the kernel
            has them: mediated PMU load/put, PMIs, counter reprogramming and its result
            (collectors/probes.py); created for the capture and removed after it
"""

from __future__ import annotations

from pathlib import Path

from vpmutrace.collectors.host import Refusal

EXITS = ["kvm:kvm_exit", "kvm:kvm_entry"]
VPMU = EXITS + ["kvm:kvm_msr", "kvm:kvm_inj_virq", "kvm:kvm_apic_accept_irq", "kvm:kvm_inj_exception",
                "kvm:kvm_cpuid", "kvm:kvm_pio", "kvm:kvm_userspace_exit", "nmi:nmi_handler",
                "sched:sched_switch", "irq_vectors:local_timer_entry"]
HOST_MSR = ["msr:read_msr", "msr:write_msr", "msr:rdpmc"]
FULL = VPMU + HOST_MSR + ["kvm:kvm_emulate_insn", "kvm:kvm_page_fault", "kvm:kvm_eoi", "kvm:kvm_apic",
                          "kvm:kvm_msi_set_irq", "kvm:kvm_hypercall", "sched:sched_wakeup",
                          "irq_vectors:reschedule_entry", "irq_vectors:call_function_entry",
                          "irq_vectors:call_function_single_entry", "irq_vectors:irq_work_entry",
                          "irq_vectors:x86_platform_ipi_entry", "irq_vectors:thermal_apic_entry"]
SETS = {"exits": EXITS, "vpmu": VPMU, "host-msr": HOST_MSR, "full": FULL}
PROBE_SETS = ("kvm-pmu",)  # not tracepoints: probes made for the capture (collectors/probes.py)


def wants_probes(spec: str) -> bool:
    return any(p.strip() in PROBE_SETS for p in spec.split(","))


def expand(spec: str) -> list[str]:
    """'vpmu,host-msr,kvm:kvm_eoi' -> ordered, de-duplicated event names."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part in PROBE_SETS:
            continue
        if part in SETS:
            items = SETS[part]
        elif ":" in part:
            items = [part]
        else:
            raise Refusal(f"unknown event set {part!r} (sets: {', '.join([*SETS, *PROBE_SETS])}; "
                          "or give system:event)")
        out += [e for e in items if e not in out]
    return out


def available(events: list[str], tracefs: Path) -> tuple[list[str], list[str]]:
    """(events this kernel has, events it does not) by looking in tracefs/events."""
    have, missing = [], []
    for e in events:
        system, _, name = e.partition(":")
        (have if (tracefs / "events" / system / name / "format").exists() else missing).append(e)
    return have, missing
