"""Compiled loops over perf.data records: the record walks and the sample field walks.

They are sequential over variable-length records, which numpy cannot vectorise. Kernels that
end in ``lo, hi`` handle one range of their items (samples, pieces or chunks) and are run on
several threads by ``vpmutrace.kernels.parallel``. Layouts: include/uapi/linux/perf_event.h
(PERF_RECORD_SAMPLE body order) and tools/perf/util/event.h (records that carry data outside
header.size).
"""

from __future__ import annotations

import numba
import numpy as np

from vpmutrace.formats.perf_abi import (
    A_FIXED_END,
    A_RF,
    A_ST,
    A_TID,
    A_TIME,
    F_GROUP,
    F_ID,
    F_LOST,
    F_TOTAL_TIME_ENABLED,
    F_TOTAL_TIME_RUNNING,
    KERNEL_RECORD_TYPES,
    KEY_BROKEN,
    KEY_UNKNOWN_ID,
    NO_RAW,
    REC_AUXTRACE,
    REC_HEADER_TRACING_DATA,
    REC_SAMPLE,
    S_ADDR,
    S_CALLCHAIN,
    S_CPU,
    S_ID,
    S_IDENTIFIER,
    S_IP,
    S_PERIOD,
    S_RAW,
    S_READ,
    S_STREAM_ID,
    S_TID,
    S_TIME,
    SYNC_RECORDS,
    USER_RECORD_TYPES,
)


@numba.njit(inline="always")
def _u64(buf, pos):  # pragma: no cover - compiled
    v = np.uint64(0)
    for k in range(8):
        v |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    return v


@numba.njit(inline="always")
def _i64(buf, pos):  # pragma: no cover - compiled
    v = np.int64(0)
    for k in range(8):
        v |= np.int64(buf[pos + k]) << (8 * k)
    return v


@numba.njit(inline="always")
def _u32(buf, pos):  # pragma: no cover - compiled
    return np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8) | (np.int64(buf[pos + 2]) << 16) | \
        (np.int64(buf[pos + 3]) << 24)


@numba.njit(inline="always")
def _u16(buf, pos):  # pragma: no cover - compiled
    return np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8)


@numba.njit(inline="always")
def _header(buf, pos, end):  # pragma: no cover - compiled
    """(type, size, error) of the record header at pos: error 1 when size < 8, 2 when the record
    runs past ``end``, else 0."""
    size = _u16(buf, pos + 6)
    if size < 8:
        return np.int64(0), size, np.int64(1)
    if pos + size > end:
        return np.int64(0), size, np.int64(2)
    return _u32(buf, pos), size, np.int64(0)


@numba.njit(inline="always")
def _extra(buf, pos, typ, size):  # pragma: no cover - compiled
    """Bytes a record carries after header.size (tools/perf/util/event.h): the tracing data of
    HEADER_TRACING_DATA (u64-aligned; simpleperf's record holds it within header.size instead: see
    tracing_data_span) and the AUX data of AUXTRACE."""
    if typ == REC_HEADER_TRACING_DATA and size >= 12:
        if size >= 12 + _u32(buf, pos + 8):
            return np.int64(0)
        return (_u32(buf, pos + 8) + 7) & ~7
    if typ == REC_AUXTRACE and size >= 16:
        return _i64(buf, pos + 8)
    return np.int64(0)


def walk_records(buf, start, end, fill, offs, types, miscs, sizes):  # pragma: no cover - compiled
    """Record boundaries from ``start`` to ``end``. Returns (count, stop offset, error code).

    error 0: clean end; 1: header size < 8; 2: record runs past the end (truncated file).
    """
    n = 0
    pos = start
    err = np.int64(0)
    while pos + 8 <= end:
        typ, size, err = _header(buf, pos, end)
        if err:
            break
        misc = _u16(buf, pos + 4)
        extra = _extra(buf, pos, typ, size)
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


