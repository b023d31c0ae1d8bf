"""Damaged pages in a dataset's Parquet files (vpmutrace/parquet_pages.py): every writer puts a CRC-32
in each page; a byte changed inside a page, or a page header's sizes and counts, is a one-line error
naming the file, row group, column and offset, for every command that reads the table; a dataset
written before page checksums is read with the checks it can have."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES

from vpmutrace.errors import InputError
from vpmutrace.parquet_pages import FOOTERS_KEY, KV_PAGE_CHECKSUMS, check_file, page_header
from vpmutrace.tracedata import META_FILE, STATS_COLUMNS, WRITE_BATCH, load_dataset

ROOT = Path(__file__).resolve().parents[1]
SOURCE = FIXTURES / "microguest200.perf.data"  # kvm_msr (1600 rows), sched_switch with dictionary columns


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpmutrace", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pages") / "ds"
    r = _cli("ingest", str(SOURCE), "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _pages(f: Path, column: str) -> list[tuple[int, int, dict]]:
    """(header offset, data offset, header fields) of every page of ``column`` in row group 0."""
    raw = f.read_bytes()
    md = pq.ParquetFile(f).metadata
    i = [md.schema.column(k).name for k in range(md.num_columns)].index(column)
    cm = md.row_group(0).column(i)
    pos = cm.dictionary_page_offset if cm.has_dictionary_page else cm.data_page_offset
    end, out = pos + cm.total_compressed_size, []
    while pos < end:
        h, body = page_header(raw, pos)
        out.append((pos, body, h))
        pos = body + h[3]
    return out


def _flip(f: Path, at: int, bit: int = 0x01) -> None:
    raw = bytearray(f.read_bytes())
    raw[at] ^= bit
    f.write_bytes(raw)


def _old(src: Path, dst: Path) -> Path:
    """The dataset as the writer before page checksums wrote it: the same settings, no CRC in the
    pages, no ``KV_PAGE_CHECKSUMS`` in the footer, no footer checksums in the sidecar."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / META_FILE).read_text())
    del doc[FOOTERS_KEY]
    (dst / META_FILE).write_text(json.dumps(doc))
    for f in dst.glob("*.parquet"):
        t = pq.read_table(f)
        meta = {k: v for k, v in (t.schema.metadata or {}).items() if k not in (KV_PAGE_CHECKSUMS, b"ARROW:schema")}
        names = set(t.schema.names)
        pq.write_table(t.replace_schema_metadata(meta), f, compression="lz4",
                       use_dictionary=[x.name for x in t.schema if pa.types.is_dictionary(x.type)],
                       column_encoding={c: "DELTA_BINARY_PACKED" for c in ("ts_ns", "seq") if c in names},
                       write_statistics=[c for c in STATS_COLUMNS if c in names], write_batch_size=WRITE_BATCH)
    return dst


def test_every_page_written_has_a_checksum(dataset: Path, tmp_path: Path) -> None:
    """The dataset's tables (in memory and --max-memory streamed), analyze --out's row tables."""
    for f in dataset.glob("*.parquet"):
        assert check_file(f) is True, f  # (a page without a CRC in such a file is an error)
        assert all(2 in h and 4 in h for _, _, h in _pages(f, "ts_ns")), f
    r = _cli("ingest", str(FIXTURES / "mixed.perf.data"), "-o", str(tmp_path / "st"), "--max-memory", "256M")
    assert r.returncode == 0 and "in pieces" in r.stdout, r.stderr
    streamed = list((tmp_path / "st").glob("*.parquet"))
    assert streamed and all(check_file(f) for f in streamed)
    r = _cli("analyze", str(dataset), "-o", str(tmp_path / "rows"))
    assert r.returncode == 0, r.stderr
    rows = list((tmp_path / "rows").glob("*.parquet"))
    assert rows and all(check_file(f) for f in rows)


def test_polars_alone_reads_a_damaged_page_as_another_value(dataset: Path, tmp_path: Path) -> None:
    """Why the pages are checked before polars reads them: its reader does not verify page checksums
    (polars 2.1), so a changed bit in a page is a changed value, with no error."""
    f = _copy(dataset, tmp_path / "d") / "kvm_msr.parquet"
    before = pl.read_parquet(f)["msr"]
    _, body, h = _pages(f, "msr")[0]
    _flip(f, body + h[3] - 1, 0x10)  # (the last byte of an LZ4 block is a literal)
    after = pl.read_parquet(f)["msr"]
    assert not after.equals(before)
    with pytest.raises(InputError, match="do not match their checksum"):
        check_file(f)


@pytest.mark.parametrize("command", [["info", "--check"], ["analyze"], ["show"], ["exits"],
                                     ["report", "-o", "{tmp}/r.html"]])
