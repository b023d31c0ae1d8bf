"""PMU MSR catalog: address -> name, vendor, kind, index, and the source of each fact.

Addresses from the Intel SDM vol. 4 / AMD APM vol. 2 as collected in the project's
vPMU reference (docs/design.md §1.1, Linux names from
arch/x86/include/asm/msr-index.h). ``kind`` drives the design rules of
``model/design.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

REF = "design §1.1"

# kinds
GP_COUNTER = "gp_counter"  # general-purpose counter (legacy or full-width alias)
GP_SELECTOR = "gp_selector"  # event select
FIXED_COUNTER = "fixed_counter"
FIXED_CTRL = "fixed_ctrl"
GLOBAL_CTRL = "global_ctrl"
GLOBAL_STATUS = "global_status"
GLOBAL_OVF_CTRL = "global_ovf_ctrl"  # Intel OVF_CTRL / STATUS_RESET, AMD STATUS_CLR
GLOBAL_STATUS_SET = "global_status_set"
GLOBAL_INUSE = "global_inuse"
PERF_CAPABILITIES = "perf_capabilities"
PERF_METRICS = "perf_metrics"
PEBS = "pebs"
DS_AREA = "ds_area"
DEBUGCTL = "debugctl"  # LBR enable lives here


@dataclass(frozen=True)
class PmuMsr:
    addr: int
    name: str
    vendor: str  # intel, amd
    kind: str
    index: int | None = None  # counter index for per-counter MSRs
    min_version: str = ""  # Intel arch perfmon version / AMD feature that introduces it
    source: str = REF


@cache
def catalog() -> dict[int, PmuMsr]:
    out: dict[int, PmuMsr] = {}

    def add(m: PmuMsr) -> None:
        out[m.addr] = m

    for i in range(8):
        add(PmuMsr(0xC1 + i, f"IA32_PMC{i}", "intel", GP_COUNTER, i, "v1"))
        add(PmuMsr(0x4C1 + i, f"IA32_A_PMC{i}", "intel", GP_COUNTER, i, "v1 + PERF_CAPABILITIES.FW_WRITE"))
        add(PmuMsr(0x186 + i, f"IA32_PERFEVTSEL{i}", "intel", GP_SELECTOR, i, "v1"))
    for i in range(4):
        add(PmuMsr(0x309 + i, f"IA32_FIXED_CTR{i}", "intel", FIXED_COUNTER, i, "v2"))
    add(PmuMsr(0x329, "IA32_PERF_METRICS", "intel", PERF_METRICS, None, "v5 (topdown)"))
    add(PmuMsr(0x345, "IA32_PERF_CAPABILITIES", "intel", PERF_CAPABILITIES, None, "PDCM"))
    add(PmuMsr(0x38D, "IA32_FIXED_CTR_CTRL", "intel", FIXED_CTRL, None, "v2"))
    add(PmuMsr(0x38E, "IA32_PERF_GLOBAL_STATUS", "intel", GLOBAL_STATUS, None, "v2"))
    add(PmuMsr(0x38F, "IA32_PERF_GLOBAL_CTRL", "intel", GLOBAL_CTRL, None, "v2"))
    add(PmuMsr(0x390, "IA32_PERF_GLOBAL_OVF_CTRL", "intel", GLOBAL_OVF_CTRL, None, "v2 (STATUS_RESET in v4)"))
    add(PmuMsr(0x391, "IA32_PERF_GLOBAL_STATUS_SET", "intel", GLOBAL_STATUS_SET, None, "v4"))
    add(PmuMsr(0x392, "IA32_PERF_GLOBAL_INUSE", "intel", GLOBAL_INUSE, None, "v4"))
    add(PmuMsr(0x3F1, "IA32_PEBS_ENABLE", "intel", PEBS, None, "PEBS"))
    add(PmuMsr(0x3F2, "MSR_PEBS_DATA_CFG", "intel", PEBS, None, "adaptive PEBS"))
    add(PmuMsr(0x600, "IA32_DS_AREA", "intel", DS_AREA, None, "DS"))
    add(PmuMsr(0x1D9, "IA32_DEBUGCTL", "intel", DEBUGCTL, None, "LBR"))
    for i in range(4):
        add(PmuMsr(0xC0010000 + i, f"MSR_K7_EVNTSEL{i}", "amd", GP_SELECTOR, i, "legacy"))
        add(PmuMsr(0xC0010004 + i, f"MSR_K7_PERFCTR{i}", "amd", GP_COUNTER, i, "legacy"))
    for i in range(6):
        add(PmuMsr(0xC0010200 + 2 * i, f"MSR_F15H_PERF_CTL{i}", "amd", GP_SELECTOR, i, "PerfCtrExtCore"))
        add(PmuMsr(0xC0010201 + 2 * i, f"MSR_F15H_PERF_CTR{i}", "amd", GP_COUNTER, i, "PerfCtrExtCore"))
    add(PmuMsr(0xC0000300, "PerfCntrGlobalStatus", "amd", GLOBAL_STATUS, None, "PerfMonV2"))
    add(PmuMsr(0xC0000301, "PerfCntrGlobalCtl", "amd", GLOBAL_CTRL, None, "PerfMonV2"))
    add(PmuMsr(0xC0000302, "PerfCntrGlobalStatusClr", "amd", GLOBAL_OVF_CTRL, None, "PerfMonV2"))
    add(PmuMsr(0xC0000303, "PerfCntrGlobalStatusSet", "amd", GLOBAL_STATUS_SET, None, "PerfMonV2"))
    return out


def lookup(addr: int) -> PmuMsr | None:
    return catalog().get(addr)


EVENTSEL_ENABLE = 1 << 22  # EN bit of IA32_PERFEVTSELx / AMD PERF_CTL (SDM 18.2.1, APM 13.2.1)
