"""Compiled field decoding: tracepoint records -> column buffers (see formats/decode.py).

Records of one event are at ``offsets`` (payload start) with ``lengths`` bytes in ``buf``.
A field that reaches past its record reads as zero (scalars, fixed arrays) or is cut at the
record's end (strings, dynamic fields): never a neighbour's bytes. Kernels that end in
``lo, hi`` handle records lo..hi and are run on several threads.
"""

from __future__ import annotations

import numba
import numpy as np

from vpmutrace.kernels.hints import AHEAD, prefetch


def gather(buf, offsets, lengths, start, width, out, lo, hi):  # pragma: no cover - compiled
    """out[i, :] = bytes start..start+width of record i (zero past the record or the buffer)."""
    limit = len(buf)
    for i in range(lo, hi):
        o = offsets[i] + start
        n = lengths[i] - start
        if n > width:
            n = width
        if o + n > limit:
            n = limit - o
        for k in range(max(n, 0)):
            out[i, k] = buf[o + k]


@numba.njit(inline="always")
def _le(buf, pos, z):  # pragma: no cover - compiled
    """The z-byte (1, 2, 4 or 8) little-endian unsigned integer at buf[pos:]: a loop of constant
    length per width, which the compiler turns into one load."""
    v = np.uint64(0)
    if z == 8:
        for k in range(8):
            v |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    elif z == 4:
        for k in range(4):
            v |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    elif z == 2:
        for k in range(2):
            v |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    else:
        for k in range(z):
            v |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    return v


@numba.njit(inline="always")
def _read_uint(buf, pos, z, big_endian):  # pragma: no cover - compiled
    """The z-byte unsigned integer at buf[pos:], in the given byte order."""
    if not big_endian:
        return _le(buf, pos, z)
    v = np.uint64(0)
    for k in range(z):
        v = (v << np.uint64(8)) | np.uint64(buf[pos + k])
    return v


@numba.njit(inline="always")
def _store(a8, a16, a32, a64, d, z, v):  # pragma: no cover - compiled
    """v as element d of the arena seen at width z (a8/a16/a32/a64: one buffer)."""
    if z == 8:
        a64[d] = v
    elif z == 4:
        a32[d] = np.uint32(v)
    elif z == 2:
        a16[d] = np.uint16(v)
    else:
        a8[d] = np.uint8(v)


def decode_scalars(buf, offsets, lengths, f_off, f_size, f_elem, big_endian, a8, a16, a32, a64,
                   lo, hi):  # pragma: no cover - compiled
    """Field f of record i into element f_elem[f] + i of the arena seen at its width (a8/a16/a32/
    a64: one buffer), as the host's integer of that width; left alone (zero) when the record is
    too short."""
    limit = len(buf)
    for i in range(lo, hi):
        o = offsets[i]
        ln = lengths[i]
        for f in range(len(f_off)):
            a = f_off[f]
            z = f_size[f]
            if a + z > ln or o + a + z > limit:
                continue
            _store(a8, a16, a32, a64, f_elem[f] + i, z, _read_uint(buf, o + a, z, big_endian))


def dynamic_spans(buf, offsets, lengths, field_off, rel, big_endian, starts, sizes, lo, hi):  # pragma: no cover
    """Where the data of a ``__data_loc`` / ``__rel_loc`` field is: its u32 word holds the offset
    (low 16 bits; for __rel_loc relative to the end of the word, ``rel`` = 4) and the length (high
    16 bits). starts[i] is the data's position in ``buf``, sizes[i] its length cut at the record's
    end. Returns how many records had data reaching past their end (or no room for the word)."""
    bad = 0
    limit = len(buf)
    for i in range(lo, hi):
        o = offsets[i]
        ln = lengths[i]
        starts[i] = o
        sizes[i] = 0
        if field_off + 4 > ln or o + field_off + 4 > limit:
            bad += 1
            continue
        w = np.int64(0)
        for k in range(4):
            b = np.int64(buf[o + field_off + k])
            w = (w << 8) | b if big_endian else w | (b << (8 * k))
        at = (w & 0xFFFF) + (field_off + 4 if rel else 0)
        size = w >> 16
        if at + size > ln:
            bad += 1
            size = max(0, ln - at)
        starts[i] = o + at
        sizes[i] = size
    return bad


