"""trace-cmd ``trace.dat`` reader, file versions 6 and 7 (trace-cmd.dat.v6(5), .v7(5)).

v6 is sequential (tracing block, cpus, options, flyrecord offsets). v7 is made of
sections found through chained OPTIONS sections; metadata sections and per-CPU
flyrecord data may be compressed (zstd or zlib; flyrecord in chunks). Section
header (checked on real files): u16 id, u16 flags (1 = compressed), u32 string id,
u64 size.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpmutrace import clocks as C
from vpmutrace import kernels
from vpmutrace.errors import InputError
from vpmutrace.readers import tracing_data as tdmod
from vpmutrace.readers.binio import MAX_EXPANSION, Cursor, expansion_room, map_file, scratch
from vpmutrace.readers.payloads import Records, emit_payloads
from vpmutrace.readers.ringbuf import walk_spans
from vpmutrace.tracedata import TraceBuilder
from vpmutrace.writers.trace_dat import BufferData, TraceDatContent

MAGIC = b"\x17\x08\x44tracing"

OPT_DONE, OPT_DATE, OPT_CPUSTAT, OPT_BUFFER, OPT_TRACECLOCK, OPT_UNAME = 0, 1, 2, 3, 4, 5
OPT_OFFSET, OPT_CPUCOUNT, OPT_VERSION, OPT_TRACEID, OPT_TIME_SHIFT, OPT_GUEST, OPT_TSC2NSEC = 7, 8, 9, 11, 12, 13, 14
SEC_HEADER_INFO, SEC_FTRACE_EVENTS, SEC_EVENT_FORMATS, SEC_KALLSYMS, SEC_PRINTK, SEC_CMDLINES = 16, 17, 18, 19, 20, 21
OPT_BUFFER_TEXT = 22


@dataclass
class CpuData:
    cpu: int
    offset: int
    size: int


@dataclass
class Buffer:
    name: str  # "" = top-level instance
    clock: str | None
    cpus: list[CpuData]
    section_offset: int = 0
    page_size: int = 0  # sub-buffer size; 0 = the file's page size


@dataclass
class TraceDat:
    path: str
    version: int
    endian: str
    long_size: int
    page_size: int
    compression: str = "none"
    tracing: tdmod.TracingData = field(default_factory=tdmod.TracingData)
    buffers: list[Buffer] = field(default_factory=list)
    cpustat: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    ncpus: int = 0


class _Corrupt(Exception):
    """Compressed data that does not decompress (turned into an InputError where its offset is known)."""


class _Codec:
    def __init__(self, name: str, path: str) -> None:
        self.name = name
        if name == "zstd":
            import zstandard

            self._z = zstandard.ZstdDecompressor()
            self._errors: tuple[type[Exception], ...] = (zstandard.ZstdError,)
        else:
            self._errors = (zlib.error,)
        if name not in ("zlib", "none", "zstd"):
            raise InputError(path, f"trace.dat compressed with unsupported codec {name!r} (zstd and zlib are)")

    def decompress(self, data: bytes | memoryview, usize: int) -> bytes:
        """``data`` decompressed, at most ``usize`` bytes of it (the size its header gives); raises
        _Corrupt with the codec's reason when it does not decompress."""
        try:
            if self.name == "zstd":
                return self._z.decompress(data, max_output_size=max(usize, 1))
            d = zlib.decompressobj()
            out = d.decompress(data, max(usize, 1))
            if not d.eof:
                raise _Corrupt("the zlib stream ends early or is longer than its header says")
            return out
        except self._errors as e:  # corrupt data
            raise _Corrupt(str(e)) from None


def read_trace_dat(path: str | Path, builder: TraceBuilder, source: str = "host",
                   shift: TimeShift | None = None) -> TraceDat:
    """Read one trace.dat into ``builder``; ``shift`` maps a guest file's clock onto its host's."""
    td, raw = open_trace_dat(path)
    emit_trace_dat(td, raw, builder, source, shift)
    return td


def emit_trace_dat(td: TraceDat, raw: bytes, builder: TraceBuilder, source: str = "host",
                   shift: TimeShift | None = None) -> None:
    begin(td, builder)
    _emit(raw, td, builder, source, shift)
    end(td, builder)


