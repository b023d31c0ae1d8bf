"""Ingest of a trace.dat piece by piece (--max-memory; readers/trace_dat_stream.py) against the
in-memory ingest of the same file: the same tables row for row in the same order (``seq`` numbers
differ by design: compared as an order), the same meta, stats and lost rows; on every trace.dat
fixture, the public traces, and generated files for what those lack (v6 / v7 uncompressed /
zlib / zstd, two buffers, lost-events pages, a CPU whose pages go back in time)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, SHARED_TRACES, shared
from typer.testing import CliRunner

from vpmutrace.cli import app
from vpmutrace.errors import InputError
from vpmutrace.formats.ringbuf_abi import MISSING_EVENTS
from vpmutrace.ingest_stream import ingest_trace_dat_stream, pages_per_piece
from vpmutrace.parquet_pages import FOOTERS_KEY
from vpmutrace.readers.trace_dat import content_of
from vpmutrace.readers.trace_dat_stream import TraceDatStream
from vpmutrace.tracedata import META_FILE, TraceBuilder
from vpmutrace.writers.trace_dat import BufferData, write_trace_dat

LOCAL = ["mixed.trace.dat", "microguest200.trace.dat", "allevents.trace.dat", "uprobe.trace.dat",
         "mono-clock.trace.dat", "tsc-clock.trace.dat"]
PUBLIC = SHARED_TRACES / "public-github"
SHARED = sorted(f"public-github/{p.name}" for p in PUBLIC.glob("*.dat")) if PUBLIC.is_dir() else \
    ["public-github/(absent)"]
SHARED += ["captured-here/microguest_tracefs_extract.trace.dat"]
PAGES = 3  # pages per piece: many pieces even in the small fixtures


def _in_memory(src: Path, out: Path) -> None:
    res = CliRunner().invoke(app, ["ingest", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output


def _stats(path: Path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["source_file"], r["category"], r["name"])) \
        if path.exists() else []


def _same_dataset(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.glob("*.parquet"))
    assert files == sorted(p.name for p in b.glob("*.parquet"))
    assert _stats(a / "stats.parquet") == _stats(b / "stats.parquet")
    for name in files:
        if name == "stats.parquet":
            continue
        x, y = pq.read_table(a / name), pq.read_table(b / name)
        assert x.num_rows == y.num_rows, name
        assert x.column_names == y.column_names, name
        for c in x.column_names:  # field by field, in order
            if c != "seq":
                assert x.column(c).to_pylist() == y.column(c).to_pylist(), (name, c)
        if "seq" in y.column_names:  # (ts_ns, seq) orders the rows as in memory
            ts, seq = y.column("ts_ns").to_numpy(), y.column("seq").to_numpy()
            assert (np.lexsort((seq, ts)) == np.arange(len(ts))).all(), name
            assert len(np.unique(seq)) == len(seq), name
        ma, mb = pq.read_metadata(a / name).metadata, pq.read_metadata(b / name).metadata
        assert ma[b"vpmutrace.trace_meta"] == mb[b"vpmutrace.trace_meta"], name
    ma, mb = (json.loads((d / META_FILE).read_text()) for d in (a, b))
    assert set(ma.pop(FOOTERS_KEY)) == set(mb.pop(FOOTERS_KEY)) == {f.name for f in a.glob("*.parquet")}
    assert ma == mb  # (the footers' checksums differ: the files are written otherwise)


def _pieces(src: Path, pages: int) -> int:
    s = TraceDatStream(src, pages)
    s.header(TraceBuilder())
    return sum(1 for _ in s.pieces())


def _check(src: Path, tmp_path: Path, pages: int = PAGES) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    _in_memory(src, tmp_path / "mem")
    got = ingest_trace_dat_stream(src, tmp_path / "st", 1 << 30, piece_pages=pages)
    assert not isinstance(got, str), got
    _same_dataset(tmp_path / "mem", tmp_path / "st")


@pytest.mark.parametrize("rel", LOCAL + SHARED)
def test_pieces_equal_in_memory(rel: str, tmp_path: Path) -> None:
    src = FIXTURES / rel if rel in LOCAL else shared(rel)
    s = TraceDatStream(src, PAGES)
    if s.needs_memory():
        pytest.skip(f"{rel}: {s.needs_memory()}")
    total = sum(cd.size for b in s.td.buffers for cd in b.cpus) // s.td.page_size  # (compressed: fewer)
    pages = max(PAGES, total // 5)  # a few pieces: enough to join, few enough to be quick
    if total >= 4 * pages:
        assert _pieces(src, pages) >= 3
    _check(src, tmp_path, pages)


def _variant(tmp_path: Path, name: str, version: int = 7, compression: str = "zstd",
             edit: object = None) -> Path:
    """mixed.trace.dat written again (writers/trace_dat.py), its pages changed by ``edit``."""
    c = content_of(FIXTURES / "mixed.trace.dat")
    if edit is not None:
        edit(c)  # type: ignore[operator]
    return write_trace_dat(tmp_path / name, c, version, compression)


def _pages(data: bytes, page: int) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(-1, page).copy()


@pytest.mark.parametrize(("version", "codec"), [(6, "none"), (7, "none"), (7, "zlib"), (7, "zstd")])
def test_every_codec(version: int, codec: str, tmp_path: Path) -> None:
    """Per-CPU pages read a block (uncompressed) or a chunk (zlib, zstd) at a time."""
    src = _variant(tmp_path, f"v{version}{codec}.dat", version, codec)
    for pages in (2, 17):
        _check(src, tmp_path / str(pages), pages)


def test_two_buffers_and_lost_pages(tmp_path: Path) -> None:
    """A second buffer (an instance, its times 1 us later so that the two interleave) and pages
    flagged MISSING_EVENTS: the instance's rows carry its name, the lost rows come in the in-memory
    order (buffer, CPU, page) with the same start times and the same stats examples."""
    def edit(c: object) -> None:
        top = next(b for b in c.buffers if b.cpus)  # type: ignore[attr-defined]
        page = c.page_size  # type: ignore[attr-defined]
        cpus = {}
        for cpu, data in top.cpus.items():
            p = _pages(data, page)
            head = p[:, :8].copy().view("<i8")
            head += 1000
            p[:, :8] = head.view(np.uint8)
            cpus[cpu] = p.tobytes()
        flagged = dict(top.cpus)
        for cpu, data in top.cpus.items():
            p = _pages(data, page)
            for k in (1, len(p) - 2):
                commit = p[k, 8:16].copy().view("<u8")
                commit |= MISSING_EVENTS
                p[k, 8:16] = commit.view(np.uint8)
            flagged[cpu] = p.tobytes()
        top.cpus = flagged
        c.buffers.append(BufferData("other", top.clock, cpus))  # type: ignore[attr-defined]

    src = _variant(tmp_path, "two.dat", edit=edit)
    _check(src, tmp_path, 2)
    lost = pq.read_table(tmp_path / "st" / "lost.parquet")
    assert lost.num_rows >= 4 and lost.column("start_ns").null_count < lost.num_rows
    sources = set(pq.read_table(tmp_path / "st" / "kvm_msr.parquet").column("source").to_pylist())
    assert "other" in sources and len(sources) == 2


def test_time_going_back_is_counted(tmp_path: Path) -> None:
    """Two pages of a CPU swapped (its times go back): the same rows, the late ones written where
    they come and counted (out_of_order), not lost."""
    def edit(c: object) -> None:
        top = next(b for b in c.buffers if b.cpus)  # type: ignore[attr-defined]
        cpu = max(top.cpus, key=lambda k: len(top.cpus[k]))
        p = _pages(top.cpus[cpu], c.page_size)  # type: ignore[attr-defined]
        p[[2, 8]] = p[[8, 2]]
        top.cpus[cpu] = p.tobytes()

    src = _variant(tmp_path, "back.dat", edit=edit)
    _in_memory(src, tmp_path / "mem")
    ingest_trace_dat_stream(src, tmp_path / "st", 1 << 30, piece_pages=2)
    late = [r for r in _stats(tmp_path / "st" / "stats.parquet") if r["category"] == "out_of_order"]
    assert late and sum(r["count"] for r in late) > 0
    for name in (p.name for p in (tmp_path / "mem").glob("*.parquet") if p.name != "stats.parquet"):
        x, y = pq.read_table(tmp_path / "mem" / name), pq.read_table(tmp_path / "st" / name)
        key = [c for c in x.column_names if c != "seq"]
        assert sorted(map(str, x.select(key).to_pylist())) == sorted(map(str, y.select(key).to_pylist())), name


def test_memory_bounded_by_the_setting() -> None:
    """What a piece holds (loaded pages of every CPU, the pages it walks) follows pages_per_piece,
    not the file: at most twice the setting plus, per CPU, two pages and one compressed chunk."""
    src = FIXTURES / "mixed.trace.dat"
    for pages in (2, 8, 32):
        s = TraceDatStream(src, pages)
        s.header(TraceBuilder())
        chunk = max(u for x in s.cpus for _, _, u in x.where) // s.td.page_size  # type: ignore[union-attr]
        most = 0
        for _ in s.pieces():
            most = max(most, sum(x.npages for x in s.cpus))
        assert 0 < most <= 2 * pages + len(s.cpus) * (2 + chunk), (pages, most, chunk)
        assert most < sum(x.first_page for x in s.cpus) / 2  # (the file's pages: far more)
    assert pages_per_piece(2 << 30) > pages_per_piece(512 << 20) > 0


def test_cli_max_memory(tmp_path: Path) -> None:
    """--max-memory streams a trace.dat; a clock in ticks is read in memory, saying why."""
    src = FIXTURES / "mixed.trace.dat"
    res = CliRunner().invoke(app, ["ingest", str(src), "-o", str(tmp_path / "st"), "--max-memory", "256M"])
    assert res.exit_code == 0 and "in pieces" in res.output, res.output
    _in_memory(src, tmp_path / "mem")
    _same_dataset(tmp_path / "mem", tmp_path / "st")
    tsc = shared("public-github/hip24_host_kvm_x86tsc_v7zlib.dat")
    res = CliRunner().invoke(app, ["ingest", str(tsc), "-o", str(tmp_path / "t"), "--max-memory", "256M"])
    assert res.exit_code == 0 and "read in memory: its clock counts TSC ticks" in res.output, res.output


def test_damage_as_in_memory(tmp_path: Path) -> None:
    """A file cut inside its CPU data keeps what is before the cut, counted as the in-memory reader
    counts it; a chunk that does not decompress is the same one-line error."""
    whole = (FIXTURES / "mixed.trace.dat").read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(whole[:len(whole) - 20000])
    _check(cut, tmp_path / "c")
    s = TraceDatStream(FIXTURES / "mixed.trace.dat", 4)
    s.header(TraceBuilder())
    off = s.cpus[0].where[0][0] + 40  # type: ignore[index]  # inside the first chunk's compressed bytes
    bad = bytearray(whole)
    bad[off:off + 64] = bytes(64)
    broken = tmp_path / "broken.dat"
    broken.write_bytes(bytes(bad))
    with pytest.raises(InputError) as mem:
        CliRunner().invoke(app, ["ingest", str(broken), "-o", str(tmp_path / "m")], catch_exceptions=False)
    with pytest.raises(InputError) as st:
        ingest_trace_dat_stream(broken, tmp_path / "s", 1 << 30, piece_pages=4)
    assert str(st.value) == str(mem.value) and "does not decompress" in str(st.value)
    assert not list((tmp_path / "s").glob("*.parquet"))
