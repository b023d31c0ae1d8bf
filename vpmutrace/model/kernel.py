"""What the host kernel does that the analyses rest on, declared once, each fact with its source.

Version-dependent behaviour is keyed on the kernel release of the trace (perf.data
HEADER_OSRELEASE, trace.dat UNAME, the host snapshot); where the release is unknown,
the analyses accept every behaviour a real kernel shows (design §3.4, §3.5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---- exit reasons (design §5.3; VMX: SDM Appendix C / arch/x86/include/uapi/asm/vmx.h,
#      SVM: arch/x86/include/uapi/asm/svm.h) ------------------------------------------------
ISA_VMX, ISA_SVM = 1, 2  # kvm_exit.isa: KVM_ISA_VMX / KVM_ISA_SVM (arch/x86/kvm/trace.h)
VMX_EXCEPTION_NMI, VMX_EXTERNAL_INTERRUPT, VMX_RDPMC = 0, 1, 15
VMX_CPUID, VMX_HLT, VMX_INVD, VMX_MSR_READ, VMX_MSR_WRITE, VMX_PREEMPTION_TIMER = 10, 12, 13, 31, 32, 52
VMX_BASIC_REASON_MASK = 0xFFFF  # kvm_exit.exit_reason carries VMX flag bits above 16 (FAILED_VMENTRY, ...)
SVM_INTR, SVM_NMI, SVM_RDPMC, SVM_CPUID, SVM_HLT, SVM_INVD, SVM_MSR = 0x60, 0x61, 0x6F, 0x72, 0x78, 0x76, 0x7C

# libtraceevent's kvm plugin (used by trace-cmd report and perf script unless disabled) prints SVM exit
# reasons by the SVM_EXIT_* constant names of arch/x86/include/uapi/asm/svm.h without "SVM_", and VMX
# reason 7 as PENDING_INTERRUPT; its kvm_exit carries neither the code nor the isa
SVM_PLUGIN_REASONS = {
    "EXIT_INTR": 0x060, "EXIT_NMI": 0x061, "EXIT_SMI": 0x062, "EXIT_INIT": 0x063, "EXIT_VINTR": 0x064,
    "EXIT_CR0_SEL_WRITE": 0x065, "EXIT_RDTSC": 0x06E, "EXIT_RDPMC": 0x06F, "EXIT_PUSHF": 0x070, "EXIT_POPF": 0x071,
    "EXIT_CPUID": 0x072, "EXIT_RSM": 0x073, "EXIT_IRET": 0x074, "EXIT_SWINT": 0x075, "EXIT_INVD": 0x076,
    "EXIT_PAUSE": 0x077, "EXIT_HLT": 0x078, "EXIT_INVLPG": 0x079, "EXIT_INVLPGA": 0x07A, "EXIT_IOIO": 0x07B,
    "EXIT_MSR": 0x07C, "EXIT_TASK_SWITCH": 0x07D, "EXIT_FERR_FREEZE": 0x07E, "EXIT_SHUTDOWN": 0x07F,
    "EXIT_VMRUN": 0x080, "EXIT_VMMCALL": 0x081, "EXIT_VMLOAD": 0x082, "EXIT_VMSAVE": 0x083, "EXIT_STGI": 0x084,
    "EXIT_CLGI": 0x085, "EXIT_SKINIT": 0x086, "EXIT_RDTSCP": 0x087, "EXIT_ICEBP": 0x088, "EXIT_WBINVD": 0x089,
    "EXIT_MONITOR": 0x08A, "EXIT_MWAIT": 0x08B, "EXIT_MWAIT_COND": 0x08C, "EXIT_XSETBV": 0x08D, "EXIT_NPF": 0x400,
}
VMX_PLUGIN_REASONS = {"PENDING_INTERRUPT": 7}

# VM-exit interruption information (SDM 25.9.2; vmx.h INTR_INFO_*): valid bit 31, type bits 10:8
# (0 external interrupt, 2 NMI, 3 hardware exception), vector bits 7:0. Bit 12 ("NMI unblocking
# due to IRET") may be set on an NMI exit, so NMI tests mask with valid|type|vector (vmcs.h is_nmi()
# checks valid|type only; the vector of an NMI is always 2).
INTR_INFO_VALID = 0x80000000
INTR_INFO_MASK = 0x800007FF
INTR_INFO_NMI = 0x80000202  # valid | type NMI (2 << 8) | vector 2
INTR_INFO_EXTINT = 0x80000000  # valid | type external interrupt (0 << 8); vector in bits 7:0
INTR_TYPE_MASK = 0x700
KVM_EXIT_INTR_INFO_FIELD = (5, 10)  # 235ba74f008d "Add intr/vectoring info and error code to kvm_exit" (posted 2020-07)

# ---- vCPU requests (kvm:kvm_exit ``requests``: vcpu->requests at exit time) --------------------
# include/linux/kvm_host.h: KVM_REQUEST_ARCH_BASE = 8, KVM_ARCH_REQ(nr) = nr + 8; the bit index of a
# request is its number (flags live above KVM_REQUEST_MASK and are not bits of vcpu->requests).
# Numbers from arch/x86/include/asm/kvm_host.h (unchanged for KVM_REQ_NMI/PMU/PMI since they were
# defined, 4.13 -> 7.0).
KVM_REQUEST_ARCH_BASE = 8
GENERIC_REQUESTS = {0: "TLB_FLUSH", 1: "VM_DEAD", 2: "UNBLOCK", 3: "DIRTY_RING_SOFT_FULL"}
ARCH_REQUESTS = {0: "MIGRATE_TIMER", 1: "REPORT_TPR_ACCESS", 2: "TRIPLE_FAULT", 3: "MMU_SYNC",
                 4: "CLOCK_UPDATE", 5: "LOAD_MMU_PGD", 6: "EVENT", 7: "APF_HALT", 8: "STEAL_UPDATE",
                 9: "NMI", 10: "PMU", 11: "PMI", 12: "SMI", 13: "MASTERCLOCK_UPDATE",
                 14: "MCLOCK_INPROGRESS", 15: "SCAN_IOAPIC", 16: "GLOBAL_CLOCK_UPDATE", 17: "APIC_PAGE_RELOAD",
                 18: "HV_CRASH", 19: "IOAPIC_EOI_EXIT", 20: "HV_RESET", 21: "HV_EXIT", 22: "HV_STIMER",
                 23: "LOAD_EOI_EXITMAP", 24: "GET_NESTED_STATE_PAGES", 25: "APICV_UPDATE",
                 26: "TLB_FLUSH_CURRENT", 27: "TLB_FLUSH_GUEST", 28: "APF_READY", 29: "MSR_FILTER_CHANGED",
                 30: "UPDATE_CPU_DIRTY_LOGGING", 31: "MMU_FREE_OBSOLETE_ROOTS", 32: "HV_TLB_FLUSH"}
# (names of arch requests 13 and up as in torvalds/linux 004a0aa5, 6.x; only NMI/PMU/PMI are used by rules)
REQ_NMI = KVM_REQUEST_ARCH_BASE + 9
REQ_PMU = KVM_REQUEST_ARCH_BASE + 10  # KVM_REQ_PMU = KVM_ARCH_REQ(10): counter reprogram pending
REQ_PMI = KVM_REQUEST_ARCH_BASE + 11  # KVM_REQ_PMI = KVM_ARCH_REQ(11): guest PMI pending
PMI_REQUEST_MASK = (1 << REQ_PMU) | (1 << REQ_PMI)


def request_names(bits: int) -> list[str]:
    """Names of the requests set in a ``requests`` value (unknown bits as REQ_<n>)."""
    out = []
    for b in range(64):
        if bits >> b & 1:
            if b < KVM_REQUEST_ARCH_BASE:
                out.append(GENERIC_REQUESTS.get(b, f"REQ_{b}"))
            else:
                out.append(ARCH_REQUESTS.get(b - KVM_REQUEST_ARCH_BASE, f"REQ_{b}"))
    return out


# ---- the perf NMI handler ----------------------------------------------------------------------
PERF_NMI_HANDLER = "perf_event_nmi_handler"  # arch/x86/events/core.c, registered for NMI_LOCAL


# ---- kernel release ----------------------------------------------------------------------------
def release_version(release: str | None) -> tuple[int, int] | None:
    """(major, minor) of a uname -r string, None when it does not start with one."""
    if not release:
        return None
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


# ---- event order around an NMI VM-exit (design §3.4) ----------------------------------------
NMI_BEFORE_EXIT = "nmi_before_exit"
NMI_AFTER_EXIT = "nmi_after_exit"
NMI_ORDER_UNKNOWN = "unknown"


@dataclass(frozen=True)
class NmiOrder:
    order: str  # NMI_BEFORE_EXIT, NMI_AFTER_EXIT or NMI_ORDER_UNKNOWN
    why: str


def nmi_order(isa: int | None, version: tuple[int, int] | None) -> NmiOrder:
    """Where ``nmi:nmi_handler`` lands relative to the ``kvm_exit`` of the NMI it handled.

    VMX >= 6.3 (11df586d774f "KVM: VMX: Handle NMI VM-Exits in noinstr region"): the NMI is
    handled in vmx_vcpu_enter_exit() before vmx_vcpu_run() emits trace_kvm_exit(). VMX 5.8-6.2:
    trace_kvm_exit() moved into vmx_vcpu_run() (032e5dcbcb443) while the NMI stayed in
    handle_exception_nmi_irqoff() after the run loop: exit first. VMX <= 5.7: the NMI was handled
    (vmx_complete_atomic_exit() / handle_exit_irqoff()) before vmx_handle_exit() traced the exit.
    SVM, every version: svm_vcpu_run() runs stgi() ("Any pending NMI will happen here") before
    trace_kvm_exit() (in svm_vcpu_run() since 6.5, svm_handle_exit() before). Design §3.4.
    """
    if isa == ISA_SVM:
        return NmiOrder(NMI_BEFORE_EXIT, "SVM: svm_vcpu_run() runs stgi() before trace_kvm_exit()")
    if isa == ISA_VMX and version is not None:
        v = f"{version[0]}.{version[1]}"
        if version >= (6, 3):
            return NmiOrder(NMI_BEFORE_EXIT, f"VMX kernel {v} >= 6.3: NMI handled in vmx_vcpu_enter_exit() before "
                                             "trace_kvm_exit()")
        if version >= (5, 8):
            return NmiOrder(NMI_AFTER_EXIT, f"VMX kernel {v} (5.8-6.2): trace_kvm_exit() in vmx_vcpu_run(), NMI "
                                            "handled after the run loop")
        return NmiOrder(NMI_BEFORE_EXIT, f"VMX kernel {v} <= 5.7: NMI handled before vmx_handle_exit() traced "
                                         "the exit")
    return NmiOrder(NMI_ORDER_UNKNOWN, "kernel release or ISA unknown: NMIs are paired in either direction")


# ---- fastpath VM-exits (design §2.1, §3.5) --------------------------------------------------
# vmx_exit_handlers_fastpath() / svm_exit_handlers_fastpath(); an exit handled there with
# EXIT_FASTPATH_REENTER_GUEST stays in vcpu_enter_guest()'s inner loop, so under the mediated
# design it keeps the guest PMU loaded. The WRMSR fastpath (handle_fastpath_set_msr_irqoff(),
# __handle_fastpath_wrmsr()) only takes x2APIC ICR and TSC_DEADLINE. Versions from the KVM pull
# requests: 5.8 (generic fastpath, TSC_DEADLINE and PREEMPTION_TIMER on VMX; ICR returned
# EXIT_HANDLED, i.e. left the loop), ~5.9 (SVM WRMSR), 6.12 (ICR re-enters; HLT fastpath, re-enters
# only when a wake event is pending), 6.18 (INVD, WRMSRNS-immediate, TSC_DEADLINE on SVM).
MSR_X2APIC_ICR = 0x830
MSR_TSC_DEADLINE = 0x6E0
VMX_MSR_WRITE_IMM = 85


def fastpath_eligible(isa: int | None, basic: int | None, msr: int | None, version: tuple[int, int] | None) -> bool:
    """May this exit have re-entered the guest from the fastpath on this kernel? Unknown kernel:
    the newest kernel's rules (so 'eligible' is an upper bound)."""
    v = version or (99, 0)
    if isa == ISA_VMX:
        if basic in (VMX_MSR_WRITE, VMX_MSR_WRITE_IMM):
            if basic == VMX_MSR_WRITE_IMM and v < (6, 18):
                return False
            if msr == MSR_TSC_DEADLINE:
                return v >= (5, 8)
            if msr == MSR_X2APIC_ICR:
                return v >= (6, 12)
            return False
        if basic == VMX_PREEMPTION_TIMER:
            return v >= (5, 8)
        if basic == VMX_HLT:
            return v >= (6, 12)
        if basic == VMX_INVD:
            return v >= (6, 18)
        return False
    if isa == ISA_SVM:
        if basic == SVM_MSR:
            if msr == MSR_X2APIC_ICR:
                return v >= (6, 12)
            if msr == MSR_TSC_DEADLINE:
                return v >= (6, 18)
            return False
        if basic == SVM_HLT:
            return v >= (6, 12)
        if basic == SVM_INVD:
            return v >= (6, 18)
    return False