def begin(td: TraceDat, builder: TraceBuilder) -> None:
    """What the file says before its events: meta, symbols, printk formats, and the ring-buffer
    page layout (the 64-bit kernel's when the file has no header_page)."""
    _apply_meta(td, builder)
    builder.symbols = builder.symbols or td.tracing.kallsyms
    builder.printk = builder.printk or td.tracing.raw.get("printk") or b""
    builder.meta["inputs"][-1]["long_size"] = td.long_size
    t = td.tracing
    if not t.header_page:
        t.header_page = {"timestamp": (0, 8), "commit": (8, td.long_size), "data": (8 + td.long_size, 0)}


def end(td: TraceDat, builder: TraceBuilder) -> None:
    """What is known after the events: the formats that would not parse (parsed when used)."""
    for bad in td.tracing.bad_formats:
        builder.stats.add(td.path, "bad_format", "", 1, bad)


def open_trace_dat(path: str | Path, mapped: bool = False) -> tuple[TraceDat, Any]:
    """Parse the metadata (formats, options, buffers); CPU data is decoded by emit_trace_dat.
    Returns the file's bytes with it: read into memory, or (``mapped``) the file mapped as a
    read-only uint8 array, for readers that take its CPU data a piece at a time."""
    p = Path(path)
    if mapped:
        raw: Any = map_file(p)
    else:
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise InputError(str(p), f"cannot read: {e.strerror}") from None
    c = Cursor(memoryview(raw), str(p))
    c.expect(MAGIC, "trace.dat magic")
    version = c.cstr()
    if version not in ("6", "7"):
        raise c.fail(f"trace.dat version {version!r} is not supported (6 and 7 are)")
    endian = ">" if c.u8() else "<"
    c.endian = endian
    long_size = c.u8()
    page_size = c.u32()
    if long_size not in (4, 8):
        raise c.fail(f"long size {long_size} is neither 4 nor 8", )
    if page_size & (page_size - 1) or not MIN_PAGE <= page_size <= MAX_PAGE:
        raise c.fail(f"page size {page_size} is not a power of two from {MIN_PAGE} to {MAX_PAGE}")
    td = TraceDat(str(p), int(version), endian, long_size, page_size)
    if td.version == 6:
        _read_v6(c, td)
    else:
        _read_v7(c, td)
    _check_layout(td)
    return td, raw


MAX_CPUS = 1 << 16  # CPUs of a v6 file (its flyrecord table has an offset and size for each)
MAGIC_END = len(MAGIC) + 2  # (no section starts before the magic and the version)
MIN_PAGE, MAX_PAGE = 1 << 10, 1 << 24  # ring-buffer (sub-)buffer sizes taken (kernel pages are 4 to 64 KB)


def _check_layout(td: TraceDat) -> None:
    """The page layout the header_page gives must fit the pages: its timestamp, commit and data
    fields inside them; for a v6 file (one page size, no sub-buffers) its data field ends where the
    page ends (BUF_PAGE_SIZE is the page size less the header: kernel/trace/ring_buffer.c
    ring_buffer_print_page_header), so a damaged page size or header_page is an error, not pages
    read half."""
    hp = td.tracing.header_page
    if not hp:
        return
    ts, commit, data = hp.get("timestamp", (0, 8)), hp.get("commit", (8, td.long_size)), hp.get("data", (16, 0))
    where = "header_page"
    if ts != (0, 8) and not (0 <= ts[0] and ts[1] == 8 and ts[0] + 8 <= MIN_PAGE):
        raise InputError(td.path, f"header_page timestamp field at {ts[0]}, {ts[1]} bytes, is not a u64 in the page",
                         where)
    if commit[1] not in (4, 8) or not 0 <= commit[0] <= MIN_PAGE - commit[1]:
        raise InputError(td.path, f"header_page commit field at {commit[0]}, {commit[1]} bytes, is not a 4- or "
                                  "8-byte word in the page", where)
    if not 0 < data[0] < MIN_PAGE:
        raise InputError(td.path, f"header_page data field offset {data[0]} is not inside a page", where)
    pages = {b.page_size or td.page_size for b in td.buffers}
    if td.version == 6 and data[1] and data[0] + data[1] not in pages:
        raise InputError(td.path, f"page size {td.page_size} disagrees with the header_page (its data field ends at "
                                  f"{data[0] + data[1]})", "offset of the page size")


