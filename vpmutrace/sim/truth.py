"""The simulator's right answers, in the schema of `vpmutrace analyze --json` (the exact keys it knows).

Quantities that are ranges by design (ownership switch bounds, what-if costs) are checked by the
tests against the simulator's own record (``Sim.truth``), not stored here. Where an analyzer's
answer is a definition over the events (storm buckets, skid timing classes, value-changing
writes), the truth applies the documented definition to what the simulator generated.
"""

from __future__ import annotations

from typing import Any

from vpmutrace.model import design as D
from vpmutrace.model import msrs as M
from vpmutrace.sim.generate import Sim

STORM_PER_MS = 50
CONTROL = (M.GP_SELECTOR, M.FIXED_CTRL, M.GLOBAL_CTRL)


def truth(sim: Sim) -> dict[str, Any]:
    t = sim.truth
    doc: dict[str, Any] = {"design": {"design": sim.model, "source": "snapshot"}}
    if t.exits:
        doc["exits"] = _exits(sim)
        doc["ownership"] = {"guest_runs": len(t.runs), "guest_ns_total": sum(r["end"] - r["start"] for r in t.runs)}
        if sim.model == D.MEDIATED and sim.host_msr:
            doc["ownership"]["switches"] = {"observed": t.switches}
        doc["pmi"] = {"pmi_exits": len(t.pmi_exits),
                      "by_path": {p: sum(1 for x in t.pmi_exits if x["path"] == p)
                                  for p in sorted({x["path"] for x in t.pmi_exits})}}
    has_msr = any(e.name == "kvm:kvm_msr" for e in sim.events)
    doc["pmu_msr"] = _pmu_msr(sim) if has_msr else {"computable": False}
    if sim.scenario == "emulated-watchdog":
        doc["watchdog"] = {"perf_nmis_claimed": len(t.host_nmis), "gaps": [],
                           "perf_nmi_exits_host": t.nmi_exits.get("host_pmi", 0)}
    if sim.scenario == "skid":
        doc["skid"] = {"nmi_classes": _skid_classes(sim)}
    if sim.model == D.EMULATED and t.msr:
        counts = {k: 0 for k in ("frozen_counter", "pmi_cadence_stopped", "contention", "reprogram_storm")}
        windows = [{"kind": f["kind"], "pid": f["pid"], "start_ns": f["start_ns"], "end_ns": f["end_ns"]}
                   for f in t.silent] + _storms(sim)
        for w in windows:
            counts[w["kind"]] += 1
        doc["silent"] = {"counts": counts, "windows": sorted(windows, key=lambda f: (f["start_ns"], f["kind"]))}
    doc["diff"] = {"model": sim.model, "divergences": {}, "divergent_events": 0}
    if sim.model == D.EMULATED and t.exits:
        doc["what_if"] = _what_if(sim)
    return doc


def _exits(sim: Sim) -> dict[str, Any]:
    t = sim.truth
    by_reason: dict[tuple, list[int]] = {}
    for e in t.exits:
        by_reason.setdefault((e["reason"], e["exit_reason"], e["isa"]), []).append(e["handling_ns"])
    return {"exits_total": len(t.exits), "exits_paired": len(t.exits), "exits_unpaired": 0,
            "handling_ns_total": sum(e["handling_ns"] for e in t.exits),
            "fastpath_eligible": sum(1 for e in t.exits if e["eligible"]),
            "by_reason": [{"reason": r, "exit_reason": c, "isa": i, "samples": len(v), "time_ns": sum(v),
                           "min_ns": min(v), "max_ns": max(v)} for (r, c, i), v in sorted(by_reason.items())]}


def _changed(sim: Sim) -> list[bool | None]:
    """Value-changing writes: the value differs from the previous access to that MSR by that vCPU."""
    last: dict[tuple[int, int], int] = {}
    out: list[bool | None] = []
    for m in sorted(sim.truth.msr, key=lambda m: m["ts"]):
        key = (m["pid"], m["msr"])
        prev = last.get(key)
        out.append(None if not m["write"] or prev is None else m["value"] != prev)
        last[key] = m["value"]
    return out


