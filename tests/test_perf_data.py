"""perf.data reader against perf's own view of the same files (perf report -D, perf script)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import polars as pl
import pytest
from conftest import FIXTURES, SHARED_TRACES, need_tool

from vpmutrace.errors import InputError
from vpmutrace.readers import load_trace
from vpmutrace.readers.perf_data import CPUMODES

PUBLIC = [
    "public/perf_data_converter/perf.data.branch-4.14",
    "public/perf_data_converter/perf.data.hybrid_topology",
    "public/perf_data_converter/perf.data.lost_samples-4.4",
    "public/perf_data_converter/perf.data.piped.header_features_aligned-6.12",
    "public/perf_data_converter/perf.data.piped.header_feautres_group_desc-6.8",
    "public/perf_data_converter/perf.data.raw-3.4",
    "public/perf_data_converter/perf.data.weight_struct",
    "public/perfparser/probe.data.file",
    "public/perfparser/probe.data.stream",
    "captured-here/microguest_perf_record.perf.data",
]
LOCAL = ["microguest200.perf.data", "microguest50-zstd.perf.data", "perf.data.lost_samples-4.4",
         "probe.data.file"]

D_SAMPLE = re.compile(
    r"^(?:(?P<cpu>\d+) )?(?P<time>\d+) 0x[0-9a-f]+ \[0x[0-9a-f]+\]: "
    r"PERF_RECORD_SAMPLE\([^,]*, (?P<misc>0x[0-9a-f]+)\): "
    r"(?P<pid>-?\d+)/(?P<tid>-?\d+): (?P<ip>0x[0-9a-f]+) period: (?P<period>\d+)")


def _perf_dump(path: Path) -> list[dict[str, int]]:
    perf = need_tool("perf")
    out = subprocess.run([perf, "report", "-D", "-i", str(path)], capture_output=True, text=True,
                         errors="replace", check=False).stdout
    rows = []
    for line in out.splitlines():
        m = D_SAMPLE.match(line)
        if m:
            rows.append({k: int(v, 0) for k, v in m.groupdict().items() if v is not None})
    return rows


def _path(rel: str) -> Path:
    if rel in LOCAL:
        return FIXTURES / rel
    p = SHARED_TRACES / rel
    if not p.exists():
        pytest.skip(f"{p} not present (shared traces exist only on project machines)")
    return p


def _all_rows(td) -> pl.DataFrame:
    """Every decoded sample, tracepoint or not, as (time, tid, cpu, ip, cpumode, exact, period)."""
    parts = []
    if td.has("samples"):
        parts.append(td.df("samples").select(
            pl.col("ts_ns").alias("time"), pl.col("tid").cast(pl.Int64), pl.col("cpu").cast(pl.Int64),
            pl.col("ip").cast(pl.Int64, strict=False), "cpumode", "exact_ip", pl.col("period").cast(pl.Int64)))
    for name, t in td.tables.items():
        if name in ("samples", "lost", "stats"):
            continue
        df = pl.from_arrow(t)
        parts.append(df.select(pl.col("ts_ns").alias("time"), pl.col("pid").cast(pl.Int64).alias("tid"),
                               pl.col("cpu").cast(pl.Int64), pl.lit(None, pl.Int64).alias("ip"),
                               pl.lit(None, pl.String).alias("cpumode"), pl.lit(None, pl.Boolean).alias("exact_ip"),
                               pl.lit(None, pl.Int64).alias("period")))
    return pl.concat(parts).sort("time", "tid", "cpu", nulls_last=True)


@pytest.mark.parametrize("rel", PUBLIC + LOCAL)
def test_samples_equal_perf_report_dump(rel: str) -> None:
    path = _path(rel)
    td = load_trace([path])
    dump = _perf_dump(path)
    ours = _all_rows(td)
    if not dump:
        pytest.skip(f"perf {path.name}: perf printed no samples for this file")
    assert ours.height == len(dump), f"{rel}: {ours.height} samples, perf -D shows {len(dump)}"
    theirs = sorted(dump, key=lambda r: (r["time"], r["tid"], r.get("cpu", -1)))
    for a, b in zip(ours.iter_rows(named=True), theirs, strict=True):
        assert a["time"] == b["time"]
        assert a["tid"] == b["tid"]
        if "cpu" in b:
            assert a["cpu"] == b["cpu"]
        if a["ip"] is not None:  # not tracepoint samples (their ip stays in perf)
            assert a["ip"] & 0xFFFFFFFFFFFFFFFF == b["ip"] and a["period"] == b["period"]
            assert a["cpumode"] == CPUMODES[b["misc"] & 7]
            assert a["exact_ip"] == bool(b["misc"] & 0x4000)


@pytest.mark.parametrize("rel", PUBLIC + LOCAL)
def test_every_perf_data_loads(rel: str) -> None:
    td = load_trace([_path(rel)])
    assert sum(td.meta["events"].values()) > 0
    assert td.meta["unparsed"] == 0
    inp = td.meta["inputs"][0]
    assert inp["format"] == "perf.data" and inp["partial"] is None


# lost_samples-4.4: threads renamed (exec) between their samples; microguest50: named before
@pytest.mark.parametrize(("name", "n"), [("perf.data.lost_samples-4.4", 191), ("microguest50-zstd.perf.data", 451)])
def test_thread_names_equal_perf_script(name: str, n: int) -> None:
    perf = need_tool("perf")
    path = FIXTURES / name
    out = subprocess.run([perf, "script", "-F", "comm,tid,time", "-i", str(path)], capture_output=True,
                         text=True, check=False).stdout
    theirs = sorted((int(m.group(3).replace(".", "")) * 1000, int(m.group(2)), m.group(1))
                    for m in re.finditer(r"^\s*(.+?)\s+(\d+)\s+(\d+\.\d+):", out, re.M))
    td = load_trace([path])
    s = pl.concat([t.select("ts_ns", "pid", "comm") for t in (td.df(n) for n in td.tables if n not in ("lost",))])
    ours = sorted(zip((s["ts_ns"] // 1000 * 1000).to_list(), s["pid"].to_list(), s["comm"].cast(pl.String).to_list(),
                      strict=True))
    assert len(theirs) == n and ours == theirs


def test_lost_samples_records_are_counted_with_time() -> None:
    td = load_trace([FIXTURES / "perf.data.lost_samples-4.4"])
    lost = td.df("lost")
    # perf report -D: "3325070188905 ... PERF_RECORD_LOST_SAMPLES: id:289: lost samples :1" and one at ...189707
    assert lost.select("ts_ns", "kind", "count").rows() == [(3325070188905, "lost_samples", 1),
                                                           (3325070189707, "lost_samples", 1)]
    # the loss range starts at the last sample on that CPU before the notice (this file has no CPU field)
    assert lost["start_ns"].null_count() == 2 and lost["cpu"].null_count() == 2
    assert td.meta["lost_events"] == 2
    assert Counter_of(td.df("samples")["event"]) == {"cycles:pp": 97, "instructions:pp": 80,
                                                     "branch-instructions:pp": 14}


def Counter_of(s: pl.Series) -> dict[str, int]:
    return dict(s.value_counts().iter_rows())


def test_uprobe_tracepoint_raw_payload() -> None:
    td = load_trace([FIXTURES / "probe.data.file"])
    assert td.event_tables() == {"probe_untitled1:main": "probe_untitled1.main"}
    ev = td.df("probe_untitled1.main")
    assert ev.height == 1
    assert ev["pid"][0] == 30594 and ev["comm"][0] == "untitled1" and ev["ts_ns"][0] == 13732862216676
    assert ev["__probe_ip"][0] == 0x55D1DB028560


def test_compressed_records() -> None:
    td = load_trace([FIXTURES / "microguest50-zstd.perf.data"])
    assert td.meta["events"] == {"kvm:kvm_msr": 400, "kvm:kvm_pio": 51}
    assert td.meta["perf_records"]["COMPRESSED"] >= 1


def _header_data_size_zero(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    struct.pack_into("<Q", data, 48, 0)  # perf_header.data.size
    dst.write_bytes(bytes(data))


def test_salvage_when_perf_record_was_killed(tmp_path: Path) -> None:
    src = FIXTURES / "perf.data.lost_samples-4.4"
    killed = tmp_path / "killed.perf.data"
    _header_data_size_zero(src, killed)
    full = load_trace([src])
    part = load_trace([killed])
    assert part.meta["inputs"][0]["partial"].startswith("header data size is 0")
    # everything up to the file's end is read: all samples are there (the feature sections after
    # the data are read as records and end in a counted broken record)
    assert part.df("samples").select("ts_ns", "tid", "ip").equals(full.df("samples").select("ts_ns", "tid", "ip"))
    assert any(e.category == "partial" for e in part.stats.entries())


def test_truncated_file_keeps_records_before_the_cut(tmp_path: Path) -> None:
    src = FIXTURES / "microguest200.perf.data"
    raw = src.read_bytes()
    data_off, data_size = struct.unpack_from("<QQ", raw, 40)
    cut = tmp_path / "cut.perf.data"
    cut.write_bytes(raw[:data_off + data_size // 2 + 3])
    td = load_trace([cut])
    full = load_trace([src])
    trunc = [e for e in td.stats.entries() if e.category == "truncated"]
    assert trunc and "cut off" in trunc[0].examples[0]
    # the cut also lost the feature sections: the tracepoint formats and the event names. An id
    # alone names nothing on another kernel, so no local format is used: the records are kept raw
    # under their id, counted with the reason
    assert not [e for e in td.stats.entries() if e.category == "formats_from_local_tracefs"]
    nf = {e.name: e for e in td.stats.entries() if e.category == "no_format"}
    assert nf and all("records no name" in e.examples[0] for e in nf.values())
    un = td.df("unparsed")
    kvm_msr_id = 99  # in the kernel the fixture was recorded on
    assert un.filter(pl.col("event") == f"unknown:{kvm_msr_id}").height > 0
    assert un["raw"].null_count() == 0
    n_full = sum(full.meta["events"].values())
    assert 0 < un.height + td.df("samples").height < n_full
    assert td.meta["unparsed"] == un.height


def test_not_perf_data_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.perf.data"
    bad.write_bytes(b"PERFILE2" + struct.pack("<Q", 40) + bytes(30))
    with pytest.raises(InputError) as e:
        load_trace([bad])
    assert "bad.perf.data" in str(e.value) and "\n" not in str(e.value)


def test_live_record_matches_perf_script(tmp_path: Path) -> None:
    """Record the microguest afresh and compare every decoded field with perf script's text."""
    perf = need_tool("perf")
    if not Path("/dev/kvm").exists():
        pytest.skip("/dev/kvm absent")
    guest = Path(__file__).resolve().parents[1] / "collectors" / "microguest.py"
    if not guest.exists():
        pytest.skip("collectors/microguest.py not present yet")
    out = tmp_path / "live.perf.data"
    rec = subprocess.run([perf, "record", "-q", "-a", "-e", "kvm:kvm_msr", "-e", "kvm:kvm_pio", "-e",
                          "kvm:kvm_cpuid", "-e", "kvm:kvm_inj_exception", "-o", str(out), "--",
                          shutil.which("python3") or "python3", str(guest), "--iterations", "100", "-q"],
                         capture_output=True, text=True, check=False)
    if rec.returncode != 0 or not out.exists():
        pytest.skip(f"perf record failed here: {rec.stderr.strip()[-200:]}")
    text = tmp_path / "live.txt"
    # with pid/tid printed, the process id (tgid) is compared too
    text.write_text(subprocess.run([perf, "script", "-F", "comm,pid,tid,cpu,time,event,trace", "-i", str(out)],
                                   capture_output=True, text=True, check=False).stdout)
    a, b = load_trace([out]), load_trace([text])
    assert a.meta["events"] == b.meta["events"]
    assert a.df("kvm_msr")["tgid"].null_count() == 0
    assert a.meta["events"]["kvm:kvm_msr"] >= 800
    for t in ("kvm_msr", "kvm_pio", "kvm_cpuid", "kvm_inj_exception"):
        x = a.df(t).with_columns((pl.col("ts_ns") // 1000 * 1000).alias("ts_ns")).drop("seq")
        assert x.equals(b.df(t).drop("seq")), t


def _tables_equal(a, b) -> None:
    assert set(a.tables) == set(b.tables)
    for name in a.tables:
        assert a.df(name).equals(b.df(name)), name
    assert a.meta["events"] == b.meta["events"] and a.meta["perf_records"] == b.meta["perf_records"]
    assert [(e.category, e.name, e.count) for e in a.stats.entries()] == \
        [(e.category, e.name, e.count) for e in b.stats.entries()]


@pytest.mark.parametrize("rel", PUBLIC + LOCAL)
def test_parallel_record_walk_equals_sequential(rel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record walk cut into pieces (used on big files) gives exactly what one walk gives."""
    import vpmutrace.kernels as kernels
    import vpmutrace.readers.perf_samples as ps

    path = _path(rel)
    monkeypatch.setattr(ps, "PARALLEL_SPLIT_BYTES", 1 << 62)
    seq = load_trace([path])
    calls = []
    fused = kernels.split_keys_chunks
    monkeypatch.setattr(ps, "PARALLEL_SPLIT_BYTES", 0)
    monkeypatch.setitem(kernels._loaded, "split_keys_chunks", lambda *a: (calls.append(1), fused(*a)))
    monkeypatch.setattr(ps.kernels, "threads", lambda: 4)
    par = load_trace([path])
    _tables_equal(seq, par)
    monkeypatch.setattr(ps, "OFFSET32_LIMIT", 0)  # sample offsets in 64 bits, as for files of 4 GiB and more
    _tables_equal(seq, load_trace([path]))
    header_ok = path.read_bytes()[8:16] != struct.pack("<Q", 16)  # pipe files: attrs come from records
    compressed = "zstd" in rel
    if header_ok and not compressed and sum(seq.meta["perf_records"].values()) > 64:
        assert calls, "the parallel walk was not used"


def test_parallel_walk_falls_back_on_damage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut or corrupted file never joins up in pieces: the sequential walk pins the damage down."""
    import vpmutrace.readers.perf_samples as ps

    src = FIXTURES / "microguest200.perf.data"
    raw = bytearray(src.read_bytes())
    data_off, data_size = struct.unpack_from("<QQ", raw, 40)
    bad = tmp_path / "bad.perf.data"
    mid = data_off + data_size // 2 // 8 * 8
    raw[mid:mid + 64] = bytes(64)  # zeroed records: header size 0 somewhere in the middle
    bad.write_bytes(bytes(raw))
    monkeypatch.setattr(ps, "PARALLEL_SPLIT_BYTES", 1 << 62)
    seq = load_trace([bad])
    monkeypatch.setattr(ps, "PARALLEL_SPLIT_BYTES", 0)
    monkeypatch.setattr(ps.kernels, "threads", lambda: 4)
    par = load_trace([bad])
    _tables_equal(seq, par)
    assert any(e.category == "truncated" for e in par.stats.entries())


def test_thread_renamed_between_its_samples(tmp_path: Path) -> None:
    """A thread renamed (prctl/exec) while sampled: each sample carries the name it had then."""
    from vpmutrace.formats.known import reference_format_texts, reference_formats, reference_ring_headers
    from vpmutrace.writers.perf_data import PerfDataContent, pack_payload, write_perf_data

    fmt = reference_formats()["kvm:kvm_msr"]
    hp, he = reference_ring_headers()
    pc = PerfDataContent(formats={"kvm:kvm_msr": fmt}, format_texts={"kvm:kvm_msr": reference_format_texts()[
        "kvm:kvm_msr"]}, header_page=hp, header_event=he, comms={100: "before", 200: "other"},
        renames=[(1_500, 100, "after"), (2_500, 100, "again")])
    for ts, tid in ((1_000, 100), (1_200, 200), (2_000, 100), (2_000, 200), (3_000, 100)):
        pc.samples.append((ts, 0, tid, "kvm:kvm_msr", pack_payload(fmt, {"write": 1, "ecx": 0x38f, "data": ts,
                                                                         "exception": 0}, tid)))
    path = write_perf_data(tmp_path / "renamed.perf.data", pc)
    df = load_trace([path]).df("kvm_msr")
    got = list(zip(df["ts_ns"].to_list(), df["pid"].to_list(), df["comm"].cast(pl.String).to_list(), strict=True))
    assert got == [(1_000, 100, "before"), (1_200, 200, "other"), (2_000, 100, "after"), (2_000, 200, "other"),
                   (3_000, 100, "again")]
    if shutil.which("perf"):
        out = subprocess.run(["perf", "script", "-F", "comm,tid", "-i", str(path)], capture_output=True, text=True,
                             check=False).stdout
        assert [tuple(line.split()) for line in out.splitlines() if line.strip()] == \
            [(c, str(t)) for _, t, c in got]


def test_samples_of_tid_minus_one(tmp_path: Path) -> None:
    """perf writes pid/tid -1 for samples with no task; they decode, unnamed, beside named threads."""
    from vpmutrace.formats.known import reference_format_texts, reference_formats, reference_ring_headers
    from vpmutrace.writers.perf_data import PerfDataContent, pack_payload, write_perf_data

    fmt = reference_formats()["kvm:kvm_msr"]
    hp, he = reference_ring_headers()
    pc = PerfDataContent(formats={"kvm:kvm_msr": fmt}, format_texts={"kvm:kvm_msr": reference_format_texts()[
        "kvm:kvm_msr"]}, header_page=hp, header_event=he, comms={100: "vcpu"})
    for ts, tid in ((1_000, 0xFFFFFFFF), (2_000, 100), (3_000, 0xFFFFFFFF)):
        pc.samples.append((ts, 0, tid, "kvm:kvm_msr", pack_payload(fmt, {"write": 0, "ecx": 0x10, "data": ts,
                                                                         "exception": 0}, 0)))
    df = load_trace([write_perf_data(tmp_path / "tid-1.perf.data", pc)]).df("kvm_msr")
    assert df["pid"].to_list() == [-1, 100, -1]
    assert df["comm"].cast(pl.String).to_list() == [None, "vcpu", None]


def test_scratch_discard_frees_whole_units_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """discard zeroes (frees) the huge pages wholly inside the range and nothing else."""
    import numpy as np

    import vpmutrace.readers.binio as binio
    from vpmutrace.readers.binio import HUGE_PAGE, discard, scratch

    small = scratch(10, np.int64)
    small[:] = 7
    discard(small, 0, 10)  # below SCRATCH_MIN_BYTES: not a mapping of its own, left alone
    assert (small == 7).all()
    monkeypatch.setattr(binio, "SCRATCH_MIN_BYTES", 0)
    n = 3 * HUGE_PAGE // 4 + 1000  # int32: spans four huge pages, the last one partly
    a = scratch(n, np.int32)
    a[:] = np.arange(n, dtype=np.int32) + 1
    per = HUGE_PAGE // 4
    discard(a, 10, 2 * per + 5)  # wholly inside: the second huge page only
    assert (a[:per] == np.arange(per) + 1).all()
    assert (a[per:2 * per] == 0).all()
    assert (a[2 * per:] == np.arange(2 * per, n) + 1).all()
    discard(a, 0, n)  # through the end: everything
    assert not a.any()


@pytest.mark.parametrize("rel", PUBLIC + LOCAL)
def test_fill_that_discards_its_inputs_as_it_goes(rel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every per-sample array in a mapping of its own, discarded page by page after each
    small slice of the fill, the tables are exactly those of the plain path: the fill never
    reads what it already gave back."""
    import mmap

    import vpmutrace.readers.binio as binio
    import vpmutrace.readers.perf_samples as ps

    path = _path(rel)
    plain = load_trace([path])
    monkeypatch.setattr(binio, "SCRATCH_MIN_BYTES", 0)
    monkeypatch.setattr(binio, "HUGE_PAGE", mmap.PAGESIZE)
    monkeypatch.setattr(ps, "FILL_SLICE", 1000)
    given_back = []

    def counted(a, start: int, end: int) -> None:
        given_back.append(binio._mapping(a) is not None and end - start >= mmap.PAGESIZE // a.itemsize)
        binio.discard(a, start, end)

    monkeypatch.setattr(ps, "discard", counted)
    _tables_equal(plain, load_trace([path]))
    if plain.meta["perf_records"].get("SAMPLE", 0) > 2000:
        assert sum(given_back) >= 5, "the fill gave nothing back"


def test_group_rows_numbers_each_group_in_order() -> None:
    """Records' rows within their groups, counted in parallel chunks, equal one sequential count."""
    import numpy as np

    from vpmutrace.readers import payloads

    rng = np.random.default_rng(7)
    n = 300_000  # several chunks
    group = rng.integers(-2, 5, n).astype(np.int32)  # negative: not decodable, no row
    order = np.argsort(rng.integers(0, 1 << 40, n), kind="stable")
    rows = np.full(n, -9, np.int32)
    counts = np.zeros(5, np.int64)
    payloads.group_rows(order, group, rows, counts)
    for g in range(5):
        in_order = order[group[order] == g]
        assert counts[g] == len(in_order)
        assert (rows[in_order] == np.arange(len(in_order))).all()
    assert (rows[group < 0] == -9).all()


def test_out_of_memory_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A machine too small for the trace: scratch mappings fail like numpy's allocations, and the
    CLI says so in one line (exit 1), no traceback."""
    import mmap
    import sys

    import numpy as np

    import vpmutrace.readers.binio as binio
    from vpmutrace import cli

    real = mmap.mmap

    def no_memory(fd: int, *a, **k):  # anonymous mappings fail; the trace file still maps
        if fd == -1:
            raise OSError(12, "Cannot allocate memory")
        return real(fd, *a, **k)

    monkeypatch.setattr(binio, "SCRATCH_MIN_BYTES", 0)
    monkeypatch.setattr(mmap, "mmap", no_memory)
    with pytest.raises(MemoryError, match="Cannot allocate memory"):
        binio.scratch(10, np.int64)
    monkeypatch.setattr(sys, "argv", ["vpmutrace", "info", str(FIXTURES / "microguest200.perf.data")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vpmutrace: error: out of memory (cannot map") and "\n" not in err
