"""Tests that catch realistic one-line defects (issue 15, item 7; benchmarks/mutants/planted.py plants
each one): every value is checked against an independent computation on real traces, or against perf's
and trace-cmd's own reading of the same file."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import polars as pl
import pytest
from conftest import FIXTURES, need_tool, shared

from vpmutrace.analyze.exits import stats
from vpmutrace.analyze.windows import exit_intervals
from vpmutrace.readers import load_trace
from vpmutrace.tracedata import TraceData

TWO_VCPUS = "public-github/hip24_host_kvm_2vcpu.dat"


def _expected_pairs(td: TraceData) -> dict[int, int | None]:
    """exit_row -> handling ns by the rule written out by hand: the next event of the same (source,
    vCPU thread) among kvm_exit/kvm_entry, in (ts, seq) order, if it is an entry; else None."""
    ex = td.df("kvm_exit").with_row_index("exit_row").select(
        "exit_row", "ts_ns", "seq", pl.col("source").cast(pl.String), "pid", pl.lit(True).alias("is_exit"))
    en = td.df("kvm_entry").select(pl.lit(None, pl.UInt32).alias("exit_row"), "ts_ns", "seq",
                                   pl.col("source").cast(pl.String), "pid", pl.lit(False).alias("is_exit"))
    rows = pl.concat([ex, en]).sort("source", "pid", "ts_ns", "seq").rows(named=True)
    out: dict[int, int | None] = {}
    for a, b in zip(rows, rows[1:] + [None], strict=True):
        if not a["is_exit"]:
            continue
        same = b is not None and (b["source"], b["pid"]) == (a["source"], a["pid"])
        out[a["exit_row"]] = b["ts_ns"] - a["ts_ns"] if same and not b["is_exit"] else None
    return out


def _check_pairs(td: TraceData) -> int:
    """Every trusted pair is the hand rule's; every exit the rule leaves without an entry is unpaired for
    that reason. Returns how many pairs were compared."""
    want = _expected_pairs(td)
    iv = exit_intervals(td)
    n = 0
    for row, handling, why in iv.select("exit_row", "handling_ns", "unpaired").iter_rows():
        if want[row] is None:
            assert why == "no_entry", (row, why)
        elif why is None:
            assert handling == want[row], (row, handling, want[row])
            n += 1
    return n


def test_exits_pair_with_the_next_event_of_their_vcpu_thread_on_a_two_vcpu_host() -> None:
    """Two vCPU threads sharing two host CPUs (a public host capture): pairing by CPU, or with the next
    event of any kind, gives other pairs than the hand rule."""
    td = load_trace([shared(TWO_VCPUS)])
    threads = td.df("kvm_exit").select("cpu", "pid").unique()
    assert threads["pid"].n_unique() >= 2 and threads.height > threads["pid"].n_unique()  # threads move
    assert _check_pairs(td) > 1000


@pytest.mark.parametrize(("name", "pairs"), [(TWO_VCPUS, 1000), ("lkml_krause_vmx_nested_6x_ftrace.txt", 8)])
def test_an_exit_whose_entry_was_lost_is_not_paired_with_the_next_exit(name: str, pairs: int) -> None:
    """Real traces with every 5th kvm_entry removed (what a lost event does): the exit before a removed
    entry is followed by the thread's next exit, and stays unpaired."""
    td = load_trace([shared(name) if "/" in name else FIXTURES / name])
    en = td.tables["kvm_entry"]
    keep = pl.from_arrow(en).with_row_index("_i").filter(pl.col("_i") % 5 != 4).drop("_i").to_arrow()
    thin = dataclasses.replace(td, tables={**td.tables, "kvm_entry": keep.cast(en.schema)})
    assert _check_pairs(thin) >= pairs
    iv = exit_intervals(thin)
    assert iv.filter(pl.col("unpaired") == "no_entry").height >= en.num_rows // 5


