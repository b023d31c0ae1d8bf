"""trace.dat read in bounded pieces, for ingest of files larger than memory (ingest_stream.py).

The in-memory reader (trace_dat.py) reads the whole file and walks every CPU's pages at once;
here each CPU's pages (of every buffer) are loaded a block at a time into a lookahead of their own
(uncompressed: copied from the mapped file, whose pages are then let go; v7 compressed: one chunk
decompressed at a time, zstd or zlib, so a lookahead holds up to a chunk more than it asks for),
and a piece takes from every CPU the pages that can hold events before a time ``T``, walks
them (ringbuf.walk_spans) and decodes the events before ``T`` (payloads.emit_payloads).

Time order across CPUs (a k-way merge of the CPUs at page granularity, cut exactly at ``T``):
within one CPU's buffer the ring buffer writes events in time order and a page's header time is
the time its first event's delta is added to (include/linux/ring_buffer.h, kernel/trace/
ring_buffer.c rb_update_write_stamp / the page's time_stamp; libtraceevent kbuffer-parse.c
kbuffer_load_subbuffer; checked on the 25 public trace.dat files: no page's first event is earlier
than its header time), so no event of a page is earlier than the page's header time, and none
of a CPU's later pages is earlier than the running maximum of its header times. Hence when ``T``
is at most the header time of the last loaded page of every CPU that has pages left to load,
every event before ``T`` is in the loaded pages whose header time is before ``T``: a piece emits
exactly the file's events before ``T`` not emitted yet, and the events at or after ``T`` of its
last pages are walked again by the next piece (the page stays loaded; ``skip`` counts its events
already emitted). ``T`` is further lowered so that a piece takes at most ``pages_per_piece``
pages. The rows come out in (time, file order) order as the in-memory reader's do; a CPU whose
times go backwards breaks the premise: its late rows are written where they come and counted
(ingest_stream.py, stats ``out_of_order``).

``seq`` differs from the in-memory reader's (which numbers a buffer's records CPU by CPU over the
whole file): here the records of each piece are numbered CPU by CPU after those of the pieces
before it, so (ts_ns, seq) orders the rows as the in-memory reader's do, but the numbers differ.

Lost-events notices (a page's MISSING_EVENTS flag) and bad pages are counted once, when their page
is first walked, and reported in the in-memory reader's order (buffer, CPU, page) at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpmutrace import clocks as C
from vpmutrace import kernels
from vpmutrace.readers import trace_dat as T
from vpmutrace.readers.binio import release_pages, scratch
from vpmutrace.readers.payloads import Records, emit_payloads
from vpmutrace.readers.ringbuf import walk_spans
from vpmutrace.tracedata import TraceBuilder, lost_row

BLOCK_BYTES = 1 << 20  # what an uncompressed CPU's lookahead loads at a time
NO_TIME = np.iinfo(np.int64).min


@dataclass
class CpuPages:
    """One CPU's pages of one buffer, loaded block by block: ``data`` holds whole pages from the
    CPU's page number ``first_page`` on, ``starts`` their header times (ns, running maximum)."""

    td: T.TraceDat
    raw: np.ndarray
    buffer: int  # index in td.buffers
    index: int  # index of the CPU in its buffer's list
    cd: T.CpuData
    page: int
    ts_at: int  # offset of the header time in a page
    where: list[tuple[int, int, int]] | int  # compressed chunks, or bytes of whole pages at cd.offset
    shift: T.TimeShift | None
    codec: T._Codec | None
    data: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    first_page: int = 0
    skip: int = 0  # events of the first loaded page already emitted
    noted: int = 0  # pages whose notices are counted: those numbered below
    _next: int = 0  # next chunk (compressed) or byte (uncompressed) to load
    _partial: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    _run_max: int = NO_TIME

    @property
    def npages(self) -> int:
        return len(self.data) // self.page

    def more(self) -> bool:
        """Whether pages are left to load."""
        if isinstance(self.where, list):
            return self._next < len(self.where)
        return self._next < self.where

    def fill(self, pages: int) -> None:
        """Load blocks until ``pages`` pages are loaded or none are left (joined once: no copy per block)."""
        datas, starts, have = [self.data], [self.starts], self.npages
        while have < pages and self.more():
            new = self._load()
            if len(new):
                datas.append(new)
                starts.append(self._starts(new))
                have += len(new) // self.page
        if len(datas) > 1:
            self.data = np.concatenate(datas) if len(self.data) or len(datas) > 2 else datas[1]
            self.starts = np.concatenate(starts)

    def _load(self) -> np.ndarray:
        """The next block's whole pages."""
        if isinstance(self.where, list):
            off, csize, _ = chunk = self.where[self._next]
            self._next += 1
            assert self.codec is not None
            got = T.chunk_bytes(self.raw, self.td, self.cd, chunk, self.codec)
            release_pages(self.raw, off, off + csize)
            new = np.concatenate((self._partial, np.frombuffer(got, np.uint8)))
            whole = len(new) - len(new) % self.page
            new, self._partial = new[:whole], new[whole:].copy()
        else:
            n = min(max(BLOCK_BYTES - BLOCK_BYTES % self.page, self.page), self.where - self._next)
            at = self.cd.offset + self._next
            new = self.raw[at:at + n].copy()
            release_pages(self.raw, at, at + n)
            self._next += n
        return new

    def _starts(self, new: np.ndarray) -> np.ndarray:
        """The header times of a block's pages in ns, as a running maximum over the CPU's pages."""
        big = ">" if self.td.endian == ">" else "<"
        heads = np.ascontiguousarray(new.reshape(-1, self.page)[:, self.ts_at:self.ts_at + 8]).view(f"{big}i8")
        ns = _ns(heads.ravel().astype(np.int64), self.cd.cpu, self.td, self.shift)
        run = np.maximum.accumulate(np.concatenate(([self._run_max], ns)))[1:]
        self._run_max = int(run[-1])
        return run

    def drop(self, pages: int) -> None:
        """Forget the first ``pages`` loaded pages (all their events emitted)."""
        if pages:
            self.data = self.data[pages * self.page:].copy()
            self.starts = self.starts[pages:].copy()
            self.first_page += pages


