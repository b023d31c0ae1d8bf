"""Silent backend errors of the emulated vPMU: guest counters that are enabled but may not count.

Rules (design §6.1, §6.3, §3.5), emulated design only: under the mediated design the guest owns
the counters while it runs and no host perf event backs them (not applicable, fact).
1. frozen counter (candidate): consecutive guest reads (kvm_msr) of the same counter by one vCPU
   return the same value (one window from the first to the last of them) while it stayed enabled
   (event select EN, bit 22; PERF_GLOBAL_CTRL bit; until the guest writes GLOBAL_CTRL, its RESET
   value: GP counters enabled on 6.9+ and before 6.0, none on 6.0-6.8, fixed counters never:
   kvm_pmu_refresh()) and nothing wrote the counter, with guest
   run time between. Not proof: a counter filtered to user or kernel mode (USR/OS bits 16/17)
   stays still while the guest runs in the other mode. Blind spot: Linux guests read counters
   with RDPMC (x86_perf_event_update()), whose exits carry no value, so the rule rarely sees them.
2. PMI cadence (candidate): a vCPU that got guest PMIs (LVTPC injections) at a steady cadence
   stops getting them for more than --cadence periods of guest run time while no PMU control
   write reconfigured it: an armed sampling counter that stopped counting raises no overflow
   (perf events in PERF_EVENT_STATE_ERROR do not count).
3. contention (candidate): at each control write, the guest's enabled counters are placed the
   way perf places KVM's task-pinned events after the CPU-pinned ones: GP events need GP
   counters; on Intel the guest's fixed-counter events prefer their fixed counter and fall back to
   a GP counter (all but ref-cycles, fixed 2) when a CPU-pinned event holds it; the perf NMI
   watchdog (a CPU-pinned cycles event) holds fixed counter 1 on Intel hosts with fixed counters,
   a GP counter on AMD; the buddy detector holds none (__perf_sched_find_counter(),
   intel_pmu_init()). More events than counters puts the excess in ERROR (merge_sched_in()). Needs
   the host's counter counts and the watchdog kind (host snapshot); other host pinned events are
   not visible, hence candidate; the evidence records the register values when the window opened.
4. reprogramming storm: at least --storm value-changing control writes (event selects,
   FIXED_CTR_CTRL, GLOBAL_CTRL) by one vCPU within 1 ms; KVM reprograms only on a changed value
   (intel_pmu_set_msr(): ``if (data != pmc->eventsel)``), each such write pausing and re-enabling
   or re-creating a perf event; reported with the exit latency of changing vs unchanged writes.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, missing, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.msr_access import classify, with_exit_latency
from vpmutrace.analyze.windows import Overlap, guest_windows, thread_overlaps
from vpmutrace.errors import plural
from vpmutrace.model import kernel as K
from vpmutrace.model import msrs as M
from vpmutrace.model.design import MEDIATED, NO_VPMU
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
REQUIRES = ("kvm_msr",)
CONTROL = (M.GP_SELECTOR, M.FIXED_CTRL, M.GLOBAL_CTRL)
EVENTSEL_USR, EVENTSEL_OS, EVENTSEL_INT = 1 << 16, 1 << 17, 1 << 20
FIXED_REF_CYCLES = 2  # fixed counter 2 (ref cycles) has no GP fallback (intel_pmu_init())
KINDS = (FindingKind("frozen_counter", "medium", "candidate",
                     "an enabled guest counter read the same value again and again"),
         FindingKind("pmi_cadence_stopped", "medium", "candidate",
                     "guest PMIs stopped while a sampling counter stayed armed"),
         FindingKind("contention", "medium", "candidate",
                     "guest-enabled counters plus CPU-pinned host events exceed the host's counters"),
         FindingKind("reprogram_storm", "low", "fact", "bursts of value-changing PMU control writes"))


@dataclass
class _Vcpu:
    eventsel: dict[int, int] = field(default_factory=dict)
    fixed_ctrl: int = 0
    global_ctrl: int | None = None  # None: never written (RESET value, see _enabled)
    last_read: dict[tuple[str, int], tuple[int, int, str]] = field(default_factory=dict)
    frozen: dict[tuple[str, int], dict] = field(default_factory=dict)  # open frozen-counter windows
    armed: list[tuple[int, bool]] = field(default_factory=list)  # (time, a sampling counter is armed)
    contention: tuple[int, str] | None = None  # (start, evidence)


def _enabled(v: _Vcpu, kind: str, idx: int, reset_gp: bool | None) -> bool:
    """Is a guest counter enabled? pmc_is_globally_enabled(): without PERF_GLOBAL_CTRL (AMD legacy, Intel
    v1: ``reset_gp`` is passed as True for them) every counter is globally enabled; until the guest writes
    GLOBAL_CTRL its RESET value holds (GP bits on 6.9+ and before 6.0, none on 6.0-6.8, unknown kernel:
    taken as enabled)."""
    gc = v.global_ctrl
    if kind == M.GP_COUNTER:
        on = bool(v.eventsel.get(idx, 0) & M.EVENTSEL_ENABLE)
        return on and (bool(gc >> idx & 1) if gc is not None else reset_gp is not False)
    on = bool((v.fixed_ctrl >> (4 * idx)) & 0x3)
    return on and gc is not None and bool(gc >> (32 + idx) & 1)


def _armed(v: _Vcpu, reset_gp: bool | None) -> bool:
    """Is a sampling counter armed: enabled with its PMI bit (event select INT, bit 20; FIXED_CTR_CTRL
    field bit 3)?"""
    gp = any(sel & EVENTSEL_INT and _enabled(v, M.GP_COUNTER, i, reset_gp) for i, sel in v.eventsel.items())
    return gp or any(v.fixed_ctrl >> (4 * i + 3) & 1 and _enabled(v, M.FIXED_COUNTER, i, reset_gp)
                     for i in range(4))


def _placement(v: _Vcpu, reset_gp: bool | None, host_gp: int, host_fixed: int, vendor: str,
               wd: str | None) -> tuple[int, int, str]:
    """(GP counters demanded, available, explanation) for the guest's enabled events + the watchdog."""
    gp = sorted(i for i in v.eventsel if _enabled(v, M.GP_COUNTER, i, reset_gp))
    fixed = sorted(i for i in range(4) if _enabled(v, M.FIXED_COUNTER, i, reset_gp))
    wd_fixed1 = wd == "perf" and vendor == "intel" and host_fixed >= 2
    wd_gp = 1 if wd == "perf" and not wd_fixed1 else 0
    spill = [i for i in fixed if wd_fixed1 and i == 1]  # fixed 1 held by the watchdog: needs a GP counter
    demand = len(gp) + len(spill) + wd_gp
    why = (f"guest GP {gp}, guest fixed {fixed}; watchdog "
           f"{'on fixed counter 1' if wd_fixed1 else 'on a GP counter' if wd_gp else 'holds no counter'}"
           f"{'; guest fixed 1 falls back to a GP counter' if spill else ''}: {demand} GP events for {host_gp}")
    return demand, host_gp, why


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return Result("silent", needs=needs, rule=RULE)
    if cfg.model in (MEDIATED, NO_VPMU):
        why = ("mediated design: the guest owns the PMU while it runs; no host perf event backs its counters"
               if cfg.model == MEDIATED else "the guest has no vPMU")
        return Result("silent", summary={"applicable": False, "why": why}, rule=RULE)
    reset_gp = K.global_ctrl_reset_gp(cfg.kernel)
    guest = cfg.setup.guest
    if guest is not None and not guest.global_ctrl:
        reset_gp = True  # no PERF_GLOBAL_CTRL: every counter is globally enabled
    pmu = with_exit_latency(td, classify(td, cfg)).sort("ts_ns", "seq")
    wins = thread_overlaps(guest_windows(td)) if td.has("kvm_exit") and td.has("kvm_entry") else None
    host = cfg.setup.host
    wd = (cfg.watchdog.value or {})
    wd_kind = wd.get("kind") if wd.get("enabled") else ("none" if wd.get("enabled") is False else None)
    contention_ok = host is not None and wd_kind is not None
    findings: list[dict] = []
    state: dict[tuple[str, int], _Vcpu] = {}
    cols = ["ts_ns", "source", "pid", "msr", "name", "kind", "write", "value", "gp"]
    for ts, src, pid, msr, name, kind, write, value, gp in pmu.select(cols).iter_rows():
        key = (src, pid)
        v = state.setdefault(key, _Vcpu())
        if gp:
            continue
        m = M.lookup(msr)
        idx = m.index if m is not None and m.index is not None else -1
        text = f"{'wrmsr' if write else 'rdmsr'} {msr:#x} = {value:#x}"
        if write:
            if kind == M.GP_SELECTOR:
                v.eventsel[idx] = value
            elif kind == M.FIXED_CTRL:
                v.fixed_ctrl = value
            elif kind == M.GLOBAL_CTRL:
                v.global_ctrl = value
            elif kind in (M.GP_COUNTER, M.FIXED_COUNTER):
                v.last_read.pop((kind, idx), None)
                v.frozen.pop((kind, idx), None)
            if kind in CONTROL:
                armed = _armed(v, reset_gp)
                if not v.armed or v.armed[-1][1] != armed:
                    v.armed.append((ts, armed))
                for k in list(v.last_read):  # a changed configuration restarts the comparison
                    if not _enabled(v, *k, reset_gp):
                        v.last_read.pop(k)
                if contention_ok:
                    assert host is not None
                    demand, cap, why = _placement(v, reset_gp, host.nr_gp, host.nr_fixed, host.vendor, wd_kind)
                    if demand > cap and v.contention is None:
                        sels = ", ".join(f"{i}: {x:#x}" for i, x in sorted(v.eventsel.items()))
                        regs = (f"eventsel {{{sels}}}, FIXED_CTR_CTRL {v.fixed_ctrl:#x}, "
                                f"GLOBAL_CTRL {'reset' if v.global_ctrl is None else hex(v.global_ctrl)}")
                        v.contention = (ts, f"{why}; {regs}")
                    elif demand <= cap and v.contention is not None:
                        findings.append(_finding("contention", key, None, v.contention[0], ts, v.contention[1]))
                        v.contention = None
            continue
        if kind not in (M.GP_COUNTER, M.FIXED_COUNTER):
            continue
        ck = (kind, idx)
        if not _enabled(v, kind, idx, reset_gp):
            v.last_read.pop(ck, None)
            v.frozen.pop(ck, None)
            continue
        prev = v.last_read.get(ck)
        if prev is not None and prev[1] == value:
            ran = _guest_ns(wins, src, pid, prev[0], ts) if wins is not None else None
            run_ = v.frozen.get(ck)
            if (ran is None or ran > 0) and run_ is not None and run_["end_ns"] == prev[0]:
                run_["end_ns"], run_["_reads"] = ts, run_["_reads"] + 1  # the same value read once more
                run_["guest_ns"] = None if ran is None or run_["guest_ns"] is None else run_["guest_ns"] + ran
            elif ran is None or ran > 0:
                sel = v.eventsel.get(idx, 0) if kind == M.GP_COUNTER else None
                mode = ""
                if sel is not None and bool(sel & EVENTSEL_USR) != bool(sel & EVENTSEL_OS):
                    mode = f"; counts only in {'user' if sel & EVENTSEL_USR else 'kernel'} mode: may be legitimate"
                gc = "reset value" if v.global_ctrl is None else hex(v.global_ctrl)
                f = _finding("frozen_counter", key, name, prev[0], ts,
                             f"{text}; eventsel {sel:#x}, GLOBAL_CTRL {gc}{mode}" if sel is not None
                             else f"{text}; GLOBAL_CTRL {gc}", guest_ns=ran)
                f["_reads"] = 2
                findings.append(f)
                v.frozen[ck] = f
        else:
            v.frozen.pop(ck, None)
        v.last_read[ck] = (ts, value, text)
    end = (td.meta.get("time_span_ns") or [0, 0])[1]
    for key, v in state.items():
        if v.contention is not None:
            findings.append(_finding("contention", key, None, v.contention[0], end,
                                     v.contention[1] + " (until the end of the trace)"))
    for f in findings:
        if f["kind"] == "frozen_counter":
            f["evidence"] = f"{plural(f.pop('_reads'), 'read')} returned the same value: {f['evidence']}"
    findings += _cadence(td, cfg, pmu, wins, {k: v.armed for k, v in state.items()})
    storms, storm_lat = _storms(pmu, cfg)
    findings += storms
    counts = {k.id: 0 for k in KINDS}
    for f in findings:
        counts[f["kind"]] += 1
    schema = {"kind": pl.String, "source": pl.String, "pid": pl.Int64, "counter": pl.String, "start_ns": pl.Int64,
              "end_ns": pl.Int64, "guest_ns": pl.Int64, "evidence": pl.String}
    df = pl.DataFrame(findings, schema=schema).sort("start_ns", "kind") if findings else pl.DataFrame(schema=schema)
    rd = P.exits_where(td, P.rdpmc_exit()).height if td.has("kvm_exit") else None
    summary = {"applicable": True, "counts": counts, "windows": df.to_dicts(),
               "contention_checked": contention_ok,
               "contention_needs": None if contention_ok else "host counter counts and the watchdog kind "
                                                              "(a host snapshot)",
               "global_ctrl_reset_gp": reset_gp, "rdpmc_exits_unseen_values": rd, "storm_exit_latency": storm_lat}
    r = Result("silent", summary=summary, rows={"silent_windows": df}, rule=RULE)
    for f in findings:
        r.findings.append(ANALYZER.finding(f["kind"], f"vCPU thread {f['pid']}: {f['evidence']}", 1, f["start_ns"],
                                           [f"{fmt_ns(f['end_ns'] - f['start_ns'])} window"
                                            + (f", guest ran {fmt_ns(f['guest_ns'])}" if f["guest_ns"] else "")]))
    return r


