"""The simulator's right answers, in the schema of `vpmutrace analyze --json` (the keys it knows)."""

from __future__ import annotations

from typing import Any

from vpmutrace.model import design as D
from vpmutrace.sim.generate import Sim

WATCHDOG_TOLERANCE = 0.5


def truth(sim: Sim) -> dict[str, Any]:
    t = sim.truth
    ev = sim.events
    t0, t1 = ev[0].ts, ev[-1].ts
    paired = [e for e in t.exits if e["handling_ns"] is not None]
    by_reason: dict[tuple, list[int]] = {}
    for e in paired:
        by_reason.setdefault((e["reason"], e["exit_reason"], e["isa"]), []).append(e["handling_ns"])
    exits = {"exits_total": len(t.exits), "exits_paired": len(paired), "exits_unpaired": len(t.exits) - len(paired),
             "handling_ns_total": sum(e["handling_ns"] for e in paired),
             "by_reason": [{"reason": r, "exit_reason": c, "isa": i, "samples": len(v), "time_ns": sum(v),
                            "min_ns": min(v), "max_ns": max(v)} for (r, c, i), v in sorted(by_reason.items())]}
    by_msr: dict[int, dict[str, int]] = {}
    for m in t.msr:
        d = by_msr.setdefault(m["msr"], {"reads": 0, "writes": 0})
        d["writes" if m["write"] else "reads"] += 1
    pmu = {"pmu_msr_accesses": len(t.msr), "pmu_msr_gp": 0,
           "accesses_mediated_would_pass_through": sum(1 for m in t.msr if m["passes"]),
           "rdpmc_exits": len(t.rdpmc),
           "by_msr": [{"msr": k, **v, "mediated": "intercepted" if D.msr_intercepted(D.MEDIATED, k, sim.setup)
                       else "pass-through"} for k, v in sorted(by_msr.items())]}
    per_cpu: dict[int, dict[str, int]] = {}
    for w in t.windows:
        d = per_cpu.setdefault(w["cpu"], {"cpu": w["cpu"], "windows": 0, "guest_ns": 0})
        d["windows"] += 1
        d["guest_ns"] += w["end"] - w["start"]
    own = {"windows_total": len(t.windows), "guest_ns_total": sum(w["end"] - w["start"] for w in t.windows),
           "context_switches_total": len(t.windows), "per_cpu": [per_cpu[c] for c in sorted(per_cpu)]}
    not_computable = {"computable": False}
    doc: dict[str, Any] = {"exits": exits, "pmu_msr": pmu if t.msr else not_computable, "ownership": own}
    if sim.scenario == "watchdog-residency":  # the scenario that places watchdog NMIs
        doc["watchdog"] = _watchdog(sim, t0, t1)
    if not any(e.name == "nmi:nmi_handler" for e in ev):
        doc["skid"] = not_computable
    else:
        doc["skid"] = {"classes": dict(t.skid), "host_perf_nmis": sum(t.skid.values()), "nmi_exits": t.nmi_exits,
                       "mediated_pmi_exits": t.mediated_pmi_exits}
    counts = {k: 0 for k in ("frozen_counter", "contention", "reprogram_storm")}
    for f in t.silent:
        counts[f["kind"]] += 1
    doc["silent"] = {"findings": counts, "windows": sorted(t.silent, key=lambda f: (f["start_ns"], f["kind"]))} \
        if t.msr else not_computable
    doc["diff"] = {"model": sim.model, "divergences": dict(sorted(t.divergences.items())),
                   "divergent_events": sum(t.divergences.values())}
    doc["what_if"] = _what_if(sim)
    return doc


def _watchdog(sim: Sim, t0: int, t1: int) -> dict[str, Any]:
    period = int(sim.setup.watchdog_thresh_s * 1e9)
    limit = period * (1 + WATCHDOG_TOLERANCE)
    gaps = []
    for cpu, nmis in sorted(sim.truth.watchdog_nmis.items()):
        edges = [t0] + nmis + [t1]
        for a, b in zip(edges, edges[1:], strict=False):
            if b - a > limit:
                guest = sum(max(0, min(w["end"], b) - max(w["start"], a)) for w in sim.truth.windows
                            if w["cpu"] == cpu)
                gaps.append({"cpu": cpu, "start_ns": a, "end_ns": b, "length_ns": b - a, "guest_ns": guest})
    return {"period_ns": period, "watchdog_nmis": sum(len(v) for v in sim.truth.watchdog_nmis.values()),
            "blind_gaps": len(gaps), "longest_gap_ns": max((g["length_ns"] for g in gaps), default=0), "gaps": gaps}


def _what_if(sim: Sim) -> dict[str, Any]:
    t = sim.truth
    cost = sim.setup.switch_cost_ns
    removed_msr = [m for m in t.msr if m["passes"]]
    rdpmc_removed = 0 if D.rdpmc_intercepted(D.MEDIATED, sim.setup) else len(t.rdpmc)
    paired = [e for e in t.exits if e["handling_ns"] is not None]
    # each access has its own exit here; an exit without a following entry has no handling time
    removed_paired = [m["exit"] for m in removed_msr if m["exit"]["handling_ns"] is not None]
    rd_paired = [e for e in t.rdpmc if e["handling_ns"] is not None] if rdpmc_removed else []
    time_removed = sum(e["handling_ns"] for e in removed_paired + rd_paired)
    remaining = len(paired) - len(removed_paired) - len(rd_paired)
    return {"pmu_msr_exits_removed": len(removed_msr), "rdpmc_exits_removed": rdpmc_removed,
            "exits_removed": len(removed_msr) + rdpmc_removed, "exits_total": len(paired),
            "time_removed_ns": time_removed, "switches_added": remaining, "switch_cost_added_ns": remaining * cost,
            "net_saving_ns": time_removed - remaining * cost}
