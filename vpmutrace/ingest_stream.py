"""``vpmutrace ingest --max-memory``: a perf.data (readers/perf_stream.py, perf_stream_z.py) or a
trace.dat (readers/trace_dat_stream.py) decoded piece by piece and appended to each table's Parquet
file as row groups, so that peak memory follows the piece size and not the file's.

The dataset is the one the in-memory ingest writes (same rows in the same order, same meta and
stats; tests/test_stream*.py check every fixture; a trace.dat's ``seq`` numbers differ, its order
does not): each table in (ts_ns, seq) order. A perf.data's rows are final once perf's round rule
(perf_stream.py) says no later record can be earlier; the rest are held back and merged with the
next piece's. A trace.dat piece holds exactly the events before a time, all final. Rows that break
the rule (an earlier time after the rule said final) are written where they come and counted
(stats ``out_of_order``).

Both cores: a piece's tables are written on threads of their own, side by side (the Parquet writer
releases the GIL), while the next piece is decoded (whose compiled passes run on every core); at
most one piece waits to be written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from vpmutrace.errors import InputError
from vpmutrace.readers import host_snapshot, timebase
from vpmutrace.schema import EVENT_TABLES, SCHEMA_VERSION, is_event_table
from vpmutrace.stats import Stats
from vpmutrace.tracedata import (
    KV_SCHEMA_VERSION,
    KV_TABLE,
    KV_TRACE_META,
    LEGACY_META_FILE,
    TraceBuilder,
    TraceData,
    parquet_writer,
    stats_table,
    write_meta,
    write_parquet,
)

if TYPE_CHECKING:  # (the readers are imported when a file of their kind is ingested in pieces)
    from vpmutrace.readers.perf_stream import PerfStream
    from vpmutrace.readers.trace_dat_stream import TraceDatStream

# Peak resident memory per sample of a piece and before any piece, measured on the 539 MB mixed
# perf.data of benchmarks/bench_readers.py (5.63 M samples; loaded host): pieces of 2^17 / 2^18 /
# 2^19 / 2^20 samples peaked at 250-275 / 260-280 / 280-305 / 450-510 MB
BYTES_PER_SAMPLE = 300
BASE_BYTES = 230 << 20  # the interpreter, pyarrow, polars, numba kernels, the record walk's arrays
MIN_SAMPLES = 1 << 12


def samples_per_piece(max_memory: int) -> int:
    """Samples per piece that keep the peak resident memory under ``max_memory`` bytes (two pieces
    are in memory at once: one decoded, one written)."""
    return max(MIN_SAMPLES, (max_memory - BASE_BYTES) // (2 * BYTES_PER_SAMPLE))


# Peak resident memory per ring-buffer page of a trace.dat piece (the piece's copy of its pages,
# the walk's arrays, the decoded rows, the lookahead), measured on benchmarks/bench_readers.py's
# mixed trace.dat (5.62 M events in 90 k pages; loaded host): pieces of 4 k / 16 k / 64 k pages
# peaked at 192 / 281 / 509 MB, about 4.8 KB per page over a 170 MB base; 6 KB per page of each
# of the two pieces in memory leaves room for pages holding more, smaller events
BYTES_PER_PAGE = 6 << 10
MIN_PAGES = 256


def pages_per_piece(max_memory: int) -> int:
    """Ring-buffer pages per trace.dat piece under ``max_memory`` bytes (as samples_per_piece)."""
    return max(MIN_PAGES, (max_memory - BASE_BYTES) // (2 * BYTES_PER_PAGE))


STREAM_ABOVE = 4 << 30  # a perf.data or trace.dat larger than this is read in pieces even without --max-memory
DEFAULT_MAX_MEMORY = 2 << 30  # ... under this budget
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1.5G``, ``100000000`` (bytes; binary units, an optional trailing B)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in SIZE_UNITS and t[-1:] else ""
    try:
        n = float(t[:-1] if unit else t) * SIZE_UNITS[unit]
    except ValueError:
        raise InputError("--max-memory", f"{text!r} is not a size (e.g. 2G, 512M)") from None
    if n < 64 << 20:
        raise InputError("--max-memory", f"{text!r}: at least 64M")
    return int(n)


def streamable(traces: list[Path], max_memory: int | None, forced_time: bool) -> tuple[int | None, str | None]:
    """(budget, None) when ``traces`` are to be ingested piece by piece (one perf.data or trace.dat
    file, given ``--max-memory`` or larger than STREAM_ABOVE), else (None, why not: None when
    nothing asked for it). ``forced_time``: --clock or --tsc-khz given (they retime the whole input
    at once)."""
    from vpmutrace.readers import sniff

    big = len(traces) == 1 and traces[0].is_file() and traces[0].stat().st_size > STREAM_ABOVE
    if max_memory is None and not big:
        return None, None
    if len(traces) != 1 or not traces[0].is_file() or sniff(traces[0]) not in STREAMED:
        return None, "read in memory: pieces are read from one perf.data or trace.dat file only"
    if forced_time:
        return None, "read in memory: --clock / --tsc-khz retime the whole input"
    return max_memory or DEFAULT_MAX_MEMORY, None


STREAMED = ("perf.data", "trace.dat")


def ingest_file_stream(path: Path, out: Path, max_memory: int, snapshot: Path | None = None) -> TraceData | str:
    """One perf.data or trace.dat ingested in pieces (see ``streamable``)."""
    from vpmutrace.readers import sniff

    if sniff(path) == "trace.dat":
        return ingest_trace_dat_stream(path, out, max_memory, snapshot)
    return ingest_perf_stream(path, out, max_memory, snapshot)


def _event_like(name: str) -> bool:
    return name in {s.name for s in EVENT_TABLES} or is_event_table(name)


class LossStarts:
    """For each loss on a known CPU at a known time, the last event recorded on that CPU before it,
    kept up to date as event rows are written (tracedata._loss_starts, one piece at a time).
    Losses found while reading (``add``: a trace.dat's lost-events pages) come after every row
    written so far on their CPU (trace_dat_stream.py: a page is walked first in the piece whose
    events reach its time): they start at the last of those rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.cpu = np.zeros(0, np.int64)
        self.ts = np.zeros(0, np.int64)
        self.best = np.zeros(0, np.int64)
        self.cpu_last: dict[int, int] = {}  # per CPU: the latest time written
        self.add(rows)

    def add(self, rows: list[dict[str, Any]]) -> None:
        cpu = np.array([r["cpu"] if r["cpu"] is not None and r["ts_ns"] is not None else -1 for r in rows],
                       np.int64)
        ts = np.array([r["ts_ns"] if r["ts_ns"] is not None else 0 for r in rows], np.int64)
        best = np.array([self.cpu_last[c] if c in self.cpu_last and self.cpu_last[c] < t else NONE
                         for c, t in zip(cpu.tolist(), ts.tolist(), strict=True)], np.int64)
        self.cpu, self.ts, self.best = (np.concatenate(x) for x in ((self.cpu, cpu), (self.ts, ts),
                                                                     (self.best, best)))

    def see(self, t: pa.Table) -> None:
        if not t.num_rows:
            return
        cpu = t.column("cpu").to_numpy(zero_copy_only=False)
        cpu = np.where(np.isnan(cpu), -1, cpu).astype(np.int64) if cpu.dtype.kind == "f" else cpu.astype(np.int64)
        ts = t.column("ts_ns").to_numpy()
        for c in np.unique(cpu[cpu >= 0]).tolist():
            sub = ts[cpu == c]
            self.cpu_last[c] = max(self.cpu_last.get(c, NONE), int(sub.max()))
            rows = np.flatnonzero(self.cpu == c)
            if not len(rows):
                continue
            sub = np.sort(sub)
            i = np.searchsorted(sub, self.ts[rows], side="left") - 1
            ok = i >= 0
            self.best[rows[ok]] = np.maximum(self.best[rows[ok]], sub[i[ok]])

    def values(self) -> list[int | None]:
        return [None if b == NONE else int(b) for b in self.best.tolist()]


NONE = np.iinfo(np.int64).min  # no event before the loss


class TableStream:
    """One table's Parquet file, appended row group by row group in (ts_ns, seq) order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: Any = None
        self.schema: pa.Schema | None = None
        self.held: pa.Table | None = None
        self.last: tuple[int, int] | None = None  # (ts_ns, seq) of the last row written
        self.first_ts: int | None = None
        self.late = 0  # rows earlier than a row already written
        self.late_example: str | None = None

    def add(self, t: pa.Table | None, watermark: int | None) -> pa.Table | None:
        """Hold ``t``'s rows, write those up to ``watermark`` (None: hold all; ``math.inf``-like
        final flush: pass ``FLUSH``). Returns the rows written."""
        parts = [x for x in (self.held, t) if x is not None and x.num_rows]
        if not parts:
            return None
        t = parts[0] if len(parts) == 1 else pa.concat_tables(parts)  # (each part in order)
        ts, seq = t.column("ts_ns").to_numpy(), t.column("seq").to_numpy()
        if len(parts) > 1:
            k = parts[0].num_rows
            if (ts[k], seq[k]) < (ts[k - 1], seq[k - 1]):  # they overlap: merge
                order = np.lexsort((seq, ts))
                t = t.unify_dictionaries().combine_chunks().take(pa.array(order))
                ts, seq = ts[order], seq[order]
        n = len(ts) if watermark is FLUSH else 0 if watermark is None else \
            int(np.searchsorted(ts, watermark, side="right"))
        self.held = t.slice(n) if n < len(ts) else None
        if n == 0:
            return None
        head = t.slice(0, n)
        if self.last is not None:
            lts, lseq = self.last
            late = (ts[:n] < lts) | ((ts[:n] == lts) & (seq[:n] < lseq))
            if late.any():
                self.late += int(late.sum())
                j = int(np.flatnonzero(late)[0])
                self.late_example = self.late_example or \
                    f"seq {int(seq[j])}: ts {int(ts[j])} after a row of ts {lts} was written"
        self._write(head)
        self.last = (int(ts[n - 1]), int(seq[n - 1]))
        if self.first_ts is None:
            self.first_ts = int(ts[0])
        return head

    def _write(self, t: pa.Table) -> None:
        if self.writer is None:
            self.schema = t.schema
            self.writer = parquet_writer(t.schema, self.path)
        elif t.schema != self.schema:
            t = t.cast(self.schema)
        self.writer.write_table(t)

    def close(self, kv: dict[bytes, bytes]) -> bool:
        """Footer with ``kv``; whether the file has rows."""
        if self.writer is None:
            return False
        self.writer.add_key_value_metadata(kv)
        self.writer.close()
        return True


FLUSH = object()  # watermark that writes every held row


class _Writes:
    """The tables' files, fed piece by piece on one writer thread."""

    def __init__(self, out: Path, losses: LossStarts) -> None:
        self.out = out
        self.streams: dict[str, TableStream] = {}
        self.losses = losses
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vpmutrace-stream")
        self.tables_pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="vpmutrace-tables")
        self.pending: Future[None] | None = None

    def submit(self, tables: dict[str, pa.Table], watermark: Any, threaded: bool) -> None:
        self.wait()
        if threaded:
            self.pending = self.pool.submit(self._write, tables, watermark)
        else:
            self._write(tables, watermark)

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def _write(self, tables: dict[str, pa.Table], watermark: Any) -> None:
        """Each table's rows to its file, the tables side by side (the writer releases the GIL)."""
        names = sorted(set(tables) | set(self.streams), key=lambda n: -(tables[n].nbytes if n in tables else 0))
        for name in names:
            if name not in self.streams:
                self.streams[name] = TableStream(self.out / f"{name}.parquet")
        written = list(self.tables_pool.map(lambda n: self.streams[n].add(tables.get(n), watermark), names))
        for name, w in zip(names, written, strict=True):
            if w is not None and _event_like(name):
                self.losses.see(w)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)
            self.tables_pool.shutdown(wait=True)

    def remove(self) -> None:
        for st in self.streams.values():
            if st.writer is not None:
                st.writer.close()
            st.path.unlink(missing_ok=True)


