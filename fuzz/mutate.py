"""Structure-aware damage: damaged copies of a seed, each named after what was done to it.

Where the fields are: the readers' own header parsing is traced (every value read through
``binio.Cursor`` from the file itself: sizes, counts, offsets, ids, magic), and records are
found with the readers' walks (perf.data records, ring-buffer pages, text lines). Each field
gets the values that break readers: 0, 1, all ones (-1), the largest signed value, the smallest,
-16, one past the end of the file, and a 1-byte and an 8-byte flip; each section boundary a
truncation. Format-specific damage follows (size-0 records, unknown record types, duplicated
ids, missing formats, nested print fmts, long lines, invalid UTF-8, ...). ``random_mutants`` adds
random flips and splices (seeded, reproducible).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

Mutant = tuple[str, str, bytes]  # (kind: "truncate" or "damage", label, data)


@dataclass(frozen=True)
class FieldAt:
    offset: int
    width: int
    what: str


@contextmanager
def _traced_reads(size: int, out: list[FieldAt]) -> Iterator[None]:
    """Record every fixed-width read through binio.Cursor of a buffer as long as the file (the file itself)."""
    from vpmutrace.readers import binio

    orig_unpack, orig_bytes = binio.Cursor.unpack, binio.Cursor.bytes

    def unpack(self, fmt):  # type: ignore[no-untyped-def]
        if len(self.data) == size and self.base == 0:
            at = self.pos
            for ch in fmt:
                if ch.isdigit():
                    break
                w = struct.calcsize(ch)
                out.append(FieldAt(at, w, f"{self.what or 'header'} field {ch}"))
                at += w
        return orig_unpack(self, fmt)

    def bytes_(self, n):  # type: ignore[no-untyped-def]
        if len(self.data) == size and self.base == 0:
            out.append(FieldAt(self.pos, n, f"{self.what or 'header'} bytes[{n}]"))
        return orig_bytes(self, n)

    binio.Cursor.unpack, binio.Cursor.bytes = unpack, bytes_  # type: ignore[method-assign]
    try:
        yield
    finally:
        binio.Cursor.unpack, binio.Cursor.bytes = orig_unpack, orig_bytes  # type: ignore[method-assign]


def header_fields(read, data: bytes) -> list[FieldAt]:  # type: ignore[no-untyped-def]
    """The fields ``read(data)`` takes from ``data`` through binio.Cursor, in reading order, deduplicated."""
    got: list[FieldAt] = []
    with _traced_reads(len(data), got):
        try:
            read(data)
        except Exception:  # noqa: BLE001 - the seed reads; this only collects where
            pass
    seen, out = set(), []
    for f in got:
        if (f.offset, f.width) not in seen:
            seen.add((f.offset, f.width))
            out.append(f)
    return out


def _put(data: bytes, at: int, width: int, value: int) -> bytes:
    b = bytearray(data)
    b[at:at + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")
    return bytes(b)


def _flip(data: bytes, at: int, width: int) -> bytes:
    b = bytearray(data)
    for k in range(at, min(at + width, len(b))):
        b[k] ^= 0xFF
    return bytes(b)


def field_values(width: int, size: int) -> list[tuple[str, int]]:
    """The values a size/count/offset field is damaged with."""
    bits = 8 * width
    vals = [("zero", 0), ("one", 1), ("all-ones", (1 << bits) - 1), ("-16", (1 << bits) - 16),
            ("max-signed", (1 << (bits - 1)) - 1), ("min-signed", 1 << (bits - 1)), ("past-eof", size + 1)]
    return [(n, v & ((1 << bits) - 1)) for n, v in vals]


def field_mutants(data: bytes, fields: list[FieldAt], limit: int | None = None) -> Iterator[Mutant]:
    for f in fields[:limit]:
        if f.width in (1, 2, 4, 8):
            for name, v in field_values(f.width, len(data)):
                yield "damage", f"{f.what} @{f.offset} = {name}", _put(data, f.offset, f.width, v)
            yield "damage", f"{f.what} @{f.offset} 1-byte flip", _flip(data, f.offset, 1)
            yield "damage", f"{f.what} @{f.offset} 8-byte flip", _flip(data, f.offset, 8)
        else:  # strings, magic, blocks: zeroed and flipped
            b = bytearray(data)
            b[f.offset:f.offset + min(f.width, 16)] = bytes(min(f.width, 16))
            yield "damage", f"{f.what} @{f.offset} zeroed", bytes(b)


def truncations(data: bytes, boundaries: list[int], at_boundary: bool = True) -> Iterator[Mutant]:
    """Cut at each boundary, one byte before it and one after it. ``at_boundary`` False: not at it, for
    formats where a cut at a record boundary is a complete, shorter file (text lines, pipe-mode
    perf.data: nothing in them says more was to come)."""
    offsets = (-1, 0, 1) if at_boundary else (-1, 1)
    cuts = sorted({c for b in boundaries for c in (b + k for k in offsets) if 0 < c < len(data)})
    for c in cuts:
        yield "truncate", f"cut at {c}", data[:c]


# --- perf.data -----------------------------------------------------------------------------

REC_AUXTRACE, REC_HEADER_ATTR, REC_HEADER_TRACING_DATA = 71, 64, 66


def perf_records(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(offset, type, size) of each record in data[start:end] (the reader's walk)."""
    import numpy as np

    from vpmutrace.readers.perf_data import walk

    offs, types, _m, sizes, _s, _e = walk(np.frombuffer(data, np.uint8), start, min(end, len(data)))
    return list(zip(offs.tolist(), types.tolist(), sizes.tolist(), strict=True))


