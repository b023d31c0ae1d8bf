"""PERF_RECORD_SAMPLE records -> tables, in time order, in a few compiled passes.

1. ``perf_walk.scan_records`` walks the records once: for each sample its attr, time,
   tid and payload position, grouped by (attr, tracepoint id of the payload).
2. A stable sort by time (perf.data is written in per-CPU rounds, so nearly sorted)
   gives every sample its row within its group.
3. ``perf_walk.fill_sample_columns`` writes each sample's common columns and the
   scalar fields of its tracepoint format straight into the group's columns (one
   arena, no intermediate per-field arrays, no later re-sort of the tables).

Only non-scalar fields (arrays, ``__data_loc`` strings) and non-tracepoint samples
take the slower, per-group paths. Layouts: include/uapi/linux/perf_event.h.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from vpmutrace.errors import InputError
from vpmutrace.formats.decode import decode_fields, is_scalar, scalar_column, scalar_dtype
from vpmutrace.formats.event_format import EventFormat
from vpmutrace.readers import perf_walk as pw
from vpmutrace.readers.payloads import emit_event, emit_unknown
from vpmutrace.schema import const_column, dict_array, table_for_event
from vpmutrace.tracedata import TraceBuilder

if TYPE_CHECKING:
    from vpmutrace.readers.perf_data import Attr

PERF_TYPE_TRACEPOINT = 2
CPUMODES = {0: "unknown", 1: "kernel", 2: "user", 3: "hypervisor", 4: "guest_kernel", 5: "guest_user"}
MISC_EXACT_IP = 1 << 14
# sample body fields before READ, in ABI order: each is 8 bytes when its bit is set
FIXED_PART = (pw.S_IDENTIFIER, pw.S_IP, pw.S_TID, pw.S_TIME, pw.S_ADDR, pw.S_ID, pw.S_STREAM_ID, pw.S_CPU,
              pw.S_PERIOD)


def field_pos(sample_type: int, bit: int) -> int:
    """Byte position of a fixed-part field in the sample body (after the 8-byte header), -1 if absent."""
    if not sample_type & bit:
        return -1
    return 8 * sum(1 for b in FIXED_PART[:FIXED_PART.index(bit)] if sample_type & b)


def id_index(attrs: list[Attr], path: str) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(id mode, id byte position, sorted ids, attr index per id) for the compiled sample walks."""
    if len(attrs) == 1:
        return 0, 0, np.zeros(0, np.uint64), np.zeros(0, np.int64)
    pairs = sorted({(i, k) for k, a in enumerate(attrs) for i in a.ids})
    ids = np.array([i for i, _ in pairs], dtype=np.uint64)
    idx = np.array([k for _, k in pairs], dtype=np.int64)
    st = attrs[0].sample_type
    if all(a.sample_type & pw.S_IDENTIFIER for a in attrs):
        return 1, 0, ids, idx
    if all(a.sample_type & pw.S_ID for a in attrs):
        return 2, field_pos(st, pw.S_ID), ids, idx
    raise InputError(path, "several events but samples carry no ID/IDENTIFIER to tell them apart")