class _ClockEvidence:
    """The rows the time-base check reads (timebase.EVIDENCE: the first EVIDENCE_ROWS of each event),
    kept from the pieces and lent to the file's builder while its time base is settled."""

    def __init__(self) -> None:
        self.parts: dict[str, list[pa.Table]] = {}
        self.rows: dict[str, int] = {}
        self.tables: dict[str, str] = {}

    def keep(self, event_tables: dict[str, str], tables: dict[str, pa.Table]) -> None:
        for name, cols in timebase.EVIDENCE.items():
            key = event_tables.get(name)
            t = tables.get(key) if key else None
            room = EVIDENCE_ROWS - self.rows.get(name, 0)
            if t is None or room <= 0 or not set(cols) <= set(t.column_names):
                continue
            self.tables[name] = key  # type: ignore[assignment]
            self.parts.setdefault(name, []).append(t.select(list(cols)).slice(0, room))
            self.rows[name] = self.rows.get(name, 0) + min(room, t.num_rows)

    @contextmanager
    def lent(self, b: TraceBuilder) -> Iterator[None]:
        keys = []
        for name, parts in self.parts.items():
            key = self.tables[name]
            b.event_tables.setdefault(name, key)
            b.chunks.setdefault(key, []).append(pa.concat_tables(parts, promote_options="permissive"))
            keys.append(key)
        try:
            yield
        finally:
            for key in keys:
                b.chunks[key].pop()
                if not b.chunks[key]:
                    del b.chunks[key]


