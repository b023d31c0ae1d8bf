"""Write trace-cmd ``trace.dat`` files (v6, or v7 with none/zlib/zstd compression).

Used by the tracefs capture backend (raw ring-buffer pages read from
``per_cpu/cpuN/trace_pipe_raw``) and to re-encode files. Layout follows
trace-cmd.dat.v6(5)/v7(5) and what trace-cmd 3.1 itself writes: in v7, the
metadata sections, then an OPTIONS section, the flyrecord section, and a STRINGS
section holding the section descriptions (trace-cmd finds it by walking the
sections in order, so sections are contiguous).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"\x17\x08\x44tracing"
PAGES_IN_CHUNK = 10  # trace-cmd's compression chunk (trace-output.c)


@dataclass
class BufferData:
    name: str  # "" = top instance
    clock: str
    cpus: dict[int, bytes]  # cpu -> whole ring-buffer pages


@dataclass
class TraceDatContent:
    page_size: int
    header_page: bytes
    header_event: bytes
    ftrace_formats: list[bytes] = field(default_factory=list)
    event_formats: dict[str, list[bytes]] = field(default_factory=dict)
    kallsyms: bytes = b""
    printk: bytes = b""
    cmdlines: bytes = b""
    buffers: list[BufferData] = field(default_factory=list)
    uname: str = ""
    trace_clock: str = ""  # content of the trace_clock file, e.g. "[local] global ..."
    cpustat: list[str] = field(default_factory=list)
    cpucount: int = 0
    tool_version: str = ""
    long_size: int = 8
    trace_id: int | None = None
    guests: list[dict] = field(default_factory=list)  # name, trace_id, vcpus [{vcpu, host_pid}]
    time_shift: dict | None = None  # peer_trace_id, flags, cpus [{times, offsets, scalings, fractions}]
    tsc2nsec: tuple[int, int, int] | None = None  # mult, shift, offset


class _Compressor:
    def __init__(self, name: str) -> None:
        self.name = name
        if name == "zstd":
            import zstandard

            self._z = zstandard.ZstdCompressor()
            self.version = ".".join(map(str, zstandard.ZSTD_VERSION))
        elif name == "zlib":
            self.version = zlib.ZLIB_VERSION
        elif name == "none":
            self.version = ""
        else:
            raise ValueError(f"unknown compression {name!r} (none, zlib, zstd)")

    def __call__(self, data: bytes) -> bytes:
        return self._z.compress(data) if self.name == "zstd" else zlib.compress(data)


def _meta_blocks(c: TraceDatContent) -> dict[int, bytes]:
    header = (b"header_page\0" + struct.pack("<Q", len(c.header_page)) + c.header_page
              + b"header_event\0" + struct.pack("<Q", len(c.header_event)) + c.header_event)
    ftrace = struct.pack("<I", len(c.ftrace_formats)) + b"".join(
        struct.pack("<Q", len(f)) + f for f in c.ftrace_formats)
    events = struct.pack("<I", len(c.event_formats))
    for system, fmts in c.event_formats.items():
        events += system.encode() + b"\0" + struct.pack("<I", len(fmts))
        events += b"".join(struct.pack("<Q", len(f)) + f for f in fmts)
    return {16: header, 17: ftrace, 18: events, 19: struct.pack("<I", len(c.kallsyms)) + c.kallsyms,
            20: struct.pack("<I", len(c.printk)) + c.printk, 21: struct.pack("<Q", len(c.cmdlines)) + c.cmdlines}


def _opt(oid: int, data: bytes) -> bytes:
    return struct.pack("<HI", oid, len(data)) + data


def _common_start(c: TraceDatContent, version: int) -> bytes:
    return MAGIC + str(version).encode() + b"\0" + bytes([0, c.long_size]) + struct.pack("<I", c.page_size)


def _simple_options(c: TraceDatContent) -> bytes:
    out = b""
    if c.trace_clock:
        out += _opt(4, c.trace_clock.encode() + b"\0")
    if c.uname:
        out += _opt(5, c.uname.encode() + b"\0")
    if c.tool_version:
        out += _opt(9, c.tool_version.encode() + b"\0")
    for s in c.cpustat:
        out += _opt(2, s.encode() + b"\0")
    if c.cpucount:
        out += _opt(8, struct.pack("<I", c.cpucount))
    if c.trace_id is not None:
        out += _opt(11, struct.pack("<Q", c.trace_id))
    if c.tsc2nsec is not None:
        out += _opt(14, struct.pack("<IIQ", *c.tsc2nsec))
    for g in c.guests:
        body = g["name"].encode() + b"\0" + struct.pack("<QI", g["trace_id"], len(g["vcpus"]))
        body += b"".join(struct.pack("<II", v["vcpu"], v["host_pid"]) for v in g["vcpus"])
        out += _opt(13, body)
    if c.time_shift:
        t = c.time_shift
        body = struct.pack("<QII", t["peer_trace_id"], t["flags"], len(t["cpus"]))
        for cpu in t["cpus"]:
            n = len(cpu["times"])
            body += struct.pack(f"<I{n}q{n}q{n}q", n, *cpu["times"], *cpu["offsets"], *cpu["scalings"])
        for cpu in t["cpus"]:
            body += struct.pack(f"<{len(cpu['times'])}q", *cpu.get("fractions", [0] * len(cpu["times"])))
        out += _opt(12, body)
    return out


def write_trace_dat(path: str | Path, c: TraceDatContent, version: int = 7, compression: str = "zstd") -> Path:
    p = Path(path)
    if version == 6:
        data = _v6(c)
    elif version == 7:
        data = _v7(c, _Compressor(compression))
    else:
        raise ValueError("trace.dat version must be 6 or 7")
    p.write_bytes(data)
    return p


def _ncpus(c: TraceDatContent) -> int:
    return max([c.cpucount] + [max(b.cpus, default=-1) + 1 for b in c.buffers])


def _v6(c: TraceDatContent) -> bytes:
    m = _meta_blocks(c)
    out = bytearray(_common_start(c, 6))
    for k in (16, 17, 18, 19, 20, 21):
        out += m[k]
    ncpu = _ncpus(c)
    out += struct.pack("<I", ncpu)
    out += b"options  \0"
    top = next((b for b in c.buffers if b.name == ""), None)
    others = [b for b in c.buffers if b is not top]
    # v6 BUFFER option: u64 offset of that instance's per-CPU table, then its name
    opts_fixed = _simple_options(c)
    buf_opt_sizes = [6 + 8 + len(b.name) + 1 for b in others]
    pos_after_opts = len(out) + len(opts_fixed) + sum(buf_opt_sizes) + 2 + 10 + 16 * ncpu
    tables_at = []
    for _b in others:  # each instance: "flyrecord\0" + its per-CPU table (trace-cmd reads it like the top one)
        tables_at.append(pos_after_opts)
        pos_after_opts += 10 + 16 * ncpu
    out += opts_fixed
    for b, at in zip(others, tables_at, strict=True):
        out += _opt(3, struct.pack("<Q", at) + b.name.encode() + b"\0")
    out += struct.pack("<H", 0)
    order = ([top] if top else [None]) + others
    table_pos = []
    for _ in order:
        out += b"flyrecord\0"
        table_pos.append(len(out))
        out += bytes(16 * ncpu)
    assert table_pos[1:] == [t + 10 for t in tables_at], (table_pos, tables_at)
    for i, b in enumerate(order):
        for cpu in range(ncpu):
            pages = b.cpus.get(cpu, b"") if b else b""
            pad = (-len(out)) % c.page_size
            out += bytes(pad)
            off = len(out) if pages else 0
            out += pages
            struct.pack_into("<QQ", out, table_pos[i] + 16 * cpu, off, len(pages))
    return bytes(out)


class _Strings:
    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, s: str) -> int:
        off = len(self.data)
        self.data += s.encode() + b"\0"
        return off


def _section(sid: int, desc: int, body: bytes, comp: _Compressor) -> bytes:
    if comp.name == "none":
        return struct.pack("<HHIQ", sid, 0, desc, len(body)) + body
    cdata = comp(body)
    payload = struct.pack("<II", len(cdata), len(body)) + cdata
    return struct.pack("<HHIQ", sid, 1, desc, len(payload)) + payload


def _cpu_stream(pages: bytes, page_size: int, comp: _Compressor) -> bytes:
    if comp.name == "none":
        return pages
    chunk = page_size * PAGES_IN_CHUNK
    parts = [pages[i:i + chunk] for i in range(0, len(pages), chunk)]
    out = struct.pack("<I", len(parts))
    for part in parts:
        cdata = comp(part)
        out += struct.pack("<II", len(cdata), len(part)) + cdata
    return out


def _v7(c: TraceDatContent, comp: _Compressor) -> bytes:
    names = {16: "headers", 17: "ftrace events", 18: "events format", 19: "kallsyms", 20: "printk",
             21: "command lines"}
    strings = _Strings()
    m = _meta_blocks(c)
    out = bytearray(_common_start(c, 7))
    out += comp.name.encode() + b"\0" + comp.version.encode() + b"\0"
    opts_ptr = len(out)
    out += bytes(8)
    meta_off: dict[int, int] = {}
    for k in (16, 17, 18, 19, 20, 21):
        meta_off[k] = len(out)
        out += _section(k, strings.add(names[k]), m[k], comp)
    opts = b"".join(_opt(k, struct.pack("<Q", v)) for k, v in meta_off.items()) + _simple_options(c)
    # one flyrecord section per buffer, placed after the options; BUFFER options point to them
    buf_opt_len = [6 + 8 + len(b.name) + 1 + len(b.clock) + 1 + 8 + 20 * len(b.cpus) for b in c.buffers]
    opt_section_len = 16  # the options section is written uncompressed
    opts_body_len = len(opts) + sum(buf_opt_len) + 6 + 8
    pos = len(out) + opt_section_len + opts_body_len
    fly: list[tuple[int, bytes, list[tuple[int, int, int]]]] = []
    for b in c.buffers:
        desc = strings.add(f"buffer {b.name}" if b.name else "flyrecord")
        start = pos
        data = bytearray()
        cpus: list[tuple[int, int, int]] = []
        hdr_len = 16
        for cpu in sorted(b.cpus):
            pad = (-(start + hdr_len + len(data))) % c.page_size
            data += bytes(pad)
            stream = _cpu_stream(b.cpus[cpu], c.page_size, comp)
            cpus.append((cpu, start + hdr_len + len(data), len(stream)))
            data += stream
        flags = 1 if comp.name != "none" else 0
        sec = struct.pack("<HHIQ", 3, flags, desc, len(data)) + data
        fly.append((start, sec, cpus))
        pos += len(sec)
    buf_opts = b""
    for b, (start, _sec, cpus) in zip(c.buffers, fly, strict=True):
        body = struct.pack("<Q", start) + b.name.encode() + b"\0" + b.clock.encode() + b"\0"
        body += struct.pack("<II", c.page_size, len(cpus))
        body += b"".join(struct.pack("<IQQ", cpu, off, size) for cpu, off, size in cpus)
        buf_opts += _opt(3, body)
    opt_body = opts + buf_opts + _opt(0, struct.pack("<Q", 0))
    assert len(opt_body) == opts_body_len, (len(opt_body), opts_body_len)
    struct.pack_into("<Q", out, opts_ptr, len(out))
    odesc = strings.add("options")
    out += struct.pack("<HHIQ", 0, 0, odesc, len(opt_body)) + opt_body
    for start, sec, _cpus in fly:
        assert len(out) == start, (len(out), start)
        out += sec
    sdesc = strings.add("strings")
    out += _section(15, sdesc, bytes(strings.data), comp)
    return bytes(out)
