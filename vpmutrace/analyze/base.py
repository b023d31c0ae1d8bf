"""What every analyzer shares: the result shape, requirement gating, and configuration.

Analyzers are pure functions ``(TraceData, Config) -> Result``. Each declares the
tables it needs (``REQUIRES``); when one is empty the result is "not computable:
needs X", never a fabricated zero (as LISA's analyses gate on required events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from vpmutrace.model.design import MEDIATED, HostSetup, PmuShape
from vpmutrace.tracedata import TraceData

NEEDS = {
    "kvm_exit": "kvm:kvm_exit events",
    "kvm_entry": "kvm:kvm_entry events (not emitted by some hosts, e.g. kvm_pvm)",
    "kvm_msr": "kvm:kvm_msr events",
    "nmi_handler": "nmi:nmi_handler events",
    "kvm_apic_accept_irq": "kvm:kvm_apic_accept_irq events",
}


@dataclass
class Config:
    model: str = MEDIATED
    setup: HostSetup = field(default_factory=HostSetup)
    skid_window_ns: int = 10_000  # PMIs this close after a VM-exit / before a VM-entry are suspect
    watchdog_tolerance: float = 0.5  # a gap is blind beyond period * (1 + tolerance)
    storm_writes_per_ms: int = 50  # PMU control writes per vCPU per ms that count as a reprogramming storm

    @classmethod
    def for_trace(cls, td: TraceData, model: str = MEDIATED, **kw: Any) -> Config:
        """Setup from the trace's host snapshot where present (watchdog, counters), defaults otherwise."""
        host = td.meta.get("host") or {}
        wd = host.get("watchdog") or {}
        pc = host.get("pmu_counters") or {}
        vendor = "amd" if host.get("cpu_vendor") == "AuthenticAMD" else "intel"
        shape = PmuShape(vendor=vendor, nr_gp=int(pc.get("gp_counters") or (6 if vendor == "amd" else 8)),
                         nr_fixed=int(pc.get("fixed_counters") or (0 if vendor == "amd" else 3)))
        setup = HostSetup(host=shape, guest=shape, nmi_watchdog=bool(wd.get("nmi_watchdog", 0)),
                          watchdog_thresh_s=float(wd.get("watchdog_thresh") or 10))
        return cls(model=model, setup=setup, **kw)


@dataclass
class Result:
    name: str
    needs: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, pl.DataFrame] = field(default_factory=dict)
    rule: str = ""  # the rule applied, one paragraph, with the reference section

    @property
    def computable(self) -> bool:
        return not self.needs

    def to_json(self) -> dict[str, Any]:
        if not self.computable:
            return {"computable": False, "needs": self.needs,
                    "reason": "not computable: needs " + ", ".join(self.needs), **self.summary}
        return {"computable": True, **self.summary}


def missing(td: TraceData, tables: list[str]) -> list[str]:
    return [NEEDS.get(t, t) for t in tables if not td.has(t)]


def not_computable(name: str, needs: list[str], rule: str, **partial: Any) -> Result:
    return Result(name, needs=needs, summary=partial, rule=rule)
