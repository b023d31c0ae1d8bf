"""Shared predicates over the event tables: which exits are NMIs, PMIs, RDPMC; which NMIs perf
claimed; which interrupts KVM injected as a guest PMI; how an NMI pairs with its exit.

Every analyzer that needs one of these imports it from here (no analyzer imports another).
Each predicate names the kernel code it encodes (constants in ``model/kernel.py``).
"""

from __future__ import annotations

import warnings

import polars as pl

from vpmutrace.model import kernel as K
from vpmutrace.tracedata import TraceData

# VMX reason names are upper case, SVM names lower case (arch/x86/include/uapi/asm/{vmx,svm}.h
# VMX_EXIT_REASONS / SVM_EXIT_REASONS): the ISA of a trace whose kvm_exit has no isa field
_VMX_NAMES = ("EXCEPTION_NMI", "EXTERNAL_INTERRUPT", "MSR_READ", "MSR_WRITE", "HLT", "CPUID", "EPT_VIOLATION",
              "IO_INSTRUCTION", "CR_ACCESS", "PREEMPTION_TIMER", "APIC_WRITE", "EPT_MISCONFIG")
_SVM_NAMES = ("nmi", "interrupt", "msr", "hlt", "cpuid", "npf", "io", "vintr", "pause")

# every as-of join here sorts both sides by time first; polars cannot verify sortedness within `by`
# groups and would warn on each call
warnings.filterwarnings("ignore", message="Sortedness of columns cannot be checked")

X2APIC_LVTPC = 0x834  # x2APIC LVT performance counter register (SDM 11.12.1: 0x800 + 0x340 >> 4)
APIC_DM_NMI = 0x400  # LVT delivery mode NMI (bits 10:8 = 100b)
APIC_DM_MASK = 0x700
APIC_LVT_MASKED = 0x10000


def exits(td: TraceData) -> pl.DataFrame:
    """kvm_exit rows with ``exit_row`` (row number), completed by ``complete_exits``."""
    return complete_exits(td, td.df("kvm_exit").with_row_index("exit_row"), intr_info_absent(td))


EXIT_BATCH_ROWS = 1 << 18  # kvm_exit rows completed at a time by exits_where


def exits_where(td: TraceData, keep: pl.Expr) -> pl.DataFrame:
    """``exits(td).filter(keep)``, the table completed batch by batch: holds the rows kept, not
    the table (``keep`` a selective predicate such as ``nmi_exit()``)."""
    intr = intr_info_absent(td)
    parts, row = [], 0
    for b in td.batches("kvm_exit", td.scan("kvm_exit").collect_schema().names(), EXIT_BATCH_ROWS):
        parts.append(complete_exits(td, b.with_row_index("exit_row", offset=row), intr).filter(keep))
        row += b.height
    if not parts:
        return complete_exits(td, td.scan("kvm_exit").clear().collect().with_row_index("exit_row"), False)
    return pl.concat(parts)


def exit_isas(td: TraceData) -> set[int]:
    """The ISAs of the trace's exits (``exits(td)["isa"]``'s values), from the distinct reasons."""
    combos = td.scan("kvm_exit", ["exit_reason", "reason", "isa"]).unique().collect()
    return set(complete_exits(td, combos, False)["isa"].drop_nulls().unique().to_list())


def intr_info_absent(td: TraceData) -> bool:
    """Does the trace's kvm_exit lack intr_info on a kernel that put VM_EXIT_INTR_INFO in info2?
    Before 5.10 (235ba74f008d) kvm_exit had no intr_info and VMX's info2 was VM_EXIT_INTR_INFO
    (vmx_get_exit_info(): *info2 = vmcs_read32(VM_EXIT_INTR_INFO)); since then info2 is the
    IDT-vectoring info, so info2 stands in only when the kernel is known to be older."""
    v = K.release_version(td.meta.get("kernel_release") or (td.meta.get("host") or {}).get("kernel_release"))
    if v is None or v >= K.KVM_EXIT_INTR_INFO_FIELD or not td.has("kvm_exit"):
        return False
    return bool(td.scan("kvm_exit", ["intr_info"]).select(pl.col("intr_info").is_null().all()).collect().item())


