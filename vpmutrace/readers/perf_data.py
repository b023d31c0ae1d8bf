"""perf.data reader (file and pipe mode), per tools/perf/Documentation/perf.data-file-format.txt
and include/uapi/linux/perf_event.h.

Tracepoint samples (attr.type == PERF_TYPE_TRACEPOINT) have their RAW payload
decoded with the format files of the file's own HEADER_TRACING_DATA; other samples
go to the ``samples`` table. LOST, LOST_SAMPLES and THROTTLE records go to the
``lost`` table. A file whose header says data size 0 (``perf record`` killed) or
whose last record is cut off is salvaged up to the damage and reported as partial.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpmutrace import clocks as C
from vpmutrace import kernels
from vpmutrace.errors import InputError
from vpmutrace.formats import perf_abi as abi
from vpmutrace.formats.perf_abi import (
    REC_COMM,
    REC_FORK,
    REC_HEADER_ATTR,
    REC_HEADER_FEATURE,
    REC_HEADER_TRACING_DATA,
    REC_LOST,
    REC_LOST_SAMPLES,
    REC_SAMPLE,
    REC_THROTTLE,
    REC_UNTHROTTLE,
)
from vpmutrace.formats.perf_names import event_name
from vpmutrace.readers import perf_maps
from vpmutrace.readers import perf_samples as ps
from vpmutrace.readers import tracing_data as tdmod
from vpmutrace.readers.binio import Cursor, expansion_room, map_file, release_pages
from vpmutrace.readers.perf_expand import COMPRESSED_TYPES, Expansion
from vpmutrace.readers.perf_samples import CPUMODES, PERF_TYPE_TRACEPOINT
from vpmutrace.schema import I32_MAX, I64_MAX
from vpmutrace.tracedata import TraceBuilder

__all__ = ["CPUMODES", "REC_SAMPLE", "PerfFile", "read_perf_data", "walk"]

FEAT_TRACING_DATA, FEAT_BUILD_ID = 1, 2
FEAT_HOSTNAME, FEAT_OSRELEASE, FEAT_VERSION, FEAT_ARCH, FEAT_NRCPUS = 3, 4, 5, 6, 7
FEAT_CPUDESC, FEAT_CPUID, FEAT_TOTAL_MEM, FEAT_CMDLINE, FEAT_EVENT_DESC = 8, 9, 10, 11, 12
FEAT_PMU_MAPPINGS, FEAT_CLOCKID, FEAT_COMPRESSED, FEAT_CPU_PMU_CAPS, FEAT_HYBRID_TOPOLOGY, FEAT_PMU_CAPS = \
    16, 23, 27, 28, 30, 31

# record types (perf_event.h, tools/lib/perf/include/perf/event.h): the ones that carry
# meaning for us are decoded; the rest (maps, symbols, stat, aux) are counted in meta only
RECORD_NAMES = {
    1: "MMAP", 2: "LOST", 3: "COMM", 4: "EXIT", 5: "THROTTLE", 6: "UNTHROTTLE", 7: "FORK", 8: "READ",
    9: "SAMPLE", 10: "MMAP2", 11: "AUX", 12: "ITRACE_START", 13: "LOST_SAMPLES", 14: "SWITCH",
    15: "SWITCH_CPU_WIDE", 16: "NAMESPACES", 17: "KSYMBOL", 18: "BPF_EVENT", 19: "CGROUP", 20: "TEXT_POKE",
    21: "AUX_OUTPUT_HW_ID", 22: "CALLCHAIN_DEFERRED", 64: "HEADER_ATTR", 65: "HEADER_EVENT_TYPE",
    66: "HEADER_TRACING_DATA", 67: "HEADER_BUILD_ID", 68: "FINISHED_ROUND", 69: "ID_INDEX",
    70: "AUXTRACE_INFO", 71: "AUXTRACE", 72: "AUXTRACE_ERROR", 73: "THREAD_MAP", 74: "CPU_MAP",
    75: "STAT_CONFIG", 76: "STAT", 77: "STAT_ROUND", 78: "EVENT_UPDATE", 79: "TIME_CONV",
    80: "HEADER_FEATURE", 81: "COMPRESSED", 82: "FINISHED_INIT", 83: "COMPRESSED2",
}


SAMPLE_ID_ORDER = ((abi.S_TID, "tid"), (abi.S_TIME, "time"), (abi.S_ID, "id"), (abi.S_STREAM_ID, "stream_id"),
                   (abi.S_CPU, "cpu"), (abi.S_IDENTIFIER, "identifier"))


@dataclass
class Attr:
    type: int
    config: int
    sample_type: int
    read_format: int
    flags: int
    branch_sample_type: int = 0
    sample_regs_user: int = 0
    sample_regs_intr: int = 0
    sample_period: int = 0  # or frequency, when the freq flag is set
    bp_type: int = 0
    bp_addr: int = 0  # (config1 for other types)
    clockid: int = 0
    ids: list[int] = field(default_factory=list)
    name: str | None = None
    name_from: str = ""  # event_desc, tracing_data or computed

    @property
    def sample_id_all(self) -> bool:
        return bool(self.flags >> 18 & 1)

    @property
    def exclude_guest(self) -> bool:
        return bool(self.flags >> 20 & 1)

    @property
    def exclude_host(self) -> bool:
        return bool(self.flags >> 19 & 1)

    @property
    def precise_ip(self) -> int:
        return self.flags >> 15 & 3


def parse_attr(data: bytes) -> Attr:
    """perf_event_attr of any ABI version (size 64..136+); absent tail fields read as 0."""
    d = data + bytes(max(0, 136 - len(data)))
    typ, _size, config, period, st, rf, flags = struct.unpack_from("<IIQQQQQ", d, 0)
    bp_type, bp_addr = struct.unpack_from("<IQ", d, 52)
    bst, regs_user = struct.unpack_from("<QQ", d, 72)
    clockid, regs_intr = struct.unpack_from("<iQ", d, 92)
    return Attr(typ, config, st, rf, flags, bst, regs_user, regs_intr, period, bp_type, bp_addr, clockid)


@dataclass
class PerfFile:
    path: str
    pipe: bool
    attrs: list[Attr] = field(default_factory=list)
    tracing: tdmod.TracingData | None = None
    features: dict[str, Any] = field(default_factory=dict)
    partial: str | None = None
    build_ids: list[dict[str, Any]] = field(default_factory=list)  # HEADER_BUILD_ID (perf_maps.parse_build_ids)


def _perf_string(c: Cursor) -> str:
    n = c.u32()
    return c.bytes(n).split(b"\0", 1)[0].decode("utf-8", "replace")


def _parse_feature(pf: PerfFile, feat: int, data: bytes) -> None:
    c = Cursor(data, pf.path, what=f"feature {feat}")
    f = pf.features
    try:
        if feat == FEAT_TRACING_DATA:
            pf.tracing, *_ = tdmod.read_tracing_block(c)
        elif feat == FEAT_BUILD_ID:
            pf.build_ids = perf_maps.parse_build_ids(data)
        elif feat in (FEAT_HOSTNAME, FEAT_OSRELEASE, FEAT_VERSION, FEAT_ARCH, FEAT_CPUDESC, FEAT_CPUID):
            key = {FEAT_HOSTNAME: "hostname", FEAT_OSRELEASE: "os_release", FEAT_VERSION: "perf_version",
                   FEAT_ARCH: "arch", FEAT_CPUDESC: "cpu_desc", FEAT_CPUID: "cpuid"}[feat]
            f[key] = _perf_string(c)
        elif feat == FEAT_NRCPUS:
            f["nr_cpus_available"], f["nr_cpus_online"] = c.unpack("II")
        elif feat == FEAT_TOTAL_MEM:
            f["total_mem_kb"] = c.u64()
        elif feat == FEAT_CMDLINE:
            f["cmdline"] = " ".join(_perf_string(c) for _ in range(c.u32()))
        elif feat == FEAT_EVENT_DESC:
            nr, attr_size = c.unpack("II")
            descs = []
            for _ in range(nr):
                attr = parse_attr(c.bytes(attr_size))
                nids = c.u32()
                name = _perf_string(c)
                ids = list(c.unpack(f"{nids}Q")) if nids else []
                descs.append((attr, name, ids))
            f["event_desc"] = [{"name": n, "ids": i, "type": a.type, "config": a.config} for a, n, i in descs]
        elif feat == FEAT_PMU_MAPPINGS:
            f["pmu_mappings"] = {str(c.u32()): _perf_string(c) for _ in range(c.u32())}
        elif feat == FEAT_CLOCKID:
            f["clockid_res_ns"] = c.u64()
        elif feat == FEAT_COMPRESSED:
            ver, typ, level, ratio, mmap_len = c.unpack("IIIII")
            f["compressed"] = {"version": ver, "type": typ, "level": level, "ratio": ratio}
        elif feat == FEAT_CPU_PMU_CAPS:
            f["cpu_pmu_caps"] = dict((_perf_string(c), _perf_string(c)) for _ in range(c.u32()))
        elif feat == FEAT_PMU_CAPS:
            pmus: dict[str, dict[str, str]] = {}
            for _ in range(c.u32()):
                caps = dict((_perf_string(c), _perf_string(c)) for _ in range(c.u32()))
                pmus[_perf_string(c)] = caps
            f["pmu_caps"] = pmus
        elif feat == FEAT_HYBRID_TOPOLOGY:
            f["hybrid_topology"] = {_perf_string(c): _perf_string(c) for _ in range(c.u32())}
    except InputError as e:
        f.setdefault("unreadable_features", []).append(f"{feat}: {e.what}")


def read_perf_data(path: str | Path, builder: TraceBuilder, source: str = "host",
                   snapshot: Path | None = None) -> PerfFile:
    """Read a perf.data into ``builder``; ``snapshot``: a host snapshot (host.json) of the recording
    host, for its kallsyms (default: one given alongside the file, readers.snapshot_for)."""
    p = Path(path)
    pf, buf, start, end = open_perf_data(p)
    from vpmutrace.readers import snapshot_for

    _read_records(pf, buf, start, end, builder, source, snapshot or snapshot_for(p))
    return pf


def open_perf_data(p: Path) -> tuple[PerfFile, np.ndarray, int, int]:
    """The file mapped, its header, attrs and features read: (file, buffer, data start, data end)."""
    buf = map_file(p)  # the page cache holds the file once; we do not copy it
    raw = memoryview(buf)
    if bytes(raw[:8]) == b"2ELIFREP":
        raise InputError(str(p), "big-endian perf.data is not supported", "offset 0")
    c = Cursor(memoryview(raw), str(p), what="perf header")
    c.expect(b"PERFILE2", "perf.data magic")
    hsize = c.u64()
    pf = PerfFile(str(p), pipe=hsize == 16)
    if pf.pipe:
        start, end = 16, len(raw)
    else:
        if hsize < 104:
            raise c.fail(f"header size {hsize} is neither 16 (pipe) nor >= 104 (file)")
        attr_size = c.u64()
        a_off, a_size, d_off, d_size, _et_off, _et_size = c.unpack("QQQQQQ")
        flags = c.unpack("QQQQ")
        feat_bits = [i for i in range(256) if flags[i // 64] >> (i % 64) & 1]
        _read_attrs(c, pf, a_off, a_size, attr_size)
        if d_off < hsize or d_off > len(raw):
            raise InputError(str(p), f"data section offset {d_off} is outside the file ({len(raw)} bytes)",
                             "offset 40 (perf header)")
        start = d_off
        if d_size == 0 and len(raw) > d_off:
            pf.partial = "header data size is 0 (perf record did not finish); read records to the end of file"
            end = len(raw)
            feat_bits = []
        else:
            end = d_off + d_size
            if d_size > len(raw) - d_off:
                pf.partial = f"data section ends at {end}, past the end of the file ({len(raw)} bytes)"
                end = len(raw)
                feat_bits = []
        fc = Cursor(c.data, pf.path, end, what="feature table")
        if feat_bits:
            try:
                secs = [fc.unpack("QQ") for _ in feat_bits]
            except InputError as e:
                pf.features["unreadable_features"] = [e.what]
                secs = []
            for bit, (off, size) in zip(feat_bits, secs, strict=False):
                if off <= len(raw) and size <= len(raw) - off:
                    _parse_feature(pf, bit, bytes(raw[off:off + size]))
                else:
                    pf.features.setdefault("unreadable_features", []).append(
                        f"{bit}: section at offset {off}, {size} bytes, is past the end of the file "
                        f"({len(raw)} bytes)")
    return pf, buf, start, end


def _read_attrs(c: Cursor, pf: PerfFile, off: int, size: int, attr_size: int) -> None:
    if attr_size < 16 + 64:
        raise c.fail(f"attr size {attr_size} too small")
    if size > len(c.data) or off > len(c.data) - size:
        raise c.fail(f"attrs section (offset {off}, {size} bytes) is outside the file ({len(c.data)} bytes)")
    for i in range(size // attr_size):
        ac = Cursor(c.data, pf.path, off + i * attr_size, what=f"attr {i}")
        a = parse_attr(ac.bytes(attr_size - 16))
        ids_off, ids_size = ac.unpack("QQ")
        ic = Cursor(c.data, pf.path, ids_off, what=f"attr {i} ids")
        a.ids = list(ic.unpack(f"{ids_size // 8}Q")) if ids_size else []
        pf.attrs.append(a)


def walk(buf: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Offsets, types, misc and sizes of the records in buf[start:end], with where and why the walk stopped."""
    e64, e32 = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    n, stop, err = kernels.walk_records(buf, start, end, False, e64, e32, e32, e32)
    offs = np.empty(n, dtype=np.int64)
    types, miscs, sizes = (np.empty(n, dtype=np.int32) for _ in range(3))
    kernels.walk_records(buf, start, end, True, offs, types, miscs, sizes)
    if err == 0 and stop < end:  # fewer than 8 bytes left: a record header cut off
        err = 2
    return offs, types, miscs, sizes, stop, err


