"""Compiled loops over perf.data records (numba): the record walk and the sample field walk.

Both are sequential over variable-length records, which numpy cannot vectorise.
Layouts: include/uapi/linux/perf_event.h (PERF_RECORD_SAMPLE body order) and
tools/perf/util/event.h (tool records that carry data outside header.size).
"""

from __future__ import annotations

import numba
import numpy as np

REC_HEADER_TRACING_DATA = 66
REC_AUXTRACE = 71

S_IP, S_TID, S_TIME, S_ADDR, S_READ, S_CALLCHAIN, S_ID, S_CPU = 1, 2, 4, 8, 16, 32, 64, 128
S_PERIOD, S_STREAM_ID, S_RAW, S_BRANCH_STACK, S_REGS_USER, S_STACK_USER = 256, 512, 1024, 2048, 4096, 8192
S_WEIGHT, S_DATA_SRC, S_IDENTIFIER, S_TRANSACTION, S_REGS_INTR, S_PHYS_ADDR = 1 << 14, 1 << 15, 1 << 16, 1 << 17, \
    1 << 18, 1 << 19
S_AUX, S_CGROUP, S_DATA_PAGE_SIZE, S_CODE_PAGE_SIZE, S_WEIGHT_STRUCT = 1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24

F_TOTAL_TIME_ENABLED, F_TOTAL_TIME_RUNNING, F_ID, F_GROUP, F_LOST = 1, 2, 4, 8, 16


@numba.njit(cache=True)
def _u64(buf, pos):  # pragma: no cover - compiled
    v = np.uint64(0)
    for k in range(8):
        v |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    return v


@numba.njit(cache=True)
def _i64(buf, pos):  # pragma: no cover - compiled
    v = 0
    for k in range(8):
        v |= np.int64(buf[pos + k]) << (8 * k)
    return v


@numba.njit(cache=True)
def _u32(buf, pos):  # pragma: no cover - compiled
    return np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8) | (np.int64(buf[pos + 2]) << 16) | \
        (np.int64(buf[pos + 3]) << 24)


@numba.njit(cache=True)
def _u16(buf, pos):  # pragma: no cover - compiled
    return np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8)


@numba.njit(cache=True)
def walk_records(buf, start, end, fill, offs, types, miscs, sizes):  # pragma: no cover - compiled
    """Record boundaries from ``start`` to ``end``. Returns (count, stop offset, error code).

    error 0: clean end; 1: header size < 8; 2: record runs past the end (truncated file).
    """
    n = 0
    pos = start
    err = 0
    while pos + 8 <= end:
        typ = _u32(buf, pos)
        misc = _u16(buf, pos + 4)
        size = _u16(buf, pos + 6)
        if size < 8:
            err = 1
            break
        if pos + size > end:
            err = 2
            break
        extra = 0
        if typ == REC_HEADER_TRACING_DATA and size >= 12:
            extra = (_u32(buf, pos + 8) + 7) & ~7
        elif typ == REC_AUXTRACE and size >= 16:
            extra = _i64(buf, pos + 8)
        if pos + size + extra > end:
            err = 2
            break
        if fill:
            offs[n] = pos
            types[n] = typ
            miscs[n] = misc
            sizes[n] = size
        n += 1
        pos += size + extra
    return n, pos, err


@numba.njit(cache=True)
def _popcount(x):  # pragma: no cover - compiled
    c = 0
    while x:
        x &= x - np.uint64(1)
        c += 1
    return c


@numba.njit(cache=True, parallel=True)
def walk_samples(buf, offs, sizes, id_mode, id_pos, ids_sorted, ids_attr, st_arr, rf_arr, ru_arr, ri_arr,
                 bhw_arr, out_attr, out_ip, out_pid, out_tid, out_time, out_cpu, out_period,
                 out_raw_off, out_raw_len, out_ok):  # pragma: no cover - compiled
    """Decode the fields of PERF_RECORD_SAMPLE records, in ABI order, up to and past RAW.

    id_mode: 0 single attr, 1 IDENTIFIER (first u64), 2 ID at byte ``id_pos`` of the body.
    out_ok: 1 decoded, 0 id unknown, -1 fields ran past the record.
    """
    for i in numba.prange(len(offs)):
        o = offs[i] + 8
        end = offs[i] + sizes[i]
        a = 0
        if id_mode != 0:
            p = o if id_mode == 1 else o + id_pos
            if p + 8 > end:
                out_ok[i] = -1
                continue
            sid = _u64(buf, p)
            j = np.searchsorted(ids_sorted, sid)
            if j >= len(ids_sorted) or ids_sorted[j] != sid:
                out_ok[i] = 0
                continue
            a = ids_attr[j]
        out_attr[i] = a
        st = np.uint64(st_arr[a])
        rf = rf_arr[a]
        p = o
        if st & np.uint64(S_IDENTIFIER):
            p += 8
        if st & np.uint64(S_IP):
            out_ip[i] = _u64(buf, p)
            p += 8
        if st & np.uint64(S_TID):
            out_pid[i] = _u32(buf, p)
            out_tid[i] = _u32(buf, p + 4)
            p += 8
        if st & np.uint64(S_TIME):
            out_time[i] = _i64(buf, p)
            p += 8
        if st & np.uint64(S_ADDR):
            p += 8
        if st & np.uint64(S_ID):
            p += 8
        if st & np.uint64(S_STREAM_ID):
            p += 8
        if st & np.uint64(S_CPU):
            out_cpu[i] = _u32(buf, p)
            p += 8
        if st & np.uint64(S_PERIOD):
            out_period[i] = _u64(buf, p)
            p += 8
        if st & np.uint64(S_READ):
            per = 1 + (1 if rf & F_ID else 0) + (1 if rf & F_LOST else 0)
            times = (1 if rf & F_TOTAL_TIME_ENABLED else 0) + (1 if rf & F_TOTAL_TIME_RUNNING else 0)
            if rf & F_GROUP:
                if p + 8 > end:
                    out_ok[i] = -1
                    continue
                nr = _i64(buf, p)
                p += 8 + 8 * times + 8 * per * nr
            else:
                p += 8 * (times + per)
        if st & np.uint64(S_CALLCHAIN):
            if p + 8 > end:
                out_ok[i] = -1
                continue
            nr = _i64(buf, p)
            p += 8 + 8 * nr
        if st & np.uint64(S_RAW):
            if p + 4 > end:
                out_ok[i] = -1
                continue
            ln = _u32(buf, p)
            out_raw_off[i] = p + 4
            out_raw_len[i] = ln
            p += 4 + ln
        if p > end:
            out_ok[i] = -1
            continue
        out_ok[i] = 1