def complete_exits(td: TraceData, ex: pl.DataFrame, intr_absent: bool) -> pl.DataFrame:
    """kvm_exit rows with ``isa`` filled from the reason names where the format has no isa field,
    the code of libtraceevent kvm-plugin names (EXIT_NMI, ...: model.kernel) where the text carries
    no code, info2 as ``intr_info`` where ``intr_absent`` (``intr_info_absent``), and ``basic``
    (VMX: exit_reason & 0xffff, the basic reason). Row by row: a chunk of the table gets the rows
    the whole table would."""
    if ex.height and ex["exit_reason"].null_count():
        reason = pl.col("reason").cast(pl.String)
        svm = reason.replace_strict(K.SVM_PLUGIN_REASONS, default=None, return_dtype=pl.UInt32)
        vmx = reason.replace_strict(K.VMX_PLUGIN_REASONS, default=None, return_dtype=pl.UInt32)
        ex = ex.with_columns(pl.col("exit_reason").fill_null(pl.coalesce(svm, vmx)),
                             pl.when(pl.col("isa").is_null() & svm.is_not_null()).then(pl.lit(K.ISA_SVM, pl.UInt8))
                             .otherwise(pl.col("isa")).alias("isa"))
    if ex.height and ex["isa"].null_count():
        reason = pl.col("reason").cast(pl.String)
        ex = ex.with_columns(pl.col("isa").fill_null(
            pl.when(reason.is_in(_VMX_NAMES)).then(pl.lit(K.ISA_VMX, pl.UInt8))
            .when(reason.is_in(_SVM_NAMES)).then(pl.lit(K.ISA_SVM, pl.UInt8)).otherwise(None)))
    if intr_absent:
        ex = ex.with_columns(pl.when(pl.col("isa") == K.ISA_VMX).then(pl.col("info2").cast(pl.UInt32, strict=False))
                             .otherwise(None).alias("intr_info"))
    return ex.with_columns(pl.when(pl.col("isa") == K.ISA_VMX)
                           .then(pl.col("exit_reason") & K.VMX_BASIC_REASON_MASK)
                           .otherwise(pl.col("exit_reason")).alias("basic"))


def _is(vmx: int | None, svm: int | None) -> pl.Expr:
    out = pl.lit(False)
    if vmx is not None:
        out = out | ((pl.col("isa") == K.ISA_VMX) & (pl.col("basic") == vmx))
    if svm is not None:
        out = out | ((pl.col("isa") == K.ISA_SVM) & (pl.col("basic") == svm))
    return out.fill_null(False)


def nmi_exit() -> pl.Expr:
    """An exit caused by an NMI: VMX EXCEPTION_NMI whose interruption info, masked with
    valid|type|vector (vmx.h is_nmi()), is an NMI; SVM SVM_EXIT_NMI. Over ``exits(td)``."""
    vmx = (pl.col("isa") == K.ISA_VMX) & (pl.col("basic") == K.VMX_EXCEPTION_NMI) & \
        ((pl.col("intr_info") & K.INTR_INFO_MASK) == K.INTR_INFO_NMI)
    return (vmx.fill_null(False) | _is(None, K.SVM_NMI))


def any_nmi_exit() -> pl.Expr:
    """The exits the NMI pairing reads (``_nmi_pair_candidates``): identified or not."""
    return nmi_exit() | nmi_exit_unidentified()


def nmi_exit_unidentified() -> pl.Expr:
    """A VMX EXCEPTION_NMI exit whose interruption info the trace does not carry (libtraceevent's kvm
    plugin text, or kernels 5.10+ printed without intr_info): an NMI or an exception, unknown."""
    return ((pl.col("isa") == K.ISA_VMX) & (pl.col("basic") == K.VMX_EXCEPTION_NMI)
            & pl.col("intr_info").is_null()).fill_null(False)


def extint_exit() -> pl.Expr:
    """An exit caused by a host interrupt (VMX EXTERNAL_INTERRUPT, SVM SVM_EXIT_INTR)."""
    return _is(K.VMX_EXTERNAL_INTERRUPT, K.SVM_INTR)


def extint_vector() -> pl.Expr:
    """Host vector of a VMX external-interrupt exit (intr_info bits 7:0); null on SVM, which
    reports no vector for SVM_EXIT_INTR."""
    return pl.when(_is(K.VMX_EXTERNAL_INTERRUPT, None) & ((pl.col("intr_info") & K.INTR_INFO_VALID) != 0)) \
        .then(pl.col("intr_info") & 0xFF).otherwise(None)


def mediated_pmi_exit() -> pl.Expr:
    """A VMX external-interrupt exit on PERF_GUEST_MEDIATED_PMI_VECTOR (0xF5, design §3.1)."""
    from vpmutrace.model.design import MEDIATED_PMI_VECTOR

    return (extint_vector() == MEDIATED_PMI_VECTOR).fill_null(False)