@numba.njit(inline="always")
def _past_read_callchain(buf, p, end, st, rf):  # pragma: no cover - compiled
    """Position after the READ and CALLCHAIN fields (variable length) that start at p, or -1 when
    they run past ``end``. st: sample_type, rf: read_format."""
    if st & np.uint64(S_READ):
        per = 1 + (1 if rf & F_ID else 0) + (1 if rf & F_LOST else 0)
        times = (1 if rf & F_TOTAL_TIME_ENABLED else 0) + (1 if rf & F_TOTAL_TIME_RUNNING else 0)
        if rf & F_GROUP:
            if p + 8 > end:
                return -1
            p += 8 + 8 * times + 8 * per * _i64(buf, p)
        else:
            p += 8 * (times + per)
    if st & np.uint64(S_CALLCHAIN):
        if p + 8 > end:
            return -1
        p += 8 + 8 * _i64(buf, p)
    return p


def walk_samples(buf, offs, sizes, id_mode, id_pos, ids_sorted, ids_attr, st_arr, rf_arr, out_attr, out_ip,
                 out_pid, out_tid, out_time, out_cpu, out_period, out_raw_off, out_raw_len, out_ok, lo,
                 hi):  # pragma: no cover - compiled
    """Decode the fields of PERF_RECORD_SAMPLE records lo..hi, in ABI order, up to and past RAW.

    id_mode: 0 single attr, 1 IDENTIFIER (first u64), 2 ID at byte ``id_pos`` of the body.
    out_ok: 1 decoded, 0 id unknown, -1 fields ran past the record.
    """
    for i in range(lo, hi):
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
        p = _past_read_callchain(buf, p, end, st, rf)
        if p < 0:
            out_ok[i] = -1
            continue
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


def scan_records(buf, start, end, s_off, r_off, r_type, r_size):  # pragma: no cover - compiled
    """Record boundaries in one sequential pass: SAMPLE records to s_off, the others to r_*.

    Returns (samples, other records, stop offset, error): error 0 clean end, 1 header
    size < 8, 2 record past the end, 3 output arrays full (call again from the stop offset).
    """
    ns = 0
    nr = 0
    pos = start
    err = np.int64(0)
    cap_s = len(s_off)
    cap_r = len(r_off)
    while pos + 8 <= end:
        typ, size, err = _header(buf, pos, end)
        if err:
            break
        if typ == REC_SAMPLE:
            if ns >= cap_s:
                err = 3
                break
            s_off[ns] = pos
            ns += 1
            pos += size
            continue
        extra = _extra(buf, pos, typ, size)
        if pos + size + extra > end:
            err = 2
            break
        if nr >= cap_r:
            err = 3
            break
        r_off[nr] = pos
        r_type[nr] = typ
        r_size[nr] = size
        nr += 1
        pos += size + extra
    return ns, nr, pos, err


@numba.njit
def _record_end(buf, pos, end):  # pragma: no cover - compiled
    """End of the record at pos (with data carried outside header.size), or -1 if it is not a plausible
    record: known type, size a multiple of 8, inside the data."""
    if pos + 8 > end:
        return np.int64(-1)
    typ = _u32(buf, pos)
    size = _u16(buf, pos + 6)
    if size < 8 or size & 7 or not (KERNEL_RECORD_TYPES[0] <= typ <= KERNEL_RECORD_TYPES[1]
                                    or USER_RECORD_TYPES[0] <= typ <= USER_RECORD_TYPES[1]):
        return np.int64(-1)
    extra = _extra(buf, pos, typ, size)
    if extra < 0 or pos + size + extra > end:
        return np.int64(-1)
    return pos + size + extra