def _decompress_records(pf: PerfFile, buf: np.ndarray, offs: np.ndarray, types: np.ndarray,
                        sizes: np.ndarray, stop: int) -> np.ndarray:
    """Expand COMPRESSED/COMPRESSED2 records in place: one buffer of plain records, in file order
    (perf_expand.Expansion). What they expand to is bounded (MAX_EXPANSION); a record that does not
    decompress ends the data there (counted as partial)."""
    ex = Expansion(pf.path, buf, expansion_room(len(buf)))
    data = b"".join(ex.records(offs, types, sizes, np.append(offs[1:], stop)))
    if ex.problem:
        pf.partial = (pf.partial + "; " if pf.partial else "") + ex.problem
    return np.frombuffer(data, dtype=np.uint8)


def _read_records(pf: PerfFile, buf: np.ndarray, start: int, end: int, b: TraceBuilder, source: str,
                  snapshot: Path | None = None) -> None:
    keys = None
    if pf.attrs:  # file mode: walk and decode the samples' keys in one go
        recs, keys = ps.scan(pf.attrs, pf.path, buf, start, end)
    else:
        recs = ps.split_records(buf, start, end)
    stop, err = recs.stop, recs.err
    n_compressed = int(np.isin(recs.r_type, COMPRESSED_TYPES).sum())
    if n_compressed:  # records inside records: expand them, in file order, and walk the result
        offs, types, _miscs, sizes, wstop, _ = walk(buf, start, stop)
        buf = _decompress_records(pf, buf, offs, types, sizes, wstop)
        del offs, types, sizes, _miscs
        recs, keys = ps.split_records(buf, 0, len(buf)), None
        if recs.err:
            pf.partial = pf.partial or "a decompressed record stream ends in a broken record"
    comms, side = file_records(pf, buf, recs.r_off, recs.r_type, recs.r_size, len(recs.s_off), stop, err, start, b)
    if n_compressed:
        recs_meta = b.meta["perf_records"]
        recs_meta["COMPRESSED"] = recs_meta.get("COMPRESSED", 0) + n_compressed
    if keys is None:
        keys = ps.sample_keys(pf.attrs, pf.path, buf, recs.s_off)
    samples = ps.decode_samples(len(pf.attrs), keys, comms.events, comms.comm)
    del recs, keys
    formats = pf.tracing.formats if pf.tracing else {}
    b.symbols = b.symbols or (pf.tracing.kallsyms if pf.tracing else None)
    b.printk = b.printk or (pf.tracing.raw.get("printk") or b"" if pf.tracing else b"")
    n_chunks = len(b.chunks.get("samples", []))
    ps.emit_samples(pf.attrs, pf.path, buf, samples, formats, pf.tracing.kallsyms if pf.tracing else None, b,
                    source)
    b.unknown_event_names = {}
    perf_maps.apply(pf, side, b, n_chunks, snapshot)  # sym/dso of the samples table, one pass after it
    release_pages(buf)
    file_done(pf, b)


