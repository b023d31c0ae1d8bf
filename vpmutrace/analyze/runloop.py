"""Exit/entry pairing one time chunk at a time, so that its memory is a chunk of the tables, not
the trace.

Pairing an exit with its thread's next kvm_entry (the rule: windows.py's module docstring) needs
only that thread's events between the two. The tables are read in consecutive time ranges
[T0, T1), [T1, T2), ... (``time_chunks``: the tables, each in time order, read side by side in
batches; a range ends where a batch of the lead table ends), and each range is paired on its own,
except for the exits whose thread has no later kvm_entry or kvm_exit inside the range: those wait
for the next range, together with their threads' later rows of the tables their pairing reads
(instructions KVM emulated and other events that move the guest's rip, MSR writes). An exit waits
until its thread next enters or exits the guest, so what waits is about one exit per vCPU thread.

``exit_interval_chunks`` yields every exit once, with the columns of ``windows.exit_intervals``
plus ``tgid`` and ``msr_written``: the rows are the whole-trace computation's (tests/test_runloop.py
compares them on every fixture and simulator scenario with ranges of a few rows). A table that is
not in time order (a text trace with lines out of order) is paired in one range, i.e. in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.model import kernel as K
from vpmutrace.tracedata import TraceData

KEY = ["source", "pid"]
MAX_INSN_LEN = 15  # SDM vol. 2 2.3.11: an instruction is at most 15 bytes
CHUNK_ROWS = 1 << 17  # kvm_exit rows per range
ONE_RANGE = 1 << 62  # as ``rows``: the whole table in one range

# exits after which the guest legitimately resumes elsewhere (SDM Appendix C, svm.h)
_VMX_RIP_MOVERS = (2, 3, 4, 9, 20, 24)  # TRIPLE_FAULT, INIT_SIGNAL, SIPI_SIGNAL, TASK_SWITCH, VMLAUNCH, VMRESUME
_SVM_RIP_MOVERS = (0x63, 0x7D, 0x7F, 0x80)  # init, task_switch, shutdown, vmrun
_RIP_MOVING_TABLES = ("kvm_emulate_insn", "kvm_userspace_exit")
_RIP_MOVING_EVENTS = ("kvm:kvm_nested_vmexit_inject", "kvm:kvm_nested_vmenter", "kvm:kvm_nested_vmrun",
                      "kvm:kvm_smm_transition", "kvm:kvm_enter_smm")

EXIT_COLUMNS = ("ts_ns", "seq", "cpu", "source", "pid", "tgid", "comm", "vcpu_id", "exit_reason", "reason", "isa",
                "intr_info", "info2", "requests", "guest_rip")
ENTRY_COLUMNS = ("ts_ns", "seq", "cpu", "source", "pid", "vcpu_id", "rip", "intr_info")
INTERVAL_COLUMNS = ("exit_row", "ts_ns", "cpu", "source", "pid", "comm", "vcpu_id", "exit_reason", "basic", "reason",
                    "isa", "intr_info", "requests", "guest_rip", "entry_ts", "handling_ns", "unpaired",
                    "entry_intr_info", "msr_written")


@dataclass
class _Stream:
    """One table read in batches, the rows not yet handed out in ``buf``."""

    batches: Iterator[pl.DataFrame] | None
    buf: pl.DataFrame

    def load(self) -> bool:
        b = next(self.batches, None) if self.batches is not None else None
        if b is None:
            self.batches = None
            return False
        self.buf = pl.concat([self.buf, b]) if self.buf.height else b
        return True

    def take_before(self, t: int | None) -> pl.DataFrame:
        """The buffered and remaining rows with ts_ns < t (all of them for None)."""
        if t is None:
            while self.load():
                pass
            out, self.buf = self.buf, self.buf.clear()
            return out
        while self.batches is not None and (self.buf.height == 0 or self.buf["ts_ns"][-1] < t):
            self.load()
        n = self.buf["ts_ns"].search_sorted(t, "left") if self.buf.height else 0
        out, self.buf = self.buf.head(n), self.buf.slice(n)
        return out


def _range_end(lead: _Stream, rows: int) -> int | None:
    """Where the next range ends: the time stamp of the lead table's row ``rows`` ahead (later, if
    more rows than that share the first time stamp); None: the range takes everything left."""
    while lead.batches is not None and lead.buf.height <= rows:
        lead.load()
    ts = lead.buf["ts_ns"]
    if ts.len() <= rows:
        return None
    if ts[rows] > ts[0]:
        return ts[rows]
    while True:  # more than ``rows`` rows at one time stamp: the range ends after them
        i = ts.search_sorted(ts[0], "right")
        if i < ts.len():
            return ts[i]
        if not lead.load():
            return None
        ts = lead.buf["ts_ns"]


def in_time_order(batches: Iterator[pl.DataFrame]) -> bool:
    """Are the rows' ts_ns non-null and never going back?"""
    last = None
    for b in batches:
        ts = b["ts_ns"]
        if ts.len() == 0:
            continue
        if ts.null_count() or not ts.is_sorted() or (last is not None and ts[0] < last):
            return False
        last = ts[-1]
    return True


