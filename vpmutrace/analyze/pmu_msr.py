"""PMU MSR traffic: guest accesses KVM handled, by MSR and kind, and what the mediated design would do.

Rule: every kvm:kvm_msr row on an MSR of the PMU catalog (model/msrs.py, reference
§1.1) is one intercepted guest access (§1.6: the emulated design traps all of them).
Rows are grouped by MSR (name, kind, reads, writes, #GP). Each MSR gets the design's
verdict for the configured guest PMU shape: "pass-through" or "intercepted" under the
mediated design (§1.3). RDPMC exits (VMX reason 15, SVM 0x6F) are counted from kvm_exit,
with the mediated verdict of §1.4.
"""

from __future__ import annotations

import polars as pl

from vpmutrace.analyze.base import Config, Result, missing, not_computable
from vpmutrace.model import msrs as M
from vpmutrace.model.design import MEDIATED, msr_intercepted, rdpmc_intercepted
from vpmutrace.tracedata import TraceData

REQUIRES = ["kvm_msr"]
RULE = __doc__.split("\n\n", 1)[1]
RDPMC_REASONS = {(15, 1), (0x6F, 2)}


def classify(df: pl.DataFrame, cfg: Config) -> pl.DataFrame:
    """kvm_msr rows with name, kind, vendor and the mediated verdict of their MSR."""
    cat = M.catalog()
    uniq = df["msr"].unique().to_list()
    lut = pl.DataFrame({
        "msr": uniq,
        "name": [cat[m].name if m in cat else None for m in uniq],
        "kind": [cat[m].kind if m in cat else None for m in uniq],
        "vendor": [cat[m].vendor if m in cat else None for m in uniq],
        "mediated_traps": [msr_intercepted(MEDIATED, m, cfg.setup) for m in uniq],
    }, schema={"msr": pl.UInt32, "name": pl.String, "kind": pl.String, "vendor": pl.String,
               "mediated_traps": pl.Boolean})
    return df.join(lut, on="msr", how="left")


def rdpmc_mask() -> pl.Expr:
    mask = pl.lit(False)
    for code, isa in RDPMC_REASONS:
        mask = mask | ((pl.col("exit_reason") == code) & (pl.col("isa") == isa))
    return mask


def rdpmc_exits(td: TraceData) -> pl.DataFrame:
    return td.df("kvm_exit").filter(rdpmc_mask())


def analyze(td: TraceData, cfg: Config) -> Result:
    needs = missing(td, REQUIRES)
    if needs:
        return not_computable("pmu_msr", needs, RULE)
    msr = classify(td.df("kvm_msr"), cfg)
    pmu = msr.filter(pl.col("kind").is_not_null() & (pl.col("kind") != M.DEBUGCTL))
    by_msr = pmu.group_by("msr", "name", "kind", "vendor", "mediated_traps").agg(
        (~pl.col("write")).sum().alias("reads"), pl.col("write").sum().alias("writes"),
        pl.col("gp").fill_null(False).sum().alias("gp")).sort("msr")
    by_kind = pmu.group_by("kind").agg(pl.len().alias("accesses")).sort("kind")
    rd = rdpmc_exits(td) if td.has("kvm_exit") else None
    verdict = {True: "intercepted", False: "pass-through"}
    summary = {
        "msr_accesses_total": msr.height,
        "pmu_msr_accesses": pmu.height,
        "pmu_msr_gp": int(pmu["gp"].fill_null(False).sum()),
        "by_kind": {k: n for k, n in by_kind.rows()},
        "by_msr": [{"msr": r["msr"], "name": r["name"], "kind": r["kind"], "vendor": r["vendor"],
                    "reads": r["reads"], "writes": r["writes"], "gp": r["gp"],
                    "mediated": verdict[r["mediated_traps"]]} for r in by_msr.iter_rows(named=True)],
        "accesses_mediated_would_pass_through": int((~pmu["mediated_traps"]).sum()),
        "rdpmc_exits": rd.height if rd is not None else None,
        "rdpmc_mediated": verdict[rdpmc_intercepted(MEDIATED, cfg.setup)],
        "guest_pmu_shape": cfg.setup.to_json()["guest"],
    }
    return Result("pmu_msr", summary=summary, rows={"pmu_msr_accesses": pmu}, rule=RULE)