def file_done(pf: PerfFile, b: TraceBuilder) -> None:
    """The counts made once every record is read: formats that did not parse, a partial file."""
    for bad in pf.tracing.bad_formats if pf.tracing else []:
        b.stats.add(pf.path, "bad_format", "", 1, bad)
    if pf.partial:
        b.stats.add(pf.path, "partial", "", 1, pf.partial)


def file_records(pf: PerfFile, buf: np.ndarray, r_off: np.ndarray, r_type: np.ndarray, r_size: np.ndarray,
                 n_samples: int, stop: int, err: int, start: int, b: TraceBuilder,
                 shown: np.ndarray | None = None) -> tuple[_CommTracker, Any]:
    """What the records other than samples say (``r_*``: all of them in the file, at ``r_off`` in
    ``buf``; ``shown``: the offsets messages name them by, when not those; ``n_samples``: how many
    samples; the walk stopped at ``stop`` with ``err``): attrs and tracing data of pipe mode, names,
    meta, thread names, maps, lost records and record counts. Returns (thread names, maps)."""
    recs = (r_off, r_type, r_size, r_off if shown is None else shown)
    recs = _drop_short(pf, recs, b, 0)
    if pf.pipe:  # attrs, tracing data and features arrive as records
        _header_records(pf, buf, *recs)
    elif pf.tracing is None:  # simpleperf writes its tracing data as a record of the data section
        _header_records(pf, buf, *recs, kinds=(REC_HEADER_TRACING_DATA,))
    _need_attrs(pf, start)
    recs = _drop_short(pf, recs, b, 8 * len(_trailer_fields(pf.attrs[0])))
    r_off, r_type, r_size, where = recs
    if err:
        what = {1: "record header with size < 8", 4: "record whose data size is negative"}.get(
            err, "record cut off by the end of the data")
        pf.partial = (pf.partial + "; " if pf.partial else "") + f"{what} at offset {stop}"
        b.stats.add(pf.path, "truncated", "", 1,
                    f"offset {stop}: {what}; {n_samples + len(r_off)} records before it read")
    for bad in pf.features.get("unreadable_features", []):
        b.stats.add(pf.path, "header_unreadable", f"feature {bad.split(':')[0]}", 1, bad)
    _name_attrs(pf)
    _tracepoint_formats(pf, b)
    _meta(pf, b)
    comms = _CommTracker(pf, buf, r_off, r_type, r_size)
    side = perf_maps.read_side(pf, buf, r_off, r_type, r_size)
    _emit_lost(pf, buf, r_off, r_type, r_size, where, b)
    recs_meta = b.meta.setdefault("perf_records", {})
    kinds, counts = np.unique(r_type, return_counts=True)
    per_kind = dict(zip(kinds.tolist(), counts.tolist(), strict=True))
    if n_samples:
        per_kind[REC_SAMPLE] = n_samples
    for k, n in sorted(per_kind.items()):
        name = RECORD_NAMES.get(k, f"type {k}")
        recs_meta[name] = recs_meta.get(name, 0) + n
        if k not in RECORD_NAMES:
            b.stats.add(pf.path, "records_not_decoded", f"record type {k}", n,
                        f"offset {int(where[r_type == k][0])}: record type unknown to this reader")
    return comms, side