# ---- injected events at VM-entry (kvm_entry intr_info, 6.14+) -----------------------------------
# VMX VM_ENTRY_INTR_INFO_FIELD: an injected NMI is 0x80000202; SVM event_inj: SVM_EVTINJ_VALID |
# SVM_EVTINJ_TYPE_NMI = 0x80000200 (vector 0); AMD vNMI sets V_NMI_PENDING instead (intr_info 0).
ENTRY_NMI_MASK = 0x80000700
ENTRY_NMI = 0x80000200


# ---- guest PERF_GLOBAL_CTRL at RESET (kvm_pmu_refresh()) ----------------------------------------
def global_ctrl_reset_gp(version: tuple[int, int] | None) -> bool | None:
    """Does KVM set the GP enable bits of the guest's GLOBAL_CTRL at RESET? 6.9+ (de120e1d692d,
    GENMASK_ULL(nr_gp - 1, 0), backported to some stables) yes, 6.0-6.8 no (0), before 6.0 yes.
    Fixed counters are never enabled at RESET. None when the kernel is unknown."""
    if version is None:
        return None
    return not ((6, 0) <= version < (6, 9))


# ---- KVM and perf PMU functions that dynamic probes observe (issue 17; design §2.1-§2.3, §3.1-§3.3,
#      §6.1). No kvm_pmu tracepoint exists upstream (reference SUMMARY 12), so `vpmutrace record --events
#      kvm-pmu` puts fprobe/kprobe events on these functions where the running kernel has them. Every
#      one runs on the vCPU thread (common_pid): load/put in vcpu_enter_guest() with IRQs off; the PMI
#      handlers in NMI/IRQ context while the vCPU is loaded (kvm_get_running_vcpu(); KVM's perf events
#      are task-bound to the vCPU thread, so they overflow only while it runs); the reprogram path from
#      kvm_pmu_handle_event() on KVM_REQ_PMU. Signatures (arch/x86/kvm/pmu.c, kernel/events/core.c):
#        void kvm_mediated_pmu_load(struct kvm_vcpu *vcpu)            7.0+ (merge bf2c3138ae36)
#        void kvm_mediated_pmu_put(struct kvm_vcpu *vcpu)             7.0+
#        void perf_load_guest_context(void)                           7.0+ (tip 42457a7fb6ca; v5 of the
#        void perf_put_guest_context(void)                                 series took the guest LVTPC)
#        void kvm_handle_guest_mediated_pmi(void)                     7.0+ (kvm 1c4ba7286afb)
#        static int reprogram_counter(struct kvm_pmc *pmc)            6.0+ (void before 6.1; earlier
#                                                                          reprogram_gp/fixed_counter())
#        static int pmc_reprogram_counter(struct kvm_pmc *pmc, u32 type, u64 config,
#                                         bool exclude_user, bool exclude_kernel, bool intr)
#             0 or PTR_ERR(perf_event_create_kernel_counter()); void before 6.1 (Sean Christopherson,
#             "KVM: x86/pmu: Clear "reprogram" bit if counter is disabled or disallowed", 2022-09-23)
#        static void kvm_perf_overflow(struct perf_event *perf_event, struct perf_sample_data *data,
#                                      struct pt_regs *regs)   pmc = perf_event->overflow_handler_context
#        void kvm_pmu_deliver_pmi(struct kvm_vcpu *vcpu)
#        void kvm_pmu_handle_event(struct kvm_vcpu *vcpu)
#      Static functions can be inlined (then absent from kallsyms) or cloned by the compiler
#      (``pmc_reprogram_counter.constprop.0`` on a 6.18 build: arguments may be dropped or reordered).
FN_MEDIATED_LOAD = "kvm_mediated_pmu_load"
FN_MEDIATED_PUT = "kvm_mediated_pmu_put"
FN_PERF_LOAD_GUEST = "perf_load_guest_context"
FN_PERF_PUT_GUEST = "perf_put_guest_context"
FN_MEDIATED_PMI = "kvm_handle_guest_mediated_pmi"
FN_REPROGRAM = "reprogram_counter"
FN_PMC_REPROGRAM = "pmc_reprogram_counter"
FN_PERF_OVERFLOW = "kvm_perf_overflow"
FN_DELIVER_PMI = "kvm_pmu_deliver_pmi"
FN_HANDLE_EVENT = "kvm_pmu_handle_event"
# the PMU load/put of a mediated vCPU: KVM's functions, else the perf-core hooks they call first/last
# (kvm_mediated_pmu_load() -> perf_load_guest_context(); kvm_mediated_pmu_put() ends with
# perf_put_guest_context(): design §2.2), which are exported to KVM and so never inlined into it
PMU_LOAD_FUNCS = (FN_MEDIATED_LOAD, FN_PERF_LOAD_GUEST)
PMU_PUT_FUNCS = (FN_MEDIATED_PUT, FN_PERF_PUT_GUEST)
PMC_REPROGRAM_RETURNS_INT = (6, 1)
# Linux x86-64 errno names for the error codes perf_event_create_kernel_counter() returns
# (include/uapi/asm-generic/errno-base.h, errno.h)
ERRNO_NAMES = {1: "EPERM", 2: "ENOENT", 12: "ENOMEM", 13: "EACCES", 16: "EBUSY", 19: "ENODEV", 22: "EINVAL",
               24: "EMFILE", 28: "ENOSPC", 95: "EOPNOTSUPP", 524: "ENOTSUPP"}


def errno_name(ret: int) -> str:
    """'-EOPNOTSUPP (-95)' for a negative kernel return value."""
    name = ERRNO_NAMES.get(-ret)
    return f"-{name} ({ret})" if name else str(ret)
# KVM creates a counter's perf event with config = eventsel & pmu->raw_event_mask (reprogram_counter()):
# X86_RAW_EVENT_MASK (event, umask, edge, pin control, inv, cmask; arch/x86/include/asm/perf_event.h)
# plus AMD's event-select bits 35:32 (AMD64_RAW_EVENT_MASK_NB's event part)
RAW_EVENT_MASK = 0xFF8CFFFF | (0xF << 32)
FIXED_PMC_BASE_IDX = 32  # KVM_FIXED_PMC_BASE_IDX: pmc->idx of fixed counter j is 32 + j