def _ns(ts: np.ndarray, cpu: int, td: T.TraceDat, shift: T.TimeShift | None) -> np.ndarray:
    """Ring-buffer times as the in-memory reader converts them (guest time shift, TSC2NSEC)."""
    return T._to_ns(shift.apply(cpu, ts) if shift is not None else ts, td).astype(np.int64, copy=False)


@dataclass
class Piece:
    """Events before ``below`` (None: all the rest), ``n`` of them; ``seq`` numbers from ``first_seq``."""

    below: int | None
    n: int
    first_seq: int


class TraceDatStream:
    """One trace.dat opened for reading piece by piece: ``header(b)`` puts what the whole file says
    in ``b``; ``pieces()`` then yields one builder per piece; ``new_losses()`` the lost-events rows
    found since it was last called; ``done(b)`` the counts known at the end."""

    def __init__(self, path: Path, pages_per_piece: int, source: str = "host",
                 shift: T.TimeShift | None = None) -> None:
        self.path = path
        self.td, self.raw = T.open_trace_dat(path, mapped=True)
        self.pages_per_piece = max(2, pages_per_piece)
        self.source = source
        self.shift = shift
        self.cpus: list[CpuPages] = []
        self.losses: list[tuple[tuple[int, int, int], dict[str, Any], str]] = []
        self._reported = 0
        self.bad: dict[tuple[int, int], int] = {}
        self.pool: ThreadPoolExecutor | None = None

    def needs_memory(self) -> str | None:
        """Why this file cannot be read piece by piece (None: it can)."""
        _, unit, _ = T._clock_of(self.td)
        if unit != C.NS:
            return f"its clock counts {C.UNIT_TEXT.get(unit, unit)}: they are converted to ns over the whole trace"
        return None

    def header(self, b: TraceBuilder) -> None:
        td = self.td
        T.begin(td, b)
        t = td.tracing
        compressed = td.version == 7 and td.compression != "none"
        ts_at = t.header_page.get("timestamp", (0, 8))[0]
        for bi, buf in enumerate(td.buffers):
            page = buf.page_size or td.page_size
            for k, cd in enumerate(buf.cpus):
                got = T._cpu_chunks(self.raw, td, cd, b, buf.page_size)
                codec = T._Codec(td.compression, td.path) if compressed else None  # (one per CPU: filled on threads)
                self.cpus.append(CpuPages(td, self.raw, bi, k, cd, page, ts_at, got, self.shift, codec))

    def _lookahead(self) -> int:
        """Pages each CPU keeps loaded: a share of a piece, at least two."""
        return max(2, self.pages_per_piece // max(1, 2 * len(self.cpus)))

    def _cut(self, bounded: bool = True) -> int | None:
        """The time the next piece ends before (None: the end of the file): the earliest header time
        of the last loaded page of the CPUs with pages left to load, lowered (``bounded``) to the
        header time of the page after the first ``pages_per_piece`` pages in time order beyond
        the first loaded page of every CPU (partly emitted pages do not count)."""
        live = [s for s in self.cpus if s.npages]
        caps = [int(s.starts[-1]) for s in live if s.more()]
        starts = np.concatenate([s.starts for s in live])
        cut: int | None = min(caps) if caps else None
        k = self.pages_per_piece + len(live)
        if bounded and len(starts) > k:
            kth = int(np.partition(starts, k)[k])
            cut = kth if cut is None else min(cut, kth)
        if cut is not None and cut <= int(starts.min()):  # pages with one header time: take them
            cut = int(starts.min()) + 1
        return cut

    def pieces(self) -> Iterator[tuple[Piece, TraceBuilder]]:
        """Each piece's events decoded into a builder of its own, in time order.

        A piece that moves nothing on makes the next one end at the CPUs' last loaded pages, then
        load more pages (their pages all start at the time that sets the end); when the lookahead
        has grown past two pieces, the next piece takes every loaded page whole (its rows may
        then be out of order: counted by the writer)."""
        compressed = any(isinstance(s.where, list) for s in self.cpus)
        self.pool = ThreadPoolExecutor(kernels.threads()) if compressed and len(self.cpus) > 1 else None
        try:
            yield from self._pieces()
        finally:
            if self.pool is not None:
                self.pool.shutdown()

    def _pieces(self) -> Iterator[tuple[Piece, TraceBuilder]]:
        seq, stalls = 0, 0
        while True:
            want = self._lookahead() << max(0, stalls - 1)
            short = [s for s in self.cpus if s.npages < want and s.more()]
            if len(short) > 1 and self.pool is not None:  # (zlib and zstd decompress without the GIL)
                list(self.pool.map(lambda s, w=want: s.fill(w), short))  # type: ignore[misc]
            for s in short:
                s.fill(want)
            if not any(s.npages for s in self.cpus):
                return
            whole = want > 2 * self.pages_per_piece
            cut = None if whole else self._cut(bounded=not stalls)
            before = self._state()
            b = TraceBuilder()
            b.meta["inputs"].append({"path": self.td.path, "format": "trace.dat"})
            n = 0
            for bi, buf in enumerate(self.td.buffers):
                n += self._emit_buffer(bi, buf, cut, b, seq + n)
            if n:
                yield Piece(cut, n, seq), b
            seq += n
            stalls = 0 if self._state() != before else stalls + 1

    def _state(self) -> list[tuple[int, int, int]]:
        return [(s.first_page, s.skip, s._next) for s in self.cpus]

    def _emit_buffer(self, bi: int, buf: T.Buffer, cut: int | None, b: TraceBuilder, seq: int) -> int:
        """One buffer's events before ``cut`` from its CPUs' loaded pages into ``b``; how many."""
        td, t = self.td, self.td.tracing
        mine = [s for s in self.cpus if s.buffer == bi]
        take = [s.npages if cut is None else int(np.searchsorted(s.starts, cut, side="left")) for s in mine]
        if not any(take):
            return 0
        page = mine[0].page
        data = scratch(sum(take) * page, np.uint8)
        spans, at = [], 0
        for s, k in zip(mine, take, strict=True):
            data[at:at + k * page] = s.data[:k * page]
            spans.append((at, k * page))
            at += k * page
        walk = walk_spans(data, spans, page, t.header_page, td.endian == ">")
        keep: list[tuple[int, int]] = []
        for k, (s, n_pages, (span_at, _)) in enumerate(zip(mine, take, spans, strict=True)):
            r0, r1 = int(walk.runs[k]), int(walk.runs[k + 1])
            part = walk.ts[r0:r1]
            ns = _ns(part, s.cd.cpu, td, self.shift)
            if ns is not part:
                part[:] = ns
            self._notes(s, walk.page_lost[k], walk.page_ts[k], walk.page_bad[k])
            first = r0 + min(s.skip, r1 - r0)
            late = np.flatnonzero(walk.ts[first:r1] >= cut) if cut is not None else np.zeros(0, np.int64)
            stop = first + int(late[0]) if len(late) else r1
            keep.append((first, stop))
            if stop == r1:
                s.skip = 0
                s.drop(n_pages)
            else:  # the page of the first event not emitted stays loaded
                p = int(walk.offsets[stop] - span_at) // page
                s.skip = stop - (r0 + int(np.searchsorted(walk.offsets[r0:r1] - span_at, p * page)))
                s.drop(p)
        sel = np.concatenate([np.arange(a, z, dtype=np.int64) for a, z in keep])
        runs = np.zeros(len(keep) + 1, np.int64)
        np.cumsum([z - a for a, z in keep], out=runs[1:])
        n = len(sel)
        if n:
            recs = Records(walk.offsets[sel], walk.lengths[sel], walk.ts[sel], walk.types[sel], runs,
                           np.array([s.cd.cpu for s in mine], dtype=np.int64))
            del walk
            emit_payloads(b, td.path, T.buffer_source(self.source, buf), data, recs, t.formats, td.endian,
                          t.cmdlines, t.kallsyms, seq_base=seq)
        return n

    def _notes(self, s: CpuPages, page_lost: np.ndarray, page_ts: np.ndarray, page_bad: np.ndarray) -> None:
        """Lost-events notices and bad pages of the pages walked the first time: the notices kept
        (at their page's header time, as the in-memory reader keeps them), the bad pages counted."""
        new = max(0, s.noted - s.first_page)
        if new >= len(page_lost):
            return
        for p in np.flatnonzero(page_lost[new:]).tolist():
            p += new
            lost = int(page_lost[p])
            when = int(_ns(page_ts[p:p + 1], s.cd.cpu, self.td, self.shift)[0])
            row = lost_row(self.td.path, "missing_events", lost if lost > 0 else None, when, s.cd.cpu)
            self.losses.append(((s.buffer, s.index, s.first_page + p), row,
                                f"cpu{s.cd.cpu} page {s.first_page + p}"))
        bad = int(page_bad[new:].sum())
        if bad:
            key = (s.buffer, s.index)
            self.bad[key] = self.bad.get(key, 0) + bad
        s.noted = s.first_page + len(page_lost)

    def new_losses(self) -> list[dict[str, Any]]:
        """The lost-events rows found since the last call (in the order found)."""
        got = [row for _, row, _ in self.losses[self._reported:]]
        self._reported = len(self.losses)
        return got

    def loss_order(self) -> list[int]:
        """The found rows' positions in the in-memory reader's order (buffer, CPU, page)."""
        return sorted(range(len(self.losses)), key=lambda i: self.losses[i][0])

    def done(self, b: TraceBuilder) -> None:
        """Counts known at the end, added as the in-memory reader adds them."""
        td = self.td
        for i in self.loss_order():
            _, row, where = self.losses[i]
            b.stats.add(td.path, row["kind"], "", row["count"] if row["count"] is not None else 1, where)
        for (bi, k), bad in sorted(self.bad.items()):
            T.count_bad_pages(td, b, td.buffers[bi].cpus[k].cpu, bad)
        T.end(td, b)