Recs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # offsets, types, sizes, offsets shown


def _drop_short(pf: PerfFile, recs: Recs, b: TraceBuilder, trailer: int) -> Recs:
    """The records (other than samples) without those shorter than the fields the reader takes from
    them (abi.MIN_RECORD_SIZE, plus the sample_id trailer of the kernel's records), which are counted
    as unparsed_record."""
    _r_off, r_type, r_size, where = recs
    bad = np.zeros(len(r_type), dtype=bool)
    for t, least in abi.MIN_RECORD_SIZE.items():
        short = (r_type == t) & (r_size < least + (trailer if t < abi.USER_RECORD_TYPES[0] else 0))
        if short.any():
            k = int(np.flatnonzero(short)[0])
            b.stats.add(pf.path, "unparsed_record", RECORD_NAMES.get(t, f"type {t}"), int(short.sum()),
                        f"offset {int(where[k])}: record of {int(r_size[k])} bytes, shorter than its fields")
            bad |= short
    if not bad.any():
        return recs
    keep = ~bad
    return recs[0][keep], r_type[keep], r_size[keep], where[keep]


def _need_attrs(pf: PerfFile, start: int) -> None:
    if not pf.attrs:
        raise InputError(pf.path, "no event attributes (perf_event_attr) found", f"offset {start}")


