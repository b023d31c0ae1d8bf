"""readers/ringbuf.py on the real pages of a trace.dat: what the walk returns per CPU and per page
(lost-event pages, their header times, damaged pages), for the layouts the header_page can declare
(64- and 32-bit commit words, big-endian kernels). Written to kill the mutants mutmut left alive
(docs/reliability.md, Mutation testing); the reference for the events is `trace-cmd report`.

Page and event layout: include/linux/ring_buffer.h, kernel/trace/ring_buffer.c (see readers/ringbuf.py).
"""

from __future__ import annotations

import re
import struct
from functools import cache

import numpy as np
import pytest
from conftest import FIXTURES

from vpmutrace.readers.ringbuf import walk_pages, walk_spans
from vpmutrace.readers.trace_dat import content_of

SRC = FIXTURES / "microguest200.trace.dat"
REPORT = FIXTURES / "microguest200.report.txt"  # trace-cmd report of SRC
HEADER = {"timestamp": (0, 8), "commit": (8, 8), "data": (16, 4080)}  # SRC's header_page
PAGE = 4096


@cache
def _cpus() -> dict[int, bytes]:
    c = content_of(SRC)
    assert c.page_size == PAGE
    return next(b.cpus for b in c.buffers if b.cpus)


def _report_us() -> dict[int, list[int]]:
    """Per CPU, the event times `trace-cmd report` printed (microseconds), in file order."""
    out: dict[int, list[int]] = {}
    for m in re.finditer(r"\[(\d{3})\]\s+(\d+)\.(\d{6}):", REPORT.read_text()):
        out.setdefault(int(m.group(1)), []).append(int(m.group(2)) * 1_000_000 + int(m.group(3)))
    return out


def _events(pages: bytes, commit_off: int = 8, data_off: int = 16) -> list[tuple[int, int]]:
    """(header position, type_len) of every event header on each page, walked as kbuffer-parse.c
    does: the positions whose u32 (and array[0]) a big-endian kernel writes the other way round."""
    out = []
    for base in range(0, len(pages), PAGE):
        size = struct.unpack_from("<Q", pages, base + commit_off)[0] & ((1 << 27) - 1)
        at, end = base + data_off, base + data_off + size
        while at < end:
            tl = struct.unpack_from("<I", pages, at)[0] & 31
            out.append((at, tl))
            if tl == 0:
                at += 4 + struct.unpack_from("<I", pages, at + 4)[0]
            elif tl <= 28:
                at += 4 + 4 * tl
            elif tl == 29 and struct.unpack_from("<I", pages, at)[0] >> 5 == 0:
                break  # padding to the end of the page
            else:
                at += 8 if tl in (30, 31) else 4 + struct.unpack_from("<I", pages, at + 4)[0]
    return out


def _big_endian(pages: bytes) -> bytes:
    """The same pages as a big-endian kernel writes them: page header words swapped; the event
    header's bitfield laid out from the top (type_len in bits 31..27, time_delta below: kbuffer-parse.c
    reads ``type_len_ts >> 27`` on big-endian files) and stored big-endian; the array[0] word of long,
    extend and padding events swapped; payload bytes as they are."""
    b = bytearray(pages)
    for base in range(0, len(b), PAGE):
        for off in (0, 8):
            b[base + off:base + off + 8] = b[base + off:base + off + 8][::-1]
    for at, tl in _events(pages):
        h = struct.unpack_from("<I", pages, at)[0]
        struct.pack_into(">I", b, at, (tl << 27) | (h >> 5))
        if tl == 0 or tl >= 29:
            b[at + 4:at + 8] = b[at + 4:at + 8][::-1]
    return bytes(b)


def _commit32(pages: bytes) -> bytes:
    """The same pages with a 32-bit kernel's header (u64 timestamp, 4-byte commit, data at 12)."""
    b = bytearray(len(pages))
    for base in range(0, len(pages), PAGE):
        commit = struct.unpack_from("<Q", pages, base + 8)[0]
        b[base:base + 8] = pages[base:base + 8]
        struct.pack_into("<I", b, base + 8, commit)
        b[base + 12:base + PAGE - 4] = pages[base + 16:base + PAGE]
    return bytes(b)


def _np(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8)


def _payload_types(pages: bytes, w) -> list[int]:
    return [struct.unpack_from("<H", pages, o)[0] for o in w.offsets.tolist()]


