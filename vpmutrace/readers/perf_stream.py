"""perf.data read in bounded pieces, for ingest of files larger than memory (ingest_stream.py).

The in-memory reader (perf_data.py) walks every record and holds every sample's keys before it
decodes; here the data section is cut into pieces of at most ``samples_per_piece`` samples, each
ending just after a FINISHED_ROUND or FINISHED_INIT record when the piece holds one (else at the
record where the piece is full), and each piece goes through the same compiled passes
(perf_samples: keys, groups, fill) into a builder of its own.

What a sample's decoding needs from the rest of the file is read first, in one bounded walk:
the records other than samples (thread names from COMM/FORK, maps for symbols, lost records,
pipe mode's attrs and tracing data), which are few. A piece's samples are numbered from the
samples before it, so ``seq`` is the sample's position in the file, as in-memory.

Order: perf record writes a FINISHED_ROUND after each pass over the per-CPU buffers; perf's
reader (tools/perf/util/ordered-events.c, OE_FLUSH__ROUND) flushes at each round only the events
up to the highest time seen before the previous round, so an event is never earlier than the
highest time of the rounds before its previous one. After a piece that ends a round, rows up to
the highest time of the pieces up to the previous piece that ended a round are final on that rule
(a bound never above the rule's); the writer holds back the later rows (ingest_stream.py). A file
without round records is held whole until its end.

Files written with ``perf record -z`` (COMPRESSED / COMPRESSED2 records) are walked as the stream
of records they decompress to, one chunk at a time (perf_stream_z.py): the same pieces, the records
other than samples copied out of the stream in the first walk, each piece's decompressed bytes
held only while it is decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpmutrace import kernels
from vpmutrace.formats.perf_abi import REC_FINISHED_ROUND
from vpmutrace.readers import perf_data as pd
from vpmutrace.readers import perf_maps
from vpmutrace.readers import perf_samples as ps
from vpmutrace.readers import perf_stream_z as pz
from vpmutrace.readers.binio import release_pages
from vpmutrace.readers.perf_expand import COMPRESSED_TYPES
from vpmutrace.tracedata import TraceBuilder

REC_FINISHED_INIT = 82  # tools/lib/perf/include/perf/event.h PERF_RECORD_FINISHED_INIT
ROUND_ENDS = (REC_FINISHED_ROUND, REC_FINISHED_INIT)
RECORDS_PER_WALK = 1 << 12  # other records a walk takes at least before it ends a piece


@dataclass
class Piece:
    """Bytes [start, stop) of the data section: whole records, ``n_samples`` samples, the first of
    them the file's sample number ``first_sample``."""

    start: int
    stop: int
    first_sample: int
    n_samples: int
    ends_round: bool  # it ends just after a FINISHED_ROUND / FINISHED_INIT record (or at the end)


@dataclass
class Plan:
    """The pieces, the records other than samples (all of them), where and why the walk stopped."""

    pieces: list[Piece]
    r_off: np.ndarray
    r_type: np.ndarray
    r_size: np.ndarray
    n_samples: int
    stop: int
    err: int


def plan(buf: np.ndarray, start: int, end: int, samples_per_piece: int) -> Plan | None:
    """Cut buf[start:end] into pieces (one sequential walk, perf_walk.scan_records, with output
    arrays of the piece's size: memory independent of the file's). None at the first COMPRESSED
    record: the file is walked as the records it decompresses to (perf_stream_z.plan)."""
    cap = max(1, samples_per_piece)
    s = np.empty(cap, np.int64)
    nr = max(RECORDS_PER_WALK, cap)
    r = (np.empty(nr, np.int64), np.empty(nr, np.int32), np.empty(nr, np.int32))
    pieces: list[Piece] = []
    parts: list[tuple[np.ndarray, ...]] = []
    at, base = start, 0
    while True:
        ns, nr, stop, err = kernels.scan_records(buf, at, end, s, *r)
        if np.isin(r[1][:nr], COMPRESSED_TYPES).any():
            release_pages(buf, start, stop)
            return None
        cut, nr_cut, ns_cut, ends_round = stop, nr, ns, err != 3
        if err == 3:  # full: end the piece after its last round, if it has one
            ends = np.flatnonzero(np.isin(r[1][:nr], ROUND_ENDS))
            if len(ends):
                k = int(ends[-1])
                cut, nr_cut = int(r[0][k]) + int(r[2][k]), k + 1
                ns_cut = int(np.searchsorted(s[:ns], cut))
                ends_round = True
        parts.append(tuple(a[:nr_cut].copy() for a in r))
        if cut > at:
            pieces.append(Piece(at, cut, base, ns_cut, ends_round))
        base += ns_cut
        release_pages(buf, at, cut)
        if err != 3:
            break
        at = cut
    r_off, r_type, r_size = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Plan(pieces, r_off, r_type, r_size, base, stop, err)


