"""Compiled loops of perf sample symbolisation (readers/perf_maps.py: symbolize): the samples'
items (distinct address space and IP), each item's samples and those outside its map's time
window, the samples' dictionary columns gathered from their items' codes; and parsing a kallsyms
text (readers/symbols.py: parse_kallsyms)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _space(b):  # pragma: no cover - compiled
    return b == 32 or (9 <= b <= 13)  # what \s matches in a bytes pattern: space \t \n \v \f \r


@numba.njit(inline="always")
def _hex(b):  # pragma: no cover - compiled
    if 48 <= b <= 57:
        return b - 48
    if 97 <= b <= 102:
        return b - 87
    if 65 <= b <= 70:
        return b - 55
    return -1


@numba.njit(inline="always")
def _slot(x, y, mask):  # pragma: no cover - compiled
    h = x * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(y) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= h >> np.uint64(31)
    return np.int64(h & np.uint64(mask))


def sample_items(ip, tgid, tid, mode, user, kernel, kspace, start, tab, codes, first, nc):  # pragma: no cover
    """codes[i]: sample i's item, the distinct (address space, ip) pair, numbered in order of first
    appearance; first[c]: item c's first sample. The address space is the process (tgid, or the
    thread id where tgid < 0) of a sample with cpumode ``user``, ``kspace`` for ``kernel``; other
    samples have no item (-1). Works from sample ``start`` with ``nc`` items already made (the table
    of an earlier call, grown by rehash_items) through an open-addressing hash table ``tab`` (rows:
    ip, space, item + 1, 0 for an empty slot; a power of two of them, one cache line a probe), kept
    at most 60% full. Returns (the sample where it stopped, the number of items): it stops early when
    the table or ``first`` is full."""
    mask = tab.shape[0] - 1
    last_a = np.uint64(0)
    last_b = kspace
    c = np.int64(-1)
    started = False
    for i in range(start, len(ip)):
        m = mode[i]
        if m == user:
            y = np.int64(tgid[i]) if tgid[i] >= 0 else np.int64(tid[i])
        elif m == kernel:
            y = kspace
        else:
            codes[i] = -1
            continue
        x = ip[i]
        if not started or x != last_a or y != last_b:  # (a sample stream repeats keys: one IP many times)
            s = _slot(x, y, mask)
            while True:
                c = tab[s, 2] - 1
                if c < 0:
                    if nc == len(first) or 5 * (nc + 1) > 3 * tab.shape[0]:
                        return i, nc
                    tab[s, 0] = np.int64(x)
                    tab[s, 1] = y
                    tab[s, 2] = nc + 1
                    c = np.int64(nc)
                    first[nc] = i
                    nc += 1
                    break
                if tab[s, 0] == np.int64(x) and tab[s, 1] == y:
                    break
                s = (s + 1) & mask
            last_a = x
            last_b = y
            started = True
        codes[i] = c
    return len(ip), nc


def rehash_items(tab, new):  # pragma: no cover - compiled
    """Moves sample_items' table into a larger one (``new`` all zeros)."""
    mask = new.shape[0] - 1
    for k in range(tab.shape[0]):
        if tab[k, 2] == 0:
            continue
        s = _slot(np.uint64(tab[k, 0]), tab[k, 1], mask)
        while new[s, 2] != 0:
            s = (s + 1) & mask
        new[s, 0] = tab[k, 0]
        new[s, 1] = tab[k, 1]
        new[s, 2] = tab[k, 2]


def item_windows(codes, t, lo, hi, count):  # pragma: no cover - compiled
    """count[c]: the samples of item c (codes < 0: none); returns how many samples have t outside
    their item's [lo, hi)."""
    out = 0
    for i in range(len(codes)):
        c = codes[i]
        if c < 0:
            continue
        count[c] += 1
        if t[i] < lo[c] or t[i] >= hi[c]:
            out += 1
    return out


def kallsyms_lines(buf, addr, typ, noff, nlen, moff, mlen):  # pragma: no cover - compiled
    """Every line of ``buf`` (ending with a newline) as ``addr type name`` with an optional
    ``\\t[module]`` and nothing else: addr 1 to 16 hex digits, type one non-blank byte, name and
    module non-blank. Fills one row per line (the address; the type byte; the name's and the
    module's offset and length, module length 0 when there is none) and returns the number of
    lines, or -1 - the line's offset where a line has another form."""
    n = len(buf)
    i = 0
    row = 0
    while i < n:
        line = i
        a = np.uint64(0)
        k = 0
        while i < n and _hex(buf[i]) >= 0:
            a = (a << np.uint64(4)) | np.uint64(_hex(buf[i]))
            i += 1
            k += 1
        if k == 0 or k > 16 or i + 3 >= n or buf[i] != 32 or _space(buf[i + 1]) or buf[i + 2] != 32:
            return -1 - line
        t = buf[i + 1]
        i += 3
        ns = i
        while i < n and not _space(buf[i]):
            i += 1
        if i == ns or i == n:
            return -1 - line
        ne = i
        mo = 0
        ml = 0
        if buf[i] == 9:
            if i + 1 == n or buf[i + 1] != 91:  # '['
                return -1 - line
            i += 2
            mo = i
            while i < n and not _space(buf[i]):
                i += 1
            if i == n or buf[i] != 10 or i - 1 <= mo or buf[i - 1] != 93:  # ']' then the newline
                return -1 - line
            ml = i - 1 - mo
        elif buf[i] != 10:
            return -1 - line
        addr[row] = a
        typ[row] = t
        noff[row] = ns
        nlen[row] = ne - ns
        moff[row] = mo
        mlen[row] = ml
        row += 1
        i += 1
    return row


@numba.njit(inline="always")
def _put(codes, out, valid, it, i):  # pragma: no cover - compiled
    x = codes[it]
    if x >= 0:
        out[i] = x
        valid[i >> 3] |= np.uint8(1 << (i & 7))
    else:
        out[i] = 0


def gather_columns(item, c0, c1, c2, o0, o1, o2, v0, v1, v2):  # pragma: no cover - compiled
    """For each row i and column k: o_k[i] = c_k[item[i]] when that is >= 0, else 0 with the row's
    bit in the validity bitmap v_k (Arrow's: bit i % 8 of byte i // 8; all zero on entry) left
    clear. Returns nothing; rows whose item is < 0 must not occur."""
    for i in range(len(item)):
        it = item[i]
        _put(c0, o0, v0, it, i)
        _put(c1, o1, v1, it, i)
        _put(c2, o2, v2, it, i)
