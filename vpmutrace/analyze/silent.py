"""Silent backend errors of the emulated vPMU: guest counters that are enabled but cannot count.

Rules (reference §6.1, §6.3):
1. frozen counter: two consecutive guest reads (kvm_msr) of the same counter on the
   same vCPU return the same value while the counter stayed enabled (its event select
   has EN, bit 22, and its PERF_GLOBAL_CTRL bit is set; GLOBAL_CTRL counts as all-enabled
   until the guest writes it, its reset value) and nothing wrote the counter, with guest
   run time between the reads (from the ownership windows when kvm_entry exists).
2. contention: guest-enabled GP counters + host CPU-pinned events (1 for the NMI
   watchdog) exceed the host's GP counters: perf puts the excess KVM events in ERROR.
3. reprogramming storm: at least --storm-writes control writes (event selects,
   FIXED_CTR_CTRL, GLOBAL_CTRL) by one vCPU within 1 ms; each triggers perf event
   re-creation in the emulated design.
Each finding carries its evidence rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from vpmutrace.analyze.base import Config, Result, missing, not_computable
from vpmutrace.analyze.pmu_msr import classify
from vpmutrace.analyze.windows import guest_windows, overlap_ns
from vpmutrace.model import msrs as M
from vpmutrace.tracedata import TraceData

REQUIRES = ["kvm_msr"]
RULE = __doc__.split("\n\n", 1)[1]
CONTROL = (M.GP_SELECTOR, M.FIXED_CTRL, M.GLOBAL_CTRL)


@dataclass
class _Vcpu:
    eventsel: dict[int, int] = field(default_factory=dict)
    fixed_ctrl: int = 0
    global_ctrl: int | None = None  # None: never written (reset value enables all GP counters)
    last_read: dict[tuple[str, int], tuple[int, int, str]] = field(default_factory=dict)
    contention_start: int | None = None


def _enabled(v: _Vcpu, kind: str, idx: int) -> bool:
    if kind == M.GP_COUNTER:
        on = bool(v.eventsel.get(idx, 0) & M.EVENTSEL_ENABLE)
        return on and (v.global_ctrl is None or bool(v.global_ctrl >> idx & 1))
    on = bool((v.fixed_ctrl >> (4 * idx)) & 0x3)
    return on and (v.global_ctrl is None or bool(v.global_ctrl >> (32 + idx) & 1))


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return not_computable("silent", needs, RULE)
    rows = classify(td.df("kvm_msr"), cfg).filter(pl.col("kind").is_not_null()).sort("ts_ns", "seq")
    wins = guest_windows(td) if td.has("kvm_exit") and td.has("kvm_entry") else None
    host_gp = cfg.setup.host.nr_gp
    pinned = 1 if cfg.setup.nmi_watchdog else 0
    findings: list[dict] = []
    state: dict[tuple[str, int], _Vcpu] = {}
    for r in rows.iter_rows(named=True):
        key = (str(r["source"]), r["pid"])
        v = state.setdefault(key, _Vcpu())
        kind, idx, ts = r["kind"], _index(r["msr"]), r["ts_ns"]
        text = f"{'msr_write' if r['write'] else 'msr_read'} {r['msr']:x} = 0x{r['value']:x}"
        if r["gp"]:
            continue
        if r["write"]:
            if kind == M.GP_SELECTOR:
                v.eventsel[idx] = r["value"]
            elif kind == M.FIXED_CTRL:
                v.fixed_ctrl = r["value"]
            elif kind == M.GLOBAL_CTRL:
                v.global_ctrl = r["value"]
            elif kind in (M.GP_COUNTER, M.FIXED_COUNTER):
                v.last_read.pop((kind, idx), None)
            if kind in CONTROL:
                for k in list(v.last_read):  # a changed configuration restarts the comparison
                    if not _enabled(v, *k):
                        v.last_read.pop(k)
                enabled = sum(1 for i in v.eventsel if _enabled(v, M.GP_COUNTER, i))
                over = enabled + pinned > host_gp
                if over and v.contention_start is None:
                    v.contention_start = ts
                elif not over and v.contention_start is not None:
                    findings.append(_finding("contention", key, None, v.contention_start, ts,
                                             f"{enabled}+{pinned} pinned > {host_gp} counters"))
                    v.contention_start = None
            continue
        if kind not in (M.GP_COUNTER, M.FIXED_COUNTER):
            continue
        ck = (kind, idx)
        if not _enabled(v, kind, idx):
            v.last_read.pop(ck, None)
            continue
        prev = v.last_read.get(ck)
        if prev is not None and prev[1] == r["value"]:
            ran = overlap_ns(prev[0], ts, wins.filter((pl.col("pid") == r["pid"])
                                                     & (pl.col("source") == key[0]))) if wins is not None else None
            if ran is None or ran > 0:
                findings.append(_finding("frozen_counter", key, f"{r['name']}", prev[0], ts,
                                         f"{prev[2]} ... {text}", guest_ns=ran))
        v.last_read[ck] = (ts, r["value"], text)
    end = (td.meta.get("time_span_ns") or [0, 0])[1]
    for key, v in state.items():
        if v.contention_start is not None:
            findings.append(_finding("contention", key, None, v.contention_start, end, "until the end of the trace"))
    findings += _storms(rows, cfg)
    counts = {k: 0 for k in ("frozen_counter", "contention", "reprogram_storm")}
    for f in findings:
        counts[f["kind"]] += 1
    schema = {"kind": pl.String, "source": pl.String, "pid": pl.Int64, "counter": pl.String, "start_ns": pl.Int64,
              "end_ns": pl.Int64, "guest_ns": pl.Int64, "evidence": pl.String}
    df = pl.DataFrame(findings, schema=schema).sort("start_ns", "kind") if findings else pl.DataFrame(schema=schema)
    summary = {"findings": counts, "host_gp_counters": host_gp, "host_pinned_events": pinned,
               "windows": [dict(r) for r in df.iter_rows(named=True)]}
    return Result("silent", summary=summary, rows={"silent_windows": df}, rule=RULE)


def _index(addr: int) -> int:
    m = M.lookup(addr)
    return m.index if m is not None and m.index is not None else -1


def _finding(kind: str, key: tuple[str, int], counter: str | None, start: int, end: int, evidence: str,
             guest_ns: int | None = None) -> dict:
    return {"kind": kind, "source": key[0], "pid": key[1], "counter": counter, "start_ns": start, "end_ns": end,
            "guest_ns": guest_ns, "evidence": evidence}


def _storms(rows: pl.DataFrame, cfg: Config) -> list[dict]:
    ctl = rows.filter(pl.col("write") & pl.col("kind").is_in(list(CONTROL)))
    if ctl.height == 0:
        return []
    b = ctl.with_columns((pl.col("ts_ns") // 1_000_000).alias("ms"), pl.col("source").cast(pl.String)) \
        .group_by("source", "pid", "ms").agg(pl.len().alias("n"), pl.col("ts_ns").min().alias("a"),
                                             pl.col("ts_ns").max().alias("b")) \
        .filter(pl.col("n") >= cfg.storm_writes_per_ms).sort("source", "pid", "ms")
    out: list[dict] = []
    for r in b.iter_rows(named=True):
        last = out[-1] if out else None
        if last and last["source"] == r["source"] and last["pid"] == r["pid"] and last["_ms"] == r["ms"] - 1:
            last["end_ns"], last["_ms"], last["_n"] = r["b"], r["ms"], last["_n"] + r["n"]
            continue
        out.append({**_finding("reprogram_storm", (r["source"], r["pid"]), None, r["a"], r["b"], ""), "_ms": r["ms"],
                    "_n": r["n"]})
    for f in out:
        f["evidence"] = f"{f.pop('_n')} control MSR writes"
        f.pop("_ms")
    return out