class PerfStream:
    """One perf.data opened for reading piece by piece: ``header(b)`` puts what the whole file says
    (meta, stats, lost records) in ``b``; ``pieces()`` then yields one builder per piece."""

    def __init__(self, path: Path, samples_per_piece: int, source: str = "host",
                 snapshot: Path | None = None) -> None:
        from vpmutrace.readers import snapshot_for

        self.pf, self.buf, start, end = pd.open_perf_data(path)
        self.start, self.end = start, end
        self.zplan = None if (p := plan(self.buf, start, end, samples_per_piece)) is not None else \
            pz.plan(self.pf, self.buf, start, end, samples_per_piece)
        self.plan: Plan | pz.ZPlan = p or self.zplan
        self.held_max = 0  # (compressed files) the most decompressed bytes a piece held at once
        self.source = source
        self.snapshot = snapshot or snapshot_for(path)
        self.comms: Any = None
        self.side: Any = None
        self.unknown: dict[int, str] = {}

    def needs_memory(self) -> str | None:
        """Why this file cannot be read piece by piece (None: it can; every perf.data can)."""
        return None

    def header(self, b: TraceBuilder) -> None:
        """What the records other than samples say, into ``b`` (as the in-memory reader does)."""
        p, z = self.plan, self.zplan
        if z is None:
            self.comms, self.side = pd.file_records(self.pf, self.buf, p.r_off, p.r_type, p.r_size, p.n_samples,
                                                    p.stop, p.err, self.start, b)
        else:  # as perf_data._read_records: what the expansion met, then the stream's records
            if z.problem:
                self.pf.partial = (self.pf.partial + "; " if self.pf.partial else "") + z.problem
            if z.err:
                self.pf.partial = self.pf.partial or "a decompressed record stream ends in a broken record"
            self.comms, self.side = pd.file_records(self.pf, z.side, z.side_off, z.r_type, z.r_size, z.n_samples,
                                                    z.file_stop, z.file_err, self.start, b, shown=z.r_off)
            recs_meta = b.meta["perf_records"]
            recs_meta["COMPRESSED"] = recs_meta.get("COMPRESSED", 0) + z.n_compressed
        tracing = self.pf.tracing
        b.symbols = b.symbols or (tracing.kallsyms if tracing else None)
        b.printk = b.printk or (tracing.raw.get("printk") or b"" if tracing else b"")
        self.unknown = dict(b.unknown_event_names)
        b.unknown_event_names = {}

    def pieces(self) -> Iterator[tuple[Piece, TraceBuilder]]:
        """Each piece's samples decoded into a builder of its own (its ``seq`` numbers local to the
        piece: add ``piece.first_sample``)."""
        pf, tracing = self.pf, self.pf.tracing
        formats = tracing.formats if tracing else {}
        made = pz.Pieces(pf, self.buf, self.start, self.end) if self.zplan is not None else None
        for piece in self.plan.pieces:
            b = TraceBuilder()
            b.unknown_event_names = self.unknown
            b.meta["inputs"].append({"path": pf.path, "format": "perf.data"})  # (perf_maps notes its symbols)
            # a compressed file's piece: its decompressed bytes, in a buffer of their own
            buf, start, stop = (self.buf, piece.start, piece.stop) if made is None else \
                (made.take(piece.start, piece.stop), 0, piece.stop - piece.start)
            if piece.n_samples:
                recs, keys = ps.scan(pf.attrs, pf.path, buf, start, stop)
                del recs
                samples = ps.decode_samples(len(pf.attrs), keys, self.comms.events, self.comms.comm)
                del keys
                ps.emit_samples(pf.attrs, pf.path, buf, samples, formats,
                                tracing.kallsyms if tracing else None, b, self.source, piece.start - start)
                del samples
                perf_maps.apply(pf, self.side, b, 0, self.snapshot)
            del buf
            release_pages(self.buf)
            if made is not None:
                self.held_max = made.held_max
            yield piece, b

    def done(self, b: TraceBuilder) -> None:
        pd.file_done(self.pf, b)