def split_chunks(buf, start, end, nchunks, first, stop, n_s, n_r, lo, hi):  # pragma: no cover - compiled
    """Record walk of pieces lo..hi of the data cut into nchunks: each piece's walk starts at the
    first offset from which SYNC_RECORDS plausible records follow (piece 0: at ``start``) and runs
    to the first record starting at or past the piece's end (``stop``), counting samples (n_s)
    and other records (n_r). The split is right only when every piece starts where the previous
    one stopped and the last stops at ``end``: the caller checks that, and walks sequentially
    otherwise (a false start cannot pass that check)."""
    span = end - start
    for c in range(lo, hi):
        c_lo = start + (span * c // nchunks) // 8 * 8
        c_hi = start + (span * (c + 1) // nchunks) // 8 * 8 if c + 1 < nchunks else end
        pos = c_lo
        if c > 0:
            pos = -1
            q = c_lo
            while q < c_hi and pos < 0:
                p = q
                k = 0
                while k < SYNC_RECORDS:
                    e = _record_end(buf, p, end)
                    if e < 0:
                        break
                    p = e
                    k += 1
                if k == SYNC_RECORDS or p == end:
                    pos = q
                q += 8
            if pos < 0:
                pos = c_hi
        first[c] = pos
        ns = 0
        nr = 0
        while pos < c_hi:
            e = _record_end(buf, pos, end)
            if e < 0:
                break
            if _u32(buf, pos) == REC_SAMPLE:
                ns += 1
            else:
                nr += 1
            pos = e
        stop[c] = pos
        n_s[c] = ns
        n_r[c] = nr


@numba.njit(inline="always")
def _key_one(buf, pos, i, id_mode, id_pos, ids_sorted, ids_attr, id_lut, id_base, attr_tab, state, s_rawrel, s_time,
             s_tid, s_key):  # pragma: no cover - compiled
    """sample_keys for the sample at ``pos``, output index i; ``state`` caches the last id and its
    attr between consecutive samples."""
    rec_end = pos + _u16(buf, pos + 6)
    o = pos + 8
    s_rawrel[i] = 0
    s_time[i] = 0
    s_tid[i] = 0
    a = np.int64(0)
    if id_mode != 0:
        p = o if id_mode == 1 else o + id_pos
        if p + 8 > rec_end:
            s_key[i] = KEY_BROKEN
            return
        sid = _u64(buf, p)
        if state[1] < 0 or np.int64(sid) != state[0]:
            na = np.int64(-1)
            if len(id_lut) > 0:
                rel = sid - id_base
                if sid >= id_base and rel < np.uint64(len(id_lut)):
                    na = id_lut[rel]
            else:
                j = np.searchsorted(ids_sorted, sid)
                if j < len(ids_sorted) and ids_sorted[j] == sid:
                    na = ids_attr[j]
            if na < 0:
                s_key[i] = KEY_UNKNOWN_ID
                return
            state[0] = np.int64(sid)
            state[1] = na
        a = state[1]
    fixed_end = attr_tab[A_FIXED_END, a]
    if o + fixed_end > rec_end:
        s_key[i] = KEY_BROKEN
        return
    st = np.uint64(attr_tab[A_ST, a])
    t = _i64(buf, o + attr_tab[A_TIME, a]) if attr_tab[A_TIME, a] >= 0 else np.int64(0)
    s_time[i] = t
    s_tid[i] = np.int32(_u32(buf, o + attr_tab[A_TID, a] + 4)) if attr_tab[A_TID, a] >= 0 else 0
    etype = np.int64(NO_RAW)
    if st & np.uint64(S_RAW):
        # after the fixed part, READ and CALLCHAIN have variable length
        p = _past_read_callchain(buf, o + fixed_end, rec_end, st, attr_tab[A_RF, a])
        ln = _u32(buf, p) if p >= 0 and p + 4 <= rec_end else np.int64(0)
        if ln < 2 or p + 4 + ln > rec_end:
            s_key[i] = KEY_BROKEN
            return
        s_rawrel[i] = p + 4 - pos
        etype = _u16(buf, p + 4)
    s_key[i] = a * (NO_RAW + 1) + etype


def sample_keys(buf, s_off, id_mode, id_pos, ids_sorted, ids_attr, id_lut, id_base, attr_tab, s_rawrel, s_time,
                s_tid, s_key, lo, hi):  # pragma: no cover - compiled
    """Per sample lo..hi: time, tid, the RAW payload's position in the record and the key
    ``attr * (NO_RAW + 1) + payload event id`` (NO_RAW without a payload; KEY_UNKNOWN_ID for an
    id no attr has, KEY_BROKEN when the fields run past the record). Sample ids map to attrs
    through id_lut[id - id_base] when the ids are dense (as perf assigns
    them), else by binary search in ids_sorted. attr_tab rows: A_ST .. A_TID."""
    state = np.array([0, -1], dtype=np.int64)
    for i in range(lo, hi):
        _key_one(buf, np.int64(s_off[i]), i, id_mode, id_pos, ids_sorted, ids_attr, id_lut, id_base, attr_tab, state,
                 s_rawrel, s_time, s_tid, s_key)


def split_keys_chunks(buf, first, stop, s_base, r_base, id_mode, id_pos, ids_sorted, ids_attr, id_lut, id_base,
                      attr_tab, s_off, r_off, r_type, r_size, s_rawrel, s_time, s_tid, s_key, lo,
                      hi):  # pragma: no cover - compiled
    """Pieces lo..hi found by split_chunks walked again: sample offsets and their keys (as
    sample_keys), other records to r_*, at each piece's base index."""
    for c in range(lo, hi):
        state = np.array([0, -1], dtype=np.int64)
        pos = first[c]
        i = s_base[c]
        k = r_base[c]
        while pos < stop[c]:
            size = _u16(buf, pos + 6)
            typ = _u32(buf, pos)
            if typ == REC_SAMPLE:
                s_off[i] = pos
                _key_one(buf, pos, i, id_mode, id_pos, ids_sorted, ids_attr, id_lut, id_base, attr_tab, state,
                         s_rawrel, s_time, s_tid, s_key)
                i += 1
                pos += size
            else:
                r_off[k] = pos
                r_type[k] = typ
                r_size[k] = size
                k += 1
                pos = _record_end(buf, pos, len(buf))


def assign_groups(s_key, group_of, group_key):  # pragma: no cover - compiled
    """Turn keys into dense group numbers in order of first appearance (negative keys stay).
    Returns the number of groups; group_key[g] is group g's key."""
    ng = 0
    last_key = -3
    last_g = -3
    for i in range(len(s_key)):
        k = s_key[i]
        if k != last_key:
            if k < 0:
                g = k
            else:
                g = group_of[k]
                if g < 0:
                    g = ng
                    group_of[k] = g
                    group_key[g] = k
                    ng += 1
            last_key = k
            last_g = g
        s_key[i] = last_g
    return ng


def count_groups(order, s_group, at, lo, hi):  # pragma: no cover - compiled
    """at[c, g]: samples of group g in chunk c of ``order`` (chunks lo..hi of len(at))."""
    n = len(order)
    nch = len(at)
    for c in range(lo, hi):
        for k in range(c * n // nch, (c + 1) * n // nch):
            g = s_group[order[k]]
            if g >= 0:
                at[c, g] += 1


def number_rows(order, s_group, rows, at, lo, hi):  # pragma: no cover - compiled
    """rows[j]: sample j's position within its group in ``order``, numbered from ``at[c, g]``
    (the group's running total at chunk c's start) for chunks lo..hi."""
    n = len(order)
    nch = len(at)
    for c in range(lo, hi):
        nxt = at[c].copy()
        for k in range(c * n // nch, (c + 1) * n // nch):
            j = order[k]
            g = s_group[j]
            if g >= 0:
                rows[j] = nxt[g]
                nxt[g] += 1


def comm_counts(s_tid, s_time, s_key, ev_tids, seg_start, ev_times, s_cnt, lo, hi):  # pragma: no cover - compiled
    """Per sample lo..hi: how many of its thread's COMM records are at or before it, so that samples
    of one thread with equal counts had the same thread name (0 for samples that are not
    decodable, s_key < 0). COMM times per thread: ev_times[seg_start[k]:seg_start[k + 1]] for
    thread ev_tids[k], sorted."""
    last_tid = np.int64(-1)
    b_lo = np.int64(0)
    b_hi = np.int64(0)
    for i in range(lo, hi):
        if s_key[i] < 0:
            s_cnt[i] = 0
            continue
        tid = np.int64(s_tid[i])
        if tid != last_tid or i == lo:
            k = np.searchsorted(ev_tids, tid)
            b_lo = np.int64(0)
            b_hi = np.int64(0)
            if k < len(ev_tids) and ev_tids[k] == tid:
                b_lo = seg_start[k]
                b_hi = seg_start[k + 1]
            last_tid = tid
        cnt = 0
        while b_lo + cnt < b_hi and ev_times[b_lo + cnt] <= s_time[i]:  # threads are renamed a few times at most
            cnt += 1
        s_cnt[i] = cnt


def dense_codes(keys, base, table, valid, s_time, codes, first, tmin, kval):  # pragma: no cover - compiled
    """codes[i]: dense number of keys[i] in order of first appearance; -1 where valid[i] < 0.
    Keys in a small range map through ``table`` (all -1, indexed by key - base); with an empty
    table, through a hash table. Per code: first[c] the first index with it, tmin[c] the earliest
    s_time among its rows, kval[c] its key. Returns the number of codes, or -1 when there are
    more than first/tmin/kval hold (call again with larger ones)."""
    direct = len(table) > 0
    seen = numba.typed.Dict.empty(key_type=numba.types.int64, value_type=numba.types.int64)
    cap = len(first)
    nc = 0
    last_key = np.int64(-1)
    last_code = np.int64(-1)
    for i in range(len(keys)):
        if valid[i] < 0:
            codes[i] = -1
            continue
        key = np.int64(keys[i])
        if key != last_key or last_code < 0:
            if direct:
                c = np.int64(table[key - base])
            elif key in seen:
                c = seen[key]
            else:
                c = np.int64(-1)
            if c < 0:
                if nc == cap:
                    return -1
                c = np.int64(nc)
                if direct:
                    table[key - base] = c
                else:
                    seen[key] = c
                first[nc] = i
                tmin[nc] = s_time[i]
                kval[nc] = key
                nc += 1
            last_key = key
            last_code = c
        if s_time[i] < tmin[last_code]:
            tmin[last_code] = s_time[i]
        codes[i] = last_code
    return nc


@numba.njit(inline="always")
def _copy_bytes(buf, src, avail, out, dst, z):  # pragma: no cover - compiled
    """z bytes from buf[src:] to out[dst:], those past ``avail`` (the bytes there are) zero."""
    for k in range(z):
        out[dst + k] = buf[src + k] if k < avail else np.uint8(0)


def fill_sample_columns(buf, j0, s_off, s_rawrel, s_group, s_row, s_code, g_seq, g_code, g_rawoff, g_rawlen,
                        col_start, col_raw, col_pos, col_size, col_elem, a8, a16, a32, a64, lo,
                        hi):  # pragma: no cover - compiled
    """Write the columns of samples lo..hi straight into their group's place in one arena.

    Groups with g_seq[g] < 0 are skipped. The arena is one buffer seen at four widths
    (a8/a16/a32/a64). For group g, row r:
    sequence number (j0 + position in s_off) at a64[g_seq[g] + r], thread-name code at
    a32[g_code[g] + r], payload offset / length at a64[g_rawoff[g] + r] / a64[g_rawlen[g] + r]
    when those are >= 0; then columns c in col_start[g]..col_start[g+1]: ``col_size[c]`` bytes
    copied from the record (col_raw 0) or its payload (col_raw 1, zero when the payload is
    shorter) at col_pos[c], to element col_elem[c] + r; with col_size[c] = -z < 0, z bytes
    copied as they are to a8[col_elem[c] + r * z:][:z] (bytes past the payload zero).
    Little-endian input and host.
    """
    for j in range(lo, hi):
        g = s_group[j]
        if g < 0 or g_seq[g] < 0:  # not decodable, or a group filled elsewhere
            continue
        r = np.int64(s_row[j])
        o = np.int64(s_off[j])
        rel = np.int64(s_rawrel[j])
        ro = o + rel
        rl = _u32(buf, ro - 4) if rel > 0 else np.int64(0)
        a64[g_seq[g] + r] = np.uint64(j0 + j)
        a32[g_code[g] + r] = np.uint32(s_code[j])
        if g_rawoff[g] >= 0:
            a64[g_rawoff[g] + r] = np.uint64(ro)
            a64[g_rawlen[g] + r] = np.uint64(rl)
        for c in range(col_start[g], col_start[g + 1]):
            z = col_size[c]
            d = col_elem[c] + r
            p = col_pos[c]
            src = o + p
            if z < 0:
                _copy_bytes(buf, ro + p if col_raw[c] else src, rl - p if col_raw[c] else -z, a8,
                            col_elem[c] + r * -z, -z)
                continue
            if col_raw[c]:
                src = ro + p if p + z <= rl else -1
            if z == 8:
                a64[d] = _u64(buf, src) if src >= 0 else np.uint64(0)
            elif z == 4:
                a32[d] = np.uint32(_u32(buf, src)) if src >= 0 else np.uint32(0)
            elif z == 2:
                a16[d] = np.uint16(_u16(buf, src)) if src >= 0 else np.uint16(0)
            else:
                a8[d] = buf[src] if src >= 0 else np.uint8(0)
