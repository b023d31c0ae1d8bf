"""Write file-mode perf.data with tracepoint samples (what `perf record -e sys:event` produces).

Used to hand simulated or converted events to perf's own tools (e.g. `perf kvm stat
report`) and to our reader. Layout per tools/perf/Documentation/perf.data-file-format.txt:
header, attrs (perf_event_attr + id section), data (PERF_RECORD_SAMPLE with IDENTIFIER,
TID, TIME, CPU, PERIOD, RAW), then the feature sections TRACING_DATA (the format files
that describe the RAW payloads), OSRELEASE, ARCH, NRCPUS, CPUID and EVENT_DESC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpmutrace.formats.event_format import EventFormat

PERF_TYPE_TRACEPOINT = 2
ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
S_TID, S_TIME, S_CPU, S_PERIOD, S_RAW, S_IDENTIFIER = 2, 4, 128, 256, 1024, 1 << 16
SAMPLE_TYPE = S_IDENTIFIER | S_TID | S_TIME | S_CPU | S_PERIOD | S_RAW
FLAG_SAMPLE_ID_ALL = 1 << 18
FEAT_TRACING_DATA, FEAT_OSRELEASE, FEAT_ARCH, FEAT_NRCPUS, FEAT_CPUID, FEAT_EVENT_DESC = 1, 4, 6, 7, 9, 12
REC_SAMPLE, REC_COMM = 9, 3

_C = {"u8": "B", "s8": "b", "u16": "H", "s16": "h", "u32": "I", "s32": "i", "u64": "Q", "s64": "q"}


def pack_payload(fmt: EventFormat, values: dict[str, Any], pid: int) -> bytes:
    """The binary record of one event, laid out by its format (common fields included)."""
    buf = bytearray(fmt.record_size)
    vals = {"common_type": fmt.id, "common_flags": 0, "common_preempt_count": 0, "common_pid": pid, **values}
    for f in fmt.common_fields + fmt.fields:
        v = vals.get(f.name, 0)
        if f.array_len is not None or f.data_loc or f.rel_loc:
            data = v if isinstance(v, bytes) else str(v).encode()
            buf[f.offset:f.offset + f.size] = data[:f.size].ljust(f.size, b"\0")
            continue
        code = {1: "b", 2: "h", 4: "i", 8: "q"}[f.size]
        code = code if f.signed else code.upper()
        mask = (1 << (8 * f.size)) - 1
        iv = int(v) & mask
        if f.signed and iv >> (8 * f.size - 1):
            iv -= 1 << (8 * f.size)
        struct.pack_into("<" + code, buf, f.offset, iv)
    return bytes(buf)


def perf_string(s: str) -> bytes:
    """A perf header string: u32 length (NAME_ALIGN 64) then the NUL-padded text."""
    data = s.encode() + b"\0"
    n = (len(data) + 63) // 64 * 64  # NAME_ALIGN
    return struct.pack("<I", n) + data.ljust(n, b"\0")


@dataclass
class PerfDataContent:
    formats: dict[str, EventFormat]  # "sys:name" -> format (their ids become attr.config)
    format_texts: dict[str, bytes]  # "sys:name" -> the format file text
    header_page: bytes
    header_event: bytes
    samples: list[tuple[int, int, int, str, bytes]] = field(default_factory=list)  # ts, cpu, tid, event, payload
    os_release: str = "6.18.0"
    cpuid: str = "GenuineIntel,6,143,8"
    nr_cpus: int = 2
    comms: dict[int, str] = field(default_factory=dict)
    tgids: dict[int, int] = field(default_factory=dict)  # thread id -> process id (default: itself)
    renames: list[tuple[int, int, str]] = field(default_factory=list)  # ts, tid, new name (prctl/exec)


def tracing_data(header_page: bytes, header_event: bytes, format_texts: dict[str, bytes], cmdlines: bytes = b"",
                 page_size: int = 4096) -> bytes:
    """The HEADER_TRACING_DATA feature: tracing data version 0.6 as perf writes it
    (tools/perf/util/trace-event-info.c: header page and event, ftrace formats (none here), the
    event formats by system, kallsyms and printk (empty), saved cmdlines)."""
    out = b"\x17\x08\x44tracing" + b"0.6\0" + bytes([0, 8]) + struct.pack("<I", page_size)
    out += b"header_page\0" + struct.pack("<Q", len(header_page)) + header_page
    out += b"header_event\0" + struct.pack("<Q", len(header_event)) + header_event
    out += struct.pack("<I", 0)  # no ftrace formats
    systems: dict[str, list[bytes]] = {}
    for name, text in format_texts.items():
        systems.setdefault(name.split(":")[0], []).append(text)
    out += struct.pack("<I", len(systems))
    for system, texts in systems.items():
        out += system.encode() + b"\0" + struct.pack("<I", len(texts))
        out += b"".join(struct.pack("<Q", len(t)) + t for t in texts)
    out += struct.pack("<I", 0) + struct.pack("<I", 0)  # kallsyms, printk
    return out + struct.pack("<Q", len(cmdlines)) + cmdlines


def _tracing_data(c: PerfDataContent) -> bytes:
    cmd = "".join(f"{pid} {name}\n" for pid, name in sorted(c.comms.items())).encode()
    return tracing_data(c.header_page, c.header_event, c.format_texts, cmd)


def feature_sections(feats: dict[int, bytes], table_off: int) -> tuple[bytes, list[int]]:
    """The feature section table (one perf_file_section per feature, in bit order) followed by the
    features' contents, placed at ``table_off`` (the end of the data section); and the header's
    four 64-bit feature flag words."""
    bits = sorted(feats)
    pos = table_off + 16 * len(bits)
    table = b""
    payloads = b""
    for b in bits:
        table += struct.pack("<QQ", pos, len(feats[b]))
        payloads += feats[b]
        pos += len(feats[b])
    flags = [0, 0, 0, 0]
    for b in bits:
        flags[b // 64] |= 1 << (b % 64)
    return table + payloads, flags


def _attr(config: int) -> bytes:
    a = bytearray(ATTR_SIZE)
    struct.pack_into("<IIQQQQQ", a, 0, PERF_TYPE_TRACEPOINT, ATTR_SIZE, config, 1, SAMPLE_TYPE, 0,
                     FLAG_SAMPLE_ID_ALL)
    return bytes(a)


def write_perf_data(path: str | Path, c: PerfDataContent) -> Path:
    names = list(c.formats)
    ids = {n: 1000 + i for i, n in enumerate(names)}
    attrs_off = 104
    id_area = attrs_off + len(names) * (ATTR_SIZE + 16)
    attr_blob = b"".join(_attr(c.formats[n].id) + struct.pack("<QQ", id_area + 8 * i, 8) for i, n in enumerate(names))
    id_blob = b"".join(struct.pack("<Q", ids[n]) for n in names)
    data = bytearray()
    first_id = ids[names[0]] if names else 0
    def comm_record(ts: int, tid: int, comm: str) -> bytes:
        name = comm.encode()[:15] + b"\0"
        name += bytes((-len(name)) % 8)
        pid = c.tgids.get(tid, tid)
        trailer = struct.pack("<IIQIIQ", pid, tid, ts, 0, 0, first_id)  # sample_id_all: TID, TIME, CPU, IDENTIFIER
        body = struct.pack("<II", pid, tid) + name + trailer
        return struct.pack("<IHH", REC_COMM, 0, 8 + len(body)) + body

    for tid, comm in sorted(c.comms.items()):  # thread names, as perf synthesizes them at start
        data += comm_record(0, tid, comm)
    records: list[tuple[int, int, bytes]] = [(ts, 0, comm_record(ts, tid, name)) for ts, tid, name in c.renames]
    for ts, cpu, tid, ev, payload in c.samples:
        raw = payload + bytes((-(4 + len(payload))) % 8)  # keep the record u64-aligned
        body = struct.pack("<QIIQIIQI", ids[ev], c.tgids.get(tid, tid), tid, ts, cpu, 0, 1, len(raw)) + raw
        records.append((ts, 1, struct.pack("<IHH", REC_SAMPLE, 0, 8 + len(body)) + body))
    for _ts, _kind, rec in sorted(records, key=lambda r: (r[0], r[1])):
        data += rec
    data_off = id_area + len(id_blob)
    feats = {
        FEAT_TRACING_DATA: _tracing_data(c),
        FEAT_OSRELEASE: perf_string(c.os_release),
        FEAT_ARCH: perf_string("x86_64"),
        FEAT_NRCPUS: struct.pack("<II", c.nr_cpus, c.nr_cpus),
        FEAT_CPUID: perf_string(c.cpuid),
        FEAT_EVENT_DESC: struct.pack("<II", len(names), ATTR_SIZE) + b"".join(
            _attr(c.formats[n].id) + struct.pack("<I", 1) + perf_string(n) + struct.pack("<Q", ids[n])
            for n in names),
    }
    tail, flags = feature_sections(feats, data_off + len(data))
    header = b"PERFILE2" + struct.pack("<QQ", 104, ATTR_SIZE + 16) + struct.pack(
        "<QQQQQQ", attrs_off, len(attr_blob), data_off, len(data), 0, 0) + struct.pack("<4Q", *flags)
    p = Path(path)
    p.write_bytes(header + attr_blob + id_blob + bytes(data) + tail)
    return p
