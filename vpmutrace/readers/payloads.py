"""Binary tracepoint payloads (from ring-buffer pages or perf RAW samples) -> tables.

Records are grouped by ``common_type``; each group is decoded with its own format
(``formats/decode.py``) and mapped to a typed table, or kept in ``events`` with
its print fmt rendered, so nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from vpmutrace.errors import UnsupportedFormat
from vpmutrace.formats.decode import decode_fields, factorize_rows, gather, row_dicts
from vpmutrace.formats.event_format import EventFormat
from vpmutrace.schema import const_column, dict_array, table_for_event
from vpmutrace.tracedata import TraceBuilder
from vpmutrace.typed_fields import typed_columns


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
    kinds, starts = np.unique(types[order], return_index=True)
    ends = np.append(starts[1:], n)
    for t, a, z in zip(kinds.tolist(), starts.tolist(), ends.tolist(), strict=True):
        idx = order[a:z]
        fmt = formats.get(int(t))
        common: dict[str, Any] = {"ts_ns": ts_ns[idx], "seq": idx + seq_base, "cpu": cpu[idx],
                                  "source": const_column(source, len(idx))}
        if fmt is None:
            emit_unknown(builder, src_file, int(t), common, None, len(idx))
            continue
        cols = decode_fields(fmt, buf, offsets[idx], lengths[idx], byteorder)
        pids = cols.get("common_pid")
        if pids is not None:
            common["pid"] = pids.astype(np.int32)
            common["comm"] = comms_for(pids, cmdlines)
        emit_event(builder, src_file, fmt, common, cols, len(idx), symbols)


def emit_unknown(builder: TraceBuilder, src_file: str, event_id: int, common: dict[str, Any],
                 pid: np.ndarray | None, n: int) -> None:
    """Rows of an event id the trace has no format for: kept in ``events``, counted as unparsed."""
    builder.stats.add(src_file, "unparsed_record", f"event id {event_id}", n,
                      f"no format for event id {event_id} (first at ts {int(common['ts_ns'][0])})")
    common.update(event=[f"unknown:{event_id}"] * n, text=[""] * n, pid=pid)
    builder.add("events", common, n, f"unknown:{event_id}")


def emit_event(builder: TraceBuilder, src_file: str, fmt: EventFormat, common: dict[str, Any],
               cols: dict[str, Any], n: int, symbols: Callable[[int], str | None] | None) -> None:
    """Rows of one event (common columns and decoded fields) into its typed table, or into ``events``
    with the print fmt rendered."""
    if fmt.fallback_reason:
        builder.stats.add(src_file, "print_fmt_fallback", fmt.full_name, n, fmt.fallback_reason)
    table = table_for_event(fmt.system, fmt.name)
    if table is not None:
        common.update(typed_columns(table, fmt.name, fmt, cols, n, symbols))
        builder.add(table, common, n, fmt.full_name)
        return
    common["event"] = const_column(fmt.full_name, n)
    common["text"] = render_rows(fmt, cols, n, symbols)
    builder.add("events", common, n, fmt.full_name)


def render_rows(fmt: EventFormat, cols: dict[str, Any], n: int,
                symbols: Callable[[int], str | None] | None) -> list[str]:
    rows = row_dicts({k: v for k, v in cols.items() if not k.startswith("common_")}, n)
    p = fmt.printer
    out: list[str] = []
    for r in rows:
        text = None
        if p is not None:
            try:
                text = p.render(r, symbols)
            except (UnsupportedFormat, IndexError, TypeError, ValueError, OverflowError):
                text = None
        if text is None:
            text = " ".join(f"{k}={_show(v)}" for k, v in r.items())
        out.append(text)
    return out


def _show(v: Any) -> str:
    if isinstance(v, bytes):
        return v.hex()
    return str(v)