def rdpmc_exit() -> pl.Expr:
    return _is(K.VMX_RDPMC, K.SVM_RDPMC)


def msr_exit() -> pl.Expr:
    return _is(K.VMX_MSR_READ, K.SVM_MSR) | _is(K.VMX_MSR_WRITE, None)


def requests_pmi() -> pl.Expr:
    """kvm_exit.requests has KVM_REQ_PMI: set by __kvm_perf_overflow() inside the NMI when the guest
    counter interrupts (emulated vPMU, design §3.3/§3.4), before trace_kvm_exit() on kernels that
    handle the NMI first. KVM_REQ_PMU alone (a reprogram, or an overflow without PMI) is not enough.
    Null where the format has no requests field."""
    return (pl.col("requests") & (1 << K.REQ_PMI)) != 0


def recorded(td: TraceData, table: str, event: str) -> bool | None:
    """Was ``event`` recorded? True when its table has rows; else what the input says (perf.data attrs,
    the capture.json of `vpmutrace record`); None when the input cannot tell (text, trace.dat)."""
    if td.has(table):
        return True
    for i in td.meta.get("inputs", []):
        if i.get("events") is not None:
            return any(e.get("name") == event for e in i["events"])
    cap = td.meta.get("capture") or {}
    if cap.get("events_requested") is not None:
        return event in cap["events_requested"] and event not in (cap.get("events_missing") or [])
    return None


def perf_nmis(td: TraceData) -> pl.DataFrame:
    """nmi:nmi_handler rows of perf's handler (perf_event_nmi_handler), every ``handled`` value."""
    return td.scan("nmi_handler").filter(pl.col("handler").str.starts_with(K.PERF_NMI_HANDLER)) \
        .with_row_index("nmi_row").collect()


def _nmi_pair_candidates(td: TraceData, ex: pl.DataFrame, window_ns: int) -> pl.DataFrame:
    """Per NMI exit (identified or not) of ``ex``: the perf NMI of its thread and CPU just before it,
    after the thread's previous entry (where 6.3+ VMX and SVM handle it), and the one just after it,
    before the thread's next entry (where VMX 5.8-6.2 handle it), each within ``window_ns``."""
    nx = ex.filter(any_nmi_exit()).select(
        "exit_row", "ts_ns", "cpu", "pid", pl.col("source").cast(pl.String), nmi_exit().alias("identified"))
    empty = {"b_row": pl.UInt32, "b_ts": pl.Int64, "b_handled": pl.Int32, "a_row": pl.UInt32, "a_ts": pl.Int64,
             "a_handled": pl.Int32}
    if nx.height == 0 or not td.has("nmi_handler"):
        return nx.with_columns([pl.lit(None, t).alias(c) for c, t in empty.items()])
    pn = perf_nmis(td).select("nmi_row", pl.col("ts_ns").alias("nmi_ts"), "cpu", "pid", "handled").sort("nmi_ts")
    en = entries(td).select("source", "pid", "entry_ts").sort("entry_ts") if td.has("kvm_entry") else None
    j = nx.sort("ts_ns")
    if en is not None:
        j = j.join_asof(en.rename({"entry_ts": "prev_entry"}), left_on="ts_ns", right_on="prev_entry",
                        by=["source", "pid"], strategy="backward")
        j = j.join_asof(en.rename({"entry_ts": "next_entry"}), left_on="ts_ns", right_on="next_entry",
                        by=["source", "pid"], strategy="forward")
    else:
        j = j.with_columns(pl.lit(None, pl.Int64).alias("prev_entry"), pl.lit(None, pl.Int64).alias("next_entry"))
    b = j.join_asof(pn.rename({"nmi_row": "b_row", "nmi_ts": "b_ts", "handled": "b_handled"}), left_on="ts_ns",
                    right_on="b_ts", by=["cpu", "pid"], strategy="backward", tolerance=window_ns)
    b = b.join_asof(pn.rename({"nmi_row": "a_row", "nmi_ts": "a_ts", "handled": "a_handled"}), left_on="ts_ns",
                    right_on="a_ts", by=["cpu", "pid"], strategy="forward", tolerance=window_ns)
    ok_b = pl.col("b_ts").is_not_null() & (pl.col("prev_entry").is_null() | (pl.col("b_ts") > pl.col("prev_entry")))
    ok_a = pl.col("a_ts").is_not_null() & (pl.col("next_entry").is_null() | (pl.col("a_ts") < pl.col("next_entry")))
    return b.with_columns([pl.when(ok_b).then(pl.col(c)).otherwise(None).alias(c) for c in ("b_row", "b_ts",
                                                                                            "b_handled")]
                          + [pl.when(ok_a).then(pl.col(c)).otherwise(None).alias(c) for c in ("a_row", "a_ts",
                                                                                              "a_handled")]
                          ).sort("exit_row")