@dataclass(frozen=True)
class Source:
    """A table read in batches for ``time_chunks``: its columns, and what each batch becomes."""

    table: str
    columns: tuple[str, ...]
    then: Callable[[pl.LazyFrame], pl.LazyFrame] = lambda lf: lf

    def batches(self, td: TraceData, rows: int) -> Iterator[pl.DataFrame]:
        return (self.then(b.lazy()).collect() for b in td.batches(self.table, self.columns, rows))

    def empty(self, td: TraceData) -> pl.DataFrame:
        return self.then(td.scan(self.table, list(self.columns)).clear()).collect()


def time_chunks(td: TraceData, sources: dict[str, Source], lead: str,
                rows: int) -> Iterator[tuple[dict[str, pl.DataFrame], bool]]:
    """Consecutive time ranges of tables each in time order (``in_time_order``): every row of every
    table once, in the range that holds its ts_ns (rows of one time stamp stay together), and
    whether the range is the last. A range ends after ``rows`` rows of the ``lead`` table."""
    size = min(rows, CHUNK_ROWS)
    streams = {k: _Stream(src.batches(td, size), src.empty(td)) for k, src in sources.items()}
    while True:
        t = _range_end(streams[lead], rows)
        yield {k: s.take_before(t) for k, s in streams.items()}, t is None
        if t is None:
            return


# ---- one range's pairing -------------------------------------------------------------------------
def _rip_moving_exit() -> pl.Expr:
    return (((pl.col("isa") == K.ISA_VMX) & pl.col("basic").is_in(_VMX_RIP_MOVERS))
            | ((pl.col("isa") == K.ISA_SVM) & pl.col("basic").is_in(_SVM_RIP_MOVERS))).fill_null(False)


def losses(td: TraceData) -> pl.DataFrame:
    """Loss intervals [l_start, l_end] per CPU (cpu null: any CPU) from the lost table."""
    lost = td.scan("lost", ["cpu", "start_ns", "ts_ns"]).collect()
    if lost.height == 0:
        return pl.DataFrame(schema={"cpu": pl.Int32, "l_start": pl.Int64, "l_end": pl.Int64})
    return lost.select("cpu", pl.coalesce("start_ns", "ts_ns").alias("l_start"), pl.col("ts_ns").alias("l_end")) \
        .filter(pl.col("l_end").is_not_null())


