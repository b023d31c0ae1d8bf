"""Walk ftrace ring-buffer pages (trace.dat CPU data, trace_pipe_raw captures).

Page: u64 timestamp, ``long`` commit (length | MISSING_EVENTS bit 31 | MISSING_STORED
bit 30), data. Event header: u32 with type_len (5 bits) and time_delta (27 bits)
(include/linux/ring_buffer.h; libtraceevent kbuffer-parse.c):
  1..28  data, length type_len*4        0  data, length array[0]-4, payload at array[1]
  29     padding (time_delta 0: rest of page empty; else skip array[0])
  30     time extend: delta = array[0] << 27 | time_delta
  31     absolute timestamp: array[0] << 27 | time_delta, top 5 bits kept from the running ts
The walk is a loop over variable-length records, compiled (kernels/ringbuf.py), run on ranges
of pages in parallel (each page stands alone); the constants are in formats/ringbuf_abi.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpmutrace import kernels

PAGES_PER_THREAD = 256  # pages below which a range is not worth a thread


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
    counts = np.zeros(npages, dtype=np.int64)
    args = (buf, page_size, ts_off, commit_off, commit_size, data_off, big_endian)
    bad = sum(kernels.parallel(kernels.walk_pages, npages, *args, False, counts, empty, empty, empty, page_lost,
                               min_items=PAGES_PER_THREAD))
    first = np.zeros(npages, dtype=np.int64)  # each page's first event's index
    np.cumsum(counts[:-1], out=first[1:])
    n = int(counts.sum())
    offs = np.empty(n, dtype=np.int64)
    lens = np.empty(n, dtype=np.int64)
    tss = np.empty(n, dtype=np.int64)
    kernels.parallel(kernels.walk_pages, npages, *args, True, first, offs, lens, tss, page_lost,
                     min_items=PAGES_PER_THREAD)
    # (u64 read as int64, as the compiled walk reads it: a value >= 2**63 wraps, it does not raise)
    page_ts = np.array([int.from_bytes(buf[p * page_size + ts_off:p * page_size + ts_off + 8].tobytes(),
                                       "big" if big_endian else "little") for p in np.nonzero(page_lost)[0]],
                       dtype=np.uint64).view(np.int64)
    full_ts = np.zeros(npages, dtype=np.int64)
    full_ts[np.nonzero(page_lost)[0]] = page_ts
    return PageWalk(offs, lens, tss, page_lost, bad, full_ts)