def _read_v6(c: Cursor, td: TraceDat) -> None:
    t = td.tracing
    tdmod.read_header_info(c, t)
    tdmod.read_ftrace_formats(c, t)
    tdmod.read_event_formats(c, t)
    tdmod.read_kallsyms(c, t)
    tdmod.read_printk(c, t)
    tdmod.read_cmdlines(c, t)
    td.ncpus = c.u32()
    if not 0 < td.ncpus <= MAX_CPUS:
        raise c.fail(f"CPU count {td.ncpus} (1 to {MAX_CPUS} taken)")
    c.what = "options"
    c.expect(b"options  \0", "options tag")
    extra_buffers: list[tuple[str, int]] = []
    while True:
        oid = c.u16()
        if oid == OPT_DONE:
            break
        size = c.u32()
        data = c.bytes(size)
        if oid == OPT_BUFFER:
            oc = Cursor(data, td.path, endian=td.endian, what="BUFFER option")
            off = oc.u64()
            extra_buffers.append((oc.cstr(), off))
        else:
            _option(td, oid, data)
    c.what = "flyrecord"
    kind = c.bytes(10)
    if kind == b"latency  \0":
        raise c.fail("latency-format trace.dat (text data) is not supported; use `trace-cmd report` text")
    if kind != b"flyrecord\0":
        raise c.fail(f"expected 'flyrecord', found {kind!r}")
    cpus = [CpuData(i, *c.unpack("QQ")) for i in range(td.ncpus)]
    td.buffers.append(Buffer("", td.options.get("clock"), cpus))
    for name, off in extra_buffers:
        if not MAGIC_END <= off < len(c.data):
            raise InputError(td.path, f"BUFFER option of instance {name!r}: offset {off} is not inside the file's "
                                      "data", "options")
        bc = Cursor(c.data, td.path, off, td.endian, what=f"buffer {name}")
        if bytes(c.data[off:off + 10]) == b"flyrecord\0":
            bc.pos += 10
        td.buffers.append(Buffer(name, td.options.get("clock"),
                                 [CpuData(i, *bc.unpack("QQ")) for i in range(td.ncpus)]))


def _section(c: Cursor, td: TraceDat, codec: _Codec, offset: int, want: int | None = None) -> Cursor:
    """Return a cursor over a v7 section's (decompressed) body."""
    sc = Cursor(c.data, td.path, offset, td.endian, what="section header")
    sid, flags, _sdesc, size = sc.unpack("HHIQ")
    if want is not None and sid != want:
        raise sc.fail(f"expected section id {want}, found {sid}")
    if flags & 1:
        csize, usize = sc.unpack("II")
        data = sc.bytes(csize)
        if usize > expansion_room(len(c.data)):
            raise sc.fail(f"section {sid}: {usize} bytes once decompressed is more than {MAX_EXPANSION} times the file")
        try:
            body = codec.decompress(data, usize)
        except _Corrupt as e:
            raise sc.fail(f"section {sid} does not decompress ({e})") from None
        if len(body) != usize:
            raise sc.fail(f"section {sid}: decompressed {len(body)} bytes, header says {usize}")
        return Cursor(body, td.path, 0, td.endian, base=offset, what=f"section {sid} (decompressed)")
    return Cursor(sc.bytes(size), td.path, 0, td.endian, base=sc.pos, what=f"section {sid}")