def _header_records(pf: PerfFile, buf: np.ndarray, offs: np.ndarray, types: np.ndarray, sizes: np.ndarray,
                    where: np.ndarray,
                    kinds: tuple[int, ...] = (REC_HEADER_ATTR, REC_HEADER_TRACING_DATA, REC_HEADER_FEATURE)) -> None:
    """Pipe mode: attrs, tracing data and features from their records (``kinds`` of them). A
    HEADER_TRACING_DATA record's data follows the record in perf's pipe mode (header.size is the
    record's 12 bytes) and lies within header.size in simpleperf's files (simpleperf record.cpp
    TracingDataRecord; perf 6.1 reads no such file)."""
    hdr = np.isin(types, list(kinds))
    for o, t, s, w in zip(offs[hdr].tolist(), types[hdr].tolist(), sizes[hdr].tolist(), where[hdr].tolist(),
                          strict=True):
        if t == REC_HEADER_ATTR:
            rec = buf[o + 8:o + s].tobytes()
            asize = struct.unpack_from("<I", rec, 4)[0] or 64
            if not 64 <= asize <= len(rec):
                raise InputError(pf.path, f"HEADER_ATTR record: attr size {asize} does not fit the record "
                                          f"({len(rec)} bytes)", f"offset {w}")
            a = parse_attr(rec[:asize])
            a.ids = list(struct.unpack_from(f"<{(len(rec) - asize) // 8}Q", rec, asize))
            pf.attrs.append(a)
        elif t == REC_HEADER_TRACING_DATA:
            size = int(buf[o + 8:o + 12].view("<u4")[0])
            at = o + 12 if s >= 12 + size else o + s  # simpleperf: within header.size; perf pipe mode: after it
            c = Cursor(buf[at:at + size].tobytes(), pf.path, base=at - o + w, what="pipe tracing data")
            pf.tracing, *_ = tdmod.read_tracing_block(c)
        elif t == REC_HEADER_FEATURE:
            feat = int(buf[o + 8:o + 16].view("<u8")[0])
            _parse_feature(pf, feat, buf[o + 16:o + s].tobytes())


