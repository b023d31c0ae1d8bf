"""Executable reference model of the two KVM vPMU designs (shared/docs/vpmu-reference.md).

Emulated (perf-based) vPMU: every PMU MSR access and every RDPMC traps; each guest
counter is a task-pinned host perf event that can silently lose its counter (§1.6, §6).

Mediated passthrough vPMU (Linux 7.0+, ``enable_mediated_pmu``): counters pass
through; event selectors, FIXED_CTR_CTRL, PERF_CAPABILITIES and Intel
GLOBAL_STATUS_SET always trap; the global MSRs pass through only when the guest sees
all host counters with PERF_GLOBAL_CTRL; RDPMC passes through only when counter counts
and widths equal the host's and the VMware backdoor is off (§1.3, §1.4). The PMU is
context-switched at every non-fastpath VM-exit (§2.1); guest PMIs arrive on host vector
0xF5 (§3.1); host exclude_guest events stop while the guest PMU is loaded (§2.3); the
perf NMI watchdog cannot coexist with a mediated VM (§4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vpmutrace.model import msrs as M

MEDIATED = "mediated"
EMULATED = "emulated"
DESIGNS = (MEDIATED, EMULATED)

MEDIATED_PMI_VECTOR = 0xF5  # PERF_GUEST_MEDIATED_PMI_VECTOR, §3.1
NMI_INTR_INFO = 0x80000202  # VMX exit/entry interruption info of an NMI, §5.3
LOCAL_TIMER_VECTOR = 0xEC

# published figure behind the default context-switch cost (§7): eliding the PMC WRMSRs of
# the load cut a CPUID VM-exit from 4k to 3k cycles on Emerald Rapids, so a full load+put
# costs at least ~1k cycles; at 2 GHz that is 500 ns per slow-path exit
DEFAULT_SWITCH_COST_NS = 500.0
SWITCH_COST_SOURCE = "vpmu-reference §7: PMC WRMSR elision, CPUID exit 4k -> 3k cycles (EMR), 1k cycles @ 2 GHz"


@dataclass(frozen=True)
class PmuShape:
    """A PMU as the guest (or the host) sees it."""

    vendor: str = "intel"  # intel | amd
    nr_gp: int = 8
    nr_fixed: int = 3
    gp_width: int = 48
    fixed_width: int = 48
    global_ctrl: bool = True  # Intel arch perfmon v2+ / AMD PerfMonV2
    full_width_writes: bool = True  # Intel PERF_CAPABILITIES.FW_WRITE
    perfctr_core: bool = True  # AMD PerfCtrExtCore (F15H MSRs)


@dataclass(frozen=True)
class HostSetup:
    host: PmuShape = PmuShape()
    guest: PmuShape = PmuShape()
    vmware_backdoor: bool = False
    nmi_watchdog: bool = False
    watchdog_thresh_s: float = 10.0
    switch_cost_ns: float = DEFAULT_SWITCH_COST_NS

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> HostSetup:
        return cls(**{**d, "host": PmuShape(**d["host"]), "guest": PmuShape(**d["guest"])})

    @property
    def all_counters_exposed(self) -> bool:
        return self.guest.nr_gp == self.host.nr_gp and self.guest.nr_fixed == self.host.nr_fixed


def global_msrs_intercepted(s: HostSetup) -> bool:
    """kvm_need_perf_global_ctrl_intercept(): pass through only with all counters and GLOBAL_CTRL (§1.3)."""
    return not (s.all_counters_exposed and s.guest.global_ctrl)


def msr_intercepted(design: str, addr: int, s: HostSetup) -> bool | None:
    """Does a guest access to PMU MSR ``addr`` cause a VM-exit? None when not a PMU MSR.

    Rules: §1.6 (emulated: all), §1.3 (mediated: per kind and guest shape).
    """
    m = M.lookup(addr)
    if m is None or m.kind == M.DEBUGCTL:
        return None
    if design == EMULATED:
        return True
    g = s.guest
    if m.kind in (M.GP_SELECTOR, M.FIXED_CTRL, M.PERF_CAPABILITIES, M.GLOBAL_INUSE, M.PERF_METRICS,
                  M.PEBS, M.DS_AREA):
        return True
    if m.kind == M.GLOBAL_STATUS_SET and m.vendor == "intel":
        return True  # not in the Intel pass-through list (§1.3)
    if m.kind in (M.GLOBAL_CTRL, M.GLOBAL_STATUS, M.GLOBAL_OVF_CTRL, M.GLOBAL_STATUS_SET):
        return global_msrs_intercepted(s)
    if m.kind == M.GP_COUNTER:
        assert m.index is not None
        if m.index >= g.nr_gp:
            return True
        if m.vendor == "intel" and m.addr >= 0x4C1:
            return not g.full_width_writes
        if m.vendor == "amd" and m.addr >= 0xC0010200:
            return not g.perfctr_core
        return False
    if m.kind == M.FIXED_COUNTER:
        assert m.index is not None
        return m.index >= g.nr_fixed
    return True


def rdpmc_intercepted(design: str, s: HostSetup) -> bool:
    """kvm_need_rdpmc_intercept() (§1.4); the emulated design always intercepts."""
    if design == EMULATED or s.vmware_backdoor:
        return True
    if not s.all_counters_exposed:
        return True
    return s.guest.gp_width != s.host.gp_width or s.guest.fixed_width != s.host.fixed_width


def context_switches_per_exit(design: str) -> int:
    """PMU load+put pairs per slow-path VM-exit (§2.1); none in the emulated design."""
    return 1 if design == MEDIATED else 0


def watchdog_possible_during_guest(design: str, s: HostSetup) -> bool:
    """Can the perf NMI watchdog fire while the guest runs? (§4)

    Mediated: no (the watchdog is an include-guest event; a mediated VM cannot be created
    while it exists, and no host core-PMU event counts guest time). Emulated: yes, when enabled.
    """
    return design == EMULATED and s.nmi_watchdog


def host_pmi_possible_during_guest(design: str) -> bool:
    """Can a host-vector perf PMI (NMI handled by perf) occur while the guest PMU is loaded? (§2.3, §3.1)"""
    return design == EMULATED


def describe(design: str, s: HostSetup) -> dict:
    """The model's answers for one setup, as a table a report can show."""
    rows = []
    for m in M.catalog().values():
        if m.kind == M.DEBUGCTL or m.vendor != s.guest.vendor:
            continue
        rows.append({"msr": m.addr, "name": m.name, "kind": m.kind,
                     "traps": msr_intercepted(design, m.addr, s)})
    return {"design": design, "setup": s.to_json(), "rdpmc_traps": rdpmc_intercepted(design, s),
            "pmi_vector": MEDIATED_PMI_VECTOR if design == MEDIATED else "NMI (host perf overflow handler)",
            "context_switch": "every non-fastpath VM-exit" if design == MEDIATED else "none (host perf events)",
            "watchdog_during_guest": watchdog_possible_during_guest(design, s), "msrs": rows}
