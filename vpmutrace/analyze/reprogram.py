"""Counter reprogramming under the emulated vPMU, and the perf events KVM failed to create.

Rule (design §3.5, §6.1; arch/x86/kvm/pmu.c, model/kernel.py FN_*): a value-changing write of a
guest PMU control MSR (event select, FIXED_CTR_CTRL, GLOBAL_CTRL) sets the counter's reprogram bit
and KVM_REQ_PMU; at the next entry kvm_pmu_handle_event() calls reprogram_counter() for each
marked counter, which reuses the counter's perf event when its configuration is unchanged
(pmc_resume_counter()) and otherwise calls pmc_reprogram_counter() to create one
(perf_event_create_kernel_counter(), config = eventsel & raw_event_mask). pmc_reprogram_counter()
returns 0 or the creation's error (6.1+); on an error the counter has no perf event and does not
count, the guest is not told, and the reprogram bit stays set, so KVM retries at every later
KVM_REQ_PMU ("Don't make a new request as doing so can stall the guest"). A failed creation is
therefore a fact of the silent-error kind (§6), with its counter and time; the counter recovers at
the first later successful creation for it.

With kvm-pmu probes (reprogram_counter, pmc_reprogram_counter and its return) this analysis counts
reprograms and creations per counter and reports every failed creation (``source``: probes). The
counter is ``pmc_idx`` where the probes fetched it (BTF arguments: GP counters 0.., fixed counters
32 + j), else the guest event select whose value KVM turned into the failed event's config (the
thread's last guest MSR write is an event select whose eventsel & raw_event_mask == config, and every
creation of the same kvm_pmc address), else the kvm_pmc address. Each value-changing
event-select write (kvm_msr) is confirmed when its counter was
reprogrammed on the same thread before the next entry. Without probes only the value-changing
control writes are counted per counter (``source``: inferred); failed creations cannot be seen.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import Analyzer, FindingKind, Result, fmt_ns, records, rule_of, text_table
from vpmutrace.analyze.context import Config
from vpmutrace.model import kernel as K
from vpmutrace.model import msrs as M
from vpmutrace.model.design import MEDIATED
from vpmutrace.tracedata import TraceData

RULE = rule_of(__doc__)
KEY = ["source", "pid"]
KINDS = (FindingKind("perf_event_create_failed", "high", "fact",
                     "KVM could not create a guest counter's perf event: the counter does not count"),
         FindingKind("reprograms_probed", "info", "fact", "counter reprograms and perf event creations per counter"))


def _eventsel_writes(td: TraceData) -> pl.DataFrame:
    """Value-changing guest writes of GP event selects: ts_ns, source, pid, counter (GP index), value."""
    schema = {"ts_ns": pl.Int64, "source": pl.String, "pid": pl.Int32, "counter": pl.Int64, "value": pl.UInt64}
    if not td.has("kvm_msr"):
        return pl.DataFrame(schema=schema)
    sels = {a: m.index for a, m in M.catalog().items() if m.kind == M.GP_SELECTOR}
    w = td.df("kvm_msr").filter(pl.col("write") & ~pl.col("gp").fill_null(False) & pl.col("msr").is_in(list(sels)))
    w = w.select("ts_ns", pl.col("source").cast(pl.String), "pid",
                 pl.col("msr").replace_strict(sels, return_dtype=pl.Int64).alias("counter"), "value") \
        .sort([*KEY, "ts_ns"])
    prev = pl.col("value").shift(1).over([*KEY, "counter"])
    return w.filter(prev.is_null() | (prev != pl.col("value"))).select(list(schema))


def _counter(rows: pl.DataFrame, pmc_idx: dict[int, int]) -> pl.Expr:
    """The counter of a probe row: pmc_idx when fetched, else the index known for its kvm_pmc address."""
    idx = pl.col("pmc_idx").cast(pl.Int64) if "pmc_idx" in rows.columns else pl.lit(None, pl.Int64)
    if "pmc" in rows.columns and pmc_idx:
        idx = idx.fill_null(pl.col("pmc").replace_strict(pmc_idx, default=None, return_dtype=pl.Int64))
    return idx


def analyze(td: TraceData, cfg: Config) -> Result:
    writes = _eventsel_writes(td)
    rep, _ = P.probe_rows(td, K.FN_REPROGRAM)
    create, _ = P.probe_rows(td, K.FN_PMC_REPROGRAM)
    ret, _ = P.probe_rows(td, K.FN_PMC_REPROGRAM, ret=True)
    if rep is None and create is None:
        if not td.has("kvm_msr"):
            return Result("reprogram", needs=["kvm:kvm_msr events or kvm-pmu probe events"],
                          rule=RULE)
        per = writes.group_by([*KEY, "counter"]).agg(pl.len().alias("value_changing_writes")).sort([*KEY, "counter"])
        return Result("reprogram", summary={"source": "inferred", "per_counter": records(per), "failures": None,
                                            "failures_need": "kvm-pmu probes (pmc_reprogram_counter with its "
                                                             "return value)"}, rule=RULE)
    if cfg.model == MEDIATED:
        return Result("reprogram", summary={"source": "probes", "applicable": False,
                                            "why": "mediated design: counters are not host perf events"}, rule=RULE)
    # kvm_pmc address -> counter index, from the rows that fetched both
    known: dict[int, int] = {}
    for rows in (rep, create):
        if rows is not None and {"pmc", "pmc_idx"} <= set(rows.columns):
            known |= dict(rows.select("pmc", pl.col("pmc_idx").cast(pl.Int64)).unique().iter_rows())
    empty = pl.DataFrame(schema={"ts_ns": pl.Int64, "source": pl.String, "pid": pl.Int32, "counter": pl.Int64})
    reps = rep.select("ts_ns", "source", "pid", _counter(rep, known).alias("counter")) if rep is not None else empty
    creates = empty.with_columns(pl.lit(None, pl.Int32).alias("ret"), pl.lit(None, pl.UInt64).alias("config"),
                                 pl.lit(None, pl.UInt64).alias("pmc"))
    if create is not None and create.height:
        c = create.select("ts_ns", "source", "pid", _counter(create, known).alias("counter"),
                          (pl.col("config") if "config" in create.columns else pl.lit(None, pl.UInt64)).alias("config"),
                          (pl.col("pmc") if "pmc" in create.columns else pl.lit(None, pl.UInt64)).alias("pmc"))
        if ret is not None and ret.height and "ret" in ret.columns:
            r = ret.select(pl.col("ts_ns").alias("ret_ts"), "source", "pid", pl.col("ret").cast(pl.Int32)) \
                .sort("ret_ts")
            c = c.sort("ts_ns").join_asof(r, left_on="ts_ns", right_on="ret_ts", by=KEY, strategy="forward")
        else:
            c = c.with_columns(pl.lit(None, pl.Int64).alias("ret_ts"), pl.lit(None, pl.Int32).alias("ret"))
        c = _counter_from_config(c, writes, td)
        creates = c.select("ts_ns", "ret_ts", "source", "pid", "counter", "ret", "config", "pmc")
        if rep is not None and "pmc" in rep.columns and reps["counter"].null_count():
            by_pmc = dict(creates.filter(pl.col("counter").is_not_null() & pl.col("pmc").is_not_null())
                          .select("pmc", "counter").unique("pmc").iter_rows())
            reps = rep.select("ts_ns", "source", "pid", _counter(rep, {**by_pmc, **known}).alias("counter"))
    fails = creates.filter(pl.col("ret").is_not_null() & (pl.col("ret") != 0)) if "ret_ts" in creates.columns \
        else creates.clear()
    ok = creates.filter(pl.col("ret") == 0) if "ret_ts" in creates.columns else creates.clear()
    per = reps.group_by([*KEY, "counter"]).agg(pl.len().alias("reprograms")) \
        .join(creates.group_by([*KEY, "counter"]).agg(pl.len().alias("creations"),
                                                      (pl.col("ret").fill_null(0) != 0).sum().alias("failures")),
              on=[*KEY, "counter"], how="full", coalesce=True) \
        .join(writes.group_by([*KEY, "counter"]).agg(pl.len().alias("value_changing_writes")),
              on=[*KEY, "counter"], how="full", coalesce=True) \
        .with_columns(pl.col("reprograms", "creations", "failures", "value_changing_writes").fill_null(0)) \
        .sort([*KEY, "counter"])
    confirmed = _confirmed(td, writes, reps)
    episodes = _episodes(fails, ok)
    summary = {"source": "probes", "applicable": True, "reprograms": reps.height, "creations": creates.height,
               "return_recorded": ret is not None, "failures": fails.height,
               "counter_from": "pmc_idx" if known else "event select / kvm_pmc address",
               "writes_confirmed": confirmed, "value_changing_writes": writes.height,
               "per_counter": records(per), "failed_episodes": episodes}
    r = Result("reprogram", summary=summary, rows={"perf_event_creations": creates}, rule=RULE)
    for e in episodes:
        rec = (f"recovered at {fmt_ns(e['recovered_ns'])} (next successful creation)" if e["recovered_ns"] is not None
               else "not recovered before the end of the trace")
        r.findings.append(ANALYZER.finding(
            "perf_event_create_failed",
            f"vCPU thread {e['pid']}: counter {e['counter_name']}: perf event creation failed "
            f"{K.errno_name(e['ret'])} at {fmt_ns(e['first_ns'])} (config {e['config']}), {e['attempts']} attempts, "
            f"{rec}: the counter did not count and the guest was not told", e["attempts"], e["first_ns"],
            [f"pmc_reprogram_counter() returned {e['ret']} at {fmt_ns(t)}" for t in e["times"][:3]]))
    if reps.height or creates.height:
        r.findings.append(ANALYZER.finding("reprograms_probed", f"{reps.height} counter reprograms, {creates.height} "
                                           f"perf event creations ({fails.height} failed)", reps.height))
    return r


def _counter_from_config(c: pl.DataFrame, writes: pl.DataFrame, td: TraceData) -> pl.DataFrame:
    """Fill unknown counters: a creation whose thread's last guest MSR write (the write whose exit is being
    handled) is a value-changing event-select write with eventsel & raw_event_mask == its config names its
    counter; every creation of the same kvm_pmc address is that counter (a retry, or a creation after a
    GLOBAL_CTRL write, has no event-select write of its own)."""
    if c["counter"].null_count() == 0 or writes.height == 0 or c["config"].null_count() == c.height:
        return c
    last = td.df("kvm_msr").filter(pl.col("write")).select(pl.col("ts_ns").alias("w_ts"),
                                                           pl.col("source").cast(pl.String), "pid").sort("w_ts")
    w = writes.select(pl.col("ts_ns").alias("w_ts"), "source", "pid", pl.col("counter").alias("w_counter"),
                      (pl.col("value") & K.RAW_EVENT_MASK).alias("w_config"))
    last = last.join(w, on=["w_ts", *KEY], how="left")
    j = c.with_row_index("_i").sort("ts_ns").join_asof(last, left_on="ts_ns", right_on="w_ts", by=KEY,
                                                       strategy="backward")
    hit = pl.when(pl.col("w_config") == pl.col("config")).then(pl.col("w_counter"))
    j = j.sort("_i").with_columns(hit.alias("_hit")).drop("_i", "w_ts", "w_counter", "w_config")
    return j.with_columns(pl.col("counter").fill_null(pl.col("_hit").drop_nulls().first().over("pmc"))
                          .fill_null(pl.col("_hit"))).drop("_hit")


def _confirmed(td: TraceData, writes: pl.DataFrame, reps: pl.DataFrame) -> int | None:
    """Value-changing event-select writes whose counter was reprogrammed on the thread before its next entry."""
    if writes.height == 0 or reps.height == 0 or not td.has("kvm_entry") or reps["counter"].null_count():
        return None
    en = td.df("kvm_entry").select(pl.col("ts_ns").alias("entry_ts"), pl.col("source").cast(pl.String), "pid") \
        .sort("entry_ts")
    w = writes.sort("ts_ns").join_asof(en, left_on="ts_ns", right_on="entry_ts", by=KEY, strategy="forward")
    rp = reps.select(pl.col("ts_ns").alias("r_ts"), "source", "pid", "counter").sort("r_ts")
    j = w.join_asof(rp, left_on="ts_ns", right_on="r_ts", by=[*KEY, "counter"], strategy="forward")
    return j.filter(pl.col("r_ts").is_not_null() & (pl.col("entry_ts").is_null()
                                                    | (pl.col("r_ts") <= pl.col("entry_ts")))).height


def _episodes(fails: pl.DataFrame, ok: pl.DataFrame) -> list[dict]:
    """Failed creations grouped per counter until its next successful creation."""
    out: list[dict] = []
    for (src, pid, counter), g in fails.sort("ts_ns").group_by([*KEY, "counter"], maintain_order=True):
        succ = ok.filter((pl.col("source") == src) & (pl.col("pid") == pid)
                         & (pl.col("counter").eq_missing(counter)))["ts_ns"].sort().to_list()
        cur: dict | None = None
        for ts, ret, cfg_v, pmc in g.select("ret_ts", "ret", "config", "pmc").iter_rows():
            if cur is not None and any(cur["first_ns"] < s < ts for s in succ):
                out.append(cur)
                cur = None
            if cur is None:
                name = (f"{counter} (GP {counter})" if counter is not None and counter < K.FIXED_PMC_BASE_IDX
                        else f"{counter} (fixed {counter - K.FIXED_PMC_BASE_IDX})" if counter is not None
                        else f"kvm_pmc {pmc:#x}" if pmc is not None else "unknown")
                cur = {"source": src, "pid": pid, "counter": counter, "counter_name": name, "first_ns": ts,
                       "ret": ret, "config": hex(cfg_v) if cfg_v is not None else "-", "attempts": 0, "times": [],
                       "recovered_ns": None}
            cur["attempts"] += 1
            cur["times"].append(ts)
        if cur is not None:
            later = [s for s in succ if s > cur["times"][-1]]
            cur["recovered_ns"] = later[0] if later else None
            out.append(cur)
    for e in out[:-1]:
        if e["recovered_ns"] is None:
            succ = ok.filter((pl.col("source") == e["source"]) & (pl.col("pid") == e["pid"])
                             & pl.col("counter").eq_missing(e["counter"]) & (pl.col("ts_ns") > e["times"][-1]))
            e["recovered_ns"] = succ["ts_ns"].min()
    return sorted(out, key=lambda e: e["first_ns"])


def render(r: Result) -> list[str]:
    if not r.computable:
        return []
    s = r.summary
    if s["source"] == "inferred":
        return [f"  inferred from kvm_msr (no kvm-pmu probes): failures need {s['failures_need']}"] + text_table(
            s["per_counter"], [("pid", "vcpu thread", 11), ("counter", "counter", 8),
                               ("value_changing_writes", "writes", 8)])
    if not s.get("applicable", True):
        return [f"  not applicable: {s['why']}"]
    out = [f"  {s['reprograms']} reprograms, {s['creations']} perf event creations, {s['failures']} failed; "
           f"{s['writes_confirmed'] if s['writes_confirmed'] is not None else '-'} of {s['value_changing_writes']} "
           "value-changing event-select writes confirmed by a reprogram"]
    for e in s["failed_episodes"]:
        out.append(f"  FAILED thread {e['pid']} counter {e['counter_name']} {K.errno_name(e['ret'])} from "
                   f"{fmt_ns(e['first_ns'])}, {e['attempts']} attempts, recovered "
                   f"{fmt_ns(e['recovered_ns']) if e['recovered_ns'] is not None else 'never'}")
    return out + text_table(s["per_counter"], [("pid", "vcpu thread", 11), ("counter", "counter", 8),
                                               ("value_changing_writes", "writes", 8), ("reprograms", "reprograms", 10),
                                               ("creations", "creations", 9), ("failures", "failed", 6)])


ANALYZER = Analyzer("reprogram", "emulated vPMU counter reprograms per counter, and perf events KVM failed to create",
                    RULE, analyze, render, requires=(), optional=("kvm_msr", "kvm_entry", "kvm-pmu"), findings=KINDS,
                    order=72, needs_ns=False,
                    limits=("failed creations are seen only with kvm-pmu probes on pmc_reprogram_counter and its "
                            "return (kernels 6.1+, hosts with kprobe or fprobe events; a static function the "
                            "compiler inlined cannot be probed); an event that was created but lost its counter "
                            "(ERROR state) is not a creation failure: see silent."))
