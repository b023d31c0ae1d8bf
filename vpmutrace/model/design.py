"""Executable reference model of the two KVM vPMU designs (docs/design.md).

Emulated (perf-based) vPMU: every PMU MSR access and every RDPMC traps; each guest
counter is a task-pinned host perf event that can silently lose its counter (§1.6, §6).

Mediated passthrough vPMU (Linux 7.0+, ``enable_mediated_pmu``): counters pass
through; event selectors, FIXED_CTR_CTRL, PERF_CAPABILITIES and Intel
GLOBAL_STATUS_SET always trap; the global MSRs pass through only when the guest sees
all host counters with PERF_GLOBAL_CTRL; RDPMC passes through only when counter counts
and widths equal the host's and the VMware backdoor is off (§1.3, §1.4). A vCPU has a
mediated PMU only when its guest PMU has a version (``kvm_vcpu_has_mediated_pmu()``
needs ``pmu->version``, §3.5). The PMU is context-switched around KVM's inner run loop,
i.e. at every exit that leaves the fastpath (§2.1); guest PMIs arrive on host vector
0xF5 (§3.1); host exclude_guest events stop while the guest PMU is loaded (§2.3); the
perf NMI watchdog cannot coexist with a mediated VM (§4).

A verdict that depends on a PMU shape the trace does not reveal is ``None`` (unknown),
never a guess.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vpmutrace.model import msrs as M

MEDIATED = "mediated"
EMULATED = "emulated"
NO_VPMU = "none"  # kvm.enable_pmu=N, or the guest PMU has version 0: no vPMU at all
UNKNOWN = "unknown"
DESIGNS = (MEDIATED, EMULATED)

MEDIATED_PMI_VECTOR = 0xF5  # PERF_GUEST_MEDIATED_PMI_VECTOR, §3.1

PASS, TRAP = "pass-through", "intercepted"


@dataclass(frozen=True)
class PmuShape:
    """A PMU as the guest (or the host) sees it (CPUID 0xA / 0x80000022, PERF_CAPABILITIES)."""

    vendor: str = "intel"  # intel | amd
    version: int = 2  # Intel arch perfmon version; AMD 1 (legacy/PerfCtrExtCore) or 2 (PerfMonV2); 0 = no PMU
    nr_gp: int = 8
    nr_fixed: int = 3
    gp_width: int = 48
    fixed_width: int = 48
    full_width_writes: bool = True  # Intel PERF_CAPABILITIES.FW_WRITE (bit 13)
    perfctr_core: bool = True  # AMD PerfCtrExtCore (F15H MSRs), CPUID 0x80000001 ECX[23]

    @property
    def global_ctrl(self) -> bool:
        """PERF_GLOBAL_CTRL exists: Intel arch perfmon v2+, AMD PerfMonV2 (§1.1)."""
        return self.version >= 2

    def to_json(self) -> dict:
        return {**asdict(self), "global_ctrl": self.global_ctrl}

    @classmethod
    def from_json(cls, d: dict | None) -> PmuShape | None:
        if d is None:
            return None
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class HostSetup:
    """Host and guest PMU shapes (None: not known from the trace, snapshot or options)."""

    host: PmuShape | None = None
    guest: PmuShape | None = None
    vmware_backdoor: bool = False

    def to_json(self) -> dict:
        return {"host": self.host.to_json() if self.host else None,
                "guest": self.guest.to_json() if self.guest else None, "vmware_backdoor": self.vmware_backdoor}

    @classmethod
    def from_json(cls, d: dict) -> HostSetup:
        return cls(PmuShape.from_json(d.get("host")), PmuShape.from_json(d.get("guest")),
                   bool(d.get("vmware_backdoor")))

    @property
    def all_counters_exposed(self) -> bool | None:
        if self.host is None or self.guest is None:
            return None
        return self.guest.nr_gp == self.host.nr_gp and self.guest.nr_fixed == self.host.nr_fixed


def has_mediated_pmu(s: HostSetup) -> bool | None:
    """kvm_vcpu_has_mediated_pmu(): the guest PMU has a version (§3.5). None when unknown."""
    return None if s.guest is None else s.guest.version > 0


def global_msrs_intercepted(s: HostSetup) -> bool | None:
    """kvm_need_perf_global_ctrl_intercept(): pass through only with all counters and GLOBAL_CTRL (§1.3)."""
    exposed = s.all_counters_exposed
    if exposed is None:
        return None
    return not (exposed and s.guest is not None and s.guest.global_ctrl)


def msr_intercepted(design: str, addr: int, s: HostSetup) -> bool | None:
    """Does a guest access to PMU MSR ``addr`` exit to KVM under ``design``? None when the answer
    depends on a PMU shape that is not known, or ``addr`` is not a PMU MSR.

    Rules: §1.6 (emulated and no-vPMU: all), §1.3 (mediated: per kind and guest shape).
    """
    m = M.lookup(addr)
    if m is None or m.kind == M.DEBUGCTL:
        return None
    if design in (EMULATED, NO_VPMU):
        return True
    if m.kind in (M.GP_SELECTOR, M.FIXED_CTRL, M.PERF_CAPABILITIES, M.GLOBAL_INUSE, M.PERF_METRICS,
                  M.PEBS, M.DS_AREA):
        return True
    if m.kind == M.GLOBAL_STATUS_SET and m.vendor == "intel":
        return True  # not in the Intel pass-through list (§1.3)
    g = s.guest
    if g is None:
        return None
    if g.version == 0:
        return True  # no mediated PMU without a guest PMU (§3.5)
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


def verdict(intercepted: bool | None) -> str:
    return "unknown" if intercepted is None else (TRAP if intercepted else PASS)


def rdpmc_intercepted(design: str, s: HostSetup) -> bool | None:
    """kvm_need_rdpmc_intercept() (§1.4); the emulated design always intercepts. None when unknown."""
    if design in (EMULATED, NO_VPMU) or s.vmware_backdoor:
        return True
    if s.guest is not None and s.guest.version == 0:
        return True
    exposed = s.all_counters_exposed
    if exposed is None:
        return None
    if not exposed:
        return True
    assert s.guest is not None and s.host is not None
    return s.guest.gp_width != s.host.gp_width or s.guest.fixed_width != s.host.fixed_width


def watchdog_possible_during_guest(design: str, nmi_watchdog: bool | None) -> bool | None:
    """Can the perf NMI watchdog fire while the guest runs? (§4)

    Mediated: no (the watchdog is an include-guest event; a mediated VM cannot be created
    while it exists). Emulated: yes when it is enabled (it counts guest cycles too).
    """
    if design == MEDIATED:
        return False
    if design in (EMULATED, NO_VPMU):
        return nmi_watchdog
    return None


def describe(design: str, s: HostSetup) -> dict:
    """The model's answers for one setup, as a table a report can show."""
    vendor = (s.guest or s.host or PmuShape()).vendor
    rows = []
    for m in M.catalog().values():
        if m.kind == M.DEBUGCTL or m.vendor != vendor:
            continue
        rows.append({"msr": m.addr, "name": m.name, "kind": m.kind,
                     "verdict": verdict(msr_intercepted(design, m.addr, s))})
    return {"design": design, "setup": s.to_json(), "rdpmc": verdict(rdpmc_intercepted(design, s)),
            "pmi_vector": f"vector 0x{MEDIATED_PMI_VECTOR:X}" if design == MEDIATED
            else "NMI (host perf overflow handler)",
            "context_switch": "around the inner run loop: every exit that leaves the fastpath"
            if design == MEDIATED else "none (host perf events)",
            "msrs": rows}
