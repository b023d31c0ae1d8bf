"""Binary tracepoint payloads (from ring-buffer pages or perf RAW samples) -> tables.

Records are grouped by ``common_type``; each group is decoded with its own format
(``formats/decode.py``) and goes to its named table (typed_fields.py) or to a table of its
own with a column per format field (schema.event_table_spec). Records of an id without a
format go to ``unparsed`` with their bytes, counted: nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from vpmutrace import kernels
from vpmutrace.formats.decode import decode_fields, factorize_rows, gather, var_array
from vpmutrace.formats.event_format import EventFormat
from vpmutrace.schema import column_names, const_column, dict_array, event_table_spec, table_for_event
from vpmutrace.tracedata import TraceBuilder
from vpmutrace.typed_fields import CUTS, typed_columns


def comms_for(pids: np.ndarray, cmdlines: dict[int, str]) -> pa.Array:
    """Task names for pids from saved_cmdlines (pid 0 is '<idle>', as the kernel prints it)."""
    codes, first = factorize_rows([pids])  # linear time, not a sort
    names = [cmdlines.get(p) if p != 0 else "<idle>" for p in pids[first].tolist()]
    return dict_array(codes, names)


def emit_payloads(builder: TraceBuilder, src_file: str, source: str, buf: np.ndarray, offsets: np.ndarray,
                  lengths: np.ndarray, ts_ns: np.ndarray, cpu: np.ndarray, formats: dict[int, EventFormat],
                  byteorder: str, cmdlines: dict[int, str], symbols: Callable[[int], str | None] | None,
                  seq_base: int = 0, time_order: bool = False) -> None:
    """Decode and add every payload (ring-buffer records): task ids from common_pid, names from the
    trace's saved cmdlines. A record's sequence number is ``seq_base`` + its position. Each
    event's rows go in that order, or with ``time_order`` by time (ties in that order)."""
    n = len(offsets)
    if n == 0:
        return
    types = gather(buf, offsets, 2, lengths).view(np.dtype(f"{byteorder}u2")).reshape(n)
    if time_order and not (ts_ns[1:] >= ts_ns[:-1]).all():
        rows = np.argsort(ts_ns, kind="stable")  # streams in time order each (CPUs): merged
        order = rows[np.argsort(types[rows], kind="stable")]
        del rows
    else:
        order = np.argsort(types, kind="stable")  # radix sort for 16-bit keys
    sorted_types = types[order]
    starts = np.concatenate(([0], np.flatnonzero(sorted_types[1:] != sorted_types[:-1]) + 1))
    kinds = sorted_types[starts]
    ends = np.append(starts[1:], n)
    del sorted_types
    for t, a, z in zip(kinds.tolist(), starts.tolist(), ends.tolist(), strict=True):
        idx = order[a:z]
        fmt = formats.get(int(t))
        common: dict[str, Any] = {"ts_ns": ts_ns[idx], "seq": idx + seq_base, "cpu": cpu[idx],
                                  "source": const_column(source, len(idx))}
        if fmt is None:
            emit_unknown(builder, src_file, int(t), common, None, len(idx),
                         raw_column(buf, offsets[idx], lengths[idx]))
            continue
        damaged: dict[str, int] = {}
        cols = decode_fields(fmt, buf, offsets[idx], lengths[idx], byteorder, damaged=damaged,
                             cuts=CUTS.get(table_for_event(fmt.system, fmt.name) or ""))
        count_damaged(builder, src_file, fmt, damaged, common["ts_ns"])
        pids = cols.get("common_pid")
        if pids is not None:
            common["pid"] = pids.astype(np.int32)
            common["comm"] = comms_for(pids, cmdlines)
        emit_event(builder, src_file, fmt, common, cols, len(idx), symbols)


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
