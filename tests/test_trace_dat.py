"""trace.dat: every version/codec decodes the same; trace-cmd reads what we write; lost-event flags."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import polars as pl
import pytest
from conftest import FIXTURES, need_tool

from vpmutrace.readers import load_trace
from vpmutrace.readers.trace_dat import content_of
from vpmutrace.writers.trace_dat import write_trace_dat

SRC = FIXTURES / "microguest200.trace.dat"
TABLES = ["kvm_msr", "kvm_pio", "kvm_cpuid", "kvm_inj_exception", "kvm_userspace_exit", "sched_switch",
          "irq_vectors"]


@pytest.fixture(scope="module")
def original():
    return load_trace([SRC])


@pytest.mark.parametrize("version,codec", [(7, "zlib"), (7, "zstd"), (7, "none"), (6, "none")])
def test_reencoded_file_decodes_identically(tmp_path: Path, original, version: int, codec: str) -> None:
    out = write_trace_dat(tmp_path / f"v{version}-{codec}.dat", content_of(SRC), version, codec)
    td = load_trace([out])
    assert td.meta["inputs"][0]["file_version"] == version
    assert td.meta["inputs"][0]["compression"] == (codec if version == 7 else "none")
    assert td.meta["events"] == original.meta["events"]
    for t in TABLES:
        assert td.df(t).equals(original.df(t)), t
    assert td.meta["kernel_release"] == original.meta["kernel_release"] == "6.18.44-fc-v657"


@pytest.mark.parametrize("version,codec", [(7, "zstd"), (7, "none"), (6, "none")])
def test_trace_cmd_reads_what_we_write(tmp_path: Path, original, version: int, codec: str) -> None:
    tc = need_tool("trace-cmd")
    out = write_trace_dat(tmp_path / "w.dat", content_of(SRC), version, codec)
    r = subprocess.run([tc, "report", "-i", str(out)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-300:]
    text = tmp_path / "w.report.txt"
    text.write_text(r.stdout)
    printed = load_trace([text])
    assert printed.meta["events"] == original.meta["events"]
    for t in ("kvm_msr", "kvm_pio", "kvm_cpuid", "kvm_userspace_exit"):
        a = original.df(t).with_columns(((pl.col("ts_ns") + 500) // 1000 * 1000).alias("ts_ns"))
        assert a.drop("comm", "seq").equals(printed.df(t).drop("comm", "seq")), t


def _set_page_flags(pages: bytes, page_size: int, page: int, lost: int | None) -> bytes:
    """Mark one ring-buffer page as having lost events before it (commit bits 31/30, count after data)."""
    buf = bytearray(pages)
    base = page * page_size
    commit = struct.unpack_from("<Q", buf, base + 8)[0]
    size = commit & ((1 << 27) - 1)
    commit |= 1 << 31
    if lost is not None:
        assert 16 + size + 8 <= page_size
        commit |= 1 << 30
        struct.pack_into("<Q", buf, base + 16 + size, lost)
    struct.pack_into("<Q", buf, base + 8, commit)
    return bytes(buf)


def test_missing_events_flags_become_lost_rows(tmp_path: Path, original) -> None:
    c = content_of(SRC)
    buf = next(b for b in c.buffers if b.cpus)
    cpu = min(buf.cpus)
    pages = buf.cpus[cpu]
    npages = len(pages) // c.page_size
    sizes = [struct.unpack_from("<Q", pages, p * c.page_size + 8)[0] & ((1 << 27) - 1) for p in range(npages)]
    roomy = [p for p in range(npages) if 16 + sizes[p] + 8 <= c.page_size]  # room for the stored count
    assert npages >= 2 and roomy
    buf.cpus[cpu] = _set_page_flags(pages, c.page_size, roomy[-1], 1234)
    buf.cpus[cpu] = _set_page_flags(buf.cpus[cpu], c.page_size, 0 if roomy[-1] else 1, None)
    td = load_trace([write_trace_dat(tmp_path / "lost.dat", c, 7, "zstd")])
    lost = td.df("lost").filter(pl.col("kind") == "missing_events")
    assert sorted(lost.select("cpu", "count").rows(), key=str) == sorted([(cpu, 1234), (cpu, None)], key=str)
    assert td.meta["lost_events"] == 1234 and td.meta["lost_notices"] == 2
    assert td.meta["events"] == original.meta["events"]  # the pages' events are all still there