EVIDENCE_ROWS = 2_000_000  # rows of each evidence event kept (the estimates' medians settle long before)


def _merge_stats(into: Stats, piece: Stats) -> None:
    """A piece's counts added to the file's. An example already shown for the same count is not
    repeated (each piece says once what it found of an event's format, as the whole file does);
    examples of unresolved symbols are one per DSO (perf_maps._count)."""
    from vpmutrace.readers.perf_maps import STAT_CATEGORY as SYMBOL_STATS

    have = {(e.source_file, e.category, e.name): e for e in into.entries()}
    for e in piece.entries():
        into.add(e.source_file, e.category, e.name, e.count)
        shown = have.get((e.source_file, e.category, e.name))
        seen = set(shown.examples) if shown else set()
        dsos = {x.rpartition(" in ")[2] for x in seen} if e.category == SYMBOL_STATS else set()
        for ex in e.examples:
            if ex in seen:
                continue
            if e.category == SYMBOL_STATS:
                if ex.rpartition(" in ")[2] in dsos:
                    continue
                dsos.add(ex.rpartition(" in ")[2])
            seen.add(ex)
            into.add(e.source_file, e.category, e.name, 0, ex)


def _merge_symbols(inp: dict[str, Any], piece_inputs: list[dict[str, Any]]) -> None:
    """A piece's symbol resolution summary (perf_maps._meta) added to the input's."""
    got = next((i["symbols"] for i in piece_inputs if "symbols" in i), None)
    if got is None:
        return
    have = inp.get("symbols")
    if have is None:
        inp["symbols"] = got
        return
    have["samples"] += got["samples"]
    have["resolved"] += got["resolved"]
    for r, c in got["unresolved"].items():
        have["unresolved"][r] = have["unresolved"].get(r, 0) + c
    for k in ("with_symbols", "without"):
        have["user_dsos"][k] = sorted(set(have["user_dsos"][k]) | set(got["user_dsos"][k]))