def test_a_damaged_page_is_one_line_in_every_command(dataset: Path, tmp_path: Path, command: list[str]) -> None:
    """Every command that decodes kvm_msr's msr column (``info --check``: every column of every table)."""
    d = _copy(dataset, tmp_path / "d")
    f = d / "kvm_msr.parquet"
    head, body, h = _pages(f, "msr")[0]
    _flip(f, body + h[3] // 2)
    r = _cli(command[0], *[a.format(tmp=tmp_path) for a in command[1:]], str(d))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines == [f"vpmutrace: error: {f}:offset {head}: row group 0, column msr: damaged Parquet page: its "
                     f"{h[3]} bytes do not match their checksum"], r.stderr


@pytest.mark.parametrize("table,column", [("kvm_msr", "ts_ns"), ("kvm_msr", "value"), ("kvm_msr", "write"),
                                          ("sched_switch", "prev_comm"), ("sched_switch", "next_pid")])
def test_every_page_of_a_column_is_checked(dataset: Path, tmp_path: Path, table: str, column: str) -> None:
    """A byte changed in any page (dictionary page included) of the columns a scan reads is an error
    when that column is first scanned; columns not read are not checked then, and read as before."""
    for k, (_, body, h) in enumerate(_pages(dataset / f"{table}.parquet", column)):
        d = _copy(dataset, tmp_path / f"d{k}")
        _flip(d / f"{table}.parquet", body + max(h[3] - 2, 0))
        td = load_dataset(d)  # (the footers only)
        other = next(c for c in ("cpu", "pid") if c != column)
        assert td.scan(table, [other]).collect().height == td.row_counts()[table]
        with pytest.raises(InputError, match=f"row group 0, column {column}: damaged Parquet page: its"):
            td.scan(table, [column])


@pytest.mark.parametrize("damage,what", [
    ("compressed size + 1", "does not fit the column chunk|do not match their checksum|page header"),
    ("compressed size - 1", "do not match their checksum"),
    ("uncompressed size + 1", "uncompressed bytes, the footer says"),
    ("value count + 1", "values, the footer says"),
    ("header zeroed", "page header|without its sizes"),
    ("crc dropped", "page without its checksum"),
])
def test_page_header_damage(dataset: Path, tmp_path: Path, damage: str, what: str) -> None:
    """A page header is not covered by the page's CRC: its sizes and counts are checked against the
    column chunk's footer entry instead."""
    f = _copy(dataset, tmp_path / "d") / "kvm_msr.parquet"
    head, body, h = _pages(f, "msr")[0]
    raw = f.read_bytes()
    hdr = bytearray(raw[head:body])

    def zz(v: int) -> bytes:  # a zigzag varint
        z, out = (v << 1) ^ (v >> 63), bytearray()
        while z >= 0x80:
            out.append(z & 0x7F | 0x80)
            z >>= 7
        return bytes([*out, z])

    if damage == "header zeroed":
        hdr = bytearray(len(hdr))
    elif damage == "crc dropped":  # field 4 (i32) -> turned into a skipped field 6 of the same type
        i = hdr.index(bytes([0x15]) + zz(h[4]))
        hdr[i] = 0x25
    else:
        field, delta = {"compressed size + 1": (3, 1), "compressed size - 1": (3, -1),
                        "uncompressed size + 1": (2, 1), "value count + 1": (None, 1)}[damage]
        if field is None:  # DataPageHeader.num_values: the first field of the nested struct (field 5)
            i = hdr.index(bytes([0x1C, 0x15]) + zz(h[5][1])) + 2
            old, new = zz(h[5][1]), zz(h[5][1] + delta)
        else:
            i = hdr.index(bytes([0x15]) + zz(h[field])) + 1
            old, new = zz(h[field]), zz(h[field] + delta)
        assert len(old) == len(new)
        hdr[i:i + len(old)] = new
    f.write_bytes(raw[:head] + bytes(hdr) + raw[body:])
    with pytest.raises(InputError, match=what) as e:
        check_file(f)
    assert str(e.value).startswith(f"{f}:offset ") and "\n" not in str(e.value)


def test_info_without_check_reads_the_footers_only(dataset: Path, tmp_path: Path) -> None:
    """``info`` decodes no event table: it says what the footers and the metadata say, and stays as
    fast as reading them (a damaged page is found by --check and by the commands that read it)."""
    d = _copy(dataset, tmp_path / "d")
    _, body, h = _pages(d / "kvm_msr.parquet", "msr")[0]
    _flip(d / "kvm_msr.parquet", body + h[3] // 2)
    r = _cli("info", "--json", str(d))
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == _cli("info", "--json", str(dataset)).stdout.replace(str(dataset), str(d))
    assert _cli("info", "--check", str(dataset)).returncode == 0


def test_a_cut_file_is_one_line(dataset: Path, tmp_path: Path) -> None:
    d = _copy(dataset, tmp_path / "d")
    f = d / "kvm_msr.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    r = _cli("info", str(d))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and str(f) in r.stderr


def test_dataset_written_before_page_checksums(dataset: Path, tmp_path: Path) -> None:
    """No CRC in its pages: it reads as before (same analysis), ``info`` says once that its pages'
    data cannot be checked (``info --check``); each page a command reads is decoded by pyarrow first, so a page that no
    longer decodes is a one-line error; a changed byte that still decodes is read as its new value
    (nothing can tell it from the written one)."""
    old = _old(dataset, tmp_path / "old")
    r = _cli("info", "--check", str(old))
    assert r.returncode == 0
    assert r.stderr.strip().splitlines() == [
        f"vpmutrace: warning: 7 of 7 Parquet files of {old} have no page checksums (written before vpmutrace "
        "wrote them): a changed value inside their pages cannot be detected; `vpmutrace ingest "
        f"{old} -o NEW` writes the dataset again with them"]
    assert _cli("analyze", "--json", str(old)).stdout == _cli("analyze", "--json", str(dataset)).stdout

    bad = _copy(old, tmp_path / "bad")
    f = bad / "kvm_msr.parquet"
    _, body, h = _pages(f, "msr")[0]
    _flip(f, body + h[3] // 2)  # (here: inside an LZ4 sequence, it no longer decompresses)
    r = _cli("analyze", str(bad))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"vpmutrace: error: {f}: row group 0, column msr: damaged Parquet page: it does not decode "
        "(Corrupt Lz4 compressed data.)"], r.stderr

    quiet = _copy(old, tmp_path / "quiet")
    f = quiet / "kvm_msr.parquet"
    _flip(f, body + h[3] - 1, 0x10)  # a literal byte: decodes, to another value
    td = load_dataset(quiet)
    assert not td.df("kvm_msr")["msr"].equals(load_dataset(old).df("kvm_msr")["msr"])


def test_tile_dataset_writes_checksums(dataset: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tile_dataset.py"), str(dataset), "2", "-o",
                        str(tmp_path / "tiled")], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert all(check_file(f) for f in (tmp_path / "tiled").glob("*.parquet"))
    assert load_dataset(tmp_path / "tiled").df("kvm_msr").height == 2 * load_dataset(dataset).df("kvm_msr").height


def test_a_damaged_page_of_the_stats_table_is_found_at_open(tmp_path: Path) -> None:
    """(the stats table is read whole at open: its pages are checked there)"""
    r = _cli("ingest", str(FIXTURES / "perf.data.lost_samples-4.4"), "-o", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    f = tmp_path / "d" / "stats.parquet"
    head, body, h = _pages(f, "category")[-1]
    _flip(f, body + h[3] // 2)
    with pytest.raises(InputError, match=r"stats.parquet:offset \d+: row group 0, column category: damaged"):
        load_dataset(tmp_path / "d")


def test_a_damaged_footer_is_one_line(dataset: Path, tmp_path: Path) -> None:
    """A Parquet footer has no checksum: the sidecar keeps each file's (``FOOTERS_KEY``), checked when
    the dataset is opened, so a changed footer byte is an error before pyarrow or polars read it
    (random flips in a dataset's files: docs/reliability.md, Dataset pages). Without the recorded checksum (a
    dataset written before), a footer pyarrow cannot parse is one line as well (found by atheris:
    pyarrow's Thrift errors end in a newline, which the message kept)."""
    import struct

    d = _copy(dataset, tmp_path / "d")
    f = d / "kvm_msr.parquet"
    raw = bytearray(f.read_bytes())
    footer = struct.unpack_from("<I", raw, len(raw) - 8)[0]
    raw[len(raw) - 8 - footer] = 0x0F  # FileMetaData's first field header: an unknown Thrift type
    f.write_bytes(raw)
    with pytest.raises(InputError) as e:
        load_dataset(d)
    assert str(e.value) == f"{f}: damaged Parquet footer: it does not match its checksum in the dataset's metadata"
    r = _cli("info", str(d))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    doc = json.loads((d / META_FILE).read_text())
    del doc[FOOTERS_KEY]
    (d / META_FILE).write_text(json.dumps(doc))
    with pytest.raises(InputError, match="unreadable Parquet file") as e:
        load_dataset(d)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{f}: ")


def test_a_thrift_error_with_a_newline_is_one_line() -> None:
    """(the exact message pyarrow gave for the fuzzer's input)"""
    from vpmutrace.parquet_pages import unreadable

    e = unreadable(Path("x.parquet"), OSError("Couldn't deserialize thrift: invalid TType\n"))
    assert str(e) == "x.parquet: unreadable Parquet file (Couldn't deserialize thrift: invalid TType)"