def _finding(kind: str, key: tuple[str, int], counter: str | None, start: int, end: int, evidence: str,
             guest_ns: int | None = None) -> dict:
    return {"kind": kind, "source": key[0], "pid": key[1], "counter": counter, "start_ns": start, "end_ns": end,
            "guest_ns": guest_ns, "evidence": evidence}


def _guest_ns(wins: dict[tuple[str, int], Overlap], src: str | None, pid: int | None, a: int, b: int) -> int:
    """Guest time of thread (src, pid) inside [a, b) (``windows.thread_overlaps``; 0 for a thread
    without windows)."""
    ov = wins.get((src, pid)) if src is not None and pid is not None else None
    return ov(a, b) if ov is not None else 0


def _cadence(td: TraceData, cfg: Config, pmu: pl.DataFrame, wins: dict[tuple[str, int], Overlap] | None,
             armed: dict[tuple[str, int], list[tuple[int, bool]]]) -> list[dict]:
    """PMI-cadence check (rule 2), per vCPU thread with at least 5 guest PMIs: the thread's time is cut
    at each PMI injection and each PMU control write; a piece with more guest time than --cadence
    times the median guest time between PMIs, no PMI at its end, and a sampling counter armed
    throughout (an armed state known from the guest's control writes, or none seen), is a candidate."""
    if not (td.has("kvm_apic_accept_irq") and td.has("kvm_exit")):
        return []
    inj = P.pmi_injections(td)
    out: list[dict] = []
    end = (td.meta.get("time_span_ns") or [0, 0])[1]
    ctl = pmu.filter(pl.col("write") & pl.col("kind").is_in(list(CONTROL)))
    for (src, pid), g in inj.group_by(pl.col("source").cast(pl.String), "pid"):
        ts = sorted(g["ts_ns"].to_list())
        if len(ts) < 5:
            continue

        def run(a: int, b: int, src: str = src, pid: int = pid) -> int:
            return _guest_ns(wins, src, pid, a, b) if wins is not None else b - a

        gaps = [run(a, b) for a, b in zip(ts, ts[1:], strict=False)]
        med = sorted(gaps)[len(gaps) // 2]
        if med <= 0:
            continue
        writes = ctl.filter((pl.col("source") == src) & (pl.col("pid") == pid))["ts_ns"].to_list()
        cuts = sorted([(x, "pmi") for x in ts] + [(x, "write") for x in writes])
        changes = sorted(armed.get((src, pid), []), key=lambda c: c[0])  # (already in time order)
        change_ts = [t_ for t_, _ in changes]
        for (a, _), (b, kind_b) in zip(cuts, cuts[1:] + [(end, "end")], strict=False):
            g_ns = run(a, b)
            k = bisect_right(change_ts, a)  # the armed state at a: the last change at or before a
            if k and not changes[k - 1][1]:
                continue  # the guest disabled its sampling counters: silence is expected
            if kind_b != "pmi" and g_ns > cfg.options.cadence_periods * med and a >= ts[0]:
                out.append(_finding("pmi_cadence_stopped", (src, pid), None, a, b,
                                    f"PMIs every {fmt_ns(med)} of guest time (median of {len(gaps)}), then none for "
                                    f"{fmt_ns(g_ns)} of guest time with no PMU control write", guest_ns=g_ns))
    return out


def _storms(pmu: pl.DataFrame, cfg: Config) -> tuple[list[dict], dict]:
    ctl = pmu.filter(pl.col("write") & pl.col("kind").is_in(list(CONTROL)))
    lat = {"changed_mean_ns": ctl.filter(pl.col("changed") == True)["exit_ns"].mean(),  # noqa: E712
           "unchanged_mean_ns": ctl.filter(pl.col("changed") == False)["exit_ns"].mean()}  # noqa: E712
    chg = ctl.filter(pl.col("changed") == True)  # noqa: E712
    if chg.height == 0:
        return [], lat
    b = chg.with_columns((pl.col("ts_ns") // 1_000_000).alias("ms")) \
        .group_by("source", "pid", "ms").agg(pl.len().alias("n"), pl.col("ts_ns").min().alias("a"),
                                             pl.col("ts_ns").max().alias("b"), pl.col("exit_ns").mean().alias("lat")) \
        .filter(pl.col("n") >= cfg.options.storm_changes_per_ms).sort("source", "pid", "ms")
    out: list[dict] = []
    for r in b.iter_rows(named=True):
        last = out[-1] if out else None
        if last and last["source"] == r["source"] and last["pid"] == r["pid"] and last["_ms"] == r["ms"] - 1:
            last["end_ns"], last["_ms"], last["_n"] = r["b"], r["ms"], last["_n"] + r["n"]
            continue
        out.append({**_finding("reprogram_storm", (r["source"], r["pid"]), None, r["a"], r["b"], ""), "_ms": r["ms"],
                    "_n": r["n"], "_lat": r["lat"]})
    for f in out:
        f["evidence"] = f"{f.pop('_n')} value-changing PMU control writes" + (
            f", exit latency {fmt_ns(f['_lat'])} avg" if f["_lat"] is not None else "")
        f.pop("_ms")
        f.pop("_lat")
    return out, lat


def render(r: Result) -> list[str]:
    s = r.summary
    if not r.computable:
        return []
    if not s.get("applicable"):
        return [f"  not applicable: {s['why']}"]
    f = s["counts"]
    out = [f"  candidates: frozen counters {f['frozen_counter']}, PMI cadence stops {f['pmi_cadence_stopped']}, "
           f"contention windows {f['contention']}"
           + ("" if s["contention_checked"] else f" (not checked: needs {s['contention_needs']})")
           + f"; reprogramming storms {f['reprogram_storm']}"]
    if s["rdpmc_exits_unseen_values"]:
        out.append(f"  blind spot: {s['rdpmc_exits_unseen_values']} RDPMC exits carry no counter value")
    return out + text_table(s["windows"][:20], [("kind", "kind", 20), ("pid", "vcpu thread", 11),
                                                ("counter", "counter", 14), ("start_ns", "start", 12),
                                                ("end_ns", "end", 12), ("evidence", "evidence", 40)])


ANALYZER = Analyzer("silent", "silent emulated-vPMU errors: frozen counters, PMI cadence, contention, storms "
                              "(candidates)", RULE, analyze, render, requires=REQUIRES,
                    optional=("kvm_exit", "kvm_entry", "kvm_apic_accept_irq", "host"), findings=KINDS, order=70,
                    limits=(
                    "Linux guests read counters with RDPMC, whose exits carry no value, so frozen counters show "
                    "up mostly "
                    "for guests or tools that use RDMSR; other CPU-pinned host events (perf stat -a --pinned, ...) and "
                    "per-event counter constraints are not visible, so contention is a candidate."))
