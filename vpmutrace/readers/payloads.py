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
    factorize_rows,
    gather,
    is_scalar,
    scalar_column,
    scalar_dtype,
    var_array,
)
from vpmutrace.formats.event_format import EventFormat, Field
from vpmutrace.readers import arena
from vpmutrace.readers.arena import byte_columns_dtype
from vpmutrace.readers.binio import discard, release_pages
from vpmutrace.schema import column_names, const_column, dict_array, event_table_spec, table_for_event
from vpmutrace.tracedata import TraceBuilder
from vpmutrace.typed_fields import CUTS, typed_columns


def comms_for(pids: np.ndarray, cmdlines: dict[int, str]) -> pa.Array:
    """Task names for pids from saved_cmdlines (pid 0 is '<idle>', as the kernel prints it)."""
    codes, first = factorize_rows([pids])  # linear time, not a sort
    names = [cmdlines.get(p) if p != 0 else "<idle>" for p in pids[first].tolist()]
    return dict_array(codes, names)


@dataclass
class Records:
    """Ring-buffer records in file order: payload offset and length, time (ns), CPU. The arrays
    are consumed by ``emit_payloads`` (dropped once they are written out, as the tables grow)."""

    offsets: np.ndarray
    lengths: np.ndarray
    ts_ns: np.ndarray
    cpu: np.ndarray


def emit_payloads(builder: TraceBuilder, src_file: str, source: str, buf: np.ndarray, recs: Records,
                  formats: Mapping[int, EventFormat], byteorder: str, cmdlines: dict[int, str],
                  symbols: Callable[[int], str | None] | None, seq_base: int = 0) -> None:
    """Decode and add every payload (ring-buffer records, in file order): task ids from common_pid,
    names from the trace's saved cmdlines. A record's sequence number is ``seq_base`` + its
    position; each event's rows go in time order (ties in file order).

    One compiled pass writes every record's time, CPU, sequence number, scalar fields and fixed
    arrays straight to its row of its event's columns (one arena); then each event's other fields
    are decoded. The payloads' memory (``buf``: a file mapping or a ``scratch`` array) is given back
    as soon as nothing reads it any more: it reads zero afterwards."""
    n = len(recs.offsets)
    if n == 0:
        return
    per_record = (np.ascontiguousarray(recs.offsets, dtype=np.int64), np.ascontiguousarray(recs.lengths, np.int64),
                  np.ascontiguousarray(recs.ts_ns, np.int64), np.ascontiguousarray(recs.cpu, np.int32))
    recs.offsets = recs.lengths = recs.ts_ns = recs.cpu = np.zeros(0, np.int64)  # consumed
    offsets, lengths, ts_ns = per_record[:3]
    types = gather(buf, offsets, 2, lengths).view(np.dtype(f"{byteorder}u2")).reshape(n)
    present = np.flatnonzero(np.bincount(types, minlength=1 << 16))  # the event ids there are
    lut = np.full(1 << 16, -1, dtype=np.int32)
    lut[present] = np.arange(len(present), dtype=np.int32)
    group = lut[types]
    del types, lut
    sorted_ = bool((ts_ns[1:] >= ts_ns[:-1]).all())
    order = np.arange(n, dtype=np.int64) if sorted_ else np.argsort(ts_ns, kind="stable")  # (CPUs merged)
    rows = np.empty(n, dtype=np.int32)
    counts = np.zeros(len(present), dtype=np.int64)
    group_rows(order, group, rows, counts)
    del order
    kinds = present.tolist()
    fmts = [formats.get(int(t)) for t in kinds]
    ar = arena.layout({k: _payload_layout(f) for k, f in enumerate(fmts)}, counts, (TS, CPU, SEQ, RAW_OFF, RAW_LEN))
    per_record = (*per_record, group, rows)
    del group, rows, offsets, lengths, ts_ns
    reading = np.array([reads_payloads(f) for f in fmts], dtype=bool)
    # the events that read the payloads again (dynamic fields, no format) are filled and decoded
    # first; the others are filled in slices, each slice's payloads given back once written out
    if reading.any():
        _fill_payloads(buf, seq_base, per_record, ar, reading, byteorder, 0, n)
        for k in np.flatnonzero(reading).tolist():
            _emit_payload_event(builder, src_file, source, buf, fmts[k], kinds[k], ar.views.pop(k), int(counts[k]),
                                cmdlines, symbols, byteorder)
    done = 0
    for j0 in range(0, n, FILL_SLICE) if not reading.all() else ():
        j1 = min(n, j0 + FILL_SLICE)
        _fill_payloads(buf, seq_base, per_record, ar, ~reading, byteorder, j0, j1)
        upto = int(per_record[0][j1]) if j1 < n else len(buf)
        release_pages(buf, done, upto)
        discard(buf, done, upto)
        done = upto
    del per_record  # (the per-record arrays: gone before the other fields' columns are made)
    for k in np.flatnonzero(~reading).tolist():
        _emit_payload_event(builder, src_file, source, buf, fmts[k], kinds[k], ar.views.pop(k), int(counts[k]),
                            cmdlines, symbols, byteorder)


def _fill_payloads(buf: np.ndarray, seq_base: int, per_record: tuple[np.ndarray, ...], ar: arena.Arena,
                   groups: np.ndarray, byteorder: str, j0: int, j1: int) -> None:
    """kernels.fill_payload_columns over records j0..j1, for the groups where ``groups`` is True."""
    ts_at, cpu_at, seq_at, *rest = ar.special
    seq_at = np.where(groups, seq_at, -1)  # (the fill skips groups without a sequence column)
    kernels.parallel(kernels.fill_payload_columns, j1 - j0, buf, seq_base + j0, *(a[j0:j1] for a in per_record),
                     byteorder == ">", ts_at, cpu_at, seq_at, *rest, ar.col_start, ar.col_src, ar.col_pos,
                     ar.col_size, ar.col_elem, *ar.widths)


def _emit_payload_event(builder: TraceBuilder, src_file: str, source: str, buf: np.ndarray, fmt: EventFormat | None,
                        event_id: int, v: dict[str, np.ndarray], m: int, cmdlines: dict[int, str],
                        symbols: Callable[[int], str | None] | None, byteorder: str) -> None:
    common: dict[str, Any] = {"ts_ns": v["ts_ns"], "seq": v["seq"], "cpu": v["cpu"], "source": const_column(source, m)}
    if "f:common_pid" in v:
        pids = v["f:common_pid"]
        common["pid"] = pids.astype(np.int32, copy=False)
        common["comm"] = comms_for(pids, cmdlines)
    emit_decoded(builder, src_file, buf, fmt, event_id, common, v, m, symbols, byteorder)


FILL_SLICE = 1 << 20  # records per fill call; the payloads (file pages) behind each are given back after it


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
    if fmt is None or any(not is_scalar(f) for f in table_fields(fmt)):  # (no format: the bytes are kept)
        cols["raw_off"] = (RAW_OFF, 0, np.dtype(np.int64))
        cols["raw_len"] = (RAW_LEN, 0, np.dtype(np.int64))
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
        if "raw_off" in v:
            damaged: dict[str, int] = {}
            cols.update(decode_fields(fmt, buf, v["raw_off"], v["raw_len"], byteorder, scalars=cols, damaged=damaged,
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
        common.update(typed_columns(table, fmt.name, fmt, cols, n, symbols))
        builder.add(table, common, n, fmt.full_name)
        return
    spec = event_table_spec(fmt)
    common.update({col: cols[f] for f, col in column_names(fmt).items() if f in cols})
    builder.add(spec.name, common, n, fmt.full_name, spec)
