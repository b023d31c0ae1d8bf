"""Hard-lockup watchdog: which detector the host runs, whether it can run beside the vPMU design,
and, where the perf detector runs, its NMIs per CPU and the gaps between them.

Rule (design §4, §3.5): the perf hard-lockup detector (kernel/watchdog_perf.c) is a CPU-pinned
cycles event without exclude_guest, one NMI per hw_nmi_get_sample_period(watchdog_thresh) =
cpu_khz * 1000 * watchdog_thresh *unhalted* cycles per CPU; the buddy detector
(watchdog_buddy.c) uses no PMU and no NMI. Which one runs is read from the host snapshot
(dmesg "NMI watchdog: Enabled. Permanently consumes one hw-PMU counter." or the kernel config).
Under the mediated design the perf detector cannot coexist with a mediated VM
(perf_create_mediated_pmu() fails with -EBUSY while an include-guest event exists): no perf
watchdog NMI can be seen, and a trace that recorded nmi:nmi_handler and saw none is consistent
with it; blind gaps are not computable there, the configuration check is the finding. Under the
emulated design the watchdog also counts guest cycles, so its overflows during guest time are
NMI exits claimed by perf with no guest PMI after them (predicates.classify_nmi_exits, class
host_pmi). Watchdog NMIs are perf-claimed NMIs that are not guest PMIs; with other host perf
sampling in the trace they cannot be told apart, and all gap findings are candidates: a gap
longer than period * (1 + tolerance) is "unexplained" only for the part of it the CPU was busy
(sched_switch away from the idle task), since a halted CPU does not advance the counter.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.model.design import MEDIATED
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
KINDS = (FindingKind("watchdog_blocks_mediated", "medium", "fact",
                     "perf NMI watchdog enabled on a mediated-vPMU host: mediated VMs cannot be created"),
         FindingKind("no_hardlockup_detection", "low", "fact", "no hard-lockup detector while mediated guests run"),
         FindingKind("perf_nmis_under_mediated", "medium", "candidate",
                     "perf-claimed NMIs at watchdog cadence although the design is mediated"),
         FindingKind("watchdog_nmi_exits", "info", "candidate", "watchdog NMIs that exited the guest (emulated)"),
         FindingKind("watchdog_gap", "low", "candidate", "gap between watchdog NMIs longer than the busy-time "
                                                          "period"))


def busy_ns(td: TraceData, cpu: int, a: int, b: int) -> int | None:
    """Time CPU ``cpu`` ran a non-idle task in [a, b), from sched_switch (None without it)."""
    if not td.has("sched_switch"):
        return None
    s = td.scan("sched_switch").filter(pl.col("cpu") == cpu).select("ts_ns", "prev_pid", "next_pid").sort("ts_ns") \
        .collect()
    if s.height == 0:
        return None
    before = s.filter(pl.col("ts_ns") < a).tail(1)
    cur_idle = bool(before["next_pid"][0] == 0) if before.height else bool(s["prev_pid"][0] == 0)
    t, busy = a, 0
    for ts, _prev, nxt in s.filter((pl.col("ts_ns") >= a) & (pl.col("ts_ns") < b)).iter_rows():
        if not cur_idle:
            busy += ts - t
        t, cur_idle = ts, nxt == 0
    if not cur_idle:
        busy += b - t
    return busy


def watchdog_nmis(td: TraceData, cfg: Config) -> pl.DataFrame:
    """Perf NMIs that perf claimed and that are not guest PMIs, nor NMI exits that cannot be told from
    one (candidates for watchdog NMIs)."""
    n = P.perf_nmis(td).filter(pl.col("handled") >= 1)
    if n.height == 0 or not td.has("kvm_exit"):
        return n
    ex = P.exits_where(td, P.any_nmi_exit())
    cls = P.classify_nmi_exits(td, ex, cfg.nmi_order.order, cfg.options.nmi_pair_ns)
    guest = cls.filter(pl.col("class").is_in([P.GUEST_PMI, P.UNKNOWN_NMI]) & pl.col("nmi_row").is_not_null())
    return n.filter(~pl.col("nmi_row").is_in(guest["nmi_row"].implode()))


def at_watchdog_cadence(nmis: pl.DataFrame, thresh_s: float) -> list[int]:
    """CPUs whose perf NMIs come at the watchdog's cadence: at least 3, median interval between half and
    five periods (unhalted cycles: turbo shortens it, idle lengthens it)."""
    out = []
    for (cpu,), g in nmis.group_by(["cpu"]):
        ts = g["ts_ns"].sort()
        if ts.len() < 3:
            continue
        med = float(ts.diff().drop_nulls().median() or 0)
        if 0.5 * thresh_s * 1e9 <= med <= 5 * thresh_s * 1e9:
            out.append(cpu)
    return sorted(out)


def analyze(td: TraceData, cfg: Config) -> Result:
    wd = cfg.watchdog.value or {}
    enabled, kind, thresh = wd.get("enabled"), wd.get("kind"), float(wd.get("thresh_s") or 10)
    design = cfg.model
    recorded = P.recorded(td, "nmi_handler", "nmi:nmi_handler")
    summary: dict = {"design": design, "nmi_watchdog": enabled, "kind": kind, "watchdog_thresh_s": thresh,
                     "source": cfg.watchdog.source, "nmi_handler_recorded": recorded}
    r = Result("watchdog", summary=summary, rule=RULE)
    if design == MEDIATED:
        if enabled and kind == "perf":
            r.findings.append(ANALYZER.finding("watchdog_blocks_mediated", "the perf NMI watchdog is enabled: a "
                                                                           "mediated "
                                               "VM's first KVM_CREATE_VCPU fails with -EBUSY ('Failed to enable "
                                               "mediated vPMU'); disable it (nmi_watchdog=0) or use the buddy detector",
                                               evidence=list(cfg.watchdog.evidence)))
        elif enabled is False:
            r.findings.append(ANALYZER.finding("no_hardlockup_detection", "nmi_watchdog=0: no hard-lockup detection on "
                                               "this host (the perf detector cannot run beside mediated VMs; the buddy "
                                               "detector could)", evidence=list(cfg.watchdog.evidence)))
    if recorded is False:
        summary["perf_nmis"] = None
        summary["note"] = "nmi:nmi_handler was not recorded: watchdog NMIs cannot be seen"
        return r
    nmis = watchdog_nmis(td, cfg) if td.has("nmi_handler") else P.perf_nmis(td)
    summary["perf_nmis_claimed"] = nmis.height
    summary["hardware_sampling_in_trace"] = _host_sampling(td)
    if nmis.height == 0:
        claimed = P.perf_nmis(td).filter(pl.col("handled") >= 1).height
        summary["note"] = (f"{claimed} perf-claimed NMIs, each a guest PMI or an NMI exit that cannot be told from "
                           "one: no watchdog NMI to measure" if claimed else
                           "nmi:nmi_handler recorded, no perf-claimed NMI: no perf watchdog NMI during the trace (as "
                           "the mediated design requires; under the emulated design: nmi_watchdog=0 or the buddy "
                           "detector)" if recorded else "no perf NMIs in the trace")
        return r
    cadence = at_watchdog_cadence(nmis, thresh)
    summary["cpus_at_watchdog_cadence"] = cadence
    if design == MEDIATED:
        if enabled and kind == "perf":  # the watchdog's own NMIs: no mediated VM could run beside it
            summary["note"] = "perf NMIs of the enabled perf watchdog: no mediated VM can run beside it"
        elif cadence and enabled is not False:
            r.findings.append(ANALYZER.finding("perf_nmis_under_mediated", f"perf NMIs at the watchdog's cadence on "
                                               f"CPUs {cadence} although the design is mediated (the perf watchdog "
                                               "cannot coexist with a mediated VM): check the design",
                                               nmis.height, int(nmis["ts_ns"].min())))
        else:
            summary["note"] = ("perf NMIs of host profiling (exclude_guest events run in host time under the "
                               "mediated design), not at the watchdog's cadence")
        return r
    if enabled is False or (kind == "buddy" and not cadence):
        summary["note"] = (f"nmi_watchdog={int(bool(enabled))} ({kind or 'no detector'}): the perf NMIs are host "
                           "profiling, not the watchdog")
        return r
    period = int(thresh * 1e9)  # at the nominal frequency; busy time is compared with it
    limit = period * (1 + cfg.options.watchdog_tolerance)
    span = td.meta.get("time_span_ns") or [0, 0]
    gaps, per_cpu = [], []
    for (cpu,), g in nmis.group_by(["cpu"], maintain_order=True):
        ts = sorted(g["ts_ns"].to_list())
        longest = max((b - a for a, b in zip(ts, ts[1:], strict=False)), default=0)
        for a, b in zip(ts, ts[1:], strict=False):
            if b - a > limit:
                busy = busy_ns(td, cpu, a, b)
                if busy is None or busy > limit:
                    gaps.append({"cpu": cpu, "start_ns": a, "end_ns": b, "length_ns": b - a, "busy_ns": busy})
        per_cpu.append({"cpu": cpu, "watchdog_nmis": len(ts), "longest_gap_ns": longest,
                        "mean_interval_ns": (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else None})
    exits_wd = None
    if td.has("kvm_exit"):
        cls = P.classify_nmi_exits(td, P.exits_where(td, P.any_nmi_exit()), cfg.nmi_order.order,
                                   cfg.options.nmi_pair_ns)
        exits_wd = cls.filter(pl.col("class") == P.HOST_PMI).height
        if exits_wd:
            r.findings.append(ANALYZER.finding("watchdog_nmi_exits", f"{exits_wd} NMI exits claimed by perf with "
                                                                     f"no guest "
                                               "PMI after them: host events counting guest cycles (the perf watchdog "
                                               "or host sampling) cost a VM exit each", exits_wd))
    summary.update({"period_ns_nominal": period, "tolerance": cfg.options.watchdog_tolerance,
                    "perf_nmi_exits_host": exits_wd, "gaps": gaps, "per_cpu": sorted(per_cpu, key=lambda x: x["cpu"]),
                    "span_ns": span[1] - span[0]})
    for gp in gaps:
        why = "busy time unknown (no sched_switch)" if gp["busy_ns"] is None else f"busy {fmt_ns(gp['busy_ns'])}"
        r.findings.append(ANALYZER.finding("watchdog_gap", f"CPU {gp['cpu']}: {fmt_ns(gp['length_ns'])} between perf "
                                           f"NMIs ({why}); the watchdog period is {fmt_ns(period)} of unhalted cycles",
                                           1, gp["start_ns"]))
    return r


def _host_sampling(td: TraceData) -> bool | None:
    """Did the recording itself sample with a hardware event (whose NMIs look like the watchdog's)?"""
    for i in td.meta.get("inputs", []):
        if i.get("events") is not None:
            return any(e.get("type") in (0, 4) for e in i["events"] if not str(e.get("name", "")).startswith("dummy"))
    return None


def render(r: Result) -> list[str]:
    s = r.summary
    wd = "unknown" if s["nmi_watchdog"] is None else int(s["nmi_watchdog"])
    rec = {True: "yes", False: "no", None: "unknown"}[s["nmi_handler_recorded"]]
    kind = s["kind"] or ("no detector" if s["nmi_watchdog"] is False else "detector kind unknown")
    out = [f"  design {s['design']}; nmi_watchdog={wd} ({kind}, from {s['source']}); nmi:nmi_handler recorded: {rec}"]
    if s.get("note"):
        out.append(f"  {s['note']}")
    if s.get("per_cpu"):
        out.append(f"  {s['perf_nmis_claimed']} perf-claimed NMIs that are not guest PMIs; {len(s['gaps'])} long gaps "
                   f"(nominal period {fmt_ns(s['period_ns_nominal'])})")
        out += text_table(s["per_cpu"], [("cpu", "cpu", 4), ("watchdog_nmis", "NMIs", 6),
                                         ("mean_interval_ns", "mean interval", 14), ("longest_gap_ns", "longest", 12)])
    return out


ANALYZER = Analyzer("watchdog", "hard-lockup watchdog: detector kind, compatibility with the design, NMI cadence",
                    RULE, analyze, render, optional=("host", "nmi_handler", "kvm_exit", "sched_switch"),
                    findings=KINDS, order=60,
                    limits=(
                    "the detector kind comes from the snapshot's dmesg line or kernel config; NMIs of other host perf "
                    "users look like the watchdog's; the period counts unhalted cycles at cpu_khz, so turbo "
                    "shortens and "
                    "idle lengthens it (idle is known only with sched_switch)."))