def test_exit_statistics_are_perf_kvm_stat_nearest_rank_percentiles() -> None:
    """p50/p99/min/max per reason against a by-hand nearest-rank computation on a real host trace."""
    td = load_trace([shared(TWO_VCPUS)])
    iv = exit_intervals(td).filter(pl.col("handling_ns").is_not_null())
    got = {r["reason"]: r for r in stats(iv, ["reason"]).iter_rows(named=True)}
    checked = 0
    for reason, g in iv.group_by("reason"):
        v = sorted(g["handling_ns"].to_list())
        r = got[reason[0]]
        assert (r["min_ns"], r["max_ns"], r["samples"]) == (v[0], v[-1], len(v))
        idx = round(0.99 * (len(v) - 1))
        if len(v) >= 100 and v[idx] != v[round(0.95 * (len(v) - 1))]:
            assert r["p99_ns"] == v[idx], reason
            checked += 1
    assert checked >= 2


def _perf_report_lost(perf: str, path: Path) -> tuple[int, int]:
    """The sums of PERF_RECORD_LOST's and PERF_RECORD_LOST_SAMPLES's counts, as perf's raw dump prints them."""
    dump = subprocess.run([perf, "report", "-D", "-i", str(path)], capture_output=True, text=True,
                          check=False).stdout
    return (sum(int(n) for n in re.findall(r"PERF_RECORD_LOST: id:\d+: lost:(\d+)", dump)),
            sum(int(n) for n in re.findall(r"PERF_RECORD_LOST_SAMPLES: id:\d+: lost samples :(\d+)", dump)))


def test_perf_lost_counts_equal_perfs_own(tmp_path: Path) -> None:
    """perf record with 4-page buffers, stopped for 2 s while a guest runs: the LOST and LOST_SAMPLES
    records' counts (not their ids) summed equal what `perf report -D` prints."""
    import os
    import signal
    import sys
    import time

    if os.geteuid() != 0 or not Path("/dev/kvm").exists():
        pytest.skip("needs root and /dev/kvm to record")
    perf = need_tool("perf")
    from vpmutrace.collectors.perf_backend import PerfCapture, PerfProgress

    guest = Path(__file__).resolve().parents[1] / "collectors" / "microguest.py"
    cap = PerfCapture(perf, ["kvm:kvm_msr", "kvm:kvm_exit"], tmp_path / "p.perf.data", mmap_pages="4")
    cap.start([sys.executable, str(guest), "-n", "100000000", "--timeout", "6", "-q"], None)
    assert cap.proc is not None
    prog = PerfProgress(tmp_path / "p.perf.data")
    end = time.monotonic() + 90
    while time.monotonic() < end and prog.update()[0] < 2000:  # the guest runs and perf writes
        time.sleep(0.2)
    cap.proc.send_signal(signal.SIGSTOP)
    time.sleep(2)
    cap.proc.send_signal(signal.SIGCONT)
    cap.wait(timeout=60)
    td = load_trace([tmp_path / "p.perf.data"])
    lost, lost_samples = _perf_report_lost(perf, tmp_path / "p.perf.data")
    ours = dict(td.df("lost").group_by("kind").agg(pl.col("count").sum()).rows())
    assert lost > 0 and ours.get("lost_events") == lost
    assert ours.get("lost_samples", 0) == lost_samples and td.meta["lost_events"] == lost + lost_samples


RB_TIME_EXTEND, RB_TIME_STAMP, RB_PADDING = 30, 31, 29  # include/linux/ring_buffer.h type_len values


def _absolute_stamps(pages: bytes, page_size: int, long_size: int) -> tuple[bytes, int]:
    """The same ring-buffer pages with every TIME_EXTEND (a delta) replaced by the TIME_STAMP (an absolute
    time, low 59 bits: kernel/trace/ring_buffer.c rb_add_timestamp) of the same moment. Returns the pages
    and how many were replaced."""
    out = bytearray(pages)
    n = 0
    for p in range(0, len(pages) - page_size + 1, page_size):
        ts = int.from_bytes(pages[p:p + 8], "little")
        commit = int.from_bytes(pages[p + 8:p + 8 + long_size], "little") & ((1 << 27) - 1)
        pos, end = p + 8 + long_size, p + 8 + long_size + commit
        while pos + 4 <= end:
            h = int.from_bytes(pages[pos:pos + 4], "little")
            type_len, delta = h & 0x1F, h >> 5
            a0 = int.from_bytes(pages[pos + 4:pos + 8], "little")
            if type_len == RB_PADDING:
                if delta == 0:
                    break
                pos += 4 + a0
            elif type_len == RB_TIME_EXTEND:
                ts += (a0 << 27) | delta
                stamp = ts & ((1 << 59) - 1)
                out[pos:pos + 8] = (RB_TIME_STAMP | (stamp & ((1 << 27) - 1)) << 5).to_bytes(4, "little") + \
                    (stamp >> 27).to_bytes(4, "little")
                n += 1
                pos += 8
            elif type_len == RB_TIME_STAMP:
                ts = (ts & ~((1 << 59) - 1)) | (a0 << 27) | delta
                pos += 8
            else:
                ts += delta
                pos += 4 + (a0 if type_len == 0 else 4 * type_len)
    return bytes(out), n