def test_each_cpus_events_are_trace_cmd_reports() -> None:
    """Every CPU's events: as many as `trace-cmd report` prints for it, at the times it prints
    (ns, rounded as it prints microseconds), payload lengths and event ids from the records."""
    ref = _report_us()
    cpus = _cpus()
    assert sorted(cpus) == sorted(ref) == [0, 1]
    for cpu, pages in cpus.items():
        w = walk_pages(_np(pages), PAGE, HEADER)
        assert len(w.ts) == len(w.offsets) == len(w.lengths) == len(w.types) == len(ref[cpu])
        assert [(t + 500) // 1000 for t in w.ts.tolist()] == ref[cpu]
        assert w.types.tolist() == _payload_types(pages, w)
        assert w.corrupt_pages == 0 and w.page_lost.tolist() == [0] * (len(pages) // PAGE)
        assert w.page_ts.tolist() == [0] * (len(pages) // PAGE)  # header times only of lost pages
        assert all(4 <= n <= PAGE for n in w.lengths.tolist())


def test_header_page_defaults_are_a_64_bit_kernels() -> None:
    """A header_page that names no field reads as the 64-bit layout (timestamp 0, commit 8/8, data 16)."""
    pages = _cpus()[0]
    a, b = walk_pages(_np(pages), PAGE, HEADER), walk_pages(_np(pages), PAGE, {})
    for k in ("offsets", "lengths", "ts", "types", "page_lost"):
        assert getattr(a, k).tolist() == getattr(b, k).tolist(), k


def test_32_bit_commit_word_and_data_offset_from_the_header_page() -> None:
    pages = _cpus()[0]
    a = walk_pages(_np(pages), PAGE, HEADER)
    b = walk_pages(_np(_commit32(pages)), PAGE, {"timestamp": (0, 8), "commit": (8, 4), "data": (12, 4084)})
    assert b.corrupt_pages == 0
    assert b.ts.tolist() == a.ts.tolist() and b.lengths.tolist() == a.lengths.tolist()
    assert (b.offsets + 4).tolist() == a.offsets.tolist()
    assert b.types.tolist() == a.types.tolist()


def test_timestamp_and_commit_where_the_header_page_puts_them() -> None:
    """The reader takes every page-header field's place from header_page (here the two words swapped)."""
    pages = _cpus()[0]
    b = bytearray(pages)
    for base in range(0, len(b), PAGE):
        b[base:base + 16] = pages[base + 8:base + 16] + pages[base:base + 8]
    a = walk_pages(_np(pages), PAGE, HEADER)
    w = walk_pages(_np(bytes(b)), PAGE, {"timestamp": (8, 8), "commit": (0, 8), "data": (16, 4080)})
    assert w.ts.tolist() == a.ts.tolist() and w.offsets.tolist() == a.offsets.tolist() and w.corrupt_pages == 0


def test_big_endian_pages() -> None:
    """A big-endian kernel's pages read to the same times and lengths; event ids are read in the
    file's byte order (the payloads here stay little-endian, so they come out byte-swapped)."""
    pages = _cpus()[0]
    a = walk_pages(_np(pages), PAGE, HEADER)
    be = _big_endian(pages)
    b = walk_pages(_np(be), PAGE, HEADER, True)
    assert b.ts.tolist() == a.ts.tolist() and b.offsets.tolist() == a.offsets.tolist()
    assert b.lengths.tolist() == a.lengths.tolist() and b.corrupt_pages == 0
    assert b.types.tolist() == [struct.unpack(">H", struct.pack("<H", t))[0] for t in a.types.tolist()]
    wrong = walk_pages(_np(be), PAGE, HEADER)  # read as little-endian: nothing right
    assert wrong.ts.tolist() != a.ts.tolist()


def _mark_lost(pages: bytes, page: int, count: int | None, ts: int | None = None, big: bool = False) -> bytes:
    """Commit bit 31 (events lost before the page) and, with a count, bit 30 and the count after
    the data; optionally a new header time."""
    e = ">" if big else "<"
    b = bytearray(pages)
    base = page * PAGE
    commit = struct.unpack_from(e + "Q", b, base + 8)[0]
    size = commit & ((1 << 27) - 1)
    commit |= 1 << 31
    if count is not None:
        assert 16 + size + 8 <= PAGE
        commit |= 1 << 30
        struct.pack_into(e + "Q", b, base + 16 + size, count)
    struct.pack_into(e + "Q", b, base + 8, commit)
    if ts is not None:
        struct.pack_into(e + "Q", b, base, ts)
    return bytes(b)


def _roomy(pages: bytes) -> list[int]:
    sizes = [struct.unpack_from("<Q", pages, p + 8)[0] & ((1 << 27) - 1) for p in range(0, len(pages), PAGE)]
    return [p for p, s in enumerate(sizes) if 16 + s + 8 <= PAGE]


@pytest.mark.parametrize("big", [False, True])
def test_lost_pages_and_their_header_times(big: bool) -> None:
    """Per page: the count stored after the data (bit 30), -1 for a loss of unknown size (bit 31
    only), 0 for the others; and the header time of exactly the pages with a loss, read as int64 in
    the file's byte order (a time with bit 63 set comes out negative, as the compiled walk reads it)."""
    pages = _cpus()[0]
    n = len(pages) // PAGE
    stored = _roomy(pages)[-1]
    unknown = 0 if stored else 1
    src = _big_endian(pages) if big else pages
    src = _mark_lost(src, stored, 1234, big=big)
    src = _mark_lost(src, unknown, None, ts=(1 << 63) + 5, big=big)
    w = walk_pages(_np(src), PAGE, HEADER, big)
    lost = [0] * n
    lost[stored], lost[unknown] = 1234, -1
    assert w.page_lost.tolist() == lost
    e = ">Q" if big else "<Q"
    ts = [0] * n
    ts[stored] = struct.unpack_from(e, src, stored * PAGE)[0]
    ts[unknown] = (1 << 63) + 5 - (1 << 64)
    assert ts[stored] > 0 and w.page_ts.tolist() == ts
    assert len(w.ts) == len(walk_pages(_np(pages), PAGE, HEADER).ts)  # the pages' events are all kept


def test_spans_of_several_cpus_split_per_cpu() -> None:
    """Two CPUs' pages at offsets that are not 0 (with bytes between them): each CPU's run of events,
    lost pages, header times and damaged-page count are its own, as when walked alone."""
    c0, c1 = _cpus()[0], _cpus()[1]
    c0 = _mark_lost(c0, _roomy(c0)[0], 77)
    bad = bytearray(c1)
    struct.pack_into("<Q", bad, 8, 0)  # commit 0: a damaged page on CPU 1 only
    c1 = bytes(bad)
    gap = bytes(3 * PAGE)
    buf = gap + c0 + gap[:PAGE] + c1
    spans = [(len(gap), len(c0)), (len(gap) + len(c0) + PAGE, len(c1))]
    w = walk_spans(_np(buf), spans, PAGE, HEADER)
    alone = [walk_pages(_np(c0), PAGE, HEADER), walk_pages(_np(c1), PAGE, HEADER)]
    assert w.runs.tolist() == [0, len(alone[0].ts), len(alone[0].ts) + len(alone[1].ts)]
    assert w.corrupt_pages == [0, 1] == [a.corrupt_pages for a in alone]
    for k, (at, _) in enumerate(spans):
        a, z = int(w.runs[k]), int(w.runs[k + 1])
        assert w.ts[a:z].tolist() == alone[k].ts.tolist()
        assert (w.offsets[a:z] - at).tolist() == alone[k].offsets.tolist()
        assert w.lengths[a:z].tolist() == alone[k].lengths.tolist()
        assert w.types[a:z].tolist() == alone[k].types.tolist()
        assert w.page_lost[k].tolist() == alone[k].page_lost.tolist()
        assert w.page_ts[k].tolist() == alone[k].page_ts.tolist()
    assert w.page_lost[0].tolist().count(77) == 1 and int(w.page_ts[0].max()) > 0
    assert not w.page_lost[1].any()


def test_a_page_with_two_errors_is_one_damaged_page() -> None:
    """Regression: a commit past the end of the page, after which the walk also meets bytes that hold
    no event, was counted as two damaged pages (the walk's two errors summed); it is one page."""
    pages = bytearray(_cpus()[1])
    struct.pack_into("<Q", pages, 8, PAGE)  # commit 4096 on a page with 4080 bytes of data
    w = walk_pages(_np(bytes(pages)), PAGE, HEADER)
    assert w.corrupt_pages == 1
    struct.pack_into("<Q", pages, PAGE + 8, 0)  # and the second page: commit 0
    assert walk_pages(_np(bytes(pages)), PAGE, HEADER).corrupt_pages == 2


def test_a_cpu_with_no_whole_page_and_no_cpus() -> None:
    """A span shorter than a page holds no page (its CPU has no events); no spans, no events."""
    c0 = _cpus()[0]
    w = walk_spans(_np(bytes(100) + c0), [(0, 100), (100, len(c0))], PAGE, HEADER)
    assert w.runs.tolist()[:2] == [0, 0] and w.page_lost[0].tolist() == [] and w.corrupt_pages[0] == 0
    assert int(w.runs[2]) == len(walk_pages(_np(c0), PAGE, HEADER).ts)
    e = walk_spans(_np(b""), [], PAGE, HEADER)
    assert e.runs.tolist() == [0] and len(e.ts) == 0 and e.page_lost == [] and e.corrupt_pages == []
