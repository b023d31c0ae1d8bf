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