def string_sizes(buf, starts, sizes, stop_at_nul, out, lo, hi):  # pragma: no cover - compiled
    """out[i]: bytes of value i: sizes[i], or up to its first NUL with ``stop_at_nul``."""
    for i in range(lo, hi):
        s = starts[i]
        n = sizes[i]
        if stop_at_nul:
            k = 0
            while k < n and buf[s + k] != 0:
                k += 1
            n = k
        out[i] = n


@numba.njit(inline="always")
def _fixed_size(length, field_off, size, cut, i):  # pragma: no cover - compiled
    """Bytes of a fixed field of ``size`` bytes at field_off of a record of ``length`` bytes: cut at
    the record's end, and at cut[i] when ``cut`` is not empty."""
    n = np.int64(length) - field_off
    if n > size:
        n = np.int64(size)
    if len(cut) > 0 and np.int64(cut[i]) < n:
        n = np.int64(cut[i])
    return n if n > 0 else np.int64(0)


@numba.njit(inline="always")
def store_payload_pos(a32, a64, at_off, at_len, r, off, length):  # pragma: no cover - compiled
    """A record's payload offset and length at row r of their arena columns (at_off / at_len: where
    those columns start; negative: the event has no such column)."""
    if at_off >= 0:
        a64[at_off + r] = np.uint64(off)
    if at_len >= 0:
        a32[at_len + r] = np.uint32(length)


def fixed_sizes(buf, offsets, lengths, field_off, field_size, cut, stop_at_nul, sizes, lo, hi):  # pragma: no cover
    """sizes[i]: bytes of the fixed field at field_off in record i: its size, cut at the record's
    end, at cut[i] when ``cut`` is not empty, and at its first NUL with ``stop_at_nul``."""
    for i in range(lo, hi):
        n = _fixed_size(lengths[i], field_off, field_size, cut, i)
        if stop_at_nul:
            s = offsets[i] + field_off
            k = 0
            while k < n and buf[s + k] != 0:
                k += 1
            n = k
        sizes[i] = n


def row_sizes(mat, lengths, field_off, cut, stop_at_nul, sizes, lo, hi):  # pragma: no cover - compiled
    """sizes[i]: bytes of row i of ``mat`` (a fixed field's bytes in record i, the field at field_off
    of records of lengths[i] bytes) that its value takes: the field's size, cut at the record's end,
    at cut[i] when ``cut`` is not empty, and at its first NUL with ``stop_at_nul``."""
    size = mat.shape[1]
    for i in range(lo, hi):
        n = _fixed_size(lengths[i], field_off, size, cut, i)
        if stop_at_nul:
            k = 0
            while k < n and mat[i, k] != 0:
                k += 1
            n = k
        sizes[i] = n


def copy_rows(mat, value_offsets, data, lo, hi):  # pragma: no cover - compiled
    """The first value_offsets[i + 1] - value_offsets[i] bytes of row i of ``mat`` to
    data[value_offsets[i]:value_offsets[i + 1]] (an Arrow data buffer)."""
    for i in range(lo, hi):
        d = value_offsets[i]
        for k in range(value_offsets[i + 1] - d):
            data[d + k] = mat[i, k]


def copy_values(buf, starts, add, value_offsets, data, lo, hi):  # pragma: no cover - compiled
    """Value i's bytes, at starts[i] + add in buf, to data[value_offsets[i]:value_offsets[i + 1]]
    (an Arrow data buffer)."""
    for i in range(lo, hi):
        s = starts[i] + add
        d = value_offsets[i]
        for k in range(value_offsets[i + 1] - d):
            data[d + k] = buf[s + k]


@numba.njit(inline="always")
def _utf8_char(data, p, end):  # pragma: no cover - compiled
    """Length of the valid UTF-8 character at p, or -(length of the maximal invalid subpart) when
    there is none (Unicode's "maximal subpart" rule, as Python's errors='replace' applies it)."""
    b0 = data[p]
    if b0 < 0x80:
        return 1
    if 0xC2 <= b0 <= 0xDF:
        need = 1
        lo1, hi1 = 0x80, 0xBF
    elif b0 == 0xE0:
        need, lo1, hi1 = 2, 0xA0, 0xBF
    elif 0xE1 <= b0 <= 0xEC or b0 == 0xEE or b0 == 0xEF:
        need, lo1, hi1 = 2, 0x80, 0xBF
    elif b0 == 0xED:
        need, lo1, hi1 = 2, 0x80, 0x9F
    elif b0 == 0xF0:
        need, lo1, hi1 = 3, 0x90, 0xBF
    elif 0xF1 <= b0 <= 0xF3:
        need, lo1, hi1 = 3, 0x80, 0xBF
    elif b0 == 0xF4:
        need, lo1, hi1 = 3, 0x80, 0x8F
    else:
        return -1
    k = 1
    while k <= need:
        if p + k >= end:
            return -k
        b = data[p + k]
        if k == 1:
            if b < lo1 or b > hi1:
                return -1
        elif b < 0x80 or b > 0xBF:
            return -k
        k += 1
    return need + 1


