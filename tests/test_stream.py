"""Ingest of a perf.data piece by piece (--max-memory) against the in-memory ingest of the same file:
the same Parquet tables row for row and in the same order, the same meta and stats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, shared
from typer.testing import CliRunner

from vpmutrace.cli import app
from vpmutrace.errors import InputError
from vpmutrace.formats.perf_abi import REC_FINISHED_ROUND
from vpmutrace.ingest_stream import FLUSH, TableStream, ingest_perf_stream, parse_size, samples_per_piece
from vpmutrace.parquet_pages import FOOTERS_KEY
from vpmutrace.readers.perf_stream import REC_FINISHED_INIT, PerfStream
from vpmutrace.tracedata import META_FILE

LOCAL = ["mixed.perf.data", "microguest200.perf.data", "cpuclock.perf.data", "uprobe.perf.data",
         "perf.data.lost_samples-4.4", "probe.data.file"]
SHARED = ["public/perf_data_converter/perf.data.piped.header_features_aligned-6.12",  # pipe mode
          "public/perf_data_converter/perf.data.piped.header_feautres_group_desc-6.8",
          "public/perfparser/probe.data.stream",
          "public/perf_data_converter/perf.data.branch-4.14",
          "public/perf_data_converter/perf.data.hybrid_topology",
          "captured-here/microguest_perf_record.perf.data"]
PIECE = 97  # samples per piece at most: many pieces even in the small fixtures


def _in_memory(src: Path, out: Path) -> None:
    res = CliRunner().invoke(app, ["ingest", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output


def _stats(path: Path) -> list[dict]:
    """Stats rows by key; unresolved-symbol examples are one per DSO, the DSOs compared (which
    sample stands for a DSO depends on the order the samples are seen in)."""
    rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["source_file"], r["category"], r["name"]))
    for r in rows:
        if r["category"] == "unresolved_symbols":
            r["examples"] = sorted(x.rpartition(" in ")[2] for x in r["examples"].split("; "))
    return rows


def _same_dataset(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.glob("*.parquet"))
    assert files == sorted(p.name for p in b.glob("*.parquet"))
    for name in files:
        if name == "stats.parquet":
            assert _stats(a / name) == _stats(b / name)
            continue
        x, y = pq.read_table(a / name), pq.read_table(b / name)
        assert x.num_rows == y.num_rows, name
        assert x.column_names == y.column_names, name
        for c in x.column_names:  # field by field, in order
            assert x.column(c).to_pylist() == y.column(c).to_pylist(), (name, c)
        ma, mb = pq.read_metadata(a / name).metadata, pq.read_metadata(b / name).metadata
        assert ma[b"vpmutrace.trace_meta"] == mb[b"vpmutrace.trace_meta"], name
    ma, mb = (json.loads((d / META_FILE).read_text()) for d in (a, b))
    assert set(ma.pop(FOOTERS_KEY)) == set(mb.pop(FOOTERS_KEY)) == {f.name for f in a.glob("*.parquet")}
    assert ma == mb  # (the footers' checksums differ: the files are written otherwise)


@pytest.mark.parametrize("rel", LOCAL + SHARED)
def test_pieces_equal_in_memory(rel: str, tmp_path: Path) -> None:
    src = FIXTURES / rel if rel in LOCAL else shared(rel)
    n = PerfStream(src, PIECE).plan.n_samples
    if n < 3:
        pytest.skip(f"{rel}: {n} samples, no pieces to join")
    piece = max(1, min(PIECE, n // 4))
    assert len(PerfStream(src, piece).plan.pieces) >= 3
    _in_memory(src, tmp_path / "mem")
    got = ingest_perf_stream(src, tmp_path / "st", 1 << 30, piece_samples=piece)
    assert not isinstance(got, str), got
    _same_dataset(tmp_path / "mem", tmp_path / "st")


def test_pieces_end_after_rounds() -> None:
    """Pieces end just after FINISHED_ROUND / FINISHED_INIT when they hold one, cover the data
    section without gaps and hold at most the asked number of samples."""
    s = PerfStream(FIXTURES / "mixed.perf.data", 300)
    p = s.plan
    assert len(p.pieces) > 3
    ends = {int(o + z) for o, t, z in zip(p.r_off, p.r_type, p.r_size, strict=True)
            if t in (REC_FINISHED_ROUND, REC_FINISHED_INIT)}
    assert all(a.stop == b.start for a, b in zip(p.pieces, p.pieces[1:], strict=False))
    assert all(x.n_samples <= 300 for x in p.pieces)
    assert sum(x.n_samples for x in p.pieces) == p.n_samples
    rounds = [x for x in p.pieces[:-1] if x.ends_round]
    assert rounds and all(x.stop in ends for x in rounds)
    assert [x.first_sample for x in p.pieces] == np.cumsum([0] + [x.n_samples for x in p.pieces[:-1]]).tolist()


def test_cli_max_memory(tmp_path: Path) -> None:
    """--max-memory streams a perf.data, a compressed one too (tests/test_stream_compressed.py)."""
    src = FIXTURES / "mixed.perf.data"
    res = CliRunner().invoke(app, ["ingest", str(src), "-o", str(tmp_path / "st"), "--max-memory", "256M"])
    assert res.exit_code == 0 and "in pieces" in res.output, res.output
    _in_memory(src, tmp_path / "mem")
    _same_dataset(tmp_path / "mem", tmp_path / "st")
    z = FIXTURES / "microguest50-zstd.perf.data"
    res = CliRunner().invoke(app, ["ingest", str(z), "-o", str(tmp_path / "z"), "--max-memory", "256M"])
    assert res.exit_code == 0 and "in pieces" in res.output, res.output
    res = CliRunner().invoke(app, ["ingest", str(src), "-o", str(tmp_path / "x"), "--max-memory", "lots"])
    assert isinstance(res.exception, InputError) and "not a size" in str(res.exception)  # (main: one line, exit 2)


def test_large_file_streams_without_asking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A perf.data over STREAM_ABOVE is read in pieces without --max-memory."""
    import vpmutrace.ingest_stream as ist

    monkeypatch.setattr(ist, "STREAM_ABOVE", 1000)
    res = CliRunner().invoke(app, ["ingest", str(FIXTURES / "mixed.perf.data"), "-o", str(tmp_path / "st")])
    assert res.exit_code == 0 and "in pieces" in res.output, res.output


