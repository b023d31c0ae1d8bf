"""Compiled walk of ftrace ring-buffer pages (the layout is described in readers/ringbuf.py).

A sequential loop over variable-length event headers: numpy cannot vectorise it.
"""

from __future__ import annotations

import numba
import numpy as np

from vpmutrace.formats.ringbuf_abi import (
    COMMIT_MASK,
    MISSING_EVENTS,
    MISSING_STORED,
    TS_SHIFT,
    TYPE_PADDING,
    TYPE_TIME_EXTEND,
    TYPE_TIME_STAMP,
)
from vpmutrace.kernels.hints import prefetch


@numba.njit(inline="always")
def read_int(buf, pos, size, big_endian):  # pragma: no cover - compiled
    """``size`` bytes at ``pos`` as an int64, in the file's byte order."""
    v = np.int64(0)
    for k in range(size):
        if big_endian:
            v = (v << 8) | np.int64(buf[pos + k])
        else:
            v |= np.int64(buf[pos + k]) << (8 * k)
    return v


def walk_pages(buf, page_off, ts_off, commit_off, commit_size, data_off, page_size, big_endian, fill, page_events,
               offs, lens, tss, types, page_lost, page_bad, lo, hi):  # pragma: no cover - compiled
    """The data events of pages lo..hi, page p at buf[page_off[p]:][:page_size] (each page stands
    alone: its header holds the time its events' deltas add to). Without ``fill``: page_events[p] =
    how many; with it, page p's events' payload offsets, lengths, timestamps and event ids (the
    payload's first u16, common_type; 0 for a payload shorter than that) from index page_events[p]
    on. Per page the events lost before it (0 none, -1 an unknown number, n) and its errors: a bad
    commit size (or commit 0), and an event length past the commit or bytes left in it that hold no
    event header (page_bad: 0, 1 or 2; their total is returned). Arithmetic in int64: timestamps and
    commit words stay far below 2**63."""
    bad = 0
    ts_msb = -(1 << 59)
    for p in range(lo, hi):
        n = page_events[p] if fill else np.int64(0)
        errors = 0
        base = page_off[p]
        if p + 1 < hi:  # (the next page's first lines, while this one is walked)
            prefetch(buf, page_off[p + 1])
            prefetch(buf, page_off[p + 1] + 64)
        page_end = base + page_size
        ts = read_int(buf, base + ts_off, 8, big_endian)
        commit = read_int(buf, base + commit_off, commit_size, big_endian)
        size = commit & COMMIT_MASK
        start = base + data_off
        end = start + size
        if end > page_end or size == 0:  # (a page written out has events: commit 0 is a damaged page)
            end = min(end, page_end)
            errors += 1
        if commit & MISSING_STORED:
            if end + commit_size <= page_end:
                page_lost[p] = read_int(buf, end, commit_size, big_endian)
            else:
                page_lost[p] = -1
        elif commit & MISSING_EVENTS:
            page_lost[p] = -1
        pos = start
        padded = False
        while pos + 4 <= end:
            h = read_int(buf, pos, 4, big_endian)
            if big_endian:
                type_len = h >> 27
                delta = h & 0x7FFFFFF
            else:
                type_len = h & 0x1F
                delta = h >> 5
            a0 = np.int64(0)
            if pos + 8 <= page_end:
                a0 = read_int(buf, pos + 4, 4, big_endian)
            if type_len == TYPE_PADDING:
                if delta == 0:
                    padded = True
                    break
                pos += 4 + a0
                continue
            if type_len == TYPE_TIME_EXTEND:
                ts += (a0 << TS_SHIFT) | delta
                pos += 8
                continue
            if type_len == TYPE_TIME_STAMP:
                ts = (ts & ts_msb) | (a0 << TS_SHIFT) | delta
                pos += 8
                continue
            ts += delta
            if type_len == 0:
                length = a0 - 4
                payload = pos + 8
                total = 4 + a0
            else:
                length = type_len * 4
                payload = pos + 4
                total = 4 + length
            if length < 0 or payload + length > end:
                errors += 1
                padded = True  # (counted)
                break
            if fill:
                offs[n] = payload
                lens[n] = length
                tss[n] = ts
                types[n] = read_int(buf, payload, 2, big_endian) if length >= 2 else 0
            n += 1
            pos += total
        if pos < end and not padded and size > 0:  # bytes left inside the commit that hold no event header
            errors += 1
        if not fill:
            page_events[p] = n
        page_bad[p] = errors
        bad += errors
    return bad