def nmi_order_in_trace(td: TraceData, ex: pl.DataFrame, release: K.NmiOrder, window_ns: int) -> K.NmiOrder:
    """The NMI event order the trace itself shows (design §3.4): which side of their NMI exits the
    perf NMIs lie on. The kernel release decides unless the data clearly disagree (at least 3 pairs,
    3 times more on the other side): distribution kernels backport KVM's exit path."""
    c = _nmi_pair_candidates(td, ex, window_ns).filter(pl.col("identified"))
    nb, na = c["b_ts"].is_not_null().sum(), c["a_ts"].is_not_null().sum()
    data = K.NMI_BEFORE_EXIT if nb > na else K.NMI_AFTER_EXIT if na > nb else None
    if release.order == K.NMI_ORDER_UNKNOWN:
        if data is None:
            return release
        return K.NmiOrder(data, f"kernel release unknown: the trace has {nb} perf NMIs just before their NMI exit, "
                                f"{na} just after")
    other, n_rel, n_oth = ((K.NMI_AFTER_EXIT, nb, na) if release.order == K.NMI_BEFORE_EXIT
                           else (K.NMI_BEFORE_EXIT, na, nb))
    if n_oth >= 3 and n_oth > 3 * n_rel:
        return K.NmiOrder(other, f"{release.why}; but the trace shows {n_oth} NMIs on the other side of their exits "
                                 f"and {n_rel} on this one (a kernel with a backported exit path?): the trace wins")
    return release


def pair_nmi_exits(td: TraceData, ex: pl.DataFrame, order: str, window_ns: int) -> pl.DataFrame:
    """NMI exits of ``ex`` (from ``exits(td)``, VMX EXCEPTION_NMI exits without intr_info included,
    ``identified`` false) with the perf NMI that caused them, if any: the perf NMI on the same CPU and
    thread within ``window_ns`` on the side of the exit the kernel handles NMIs (``order``, from
    nmi_order_in_trace), after the thread's previous entry or before its next one; the nearer side
    when the order is unknown. Each perf NMI pairs with one exit (the nearest). Columns added:
    identified, nmi_row, nmi_ts, handled (null when unpaired)."""
    c = _nmi_pair_candidates(td, ex, window_ns)
    d_b = pl.col("ts_ns") - pl.col("b_ts")
    d_a = pl.col("a_ts") - pl.col("ts_ns")
    if order == K.NMI_BEFORE_EXIT:
        side = pl.lit("b")
    elif order == K.NMI_AFTER_EXIT:
        side = pl.lit("a")
    else:
        side = pl.when(pl.col("b_ts").is_null()).then(pl.lit("a")).when(pl.col("a_ts").is_null()).then(pl.lit("b")) \
            .when(d_b <= d_a).then(pl.lit("b")).otherwise(pl.lit("a"))
    c = c.with_columns(side.alias("_s"))
    j = c.with_columns(
        pl.when(pl.col("_s") == "b").then(pl.col("b_row")).otherwise(pl.col("a_row")).alias("nmi_row"),
        pl.when(pl.col("_s") == "b").then(pl.col("b_ts")).otherwise(pl.col("a_ts")).alias("nmi_ts"),
        pl.when(pl.col("_s") == "b").then(pl.col("b_handled")).otherwise(pl.col("a_handled")).alias("handled"))
    j = j.with_columns((pl.col("ts_ns") - pl.col("nmi_ts")).abs().alias("_d"))
    keep = j.filter(pl.col("nmi_row").is_not_null()).sort("_d").unique("nmi_row", keep="first")["exit_row"]
    j = j.with_columns([pl.when(pl.col("exit_row").is_in(keep.implode())).then(pl.col(c)).otherwise(None).alias(c)
                        for c in ("nmi_row", "nmi_ts", "handled")])
    return j.select("exit_row", "ts_ns", "cpu", "pid", "source", "identified", "nmi_row", "nmi_ts", "handled") \
        .sort("exit_row")