def _name_attrs(pf: PerfFile) -> None:
    """Each attr's name as perf shows it: the i-th name of HEADER_EVENT_DESC for the i-th attr
    (header.c process_event_desc sets evsel names by position), else "system:name" of a
    tracepoint from the file's tracing data, else perf's computed name (formats/perf_names.py)."""
    descs = pf.features.get("event_desc") or []
    formats = pf.tracing.formats if pf.tracing else {}
    pmus = {int(k): v for k, v in (pf.features.get("pmu_mappings") or {}).items()}
    for k, a in enumerate(pf.attrs):
        name = descs[k]["name"] if k < len(descs) else None
        a.name_from = "event_desc"
        if not name:
            tp = formats[a.config].full_name if a.type == PERF_TYPE_TRACEPOINT and a.config in formats else None
            name = event_name(a.type, a.config, a.flags, a.bp_type, a.bp_addr, pmus, tp)
            a.name_from = "tracing_data" if tp else "computed"
        a.name = name


def _tracepoint_formats(pf: PerfFile, b: TraceBuilder) -> None:
    """Tracepoints the file has no format for: a format from this host's tracefs when the name the
    file records and the id agree (local_formats.py), else their records stay raw in ``unparsed``
    under the recorded name, counted."""
    have = pf.tracing.formats if pf.tracing else {}
    missing = {a.config: (a.name if a.name_from == "event_desc" else None)
               for a in pf.attrs if a.type == PERF_TYPE_TRACEPOINT and a.config not in have}
    if not missing:
        return
    from vpmutrace.readers.local_formats import local_formats

    why = "the file has no tracing data (HEADER_TRACING_DATA)" if pf.tracing is None else \
        "the file's tracing data has no format for it"
    match = local_formats(missing)
    if match.formats:
        if pf.tracing is None:
            pf.tracing = tdmod.TracingData(formats={})
        pf.tracing.formats.update(match.formats)
        release = pf.features.get("os_release")
        for ev_id, fmt in match.formats.items():
            b.stats.add(pf.path, "formats_from_local_tracefs", fmt.full_name, 1,
                        f"{why}; layout taken from {match.where} where {fmt.full_name} has the same id {ev_id}"
                        + (f" (file recorded on {release}, this host runs {_uname()})" if release else ""))
    b.unknown_event_names = {i: missing[i] or f"unknown:{i}" for i in match.refused}
    for ev_id, reason in match.refused.items():
        b.stats.add(pf.path, "no_format", missing[ev_id] or f"event id {ev_id}", 1,
                    f"{why}; no local format used: {reason}; its records are kept raw in 'unparsed'")


