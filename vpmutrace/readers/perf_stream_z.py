"""perf.data written with ``perf record -z`` read in bounded pieces (perf_stream.py reads the others).

Its records are those of the stream perf_expand.Expansion makes: the file's records in order, each
COMPRESSED / COMPRESSED2 record replaced by what it decompresses to, through one zstd context (a
record's data may refer back to earlier records': perf flushes one compression stream, never ends
a frame per record). Offsets below are offsets in that stream, the ones the in-memory reader
(perf_data.py) names records by, so both count and name the same records the same way.

``plan``: one walk of the stream as it is made, a chunk of about CHUNK_BYTES at a time (the file's
own records walked in batches of FILE_RECORDS): pieces are cut as for plain files (at most
``samples_per_piece`` samples and RECORDS_PER_WALK other records, ending after the last
FINISHED_ROUND / FINISHED_INIT when full; a record cut between two chunks, or between two
COMPRESSED records as perf allows, is carried over), and also when a piece spans more than
PIECE_BYTES_PER_SAMPLE bytes per sample it may hold. The records other than samples are copied out
as they pass (few: thread names, maps, lost and round records), for ``PerfStream.header``.

``Pieces``: the stream made again from the start by a fresh context, each piece's bytes gathered
into a buffer of its own and walked by the same compiled passes as a plain file's. At most one
piece and one chunk of decompressed bytes are held at once (``Pieces.held_max`` says how many):
memory follows the piece size, not the file's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vpmutrace import kernels
from vpmutrace.formats.perf_abi import REC_SAMPLE
from vpmutrace.readers.binio import expansion_room, release_pages
from vpmutrace.readers.perf_data import PerfFile
from vpmutrace.readers.perf_expand import COMPRESSED_TYPES, Expansion

CHUNK_BYTES = 1 << 22  # decompressed bytes made at a time
FILE_RECORDS = 1 << 14  # the file's own records walked at a time
PIECE_BYTES_PER_SAMPLE = 256  # a piece ends once its bytes pass this per sample it may hold
MIN_PIECE_BYTES = 1 << 22


class Stream:
    """The expanded record stream of one file, in chunks; once exhausted, where the walk of the
    file's own records stopped and why (``stop``, ``err``: as the in-memory reader's walk)."""

    def __init__(self, pf: PerfFile, buf: np.ndarray, start: int, end: int) -> None:
        self.buf, self.start, self.end = buf, start, end
        self.ex = Expansion(pf.path, buf, expansion_room(len(buf)))
        self.stop, self.err = start, 0
        self.n_compressed = 0  # COMPRESSED records in the file, those past a damaged one too

    def chunks(self) -> Iterator[np.ndarray]:
        buf, end = self.buf, self.end
        s = np.empty(FILE_RECORDS, np.int64)
        r = (np.empty(FILE_RECORDS, np.int64), np.empty(FILE_RECORDS, np.int32), np.empty(FILE_RECORDS, np.int32))
        parts: list[np.ndarray | bytes] = []
        held = 0
        at = self.start
        while True:
            ns, nr, stop, err = kernels.scan_records(buf, at, end, s, *r)
            self.n_compressed += int(np.isin(r[1][:nr], COMPRESSED_TYPES).sum())
            offs = np.concatenate((s[:ns], r[0][:nr]))
            order = np.argsort(offs, kind="stable")
            offs = offs[order]
            types = np.concatenate((np.full(ns, REC_SAMPLE, np.int32), r[1][:nr]))[order]
            sizes = np.concatenate((np.zeros(ns, np.int32), r[2][:nr]))[order]
            for part in self.ex.records(offs, types, sizes, np.append(offs[1:], stop)):
                parts.append(part)
                held += len(part)
                if held >= CHUNK_BYTES:
                    yield _join(parts)
                    parts, held = [], 0
            release_pages(buf, at, stop)
            if err != 3:
                break
            at = stop
        self.stop, self.err = stop, 2 if err == 0 and stop < end else err
        if parts:
            yield _join(parts)


def _join(parts: list[np.ndarray | bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(parts), np.uint8)


@dataclass
class ZPlan:
    """The pieces (perf_stream.Piece, in stream offsets) and the records other than samples: at
    ``r_off`` in the stream and at ``side_off`` in ``side`` (their bytes, copied out)."""

    pieces: list
    r_off: np.ndarray
    r_type: np.ndarray
    r_size: np.ndarray
    side: np.ndarray
    side_off: np.ndarray
    n_samples: int
    stop: int  # where the stream's walk stopped, and why (perf_walk.scan_records' codes)
    err: int
    n_compressed: int
    file_stop: int  # where the walk of the file's own records stopped, and why
    file_err: int
    problem: str | None  # a record that did not decompress


def plan(pf: PerfFile, buf: np.ndarray, start: int, end: int, samples_per_piece: int) -> ZPlan:
    """One walk of the stream: pieces and the records other than samples (module docstring)."""
    from vpmutrace.readers.perf_stream import RECORDS_PER_WALK, ROUND_ENDS, Piece

    cap = max(1, samples_per_piece)
    ncap = max(RECORDS_PER_WALK, cap)
    budget = max(MIN_PIECE_BYTES, cap * PIECE_BYTES_PER_SAMPLE)
    s = np.empty(cap, np.int64)
    r = (np.empty(ncap, np.int64), np.empty(ncap, np.int32), np.empty(ncap, np.int32))
    ns = nr = 0
    src = Stream(pf, buf, start, end)
    chunks = src.chunks()
    win, w0, at = np.zeros(0, np.uint8), 0, 0  # win holds stream bytes [w0, w0 + len(win)); at: next record
    first, base = 0, 0  # the piece under way starts at ``first``; samples before it
    pieces: list[Piece] = []
    side = _Side()

    def cut(whole: bool) -> None:
        """End the piece under way: after its last round record when not ``whole`` and it has one."""
        nonlocal ns, nr, first, base
        stop, nr_cut, ns_cut, ends_round = at, nr, ns, whole
        ends = np.flatnonzero(np.isin(r[1][:nr], ROUND_ENDS)) if not whole else []
        if len(ends):
            k = int(ends[-1])
            stop, nr_cut = int(r[0][k]) + int(r[2][k]), k + 1
            ns_cut = int(np.searchsorted(s[:ns], stop))
            ends_round = True
        if stop > first:
            pieces.append(Piece(first, stop, base, ns_cut, ends_round))
        base += ns_cut
        for a in r:
            a[:nr - nr_cut] = a[nr_cut:nr].copy()
        s[:ns - ns_cut] = s[ns_cut:ns].copy()
        ns, nr, first = ns - ns_cut, nr - nr_cut, stop

    more = True
    while True:
        lo = at - w0
        a, b, stop, err = kernels.scan_records(win, lo, len(win), s[ns:], r[0][nr:], r[1][nr:], r[2][nr:])
        side.add(win, w0, s[ns:ns + a], r[0][nr:nr + b], r[1][nr:nr + b], r[2][nr:nr + b], stop)
        s[ns:ns + a] += w0
        r[0][nr:nr + b] += w0
        ns, nr, at = ns + a, nr + b, w0 + stop
        if err == 3:
            cut(False)
            continue
        if err in (1, 4):  # damage: the stream is read up to it
            break
        if at - first >= budget:  # (the window's end: a piece is cut between chunks only)
            cut(False)
        nxt = next(chunks, None) if more else None
        if nxt is None:
            more = False
            err = 2 if err == 0 and at < w0 + len(win) else err
            break
        win, w0 = np.concatenate((win[at - w0:], nxt)), at
    for _ in chunks:  # the rest of the file, as the in-memory reader expands it all (its size, its damage)
        pass
    cut(True)
    r_off, r_type, r_size, side_off, side_buf = side.done()
    return ZPlan(pieces, r_off, r_type, r_size, side_buf, side_off, base, at, err, src.n_compressed,
                 src.stop, src.err, src.ex.problem)


class _Side:
    """The records other than samples, copied out of the stream as they pass."""

    def __init__(self) -> None:
        self.cols: list[tuple[np.ndarray, ...]] = []
        self.data: list[bytes] = []
        self.size = 0

    def add(self, win: np.ndarray, w0: int, s_off: np.ndarray, r_off: np.ndarray, r_type: np.ndarray,
            r_size: np.ndarray, stop: int) -> None:
        """Records at r_off in ``win`` (which starts at stream offset w0): each with the bytes up to
        the next record (s_off, r_off) or the walk's ``stop`` (the data a record carries after
        header.size, as pipe mode's HEADER_TRACING_DATA, is its own)."""
        if not len(r_off):
            return
        bounds = np.sort(np.concatenate((s_off, r_off, [stop])))
        ends = bounds[np.searchsorted(bounds, r_off, side="right")]
        at = self.size + np.concatenate(([0], np.cumsum(ends - r_off)[:-1]))
        for o, e in zip(r_off.tolist(), ends.tolist(), strict=True):
            self.data.append(win[o:e].tobytes())
        self.size += int((ends - r_off).sum())
        self.cols.append((r_off + w0, r_type.copy(), r_size.copy(), at))

    def done(self) -> tuple[np.ndarray, ...]:
        if not self.cols:
            e64, e32 = np.zeros(0, np.int64), np.zeros(0, np.int32)
            return e64, e32, e32, e64, np.zeros(0, np.uint8)
        r_off, r_type, r_size, at = (np.concatenate(c) for c in zip(*self.cols, strict=True))
        return r_off, r_type, r_size, at.astype(np.int64), np.frombuffer(b"".join(self.data), np.uint8)


class Pieces:
    """The planned pieces' bytes, one after the other, from a second making of the stream."""

    def __init__(self, pf: PerfFile, buf: np.ndarray, start: int, end: int) -> None:
        self.chunks = Stream(pf, buf, start, end).chunks()
        self.cur, self.c0 = np.zeros(0, np.uint8), 0  # the chunk at hand, from stream offset c0
        self.held_max = 0  # the most decompressed bytes held at once (a piece and a chunk)

    def take(self, start: int, stop: int) -> np.ndarray:
        """Stream bytes [start, stop) (at or after the previous piece's), in a buffer of their own."""
        out = np.empty(stop - start, np.uint8)
        pos = start
        while pos < stop:
            if pos >= self.c0 + len(self.cur):
                nxt = next(self.chunks, None)
                if nxt is None:
                    break
                self.c0 += len(self.cur)
                self.cur = nxt
                continue
            i = pos - self.c0
            k = min(len(self.cur) - i, stop - pos)
            out[pos - start:pos - start + k] = self.cur[i:i + k]
            pos += k
        self.held_max = max(self.held_max, len(out) + len(self.cur))
        return out[:pos - start]