class _PerfPieces:
    """A perf.data's pieces, made final by perf's round rule (perf_stream.py)."""

    def __init__(self, stream: PerfStream) -> None:
        self.stream = stream
        self.round_max: list[int | None] = [None, None]  # highest time seen at the last two round ends

    def header(self, b: TraceBuilder) -> None:
        self.stream.header(b)

    def pieces(self) -> Iterator[tuple[TraceBuilder, int, Any]]:
        for piece, pb in self.stream.pieces():
            yield pb, piece.first_sample, piece.ends_round

    def watermark(self, ends_round: bool, seen_max: int | None) -> Any:
        if ends_round:
            self.round_max = [self.round_max[1], seen_max]
        return self.round_max[0]

    def new_losses(self) -> list[dict[str, Any]]:
        return []  # (the file's lost records are all read by header())

    def done(self, b: TraceBuilder) -> list[int] | None:
        self.stream.done(b)
        return None


class _TraceDatPieces:
    """A trace.dat's pieces: each holds exactly the events before a time (trace_dat_stream.py),
    so that every row is final once decoded."""

    def __init__(self, stream: TraceDatStream) -> None:
        self.stream = stream

    def header(self, b: TraceBuilder) -> None:
        self.stream.header(b)

    def pieces(self) -> Iterator[tuple[TraceBuilder, int, Any]]:
        for _, pb in self.stream.pieces():
            yield pb, 0, None

    def watermark(self, _info: Any, _seen_max: int | None) -> Any:
        return FLUSH

    def new_losses(self) -> list[dict[str, Any]]:
        return self.stream.new_losses()

    def done(self, b: TraceBuilder) -> list[int] | None:
        self.stream.done(b)
        return self.stream.loss_order()