def _read_v7(c: Cursor, td: TraceDat) -> None:
    comp = c.cstr()
    c.cstr()  # codec version
    td.compression = comp
    codec = _Codec(comp, td.path)
    if not (next_opts := c.u64()):
        raise c.fail("the offset of the first options section is 0")
    seen: set[int] = set()
    readers = {SEC_HEADER_INFO: tdmod.read_header_info, SEC_FTRACE_EVENTS: tdmod.read_ftrace_formats,
               SEC_EVENT_FORMATS: tdmod.read_event_formats, SEC_KALLSYMS: tdmod.read_kallsyms,
               SEC_PRINTK: tdmod.read_printk, SEC_CMDLINES: tdmod.read_cmdlines}
    while next_opts:
        if next_opts in seen:
            raise InputError(td.path, f"the options sections loop back to offset {next_opts}", "options")
        seen.add(next_opts)
        oc = _section(c, td, codec, next_opts, 0)
        at, next_opts, done = next_opts, 0, False
        while oc.left >= 6:
            oid = oc.u16()
            size = oc.u32()
            data = oc.bytes(size)
            if oid == OPT_DONE:
                next_opts = Cursor(data, td.path, endian=td.endian).u64() if size >= 8 else 0
                done = True
                break
            if oid in readers:
                off = Cursor(data, td.path, endian=td.endian).u64()
                readers[oid](_section(c, td, codec, off, oid), td.tracing)
            elif oid == OPT_BUFFER:
                bc = Cursor(data, td.path, endian=td.endian, what="BUFFER option")
                sec_off = bc.u64()
                name = bc.cstr()
                clock = bc.cstr()
                # trace-cmd >= 3.x inserts the sub-buffer size before the CPU count (seen in
                # real v7 files; the v7 man page omits it): tell them apart by the length left
                sub_size = bc.u32() if bc.left % 20 == 8 else td.page_size
                count = bc.u32()
                cpus = []
                for _ in range(count):
                    cpu, off, sz = bc.unpack("IQQ")
                    cpus.append(CpuData(cpu, off, sz))
                td.buffers.append(Buffer(name, clock, cpus, sec_off, sub_size))
            elif oid == OPT_BUFFER_TEXT:
                raise oc.fail("latency-format (text) buffer in trace.dat is not supported")
            else:
                _option(td, oid, data)
        if not done:
            raise InputError(td.path, "options section ends without its DONE option", f"offset {at}")
    if not td.buffers:
        raise InputError(td.path, "no BUFFER option: the file has no CPU data", "options")
    td._codec = codec  # type: ignore[attr-defined]


def _option(td: TraceDat, oid: int, data: bytes) -> None:
    def s() -> str:
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")

    o = td.options
    if oid == OPT_DATE:
        o["date"] = s()
    elif oid == OPT_CPUSTAT:
        td.cpustat.append(s())
    elif oid == OPT_TRACECLOCK:
        o["trace_clock_file"] = s()
        sel = [w.strip("[]") for w in s().split() if w.startswith("[")]
        if sel:
            o["clock"] = sel[0]
    elif oid == OPT_UNAME:
        o["uname"] = s()
    elif oid == OPT_OFFSET:
        o["offset"] = s()
    elif oid == OPT_CPUCOUNT:
        o["cpucount"] = Cursor(data, td.path, endian=td.endian).u32()
    elif oid == OPT_VERSION:
        o["tracecmd_version"] = s()
    elif oid == OPT_TRACEID:
        o["trace_id"] = Cursor(data, td.path, endian=td.endian).u64()
    elif oid == OPT_TSC2NSEC:
        mult, shift, offset = Cursor(data, td.path, endian=td.endian, what="TSC2NSEC option").unpack("IIQ")
        if shift > 63:
            raise InputError(td.path, f"TSC2NSEC option: shift {shift} is more than 63", "options")
        o["tsc2nsec"] = {"mult": mult, "shift": shift, "offset": offset}
    elif oid == OPT_GUEST:
        gc = Cursor(data, td.path, endian=td.endian, what="GUEST option")
        name = gc.cstr()
        tid = gc.u64()
        n = gc.u32()
        vcpus = [dict(zip(("vcpu", "host_pid"), gc.unpack("II"), strict=True)) for _ in range(n)]
        o.setdefault("guests", []).append({"name": name, "trace_id": tid, "vcpus": vcpus})
    elif oid > OPT_BUFFER_TEXT:  # (ids up to it are trace-cmd's; HOOK, PROCMAPS, STRINGS carry nothing used here)
        o.setdefault("unknown_options", []).append(oid)
    elif oid == OPT_TIME_SHIFT:
        tc = Cursor(data, td.path, endian=td.endian, what="TIME_SHIFT option")
        peer, flags, ncpu = tc.unpack("QII")
        per_cpu = []
        for _ in range(ncpu):
            cnt = tc.u32()
            times = list(tc.unpack(f"{cnt}q"))
            offs = list(tc.unpack(f"{cnt}q"))
            scal = list(tc.unpack(f"{cnt}q"))
            per_cpu.append({"times": times, "offsets": offs, "scalings": scal, "fractions": [0] * cnt})
        for cpu in per_cpu:  # optional trailer: per-CPU scaling fraction bits (trace-cmd 3.x)
            if tc.left < 8 * len(cpu["times"]) or not cpu["times"]:
                break
            cpu["fractions"] = list(tc.unpack(f"{len(cpu['times'])}q"))
        o["time_shift"] = {"peer_trace_id": peer, "flags": flags, "cpus": per_cpu}