def _our_times(td: TraceData) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for name in td.event_tables().values():
        out += td.df(name).select("cpu", "ts_ns").rows()
    return sorted(out)


TRACE_CMD_32 = Path("/work/tools/tc32/trace-cmd")  # trace-cmd 3.2 where installed: reads zlib too


def _trace_cmd_times(path: Path) -> list[tuple[int, int]]:
    r = subprocess.run([need_tool("trace-cmd"), "report", "-t", "-i", str(path)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0 and TRACE_CMD_32.exists():
        r = subprocess.run([str(TRACE_CMD_32), "report", "-t", "-i", str(path)], capture_output=True, text=True,
                           check=False)
    if r.returncode != 0:
        pytest.skip(f"this trace-cmd cannot read {path.name} ({r.stderr.strip()[-80:]}): 3.2 reads zlib")
    rep = r.stdout
    # seconds.nanoseconds, or a raw count when the file names no clock to convert with
    return sorted((int(c), int(s) * 10**9 + int(ns) if ns else int(s))
                  for c, s, ns in re.findall(r"\[(\d{3})\]\s*(?:\S+\s+)?(\d+)(?:\.(\d{9}))?:", rep))


@pytest.mark.parametrize("name", [TWO_VCPUS, "public-github/labsisop_i686_v6_sched.dat",
                                  "public-github/langraph_v7zstd_perfclock_stack.dat"])
def test_ring_buffer_times_equal_trace_cmd_to_the_ns_with_extends_and_absolute_stamps(name: str,
                                                                                       tmp_path: Path) -> None:
    """Every event's CPU and time equal `trace-cmd report -t`'s, to the nanosecond, on real captures with
    TIME_EXTEND events (gaps over 2^27 ns: 100, 54 and 46 of them; x86-64 and i686 pages); and again
    after each extend is rewritten as the absolute TIME_STAMP of the same moment (the kernel's
    absolute-timestamp mode), read by both."""
    from vpmutrace.readers.trace_dat import content_of
    from vpmutrace.writers.trace_dat import write_trace_dat

    src = shared(name)
    ours = _our_times(load_trace([src]))
    assert ours == _trace_cmd_times(src) and len(ours) > 250
    # the pages re-encoded as they are (what content_of keeps: no clock conversion options), then with
    # absolute stamps: the same times, by us and by trace-cmd
    plain = write_trace_dat(tmp_path / "plain.dat", content_of(src), 7, "zstd")
    c = content_of(src)
    replaced = 0
    for b in c.buffers:
        for cpu, pages in b.cpus.items():
            b.cpus[cpu], n = _absolute_stamps(pages, c.page_size, c.long_size)
            replaced += n
    assert replaced >= 40
    dat = write_trace_dat(tmp_path / "abs.dat", c, 7, "zstd")
    want = _our_times(load_trace([plain]))
    assert len(want) == len(ours) and _our_times(load_trace([dat])) == want
    assert _trace_cmd_times(dat) == want


S_IP, S_TID, S_TIME, S_ADDR, S_ID, S_STREAM_ID, S_CPU, S_IDENTIFIER = 1, 2, 4, 8, 64, 512, 128, 1 << 16


def _with_stream_id(src: bytes) -> bytes:
    """A file-mode perf.data with PERF_SAMPLE_STREAM_ID added to every attr's sample_type and a stream id
    written where include/uapi/linux/perf_event.h puts it: in a SAMPLE after IDENTIFIER, IP, TID, TIME,
    ADDR, ID; in the sample_id_all trailer of other kernel records before CPU and IDENTIFIER. The
    feature sections after the data move with it."""
    import struct

    attrs_off, attrs_size = struct.unpack_from("<QQ", src, 24)
    attr_size = struct.unpack_from("<Q", src, 16)[0]
    data_off, data_size = struct.unpack_from("<QQ", src, 40)
    out = bytearray(src[:data_off])
    st = struct.unpack_from("<Q", src, attrs_off + 24)[0]
    layout = S_IDENTIFIER | S_IP | S_TID | S_TIME | S_ADDR | S_ID | S_CPU
    for a in range(attrs_off, attrs_off + attrs_size, attr_size):
        this = struct.unpack_from("<Q", src, a + 24)[0]
        assert this & layout == st & layout  # the stream id goes to the same place in every event
        struct.pack_into("<Q", out, a + 24, this | S_STREAM_ID)
    before = sum(8 for bit in (S_IDENTIFIER, S_IP, S_TID, S_TIME, S_ADDR, S_ID) if st & bit)
    after = sum(8 for bit in (S_CPU, S_IDENTIFIER) if st & bit)
    pos, end, sid = data_off, data_off + data_size, 0x5EED
    while pos < end:
        typ, _misc, size = struct.unpack_from("<IHH", src, pos)
        rec = bytearray(src[pos:pos + size])
        if typ == 9:  # PERF_RECORD_SAMPLE
            rec[8 + before:8 + before] = struct.pack("<Q", sid)
        elif typ < 64:  # kernel records carry the sample_id_all trailer
            rec[size - after:size - after] = struct.pack("<Q", sid)
        if len(rec) != size:
            struct.pack_into("<H", rec, 6, len(rec))
        out += rec
        pos += size
    grown = len(out) - data_off - data_size
    struct.pack_into("<Q", out, 48, data_size + grown)
    feats = bytearray(src[end:])  # the feature section table: (offset, size) per feature, then contents
    nfeat = sum(bin(w).count("1") for w in struct.unpack_from("<4Q", src, 72))
    for i in range(nfeat):
        off = struct.unpack_from("<Q", feats, 16 * i)[0]
        struct.pack_into("<Q", feats, 16 * i, off + grown)
    return bytes(out + feats)


def _perf_script(perf: str, path: Path) -> str:
    return subprocess.run([perf, "script", "-F", "comm,tid,cpu,time,event,trace", "-i", str(path)],
                          capture_output=True, text=True, check=False).stdout


@pytest.mark.parametrize("name", ["microguest200.perf.data", "mixed.perf.data", "cpuclock.perf.data"])
def test_perf_samples_with_stream_id_read_the_same(name: str, tmp_path: Path) -> None:
    """Real perf.data captures (tracepoints; cpu-clock samples) rewritten with PERF_SAMPLE_STREAM_ID (perf
    record never sets it, other tools do): `perf script` prints the same events as from the original, and
    so do we, field by field."""
    src = FIXTURES / name
    dst = tmp_path / "stream.perf.data"
    dst.write_bytes(_with_stream_id(src.read_bytes()))
    perf = need_tool("perf")
    theirs = _perf_script(perf, dst)
    assert theirs == _perf_script(perf, src) and theirs.count("\n") > 1000
    a, b = load_trace([src]), load_trace([dst])
    assert a.event_counts() == b.event_counts() and set(a.tables) == set(b.tables)
    for t in [*a.event_tables().values(), "samples", "lost"]:  # tracepoints, other samples (cpu-clock), loss
        assert b.df(t).equals(a.df(t)), t


def test_exits_without_entries_still_count_exits_by_reason() -> None:
    """A host capture whose kvm_entry events are missing (not recorded): the exits analyzer says it needs
    kvm_entry and still gives the exit count and the count per reason, equal to a by-hand count."""
    from vpmutrace.analyze import exits
    from vpmutrace.analyze.context import Config

    td = load_trace([shared(TWO_VCPUS)])
    no_entry = dataclasses.replace(td, tables={k: v for k, v in td.tables.items() if k != "kvm_entry"})
    r = exits.analyze(no_entry, Config.for_trace(no_entry))
    reasons = td.df("kvm_exit")["reason"].cast(pl.String).to_list()
    assert len(r.needs) == 1 and r.needs[0].startswith("kvm:kvm_entry events") and not r.computable
    assert r.summary["exits_total"] == len(reasons) > 1000
    assert r.summary["by_reason_counts"] == {x: reasons.count(x) for x in sorted(set(reasons))}