def lvtpc_writes(td: TraceData) -> pl.DataFrame:
    """Guest writes of its LVTPC seen by KVM: x2APIC MSR 0x834 (kvm_msr) and xAPIC MMIO (kvm:kvm_apic
    register 0x340). Columns: ts_ns, source, pid, value."""
    parts = [_apic_writes(td, APIC_LVTPC)]
    if td.has("kvm_msr"):
        parts.append(td.scan("kvm_msr").filter(pl.col("write") & (pl.col("msr") == X2APIC_LVTPC)
                                               & ~pl.col("gp").fill_null(False))
                     .select("ts_ns", pl.col("source").cast(pl.String), "pid", pl.col("value").cast(pl.Int64))
                     .collect())
    return pl.concat(parts).sort("ts_ns")


def event_rows(td: TraceData, names: tuple[str, ...]) -> pl.DataFrame:
    """(ts_ns, source, pid) of every row of the given events ("system:event"), from their per-event
    typed tables ("system.event")."""
    parts = [td.scan(t).select("ts_ns", pl.col("source").cast(pl.String), "pid").collect()
             for t in (n.replace(":", ".", 1) for n in names) if t in td.tables and td.has(t)]
    if not parts:
        return pl.DataFrame(schema={"ts_ns": pl.Int64, "source": pl.String, "pid": pl.Int32})
    return pl.concat(parts)


APIC_ICR, APIC_LVTPC = 0x300, 0x340  # xAPIC register offsets (kvm:kvm_apic ``reg``; SDM Table 11-1)


def _apic_writes(td: TraceData, reg: int) -> pl.DataFrame:
    """Guest xAPIC MMIO writes of one register (kvm:kvm_apic, rw=1): ts_ns, source, pid, value."""
    if not td.has("kvm.kvm_apic"):
        return pl.DataFrame(schema={"ts_ns": pl.Int64, "source": pl.String, "pid": pl.Int32, "value": pl.Int64})
    return td.scan("kvm.kvm_apic").filter((pl.col("rw") == 1) & (pl.col("reg") == reg)).select(
        "ts_ns", pl.col("source").cast(pl.String), "pid", pl.col("val").cast(pl.Int64).alias("value")).collect()


def _ipis(td: TraceData) -> pl.DataFrame:
    """Interrupts a vCPU sent through its ICR (ts_ns, source, pid): kvm:kvm_apic_ipi, x2APIC ICR
    writes (kvm_msr 0x830) and xAPIC ICR writes (kvm:kvm_apic)."""
    parts = [event_rows(td, ("kvm:kvm_apic_ipi",)), _apic_writes(td, APIC_ICR).drop("value")]
    if td.has("kvm_msr"):
        parts.append(td.scan("kvm_msr").filter(pl.col("write") & (pl.col("msr") == K.MSR_X2APIC_ICR))
                     .select("ts_ns", pl.col("source").cast(pl.String), "pid").collect())
    return pl.concat(parts)


def self_injections(td: TraceData) -> pl.DataFrame:
    """kvm_apic_accept_irq rows delivered on the receiving vCPU's own thread and not sent as an IPI:
    what KVM raises for the vCPU itself (kvm_apic_local_deliver() of an LVT entry, e.g.
    kvm_pmu_deliver_pmi() for LVTPC). IPIs and device interrupts fire on the sender's thread; a
    self-IPI (kvm_apic_ipi on the same thread just before, 5 us) is excluded. The thread's own APIC
    id is taken as its vCPU id (QEMU's default for contiguous topologies); threads whose kvm_exit
    has no vcpu_id give no self-injection."""
    acc = td.df("kvm_apic_accept_irq").with_columns(pl.col("source").cast(pl.String),
                                                    pl.col("delivery_mode").cast(pl.String))
    if acc.height == 0:
        return acc
    rows = [td.scan(t).select(pl.col("source").cast(pl.String), "pid", "vcpu_id").collect()
            for t in ("kvm_exit", "kvm_entry") if td.has(t)]
    if not rows:
        return acc.clear()
    ids = pl.concat(rows).group_by("source", "pid").agg(pl.col("vcpu_id").drop_nulls().mode().first())
    j = acc.join(ids, on=["source", "pid"], how="inner")
    j = j.filter(pl.col("apicid").cast(pl.Int64) == pl.col("vcpu_id").cast(pl.Int64)).drop("vcpu_id")
    ipi = _ipis(td)
    if ipi.height and j.height:
        k = j.sort("ts_ns").join_asof(ipi.rename({"ts_ns": "_ipi"}).sort("_ipi"), left_on="ts_ns", right_on="_ipi",
                                      by=["source", "pid"], strategy="backward", tolerance=5_000)
        j = k.filter(pl.col("_ipi").is_null()).drop("_ipi")
    return j


