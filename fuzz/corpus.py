"""Seed inputs for every reader, made from the fixtures (fixtures/): small files of each format.

``seeds(target)`` gives ``(name, bytes)`` pairs; ``write_corpus(dir)`` writes them for atheris.
Pipe-mode perf.data and trace.dat v6 / v7-zlib / v7-zstd are re-encoded from the fixtures
(``pipe_mode`` below; writers/trace_dat.py), compressed text with the stdlib and zstandard.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import tempfile
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# small fixtures, so that thousands of damaged copies read in minutes
PERF_FILES = ("uprobe.perf.data", "microguest50-zstd.perf.data", "perf.data.lost_samples-4.4")
TRACE_DAT = "uprobe.trace.dat"
TEXT_FILES = ("uprobe.ftrace.txt.xz", "uprobe.perf-script.txt.xz", "uprobe.report.txt.xz",
              "uprobe.report-raw.txt.xz", "lkml_shukla_svm_idle_hlt_6x.txt", "lkml_exception_nmi_not_nmi.txt")

REC_HEADER_ATTR, REC_HEADER_TRACING_DATA, REC_HEADER_FEATURE = 64, 66, 80


def _fixture(name: str) -> bytes:
    raw = (FIXTURES / name).read_bytes()
    return lzma.decompress(raw) if name.endswith(".xz") else raw


def pipe_mode(file_mode: bytes) -> bytes:
    """The same recording as ``perf record -o -`` writes it (tools/perf/Documentation/perf.data-file-format.txt,
    "Pipe-mode data"): a 16-byte header, then the attrs, tracing data and features as HEADER_ATTR,
    HEADER_TRACING_DATA and HEADER_FEATURE records before the data records."""
    attr_size, a_off, a_size, d_off, d_size = struct.unpack_from("<QQQQQ", file_mode, 16)
    flags = struct.unpack_from("<4Q", file_mode, 72)
    out = bytearray(b"PERFILE2" + struct.pack("<Q", 16))
    for i in range(a_size // attr_size):
        at = a_off + i * attr_size
        attr = file_mode[at:at + attr_size - 16]
        ids_off, ids_size = struct.unpack_from("<QQ", file_mode, at + attr_size - 16)
        body = attr + file_mode[ids_off:ids_off + ids_size]
        out += struct.pack("<IHH", REC_HEADER_ATTR, 0, 8 + len(body)) + body
    feats = [b for b in range(256) if flags[b // 64] >> (b % 64) & 1]
    table = d_off + d_size
    sections = {b: struct.unpack_from("<QQ", file_mode, table + 16 * k) for k, b in enumerate(feats)}
    if 1 in sections:  # HEADER_TRACING_DATA: u32 size in the record, the data after it, 8-aligned
        off, size = sections[1]
        data = file_mode[off:off + size]
        out += struct.pack("<IHHI", REC_HEADER_TRACING_DATA, 0, 12, size) + data + bytes(-size % 8)
    for b, (off, size) in sections.items():
        if b in (1, 2):  # tracing data above; build ids are not sent in pipe mode
            continue
        body = struct.pack("<Q", b) + file_mode[off:off + size]
        body += bytes(-len(body) % 8)
        if 8 + len(body) < 1 << 16:
            out += struct.pack("<IHH", REC_HEADER_FEATURE, 0, 8 + len(body)) + body
    out += file_mode[d_off:d_off + d_size]
    return bytes(out)


@cache
def _trace_dat_versions() -> dict[str, bytes]:
    from vpmutrace.readers.trace_dat import content_of
    from vpmutrace.writers.trace_dat import write_trace_dat

    content = content_of(FIXTURES / TRACE_DAT)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, ver, codec in (("v6", 6, "none"), ("v7-zlib", 7, "zlib"), ("v7-zstd", 7, "zstd"),
                                 ("v7-none", 7, "none")):
            out[name] = write_trace_dat(Path(d) / f"{name}.dat", content, ver, codec).read_bytes()
    return out


def trace_dat_content():  # -> TraceDatContent
    from vpmutrace.readers.trace_dat import content_of

    return content_of(FIXTURES / TRACE_DAT)


def seeds(target: str) -> list[tuple[str, bytes]]:
    """Seed inputs of one target (see fuzz/targets.py TARGETS)."""
    if target == "perf_file":
        return [(n, _fixture(n)) for n in PERF_FILES]
    if target == "perf_pipe":
        return [(n + ".pipe", pipe_mode(_fixture(n))) for n in PERF_FILES]
    if target == "trace_dat":
        return [(f"{TRACE_DAT}.{k}", v) for k, v in _trace_dat_versions().items()]
    if target == "ringbuf":
        c = trace_dat_content()
        return [(f"{TRACE_DAT}.cpu{cpu}.pages", pages) for b in c.buffers for cpu, pages in b.cpus.items() if pages]
    if target == "event_format":
        c = trace_dat_content()
        return [(name, text) for name, text in sorted(c.event_formats.items())][:8]
    if target == "text":
        return [(n.removesuffix(".xz"), _fixture(n)) for n in TEXT_FILES]
    if target in ("text_zst", "text_gz", "text_xz"):
        import zstandard

        plain = _fixture("microguest200.ftrace.txt")
        packed = {"text_zst": zstandard.ZstdCompressor().compress, "text_gz": lambda b: gzip.compress(b, mtime=0),
                  "text_xz": lzma.compress}[target](plain)
        return [("microguest200.ftrace.txt." + target[5:], packed)]
    raise KeyError(target)


def write_corpus(target: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds(target):
        (out / name).write_bytes(data)
    return out