def _pmu_msr(sim: Sim) -> dict[str, Any]:
    t = sim.truth
    by_msr: dict[int, dict[str, int]] = {}
    for m in t.msr:
        d = by_msr.setdefault(m["msr"], {"reads": 0, "writes": 0})
        d["writes" if m["write"] else "reads"] += 1
    ch = _changed(sim)
    would = sum(1 for m in t.msr if D.msr_intercepted(D.MEDIATED, m["msr"], sim.setup) is False)
    return {"pmu_msr_accesses": len(t.msr), "pmu_msr_gp": 0, "accesses_mediated_would_pass_through": would,
            "writes_changed": sum(1 for c in ch if c is True), "writes_unchanged": sum(1 for c in ch if c is False),
            "rdpmc_exits": len(t.rdpmc),
            "by_msr": [{"msr": k, **v} for k, v in sorted(by_msr.items())]}


def _storms(sim: Sim) -> list[dict]:
    """Reprogram storms by the analyzer's definition: >= 50 value-changing control writes of one vCPU in
    one millisecond bucket, consecutive buckets merged."""
    rows = sorted(sim.truth.msr, key=lambda m: m["ts"])
    ch = _changed(sim)
    buckets: dict[tuple[int, int], list[int]] = {}
    for m, c in zip(rows, ch, strict=True):
        if c and M.lookup(m["msr"]).kind in CONTROL:
            buckets.setdefault((m["pid"], m["ts"] // 1_000_000), []).append(m["ts"])
    out: list[dict] = []
    for (pid, ms), ts in sorted(buckets.items()):
        if len(ts) < STORM_PER_MS:
            continue
        if out and out[-1]["pid"] == pid and out[-1]["_ms"] == ms - 1:
            out[-1].update(end_ns=max(ts), _ms=ms)
            continue
        out.append({"kind": "reprogram_storm", "pid": pid, "start_ns": min(ts), "end_ns": max(ts), "_ms": ms})
    for o in out:
        o.pop("_ms")
    return out


def _skid_classes(sim: Sim) -> dict[str, int]:
    """The analyzer's timing classes of every perf-claimed NMI (skid analyzer rule)."""
    w = sim.skid_window
    classes = {"in_nmi_exit": 0, "delivered_to_guest": 0, "after_exit": 0, "before_entry": 0, "host": 0}
    ev = sim.events
    for h in sim.truth.host_nmis:
        if h["in_guest"]:
            classes["in_nmi_exit"] += 1
            continue
        x, cpu = h["ts"], h["cpu"]
        prev_exit = max((e.ts for e in ev if e.cpu == cpu and e.name == "kvm:kvm_exit" and e.ts <= x
                         and e.fields["exit_reason"] != sim.codes["nmi"]), default=None)
        next_entry = min((e.ts for e in ev if e.cpu == cpu and e.name == "kvm:kvm_entry" and e.ts >= x), default=None)
        if prev_exit is not None and x - prev_exit <= w:
            classes["after_exit"] += 1
        elif next_entry is not None and next_entry - x <= w:
            classes["before_entry"] += 1
        else:
            classes["host"] += 1
    classes["in_nmi_exit"] += sim.truth.nmi_exits.get("guest_pmi", 0)
    return classes


def _what_if(sim: Sim) -> dict[str, Any]:
    t = sim.truth
    removed = {id(m["exit"]): m["exit"] for m in t.msr
               if D.msr_intercepted(D.MEDIATED, m["msr"], sim.setup) is False}
    if D.rdpmc_intercepted(D.MEDIATED, sim.setup) is False:
        removed.update({id(e): e for e in t.rdpmc})
    remaining = [e for e in t.exits if id(e) not in removed]
    return {"exits_removed": len(removed), "time_removed_ns": sum(e["handling_ns"] for e in removed.values()),
            "slow_path_exits_remaining": sum(1 for e in remaining if not e["eligible"]),
            "fastpath_exits_remaining": sum(1 for e in remaining if e["eligible"])}

