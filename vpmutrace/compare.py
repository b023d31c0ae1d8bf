"""`vpmutrace compare A B`: two traces side by side, e.g. the same workload under the emulated and the
mediated vPMU, and the switch-cost calibration the what-if uses.

Calibration rule (design §2.1, §3.5): under the mediated design every exit that leaves the
fastpath also pays kvm_mediated_pmu_put()+load(); exits that have nothing to do with the PMU
(CPUID, I/O, EPT, ...) otherwise cost the same under both designs on one host. So for each exit
reason present in both traces with enough timed samples, excluding PMU-related reasons (MSR and
RDPMC exits, NMI and interrupt exits, which carry PMIs), HLT (its time is the guest's idle time)
and fastpath-eligible exits, the difference of the median handling times (mediated - emulated)
estimates the switch cost; the estimates are combined by their standard errors and the range is
two standard errors either side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import fmt_ns
from vpmutrace.analyze.context import Config
from vpmutrace.analyze.windows import exit_intervals, fastpath_column
from vpmutrace.errors import InputError
from vpmutrace.model import kernel as K
from vpmutrace.model import msrs as M
from vpmutrace.model.design import EMULATED, MEDIATED
from vpmutrace.readers import load_trace
from vpmutrace.tracedata import TraceData

MIN_SAMPLES = 20
PMU_MSRS = [a for a, m in M.catalog().items() if m.kind != M.DEBUGCTL]
EXCLUDED = {(K.ISA_VMX, K.VMX_HLT), (K.ISA_SVM, K.SVM_HLT)}


def _timed(td: TraceData, cfg: Config) -> pl.DataFrame:
    if not (td.has("kvm_exit") and td.has("kvm_entry")):
        return pl.DataFrame(schema={"reason": pl.String, "handling_ns": pl.Int64, "isa": pl.UInt8, "basic": pl.UInt32,
                                    "fastpath": pl.Boolean, "pmu_related": pl.Boolean})
    iv = exit_intervals(td)
    iv = iv.with_columns(fastpath_column(iv, cfg.kernel).alias("fastpath"),
                         (P.msr_exit() | P.rdpmc_exit() | P.nmi_exit() | P.extint_exit()).alias("pmu_related"))
    return iv.filter(pl.col("handling_ns").is_not_null())


def summarize(td: TraceData, cfg: Config) -> dict[str, Any]:
    t = _timed(td, cfg)
    span = td.meta.get("time_span_ns") or [0, 0]
    by = t.group_by("reason").agg(pl.len().alias("samples"), pl.col("handling_ns").mean().alias("mean_ns"),
                                  pl.col("handling_ns").median().alias("p50_ns"),
                                  pl.col("handling_ns").quantile(0.99, "nearest").alias("p99_ns"))
    return {"inputs": [i.get("path") for i in td.meta.get("inputs", [])], "design": cfg.design.to_json(),
            "span_ns": span[1] - span[0], "exits_timed": t.height,
            "pmu_msr_accesses": td.df("kvm_msr").filter(pl.col("msr").is_in(PMU_MSRS)).height
            if td.has("kvm_msr") else None,
            "rdpmc_exits": P.exits_where(td, P.rdpmc_exit()).height if td.has("kvm_exit") else None,
            "by_reason": {r["reason"]: r for r in by.to_dicts()}}


def _median_se(x: pl.Series) -> float:
    """Standard error of a sample median: 1.2533 * sigma / sqrt(n), sigma from the MAD (robust)."""
    mad = float((x - x.median()).abs().median())
    return 1.2533 * 1.4826 * mad / max(1.0, len(x)) ** 0.5


def _calibrate(emu: pl.DataFrame, med: pl.DataFrame) -> dict[str, Any] | None:
    """Per eligible reason: d = median(mediated) - median(emulated) with its standard error; the switch
    cost is their inverse-variance weighted mean, the range +-2 standard errors."""
    keep = ~pl.col("fastpath") & ~pl.col("pmu_related")
    a = emu.filter(keep)
    b = med.filter(keep)
    rows = []
    for reason in sorted(set(a["reason"].drop_nulls()) & set(b["reason"].drop_nulls())):
        ra, rb = a.filter(pl.col("reason") == reason), b.filter(pl.col("reason") == reason)
        if (int(ra["isa"][0] or 0), int(ra["basic"][0] or 0)) in EXCLUDED:
            continue
        if ra.height < MIN_SAMPLES or rb.height < MIN_SAMPLES:
            continue
        ha, hb = ra["handling_ns"].cast(pl.Float64), rb["handling_ns"].cast(pl.Float64)
        se = (_median_se(ha) ** 2 + _median_se(hb) ** 2) ** 0.5
        rows.append({"reason": reason, "emulated_p50_ns": ha.median(), "mediated_p50_ns": hb.median(),
                     "delta_ns": float(hb.median()) - float(ha.median()), "se_ns": se,
                     "samples": min(ra.height, rb.height)})
    if not rows:
        return None
    w = [1.0 / max(r["se_ns"], 1.0) ** 2 for r in rows]
    est = sum(wi * r["delta_ns"] for wi, r in zip(w, rows, strict=True)) / sum(w)
    se = sum(w) ** -0.5
    return {"switch_cost_ns": [round(max(0.0, est - 2 * se), 1), round(max(0.0, est + 2 * se), 1)],
            "estimate_ns": round(est, 1), "reasons": rows,
            "source": f"calibrated: median exit-time difference mediated - emulated over {len(rows)} non-PMU reasons "
                      f"({', '.join(r['reason'] for r in rows)}), inverse-variance weighted, +-2 standard errors"}


def _load(paths: list[Path], model: str | None = None) -> tuple[TraceData, Config]:
    td = load_trace(list(paths))
    return td, Config.for_trace(td, model=model)


def calibrate_pair(emulated: list[Path], mediated: list[Path]) -> dict[str, Any]:
    """The switch-cost calibration from an emulated and a mediated trace (for analyze --calibrate-with)."""
    (ta, ca), (tb, cb) = _load(emulated), _load(mediated)
    for name, cfg in ((mediated[0], cb),):
        if cfg.model not in (MEDIATED, "unknown"):
            raise InputError(str(name), f"--calibrate-with needs a mediated-design trace; this one is {cfg.model}")
    cal = _calibrate(_timed(ta, ca), _timed(tb, cb))
    if cal is None:
        raise InputError(str(mediated[0]), f"no exit reason outside the PMU has {MIN_SAMPLES}+ timed exits in both "
                                           "traces: nothing to calibrate with")
    return cal


def compare(a: list[Path], b: list[Path], model_a: str | None = None, model_b: str | None = None) -> dict[str, Any]:
    """Both traces summarized; with one of each design (from snapshots, signatures or the model_*
    overrides), the switch-cost calibration."""
    (ta, ca), (tb, cb) = _load(a, model_a), _load(b, model_b)
    sa, sb = summarize(ta, ca), summarize(tb, cb)
    reasons = sorted(set(sa["by_reason"]) | set(sb["by_reason"]),
                     key=lambda r: -((sa["by_reason"].get(r) or {}).get("samples", 0)
                                     + (sb["by_reason"].get(r) or {}).get("samples", 0)))
    rows = []
    for r in reasons:
        x, y = sa["by_reason"].get(r) or {}, sb["by_reason"].get(r) or {}
        rows.append({"reason": r, "a_samples": x.get("samples", 0), "b_samples": y.get("samples", 0),
                     "a_p50_ns": x.get("p50_ns"), "b_p50_ns": y.get("p50_ns"), "a_p99_ns": x.get("p99_ns"),
                     "b_p99_ns": y.get("p99_ns"), "a_mean_ns": x.get("mean_ns"), "b_mean_ns": y.get("mean_ns"),
                     "p50_delta_ns": (y["p50_ns"] - x["p50_ns"]) if x.get("p50_ns") is not None
                     and y.get("p50_ns") is not None else None})
    cal = None
    designs = (ca.model, cb.model)
    if set(designs) == {EMULATED, MEDIATED}:
        emu, med = ((ta, ca), (tb, cb)) if designs[0] == EMULATED else ((tb, cb), (ta, ca))
        cal = _calibrate(_timed(*emu), _timed(*med))
    for s in (sa, sb):
        s.pop("by_reason")
    return {"a": sa, "b": sb, "by_reason": rows, "calibration": cal}


def render(doc: dict[str, Any]) -> str:
    a, b = doc["a"], doc["b"]
    out = [f"A: {', '.join(map(str, a['inputs']))}: design {a['design']['value']} ({a['design']['source']}), "
           f"{a['exits_timed']} timed exits, PMU MSR accesses {a['pmu_msr_accesses']}, RDPMC exits {a['rdpmc_exits']}",
           f"B: {', '.join(map(str, b['inputs']))}: design {b['design']['value']} ({b['design']['source']}), "
           f"{b['exits_timed']} timed exits, PMU MSR accesses {b['pmu_msr_accesses']}, RDPMC exits {b['rdpmc_exits']}",
           "", f"  {'reason':<22} {'A n':>8} {'B n':>8} {'A p50':>11} {'B p50':>11} {'A p99':>11} {'B p99':>11} "
               f"{'p50 B-A':>11}"]
    for r in doc["by_reason"]:
        out.append(f"  {str(r['reason']):<22} {r['a_samples']:>8} {r['b_samples']:>8} {fmt_ns(r['a_p50_ns']):>11} "
                   f"{fmt_ns(r['b_p50_ns']):>11} {fmt_ns(r['a_p99_ns']):>11} {fmt_ns(r['b_p99_ns']):>11} "
                   f"{fmt_ns(r['p50_delta_ns']):>11}")
    c = doc["calibration"]
    if c:
        out += ["", f"switch cost (mediated - emulated, non-PMU exits): {fmt_ns(c['switch_cost_ns'][0])} .. "
                    f"{fmt_ns(c['switch_cost_ns'][1])}; {c['source']}"]
    return "\n".join(out)
