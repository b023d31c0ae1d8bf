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


def walk_pages(buf, page_size, ts_off, commit_off, commit_size, data_off, big_endian, fill, page_events,
               offs, lens, tss, page_lost, lo, hi):  # pragma: no cover - compiled
    """The data events of pages lo..hi (each page stands alone: its header holds the time its
    events' deltas add to). Without ``fill``: page_events[p] = how many; with it, page p's events'
    payload offsets, lengths and timestamps from index page_events[p] on. Per page the events lost
    before it (0 none, -1 an unknown number, n). Returns the pages with a bad commit size or
    event length. Arithmetic in int64: timestamps and commit words stay far below 2**63."""
    bad = 0
    ts_msb = -(1 << 59)
    for p in range(lo, hi):
        n = page_events[p] if fill else np.int64(0)
        base = p * page_size
        page_end = base + page_size
        ts = read_int(buf, base + ts_off, 8, big_endian)
        commit = read_int(buf, base + commit_off, commit_size, big_endian)
        size = commit & COMMIT_MASK
        start = base + data_off
        end = start + size
        if end > page_end or size == 0:  # (a page written out has events: commit 0 is a damaged page)
            end = min(end, page_end)
            bad += 1
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
                bad += 1
                padded = True  # (counted)
                break
            if fill:
                offs[n] = payload
                lens[n] = length
                tss[n] = ts
            n += 1
            pos += total
        if pos < end and not padded and size > 0:  # bytes left inside the commit that hold no event header
            bad += 1
        if not fill:
            page_events[p] = n
    return bad