def pmi_injections(td: TraceData) -> pl.DataFrame:
    """Guest PMIs KVM injected (kvm_pmu_deliver_pmi() -> kvm_apic_local_deliver(APIC_LVTPC)):
    self-delivered accept_irq in NMI mode (Linux guests program LVTPC as NMI:
    perf_events_lapic_init()), or in Fixed mode on the guest's LVTPC vector (Windows' HAL uses a
    fixed vector, 0xFE). The vector comes from the guest's LVTPC writes (x2APIC MSR 0x834, xAPIC
    kvm_apic); without one, a fixed vector that follows at least 3 NMI or 0xF5 exits of the
    thread (80% of the fixed self-injections after them) is taken as its LVTPC, marked
    '(inferred)'. Columns of kvm_apic_accept_irq plus ``lvtpc`` ('NMI' or 'fixed 0xNN')."""
    inj = self_injections(td)
    if inj.height == 0:
        return inj.with_columns(pl.lit(None, pl.String).alias("lvtpc"))
    nmi = inj.filter(pl.col("delivery_mode") == "NMI").with_columns(pl.lit("NMI").alias("lvtpc"))
    fixed = inj.filter(pl.col("delivery_mode") == "Fixed")
    if fixed.height == 0:
        return nmi
    w = lvtpc_writes(td).filter((pl.col("value") & APIC_DM_MASK) == 0)  # fixed delivery mode
    vec = w.group_by("source", "pid").agg((pl.col("value") & 0xFF).last().alias("_vec")) \
        .with_columns(pl.lit("").alias("_how"))
    inferred = _inferred_lvtpc(td, fixed, vec)
    vec = pl.concat([vec, inferred], how="vertical_relaxed")
    if vec.height == 0:
        return nmi
    hexv = {v: f"fixed 0x{v:02x}" for v in vec["_vec"].unique().to_list()}
    f = fixed.join(vec, on=["source", "pid"], how="inner").filter(pl.col("vector").cast(pl.Int64) == pl.col("_vec")) \
        .with_columns((pl.col("_vec").replace_strict(hexv, return_dtype=pl.String) + pl.col("_how")).alias("lvtpc")) \
        .drop("_vec", "_how")
    return pl.concat([nmi, f], how="vertical_relaxed").sort("ts_ns")


def _inferred_lvtpc(td: TraceData, fixed: pl.DataFrame, known: pl.DataFrame) -> pl.DataFrame:
    """LVTPC vectors of threads that never wrote their LVTPC, from the fixed self-injections that
    follow their NMI and 0xF5 exits (see pmi_injections)."""
    empty = pl.DataFrame(schema={"source": pl.String, "pid": pl.Int32, "_vec": pl.Int64, "_how": pl.String})
    if not (td.has("kvm_exit") and td.has("kvm_entry")):
        return empty
    ex = exits(td).filter(nmi_exit() | mediated_pmi_exit()).with_columns(pl.col("source").cast(pl.String))
    if ex.height == 0:
        return empty
    cand = fixed.join(known.select("source", "pid"), on=["source", "pid"], how="anti")
    if cand.height == 0:
        return empty
    j = next_event_before_entry(ex, cand.select("ts_ns", "source", "pid"), entries(td), "inj_ts") \
        .filter(pl.col("inj_ts").is_not_null())
    if j.height == 0:
        return empty
    hit = j.select("source", "pid", pl.col("inj_ts").alias("ts_ns")).join(
        cand.select("ts_ns", "source", "pid", pl.col("vector").cast(pl.Int64)), on=["ts_ns", "source", "pid"])
    stats = hit.group_by("source", "pid").agg(pl.col("vector").mode().first().alias("_vec"), pl.len().alias("n"),
                                              (pl.col("vector") == pl.col("vector").mode().first()).mean()
                                              .alias("share"))
    return stats.filter((pl.col("n") >= 3) & (pl.col("share") >= 0.8)).select(
        "source", "pid", "_vec", pl.lit(" (inferred)").alias("_how"))