def _apply_meta(td: TraceDat, b: TraceBuilder) -> None:
    o = td.options
    uname = o.get("uname", "")
    if uname:
        parts = uname.split()
        b.meta.setdefault("kernel_release", parts[2] if len(parts) > 2 else uname)
        b.meta.setdefault("uname", uname)
    clock, unit, how = _clock_of(td)
    if o.get("cpucount") or td.ncpus:
        b.meta["cpus"] = max(b.meta.get("cpus") or 0, o.get("cpucount") or td.ncpus)
    version = o.get("tracecmd_version") or ""
    tool = version if version.startswith("vpmutrace") else "trace-cmd" + (f" {version}" if version else "")
    b.meta["inputs"].append({"path": td.path, "format": "trace.dat", "tool": tool,
                             "file_version": td.version, "compression": td.compression,
                             "size_bytes": Path(td.path).stat().st_size,
                             "instances": [x.name or "(top)" for x in td.buffers],
                             "trace_id": o.get("trace_id"), "guests": o.get("guests"),
                             "cpustat": td.cpustat, "uname": uname or None, "clock": clock, "time_unit": unit,
                             "time_source": how,
                             "date_option": o.get("date"), "offset_option": o.get("offset")})
    for oid in o.get("unknown_options", []):
        b.stats.add(td.path, "unparsed_record", "option", 1, f"option id {oid} is unknown to this reader (trace-cmd "
                                                            "defines ids up to 22): skipped")
    for i, text in enumerate(td.cpustat):
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "overrun" and v.strip().isdigit() and int(v) > 0:
                b.add_lost(td.path, "overrun", int(v), None, i, f"CPUSTAT cpu{i}")


def _clock_of(td: TraceDat) -> tuple[str, str, str]:
    """(clock, unit of the timestamps we emit, why): the clock of the buffers (v7: each buffer's own,
    else the TRACECLOCK option; the kernel's default "local" when the file names none). A TSC2NSEC
    option means the counts are scaled to ns while reading (``_to_ns``). The DATE and OFFSET
    options (wall-clock offsets trace-cmd report adds) are not applied: times stay on the trace
    clock, so that files of one host merge; they are kept in the input's meta."""
    names = {x.clock for x in td.buffers if x.clock and any(cd.size for cd in x.cpus)} or \
        {x.clock for x in td.buffers if x.clock}
    clock = o if (o := td.options.get("clock")) and (not names or o in names) else None
    clock = clock or (sorted(names)[0] if names else None)
    t2n = td.options.get("tsc2nsec")
    if t2n and t2n.get("mult"):
        return clock or "tsc2nsec", C.NS, \
            f"TSC2NSEC option (mult {t2n['mult']}, shift {t2n['shift']}) as trace-cmd applies it"
    if clock is None:
        return "local", C.NS, "the file records no clock: the kernel's default, local, assumed"
    known = C.clock(clock)
    if known is None:
        return clock, C.UNKNOWN_TICKS, f"clock {clock!r} is not a known trace clock: its unit is unknown"
    return clock, known.unit, f"clock {clock}: {known.what}"


Chunks = list[tuple[int, int, int]]  # (file offset, compressed size, uncompressed size) of each chunk