def ingest_perf_stream(path: Path, out: Path, max_memory: int, snapshot: Path | None = None,
                       threaded: bool = True, piece_samples: int | None = None) -> TraceData | str:
    """Ingest one perf.data into the dataset ``out`` in pieces. Returns the dataset's TraceData (its
    tables: the lost table only; the rest are on disk), or why the file must be read in memory."""
    from vpmutrace.readers.perf_stream import PerfStream

    host, host_path = host_snapshot(snapshot, path)
    stream = PerfStream(path, piece_samples or samples_per_piece(max_memory), snapshot=host_path)
    why = stream.needs_memory()
    if why:
        return why
    return _ingest(path, out, _PerfPieces(stream), host, host_path, threaded, {})


def ingest_trace_dat_stream(path: Path, out: Path, max_memory: int, snapshot: Path | None = None,
                            threaded: bool = True, piece_pages: int | None = None) -> TraceData | str:
    """Ingest one trace.dat into the dataset ``out`` in pieces (as ingest_perf_stream)."""
    from vpmutrace.readers import host_guest_roles
    from vpmutrace.readers.trace_dat_stream import TraceDatStream

    host, host_path = host_snapshot(snapshot, path)
    stream = TraceDatStream(path, piece_pages or pages_per_piece(max_memory))
    why = stream.needs_memory()
    if why:
        return why
    roles = host_guest_roles({path: stream.td})
    stream.source, stream.shift, how = roles.get(path, ("host", None, None))
    meta: dict[str, Any] = {"host_guest": {str(p): r[0] for p, r in roles.items()}} if roles else {}
    return _ingest(path, out, _TraceDatPieces(stream), host, host_path, threaded, meta, how)


