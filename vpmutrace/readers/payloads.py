"""Binary tracepoint payloads (from ring-buffer pages or perf RAW samples) -> tables.

Records are grouped by ``common_type``; each group is decoded with its own format
(``formats/decode.py``) and goes to its named table (typed_fields.py) or to a table of its
own with a column per format field (schema.event_table_spec). Records of an id without a
format go to ``unparsed`` with their bytes, counted: nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vpmutrace import kernels
from vpmutrace.formats.decode import (
    decode_fields,
    is_scalar,
    scalar_column,
    scalar_dtype,
    var_array,
)
from vpmutrace.formats.event_format import EventFormat, Field
from vpmutrace.readers import arena
from vpmutrace.readers.arena import byte_columns_dtype
from vpmutrace.readers.binio import discard, release_pages
from vpmutrace.schema import (
    ALL_TABLES,
    column_names,
    const_column,
    dict_array,
    event_table_name,
    event_table_spec,
    table_for_event,
    unfit_columns,
)
from vpmutrace.tracedata import TraceBuilder
from vpmutrace.typed_fields import CUTS, typed_columns

PID_TABLE_MAX = 1 << 22  # pids up to the kernel's largest pid_max (4 M) are named through a direct table


@dataclass
class TaskNames:
    """Task names for pids from a trace's saved_cmdlines (pid 0 is '<idle>', as the kernel prints it;
    a pid it has no line for: null). One table pid -> name code for the whole trace, so that a
    column's codes are one gather (no per-table factorize), and its names (each once, the
    unnamed code last: ``distinct_names``) are one dictionary for every table."""

    lut: np.ndarray  # pid -> code; the last entry: the unnamed code (pids past the table clip to it)
    names: list[str | None]

    @classmethod
    def of(cls, cmdlines: dict[int, str]) -> TaskNames:
        pids = [p for p in cmdlines if 0 < p < PID_TABLE_MAX]
        code_map, names = distinct_names(["<idle>"] + [cmdlines[p] for p in pids])
        lut = np.full(max(pids, default=0) + 2, len(names) - 1, dtype=np.int32)  # (unnamed: the last code)
        lut[[0, *pids]] = code_map
        return cls(lut, names)

    def column(self, pids: np.ndarray) -> pa.Array:
        """The names of ``pids`` as a dictionary column (negative pids: unnamed)."""
        keys = np.ascontiguousarray(pids, dtype=np.int32) if pids.dtype.itemsize <= 4 else \
            np.where((pids >= 0) & (pids < len(self.lut)), pids, -1).astype(np.int32)
        codes = np.empty(len(keys), np.int32)
        kernels.parallel(kernels.lookup_codes, len(keys), keys, self.lut, codes)
        named = len(self.names) - 1
        used = self.names if len(codes) and int(codes.max()) >= named else self.names[:named]
        return dict_array(codes, used, check=False)


def distinct_names(names: list[str | None]) -> tuple[np.ndarray, list[str | None]]:
    """Name codes renumbered to one code per distinct name (tasks of one name share it: a dictionary
    holds each name once, and a table's codes run long), the names first, then one code for those
    without a name (code_map: old code -> new), and the names of the new codes (None last)."""
    index: dict[str, int] = {}
    for name in names:
        if name is not None:
            index.setdefault(name, len(index))
    unnamed = len(index)
    code_map = np.array([index[x] if x is not None else unnamed for x in names], dtype=np.int32).reshape(-1)
    return code_map, [*index, None]


@dataclass
class Records:
    """Ring-buffer records, CPU by CPU, each CPU's in recording order: payload offset (int64) and
    length (int32), time in ns (int64), event id (uint16, the payload's common_type); CPU
    ``cpus[k]``'s records are runs[k]..runs[k + 1]. The arrays are consumed by ``emit_payloads``."""

    offsets: np.ndarray
    lengths: np.ndarray
    ts_ns: np.ndarray
    types: np.ndarray
    runs: np.ndarray
    cpus: np.ndarray


MAX_RUNS = 4096  # runs in time order merged by the fill; more (times out of order): one stable sort instead
CHUNK_RECORDS = 1 << 19  # records per chunk of the time line the fill works on (and lets their payloads go after)


@dataclass
class _TimeOrder:
    """The records in time order, in chunks: with ``order`` empty, chunk c is records bounds[c, k]..
    bounds[c + 1, k] of each run k (runs[k]..runs[k + 1], each in time order, on CPU cpus[k]) merged;
    else records order[bounds[c, 0]:bounds[c + 1, 0]] (runs, cpus: the CPUs' records)."""

    runs: np.ndarray
    cpus: np.ndarray
    bounds: np.ndarray
    order: np.ndarray


def _time_order(recs: Records) -> _TimeOrder:
    """Each CPU's records split into runs where time goes back (none, usually); chunks of about
    CHUNK_RECORDS records cut at common times so that the chunks follow each other in time."""
    ts, n = recs.ts_ns, len(recs.ts_ns)
    nch = max(kernels.threads(), -(-n // CHUNK_RECORDS))
    starts = np.sort(np.concatenate((recs.runs[:-1][recs.runs[:-1] < n], np.flatnonzero(ts[1:] < ts[:-1]) + 1)))
    starts = starts[np.concatenate(([True], starts[1:] != starts[:-1]))]  # (np.unique imports numpy.ma)
    if len(starts) > MAX_RUNS:  # (timestamps out of order: a stable sort does it in one go)
        bounds = (np.arange(nch + 1, dtype=np.int64) * n // nch).reshape(-1, 1)
        return _TimeOrder(recs.runs, recs.cpus, bounds, np.argsort(ts, kind="stable"))
    runs = np.append(starts, n).astype(np.int64)
    cpus = recs.cpus[np.searchsorted(recs.runs[:-1], starts, side="right") - 1].astype(np.int64)
    sample = np.sort(ts[::max(1, n // (64 * nch))])
    cuts = sample[np.arange(1, nch) * len(sample) // nch]
    bounds = np.empty((nch + 1, len(starts)), dtype=np.int64)
    for k, (a, z) in enumerate(zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True)):
        bounds[0, k], bounds[nch, k] = a, z
        bounds[1:nch, k] = a + np.searchsorted(ts[a:z], cuts, side="left")
    return _TimeOrder(runs, cpus, bounds, np.zeros(0, np.int64))


def emit_payloads(builder: TraceBuilder, src_file: str, source: str, buf: np.ndarray, recs: Records,
                  formats: Mapping[int, EventFormat], byteorder: str, cmdlines: dict[int, str],
                  symbols: Callable[[int], str | None] | None, seq_base: int = 0) -> None:
    """Decode and add every payload (ring-buffer records): task ids from common_pid, names from the
    trace's saved cmdlines. A record's sequence number is ``seq_base`` + its position in ``recs``;
    each event's rows go in time order (ties in that order).

    One compiled pass writes every record's time, CPU, sequence number, scalar fields and fixed
    arrays straight to its row of its event's columns (one arena), taking the records in time
    order (the CPUs' records merged); then each event's other fields are decoded. The payloads'
    memory (``buf``: a file mapping or a ``scratch`` array) is given back as soon as nothing reads
    it any more: it reads zero afterwards."""
    n = len(recs.offsets)
    if n == 0:
        return
    tord = _time_order(recs)
    nch = len(tord.bounds) - 1
    per_type = np.zeros((nch, 1 << 16), dtype=np.int64)  # records of each event id in each chunk
    kernels.parallel(kernels.count_run_groups, nch, recs.types, np.arange(1 << 16, dtype=np.int32), tord.bounds,
                     tord.order, per_type, pieces=nch)
    present = np.flatnonzero(per_type.sum(axis=0))  # the event ids there are
    at = np.ascontiguousarray(per_type[:, present])
    del per_type
    counts = at.sum(axis=0)
    at = np.ascontiguousarray(np.cumsum(at, axis=0) - at)  # each event's first row in each chunk
    lut = np.full(1 << 16, -1, dtype=np.int32)
    lut[present] = np.arange(len(present), dtype=np.int32)
    kinds = present.tolist()
    fmts = [formats.get(int(t)) for t in kinds]
    ar = arena.layout({k: _payload_layout(f) for k, f in enumerate(fmts)}, counts, (TS, CPU, SEQ, RAW_OFF, RAW_LEN))
    fill = _RunFill(buf, seq_base, recs, lut, tord, at, ar, byteorder == ">")
    names = TaskNames.of(cmdlines)
    reading = np.array([reads_payloads(f) for f in fmts], dtype=bool)
    # the events that read the payloads again (dynamic fields, no format) are filled and decoded
    # first; the others then, chunk by chunk, each chunk's payloads given back once written out
    if reading.any():
        fill.run(reading, 0, nch)
        for k in np.flatnonzero(reading).tolist():
            _emit_payload_event(builder, src_file, source, buf, fmts[k], kinds[k], ar.views.pop(k), int(counts[k]),
                                names, symbols, byteorder)
    if not reading.all():
        step = kernels.threads()
        for c0 in range(0, nch, step):
            c1 = min(nch, c0 + step)
            fill.run(~reading, c0, c1)
            fill.let_go(c0, c1)
    give_back(buf)
    # the per-record arrays: gone before the other fields' columns are made
    recs.offsets = recs.lengths = recs.ts_ns = recs.types = np.zeros(0, np.int64)
    del fill, tord
    for k in np.flatnonzero(~reading).tolist():
        _emit_payload_event(builder, src_file, source, buf, fmts[k], kinds[k], ar.views.pop(k), int(counts[k]),
                            names, symbols, byteorder)


@dataclass
class _RunFill:
    """kernels.fill_run_columns over chunks of the time line."""

    buf: np.ndarray
    seq_base: int
    recs: Records
    lut: np.ndarray
    tord: _TimeOrder
    at: np.ndarray
    ar: arena.Arena
    big_endian: bool

    def run(self, groups: np.ndarray, c0: int, c1: int) -> None:
        """Chunks c0..c1, for the events where ``groups`` is True."""
        r, t, ar = self.recs, self.tord, self.ar
        ts_at, cpu_at, seq_at, *rest = ar.special
        seq_at = np.where(groups, seq_at, -1)  # (the fill skips events without a sequence column)
        kernels.parallel(kernels.fill_run_columns, c1 - c0, self.buf, self.seq_base, r.offsets, r.lengths, r.ts_ns,
                         r.types, self.lut, t.runs, t.cpus, t.bounds[c0:c1 + 1], t.order, self.at[c0:c1],
                         self.big_endian, ts_at, cpu_at, seq_at, *rest, ar.col_start, ar.col_src, ar.col_pos,
                         ar.col_size, ar.col_elem, *ar.widths, pieces=c1 - c0)

    def let_go(self, c0: int, c1: int) -> None:
        """Give back the payloads of chunks c0..c1 once written out (those of a run's records taken
        in these chunks: they lie together); no-op when the records are taken in a sorted order."""
        t, offs, lens = self.tord, self.recs.offsets, self.recs.lengths
        if len(t.order):
            return
        for a, z, end in zip(t.bounds[c0].tolist(), t.bounds[c1].tolist(), t.runs[1:].tolist(), strict=True):
            if z > a:
                upto = int(offs[z]) if z < end else int(offs[z - 1]) + int(lens[z - 1])
                release_pages(self.buf, int(offs[a]), upto)
                discard(self.buf, int(offs[a]), upto)


def _emit_payload_event(builder: TraceBuilder, src_file: str, source: str, buf: np.ndarray, fmt: EventFormat | None,
                        event_id: int, v: dict[str, np.ndarray], m: int, names: TaskNames,
                        symbols: Callable[[int], str | None] | None, byteorder: str) -> None:
    common: dict[str, Any] = {"ts_ns": v["ts_ns"], "seq": v["seq"], "cpu": v["cpu"], "source": const_column(source, m)}
    if "f:common_pid" in v:
        pids = v["f:common_pid"]
        common["pid"] = pids.astype(np.int32, copy=False)
        common["comm"] = names.column(pids)
    emit_decoded(builder, src_file, buf, fmt, event_id, common, v, m, symbols, byteorder)


FILL_SLICE = 1 << 20  # records per perf.data fill call; the payloads (file pages) behind each are given back after it


# where a column of the payload arena comes from: the payload's bytes, or values the fill computes
TS, CPU, SEQ, RAW_OFF, RAW_LEN, FIELD = range(6)


def _payload_layout(fmt: EventFormat | None) -> dict[str, tuple[int, int, np.dtype]]:
    """Columns of one event in the arena: name -> (source, payload position, dtype)."""
    cols: dict[str, tuple[int, int, np.dtype]] = {
        "ts_ns": (TS, 0, np.dtype(np.int64)), "cpu": (CPU, 0, np.dtype(np.int32)),
        "seq": (SEQ, 0, np.dtype(np.int64))}
    pid = fmt.field("common_pid") if fmt is not None else None
    if pid is not None and is_scalar(pid):
        cols["f:common_pid"] = (FIELD, pid.offset, scalar_dtype(pid))
    for name, (p, dt) in field_columns(fmt).items():
        cols[name] = (FIELD, p, dt)
    cols.update(payload_columns(fmt, RAW_OFF, RAW_LEN))
    return cols


def payload_columns(fmt: EventFormat | None, off_src: int, len_src: int) -> dict[str, tuple[int, int, np.dtype]]:
    """The arena columns of the payloads' positions an event's decode needs (sources ``off_src``,
    ``len_src`` of its fill): the offsets ("raw_off") when its fields are read from the payloads
    again (``reads_payloads``), the lengths ("raw_len", int32) when it has fields other than scalars
    (fixed arrays are cut at their record's end)."""
    cols: dict[str, tuple[int, int, np.dtype]] = {}
    if reads_payloads(fmt):
        cols["raw_off"] = (off_src, 0, np.dtype(np.int64))
    if fmt is None or any(not is_scalar(f) for f in table_fields(fmt)):
        cols["raw_len"] = (len_src, 0, np.dtype(np.int32))
    return cols


def field_columns(fmt: EventFormat | None) -> dict[str, tuple[int, np.dtype]]:
    """The fields a fill copies for an event's table, as arena columns: name -> (payload position,
    dtype). Scalars ("f:<name>") at their width; fixed arrays and char arrays ("b:<name>") as their
    bytes, so that they are decoded from the arena, not from the file (whose pages the fill lets
    go). Dynamic fields are read from the payload later."""
    cols: dict[str, tuple[int, np.dtype]] = {}
    for f in table_fields(fmt) if fmt is not None else []:
        if is_scalar(f):
            cols["f:" + f.name] = (f.offset, scalar_dtype(f))
        elif not f.dynamic and f.size > 0:
            cols["b:" + f.name] = (f.offset, byte_columns_dtype(f.size))
    return cols


def reads_payloads(fmt: EventFormat | None) -> bool:
    """Whether an event's table is made from its payloads' bytes after the fill (dynamic fields,
    or the bytes of an event without a format), not from the arena alone."""
    return fmt is None or any(f.dynamic or f.flexible for f in table_fields(fmt))


def give_back(buf: np.ndarray) -> None:
    """Hand the memory behind the payloads back to the kernel once nothing reads them: a file
    mapping's pages (they stay in the page cache), a ``scratch`` array's memory (it reads zero
    afterwards). No-op for other arrays."""
    release_pages(buf)
    discard(buf, 0, len(buf))


def table_fields(fmt: EventFormat) -> list[Field]:
    """The fields an event's table takes: its own, and for an event without a named table also the
    common ones (flags, preempt count) but for the type and pid (the pid is the common ``pid``)."""
    if table_for_event(fmt.system, fmt.name) is not None:
        return fmt.fields
    return [f for f in fmt.common_fields if f.name not in ("common_type", "common_pid")] + fmt.fields


def emit_decoded(b: TraceBuilder, path: str, buf: np.ndarray, fmt: EventFormat | None, event_id: int,
                 common: dict[str, Any], v: dict[str, np.ndarray], n: int,
                 symbols: Callable[[int], str | None] | None, byteorder: str = "<") -> None:
    """One event's rows from its arena columns (``v``: scalar fields as "f:<name>", the bytes of fixed
    arrays as "b:<name>", and the payloads' offsets and lengths when it has other fields): those
    decoded, and the rows added."""
    if fmt is None:
        emit_unknown(b, path, event_id, common, common.get("pid"), n, raw_column(buf, v["raw_off"], v["raw_len"]))
    else:
        fields = table_fields(fmt)
        cols: dict[str, Any] = {f.name: scalar_column(f, v["f:" + f.name]) for f in fields if is_scalar(f)}
        if "raw_len" in v:  # (without raw_off: fixed fields only, decoded from their bytes in the arena)
            damaged: dict[str, int] = {}
            offsets = v["raw_off"] if "raw_off" in v else np.zeros(n, np.int64)
            cols.update(decode_fields(fmt, buf, offsets, v["raw_len"], byteorder, scalars=cols, damaged=damaged,
                                      cuts=CUTS.get(table_for_event(fmt.system, fmt.name) or ""),
                                      fixed={f.name: v["b:" + f.name] for f in fields if "b:" + f.name in v}))
            count_damaged(b, path, fmt, damaged, common["ts_ns"])
            cols = {f.name: cols[f.name] for f in fields}
        emit_event(b, path, fmt, common, cols, n, symbols)
    for name, a in v.items():  # the decode's inputs, given back: the tables keep no reference to them
        if name in ("raw_off", "raw_len") or name.startswith("b:"):
            discard(a.reshape(-1), 0, a.size)


def group_rows(order: np.ndarray, s_group: np.ndarray, rows: np.ndarray, counts: np.ndarray) -> None:
    """rows[j]: the position of record j within its group when the group is in ``order``;
    counts[g]: the group's size. Chunks of ``order`` are counted in parallel, then numbered in
    parallel from each group's running total at the chunk's start."""
    nch = max(1, min(256, len(order) // 65536))
    at = np.zeros((nch, len(counts)), dtype=np.int64)
    kernels.parallel(kernels.count_groups, nch, order, s_group, at, pieces=nch)
    counts[:] = at.sum(axis=0)
    start = np.ascontiguousarray(np.cumsum(at, axis=0) - at)  # each group's total before the chunk
    kernels.parallel(kernels.number_rows, nch, order, s_group, rows, start, pieces=nch)


def raw_column(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Each record's payload bytes (records without a format: kept, not decoded)."""
    n = len(offsets)
    value_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=value_offsets[1:])
    data = np.empty(int(value_offsets[-1]), dtype=np.uint8)
    kernels.parallel(kernels.copy_values, n, buf, offsets.astype(np.int64), 0, value_offsets, data)
    return var_array(pa.binary(), value_offsets, data)


def count_damaged(builder: TraceBuilder, src_file: str, fmt: EventFormat, damaged: dict[str, int],
                  ts_ns: np.ndarray) -> None:
    for field, k in damaged.items():
        builder.stats.add(src_file, "dynamic_field_cut", fmt.full_name, k,
                          f"{k} record(s) whose {field} data reaches past the record (cut at its end; first "
                          f"event at ts {int(ts_ns[0])})")


def emit_unknown(builder: TraceBuilder, src_file: str, event_id: int, common: dict[str, Any],
                 pid: np.ndarray | None, n: int, raw: pa.Array | None = None) -> None:
    """Rows of an event id the trace has no format for: kept in ``unparsed`` with their bytes,
    counted as unparsed."""
    name = builder.unknown_event_names.get(event_id, f"unknown:{event_id}")
    builder.stats.add(src_file, "unparsed_record", name if name != f"unknown:{event_id}" else f"event id {event_id}",
                      n, f"no format for event id {event_id} (first at ts {int(common['ts_ns'][0])})")
    common.update(event=const_column(name, n), pid=pid, raw=raw)
    builder.add("unparsed", common, n, name)


def emit_event(builder: TraceBuilder, src_file: str, fmt: EventFormat, common: dict[str, Any],
               cols: dict[str, Any], n: int, symbols: Callable[[int], str | None] | None) -> None:
    """Rows of one event (common columns and decoded fields) into its named table, or into a table
    of its own with a column per field."""
    if fmt.fallback_reason:
        builder.stats.add(src_file, "print_fmt_fallback", fmt.full_name, n, fmt.fallback_reason)
    builder.event_formats.setdefault(fmt.full_name, fmt.text)
    table = table_for_event(fmt.system, fmt.name)
    if table is not None:
        typed = typed_columns(table, fmt.name, fmt, cols, n, symbols)
        unfit = unfit_columns(ALL_TABLES[table], {**common, **typed})
        if not unfit:
            common.update(typed)
            builder.add(table, common, n, fmt.full_name)
            return
        builder.stats.add(src_file, "fields_missing", fmt.full_name, n,
                          f"its format has no field of the kind of column(s) {', '.join(unfit)} of table {table}: "
                          f"kept in table {event_table_name(fmt.system, fmt.name)}")
    spec = event_table_spec(fmt)
    common.update({col: cols[f] for f, col in column_names(fmt).items() if f in cols})
    builder.add(spec.name, common, n, fmt.full_name, spec)
