"""PERF_RECORD_SAMPLE records -> tables, in time order, in a few compiled passes.

1. ``perf_walk.split_chunks`` finds the record boundaries: the data is cut into pieces
   walked in parallel, each starting at the first offset followed by SYNC_RECORDS
   plausible records; the result is used only if the pieces join up exactly (else one
   sequential walk, ``perf_walk.scan_records``, which also pins down damage).
2. ``perf_walk.split_keys_chunks`` walks the pieces again and decodes, per sample, its
   attr, time, tid and the tracepoint id of its payload (``perf_walk.sample_keys`` after a
   sequential walk); samples are grouped by (attr, payload event id) and their thread
   names coded as perf resolves them.
3. A stable sort by time (perf.data is written in per-CPU rounds, so nearly sorted) gives
   every sample its row within its group.
4. ``perf_walk.fill_sample_columns`` writes each sample's common columns, the scalar
   fields of its tracepoint format and the bytes of its fixed arrays straight into the
   group's columns (one arena, readers/arena.py: no intermediate per-field arrays, no later
   re-sort of the tables), releasing the file's pages slice by slice.
5. Per group, strings and arrays become Arrow columns from those bytes (formats/decode.py);
   only dynamic fields (``__data_loc``/``__rel_loc``) read the file again, for those groups
   first, after which its pages are let go.

Non-tracepoint samples take a per-group path of their own. Layouts:
include/uapi/linux/perf_event.h.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from vpmutrace import kernels
from vpmutrace.errors import InputError
from vpmutrace.formats import perf_abi as abi
from vpmutrace.formats.decode import FIRST_CODES
from vpmutrace.formats.event_format import EventFormat
from vpmutrace.readers import arena
from vpmutrace.readers.binio import discard, release_pages, scratch
from vpmutrace.readers.payloads import (
    FILL_SLICE,
    distinct_names,
    emit_decoded,
    field_columns,
    give_back,
    group_rows,
    payload_columns,
    reads_payloads,
)
from vpmutrace.schema import const_column, dict_array
from vpmutrace.tracedata import TraceBuilder

if TYPE_CHECKING:
    from vpmutrace.readers.perf_data import Attr

PERF_TYPE_TRACEPOINT = 2
CPUMODES = {0: "unknown", 1: "kernel", 2: "user", 3: "hypervisor", 4: "guest_kernel", 5: "guest_user"}
MISC_EXACT_IP = 1 << 14
PARALLEL_SPLIT_BYTES = 1 << 24  # below this the record walk is not worth splitting
OFFSET32_LIMIT = 1 << 32  # sample offsets are kept in 32 bits (4 bytes less per sample) below this size
# sample body fields before READ, in ABI order: each is 8 bytes when its bit is set
FIXED_PART = (abi.S_IDENTIFIER, abi.S_IP, abi.S_TID, abi.S_TIME, abi.S_ADDR, abi.S_ID, abi.S_STREAM_ID, abi.S_CPU,
              abi.S_PERIOD)


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
    if all(a.sample_type & abi.S_IDENTIFIER for a in attrs):
        return 1, 0, ids, idx
    if all(a.sample_type & abi.S_ID for a in attrs):
        return 2, field_pos(st, abi.S_ID), ids, idx
    raise InputError(path, "several events but samples carry no ID/IDENTIFIER to tell them apart")


def sample_fields(attrs: list[Attr], path: str, buf: np.ndarray, offs: np.ndarray,
                  sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Fields of PERF_RECORD_SAMPLE records (attr index, ip, pid, tid, time, cpu, period, RAW offset and
    length, ok flag), one array each, decoded by the compiled sample walk."""
    mode, pos, ids, idx = id_index(attrs, path)
    st = np.array([a.sample_type for a in attrs], dtype=np.uint64)
    rf = np.array([a.read_format for a in attrs], dtype=np.uint64).view(np.int64)  # (u64 bits, as the walk tests them)
    n = len(offs)
    out = {k: np.zeros(n, dtype=dt) for k, dt in (
        ("attr", np.int32), ("ip", np.uint64), ("pid", np.int32), ("tid", np.int32), ("time", np.int64),
        ("cpu", np.int32), ("period", np.uint64), ("raw_off", np.int64), ("raw_len", np.int32),
        ("ok", np.int8))}
    out["cpu"][:] = -1
    kernels.parallel(kernels.walk_samples, n, buf, offs, sizes, mode, pos, ids, idx, st, rf,
                     out["attr"], out["ip"], out["pid"], out["tid"], out["time"], out["cpu"],
                    out["period"], out["raw_off"], out["raw_len"], out["ok"])
    return out