def next_event_before_entry(ex: pl.DataFrame, ev: pl.DataFrame, entries: pl.DataFrame,
                            ts_col: str = "ev_ts") -> pl.DataFrame:
    """For each exit of ``ex``: the first row of ``ev`` on the same (source, pid) after the exit and
    before that thread's next kvm_entry (``entries``: source, pid, entry_ts). Adds ``ts_col``."""
    e = ex.with_columns(pl.col("source").cast(pl.String)).sort("ts_ns")
    nxt = e.join_asof(entries.sort("entry_ts"), left_on="ts_ns", right_on="entry_ts", by=["source", "pid"],
                      strategy="forward")
    evs = ev.select(pl.col("ts_ns").alias(ts_col), pl.col("source").cast(pl.String), "pid").sort(ts_col)
    j = nxt.join_asof(evs, left_on="ts_ns", right_on=ts_col, by=["source", "pid"], strategy="forward")
    return j.with_columns(pl.when(pl.col("entry_ts").is_null() | (pl.col(ts_col) <= pl.col("entry_ts")))
                          .then(pl.col(ts_col)).otherwise(None).alias(ts_col))


def entries(td: TraceData) -> pl.DataFrame:
    """kvm_entry rows as (source, pid, entry_ts, entry_intr_info)."""
    return td.scan("kvm_entry").select(pl.col("source").cast(pl.String), "pid", pl.col("ts_ns").alias("entry_ts"),
                                       pl.col("intr_info").alias("entry_intr_info")).collect()


# classes of NMI exits (classify_nmi_exits)
GUEST_PMI, HOST_PMI, OTHER_NMI, UNKNOWN_NMI = "guest_pmi", "host_pmi", "other_nmi", "unknown"


def classify_nmi_exits(td: TraceData, ex: pl.DataFrame, order: str, window_ns: int) -> pl.DataFrame:
    """Every NMI exit of ``ex`` with the perf NMI that caused it, the guest-PMI injection that
    followed (before the thread's next entry) and its class (design §3.3, §3.4):

    - guest_pmi, fact: kvm_exit.requests carries KVM_REQ_PMI (__kvm_perf_overflow() ran in
      this NMI);
    - guest_pmi, candidate: KVM injected the guest's LVTPC interrupt before the next entry;
    - host_pmi: perf_event_nmi_handler claimed the NMI (handled >= 1) and no guest PMI
      followed although injections were recorded: a host perf event that counts guest time
      (the NMI watchdog, host sampling); a fact where the requests field shows no PMI request;
    - other_nmi: perf did not claim it (handled = 0) or no perf NMI is near although
      nmi:nmi_handler was recorded (another NMI source: IPI backtraces, unknown NMIs);
    - unknown: nmi:nmi_handler or kvm_apic_accept_irq was not recorded and nothing else tells.
    Exits whose NMI type the trace does not carry (``identified`` false) are never facts.
    """
    pairs = pair_nmi_exits(td, ex, order, window_ns).join(
        ex.select("exit_row", "requests"), on="exit_row", how="left")
    if pairs.height == 0:
        return pairs.with_columns(pl.lit(None, pl.Int64).alias("inj_ts"), pl.lit(None, pl.String).alias("class"),
                                  pl.lit(None, pl.String).alias("certainty"), pl.lit(None, pl.String).alias("lvtpc"))
    inj = pmi_injections(td)
    if inj.height and td.has("kvm_entry"):
        pairs = next_event_before_entry(pairs, inj, entries(td), "inj_ts").drop("entry_ts")
        pairs = pairs.join(inj.select(pl.col("ts_ns").alias("inj_ts"), pl.col("source").cast(pl.String), "pid",
                                      "lvtpc").unique(["inj_ts", "source", "pid"]),
                           on=["inj_ts", "source", "pid"], how="left")
    else:
        pairs = pairs.with_columns(pl.lit(None, pl.Int64).alias("inj_ts"), pl.lit(None, pl.String).alias("lvtpc"))
    nmi_seen = td.has("nmi_handler")
    # without the injections (kvm_apic_accept_irq) and without requests a claimed NMI exit could be
    # either a guest PMI or a host event: unknown, not host
    can_see_guest = bool(recorded(td, "kvm_apic_accept_irq", "kvm:kvm_apic_accept_irq"))
    req = requests_pmi()
    has_req = pl.col("requests").is_not_null()
    cls = (pl.when(has_req & req).then(pl.lit(GUEST_PMI))
           .when(pl.col("inj_ts").is_not_null()).then(pl.lit(GUEST_PMI))
           .when((pl.col("handled") >= 1) & (has_req | pl.lit(can_see_guest))).then(pl.lit(HOST_PMI))
           .when(pl.col("handled") >= 1).then(pl.lit(UNKNOWN_NMI))
           .when(pl.lit(nmi_seen)).then(pl.lit(OTHER_NMI)).otherwise(pl.lit(UNKNOWN_NMI)))
    cert = (pl.when(has_req & req & pl.col("identified")).then(pl.lit("fact"))
            .when((pl.col("handled") >= 1) & has_req & pl.col("identified")).then(pl.lit("fact"))
            .otherwise(pl.lit("candidate")))
    return pairs.with_columns(cls.alias("class"), cert.alias("certainty")).sort("exit_row")