def _cpu_chunks(raw: bytes, td: TraceDat, cd: CpuData, b: TraceBuilder | None = None,
                page_size: int = 0) -> Chunks | int:
    """Where one CPU's ring-buffer pages are: for a compressed file its chunks (file offset,
    compressed size, uncompressed size); else how many bytes of them stand at ``cd.offset``.
    A file cut short keeps the whole pages/chunks before the cut."""
    if cd.size == 0:
        return 0
    short = cd.offset + cd.size > len(raw)
    if short and b is not None:
        b.stats.add(td.path, "partial", f"cpu{cd.cpu}", 1,
                    f"offset {cd.offset}: CPU {cd.cpu} data ends at {cd.offset + cd.size}, past the end of "
                    f"the file ({len(raw)} bytes); reading what is there")
    if td.version == 7 and td.compression != "none":
        c = Cursor(memoryview(raw), td.path, cd.offset, td.endian, what=f"cpu{cd.cpu} chunks")
        chunks = []
        try:
            for _ in range(c.u32()):
                csize, usize = c.unpack("II")
                c.need(csize)
                chunks.append((c.pos, csize, usize))
                c.pos += csize
        except InputError:
            if not short:
                raise
        if sum(u for _, _, u in chunks) > expansion_room(len(raw)):
            raise InputError(td.path, f"cpu{cd.cpu} chunks expand to more than {MAX_EXPANSION} times the file",
                             f"offset {cd.offset}")
        if not short and c.pos - cd.offset < cd.size and b is not None:
            b.stats.add(td.path, "unparsed_record", f"cpu{cd.cpu}", 1,
                        f"offset {c.pos}: CPU {cd.cpu} chunks end {c.pos - cd.offset} bytes into its "
                        f"{cd.size} bytes of data; the rest is not read")
        return chunks
    avail = max(0, min(cd.size, len(raw) - cd.offset))
    page = page_size or td.page_size
    if avail % page and b is not None:  # (pages are read whole: bytes past the last whole page are not)
        b.stats.add(td.path, "truncated", f"cpu{cd.cpu}", 1,
                    f"offset {cd.offset + avail - avail % page}: CPU {cd.cpu} data ends {avail % page} bytes into "
                    "a page; that page is not read")
    return avail - avail % page


def _decompress_into(raw: bytes, td: TraceDat, cd: CpuData, chunks: Chunks, out: np.ndarray, at: int,
                     codec: _Codec | None = None) -> None:
    """Each chunk decompressed straight to its place in ``out`` (from ``at``): no list of pieces
    to join, each piece's memory reused for the next."""
    codec = codec or td._codec  # type: ignore[attr-defined]
    for chunk in chunks:
        usize = chunk[2]
        out[at:at + usize] = np.frombuffer(chunk_bytes(raw, td, cd, chunk, codec), dtype=np.uint8)
        at += usize


def chunk_bytes(raw: Any, td: TraceDat, cd: CpuData, chunk: tuple[int, int, int], codec: _Codec) -> bytes:
    """One compressed chunk of a CPU's pages, decompressed; one-line errors when it does not
    decompress or not to the size its header says."""
    off, csize, usize = chunk
    try:
        piece = codec.decompress(memoryview(raw)[off:off + csize], usize)
    except _Corrupt as e:  # corrupt chunk
        raise InputError(td.path, f"cpu{cd.cpu} chunk does not decompress ({e})", f"offset {off}") from None
    if len(piece) != usize:
        raise InputError(td.path, f"cpu{cd.cpu} chunk decompresses to {len(piece)} bytes, its header says "
                                  f"{usize}", f"offset {off}")
    return piece


def _cpu_bytes(raw: bytes, td: TraceDat, cd: CpuData, b: TraceBuilder | None = None) -> np.ndarray:
    """One CPU's ring-buffer pages as one array (see _cpu_chunks)."""
    got = _cpu_chunks(raw, td, cd, b)
    if isinstance(got, list):
        out = np.empty(sum(u for _, _, u in got), dtype=np.uint8)
        _decompress_into(raw, td, cd, got, out, 0)
        return out
    return np.frombuffer(raw, dtype=np.uint8, count=got, offset=cd.offset) if got else np.zeros(0, np.uint8)


