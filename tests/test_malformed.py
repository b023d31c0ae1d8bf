"""Bad input: one-line errors naming file and place, or counted skips; never a traceback."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

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
    (b"\x7fELF\x02\x01\x01\x00" + bytes(64), "binary data where a text trace was expected"),
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