def _sample(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(k * step)] for k in range(n)]


def perf_mutants(data: bytes, read, max_records: int = 24) -> Iterator[Mutant]:  # type: ignore[no-untyped-def]
    pipe = struct.unpack_from("<Q", data, 8)[0] == 16
    fields = header_fields(read, data)
    if pipe:
        start, end = 16, len(data)
    else:
        d_off, d_size = struct.unpack_from("<QQ", data, 40)
        start, end = d_off, d_off + d_size
    recs = perf_records(data, start, end)
    yield "damage", "magic zeroed", bytes(8) + data[8:]
    yield from field_mutants(data, fields)
    bounds = [16, start, end] + [f.offset for f in fields] + [f.offset + f.width for f in fields]
    picked = recs[:8] + _sample(recs[8:], max_records)
    bounds += [o for o, _t, _s in picked] + [o + 4 for o, _t, _s in picked]
    yield from truncations(data, bounds, at_boundary=not pipe)
    for o, t, s in picked:
        for name, v in (("0", 0), ("4", 4), ("0xfff0 (-16)", 0xFFF0), ("0xffff", 0xFFFF), ("+8", s + 8)):
            yield "damage", f"record type {t} @{o} size {name}", _put(data, o + 6, 2, v)
        yield "damage", f"record type {t} @{o} type unknown", _put(data, o, 4, 0x7FFF)
        if t == REC_HEADER_TRACING_DATA:
            for name, v in field_values(4, len(data)):
                yield "damage", f"HEADER_TRACING_DATA @{o} data size {name}", _put(data, o + 8, 4, v)
        if t == REC_HEADER_ATTR:
            for name, v in field_values(4, len(data)):
                yield "damage", f"HEADER_ATTR @{o} attr size {name}", _put(data, o + 12, 4, v)
    # an AUXTRACE record (data after the record, its size in the record) with damaged sizes
    for name, v in field_values(8, len(data)):
        aux = struct.pack("<IHHQQQIII", REC_AUXTRACE, 0, 48, v, 0, 0, 0, 0, 0) + bytes(4)
        yield "damage", f"AUXTRACE at the start of the data, size {name}", data[:start] + aux + data[start:]
    yield "damage", "AUXTRACE size -16 alone (pipe)", \
        b"PERFILE2" + struct.pack("<Q", 16) + struct.pack("<IHHq", REC_AUXTRACE, 0, 16, -16)
    yield "damage", "AUXTRACE size -4096 alone (pipe)", \
        b"PERFILE2" + struct.pack("<Q", 16) + struct.pack("<IHHq", REC_AUXTRACE, 0, 16, -4096)
    if not pipe:
        a_size, a_off = struct.unpack_from("<QQ", data, 16)[0], struct.unpack_from("<Q", data, 24)[0]
        n_attrs = struct.unpack_from("<Q", data, 32)[0] // a_size
        if n_attrs >= 2:  # duplicated ids: attr 1's ids made attr 0's
            ids0 = struct.unpack_from("<QQ", data, a_off + a_size - 16)
            yield "damage", "attr 1 ids = attr 0 ids", \
                data[:a_off + 2 * a_size - 16] + struct.pack("<QQ", *ids0) + data[a_off + 2 * a_size:]
        flags = bytearray(data)
        flags[72] &= ~2  # feature bit 1: HEADER_TRACING_DATA
        yield "damage", "tracing data feature bit cleared (formats missing)", bytes(flags)
        flags = bytearray(data)
        flags[72] = flags[72] | 0xF8  # features 3..7 claimed with no table entries for them
        yield "damage", "feature bits set past the table", bytes(flags)