def crosses_loss(df: pl.DataFrame, a: str, b: str, lost: pl.DataFrame) -> pl.Series:
    """Per row of ``df`` (with ``cpu``): does a loss on its CPU (or on an unknown CPU) overlap [a, b]?"""
    if lost.height == 0 or df.height == 0:
        return pl.Series([False] * df.height, dtype=pl.Boolean)
    rows = df.select("cpu", pl.col(a).alias("_a"), pl.col(b).alias("_b")).with_row_index("_i")
    anycpu = lost.filter(pl.col("cpu").is_null())
    hit = rows.join(lost.filter(pl.col("cpu").is_not_null()), on="cpu", how="inner")
    if anycpu.height:
        hit = pl.concat([hit, rows.join(anycpu.drop("cpu"), how="cross")], how="diagonal_relaxed")
    hit = hit.filter(pl.col("_b").is_not_null() & (pl.col("l_start") <= pl.col("_b"))
                     & (pl.col("l_end") >= pl.col("_a")))["_i"].unique()
    return rows["_i"].is_in(hit.implode())


def _first_after(ex: pl.DataFrame, ev: pl.DataFrame, col: str) -> pl.DataFrame:
    """``ex`` with ``col``: the time of the thread's first row of ``ev`` at or after each exit."""
    return ex.sort("ts_ns").join_asof(ev.rename({"ts_ns": col}).sort(col), left_on="ts_ns", right_on=col,
                                      by=KEY, strategy="forward")


@dataclass
class _Waiting:
    """What a range hands to the next: exits whose thread did nothing more in it, and the later
    rows of those threads in the tables their pairing reads."""

    exits: pl.DataFrame | None = None
    movers: pl.DataFrame | None = None
    writes: pl.DataFrame | None = None