@dataclass
class Records:
    """Where the records are: SAMPLE offsets, the other records, and where the walk stopped."""

    s_off: np.ndarray
    r_off: np.ndarray
    r_type: np.ndarray
    r_size: np.ndarray
    stop: int
    err: int  # 0 clean end, 1 header size < 8, 2 record cut off by the end


def split_records(buf: np.ndarray, start: int, end: int) -> Records:
    """Walk the records in buf[start:end] once (perf_walk.scan_records)."""
    parts: list[tuple[np.ndarray, ...]] = []
    at = start
    while True:
        # sized for typical records; untouched capacity costs address space, not memory
        cap = max(1024, (end - at) // 48)
        s = scratch(cap, np.int64)
        r = (np.empty(cap // 4, np.int64), np.empty(cap // 4, np.int32), np.empty(cap // 4, np.int32))
        ns, nr, stop, err = kernels.scan_records(buf, at, end, s, *r)
        parts.append((s[:ns],) + tuple(a[:nr] for a in r))
        if err != 3:
            break
        at = stop
    cols = [p[0] if len(parts) == 1 else np.concatenate(p) for p in zip(*parts, strict=True)]
    if err == 0 and stop < end:  # fewer than 8 bytes left: a record header cut off
        err = 2
    return Records(*cols, stop, err)


@dataclass
class Keys:
    """Per sample (in file order): offset, payload position in the record, time, tid and key
    (perf_walk.sample_keys)."""

    off: np.ndarray
    rawrel: np.ndarray
    time: np.ndarray
    tid: np.ndarray
    key: np.ndarray


def _key_args(attrs: list[Attr], path: str) -> tuple[Any, ...]:
    """The id lookup and per-attr layout table the compiled key passes take."""
    mode, pos, ids, idx = id_index(attrs, path)
    lut, base = np.zeros(0, np.int32), np.uint64(0)
    if len(ids) and int(ids[-1]) - int(ids[0]) < 1 << 20:
        base = ids[0]
        lut = np.full(int(ids[-1]) - int(ids[0]) + 1, -1, np.int32)
        lut[(ids - base).astype(np.int64)] = idx
    masks = np.array([[a.sample_type for a in attrs], [a.read_format for a in attrs]], dtype=np.uint64)
    tab = np.concatenate((masks.view(np.int64),  # (u64 masks from the file, bit 63 included: the same bits)
                          np.array([[8 * sum(1 for b in FIXED_PART if a.sample_type & b) for a in attrs],
                                    [field_pos(a.sample_type, abi.S_TIME) for a in attrs],  # (-1: no such field)
                                    [field_pos(a.sample_type, abi.S_TID) for a in attrs]], dtype=np.int64)))
    return mode, pos, ids, idx, lut, base, tab


def _key_arrays(n: int) -> tuple[np.ndarray, ...]:
    # payload position, tid (becoming the thread-name code) and key live until the fill, which
    # discards them as it goes
    return scratch(n, np.uint16), np.empty(n, np.int64), scratch(n, np.int32), scratch(n, np.int32)


def sample_keys(attrs: list[Attr], path: str, buf: np.ndarray, s_off: np.ndarray) -> Keys:
    """Every sample's key fields, one parallel pass over the samples."""
    out = _key_arrays(len(s_off))
    kernels.parallel(kernels.sample_keys, len(s_off), buf, s_off, *_key_args(attrs, path), *out)
    return Keys(s_off, *out)


def scan(attrs: list[Attr], path: str, buf: np.ndarray, start: int, end: int) -> tuple[Records, Keys]:
    """All records and every sample's key fields. The record walk runs in parallel pieces when the
    pieces provably join up (each starts where the previous one stopped, the last at the end);
    otherwise sequentially, which also pins down where a damaged file stops."""
    threads = kernels.threads()
    if threads > 1 and end - start >= PARALLEL_SPLIT_BYTES:
        k = 4 * threads
        first, stop, n_s, n_r = (np.zeros(k, np.int64) for _ in range(4))
        kernels.parallel(kernels.split_chunks, k, buf, start, end, k, first, stop, n_s, n_r, pieces=k)
        if first[0] == start and stop[-1] == end and (first[1:] == stop[:-1]).all():
            s_base = np.concatenate(([0], np.cumsum(n_s)[:-1]))
            r_base = np.concatenate(([0], np.cumsum(n_r)[:-1]))
            ns, nr = int(n_s.sum()), int(n_r.sum())
            s_off = scratch(ns, np.uint32 if len(buf) <= OFFSET32_LIMIT else np.int64)
            r = (np.empty(nr, np.int64), np.empty(nr, np.int32), np.empty(nr, np.int32))
            out = _key_arrays(ns)
            kernels.parallel(kernels.split_keys_chunks, k, buf, first, stop, s_base, r_base, *_key_args(attrs, path),
                             s_off, *r, *out, pieces=k)
            return Records(s_off, *r, end, 0), Keys(s_off, *out)
    recs = split_records(buf, start, end)
    return recs, sample_keys(attrs, path, buf, recs.s_off)


@dataclass
class Samples:
    """Every sample's time, payload position, group (negative: not decodable) and thread-name
    code; each group's attr and payload event id."""

    off: np.ndarray
    rawrel: np.ndarray
    time: np.ndarray
    group: np.ndarray
    comm: np.ndarray
    comm_names: list[str | None]
    group_attr: np.ndarray
    group_etype: np.ndarray


def decode_samples(nattrs: int, keys: Keys, comm_events: dict[int, list[tuple[int, str]]],
                   comm_of: Callable[[int, int], str | None]) -> Samples:
    """Samples grouped by (attr, payload event id), with thread names resolved as perf does: the
    thread's name at the sample's time (``comm_events``: COMM records per tid, by time)."""
    n = len(keys.off)
    comm = scratch(n, np.int32)
    # usually a thread is named before its first sample and never renamed later: its tid is its name
    first, tmin, tid_of = dense_codes(keys.tid, keys.key, keys.time, comm)
    renamed = any(t in comm_events and any(ts > t0 for ts, _ in comm_events[t])
                  for t, t0 in zip(tid_of.tolist(), tmin.tolist(), strict=True))
    if not renamed:
        names = [comm_of(t, int(keys.time[j])) for t, j in zip(tid_of.tolist(), first.tolist(), strict=True)]
    else:  # (thread, COMM records before the sample) names the thread at each sample
        tids = sorted(comm_events)
        seg = np.zeros(len(tids) + 1, dtype=np.int64)
        times: list[int] = []
        for k, t in enumerate(tids):
            times.extend(ts for ts, _ in comm_events[t])
            seg[k + 1] = len(times)
        counts = np.empty(n, np.int32)
        kernels.parallel(kernels.comm_counts, n, keys.tid, keys.time, keys.key, np.array(tids, dtype=np.int64), seg,
                         np.array(times, dtype=np.int64), counts)
        width = int(counts.max()) + 1  # thread code and COMM count as one key
        ckey = comm * np.int32(width) + counts if len(first) * width < 1 << 31 else \
            comm.astype(np.int64) * width + counts
        del counts
        first, _, _ = dense_codes(ckey, keys.key, keys.time, comm)
        del ckey
        names = [comm_of(int(keys.tid[j]), int(keys.time[j])) for j in first.tolist()]
    discard(keys.tid, 0, n)
    slots = nattrs * (abi.NO_RAW + 1)
    group_key = np.zeros(slots, np.int64)
    group = keys.key  # renumbered in place: keys become dense group numbers
    ng = kernels.assign_groups(group, np.full(slots, -1, dtype=np.int32), group_key)
    gk = group_key[:ng]
    return Samples(keys.off, keys.rawrel, keys.time, group, comm, names, (gk // (abi.NO_RAW + 1)).astype(np.int32),
                   (gk % (abi.NO_RAW + 1)).astype(np.int32))


DENSE_CODE_RANGE = 1 << 23  # key ranges up to this are coded through a direct table (tids: pid_max <= 4 M)


def dense_codes(keys: np.ndarray, valid: np.ndarray, time: np.ndarray, codes: np.ndarray) \
        -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kernels.dense_codes with a direct table when the valid keys span a small range."""
    lo, hi = (int(keys.min()), int(keys.max())) if len(keys) else (0, 0)  # (invalid keys widen it a little)
    for cap in (FIRST_CODES, len(keys)):
        table = np.full(hi - lo + 1 if hi - lo < DENSE_CODE_RANGE else 0, -1, dtype=np.int32)
        first, tmin, kval = (np.empty(cap, np.int64) for _ in range(3))
        nc = kernels.dense_codes(keys, lo, table, valid, time, codes, first, tmin, kval)
        if nc >= 0:
            return first[:nc], tmin[:nc], kval[:nc]
    raise AssertionError("dense_codes: more codes than samples")


# where a column's bytes come from: the record, its payload, or values the fill computes
FROM_RECORD, FROM_PAYLOAD, SEQ, COMM_CODE, PAYLOAD_OFF, PAYLOAD_LEN = range(6)


@dataclass
class _Plan:
    """Columns of one (attr, tracepoint) group in the arena: name -> (source, byte position, dtype)."""

    cols: dict[str, tuple[int, int, np.dtype]]
    fmt: EventFormat | None


def _plan(a: Attr, fmt: EventFormat | None) -> _Plan:
    st = a.sample_type
    cols: dict[str, tuple[int, int, np.dtype]] = {"seq": (SEQ, 0, np.dtype(np.int64)),
                                                  "comm": (COMM_CODE, 0, np.dtype(np.int32))}
    body = 8  # record header
    if st & abi.S_TIME:
        cols["ts_ns"] = (FROM_RECORD, body + field_pos(st, abi.S_TIME), np.dtype(np.int64))
    if st & abi.S_TID:
        tid = body + field_pos(st, abi.S_TID)
        cols["tgid"] = (FROM_RECORD, tid, np.dtype(np.int32))
        cols["pid"] = (FROM_RECORD, tid + 4, np.dtype(np.int32))
    if st & abi.S_CPU:
        cols["cpu"] = (FROM_RECORD, body + field_pos(st, abi.S_CPU), np.dtype(np.int32))
    for name, (p, dt) in field_columns(fmt).items():
        cols[name] = (FROM_PAYLOAD, p, dt)
    cols.update(payload_columns(fmt, PAYLOAD_OFF, PAYLOAD_LEN))
    return _Plan(cols, fmt)


def _fill(buf: np.ndarray, sc: Samples, rows: np.ndarray, plans: dict[int, _Plan], counts: np.ndarray,
          code_map: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
    """Run the compiled fill; return each planned group's columns as views of one arena."""
    ar = arena.layout({g: p.cols for g, p in plans.items()}, counts, (SEQ, COMM_CODE, PAYLOAD_OFF, PAYLOAD_LEN))
    tables = (*ar.special, ar.col_start, ar.col_src, ar.col_pos, ar.col_size, ar.col_elem, *ar.widths)
    # in slices of the file, each slice's file pages dropped once written out and its per-sample
    # inputs discarded: the file, the per-sample arrays and the tables they become are not all
    # resident at the peak (fresh memory is slow to touch on some hosts: the less, the better)
    n = len(sc.off)
    consumed = (sc.off, sc.rawrel, sc.group, rows, sc.comm)
    done = 0
    for j0 in range(0, n, FILL_SLICE):
        j1 = min(n, j0 + FILL_SLICE)
        kernels.parallel(kernels.fill_sample_columns, j1 - j0, buf, j0, sc.off[j0:j1], sc.rawrel[j0:j1],
                         sc.group[j0:j1], rows[j0:j1], sc.comm[j0:j1], code_map, *tables)
        upto = int(sc.off[j1]) if j1 < n else len(buf)
        release_pages(buf, done, upto)
        for a in consumed:
            discard(a, 0, j1)
        done = upto
    sc.off = sc.rawrel = sc.group = sc.comm = np.zeros(0, np.int32)  # consumed
    return ar.views


def emit_samples(attrs: list[Attr], path: str, buf: np.ndarray, sc: Samples, formats: dict[int, EventFormat],
                 symbols: Callable[[int], str | None] | None, b: TraceBuilder, source: str, base: int = 0) -> None:
    """All samples into their tables, each table in time order (ties in file order). ``base``: where
    ``buf`` starts in the record stream (the offset a message names a sample by is base + its offset)."""
    n = len(sc.off)
    if n == 0:
        return
    for code, label in ((abi.KEY_UNKNOWN_ID, "sample with an unknown event id"),
                        (abi.KEY_BROKEN, "sample fields run past the record")):
        bad = np.flatnonzero(sc.group == code)
        if len(bad):
            b.stats.add(path, "unparsed_record", "sample", len(bad), f"offset {base + int(sc.off[bad[0]])}: {label}")
    order = np.argsort(sc.time, kind="stable")
    ng = len(sc.group_attr)
    rows = scratch(n, np.int32)
    counts = np.zeros(ng, dtype=np.int64)
    group_rows(order, sc.group, rows, counts)
    plans: dict[int, _Plan] = {}
    plain: list[int] = []
    for g in range(ng):
        a = attrs[int(sc.group_attr[g])]
        etype = int(sc.group_etype[g])
        if etype == abi.NO_RAW or a.type != PERF_TYPE_TRACEPOINT:
            plain.append(g)
        else:
            plans[g] = _plan(a, formats.get(etype))
    for g in plain:  # samples of hardware/software events: order this group's samples by time
        sel = order[sc.group[order] == g]
        _emit_plain(attrs[int(sc.group_attr[g])], path, buf, sc, sel, b, source)
    # the times are now in rows: free them before the tables are allocated
    del order
    sc.time = np.zeros(0, np.int64)
    code_map, names = distinct_names(sc.comm_names)
    views = _fill(buf, sc, rows, plans, counts, code_map)
    del rows
    given_back = False  # the groups that read the file again first, then its pages are let go
    for g, plan in sorted(plans.items(), key=lambda gp: not reads_payloads(gp[1].fmt)):
        if not given_back and not reads_payloads(plan.fmt):
            give_back(buf)
            given_back = True
        _emit_group(path, buf, plan, views.pop(g), int(counts[g]), int(sc.group_etype[g]), names, symbols,
                    b, source)


def _emit_group(path: str, buf: np.ndarray, plan: _Plan, v: dict[str, np.ndarray], n: int, etype: int,
                names: list[str | None], symbols: Callable[[int], str | None] | None, b: TraceBuilder,
                source: str) -> None:
    # thread-name codes come from dense_codes: in range by construction; the named threads' first
    # (distinct_names: the last code is the unnamed threads'): only an event with samples of unnamed
    # threads needs a null mask
    named = len(names) - 1
    comm = v["comm"]
    used = names if n and int(comm.max()) >= named else names[:named]
    common: dict[str, Any] = {"ts_ns": v.get("ts_ns", np.zeros(n, np.int64)), "seq": v["seq"], "cpu": v.get("cpu"),
                              "pid": v.get("pid"), "tgid": v.get("tgid"),
                              "comm": dict_array(comm, used, check=False), "source": const_column(source, n)}
    emit_decoded(b, path, buf, plan.fmt, etype, common, {k: a.view(np.int64) if k == "raw_off" else a
                                                         for k, a in v.items()}, n, symbols)


def _emit_plain(a: Attr, path: str, buf: np.ndarray, sc: Samples, sel: np.ndarray, b: TraceBuilder,
                source: str) -> None:
    """Samples of a non-tracepoint event (``sel``: their sample indices in time order) -> ``samples``."""
    n = len(sel)
    offs = sc.off[sel].astype(np.int64)
    sizes = buf[offs[:, None] + np.arange(6, 8)].view("<u2").reshape(n).astype(np.int32)
    misc = buf[offs[:, None] + np.arange(4, 6)].view("<u2").reshape(n).astype(np.int32)
    out = sample_fields([a], path, buf, offs, sizes)
    st = a.sample_type
    b.add("samples", {
        "ts_ns": out["time"], "seq": sel.astype(np.int64), "cpu": out["cpu"] if st & abi.S_CPU else None,
        "pid": out["tid"], "comm": dict_array(sc.comm[sel], sc.comm_names),
        "tgid": out["pid"] if st & abi.S_TID else None,
        "source": const_column(source, n), "event": const_column(a.name or "", n), "tid": out["tid"],
        # without PERF_SAMPLE_PERIOD every sample stands for attr.sample_period (perf does the same)
        "period": out["period"] if st & abi.S_PERIOD else
        np.full(n, 0 if a.flags >> 10 & 1 else a.sample_period, dtype=np.uint64),
        "ip": out["ip"] if st & abi.S_IP else None,
        "cpumode": pa.DictionaryArray.from_arrays(
            pa.array((misc & 7).astype(np.int32)), pa.array([CPUMODES.get(i, "unknown") for i in range(8)])),
        "exact_ip": (misc & MISC_EXACT_IP) != 0,
    }, n, a.name)
