"""Bad input: one-line errors naming file and place, or counted skips; never a traceback."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import COMMON_FORMAT_FIELDS, FIXTURES

from vpmutrace.errors import InputError
from vpmutrace.readers import load_trace
from vpmutrace.readers.trace_dat import content_of
from vpmutrace.writers.trace_dat import write_trace_dat

GOOD = " qemu-system-x86-8397    [002] d....  1404.389509: kvm_msr: msr_read c0000080 = 0xd01\n"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpmutrace", *args], capture_output=True, text=True, check=False)


def test_truncated_last_line_is_counted_with_its_number(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text(GOOD * 3 + GOOD[:40])
    td = load_trace([f])
    assert td.meta["events"] == {"kvm:kvm_msr": 3}
    assert td.meta["unparsed"] == 1
    e = next(e for e in td.stats.entries() if e.category == "unparsed_line")
    assert e.examples[0].startswith("line 4: ")


def test_garbage_between_events_is_counted(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text(GOOD + "hello world\n" + "\x01\x02 zzz\n" + GOOD)
    td = load_trace([f])
    assert td.meta["events"] == {"kvm:kvm_msr": 2} and td.meta["unparsed"] == 2


def test_unparseable_body_of_a_known_event_is_kept_and_counted(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text(GOOD + GOOD.replace("msr_read c0000080 = 0xd01", "something else entirely"))
    td = load_trace([f])
    assert td.df("kvm_msr").height == 1
    ev = td.df("unparsed")
    assert ev.height == 1 and ev["text"][0] == "something else entirely" and ev["event"][0] == "kvm:kvm_msr"
    e = next(e for e in td.stats.entries() if e.category == "body_unparsed")
    assert e.count == 1 and e.examples[0].startswith("line 2: ")


@pytest.mark.parametrize("content,msg", [
    (b"", "empty file"),
    (b"\n\n  \n", "empty file"),
    (b"just some words\nnothing like a trace\n", "no trace events recognised"),
    (b"\x7fELF\x02\x01\x01\x00" + bytes(64), "not a perf.data, trace.dat or text trace: magic 7f 45 4c 46 02 01 01 00 "
                                           "(an ELF executable or object)"),
    (b"\x01\x02\x03\x04\x00" + bytes(64), "not a perf.data, trace.dat or text trace: magic 01 02 03 04 00 00 00 00 "
                                          "(binary data of an unknown format)"),
])
def test_bad_files_give_one_line_errors(tmp_path: Path, content: bytes, msg: str) -> None:
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(InputError) as e:
        load_trace([f])
    assert msg in str(e.value) and str(f) in str(e.value)
    r = _cli("info", str(f))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and msg in r.stderr


def test_missing_file_and_bad_usage_exit_2() -> None:
    r = _cli("info", "/nonexistent/trace.dat")
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = _cli("info", "--no-such-option", "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_truncated_trace_dat_header_names_the_offset(tmp_path: Path) -> None:
    raw = (FIXTURES / "microguest200.trace.dat").read_bytes()
    f = tmp_path / "cut.dat"
    f.write_bytes(raw[:300])
    with pytest.raises(InputError) as e:
        load_trace([f])
    assert "offset" in str(e.value) and "cut.dat" in str(e.value)
    r = _cli("info", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.parametrize("codec", ["zstd", "zlib"])
def test_trace_dat_chunk_that_does_not_decompress(tmp_path: Path, codec: str) -> None:
    """A damaged compressed chunk of CPU data: one line naming the file and the chunk's offset."""
    from vpmutrace.readers.trace_dat import open_trace_dat

    f = write_trace_dat(tmp_path / "v7.dat", content_of(FIXTURES / "microguest200.trace.dat"), 7, codec)
    td, _ = open_trace_dat(f)
    cpu = next(c for b in td.buffers for c in b.cpus if c.size)
    raw = bytearray(f.read_bytes())
    first = cpu.offset + 4 + 8  # chunk count, then the first chunk's sizes, then its data
    raw[first:first + 4] = b"\xff\xff\xff\xff"  # no zstd frame, no zlib header starts like that
    bad = tmp_path / "bad.dat"
    bad.write_bytes(bytes(raw))
    with pytest.raises(InputError) as e:
        load_trace([bad])
    assert f"offset {first}" in str(e.value) and "does not decompress" in str(e.value) and "bad.dat" in str(e.value)
    r = _cli("info", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_trace_dat_cut_in_cpu_data_keeps_pages_before_the_cut(tmp_path: Path) -> None:
    content = content_of(FIXTURES / "microguest200.trace.dat")
    v6 = write_trace_dat(tmp_path / "v6.dat", content, version=6, compression="none")
    raw = v6.read_bytes()
    cut = tmp_path / "v6cut.dat"
    cut.write_bytes(raw[:len(raw) - 3 * content.page_size - 100])
    full, part = load_trace([v6]), load_trace([cut])
    n_full, n_part = sum(full.meta["events"].values()), sum(part.meta["events"].values())
    assert 0 < n_part < n_full
    assert any(e.category == "partial" for e in part.stats.entries())


def test_unsupported_trace_dat_version(tmp_path: Path) -> None:
    f = tmp_path / "v9.dat"
    f.write_bytes(b"\x17\x08\x44tracing9\0" + bytes(20))
    with pytest.raises(InputError, match="version '9' is not supported"):
        load_trace([f])


def test_perf_data_bad_header_size(tmp_path: Path) -> None:
    f = tmp_path / "p.data"
    f.write_bytes(b"PERFILE2" + struct.pack("<Q", 50) + bytes(100))
    with pytest.raises(InputError, match="header size 50"):
        load_trace([f])


@pytest.mark.parametrize("codec", ["gzip", "xz", "bz2", "zstd"])
def test_compressed_text_traces_are_read(tmp_path: Path, codec: str) -> None:
    import bz2
    import gzip
    import lzma

    import zstandard

    text = (FIXTURES / "lkml_krause_vmx_nested_6x_ftrace.txt").read_bytes()
    pack = {"gzip": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress,
            "zstd": zstandard.ZstdCompressor().compress}[codec]
    f = tmp_path / f"trace.txt.{codec}"
    f.write_bytes(pack(text))
    assert load_trace([f]).meta["events"] == load_trace([FIXTURES / "lkml_krause_vmx_nested_6x_ftrace.txt"]) \
        .meta["events"]
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(InputError, match="corrupt gzip data"):
        load_trace([bad])


# a format with a field of every kind (as tracefs writes it), for damaged records
EVERY_KIND = """name: every_kind
ID: 77
format:
""" + COMMON_FORMAT_FIELDS + """
\tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;
\tfield:__rel_loc u32[] ids;\toffset:12;\tsize:4;\tsigned:0;
\tfield:char comm[8];\toffset:16;\tsize:8;\tsigned:0;
\tfield:s16 vals[3];\toffset:24;\tsize:6;\tsigned:1;
\tfield:u8 raw[4];\toffset:30;\tsize:4;\tsigned:0;
\tfield:s64 big;\toffset:34;\tsize:8;\tsigned:1;

print fmt: "name=%s comm=%s big=%lld", __get_str(name), REC->comm, REC->big
"""


def _every_kind_record(name: bytes, ids: list[int], comm: bytes, vals: list[int], raw: bytes, big: int,
                       loc: int | None = None, rel: int | None = None) -> bytes:
    fixed = 42
    ids_b = b"".join(struct.pack("<I", i) for i in ids)
    name_at, ids_at = fixed, fixed + len(name)
    loc = loc if loc is not None else (len(name) << 16) | name_at
    rel = rel if rel is not None else (len(ids_b) << 16) | (ids_at - 16)  # __rel_loc: from the end of its word
    head = struct.pack("<HBBiII8s3h4sq", 77, 0, 0, 42, loc, rel, comm, *vals, raw, big)
    return head + name + ids_b


def _every_kind_trace(tmp_path: Path, payloads: list[bytes], kind: str) -> Path:
    """The payloads as tracepoint samples of a perf.data, or as ring-buffer records of a trace.dat."""
    from vpmutrace.formats.event_format import parse_format
    from vpmutrace.formats.known import reference_ring_headers
    from vpmutrace.writers.perf_data import PerfDataContent, write_perf_data
    from vpmutrace.writers.ringbuf import pack_pages
    from vpmutrace.writers.trace_dat import BufferData, TraceDatContent

    hp, he = reference_ring_headers()
    if kind == "trace.dat":
        pages = pack_pages(payloads, np.arange(1000, 1000 + len(payloads), dtype=np.int64))
        c = TraceDatContent(page_size=4096, header_page=hp, header_event=he,
                            event_formats={"test": [EVERY_KIND.encode()]}, cmdlines=b"42 task\n",
                            buffers=[BufferData("", "local", {0: pages})], cpucount=1, trace_clock="[local] global")
        return write_trace_dat(tmp_path / "every.dat", c, 7, "zstd")
    fmt = parse_format(EVERY_KIND, "test")
    pc = PerfDataContent(formats={"test:every_kind": fmt}, format_texts={"test:every_kind": EVERY_KIND.encode()},
                         header_page=hp, header_event=he, comms={42: "task"})
    pc.samples = [(1000 + i, 0, 42, "test:every_kind", p) for i, p in enumerate(payloads)]
    return write_perf_data(tmp_path / "every.perf.data", pc)


@pytest.mark.parametrize("kind", ["perf.data", "trace.dat"])
def test_every_field_kind_decodes_and_damage_is_cut_and_counted(tmp_path: Path, kind: str) -> None:
    """Fixed and dynamic strings, arrays and __rel_loc fields; a __data_loc pointing past its
    record is cut at the record's end and counted; a string that is not UTF-8 gets U+FFFD."""
    good = _every_kind_record(b"vcpu0\0", [7, 0xFFFFFFFF], b"qemu\0\0\0\0", [-1, 2, -300], b"\xde\xad\xbe\xef", -5)
    bad_utf8 = _every_kind_record(b"h\xc3\xa9\xff\0", [], b"abcdefgh", [0, 0, 0], b"\0\0\0\0", 1 << 40)
    past_end = _every_kind_record(b"xy\0", [1], b"c\0\0\0\0\0\0\0", [1, 1, 1], b"\1\2\3\4", 0,
                                  loc=(200 << 16) | 42)  # 200 bytes claimed, 3 there
    td = load_trace([_every_kind_trace(tmp_path, [good, bad_utf8, past_end], kind)])
    df = td.df("test.every_kind")
    assert df["name"].to_list() == ["vcpu0", "h\xe9\ufffd", "xy"]
    assert df["ids"].to_list() == [[7, 0xFFFFFFFF], [], [1]]
    assert df["field_comm"].to_list() == ["qemu", "abcdefgh", "c"]  # (a field named like a common column)
    assert df["vals"].to_list() == [[-1, 2, -300], [0, 0, 0], [1, 1, 1]]
    assert df["raw"].to_list() == [b"\xde\xad\xbe\xef", b"\0\0\0\0", b"\1\2\3\4"]
    assert df["big"].to_list() == [-5, 1 << 40, 0]
    cut = [e for e in td.stats.entries() if e.category == "dynamic_field_cut"]
    assert len(cut) == 1 and cut[0].count == 1 and "name data reaches past the record" in cut[0].examples[0]


@pytest.mark.parametrize("kind", ["perf.data", "trace.dat"])
def test_truncated_record_reads_zero_and_empty(tmp_path: Path, kind: str) -> None:
    """A record shorter than its format's fixed part: the fields past its end are zero or empty, never
    a neighbour's bytes."""
    full = _every_kind_record(b"vcpu0\0", [7], b"qemu\0\0\0\0", [-1, 2, -300], b"\xde\xad\xbe\xef", -5)
    td = load_trace([_every_kind_trace(tmp_path, [full[:20]], kind)])  # cut inside comm
    row = td.df("test.every_kind").row(0, named=True)
    assert row["field_comm"] == "qemu" and row["vals"] == [0, 0, 0] and row["raw"] == b"\0\0\0\0" and row["big"] == 0
    assert row["name"] == "" and row["ids"] == []
    assert sum(e.count for e in td.stats.entries() if e.category == "dynamic_field_cut") == 2


def test_records_without_a_format_are_kept_with_their_bytes(tmp_path: Path) -> None:
    """A ring-buffer record whose event id the trace has no format for: kept in ``unparsed`` with its
    payload, counted as unparsed; the others decode."""
    c = content_of(FIXTURES / "microguest200.trace.dat")
    c.event_formats = {s: [t for t in texts if b"name: kvm_msr\n" not in t] for s, texts in c.event_formats.items()}
    td = load_trace([write_trace_dat(tmp_path / "noformat.dat", c, 7, "zstd")])
    un = td.df("unparsed")
    assert un.height == 1600 and set(un["event"].to_list()) == {"unknown:99"}
    assert all(len(r) >= 24 and r[:2] == b"\x63\x00" for r in un["raw"].to_list())  # common_type 99
    assert td.meta["unparsed"] == 1600 and td.df("kvm_pio").height == 201


# --- regressions from the corruption matrix and fuzzing (fuzz/, docs/reliability.md) -----------

def _one_line_error(path: Path, *match: str) -> str:
    """The reader raises an InputError naming the file, and the CLI prints it as one line, exit 2."""
    with pytest.raises(InputError) as e:
        load_trace([path])
    for m in match:
        assert m in str(e.value), str(e.value)
    r = _cli("info", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return str(e.value)


def _categories(td) -> dict[str, int]:  # type: ignore[no-untyped-def]
    out: dict[str, int] = {}
    for e in td.stats.entries():
        out[e.category] = out.get(e.category, 0) + e.count
    return out


PIPE_HEADER = b"PERFILE2" + struct.pack("<Q", 16)
REC_AUXTRACE = 71


@pytest.mark.parametrize("size", [-16, -4096, -(1 << 63), (1 << 63) - 1])
def test_pipe_auxtrace_with_impossible_size_stops_the_walk(tmp_path: Path, size: int) -> None:
    """A 32-byte pipe perf.data whose AUXTRACE record carries a negative or huge data size: the walk
    read outside its buffer (segfault) or never advanced (-16: 5 GB of record offsets)."""
    f = tmp_path / "aux.data"
    f.write_bytes(PIPE_HEADER + struct.pack("<IHHq", REC_AUXTRACE, 0, 16, size))
    _one_line_error(f, "no event attributes")


def test_auxtrace_with_negative_size_in_a_real_file_is_counted(tmp_path: Path) -> None:
    from fuzz.corpus import pipe_mode

    raw = pipe_mode((FIXTURES / "uprobe.perf.data").read_bytes())
    full = load_trace([_write(tmp_path / "full.data", raw)])
    at = _first_record_of(raw, 9)  # the first sample: an AUXTRACE with size -16 before it
    aux = struct.pack("<IHHqQQIII", REC_AUXTRACE, 0, 48, -16, 0, 0, 0, 0, 0) + bytes(4)
    td = load_trace([_write(tmp_path / "aux.data", raw[:at] + aux + raw[at:])])
    assert _categories(td).get("truncated") == 1
    assert sum(td.meta["events"].values()) < sum(full.meta["events"].values())


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _first_record_of(raw: bytes, rtype: int) -> int:
    from fuzz.mutate import perf_records

    return next(o for o, t, _ in perf_records(raw, 16, len(raw)) if t == rtype)


@pytest.mark.parametrize("offset", [(1 << 63) - 1, 1 << 40])
def test_perf_data_offset_past_the_file(tmp_path: Path, offset: int) -> None:
    raw = bytearray((FIXTURES / "uprobe.perf.data").read_bytes())
    raw[40:48] = struct.pack("<Q", offset)
    _one_line_error(_write(tmp_path / "off.data", bytes(raw)), "data section offset", "outside the file")


def test_perf_data_feature_sections_past_the_end_are_counted(tmp_path: Path) -> None:
    """Feature sections past the end of the file (event names, kernel release, CPU count) were skipped
    silently."""
    raw = bytearray((FIXTURES / "uprobe.perf.data").read_bytes())
    d_off, d_size = struct.unpack_from("<QQ", raw, 40)
    table = d_off + d_size
    raw[table:table + 8] = struct.pack("<Q", len(raw) + 100)  # the first feature's offset
    td = load_trace([_write(tmp_path / "feat.data", bytes(raw))])
    e = [e for e in td.stats.entries() if e.category == "header_unreadable"]
    assert e and "past the end of the file" in e[0].examples[0]


def test_pipe_header_attr_with_bad_attr_size(tmp_path: Path) -> None:
    from fuzz.corpus import pipe_mode

    raw = bytearray(pipe_mode((FIXTURES / "uprobe.perf.data").read_bytes()))
    raw[16 + 12:16 + 16] = struct.pack("<I", 0xFFFFFFF0)  # the first HEADER_ATTR's attr.size
    _one_line_error(_write(tmp_path / "attr.data", bytes(raw)), "HEADER_ATTR record: attr size")


def test_short_records_are_counted_not_a_traceback(tmp_path: Path) -> None:
    """A COMM record of 8 bytes (the header only): struct.error before; now counted as unparsed."""
    raw = bytearray((FIXTURES / "uprobe.perf.data").read_bytes())
    d_off, d_size = struct.unpack_from("<QQ", raw, 40)
    from fuzz.mutate import perf_records

    o, _t, s = next(r for r in perf_records(bytes(raw), d_off, d_off + d_size) if r[1] == 3)  # COMM
    raw[o:o + s] = struct.pack("<IHH", 3, 0, 8) + struct.pack("<IHH", 68, 0, s - 8) + bytes(s - 16)
    td = load_trace([_write(tmp_path / "comm.data", bytes(raw))])
    assert any(e.category == "unparsed_record" and e.name == "COMM" for e in td.stats.entries())


def _v7(tmp_path: Path, codec: str = "zstd") -> tuple[Path, bytes]:
    f = write_trace_dat(tmp_path / f"v7{codec}.dat", content_of(FIXTURES / "uprobe.trace.dat"), 7, codec)
    return f, f.read_bytes()


def test_trace_dat_page_size_zero_or_not_a_page(tmp_path: Path) -> None:
    raw = bytearray((FIXTURES / "uprobe.trace.dat").read_bytes())
    at = raw.index(b"\0", 10) + 3  # magic, version string, endian, long size: then the page size
    for bad in (0, 4097, 1 << 31):
        raw[at:at + 4] = struct.pack("<I", bad)
        _one_line_error(_write(tmp_path / "ps.dat", bytes(raw)), "page size")


def test_trace_dat_page_size_that_disagrees_with_the_header_page(tmp_path: Path) -> None:
    """A page size of 8192 in a file of 4096-byte pages read half of every page silently."""
    f = write_trace_dat(tmp_path / "v6.dat", content_of(FIXTURES / "uprobe.trace.dat"), 6, "none")
    raw = bytearray(f.read_bytes())
    at = raw.index(b"\0", 10) + 3
    raw[at:at + 4] = struct.pack("<I", 8192)
    _one_line_error(_write(tmp_path / "ps.dat", bytes(raw)), "disagrees with the header_page")


def test_trace_dat_v7_options_offset_zero_or_looping(tmp_path: Path) -> None:
    f, raw = _v7(tmp_path)
    at = raw.index(b"\0", raw.index(b"\0", raw.index(b"\0", 10) + 7) + 1) + 1  # after the codec version
    zero = raw[:at] + bytes(8) + raw[at + 8:]
    _one_line_error(_write(tmp_path / "zero.dat", zero), "first options section is 0")
    first = struct.unpack_from("<Q", raw, at)[0]
    # the DONE option's next-section offset (the last 8 bytes of the first options section) pointing back
    from vpmutrace.readers.trace_dat import open_trace_dat

    open_trace_dat(f)
    sid, flags, _s, size = struct.unpack_from("<HHIQ", raw, first)
    if not flags & 1:
        end = first + 16 + size
        loop = raw[:end - 8] + struct.pack("<Q", first) + raw[end:]
        _one_line_error(_write(tmp_path / "loop.dat", loop), "loop back")


@pytest.mark.parametrize("codec", ["zstd", "zlib"])
def test_trace_dat_chunk_sizes_are_bounded_and_counted(tmp_path: Path, codec: str) -> None:
    """A CPU chunk claiming 4 GB uncompressed ("out of memory" before), a chunk count of 0 (the CPU's
    data dropped silently)."""
    from vpmutrace.readers.trace_dat import open_trace_dat

    f, raw = _v7(tmp_path, codec)
    td, _ = open_trace_dat(f)
    cd = next(c for b in td.buffers for c in b.cpus if c.size)
    huge = raw[:cd.offset + 8] + struct.pack("<I", 0xFFFFFFFF) + raw[cd.offset + 12:]
    _one_line_error(_write(tmp_path / "huge.dat", huge), "expand to more than")
    none = raw[:cd.offset] + struct.pack("<I", 0) + raw[cd.offset + 4:]
    got = load_trace([_write(tmp_path / "none.dat", none)])
    assert sum(got.meta["events"].values()) == 0 and _categories(got).get("unparsed_record", 0) >= 1


@pytest.mark.parametrize("codec", ["zstd", "zlib"])
def test_trace_dat_section_that_does_not_decompress(tmp_path: Path, codec: str) -> None:
    from vpmutrace.readers.trace_dat import open_trace_dat

    f, raw = _v7(tmp_path, codec)
    td, _ = open_trace_dat(f)
    # the first compressed section: flags bit 0 after its id; damage its data
    at = next(o for o in range(len(raw) - 16) if raw[o:o + 2] == struct.pack("<H", 16)
              and struct.unpack_from("<H", raw, o + 2)[0] == 1)
    bad = raw[:at + 24] + b"\xff" * 8 + raw[at + 32:]
    _one_line_error(_write(tmp_path / "sec.dat", bad), "does not decompress")


def test_trace_dat_damaged_pages_are_counted(tmp_path: Path) -> None:
    """A page with commit 0, a page of zeros, CPU data one byte short of a page: dropped silently before."""
    from vpmutrace.readers.trace_dat import open_trace_dat

    f = write_trace_dat(tmp_path / "v6.dat", content_of(FIXTURES / "uprobe.trace.dat"), 6, "none")
    raw = f.read_bytes()
    td, _ = open_trace_dat(f)
    cd = next(c for b in td.buffers for c in b.cpus if c.size)
    commit0 = raw[:cd.offset + 8] + bytes(8) + raw[cd.offset + 16:]
    zeros = raw[:cd.offset] + bytes(td.page_size) + raw[cd.offset + td.page_size:]
    for name, data in (("commit0", commit0), ("zeros", zeros)):
        got = load_trace([_write(tmp_path / f"{name}.dat", data)])
        assert _categories(got).get("unparsed_record", 0) >= 1, name
    short = raw[:cd.offset + cd.size - 1] + raw[cd.offset + cd.size:]  # one byte less in the CPU's data
    got = load_trace([_write(tmp_path / "short.dat", short)])
    assert _categories(got).get("truncated", 0) + _categories(got).get("partial", 0) >= 1


def test_header_page_commit_size_zero_is_an_error(tmp_path: Path) -> None:
    c = content_of(FIXTURES / "uprobe.trace.dat")
    c.header_page = c.header_page.replace(b"offset:8;\tsize:8;", b"offset:8;\tsize:0;", 1)
    f = write_trace_dat(tmp_path / "hp.dat", c, 6, "none")
    _one_line_error(f, "header_page commit field")


def test_format_field_sizes_past_any_record_are_bad_formats(tmp_path: Path) -> None:
    """A field of size 2**40 or at offset 2e9 was "out of memory" (exit 1)."""
    c = content_of(FIXTURES / "uprobe.trace.dat")
    (system, texts), = [(s, t) for s, t in c.event_formats.items() if t]
    text = texts[0]
    line = next(ln for ln in text.split(b"\n") if b"field:" in ln and b"common_" not in ln)
    for rep in (b"size:1099511627776;", b"offset:2000000000;"):
        key = rep.split(b":")[0] + b":"
        i = line.index(key)
        bad_line = line[:i] + rep + line[line.index(b";", i) + 1:]
        c.event_formats = {system: [text.replace(line, bad_line)]}
        td = load_trace([write_trace_dat(tmp_path / "fmt.dat", c, 6, "none")])
        bad = [e for e in td.stats.entries() if e.category == "bad_format"]
        assert bad and "no trace record is that long" in bad[0].examples[0]
        assert td.meta["unparsed"] == sum(1 for _ in range(td.df("unparsed").height)) > 0


def test_deeply_nested_print_fmt_falls_back_to_raw_fields() -> None:
    from vpmutrace.formats.event_format import parse_format

    fmt = parse_format(EVERY_KIND.replace('print fmt: "name=%s comm=%s big=%lld", __get_str(name), REC->comm, REC->big',
                                          'print fmt: "%d", ' + "(" * 5000 + "REC->big" + ")" * 5000), "test")
    assert fmt.printer is None and "nested" in (fmt.fallback_reason or "")


def test_text_with_a_long_word_in_its_first_lines_does_not_hang(tmp_path: Path) -> None:
    """200 KB without a blank in the first line took > 30 s in the flavor sniffing regexes (bounded by a
    generous subprocess timeout: a hang check, not a speed test)."""
    f = tmp_path / "long.txt"
    f.write_bytes(b"a" + b"a:" * 100_000 + b"\n" + GOOD.encode() * 3)
    r = subprocess.run([sys.executable, "-m", "vpmutrace", "info", str(f)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0 and "kvm:kvm_msr" in r.stdout


def test_zstd_text_bomb_is_refused(tmp_path: Path) -> None:
    """688 KB of zstd expanding to 5 GB was read whole into memory."""
    from fuzz.mutate import zstd_bomb

    f = _write(tmp_path / "bomb.txt.zst", zstd_bomb(1.0))
    _one_line_error(f, "expands to more than")


@pytest.mark.parametrize("codec", ["zstd", "gzip", "xz"])
def test_truncated_compressed_text_is_partial(tmp_path: Path, codec: str) -> None:
    """A .zst cut short read as complete (1313 of 3678 events, nothing counted)."""
    import gzip
    import lzma

    import zstandard

    text = (FIXTURES / "microguest200.ftrace.txt").read_bytes()
    pack = {"gzip": lambda b: gzip.compress(b, mtime=0), "xz": lzma.compress,
            "zstd": zstandard.ZstdCompressor().compress}[codec]
    data = pack(text)
    td = load_trace([_write(tmp_path / f"cut.txt.{codec}", data[:len(data) // 2])])
    full = load_trace([FIXTURES / "microguest200.ftrace.txt"])
    assert 0 < sum(td.meta["events"].values()) < sum(full.meta["events"].values())
    assert _categories(td).get("partial") == 1


def test_line_cut_mid_field_is_not_read_with_a_changed_value(tmp_path: Path) -> None:
    """``= 0x0 (#GP)`` cut to ``= 0x0`` was read as a kvm_msr without its fault."""
    line = " qemu-system-x86-8397    [002] d....  1404.389509: kvm_msr: msr_write c0010200 = 0x0 (#GP)\n"
    f = _write(tmp_path / "cut.txt", (GOOD * 2 + line[:line.index(" (#GP)")]).encode())
    td = load_trace([f])
    assert td.df("kvm_msr").height == 2 and td.meta["unparsed"] == 1
    e = next(e for e in td.stats.entries() if e.category == "unparsed_line")
    assert "ends inside this line" in e.examples[0]


@pytest.mark.parametrize("bad", [
    GOOD.replace("1404.389509", "9223372036.854775808"),  # 2**63 ns
    GOOD.replace("1404.389509", "100000000000000000000.000001"),
    GOOD.replace("[002]", "[2147483648]"),  # cpu 2**31
    GOOD.replace("-8397", "-2147483648"),  # pid 2**31
    GOOD.replace("-8397", "-99999999999999999999"),
])
def test_numbers_that_do_not_fit_are_unparsed_lines(tmp_path: Path, bad: str) -> None:
    """Timestamps >= 2**63 ns wrapped negative; cpu/pid >= 2**31 raised polars InvalidOperationError."""
    td = load_trace([_write(tmp_path / "big.txt", (GOOD + bad + GOOD).encode())])
    assert td.df("kvm_msr").height == 2 and td.meta["unparsed"] == 1
    assert (td.df("kvm_msr")["ts_ns"] > 0).all()


def _dataset(tmp_path: Path) -> Path:
    return load_trace([FIXTURES / "uprobe.trace.dat"]).save(tmp_path / "ds")


def test_dataset_missing_a_table_is_an_error(tmp_path: Path) -> None:
    """A dataset without one of its parquet files loaded while info claimed the original counts."""
    ds = _dataset(tmp_path)
    next(p for p in ds.glob("*.parquet") if p.stem not in ("stats", "lost")).unlink()
    _one_line_error(ds, "is missing", "counts")


@pytest.mark.parametrize("meta", ['{"events": NaN}', "[" * 100_000 + "]" * 100_000, '{"events": "x"}',
                                  '{"time_span_ns": [1, "a"]}', '{"inputs": [1]}'])
def test_dataset_metadata_junk_is_an_error(tmp_path: Path, meta: str) -> None:
    """NaN printed by info --json (invalid JSON), RecursionError, junk types: one-line errors now."""
    import json

    from vpmutrace.tracedata import META_FILE

    ds = _dataset(tmp_path)
    doc = json.loads((ds / META_FILE).read_text())
    if meta.startswith("{"):
        text = json.dumps(doc)[:-1] + ", " + meta[1:]
    else:
        text = meta
    (ds / META_FILE).write_text(text)
    _one_line_error(ds, META_FILE)


def test_terminal_output_has_no_control_sequences_from_trace_strings(tmp_path: Path) -> None:
    """A task name with an escape sequence was printed raw (it can move the cursor, clear or retitle the
    terminal); JSON output escapes it itself."""
    import json

    f = _write(tmp_path / "esc.txt", GOOD.replace("qemu-system-x86-8397", "q\x1b]0;owned\x07\x1b[2J-8397").encode())
    for cmd in (("show", str(f)), ("info", str(f))):
        r = _cli(*cmd)
        assert r.returncode == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout, r.stdout
    assert "q\\x1b]0;owned\\x07\\x1b[2J" in _cli("show", str(f)).stdout
    r = _cli("info", "--json", str(f))
    assert json.loads(r.stdout)["events"] == {"kvm:kvm_msr": 1}


def test_attr_masks_with_bit_63_are_read_not_a_traceback(tmp_path: Path) -> None:
    """An attr's read_format with bit 63 set (found by tests/test_fuzz.py) overflowed the int64 table
    of the compiled key pass (OverflowError): the masks are u64 bits, read as such."""
    import struct

    from vpmutrace.errors import InputError
    from vpmutrace.readers import load_trace

    data = bytearray((FIXTURES / "microguest200.perf.data").read_bytes())
    attrs_off = struct.unpack_from("<Q", data, 24)[0]
    struct.pack_into("<Q", data, attrs_off + 32, struct.unpack_from("<Q", data, attrs_off + 32)[0] | 1 << 63)
    p = tmp_path / "bit63.perf.data"
    p.write_bytes(bytes(data))
    try:
        load_trace([p])
    except InputError:
        pass


def test_attr_without_time_or_tid_is_read_not_a_traceback(tmp_path: Path) -> None:
    """An attr whose sample_type has no TIME / TID field (found by the atheris smoke on a pipe-mode
    input) put -1 (no such field) into the u64 mask table of the compiled key pass (OverflowError):
    the masks are u64, the field positions int64."""
    import struct

    from vpmutrace.errors import InputError
    from vpmutrace.formats import perf_abi as abi
    from vpmutrace.readers import load_trace

    data = bytearray((FIXTURES / "microguest200.perf.data").read_bytes())
    attrs_off = struct.unpack_from("<Q", data, 24)[0]
    st = struct.unpack_from("<Q", data, attrs_off + 24)[0]
    assert st & abi.S_TIME and st & abi.S_TID
    struct.pack_into("<Q", data, attrs_off + 24, st & ~(abi.S_TIME | abi.S_TID))
    p = tmp_path / "notime.perf.data"
    p.write_bytes(bytes(data))
    try:
        load_trace([p])
    except InputError:
        pass


@pytest.mark.parametrize("field", [b"\tfield:u32 ecx;", b"\tfield:unsigned write;"])
def test_format_without_a_field_its_named_table_requires(tmp_path: Path, field: bytes) -> None:
    """Found by the long atheris run (perf_file): one byte of kvm_msr's format line changed
    (``field:`` -> ``fi]ld:``) leaves the format without ``ecx`` or ``write``, which the kvm_msr table
    requires: was a ValueError traceback from build_table; now the records are kept in the event's
    own table and counted as ``fields_missing``."""
    good = load_trace([FIXTURES / "microguest50-zstd.perf.data"])
    n = good.event_counts()["kvm:kvm_msr"]
    raw = (FIXTURES / "microguest50-zstd.perf.data").read_bytes()
    assert raw.count(field) == 1
    f = tmp_path / "t.perf.data"
    f.write_bytes(raw.replace(field, field.replace(b"field:", b"fi]ld:")))
    td = load_trace([f])
    assert td.event_counts()["kvm:kvm_msr"] == n
    assert "kvm_msr" not in td.tables or td.tables["kvm_msr"].num_rows == 0
    own = td.df("kvm.kvm_msr")
    assert own.height == n and own["data"].to_list() == good.df("kvm_msr")["value"].to_list()
    e = next(e for e in td.stats.entries() if e.category == "fields_missing")
    missing = "msr" if b"ecx" in field else "write"
    assert e.count == n and e.name == "kvm:kvm_msr" and f"kind of column(s) {missing} of table kvm_msr" in e.examples[0]
    assert td.df("kvm_pio").height == good.df("kvm_pio").height


def test_failed_to_parse_line_without_a_required_field(tmp_path: Path) -> None:
    """``[FAILED TO PARSE]`` text fields without the MSR index (kvm_msr's ``ecx``): was a ValueError
    traceback; kept in the event's own table (reference layout), counted as ``fields_missing``."""
    f = tmp_path / "t.txt"
    f.write_text(GOOD + " qemu-system-x86-8397    [002] d....  1404.389510: kvm_msr: [FAILED TO PARSE] "
                        "write=1 data=0x5 exception=0\n")
    td = load_trace([f])
    assert td.event_counts() == {"kvm:kvm_msr": 2}
    assert td.df("kvm_msr")["msr"].to_list() == [0xC0000080]
    own = td.df("kvm.kvm_msr")
    assert own.height == 1 and own["data"].to_list() == [5] and own["write"].to_list() == [1]
    e = next(e for e in td.stats.entries() if e.category == "fields_missing")
    assert e.count == 1 and e.examples[0].startswith("line 2: no field of the kind of column(s) msr of table kvm_msr")


def _records(raw: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, size) of a file-mode perf.data's data records (uncompressed files only)."""
    d_off, d_size = struct.unpack_from("<QQ", raw, 40)
    out, pos = [], d_off
    while pos < d_off + d_size:
        typ, _, size = struct.unpack_from("<IHH", raw, pos)
        out.append((pos, typ, size))
        pos += size
    return out


def test_lost_records_whose_count_or_cpu_do_not_fit_are_counted(tmp_path: Path) -> None:
    """Found by the long atheris run (perf_file): a LOST record (a COMM record whose type was changed)
    with a sample_id cpu of 3106984051 was a pyarrow ArrowInvalid traceback when the lost table was
    built (its cpu column is int32), and a LOST_SAMPLES count >= 2**63 would be one for the int64
    count: such a record is damaged, counted as unparsed_record, the others kept."""
    raw = bytearray((FIXTURES / "perf.data.lost_samples-4.4").read_bytes())
    good = load_trace([FIXTURES / "perf.data.lost_samples-4.4"])
    ls = [o for o, t, _ in _records(bytes(raw)) if t == 13]
    assert len(ls) == 2
    struct.pack_into("<Q", raw, ls[0] + 8, (1 << 63) + 1)
    f = tmp_path / "count.perf.data"
    f.write_bytes(raw)
    td = load_trace([f])
    assert td.df("lost")["count"].to_list() == good.df("lost")["count"].to_list()[1:]
    e = next(e for e in td.stats.entries() if e.category == "unparsed_record")
    assert e.name == "LOST_SAMPLES" and e.count == 1 and f"offset {ls[0]}: count {(1 << 63) + 1}" in e.examples[0]
    assert td.event_counts() == good.event_counts()

    raw = bytearray((FIXTURES / "uprobe.perf.data").read_bytes())  # sample_id_all with CPU, last in the trailer
    o, _, size = next(r for r in _records(bytes(raw)) if r[1] == 3)
    struct.pack_into("<I", raw, o, 2)  # COMM -> LOST
    struct.pack_into("<I", raw, o + size - 8, 3106984051)
    f = tmp_path / "cpu.perf.data"
    f.write_bytes(raw)
    td = load_trace([f])
    e = next(e for e in td.stats.entries() if e.category == "unparsed_record" and e.name == "LOST")
    assert e.count == 1 and "cpu 3106984051 out of range" in e.examples[0]
    assert "lost" not in td.tables or td.tables["lost"].num_rows == 0


def test_read_format_with_its_top_bit_set(tmp_path: Path) -> None:
    """Found by the long atheris run (perf_file): an attr's read_format >= 2**63 (a u64) was an
    OverflowError traceback (read into an int64 array); its bits are now kept as they are and the
    samples (cycles, no tracepoint data), which carry no PERF_SAMPLE_READ, read as in the undamaged file."""
    raw = bytearray((FIXTURES / "perf.data.lost_samples-4.4").read_bytes())
    attrs_off = struct.unpack_from("<Q", raw, 24)[0]
    struct.pack_into("<Q", raw, attrs_off + 32, struct.unpack_from("<Q", raw, attrs_off + 32)[0] | 1 << 63)
    f = tmp_path / "rf.perf.data"
    f.write_bytes(raw)
    good, td = load_trace([FIXTURES / "perf.data.lost_samples-4.4"]), load_trace([f])
    assert td.event_counts() == good.event_counts()
    assert good.df("samples").height > 0
    for name in {*good.event_tables().values(), "samples"}:
        assert td.df(name).equals(good.df(name))


def test_format_field_of_another_kind_than_its_named_table_column(tmp_path: Path) -> None:
    """Found by the long atheris run (perf_file): kvm_pio's ``unsigned int size`` changed into a char
    array decodes as text, which the kvm_pio table's u8 ``size`` column cannot take: was an
    ArrowInvalid traceback ("Failed to parse string ... as a scalar of type uint32") from build_table;
    now the records are kept in the event's own table, counted as ``fields_missing``."""
    raw = (FIXTURES / "microguest50-zstd.perf.data").read_bytes()
    field = b"field:unsigned int size;"
    assert raw.count(field) == 1
    f = tmp_path / "t.perf.data"
    f.write_bytes(raw.replace(field, b"field:char      size[4];"))
    good, td = load_trace([FIXTURES / "microguest50-zstd.perf.data"]), load_trace([f])
    n = good.event_counts()["kvm:kvm_pio"]
    assert td.event_counts() == good.event_counts()
    own = td.df("kvm.kvm_pio")
    assert own.height == n and own["port"].to_list() == good.df("kvm_pio")["port"].to_list()
    e = next(e for e in td.stats.entries() if e.category == "fields_missing")
    assert e.count == n and "column(s) size of table kvm_pio: kept in table kvm.kvm_pio" in e.examples[0]


def test_format_with_a_field_declared_twice_is_a_bad_format(tmp_path: Path) -> None:
    """Found by the long atheris run (event_format): a format naming a field twice (here a second
    ``name`` of another type) decoded one field's bytes into the other's column: an ArrowInvalid
    traceback ("Failed to parse string: 'vcpu0' as a scalar of type uint32") building the event's
    table. A record's fields are found by name, so such a format is a BadFormat: counted as
    ``bad_format``, the event's records kept raw."""
    c = content_of(FIXTURES / "uprobe.trace.dat")
    (system, texts), = [(s, t) for s, t in c.event_formats.items() if t]
    text = texts[0]
    line = next(ln for ln in text.split(b"\n") if b"field:" in ln and b"common_" not in ln)
    name = line.split(b";")[0].split()[-1]
    twice = text.replace(line, line + b"\n\tfield:u32 " + name + b";\toffset:0;\tsize:4;\tsigned:0;")
    c.event_formats = {system: [twice]}
    good = load_trace([FIXTURES / "uprobe.trace.dat"])
    td = load_trace([write_trace_dat(tmp_path / "fmt.dat", c, 6, "none")])
    bad = [e for e in td.stats.entries() if e.category == "bad_format"]
    assert len(bad) == 1 and f"field {name.decode()} declared twice" in bad[0].examples[0]
    assert td.df("unparsed").height == sum(good.event_counts().values()) > 0


def test_emulated_instruction_bytes_cut_mid_byte(tmp_path: Path) -> None:
    """Found by the long atheris run (text): kvm_emulate_insn bytes ``0ff 01 d1`` (an odd number of
    hex digits) matched the grammar and then failed polars' hex decode, a ComputeError traceback.
    The grammar now takes whole bytes only (__print_hex prints two digits a byte): the line is
    kept in ``unparsed`` and counted, the others read as before."""
    src = (FIXTURES / "lkml_exception_nmi_not_nmi.txt").read_text()
    assert src.count(":0f 01 d1 (prot64)") == 1
    f = tmp_path / "t.txt"
    f.write_text(src.replace(":0f 01 d1 (prot64)", ":0ff 01 d1 (prot64)"))
    good, td = load_trace([FIXTURES / "lkml_exception_nmi_not_nmi.txt"]), load_trace([f])
    assert td.df("kvm_emulate_insn").height == good.df("kvm_emulate_insn").height - 1
    e = next(e for e in td.stats.entries() if e.category == "body_unparsed")
    assert e.name.endswith("kvm_emulate_insn") and "0ff 01 d1" in e.examples[0]
    assert {k: v for k, v in td.event_counts().items() if k != "kvm:kvm_emulate_insn"} == \
        {k: v for k, v in good.event_counts().items() if k != "kvm:kvm_emulate_insn"}


def test_kernel_maps_that_cover_nothing() -> None:
    """Found by the long atheris run (perf_file, second round): kernel maps whose every length is 0
    (a damaged MMAP record's) left no interval to look a sample up in: IndexError in
    perf_maps.cover; now no sample has a map there (as with no maps)."""
    from vpmutrace.readers.perf_maps import cover

    starts = ends = np.array([0xFFFF0000, 0xFFFF8000], np.uint64)
    hit, lo, hi = cover(starts, ends, np.array([0, 1], np.int64), np.array([0xFFFF0000], np.uint64),
                        np.array([5], np.int64), window=True)
    assert hit.tolist() == [-1] and lo.tolist() == [np.iinfo(np.int64).min] and hi.tolist() == [np.iinfo(np.int64).max]
    assert cover(starts, ends + 0x10, np.array([0, 1], np.int64), np.array([0xFFFF0004], np.uint64),
                 np.array([5], np.int64)).tolist() == [0]