# --- trace.dat and ring-buffer pages -------------------------------------------------------

def trace_dat_mutants(data: bytes, read, page_size: int, cpu_spans: list[tuple[int, int]],  # type: ignore[no-untyped-def]
                      max_pages: int = 6) -> Iterator[Mutant]:
    fields = header_fields(read, data)
    yield "damage", "magic zeroed", bytes(10) + data[10:]
    yield "damage", "endianness flipped", _flip(data, data.index(b"\0", 10) + 1, 1)
    yield from field_mutants(data, fields)
    bounds = [f.offset for f in fields] + [f.offset + f.width for f in fields]
    for off, size in cpu_spans:
        bounds += [off, off + size, off + size - 1]
        pages = list(range(off, off + size, page_size)) if page_size else []
        bounds += pages[:max_pages]
    yield from truncations(data, bounds)
    for off, size in cpu_spans:
        if page_size and size >= page_size:
            for name, v in (("0", 0), ("page+1", page_size + 1), ("-1", (1 << 64) - 1), ("1", 1)):
                yield "damage", f"cpu data @{off}: first page commit {name}", _put(data, off + 8, 8, v)
            b = bytearray(data)
            b[off:off + page_size] = bytes(page_size)
            yield "damage", f"cpu data @{off}: first page all zero", bytes(b)
            yield "damage", f"cpu data @{off}: one byte short of a page", data[:off] + data[off + 1:]


