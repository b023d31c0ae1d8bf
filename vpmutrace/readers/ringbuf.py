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
from vpmutrace.readers.binio import scratch

PAGES_PER_THREAD = 256  # pages below which a range is not worth a thread


@dataclass
class PageWalk:
    offsets: np.ndarray  # int64 offsets of event payloads in the buffer
    lengths: np.ndarray  # int32 payload lengths
    ts: np.ndarray  # int64 timestamps (trace clock units)
    page_lost: np.ndarray  # per page: 0 none, -1 lost unknown count, n > 0 lost n
    corrupt_pages: int
    page_ts: np.ndarray  # per page: the page header's timestamp (trace clock units)
    types: np.ndarray  # uint16 event id (common_type) of each payload


@dataclass
class RunWalk:
    """Every event of several CPUs' pages, CPU by CPU (``runs``: where each CPU's events start;
    within a CPU in recording order), and per CPU what ``PageWalk`` says of its pages."""

    offsets: np.ndarray
    lengths: np.ndarray
    ts: np.ndarray
    types: np.ndarray
    runs: np.ndarray  # int64, one more than CPUs: CPU k's events are runs[k]..runs[k + 1]
    page_lost: list[np.ndarray]
    corrupt_pages: list[int]
    page_ts: list[np.ndarray]
    page_bad: list[np.ndarray]  # per CPU, per page: whether the walk found its commit size or an event length bad


def walk_pages(buf: np.ndarray, page_size: int, header_page: dict[str, tuple[int, int]],
               big_endian: bool = False) -> PageWalk:
    """The events of one CPU's pages (``buf``: whole pages, back to back)."""
    w = walk_spans(buf, [(0, len(buf))], page_size, header_page, big_endian)
    return PageWalk(w.offsets, w.lengths, w.ts, w.page_lost[0], w.corrupt_pages[0], w.page_ts[0], w.types)


def walk_spans(buf: np.ndarray, spans: list[tuple[int, int]], page_size: int, header_page: dict[str, tuple[int, int]],
               big_endian: bool = False) -> RunWalk:
    """The events of several CPUs' pages at once (CPU k's whole pages at buf[spans[k][0]:][:spans[k][1]]),
    into one array per field: one parallel pass counts each page's events, a second writes them."""
    ts_off = header_page.get("timestamp", (0, 8))[0]
    commit_off, commit_size = header_page.get("commit", (8, 8))
    data_off = header_page.get("data", (16, 0))[0]
    per_cpu = [size // page_size for _, size in spans]
    page_off = np.concatenate([at + np.arange(k, dtype=np.int64) * page_size
                               for (at, _), k in zip(spans, per_cpu, strict=True)] or [np.zeros(0, np.int64)])
    npages = len(page_off)
    page_lost = np.zeros(npages, dtype=np.int64)
    page_bad = np.zeros(npages, dtype=np.int64)
    counts = np.zeros(npages, dtype=np.int64)
    args = (buf, page_off, ts_off, commit_off, commit_size, data_off, page_size, big_endian)
    e8, e4, e2 = np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.uint16)
    kernels.parallel(kernels.walk_pages, npages, *args, False, counts, e8, e4, e8, e2, page_lost, page_bad,
                     min_items=PAGES_PER_THREAD)
    first = np.zeros(npages + 1, dtype=np.int64)  # each page's first event's index
    np.cumsum(counts, out=first[1:])
    n = int(first[-1])
    offs, lens, tss, types = (scratch(n, dt) for dt in (np.int64, np.int32, np.int64, np.uint16))
    kernels.parallel(kernels.walk_pages, npages, *args, True, first, offs, lens, tss, types, page_lost, page_bad,
                     min_items=PAGES_PER_THREAD)
    page_at = np.concatenate(([0], np.cumsum(per_cpu, dtype=np.int64))).astype(np.int64)
    runs = first[page_at]
    lost = [page_lost[a:z] for a, z in zip(page_at[:-1], page_at[1:], strict=True)]
    page_ts = []
    for a, pl in zip(page_at[:-1].tolist(), lost, strict=True):
        full = np.zeros(len(pl), dtype=np.int64)
        for p in np.nonzero(pl)[0].tolist():
            at = int(page_off[a + p]) + ts_off
            v = int.from_bytes(buf[at:at + 8].tobytes(), "big" if big_endian else "little")
            full[p] = v - (1 << 64) if v >> 63 else v  # (as int64, as the compiled walk reads it: no OverflowError)
        page_ts.append(full)
    # pages, not errors: the walk notes up to two per page (a bad commit, then an event past it)
    bad = [page_bad[a:z] != 0 for a, z in zip(page_at[:-1], page_at[1:], strict=True)]
    return RunWalk(offs, lens, tss, types, runs, lost, [int(x.sum()) for x in bad], page_ts, bad)