def utf8_invalid(data, value_offsets, lo, hi):  # pragma: no cover - compiled
    """How many of values lo..hi are not valid UTF-8."""
    bad = 0
    for i in range(lo, hi):
        p = value_offsets[i]
        end = value_offsets[i + 1]
        while p < end:
            c = _utf8_char(data, p, end)
            if c < 0:
                bad += 1
                break
            p += c
    return bad


def utf8_replace(data, value_offsets, out, out_offsets, fill):  # pragma: no cover - compiled
    """Values with each maximal invalid UTF-8 subpart replaced by U+FFFD (EF BF BD), as bytes.decode
    (errors='replace') does. Without ``fill`` only out_offsets is computed (sizes); returns the
    total size."""
    q = np.int64(0)
    for i in range(len(value_offsets) - 1):
        out_offsets[i] = q
        p = value_offsets[i]
        end = value_offsets[i + 1]
        while p < end:
            c = _utf8_char(data, p, end)
            if c > 0:
                if fill:
                    for k in range(c):
                        out[q + k] = data[p + k]
                q += c
                p += c
            else:
                if fill:
                    out[q] = 0xEF
                    out[q + 1] = 0xBF
                    out[q + 2] = 0xBD
                q += 3
                p += -c
    out_offsets[len(value_offsets) - 1] = q
    return q


@numba.njit(inline="always")
def _before(ts, heads, a, b):  # pragma: no cover - compiled
    """Whether run a's next record comes before run b's: earlier time, or the same time and an
    earlier run (a stable order)."""
    ta = ts[heads[a]]
    tb = ts[heads[b]]
    return ta < tb or (ta == tb and a < b)


@numba.njit(inline="always")
def _sift_down(ts, heads, heap, hn, i):  # pragma: no cover - compiled
    """Restore the min-heap of runs (by their next record) below position i."""
    while True:
        m = i
        left = 2 * i + 1
        if left < hn and _before(ts, heads, heap[left], heap[m]):
            m = left
        if left + 1 < hn and _before(ts, heads, heap[left + 1], heap[m]):
            m = left + 1
        if m == i:
            return
        heap[i], heap[m] = heap[m], heap[i]
        i = m