def mediated_pmi_exits(td: TraceData, ex: pl.DataFrame, svm: bool) -> pl.DataFrame:
    """Guest PMIs of the mediated design (design §3.1, §3.2): VMX external-interrupt exits on
    vector 0xF5 (fact), and, when ``svm`` (the design is known to be mediated), SVM interrupt exits
    (which report no vector) followed by an LVTPC injection before the thread's next entry
    (candidate). Adds inj_ts, lvtpc, certainty."""
    vmx = ex.filter(mediated_pmi_exit()).with_columns(pl.lit("fact").alias("certainty"))
    svm_rows = ex.filter(extint_exit() & (pl.col("isa") == K.ISA_SVM)) if svm else ex.clear()
    inj = pmi_injections(td)
    parts = []
    if td.has("kvm_entry"):
        en = entries(td)
        for part, keep_all in ((vmx, True), (svm_rows, False)):
            if part.height == 0:
                continue
            if inj.height:
                j = next_event_before_entry(part, inj, en, "inj_ts").drop("entry_ts")
                j = j.join(inj.select(pl.col("ts_ns").alias("inj_ts"), pl.col("source").cast(pl.String), "pid",
                                      "lvtpc").unique(["inj_ts", "source", "pid"]), on=["inj_ts", "source", "pid"],
                           how="left")
            else:
                j = part.with_columns(pl.col("source").cast(pl.String), pl.lit(None, pl.Int64).alias("inj_ts"),
                                      pl.lit(None, pl.String).alias("lvtpc"))
            if not keep_all:
                j = j.filter(pl.col("inj_ts").is_not_null()).with_columns(pl.lit("candidate").alias("certainty"))
            parts.append(j)
    elif vmx.height:
        parts.append(vmx.with_columns(pl.col("source").cast(pl.String), pl.lit(None, pl.Int64).alias("inj_ts"),
                                      pl.lit(None, pl.String).alias("lvtpc")))
    if not parts:
        return ex.clear().with_columns(pl.col("source").cast(pl.String), pl.lit(None, pl.Int64).alias("inj_ts"),
                                       pl.lit(None, pl.String).alias("lvtpc"),
                                       pl.lit(None, pl.String).alias("certainty"))
    return pl.concat(parts, how="diagonal_relaxed").sort("exit_row")


# ---- kvm-pmu probe events (collectors/probes.py; functions in model/kernel.py FN_*) ------------------
# A probe event is found by its event name in any group: `vpmutrace record` names entry probes after the
# function and return probes <function>__return (perf probe's names too); the kernel's default names are
# <function>__entry / <function>__exit for fprobes (trace_fprobe.c) and p_<function>_0 / r_<function>_0
# for kprobes (trace_kprobe.c). A probe that was not recorded is None, never an empty (zero) table: a
# table of the trace, or an event the capture says it created (capture.json), is recorded.
PROBE_ENTRY_NAMES = ("{f}", "{f}__entry", "p_{f}_0")
PROBE_RETURN_NAMES = ("{f}__return", "{f}__exit", "r_{f}_0")


def probe_table(td: TraceData, func: str, ret: bool = False) -> str | None:
    """The table of the probe on ``func`` (its return when ``ret``), or None when it was not recorded."""
    names = {p.format(f=func) for p in (PROBE_RETURN_NAMES if ret else PROBE_ENTRY_NAMES)}
    created = {c.get("event", "").replace(":", ".", 1) for c in
               ((td.meta.get("capture") or {}).get("summary", {}).get("probes") or {}).get("created", [])}
    for table in sorted(set(td.tables) | created):
        system, dot, event = table.partition(".")
        if dot and event in names and system not in ("kvm", "kvmmmu", "msr", "nmi", "sched", "irq_vectors"):
            return table
    return None


def probe_rows(td: TraceData, funcs: tuple[str, ...] | str,
               ret: bool = False) -> tuple[pl.DataFrame | None, str | None]:
    """(rows, function) of the first of ``funcs`` whose probe was recorded (rows may be empty: recorded,
    none fired), or (None, None): not recorded. Rows keep every probe field, with ``source`` as a string."""
    for f in (funcs,) if isinstance(funcs, str) else funcs:
        t = probe_table(td, f, ret)
        if t is not None:
            return td.df(t).with_columns(pl.col("source").cast(pl.String)), f
    return None, None