def sample_fields(attrs: list[Attr], path: str, buf: np.ndarray, offs: np.ndarray,
                  sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Fields of PERF_RECORD_SAMPLE records (attr index, ip, pid, tid, time, cpu, period, RAW offset and
    length, ok flag), one array each, decoded by the compiled sample walk."""
    mode, pos, ids, idx = id_index(attrs, path)
    st = np.array([a.sample_type for a in attrs], dtype=np.uint64)
    rf = np.array([a.read_format for a in attrs], dtype=np.int64)
    zeros = np.zeros(len(attrs), dtype=np.int64)
    n = len(offs)
    out = {k: np.zeros(n, dtype=dt) for k, dt in (
        ("attr", np.int32), ("ip", np.uint64), ("pid", np.int32), ("tid", np.int32), ("time", np.int64),
        ("cpu", np.int32), ("period", np.uint64), ("raw_off", np.int64), ("raw_len", np.int32),
        ("ok", np.int8))}
    out["cpu"][:] = -1
    pw.walk_samples(buf, offs, sizes, mode, pos, ids, idx, st, rf, zeros, zeros, zeros,
                    out["attr"], out["ip"], out["pid"], out["tid"], out["time"], out["cpu"],
                    out["period"], out["raw_off"], out["raw_len"], out["ok"])
    return out


@dataclass
class Scan:
    """What ``scan_records`` found: samples (s_*) and the other records (r_*), and where it stopped."""

    s_off: np.ndarray
    s_rawrel: np.ndarray
    s_time: np.ndarray
    s_tid: np.ndarray
    s_group: np.ndarray
    r_off: np.ndarray
    r_type: np.ndarray
    r_size: np.ndarray
    group_attr: np.ndarray
    group_etype: np.ndarray
    stop: int
    err: int  # 0 clean end, 1 header size < 8, 2 record cut off by the end


def scan(attrs: list[Attr], path: str, buf: np.ndarray, start: int, end: int) -> Scan:
    """Walk the records in buf[start:end] once, then decode every sample's key fields in parallel."""
    parts: list[tuple[np.ndarray, ...]] = []
    at = start
    while True:
        # sized for typical records; untouched capacity costs address space, not memory
        cap = max(1024, (end - at) // 48)
        s = np.empty(cap, np.int64)
        r = (np.empty(cap // 4, np.int64), np.empty(cap // 4, np.int32), np.empty(cap // 4, np.int32))
        ns, nr, stop, err = pw.scan_records(buf, at, end, s, *r)
        parts.append((s[:ns],) + tuple(a[:nr] for a in r))
        if err != 3:
            break
        at = stop
    s_off, r_off, r_type, r_size = (p[0] if len(parts) == 1 else np.concatenate(p) for p in zip(*parts, strict=True))
    mode, pos, ids, idx = id_index(attrs, path)
    n = len(s_off)
    s_rawrel, s_time, s_tid, s_group = (np.empty(n, np.uint16), np.empty(n, np.int64), np.empty(n, np.int32),
                                        np.empty(n, np.int32))
    pw.sample_keys(buf, s_off, mode, pos, ids, idx, np.array([a.sample_type for a in attrs], dtype=np.uint64),
                   np.array([a.read_format for a in attrs], dtype=np.int64),
                   np.array([8 * sum(1 for b in FIXED_PART if a.sample_type & b) for a in attrs], dtype=np.int64),
                   np.array([field_pos(a.sample_type, pw.S_TIME) for a in attrs], dtype=np.int64),
                   np.array([field_pos(a.sample_type, pw.S_TID) for a in attrs], dtype=np.int64),
                   s_rawrel, s_time, s_tid, s_group)
    slots = len(attrs) * (pw.NO_RAW + 1)
    group_key = np.zeros(slots, np.int64)
    ng = pw.assign_groups(s_group, np.full(slots, -1, dtype=np.int32), group_key)
    keys = group_key[:ng]
    return Scan(s_off, s_rawrel, s_time, s_tid, s_group, r_off, r_type, r_size,
                (keys // (pw.NO_RAW + 1)).astype(np.int32), (keys % (pw.NO_RAW + 1)).astype(np.int32), stop, err)


@dataclass
class _Plan:
    """Columns of one (attr, tracepoint) group in the arena: name -> (kind, position, numpy dtype)."""

    cols: dict[str, tuple[int, int, np.dtype]]
    fmt: EventFormat | None


def _plan(a: Attr, fmt: EventFormat | None) -> _Plan:
    st = a.sample_type
    cols: dict[str, tuple[int, int, np.dtype]] = {"seq": (pw.K_SEQ, 0, np.dtype(np.int64)),
                                                  "comm": (pw.K_CODE, 0, np.dtype(np.int32))}
    body = 8  # record header
    if st & pw.S_TIME:
        cols["ts_ns"] = (pw.K_REC, body + field_pos(st, pw.S_TIME), np.dtype(np.int64))
    if st & pw.S_TID:
        tid = body + field_pos(st, pw.S_TID)
        cols["tgid"] = (pw.K_REC, tid, np.dtype(np.int32))
        cols["pid"] = (pw.K_REC, tid + 4, np.dtype(np.int32))
    if st & pw.S_CPU:
        cols["cpu"] = (pw.K_REC, body + field_pos(st, pw.S_CPU), np.dtype(np.int32))
    if fmt is not None:
        for f in fmt.fields:
            if is_scalar(f):
                cols["f:" + f.name] = (pw.K_RAW, f.offset, scalar_dtype(f))
        if any(not is_scalar(f) for f in fmt.fields) or table_for_event(fmt.system, fmt.name) is None:
            cols["raw_off"] = (pw.K_RAWOFF, 0, np.dtype(np.int64))
            cols["raw_len"] = (pw.K_RAWLEN, 0, np.dtype(np.int32))
    return _Plan(cols, fmt)


def _fill(buf: np.ndarray, sc: Scan, rows: np.ndarray, codes: np.ndarray, plans: dict[int, _Plan],
          counts: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
    """Run the compiled fill; return each planned group's columns as views of one arena."""
    ng = len(sc.group_attr)
    col_start = np.zeros(ng + 1, dtype=np.int64)
    kind, pos, size, dst = [], [], [], []
    where: dict[int, dict[str, tuple[int, np.dtype]]] = {}
    total = 0
    for g in range(ng):
        plan = plans.get(g)
        if plan is not None:
            where[g] = {}
            for name, (k, p, dt) in plan.cols.items():
                kind.append(k)
                pos.append(p)
                size.append(dt.itemsize)
                dst.append(total)
                where[g][name] = (total, dt)
                total += (int(counts[g]) * dt.itemsize + 63) & ~63
        col_start[g + 1] = len(kind)
    arena = np.empty(max(total, 64), dtype=np.uint8)
    sizes = np.array(size, np.int64)
    pw.fill_sample_columns(buf, sc.s_off, sc.s_rawrel, sc.s_group, rows, codes, col_start,
                           np.array(kind, np.int64), np.array(pos, np.int64), sizes,
                           np.array(dst, np.int64) // np.maximum(sizes, 1), arena,
                           *(arena[:len(arena) // w * w].view(f"u{w}") for w in (2, 4, 8)))
    return {g: {name: arena[d:d + int(counts[g]) * dt.itemsize].view(dt) for name, (d, dt) in cols.items()}
            for g, cols in where.items()}


def emit_samples(attrs: list[Attr], path: str, buf: np.ndarray, sc: Scan, formats: dict[int, EventFormat],
                 comm_of: Callable[[int, int], str | None], comm_events: dict[int, list[tuple[int, str]]],
                 symbols: Callable[[int], str | None] | None, b: TraceBuilder, source: str) -> None:
    """All samples of the scan into their tables, each table in time order (ties in file order)."""
    n = len(sc.s_off)
    if n == 0:
        return
    for code, label in ((pw.KEY_UNKNOWN_ID, "sample with an unknown event id"),
                        (pw.KEY_BROKEN, "sample fields run past the record")):
        bad = np.flatnonzero(sc.s_group == code)
        if len(bad):
            b.stats.add(path, "unparsed_record", "sample", len(bad), f"offset {int(sc.s_off[bad[0]])}: {label}")
    order = np.argsort(sc.s_time, kind="stable")
    ng = len(sc.group_attr)
    rows = np.zeros(n, dtype=np.int64)
    counts = np.zeros(ng, dtype=np.int64)
    pw.group_rows(order, sc.s_group, rows, counts)
    codes, names = _comm_codes(sc, comm_of, comm_events)

    plans: dict[int, _Plan] = {}
    plain: list[int] = []
    for g in range(ng):
        a = attrs[int(sc.group_attr[g])]
        etype = int(sc.group_etype[g])
        if etype == pw.NO_RAW or a.type != PERF_TYPE_TRACEPOINT:
            plain.append(g)
        else:
            plans[g] = _plan(a, formats.get(etype))
    for g in plain:  # samples of hardware/software events: order this group's samples by time
        sel = order[sc.s_group[order] == g]
        _emit_plain(attrs[int(sc.group_attr[g])], path, buf, sc, sel, codes, names, b, source)
    del order
    views = _fill(buf, sc, rows, codes, plans, counts)
    del rows
    for g, plan in plans.items():
        _emit_group(path, buf, plan, views.pop(g), int(counts[g]), int(sc.group_etype[g]), names, symbols, b,
                    source)


def _comm_codes(sc: Scan, comm_of: Callable[[int, int], str | None],
                comm_events: dict[int, list[tuple[int, str]]]) -> tuple[np.ndarray, list[str | None]]:
    """Per sample a code into a list of thread names, as perf resolves names at the sample's time."""
    tids = sorted(comm_events)
    seg = np.zeros(len(tids) + 1, dtype=np.int64)
    times: list[int] = []
    for k, t in enumerate(tids):
        times.extend(ts for ts, _ in comm_events[t])
        seg[k + 1] = len(times)
    codes = np.empty(len(sc.s_off), dtype=np.int32)
    first = pw.comm_keys(sc.s_tid, sc.s_time, sc.s_group, np.array(tids, dtype=np.int64), seg,
                         np.array(times, dtype=np.int64), codes)
    names = [comm_of(int(sc.s_tid[j]), int(sc.s_time[j])) for j in first.tolist()]
    return codes, names


def _emit_group(path: str, buf: np.ndarray, plan: _Plan, v: dict[str, np.ndarray], n: int, etype: int,
                names: list[str | None], symbols: Callable[[int], str | None] | None, b: TraceBuilder,
                source: str) -> None:
    common: dict[str, Any] = {"ts_ns": v.get("ts_ns", np.zeros(n, np.int64)), "seq": v["seq"], "cpu": v.get("cpu"),
                              "pid": v.get("pid"), "tgid": v.get("tgid"), "comm": dict_array(v["comm"], names),
                              "source": const_column(source, n)}
    fmt = plan.fmt
    if fmt is None:
        emit_unknown(b, path, etype, common, common["pid"], n)
        return
    cols: dict[str, Any] = {f.name: scalar_column(f, v["f:" + f.name]) for f in fmt.fields if is_scalar(f)}
    if "raw_off" in v:
        cols.update(decode_fields(fmt, buf, v["raw_off"], v["raw_len"], scalars_done=True))
        cols = {f.name: cols[f.name] for f in fmt.fields}
    emit_event(b, path, fmt, common, cols, n, symbols)


def _emit_plain(a: Attr, path: str, buf: np.ndarray, sc: Scan, sel: np.ndarray, codes: np.ndarray,
                names: list[str | None], b: TraceBuilder, source: str) -> None:
    """Samples of a non-tracepoint event (``sel``: their sample indices in time order) -> ``samples``."""
    n = len(sel)
    offs = sc.s_off[sel]
    sizes = buf[offs[:, None] + np.arange(6, 8)].view("<u2").reshape(n).astype(np.int32)
    misc = buf[offs[:, None] + np.arange(4, 6)].view("<u2").reshape(n).astype(np.int32)
    out = sample_fields([a], path, buf, offs, sizes)
    st = a.sample_type
    b.add("samples", {
        "ts_ns": out["time"], "seq": sel.astype(np.int64), "cpu": out["cpu"] if st & pw.S_CPU else None,
        "pid": out["tid"], "comm": dict_array(codes[sel], names),
        "tgid": out["pid"] if st & pw.S_TID else None,
        "source": const_column(source, n), "event": const_column(a.name or "", n), "tid": out["tid"],
        # without PERF_SAMPLE_PERIOD every sample stands for attr.sample_period (perf does the same)
        "period": out["period"] if st & pw.S_PERIOD else
        np.full(n, 0 if a.flags >> 10 & 1 else a.sample_period, dtype=np.uint64),
        "ip": out["ip"] if st & pw.S_IP else None,
        "cpumode": pa.DictionaryArray.from_arrays(
            pa.array((misc & 7).astype(np.int32)), pa.array([CPUMODES.get(i, "unknown") for i in range(8)])),
        "exact_ip": (misc & MISC_EXACT_IP) != 0,
    }, n, a.name)