@numba.njit(inline="always")
def _merge_start(ts, bounds, c, heads, ends, heap):  # pragma: no cover - compiled
    """Set up the merge of the runs' records of chunk c (bounds[c, k]..bounds[c + 1, k] of run k):
    returns the heap's size."""
    hn = 0
    for k in range(bounds.shape[1]):
        heads[k] = bounds[c, k]
        ends[k] = bounds[c + 1, k]
        if heads[k] < ends[k]:
            heap[hn] = k
            hn += 1
    for i in range(hn // 2 - 1, -1, -1):
        _sift_down(ts, heads, heap, hn, i)
    return hn


@numba.njit(inline="always")
def _merge_pop(ts, heads, ends, heap, hn):  # pragma: no cover - compiled
    """The next record of the merge (index, run) and the heap's new size."""
    k = heap[0]
    j = heads[k]
    heads[k] += 1
    if heads[k] >= ends[k]:
        hn -= 1
        heap[0] = heap[hn]
    _sift_down(ts, heads, heap, hn, 0)
    return j, k, hn


def count_run_groups(types, lut, bounds, order, at, lo, hi):  # pragma: no cover - compiled
    """at[c, g]: records of group lut[types[j]] (skipped when negative) in chunk c, for chunks lo..hi:
    with ``order`` empty, chunk c holds records bounds[c, k]..bounds[c + 1, k] of each run k; else
    records order[bounds[c, 0]:bounds[c + 1, 0]]."""
    for c in range(lo, hi):
        if len(order) > 0:
            for p in range(bounds[c, 0], bounds[c + 1, 0]):
                g = lut[types[order[p]]]
                if g >= 0:
                    at[c, g] += 1
            continue
        for k in range(bounds.shape[1]):
            for j in range(bounds[c, k], bounds[c + 1, k]):
                g = lut[types[j]]
                if g >= 0:
                    at[c, g] += 1


@numba.njit(inline="always")
def _put_record(buf, j, r, g, cpu, seq0, offs, lens, ts, big_endian, g_ts, g_cpu, g_seq, g_rawoff, g_rawlen,
                col_start, col_pos, col_size, col_elem, a8, a16, a32, a64):  # pragma: no cover - compiled
    """Record j's columns at row r of group g (see fill_run_columns)."""
    o = offs[j]
    prefetch(buf, o + AHEAD)
    ln = np.int64(lens[j])
    a64[g_ts[g] + r] = np.uint64(ts[j])
    a32[g_cpu[g] + r] = np.uint32(cpu)
    a64[g_seq[g] + r] = np.uint64(seq0 + j)
    store_payload_pos(a32, a64, g_rawoff[g], g_rawlen[g], r, o, ln)
    for c in range(col_start[g], col_start[g + 1]):
        z = col_size[c]
        p = col_pos[c]
        if z < 0:
            d = col_elem[c] + r * -z
            for k in range(-z):
                a8[d + k] = buf[o + p + k] if p + k < ln else np.uint8(0)
            continue
        v = _read_uint(buf, o + p, z, big_endian) if p + z <= ln else np.uint64(0)
        _store(a8, a16, a32, a64, col_elem[c] + r, z, v)


def fill_run_columns(buf, seq0, offs, lens, ts, types, lut, runs, run_cpu, bounds, order, at, big_endian, g_ts, g_cpu,
                     g_seq, g_rawoff, g_rawlen, col_start, col_src, col_pos, col_size, col_elem, a8, a16, a32, a64,
                     lo, hi):  # pragma: no cover - compiled
    """Write the columns of the ring-buffer records of chunks lo..hi (see count_run_groups) straight
    into their event's place in one arena (a8/a16/a32/a64: one buffer at four widths), in time
    order: the records of a chunk are merged from its runs (each in time order; ties go to the
    earlier run, so the order is that of a stable sort), or taken in ``order``. Record j (payload
    at offs[j], lens[j] bytes; run k, runs[k] <= j < runs[k + 1], recorded on CPU run_cpu[k]) of
    group g = lut[types[j]] (skipped when negative or g_seq[g] < 0) goes to the next row r of its
    group, from at[c, g] on: the time at a64[g_ts[g] + r], the CPU at a32[g_cpu[g] + r], the
    sequence number seq0 + j at a64[g_seq[g] + r], the payload offset at a64[g_rawoff[g] + r] and
    length at a32[g_rawlen[g] + r] when those are >= 0, then fields c in col_start[g]..col_start[g + 1]
    (col_src: all from the payload): col_size[c] bytes at col_pos[c] of the payload (zero when the
    payload is shorter), in the file's byte order, to element col_elem[c] + r; with col_size[c] =
    -z < 0, z bytes copied as they are to a8[col_elem[c] + r * z:][:z] (bytes past the payload
    zero)."""
    nr = bounds.shape[1]
    heads = np.empty(nr, np.int64)
    ends = np.empty(nr, np.int64)
    heap = np.empty(nr, np.int64)
    for c in range(lo, hi):
        nxt = at[c].copy()
        if len(order) > 0:
            for p in range(bounds[c, 0], bounds[c + 1, 0]):
                j = order[p]
                g = lut[types[j]]
                if g < 0 or g_seq[g] < 0:
                    continue
                k = np.searchsorted(runs, j, side="right") - 1
                _put_record(buf, j, nxt[g], g, run_cpu[k], seq0, offs, lens, ts, big_endian, g_ts, g_cpu, g_seq,
                            g_rawoff, g_rawlen, col_start, col_pos, col_size, col_elem, a8, a16, a32, a64)
                nxt[g] += 1
            continue
        hn = _merge_start(ts, bounds, c, heads, ends, heap)
        while hn > 0:
            j, k, hn = _merge_pop(ts, heads, ends, heap, hn)
            g = lut[types[j]]
            if g < 0 or g_seq[g] < 0:
                continue
            _put_record(buf, j, nxt[g], g, run_cpu[k], seq0, offs, lens, ts, big_endian, g_ts, g_cpu, g_seq, g_rawoff,
                        g_rawlen, col_start, col_pos, col_size, col_elem, a8, a16, a32, a64)
            nxt[g] += 1