def _uname() -> str:
    import os

    return os.uname().release


def _meta(pf: PerfFile, b: TraceBuilder) -> None:
    f = pf.features
    if f.get("os_release"):
        b.meta.setdefault("kernel_release", f["os_release"])
    if f.get("nr_cpus_available"):
        b.meta["cpus"] = max(b.meta.get("cpus") or 0, f["nr_cpus_available"])
    clock = _perf_clock(pf.attrs)
    info = {k: v for k, v in f.items() if k != "event_desc"}
    b.meta["inputs"].append({
        "path": pf.path, "format": "perf.data", "size_bytes": Path(pf.path).stat().st_size,
        "tool": "perf" + (f" {f['perf_version']}" if f.get("perf_version") else ""),
        "mode": "pipe" if pf.pipe else "file", "partial": pf.partial, "features": info,
        "clock": clock, "time_unit": C.NS,
        "time_source": f"perf records sample times in ns of the {clock} clock"
                       + (" (perf record -k)" if clock != "perf" else " (local_clock())"),
        "events": [{"name": a.name, "name_from": a.name_from, "type": a.type, "config": a.config,
                    "exclude_guest": a.exclude_guest,
                    "exclude_host": a.exclude_host, "precise_ip": a.precise_ip} for a in pf.attrs]})


def _perf_clock(attrs: list[Attr]) -> str:
    """The clock of the sample times: attr.use_clockid (flags bit 25) with attr.clockid when perf record
    -k set them (include/uapi/linux/perf_event.h), else perf's default, local_clock()."""
    for a in attrs:
        if a.flags >> 25 & 1:
            return C.PERF_CLOCKIDS.get(a.clockid, f"clockid {a.clockid}")
    return "perf"


def _trailer_fields(a: Attr) -> list[str]:
    """Names of the sample_id_all trailer fields a non-sample record of this attr carries (8 bytes each)."""
    return [name for bit, name in SAMPLE_ID_ORDER if a.sample_id_all and a.sample_type & bit]


def _trailer(a: Attr, rec: bytes) -> dict[str, int]:
    """sample_id_all trailer fields of a non-sample record (``rec``: the whole record)."""
    fields = _trailer_fields(a)
    pos = len(rec) - 8 * len(fields)
    out: dict[str, int] = {}
    if pos < 8:  # (records shorter than their fields are dropped before: _drop_short)
        return out
    for name in fields:
        if name == "tid":
            out["pid"], out["tid"] = struct.unpack_from("<II", rec, pos)
        elif name == "cpu":
            out["cpu"] = struct.unpack_from("<I", rec, pos)[0]
        else:
            out[name] = struct.unpack_from("<q", rec, pos)[0]
        pos += 8
    return out


