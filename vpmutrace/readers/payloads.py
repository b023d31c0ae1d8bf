"""Binary tracepoint payloads (from ring-buffer pages or perf RAW samples) -> tables.

Records are grouped by ``common_type``; each group is decoded with its own format
(``formats/decode.py``) and goes to its named table (typed_fields.py) or to a table of its
own with a column per format field (schema.event_table_spec). Records of an id without a
format go to ``unparsed`` with their bytes, counted: nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    width_views,
)
from vpmutrace.formats.event_format import EventFormat, Field
from vpmutrace.schema import column_names, const_column, dict_array, event_table_spec, table_for_event
from vpmutrace.tracedata import TraceBuilder
from vpmutrace.typed_fields import CUTS, typed_columns


def comms_for(pids: np.ndarray, cmdlines: dict[int, str]) -> pa.Array:
    """Task names for pids from saved_cmdlines (pid 0 is '<idle>', as the kernel prints it)."""
    codes, first = factorize_rows([pids])  # linear time, not a sort
    names = [cmdlines.get(p) if p != 0 else "<idle>" for p in pids[first].tolist()]
    return dict_array(codes, names)


def emit_payloads(builder: TraceBuilder, src_file: str, source: str, buf: np.ndarray, offsets: np.ndarray,
                  lengths: np.ndarray, ts_ns: np.ndarray, cpu: np.ndarray, formats: Mapping[int, EventFormat],
                  byteorder: str, cmdlines: dict[int, str], symbols: Callable[[int], str | None] | None,
                  seq_base: int = 0) -> None:
    """Decode and add every payload (ring-buffer records, in file order): task ids from common_pid,
    names from the trace's saved cmdlines. A record's sequence number is ``seq_base`` + its
    position; each event's rows go in time order (ties in file order).

    One compiled pass writes every record's time, CPU, sequence number and scalar fields straight
    to its row of its event's columns (one arena); then each event's other fields are decoded."""
    n = len(offsets)
    if n == 0:
        return
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
    layouts = [_payload_layout(formats.get(int(t))) for t in present.tolist()]
    views, arena_tables = _arena(layouts, counts)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    kernels.parallel(kernels.fill_payload_columns, n, buf, seq_base, offsets, np.ascontiguousarray(lengths, np.int64),
                     np.ascontiguousarray(ts_ns, np.int64), np.ascontiguousarray(cpu, np.int32), group, rows,
                     byteorder == ">", *arena_tables)
    del rows, group
    for k, t in enumerate(present.tolist()):
        v, m = views[k], int(counts[k])
        fmt = formats.get(int(t))
        common: dict[str, Any] = {"ts_ns": v["ts_ns"], "seq": v["seq"], "cpu": v["cpu"],
                                  "source": const_column(source, m)}
        if "f:common_pid" in v:
            pids = v["f:common_pid"]
            common["pid"] = pids.astype(np.int32, copy=False)
            common["comm"] = comms_for(pids, cmdlines)
        emit_decoded(builder, src_file, buf, fmt, int(t), common, v, m, symbols, byteorder)


# where a column of the payload arena comes from: the payload's bytes, or values the fill computes
TS, CPU, SEQ, RAW_OFF, RAW_LEN, FIELD = range(6)


def _payload_layout(fmt: EventFormat | None) -> dict[str, tuple[int, int, np.dtype]]:
    """Columns of one event in the arena: name -> (source, payload position, dtype)."""
    cols: dict[str, tuple[int, int, np.dtype]] = {
        "ts_ns": (TS, 0, np.dtype(np.int64)), "cpu": (CPU, 0, np.dtype(np.int32)),
        "seq": (SEQ, 0, np.dtype(np.int64))}
    fields = table_fields(fmt) if fmt is not None else []
    pid = fmt.field("common_pid") if fmt is not None else None
    for f in ([pid] if pid is not None and is_scalar(pid) else []) + fields:
        if is_scalar(f):
            cols["f:" + f.name] = (FIELD, f.offset, scalar_dtype(f))
    if fmt is None or any(not is_scalar(f) for f in fields):  # (no format: the bytes are kept)
        cols["raw_off"] = (RAW_OFF, 0, np.dtype(np.int64))
        cols["raw_len"] = (RAW_LEN, 0, np.dtype(np.int64))
    return cols


def _arena(layouts: list[dict[str, tuple[int, int, np.dtype]]], counts: np.ndarray) \
        -> tuple[list[dict[str, np.ndarray]], tuple[np.ndarray, ...]]:
    """One arena for every event's columns (each 64-byte aligned), its views per event, and the
    tables kernels.fill_payload_columns takes."""
    ng = len(layouts)
    special = np.full((5, ng), -1, dtype=np.int64)  # element index of ts, cpu, seq, payload offset, length
    col_start = np.zeros(ng + 1, dtype=np.int64)
    pos, size, elem = [], [], []
    where: list[dict[str, tuple[int, np.dtype]]] = []
    total = 0
    for g, cols in enumerate(layouts):
        where.append({})
        for name, (src, p, dt) in cols.items():
            where[g][name] = (total, dt)
            if src == FIELD:
                pos.append(p)
                size.append(dt.itemsize)
                elem.append(total // dt.itemsize)
            else:
                special[src, g] = total // dt.itemsize
            total += (int(counts[g]) * dt.itemsize + 63) & ~63
        col_start[g + 1] = len(pos)
    arena = np.zeros(max(total, 64), dtype=np.uint8)
    views = [{name: arena[d:d + int(counts[g]) * dt.itemsize].view(dt) for name, (d, dt) in cols.items()}
             for g, cols in enumerate(where)]
    return views, (*special, col_start, np.array(pos, np.int64), np.array(size, np.int64), np.array(elem, np.int64),
                   *width_views(arena))


def table_fields(fmt: EventFormat) -> list[Field]:
    """The fields an event's table takes: its own, and for an event without a named table also the
    common ones (flags, preempt count) but for the type and pid (the pid is the common ``pid``)."""
    if table_for_event(fmt.system, fmt.name) is not None:
        return fmt.fields
    return [f for f in fmt.common_fields if f.name not in ("common_type", "common_pid")] + fmt.fields


def emit_decoded(b: TraceBuilder, path: str, buf: np.ndarray, fmt: EventFormat | None, event_id: int,
                 common: dict[str, Any], v: dict[str, np.ndarray], n: int,
                 symbols: Callable[[int], str | None] | None, byteorder: str = "<") -> None:
    """One event's rows from its arena columns (``v``: scalar fields as "f:<name>", and the payloads'
    offsets and lengths when it has other fields): those decoded, and the rows added."""
    if fmt is None:
        emit_unknown(b, path, event_id, common, common.get("pid"), n, raw_column(buf, v["raw_off"], v["raw_len"]))
        return
    fields = table_fields(fmt)
    cols: dict[str, Any] = {f.name: scalar_column(f, v["f:" + f.name]) for f in fields if is_scalar(f)}
    if "raw_off" in v:
        damaged: dict[str, int] = {}
        cols.update(decode_fields(fmt, buf, v["raw_off"], v["raw_len"], byteorder, scalars=cols, damaged=damaged,
                                  cuts=CUTS.get(table_for_event(fmt.system, fmt.name) or "")))
        count_damaged(b, path, fmt, damaged, common["ts_ns"])
        cols = {f.name: cols[f.name] for f in fields}
    emit_event(b, path, fmt, common, cols, n, symbols)


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
    builder.stats.add(src_file, "unparsed_record", f"event id {event_id}", n,
                      f"no format for event id {event_id} (first at ts {int(common['ts_ns'][0])})")
    common.update(event=const_column(f"unknown:{event_id}", n), pid=pid, raw=raw)
    builder.add("unparsed", common, n, f"unknown:{event_id}")


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