def _since_waiting(rows: pl.DataFrame, waiting: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``rows`` on a thread of ``waiting`` at or after that thread's first waiting exit."""
    first = waiting.group_by(KEY).agg(pl.col("ts_ns").min().alias("_w"))
    return rows.join(first, on=KEY, how="inner").filter(pl.col("ts_ns") >= pl.col("_w")).drop("_w")


def _pair(ex: pl.DataFrame, en: pl.DataFrame, movers: pl.DataFrame, writes: pl.DataFrame, lost: pl.DataFrame,
          last: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Exit intervals of one range (``ex``: completed exits with exit_row), and the exits that wait
    for the next range (none when ``last``)."""
    tl = pl.concat([ex.with_columns(pl.lit(True).alias("_exit")),
                    en.select("ts_ns", "seq", "cpu", "source", "pid", pl.col("rip").alias("_rip"),
                              pl.col("intr_info").alias("_entry_intr"), pl.lit(False).alias("_exit"))],
                   how="diagonal_relaxed").sort([*KEY, "ts_ns", "seq"])
    nxt = {"_exit": "_next_exit", "ts_ns": "_next_ts", "_rip": "_next_rip", "_entry_intr": "_next_intr"}
    tl = tl.with_columns([pl.col(c).shift(-1).over(KEY).alias(a) for c, a in nxt.items()])
    done = tl.filter(pl.col("_exit"))
    waiting = ex.clear()
    if not last:
        waiting = done.filter(pl.col("_next_exit").is_null()).select(ex.columns)
        done = done.filter(pl.col("_next_exit").is_not_null())
    done = done.with_columns(pl.when(~pl.col("_next_exit")).then(pl.col("_next_ts")).alias("entry_ts"))
    # the MSR an MSR exit wrote: the thread's first kvm_msr write before its next entry or exit (KVM
    # traces the write while handling that exit: kvm_emulate_wrmsr(), or handle_fastpath_set_msr_irqoff()
    # on the fastpath; both run between the exit's kvm_exit and the thread's next kvm_entry/kvm_exit)
    done = _first_after(done, writes.select("ts_ns", "source", "pid", pl.col("msr").alias("_msr")), "_m_ts")
    done = done.with_columns(pl.when(P.msr_exit() & pl.col("_m_ts").is_not_null()
                                     & (pl.col("_next_ts").is_null() | (pl.col("_m_ts") <= pl.col("_next_ts"))))
                             .then(pl.col("_msr")).alias("msr_written"))
    done = _first_after(done, movers, "_mv")
    moved = pl.col("_mv").is_not_null() & pl.col("entry_ts").is_not_null() & (pl.col("_mv") <= pl.col("entry_ts"))
    done = done.with_columns(crosses_loss(done, "ts_ns", "entry_ts", lost).alias("_lost"))
    # wrapping u64 difference: guest-kernel rips are >= 2^63
    delta = pl.col("_next_rip").cast(pl.UInt64) - pl.col("guest_rip").cast(pl.UInt64)
    jump = pl.col("_next_rip").is_not_null() & pl.col("guest_rip").is_not_null() & (delta > MAX_INSN_LEN) \
        & ~_rip_moving_exit() & ~moved
    why = (pl.when(pl.col("entry_ts").is_null()).then(pl.lit("no_entry"))
           .when(pl.col("_lost")).then(pl.lit("lost"))
           .when(jump.fill_null(False)).then(pl.lit("rip_jump")).otherwise(None))
    done = done.with_columns(why.alias("unpaired"))
    paired = pl.col("unpaired").is_null()
    done = done.with_columns(pl.when(paired).then(pl.col("entry_ts") - pl.col("ts_ns")).alias("handling_ns"),
                             pl.when(paired).then(pl.col("_next_intr")).alias("entry_intr_info"))
    return done.select(*INTERVAL_COLUMNS, "tgid"), waiting


def _strings(*cols: str) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    return lambda lf: lf.with_columns(pl.col(c).cast(pl.String) for c in cols)


def _sources(td: TraceData) -> dict[str, Source]:
    """What the pairing reads: exits, entries, the events that move a guest's rip, kvm_msr writes."""
    src = {"exit": Source("kvm_exit", EXIT_COLUMNS, _strings("source", "comm", "reason")),
           "entry": Source("kvm_entry", ENTRY_COLUMNS, _strings("source"))}
    names = [*_RIP_MOVING_TABLES, *(n.replace(":", ".", 1) for n in _RIP_MOVING_EVENTS)]
    src.update({f"mv:{t}": Source(t, ("ts_ns", "source", "pid"), _strings("source"))
                for t in names if t in td.tables and td.has(t)})
    if td.has("kvm_msr"):
        src["writes"] = Source("kvm_msr", ("ts_ns", "source", "pid", "msr", "write"),
                               lambda lf: lf.filter(pl.col("write")).drop("write").with_columns(
                                   pl.col("source").cast(pl.String)))
    return src


def exit_interval_chunks(td: TraceData, rows: int = CHUNK_ROWS) -> Iterator[pl.DataFrame]:
    """The exit intervals of ``td`` (``windows.exit_intervals``' columns, plus ``tgid`` and
    ``msr_written``), range by range: each exit once, in the range where its thread next enters or
    exits the guest (the last range: the exits with neither)."""
    sources = _sources(td)
    if not all(in_time_order(td.batches(s.table, ("ts_ns",), CHUNK_ROWS)) for s in sources.values()):
        rows = ONE_RANGE
    intr_absent = P.intr_info_absent(td)
    lost = losses(td)
    empty = pl.DataFrame(schema={"ts_ns": pl.Int64, "source": pl.String, "pid": pl.Int32})
    wait = _Waiting()
    exit_row = 0
    for part, last in time_chunks(td, sources, "exit", rows):
        ex = part["exit"].with_row_index("exit_row", offset=exit_row)
        exit_row += ex.height
        ex = P.complete_exits(td, ex, intr_absent)
        movers = pl.concat([v for k, v in part.items() if k.startswith("mv:")] or [empty], how="vertical_relaxed")
        writes = part.get("writes", pl.DataFrame(schema={**empty.schema, "msr": pl.UInt32}))
        if wait.exits is not None:
            ex = pl.concat([wait.exits, ex], how="vertical_relaxed")
            movers = pl.concat([wait.movers, movers], how="vertical_relaxed")
            writes = pl.concat([wait.writes, writes], how="vertical_relaxed")
        done, waiting = _pair(ex, part["entry"], movers, writes, lost, last)
        wait = _Waiting(waiting, _since_waiting(movers, waiting), _since_waiting(writes, waiting))
        yield done
