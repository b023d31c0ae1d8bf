"""trace.dat: every version/codec decodes the same; trace-cmd reads what we write; lost-event flags."""

from __future__ import annotations

import shutil
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
    # each loss is a time range on its CPU: from the last event before the page to the page's start
    events = pl.concat([td.df(t).select("ts_ns", "cpu") for t in TABLES])
    for r in lost.iter_rows(named=True):
        assert r["ts_ns"] is not None
        before = events.filter((pl.col("cpu") == cpu) & (pl.col("ts_ns") < r["ts_ns"]))
        assert r["start_ns"] == (before["ts_ns"].max() if before.height else None)
    assert td.meta["events"] == original.meta["events"]  # the pages' events are all still there


def test_host_and_guest_files_share_the_host_clock(tmp_path: Path) -> None:
    """A guest trace.dat (TIME_SHIFT naming the host's TRACEID) is moved onto the host clock."""
    import copy

    c = content_of(SRC)
    for b in c.buffers:
        b.name = ""
    c.buffers = [b for b in c.buffers if b.cpus]
    host, guest = copy.deepcopy(c), copy.deepcopy(c)
    host.trace_id = 0xAAAA
    host.guests = [{"name": "vm1", "trace_id": 0xBBBB, "vcpus": [{"vcpu": 0, "host_pid": 4242}]}]
    t0 = 829_500_000_000
    guest.trace_id = 0xBBBB
    guest.time_shift = {"peer_trace_id": 0xAAAA, "flags": 1, "cpus": [
        {"times": [t0, t0 + 100_000_000], "offsets": [5_000_000, 5_001_000], "scalings": [1, 1]},
        {"times": [t0], "offsets": [-3_000_000], "scalings": [1]}]}
    h = write_trace_dat(tmp_path / "host.dat", host, 7, "zstd")
    g = write_trace_dat(tmp_path / "guest.dat", guest, 7, "zstd")
    td = load_trace([h, g])
    assert td.meta["host_guest"] == {str(g): "vm1"} and td.meta["sources"] == ["host", "vm1"]
    orig = load_trace([SRC]).df("kvm_msr").sort("seq")
    moved = td.df("kvm_msr").filter(pl.col("source") == "vm1").sort("seq")
    # independent arithmetic: cpu0 interpolates 5.000 -> 5.001 ms over 100 ms; cpu1 has one sample
    t = orig["ts_ns"].to_numpy()
    cpu = orig["cpu"].to_numpy()
    import numpy as np

    interp = 5_000_000 + ((t - t0) * 1_000 + 50_000_000) // 100_000_000
    want = np.where(cpu == 0, t + interp, t - 3_000_000)
    assert moved["ts_ns"].to_list() == want.tolist()
    tc = shutil.which("trace-cmd")
    if tc:  # trace-cmd's own host sync gives the same times
        out = subprocess.run([tc, "report", "-i", str(h), "-i", str(g)], capture_output=True, text=True,
                             check=False).stdout
        (tmp_path / "hg.txt").write_text(out)
        theirs = load_trace([tmp_path / "hg.txt"]).df("kvm_msr").filter(pl.col("source") == "guest.dat")
        ours = moved.with_columns(((pl.col("ts_ns") + 500) // 1000 * 1000).alias("ts_ns")).sort("ts_ns", "seq")
        assert ours.select("ts_ns", "cpu", "msr", "value").equals(theirs.select("ts_ns", "cpu", "msr", "value"))


def test_guest_read_alone_and_with_an_unnamed_host_entry(tmp_path: Path) -> None:
    """trace-cmd report moves a guest file onto its host's clock with its TimeShift option even when it is
    read alone (trace-input.c enables the sync while opening the file); a host whose GUEST option has an
    empty name (what trace-cmd writes for an unnamed guest) names the guest's rows after the guest file."""
    import copy

    c = content_of(SRC)
    c.buffers = [b for b in c.buffers if b.cpus]
    for b in c.buffers:
        b.name = ""
    host, guest = copy.deepcopy(c), copy.deepcopy(c)
    host.trace_id, guest.trace_id = 0xAAAA, 0xBBBB
    host.guests = [{"name": "", "trace_id": 0xBBBB, "vcpus": [{"vcpu": 0, "host_pid": 4242}]}]
    one = {"times": [1], "offsets": [7_000_000], "scalings": [1]}
    guest.time_shift = {"peer_trace_id": 0xAAAA, "flags": 0, "cpus": [one, dict(one)]}
    h = write_trace_dat(tmp_path / "host.dat", host, 7, "zstd")
    g = write_trace_dat(tmp_path / "vm-a.dat", guest, 7, "zstd")
    orig = load_trace([SRC]).df("kvm_msr")
    alone = load_trace([g])
    assert alone.df("kvm_msr")["ts_ns"].to_list() == (orig["ts_ns"] + 7_000_000).to_list()
    assert "TimeShift" in alone.meta["inputs"][0]["time_shift"] and alone.meta["sources"] == ["host"]
    pair = load_trace([h, g])
    assert pair.meta["sources"] == ["host", "vm-a"] and pair.meta["host_guest"] == {str(g): "vm-a"}
    assert pair.df("kvm_msr").filter(pl.col("source") == "vm-a")["ts_ns"].to_list() == \
        alone.df("kvm_msr")["ts_ns"].to_list()


def test_public_host_guest_pair() -> None:
    """A 6.5 VMX host and its 5.15 guest (trace-cmd 3.2, zlib v7, TSC2NSEC, an empty GUEST name): the
    guest's first event at 22149.948193 s on the host clock, alone or with its host, as trace-cmd 3.2's
    report prints it."""
    from conftest import shared

    host, guest = shared("public-github/hip24_pair1_host.dat"), shared("public-github/hip24_pair1_guest.dat")
    for td, src in ((load_trace([guest]), "host"), (load_trace([host, guest]), "hip24_pair1_guest")):
        rows = pl.concat([td.df(t).filter(pl.col("source") == src).select("ts_ns")
                          for t in set(td.event_tables().values())])
        assert (rows["ts_ns"].min() + 500) // 1000 == 22149948193
    pair = load_trace([host, guest])
    assert pair.meta["sources"] == ["hip24_pair1_guest", "host"]
    assert pair.df("kvm_exit").height == 5860 and not [e for e in pair.stats.entries()
                                                       if e.category == "clock_mismatch"]


def test_tsc2nsec_conversion_as_trace_cmd(tmp_path: Path) -> None:
    from vpmutrace.clocks import ticks_to_ns as tsc_to_ns

    c = content_of(SRC)
    for b in c.buffers:
        b.name, b.clock = "", "x86-tsc"
    c.buffers = [b for b in c.buffers if b.cpus]
    c.trace_clock = "local global counter uptime perf mono mono_raw boot [x86-tsc]"
    c.tsc2nsec = (715827883, 31, 1000)  # 3 GHz TSC: 1/3 ns per count
    f = write_trace_dat(tmp_path / "tsc.dat", c, 7, "zstd")
    raw = load_trace([SRC]).df("kvm_msr")["ts_ns"].to_numpy()
    ours = load_trace([f]).df("kvm_msr")["ts_ns"].to_list()
    assert ours == [(int(t) * 715827883) >> 31 for t in raw]
    assert tsc_to_ns(raw, 715827883, 31).tolist() == ours
    tc = shutil.which("trace-cmd")
    if tc:
        out = subprocess.run([tc, "report", "-t", "-i", str(f)], capture_output=True, text=True, check=False).stdout
        (tmp_path / "r.txt").write_text(out)
        assert load_trace([tmp_path / "r.txt"]).df("kvm_msr")["ts_ns"].to_list() == ours


def _cpu_streams(c, rng) -> dict[int, bytes]:
    """The file's payloads dealt to three CPUs with timestamps that interleave, tie across CPUs, and
    (CPU 2) go back once: as pages packed per CPU."""
    import numpy as np

    from vpmutrace.readers.ringbuf import walk_pages
    from vpmutrace.writers.ringbuf import pack_pages

    payloads = []
    for b in c.buffers:
        for pages in b.cpus.values():
            w = walk_pages(np.frombuffer(pages, np.uint8), c.page_size, {"timestamp": (0, 8), "commit": (8, 8),
                                                                          "data": (16, 0)})
            raw = np.frombuffer(pages, np.uint8)
            payloads += [raw[o:o + n].tobytes() for o, n in zip(w.offsets.tolist(), w.lengths.tolist(), strict=True)]
    out = {}
    for cpu, part in enumerate(np.array_split(np.arange(len(payloads)), 3)):
        ts = np.sort(rng.integers(10**9, 10**9 + 5_000, len(part)))  # few distinct times: many ties
        mine = [payloads[i] for i in part.tolist()]
        if cpu == 2:  # time goes back half way (a new page with an earlier time)
            half = len(mine) // 2
            out[cpu] = pack_pages(mine[:half], ts[:half] + 3_000) + pack_pages(mine[half:], ts[half:])
        else:
            out[cpu] = pack_pages(mine, ts)
    return out


@pytest.mark.parametrize("max_runs", [4096, 1])
def test_cpus_merge_in_time_order(tmp_path: Path, monkeypatch, max_runs: int) -> None:
    """Every table in time order, ties in file order (CPU by CPU, each CPU's records in the order
    recorded), whether the fill merges the CPUs' time-ordered runs or (too many runs) sorts."""
    import numpy as np

    from vpmutrace.readers import payloads
    from vpmutrace.writers.trace_dat import BufferData

    monkeypatch.setattr(payloads, "MAX_RUNS", max_runs)
    monkeypatch.setattr(payloads, "CHUNK_RECORDS", 64)  # many chunks, each merged on its own
    c = content_of(SRC)
    c.buffers = [BufferData("", "local", _cpu_streams(c, np.random.default_rng(3)))]
    td = load_trace([write_trace_dat(tmp_path / "m.dat", c, 7, "zstd")])
    assert sum(td.meta["events"].values()) == sum(load_trace([SRC]).meta["events"].values())
    rows = pl.concat([td.df(t).select("ts_ns", "seq", "cpu") for t in td.tables if t not in ("lost", "stats")])
    assert rows.n_unique("seq") == rows.height == sum(td.meta["events"].values())
    assert rows.sort("seq")["cpu"].to_list() == sorted(rows["cpu"].to_list())  # seq: CPU by CPU
    for t in td.tables:
        if t in ("lost", "stats"):
            continue
        df = td.df(t)
        assert df.select("ts_ns", "seq").equals(df.sort("ts_ns", "seq").select("ts_ns", "seq")), t
