"""Text tables for analysis results (the CLI's default output)."""

from __future__ import annotations

from typing import Any

from vpmutrace.analyze.base import Result


def _ns(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    for unit, div in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3f} {unit}"
    return f"{v:.0f} ns"


def _table(rows: list[dict], cols: list[tuple[str, str, int]]) -> list[str]:
    out = ["  " + " ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (_, h, w) in enumerate(cols))]
    for r in rows:
        cells = []
        for i, (k, _, w) in enumerate(cols):
            v = r.get(k)
            s = _ns(v) if k.endswith("_ns") else (f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else
                                                                                           str(v)))
            cells.append(f"{s:>{w}}" if i else f"{s:<{w}}")
        out.append("  " + " ".join(cells))
    return out


def _samples_line(smp: dict[str, Any]) -> str:
    c = smp["classes"]
    return (f"  {smp['samples']} perf samples: correct {c['correct']}, misattributed to host "
            f"{c['misattributed_host']}, to guest {c['misattributed_guest']}, ambiguous {c['ambiguous']} "
            f"({smp['exact_ip']} with exact IP)")


def render(name: str, res: Result, doc: dict[str, Any]) -> str:
    head = f"== {name}"
    if not res.computable:
        extra = ""
        smp = res.summary.get("samples") if name == "skid" else None
        if smp and smp.get("computable"):
            extra = "\n" + _samples_line(smp)
        return f"{head}: not computable: needs {', '.join(res.needs)}{extra}"
    s = res.summary
    out = [head]
    if name == "exits":
        out.append(f"  {s['exits_total']} exits, {s['exits_paired']} with a following entry, "
                   f"{s['exits_unpaired']} unpaired; handling time {_ns(s['handling_ns_total'])}")
        out += _table(s["by_reason"], [("reason", "reason", 22), ("samples", "samples", 8),
                                       ("samples_pct", "samples%", 9), ("time_pct", "time%", 7),
                                       ("min_ns", "min", 11), ("max_ns", "max", 11), ("mean_ns", "avg", 11),
                                       ("rel_stderr_pct", "+-%", 7), ("p99_ns", "p99", 11)])
    elif name == "pmu_msr":
        out.append(f"  {s['pmu_msr_accesses']} PMU MSR accesses handled by KVM ({s['pmu_msr_gp']} #GP); "
                   f"{s['accesses_mediated_would_pass_through']} would pass through under the mediated design; "
                   f"RDPMC exits {s['rdpmc_exits'] if s['rdpmc_exits'] is not None else '-'} "
                   f"(mediated: {s['rdpmc_mediated']})")
        out += _table(s["by_msr"], [("name", "MSR", 26), ("kind", "kind", 18), ("reads", "reads", 8),
                                    ("writes", "writes", 8), ("gp", "#GP", 6), ("mediated", "mediated", 13)])
    elif name == "ownership":
        out.append(f"  {s['windows_total']} guest windows, guest time {_ns(s['guest_ns_total'])}, "
                   f"{s['context_switches_total']} PMU switches ~ {_ns(s['est_switch_cost_ns_total'])} "
                   f"at {s['switch_cost_ns']:.0f} ns each")
        out += _table(s["per_cpu"], [("cpu", "cpu", 4), ("windows", "windows", 8), ("guest_ns", "guest", 12),
                                     ("residency", "residency", 10), ("longest_window_ns", "longest", 12),
                                     ("est_switch_cost_ns", "switch cost", 12)])
    elif name == "watchdog":
        out.append(f"  period {_ns(s['period_ns'])}, {s['watchdog_nmis']} watchdog NMIs, {s['blind_gaps']} blind gaps, "
                   f"longest {_ns(s['longest_gap_ns'])}, guest time in gaps {_ns(s['blind_guest_ns'])}")
        out += _table(s["per_cpu"], [("cpu", "cpu", 4), ("watchdog_nmis", "NMIs", 6), ("blind_gaps", "gaps", 6),
                                     ("longest_gap_ns", "longest gap", 13), ("coverage_pct", "coverage%", 10)])
    elif name == "skid":
        c = s["classes"]
        out.append(f"  {s['host_perf_nmis']} perf NMIs: guest (NMI exit) {c['guest_exit']}, misattributed to host "
                   f"{c['misattributed_host']}, ambiguous {c['ambiguous']}, host {c['host']}; "
                   f"window {_ns(s['window_ns'])}; mediated 0xF5 PMI exits {s['mediated_pmi_exits']}")
        out += _table(s["per_cpu"], [("cpu", "cpu", 4), ("pmis", "PMIs", 6), ("misattributed_host", "misattr", 8),
                                     ("ambiguous", "ambig", 6), ("misattributed_rate", "rate", 8)])
        if s.get("samples") and s["samples"].get("computable"):
            out.append(_samples_line(s["samples"]))
    elif name == "silent":
        f = s["findings"]
        out.append(f"  frozen counters {f['frozen_counter']}, contention windows {f['contention']}, "
                   f"reprogramming storms {f['reprogram_storm']} (host GP counters {s['host_gp_counters']}, "
                   f"pinned host events {s['host_pinned_events']})")
        out += _table(s["windows"][:20], [("kind", "kind", 16), ("pid", "vcpu thread", 11),
                                          ("counter", "counter", 18), ("start_ns", "start", 12), ("end_ns", "end", 12),
                                          ("evidence", "evidence", 40)])
    elif name == "diff":
        out.append(f"  model {s['model']}: {len(s['divergences'])} rules diverge, {s['divergent_events']} events")
        for d in s["divergences"]:
            out.append(f"  [{d['section']}] {d['rule']}: {d['count']} (first at {_ns(d['first_ts_ns'])}) - "
                       f"{d['explain']}")
        for u in s["rules_not_checked"]:
            out.append(f"  not checked: {u}")
        w = doc.get("what_if") or {}
        if w:
            sw = w.get("switches_added")
            out.append(f"  what-if mediated: removes {w['exits_removed']} exits "
                       f"({_ns(w.get('time_removed_ns'))}), adds {'-' if sw is None else sw} PMU switches "
                       f"({_ns(w.get('switch_cost_added_ns'))}); net {_ns(w.get('net_saving_ns'))}")
            if w.get("needs"):
                out.append(f"  what-if times not computable: needs {w['needs']}")
    return "\n".join(out)