def test_sizes() -> None:
    assert parse_size("2G") == 2 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("1.5g") == 3 << 29
    assert samples_per_piece(2 << 30) > samples_per_piece(512 << 20) > 0


def test_rows_earlier_than_written_are_counted(tmp_path: Path) -> None:
    """A row earlier than one already written (a file breaking perf's round rule) is written where it
    comes and counted; rows past the watermark are held and merged in order."""
    def t(ts: list[int], seq: list[int]) -> pa.Table:
        return pa.table({"ts_ns": pa.array(ts, pa.int64()), "seq": pa.array(seq, pa.int64())})

    s = TableStream(tmp_path / "x.parquet")
    s.add(t([5, 9], [0, 1]), 6)  # 9 held
    s.add(t([7, 8], [2, 3]), None)  # all held, merged with 9
    s.add(t([3], [4]), FLUSH)  # 3 is earlier than 5, already written
    s.close({})
    got = pq.read_table(tmp_path / "x.parquet")
    assert got.column("ts_ns").to_pylist() == [5, 3, 7, 8, 9]
    assert s.late == 1 and "seq 4" in (s.late_example or "")


def test_failure_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece that fails (here: the disk, as the second piece is written) leaves no Parquet file
    and no meta file behind, and the error goes up."""
    import vpmutrace.ingest_stream as ist

    calls = []
    real = ist.TableStream._write

    def failing(self: TableStream, t: pa.Table) -> None:
        calls.append(1)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        real(self, t)

    monkeypatch.setattr(ist.TableStream, "_write", failing)
    with pytest.raises(OSError, match="No space"):
        ingest_perf_stream(FIXTURES / "mixed.perf.data", tmp_path / "st", 1 << 30, piece_samples=50)
    assert not list((tmp_path / "st").glob("*.parquet")) and not (tmp_path / "st" / META_FILE).exists()