def _buffer_bytes(raw: bytes, td: TraceDat, buf: Buffer, b: TraceBuilder) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All CPUs' pages of one buffer in one array, and where each CPU's pages start in it and how
    long they are: the file itself when uncompressed, else every CPU's chunks decompressed into
    one array."""
    got = [_cpu_chunks(raw, td, cd, b, buf.page_size) for cd in buf.cpus]
    if not any(isinstance(g, list) for g in got):
        return np.frombuffer(raw, dtype=np.uint8), [(cd.offset if g else 0, int(g))
                                                    for cd, g in zip(buf.cpus, got, strict=True)]
    sizes = [sum(u for _, _, u in g) if isinstance(g, list) else 0 for g in got]
    out = scratch(sum(sizes), np.uint8)  # (given back as the payloads are decoded: payloads.emit_payloads)
    spans, at = [], 0
    tasks: list[tuple[CpuData, Chunks, int]] = []  # runs of chunks, each decompressed by one thread
    step = max(1, sum(sizes) // (4 * kernels.threads()))
    for cd, g, size in zip(buf.cpus, got, sizes, strict=True):
        if isinstance(g, list):
            run: Chunks = []
            run_at, run_size = at, 0
            for chunk in g:
                run.append(chunk)
                run_size += chunk[2]
                if run_size >= step:
                    tasks.append((cd, run, run_at))
                    run_at += run_size
                    run, run_size = [], 0
            if run:
                tasks.append((cd, run, run_at))
        spans.append((at, size))
        at += size
    # zlib and zstd decompress without the GIL: the runs go to threads, each with its own codec
    with ThreadPoolExecutor(kernels.threads()) as pool:
        list(pool.map(lambda t: _decompress_into(raw, td, t[0], t[1], out, t[2], _Codec(td.compression, td.path)),
                      tasks))
    return out, spans


def _to_ns(ts: np.ndarray, td: TraceDat) -> np.ndarray:
    """Ring-buffer timestamps in ns: with a TSC2NSEC option (recorded with --tsc2nsec) the counts are
    scaled by its mult/shift, after any guest time shift, as trace-cmd's timestamp_calc() does; its
    offset field is not added there either."""
    t2n = td.options.get("tsc2nsec")
    if t2n and t2n["mult"]:
        return C.ticks_to_ns(ts, t2n["mult"], t2n["shift"])
    return ts.astype(np.int64, copy=False)


TSYNC_FLAG_INTERPOLATE = 0x1  # trace-cmd tsync: interpolate offsets between samples


@dataclass
class TimeShift:
    """A guest file's TIME_SHIFT samples: guest clock -> host clock, per guest CPU.

    Rule (trace-cmd's host sync): one sample -> ts + offset; otherwise take the pair of
    samples around ts (the first/last pair outside them), scale ts by the earlier sample
    (ts * scaling >> fraction) and add its offset, interpolated linearly to the later
    sample's offset when the INTERPOLATE flag is set (rounded to nearest).
    """

    flags: int
    cpus: list[dict[str, list[int]]]

    def apply(self, cpu: int, ts: np.ndarray) -> np.ndarray:
        if cpu >= len(self.cpus) or not self.cpus[cpu]["times"]:
            return ts
        c = self.cpus[cpu]
        t = np.asarray(c["times"], dtype=np.int64)
        off = np.asarray(c["offsets"], dtype=np.int64)
        scal = np.asarray(c["scalings"], dtype=np.int64)
        frac = np.asarray(c["fractions"], dtype=np.int64)
        ts = ts.astype(np.int64)
        if len(t) == 1:
            return ts + off[0]
        i = np.clip(np.searchsorted(t, ts, side="right") - 1, 0, len(t) - 2)
        if self.flags & TSYNC_FLAG_INTERPOLATE:
            delta = t[i + 1] - t[i]
            num = (ts - t[i]) * (off[i + 1] - off[i]) + delta // 2
            cor = off[i] + np.where(num >= 0, num // delta, -((-num) // delta))  # C division truncates
        else:
            cor = off[i]
        scaled = np.where((scal[i] == 1) & (frac[i] == 0), ts, (ts * scal[i]) >> frac[i])
        return scaled + cor


def _emit(raw: bytes, td: TraceDat, b: TraceBuilder, source: str, shift: TimeShift | None = None) -> None:
    """Each buffer's events of all CPUs at once, in time order (ties in file order: CPU by CPU),
    so that the tables come out sorted."""
    t = td.tracing
    seq_base = 0
    for buf in td.buffers:
        src = buffer_source(source, buf)
        data, spans = _buffer_bytes(raw, td, buf, b)
        walk = walk_spans(data, spans, buf.page_size or td.page_size, t.header_page, td.endian == ">")
        for k, cd in enumerate(buf.cpus):
            _page_notes(td, b, cd.cpu, walk.page_lost[k], walk.page_ts[k], walk.corrupt_pages[k], shift)
            part = walk.ts[walk.runs[k]:walk.runs[k + 1]]
            ns = _to_ns(shift.apply(cd.cpu, part) if shift is not None else part, td)
            if ns is not part:
                part[:] = ns
        n = len(walk.offsets)
        if n:
            recs = Records(walk.offsets, walk.lengths, walk.ts, walk.types, walk.runs,
                           np.array([cd.cpu for cd in buf.cpus], dtype=np.int64))
            del walk
            emit_payloads(b, td.path, src, data, recs, t.formats, td.endian, t.cmdlines, t.kallsyms,
                          seq_base=seq_base)
        seq_base += n


def buffer_source(source: str, buf: Buffer) -> str:
    """The source of a buffer's rows: an instance's carry its name, as `trace-cmd report` prefixes them."""
    return (f"{source}:{buf.name}" if source != "host" else buf.name) if buf.name else source


def _page_notes(td: TraceDat, b: TraceBuilder, cpu: int, page_lost: np.ndarray, page_ts: np.ndarray, corrupt: int,
                shift: TimeShift | None, first_page: int = 0) -> None:
    """One CPU's lost-events notices (at the time of the page they were lost before) and its pages
    with a bad commit size or event length, counted (``first_page``: the CPU's page number of the
    first of ``page_lost``)."""
    lost_pages = np.nonzero(page_lost)[0]
    if len(lost_pages):
        # the events were lost before the page: its header time closes the gap
        pts = page_ts[lost_pages]
        pts = _to_ns(shift.apply(cpu, pts) if shift is not None else pts, td)
        for page, when in zip(lost_pages.tolist(), pts.tolist(), strict=True):
            lost = int(page_lost[page])
            b.add_lost(td.path, "missing_events", lost if lost > 0 else None, int(when), cpu,
                       f"cpu{cpu} page {first_page + page}")
    if corrupt:
        count_bad_pages(td, b, cpu, corrupt)


def count_bad_pages(td: TraceDat, b: TraceBuilder, cpu: int, pages: int) -> None:
    b.stats.add(td.path, "unparsed_record", f"cpu{cpu}", pages,
                f"cpu{cpu}: {pages} page(s) with a bad commit size or event length")


def content_of(path: str | Path) -> TraceDatContent:
    """Everything needed to write the same trace again (for re-encoding: v6/v7, other codecs)."""
    b = TraceBuilder()
    td = read_trace_dat(path, b)
    raw = Path(path).read_bytes()
    r = td.tracing.raw
    buffers = [BufferData(x.name, x.clock or td.options.get("clock") or "local",
                          {cd.cpu: _cpu_bytes(raw, td, cd).tobytes() for cd in x.cpus}) for x in td.buffers]
    return TraceDatContent(
        page_size=td.page_size, header_page=r.get("header_page", b""), header_event=r.get("header_event", b""),
        ftrace_formats=list(r["ftrace"]), event_formats=dict(r["events"]), kallsyms=r.get("kallsyms", b""),
        printk=r.get("printk", b""), cmdlines=r.get("cmdlines", b""), buffers=buffers,
        uname=td.options.get("uname", ""), trace_clock=td.options.get("trace_clock_file", ""),
        cpustat=list(td.cpustat), cpucount=td.options.get("cpucount") or td.ncpus,
        tool_version=td.options.get("tracecmd_version", ""), long_size=td.long_size)