class _CommTracker:
    """Thread names over time from COMM and FORK records, as perf script resolves them."""

    def __init__(self, pf: PerfFile, buf: np.ndarray, offs: np.ndarray, types: np.ndarray,
                 sizes: np.ndarray) -> None:
        a0 = pf.attrs[0]
        self.events: dict[int, list[tuple[int, str]]] = {}
        self.parent: dict[int, tuple[int, int]] = {}
        sel = np.isin(types, [REC_COMM, REC_FORK])
        ntrail = len(_trailer_fields(a0))
        for o, t, s in zip(offs[sel].tolist(), types[sel].tolist(), sizes[sel].tolist(), strict=True):
            rec = buf[o:o + s].tobytes()
            if t == REC_COMM:
                tid = struct.unpack_from("<I", rec, 12)[0]
                name = rec[16:s - 8 * ntrail].split(b"\0", 1)[0].decode("utf-8", "replace")
                self.events.setdefault(tid, []).append((_trailer(a0, rec).get("time", -1), name))
            else:
                _ppid, tid, ptid = struct.unpack_from("<III", rec, 12)
                self.parent.setdefault(tid, (ptid, struct.unpack_from("<q", rec, 24)[0]))
        for v in self.events.values():
            v.sort(key=lambda x: x[0])

    def comm(self, tid: int, time: int, depth: int = 0) -> str | None:
        ev = self.events.get(tid, [])
        before = [name for t, name in ev if t <= time]
        if before:
            return before[-1]
        if tid in self.parent and depth < 32:  # not renamed yet: the name inherited at fork
            inherited = self.comm(*self.parent[tid], depth + 1)
            if inherited is not None:
                return inherited
        if not ev and tid == 0:
            return "swapper"  # perf names the idle task so (machine__create_kernel_maps)
        # sampled before its first COMM (and no FORK): perf script has no name for it yet and prints
        # its placeholder ":tid" (thread__new), not the later name
        return None

    def resolve(self, tids: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Names for many (tid, time) samples: vectorised per thread over its COMM times."""
        codes = np.zeros(len(tids), dtype=np.int32)
        names: list[str | None] = []
        index: dict[str | None, int] = {}

        def code(name: str | None) -> int:
            if name not in index:
                index[name] = len(names)
                names.append(name)
            return index[name]

        order = np.argsort(tids, kind="stable")
        uniq, starts = np.unique(tids[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        for tid, a, z in zip(uniq.tolist(), starts.tolist(), ends.tolist(), strict=True):
            rows = order[a:z]
            ev = self.events.get(tid, [])
            bounds = np.array([t for t, _ in ev], dtype=np.int64)
            # position among this thread's COMM records: one name per distinct position
            pos = np.searchsorted(bounds, times[rows], side="right") if len(ev) else np.zeros(len(rows), int)
            for p in np.unique(pos).tolist():
                t_rep = int(times[rows[pos == p][0]])
                codes[rows[pos == p]] = code(self.comm(tid, t_rep))
        return codes, names



def _emit_lost(pf: PerfFile, buf: np.ndarray, offs: np.ndarray, types: np.ndarray, sizes: np.ndarray,
               where: np.ndarray, b: TraceBuilder) -> None:
    a0 = pf.attrs[0]
    sel = np.isin(types, [REC_LOST, REC_LOST_SAMPLES, REC_THROTTLE, REC_UNTHROTTLE])
    for o, t, s, w in zip(offs[sel].tolist(), types[sel].tolist(), sizes[sel].tolist(), where[sel].tolist(),
                          strict=True):
        tr = _trailer(a0, buf[o:o + s].tobytes())
        n = int(buf[o + 16:o + 24].view("<u8")[0]) if t == REC_LOST else \
            int(buf[o + 8:o + 16].view("<u8")[0]) if t == REC_LOST_SAMPLES else 0
        cpu = tr.get("cpu")
        if n > I64_MAX or (cpu is not None and cpu > I32_MAX):  # (the lost table's count and cpu columns)
            b.stats.add(pf.path, "unparsed_record", RECORD_NAMES.get(t, f"type {t}"), 1,
                        f"offset {w}: count {n} or cpu {cpu} out of range (a damaged record)")
            continue
        if t == REC_LOST:
            b.add_lost(pf.path, "lost_events", n, tr.get("time"), cpu, f"offset {w}")
        elif t == REC_LOST_SAMPLES:
            b.add_lost(pf.path, "lost_samples", n, tr.get("time"), cpu, f"offset {w}")
        else:  # the time perf report shows: the sample_id trailer's, else the record's own field (when the
            # kernel wrote it, perf_log_throttle(), a moment before the trailer)
            time = tr["time"] if "time" in tr else int(buf[o + 8:o + 16].view("<i8")[0])
            kind = "throttle" if t == REC_THROTTLE else "unthrottle"
            b.lost_rows.append({"ts_ns": time, "cpu": tr.get("cpu"), "kind": kind, "count": None,
                                "source": pf.path})
            b.stats.add(pf.path, kind, "", 1)