def ringbuf_mutants(pages: bytes, page_size: int, max_pages: int = 4) -> Iterator[Mutant]:
    """Damage to ring-buffer pages (include/linux/ring_buffer.h event header: 5-bit type_len,
    27-bit time delta; type_len 0 carries its length in the next u32, 29 padding, 30 time extend,
    31 absolute timestamp)."""
    for p in range(0, min(len(pages), max_pages * page_size), page_size):
        for name, v in (("0", 0), ("page+1", page_size + 1), ("-1", (1 << 64) - 1), ("-16", (1 << 64) - 16)):
            yield "damage", f"page {p // page_size} commit {name}", _put(pages, p + 8, 8, v)
        for tl in (0, 30, 31):  # (29 with a length is a discarded event the kernel writes: not damage)
            yield "damage", f"page {p // page_size} first event type_len {tl}", \
                _put(pages, p + 16, 4, tl | (0x7FFFFFF << 5))
        yield "damage", f"page {p // page_size} first event type_len 0, length -1", \
            _put(_put(pages, p + 16, 4, 0), p + 20, 4, 0xFFFFFFFF)
        yield "damage", f"page {p // page_size} timestamp 2^63", _put(pages, p, 8, 1 << 63)
        yield "truncate", f"cut inside page {p // page_size}", pages[:p + page_size // 2]
    yield "damage", "all pages zero", bytes(len(pages))


def format_mutants(text: bytes) -> Iterator[tuple[str, bytes]]:
    """Damage to one tracefs format description (text, include/trace/trace_events.h layout)."""
    lines = text.split(b"\n")
    fields = [k for k, ln in enumerate(lines) if ln.strip().startswith(b"field:")]
    for k in fields[-3:]:
        ln = lines[k]
        for name, rep in ((b"size", b"1099511627776"), (b"size", b"3"), (b"size", b"0"), (b"size", b"-8"),
                          (b"offset", b"2000000000"), (b"offset", b"-4"), (b"signed", b"7")):
            i = ln.find(name + b":")
            if i < 0:
                continue
            j = ln.find(b";", i)
            new = lines[:k] + [ln[:i + len(name) + 1] + rep + ln[j:]] + lines[k + 1:]
            yield f"line {k + 1} {name.decode()}:{rep.decode()}", b"\n".join(new)
        yield f"line {k + 1} deleted", b"\n".join(lines[:k] + lines[k + 1:])
        yield f"line {k + 1} array [4294967296]", b"\n".join(lines[:k] + [ln.replace(b";", b"[4294967296];", 1)]
                                                            + lines[k + 1:])
    pf = next((k for k, ln in enumerate(lines) if ln.startswith(b"print fmt:")), None)
    if pf is not None:
        yield "print fmt nested 5000 deep", b"\n".join(
            lines[:pf] + [b'print fmt: "%d", ' + b"(" * 5000 + b"REC->x" + b")" * 5000] + lines[pf + 1:])
        yield "print fmt unterminated string", b"\n".join(lines[:pf] + [b'print fmt: "%d %s'] + lines[pf + 1:])
        yield "print fmt %*.*d with no args", b"\n".join(lines[:pf] + [b'print fmt: "%*.*d %s %p"'] + lines[pf + 1:])
        yield "print fmt cut", b"\n".join(lines[:pf] + [lines[pf][:len(lines[pf]) // 2]])
    for k in range(0, len(text), max(1, len(text) // 6)):
        yield f"cut at {k}", text[:k]
    ids = [k for k, ln in enumerate(lines) if ln.startswith(b"ID:")]
    for k in ids:
        for rep in (b"ID: -1", b"ID: 99999999999999999999", b"ID: 0", b"ID: x"):
            yield rep.decode(), b"\n".join(lines[:k] + [rep] + lines[k + 1:])


# --- text --------------------------------------------------------------------------------

def text_mutants(data: bytes, max_lines: int = 12) -> Iterator[Mutant]:
    lines = data.split(b"\n")
    starts, at = [], 0
    for ln in lines:
        starts.append(at)
        at += len(ln) + 1
    event_lines = [k for k, ln in enumerate(lines) if b": " in ln and not ln.lstrip().startswith(b"#")]
    picked = _sample(event_lines, max_lines)
    yield from truncations(data, [starts[k] for k in picked], at_boundary=False)
    for k in picked[:4]:  # a line cut after each of its words
        ln = lines[k]
        for j in range(1, len(ln)):
            if ln[j:j + 1] in (b" ", b"=", b"(", b":", b","):
                yield "truncate", f"line {k + 1} cut at column {j}", data[:starts[k] + j]
                yield "truncate", f"line {k + 1} cut at column {j + 1}", data[:starts[k] + j + 1]
    k = picked[len(picked) // 2] if picked else 0
    s = starts[k] if starts else 0

    def at(ins: bytes, label: str) -> Mutant:
        return "damage", label, data[:s] + ins + data[s:]
    yield at(b"\x00\x01\x02\xff\xfe binary junk \x00" * 8 + b"\n", "binary junk line")
    yield at(bytes(range(256)) * 64 + b"\n", "256 bytes x64 of binary")
    yield at(b"x" * (10 << 20) + b"\n", "10 MB line")
    yield at(b"\xff\xfe\xc3\x28 invalid utf-8 \xa0\xa1\n", "invalid UTF-8 line")
    yield "damage", "200 KB word in the first line", b"#" + b"w" * 200_000 + b"\n" + data
    yield "damage", "200 KB word with colons in the first line", b"a" + b"a:" * 100_000 + b"\n" + data
    yield "damage", "all bytes 0x00", bytes(len(data))
    if picked:
        ln = lines[k]
        for old, new, label in ((b"[00", b"[2147483648", "cpu 2^31"), (b"[0", b"[99999999999999999999", "cpu 10^20")):
            if old in ln:
                yield "damage", label, data[:s] + ln.replace(old, new, 1) + data[s + len(ln):]
        import re

        m = re.search(rb"(\d+)\.(\d{6,9}):", ln)
        if m:
            for label, ts in (("ts 2^63 ns", b"9223372036.854775808:"),
                              ("ts 10^20 s", b"100000000000000000000.000001:")):
                yield "damage", label, data[:s] + ln[:m.start()] + ts + ln[m.end():] + data[s + len(ln):]
        m = re.search(rb"-(\d+) ", ln)
        if m:
            yield "damage", "pid 2^31", data[:s] + ln[:m.start()] + b"-2147483648 " + ln[m.end():] + data[s + len(ln):]
    yield "damage", "out-of-order timestamps (lines reversed)", b"\n".join(reversed(lines))


def compressed_text_mutants(data: bytes, name: str) -> Iterator[Mutant]:
    for k in (len(data) // 4, len(data) // 2, len(data) - 8, len(data) - 1):
        if 0 < k < len(data):
            yield "truncate", f"{name} cut at {k}", data[:k]
    yield "damage", f"{name} flipped in the middle", _flip(data, len(data) // 2, 8)


def zstd_bomb(gib: float = 2.0) -> bytes:
    """A zstd frame of ``gib`` GiB of newlines (tens of KB compressed)."""
    import zstandard

    chunk = b"\n" * (64 << 20)
    c = zstandard.ZstdCompressor(level=1).compressobj()
    out = [c.compress(chunk) for _ in range(int(gib * 16))]
    out.append(c.flush())
    return b"".join(out)


# --- random --------------------------------------------------------------------------------

def random_mutants(data: bytes, n: int, seed: int = 0) -> Iterator[Mutant]:
    """Random byte flips, runs of 0x00/0xff, and splices (a block copied elsewhere), reproducible by seed."""
    rng = random.Random(seed)
    for i in range(n):
        b = bytearray(data)
        op = rng.randrange(4)
        if op == 0:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            label = "random byte flips"
        elif op == 1:
            at = rng.randrange(len(b))
            ln = rng.choice((4, 8, 64, 512))
            b[at:at + ln] = bytes([rng.choice((0, 0xFF))]) * len(b[at:at + ln])
            label = "random run of 0x00/0xff"
        elif op == 2:
            a, z = sorted(rng.randrange(len(b)) for _ in range(2))
            at = rng.randrange(len(b))
            b[at:at] = b[a:min(z, a + 4096)]
            label = "random splice"
        else:
            at = rng.randrange(len(b))
            b[at:at + 8] = struct.pack("<q", rng.choice((-1, -16, 1 << 62, 0x7FFFFFFF, 0)))
            label = "random 8-byte value"
        yield "damage", f"{label} #{i} (seed {seed})", bytes(b)
