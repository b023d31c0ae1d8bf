"""Pending vCPU requests at each VM-exit (kvm_exit's ``requests`` field), decoded.

Rule: kernels whose kvm_exit has a ``requests`` field (Linux 6.14+) record vcpu->requests when
the exit is traced. A request number n is bit n of that word; architecture requests are
KVM_ARCH_REQ(n) = n + KVM_REQUEST_ARCH_BASE (8) (include/linux/kvm_host.h,
arch/x86/include/asm/kvm_host.h; model.kernel). KVM_REQ_PMI (bit 19) and KVM_REQ_PMU (bit 18)
are set by kvm_perf_overflow() in the host NMI handler of the emulated vPMU, and on kernels
that handle the NMI before trace_kvm_exit() (VMX 6.3+, SVM) they are already pending at the
NMI exit: those exits were guest-counter overflows (design §3.3, §3.4). Under the mediated
design KVM_REQ_PMI comes from the 0xF5 handler, which on VMX runs after the exit is traced
(handle_exit_irqoff), so mediated PMI exits need not carry it. Per request: exits carrying it
and by exit reason.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, missing, rule_of
from vpmutrace.analyze.context import Config
from vpmutrace.model import kernel as K
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("kvm_exit",)
KINDS = (FindingKind("requests_not_recorded", "info", "fact",
                     "kvm_exit has no requests field (kernel before 6.14): PMI requests cannot be seen"),)


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return Result("requests", needs=needs, rule=RULE)
    have = P.exits_where(td, pl.col("requests").is_not_null())
    if have.height == 0:
        r = Result("requests", summary={"field_present": False}, rule=RULE)
        r.findings.append(ANALYZER.finding("requests_not_recorded", "this kernel's kvm_exit has no requests field: "
                                           "guest-PMI exits are recognised by pattern only (candidates)"))
        return r
    bits = [b for b in range(64) if have.select((pl.col("requests") & (1 << b)) != 0).to_series().any()]
    by_req = []
    for b in bits:
        sel = have.filter((pl.col("requests") & (1 << b)) != 0)
        by_req.append({"bit": b, "request": K.request_names(1 << b)[0], "exits": sel.height,
                       "by_reason": dict(sel.group_by(pl.col("reason").cast(pl.String)).len().sort("reason").rows())})
    nmi = have.filter(P.nmi_exit())
    pmi_nmi = nmi.filter(P.requests_pmi())
    uniq = have.select("requests").unique()
    names = {int(v): "|".join(K.request_names(int(v))) for v in uniq["requests"].to_list()}
    rows = have.select("exit_row", "ts_ns", "cpu", "pid", "reason", "requests").with_columns(
        pl.col("requests").replace_strict(names, default="", return_dtype=pl.String).alias("names"))
    summary = {"field_present": True, "exits_with_requests": int((have["requests"] != 0).sum()),
               "exits": have.height, "by_request": by_req, "nmi_exits": nmi.height,
               "nmi_exits_with_pmi_request": pmi_nmi.height}
    return Result("requests", summary=summary, rows={"exit_requests": rows}, rule=RULE)


def render(r: Result) -> list[str]:
    s = r.summary
    if not r.computable:
        return []
    if not s.get("field_present"):
        return ["  kvm_exit has no requests field on this kernel"]
    out = [f"  {s['exits_with_requests']} of {s['exits']} exits had requests pending; NMI exits with "
           f"KVM_REQ_PMI/PMU: {s['nmi_exits_with_pmi_request']} of {s['nmi_exits']}"]
    for q in s["by_request"]:
        out.append(f"  bit {q['bit']:>2} {q['request']:<24} {q['exits']:>8}  {q['by_reason']}")
    return out


ANALYZER = Analyzer("requests", "pending vCPU requests at each exit (KVM_REQ_PMI/PMU mark guest-PMI NMI exits)",
                    RULE, analyze, render, requires=REQUIRES, findings=KINDS, order=35, needs_ns=False,
                    limits=(
                    "kernels 6.14 and newer only; bit numbers of KVM_REQ_PMU (18) and KVM_REQ_PMI (19) are the "
                    "same from "
                    "5.x to 7.0."))