def _ingest(path: Path, out: Path, stream: Any, host: dict[str, Any] | None, host_path: Path | None,
            threaded: bool, extra_meta: dict[str, Any], time_shift: str | None = None) -> TraceData:
    b = TraceBuilder()
    mark = b.mark()
    stream.header(b)
    if time_shift:
        b.meta["inputs"][-1]["time_shift"] = time_shift
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.parquet"), out / LEGACY_META_FILE]:
        old.unlink(missing_ok=True)
    writes = _Writes(out, LossStarts(b.lost_rows))
    sources: set[Any] = set()
    cpus: set[int] = set()
    seen_max: int | None = None  # highest time of the pieces so far
    evidence = _ClockEvidence()
    try:
        for pb, seq_add, info in stream.pieces():
            _merge_symbols(b.meta["inputs"][-1], pb.meta["inputs"])
            b.event_counts.update(pb.event_counts)
            for k, v in pb.event_tables.items():
                b.event_tables.setdefault(k, v)
            for k, v in pb.event_formats.items():
                b.event_formats.setdefault(k, v)
            _merge_stats(b.stats, pb.stats)
            pb.stats = Stats()
            td = pb.finish()
            tables = {}
            for name, t in td.tables.items():
                if seq_add:
                    i = t.schema.get_field_index("seq")
                    seq = pa.array(t.column(i).to_numpy() + seq_add, pa.int64())
                    t = t.set_column(i, t.schema.field(i), seq)
                tables[name] = t
                last = int(t.column("ts_ns")[-1].as_py())
                seen_max = last if seen_max is None else max(seen_max, last)
            sources.update(td.meta["sources"])
            cpus.update(td.meta.get("cpus_seen", []))
            evidence.keep(pb.event_tables, tables)
            del td, pb
            lost = stream.new_losses()
            if lost:
                writes.wait()  # (the rows written so far are seen before these losses are added)
                b.lost_rows.extend(lost)
                writes.losses.add(lost)
            writes.submit(tables, stream.watermark(info, seen_max), threaded)
            del tables
        writes.submit({}, FLUSH, threaded)
        writes.close()
    except BaseException:  # no half-written files: the directory is no dataset (no meta file) either
        try:
            writes.close()
        finally:
            writes.remove()
        raise
    order = stream.done(b)
    late = {n: s for n, s in writes.streams.items() if s.late}
    for name, s in late.items():
        b.stats.add(str(path), "out_of_order", name, s.late, s.late_example)
    with evidence.lent(b):
        base = timebase.settle(b, mark, None, host, None)
    b.meta["time_unit"] = timebase.merged_unit([base], [str(path)])
    from vpmutrace.readers import check_time_lines

    check_time_lines(b, {})
    losses = writes.losses.values()
    if order is not None:  # the losses found piece by piece, in the order the in-memory reader adds them
        head = len(losses) - len(order)
        perm = list(range(head)) + [head + i for i in order]
        b.lost_rows[:] = [b.lost_rows[i] for i in perm]
        losses = [losses[i] for i in perm]
    td = b.finish()
    meta = td.meta
    firsts = [s.first_ts for s in writes.streams.values() if s.first_ts is not None]
    lasts = [s.last[0] for s in writes.streams.values() if s.last is not None]
    meta["time_span_ns"] = [min(firsts), max(lasts)] if firsts else None
    meta["sources"] = sorted(sources)
    if meta["cpus"] is None and cpus:
        meta["cpus_seen"] = sorted(cpus)
        meta["cpus"] = len(cpus)
    if host is not None:
        meta["host"] = host
        meta["host_snapshot"] = str(host_path)
    meta.update(extra_meta)
    if "lost" in td.tables:
        lost = td.tables["lost"]
        i = lost.schema.get_field_index("start_ns")
        td.tables["lost"] = lost.set_column(i, lost.schema.field(i), pa.array(losses, lost.schema.field(i).type))
    text = json.dumps(meta, sort_keys=True).encode()

    def kv(name: str) -> dict[bytes, bytes]:
        return {KV_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(), KV_TABLE: name.encode(), KV_TRACE_META: text}

    for name, s in writes.streams.items():
        s.close(kv(name))
    extra = dict(td.tables)
    stats = stats_table(td.stats)
    if stats.num_rows:
        extra["stats"] = stats
    for name, t in extra.items():
        if t.num_rows:
            write_parquet(t, out / f"{name}.parquet", kv(name))
    write_meta(out, meta)
    return td
