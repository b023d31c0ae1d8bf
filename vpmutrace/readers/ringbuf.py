"""Walk ftrace ring-buffer pages (trace.dat CPU data, trace_pipe_raw captures).

Page: u64 timestamp, ``long`` commit (length | MISSING_EVENTS bit 31 | MISSING_STORED
bit 30), data. Event header: u32 with type_len (5 bits) and time_delta (27 bits)
(include/linux/ring_buffer.h; libtraceevent kbuffer-parse.c):
  1..28  data, length type_len*4        0  data, length array[0]-4, payload at array[1]
  29     padding (time_delta 0: rest of page empty; else skip array[0])
  30     time extend: delta = array[0] << 27 | time_delta
  31     absolute timestamp: array[0] << 27 | time_delta, top 5 bits kept from the running ts
The walk is a sequential loop over variable-length records, compiled with numba.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

COMMIT_MASK = (1 << 27) - 1
MISSING_EVENTS = 1 << 31
MISSING_STORED = 1 << 30


@numba.njit(cache=True, nogil=True)
def _rd(buf, pos, size, big_endian):  # pragma: no cover - compiled
    v = 0
    for k in range(size):
        if big_endian:
            v = (v << 8) | np.int64(buf[pos + k])
        else:
            v |= np.int64(buf[pos + k]) << (8 * k)
    return v


@numba.njit(cache=True, nogil=True)
def _walk(buf, page_size, ts_off, commit_off, commit_size, data_off, big_endian, fill,
          offs, lens, tss, page_lost):  # pragma: no cover - compiled
    # all arithmetic in int64: timestamps and commit words stay far below 2**63
    n = 0
    bad = 0
    npages = len(buf) // page_size
    ts_msb = -(1 << 59)
    for p in range(npages):
        base = p * page_size
        page_end = base + page_size
        ts = _rd(buf, base + ts_off, 8, big_endian)
        commit = _rd(buf, base + commit_off, commit_size, big_endian)
        size = commit & COMMIT_MASK
        start = base + data_off
        end = start + size
        if end > page_end:
            end = page_end
            bad += 1
        if commit & MISSING_STORED:
            if end + commit_size <= page_end:
                page_lost[p] = _rd(buf, end, commit_size, big_endian)
            else:
                page_lost[p] = -1
        elif commit & MISSING_EVENTS:
            page_lost[p] = -1
        pos = start
        while pos + 4 <= end:
            h = _rd(buf, pos, 4, big_endian)
            if big_endian:
                type_len = h >> 27
                delta = h & 0x7FFFFFF
            else:
                type_len = h & 0x1F
                delta = h >> 5
            a0 = 0
            if pos + 8 <= page_end:
                a0 = _rd(buf, pos + 4, 4, big_endian)
            if type_len == 29:
                if delta == 0:
                    break
                pos += 4 + a0
                continue
            if type_len == 30:
                ts += (a0 << 27) | delta
                pos += 8
                continue
            if type_len == 31:
                ts = (ts & ts_msb) | (a0 << 27) | delta
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
                break
            if fill:
                offs[n] = payload
                lens[n] = length
                tss[n] = ts
            n += 1
            pos += total
    return n, bad


@dataclass
class PageWalk:
    offsets: np.ndarray  # int64 offsets of event payloads in the buffer
    lengths: np.ndarray  # int64 payload lengths
    ts: np.ndarray  # int64 timestamps (trace clock units)
    page_lost: np.ndarray  # per page: 0 none, -1 lost unknown count, n > 0 lost n
    corrupt_pages: int
    page_ts: np.ndarray  # per page: the page header's timestamp (trace clock units)


def walk_pages(buf: np.ndarray, page_size: int, header_page: dict[str, tuple[int, int]],
               big_endian: bool = False) -> PageWalk:
    ts_off = header_page.get("timestamp", (0, 8))[0]
    commit_off, commit_size = header_page.get("commit", (8, 8))
    data_off = header_page.get("data", (16, 0))[0]
    npages = len(buf) // page_size
    page_lost = np.zeros(npages, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    n, _ = _walk(buf, page_size, ts_off, commit_off, commit_size, data_off, big_endian, False,
                 empty, empty, empty, page_lost)
    offs = np.empty(n, dtype=np.int64)
    lens = np.empty(n, dtype=np.int64)
    tss = np.empty(n, dtype=np.int64)
    page_lost[:] = 0
    _, bad = _walk(buf, page_size, ts_off, commit_off, commit_size, data_off, big_endian, True,
                   offs, lens, tss, page_lost)
    page_ts = np.array([int.from_bytes(buf[p * page_size + ts_off:p * page_size + ts_off + 8].tobytes(),
                                       "big" if big_endian else "little") for p in np.nonzero(page_lost)[0]],
                       dtype=np.int64)
    full_ts = np.zeros(npages, dtype=np.int64)
    full_ts[np.nonzero(page_lost)[0]] = page_ts
    return PageWalk(offs, lens, tss, page_lost, bad, full_ts)
