"""The pages of a dataset's Parquet files checked before they are decoded: checksums and sizes.

polars' Parquet reader does not verify page checksums (a flipped byte in a data page reads as a
different value, silently: polars 2.1), and a page header whose sizes are damaged fails inside the
reader with its own error. So each column chunk a command reads is walked here first, page by page,
and every page checked against what the file says elsewhere:

- the page header (Thrift compact protocol, apache/parquet-format ``PageHeader``) parses inside the
  column chunk, its type is a data or dictionary page, its sizes are not negative and the page
  ends inside the chunk;
- its CRC-32 (``PageHeader.crc``: "computed on the serialization binary representation of the page
  (as written to disk), excluding the page header", parquet-format src/main/thrift/parquet.thrift)
  equals zlib's CRC-32 of the page's bytes. Files written by vpmutrace since page checksums were
  added say so in their footer (``KV_PAGE_CHECKSUMS``): a page of such a file without a CRC is
  damaged too. Files without that key (datasets written before) get every other check;
- the encodings a page header names are among those the footer lists for the column chunk; a v1
  data page's level encodings are RLE or BIT_PACKED;
- the walk ends exactly at the chunk's end, the data pages' values add up to the chunk's value
  count, and the headers' and pages' uncompressed sizes to the chunk's total uncompressed size
  (the footer's ``total_uncompressed_size`` counts the page headers, as the writer computes it).

A page that fails any of these is an ``errors.InputError`` naming the file, the row group, the
column, the page's offset and what was wrong. The cost is reading the chunk's bytes, one CRC-32
over them (zlib: about 1.2 GB/s here) and a page header parsed per page (6,883 pages in the 22 MB
dataset of 10^7 events). The footer is read here too, not through pyarrow's metadata objects
(``footer``), and its own CRC-32, which Parquet does not have, is kept in the dataset's sidecar
(``FOOTERS_KEY``, ``check_footers``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpmutrace.errors import InputError

# footer key-value metadata of files whose every page carries a CRC (tracedata.parquet_writer)
KV_PAGE_CHECKSUMS = b"vpmutrace.page_checksums"
PAGE_CHECKSUMS = b"crc32"

# parquet.thrift: PageType and Encoding
DATA_PAGE, INDEX_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 1, 2, 3
ENCODINGS = {0: "PLAIN", 2: "PLAIN_DICTIONARY", 3: "RLE", 4: "BIT_PACKED", 5: "DELTA_BINARY_PACKED",
             6: "DELTA_LENGTH_BYTE_ARRAY", 7: "DELTA_BYTE_ARRAY", 8: "RLE_DICTIONARY", 9: "BYTE_STREAM_SPLIT"}
LEVEL_ENCODINGS = ("RLE", "BIT_PACKED")

# Thrift compact protocol field types (thrift/doc/specs/thrift-compact-protocol.md)
T_STOP, T_TRUE, T_FALSE, T_BYTE, T_I16, T_I32, T_I64, T_DOUBLE, T_BINARY, T_LIST, T_SET, T_MAP, T_STRUCT = range(13)
MAX_NESTING = 16  # structs nest 3 deep in a page header, 6 in a footer (FileMetaData > RowGroup > ... > SizeStatistics)


class _Bad(Exception):
    """A page header that does not parse (turned into an InputError with the place)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7
        if shift > 63:
            raise _Bad("varint longer than 10 bytes")


def _field(buf: bytes, pos: int, fid: int) -> tuple[int, int, int]:
    """A struct's field header at ``pos`` (after field ``fid``): its type, its id (a delta in the
    header's high nibble, else a zigzag varint) and where its value starts."""
    h = buf[pos]
    pos += 1
    if h >> 4:
        return h & 0x0F, fid + (h >> 4), pos
    if h & 0x0F == T_STOP:
        return T_STOP, fid, pos
    z, pos = _varint(buf, pos)
    return h & 0x0F, (z >> 1) ^ -(z & 1), pos


def page_header(buf: bytes, pos: int) -> tuple[dict[int, Any], int]:
    """The PageHeader at ``pos`` (field id -> value; its data, dictionary or v2 page header a dict of
    the same) and where the page's data starts."""
    try:
        h, end = _value(buf, pos, T_STRUCT, 0)
    except IndexError:
        raise _Bad("page header runs past the column chunk") from None
    return h, end


def _value(buf: bytes, pos: int, ftype: int, depth: int, in_list: bool = False) -> tuple[Any, int]:
    """One value of ``ftype`` whole (structs as dicts of field id -> value, lists as lists, binaries as
    bytes, doubles as None) and the position after it. Reading past ``buf``: IndexError."""
    if depth > MAX_NESTING:
        raise _Bad("nested too deep")
    if ftype in (T_TRUE, T_FALSE):
        return (buf[pos] == 1, pos + 1) if in_list else (ftype == T_TRUE, pos)
    if ftype == T_BYTE:
        return buf[pos], pos + 1
    if ftype in (T_I16, T_I32, T_I64):
        z, pos = _varint(buf, pos)
        return (z >> 1) ^ -(z & 1), pos
    if ftype == T_DOUBLE:
        return None, pos + 8
    if ftype == T_BINARY:
        n, pos = _varint(buf, pos)
        if pos + n > len(buf):
            raise IndexError
        return buf[pos:pos + n], pos + n
    if ftype in (T_LIST, T_SET):
        h = buf[pos]
        n, et, pos = h >> 4, h & 0x0F, pos + 1
        if n == 15:
            n, pos = _varint(buf, pos)
        out = []
        for _ in range(n):  # (each element takes a byte at least: a count past the end stops there)
            v, pos = _value(buf, pos, et, depth + 1, True)
            out.append(v)
        return out, pos
    if ftype == T_MAP:
        n, pos = _varint(buf, pos)
        pairs = []
        if n:
            kv, pos = buf[pos], pos + 1
            for _ in range(n):
                k, pos = _value(buf, pos, kv >> 4, depth + 1, True)
                v, pos = _value(buf, pos, kv & 0x0F, depth + 1, True)
                pairs.append((k, v))
        return pairs, pos
    if ftype == T_STRUCT:
        fields: dict[int, Any] = {}
        fid = 0
        while True:
            ftype, fid, pos = _field(buf, pos, fid)
            if ftype == T_STOP:
                return fields, pos
            fields[fid], pos = _value(buf, pos, ftype, depth + 1)
    raise _Bad(f"unknown Thrift field type {ftype}")


@dataclass(frozen=True)
class Chunk:
    """What the footer says of one column chunk (parquet.thrift ColumnMetaData)."""

    column: str  # path_in_schema, dotted
    encodings: frozenset[str]
    num_values: int
    total_uncompressed_size: int
    total_compressed_size: int
    data_page_offset: int
    dictionary_page_offset: int | None


def _num(v: Any) -> int | None:
    """A field that is a number (damage may leave a struct or a boolean where one was)."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _int(d: Any, k: int, what: str) -> int:
    v = d.get(k) if isinstance(d, dict) else None
    if not isinstance(v, int) or isinstance(v, bool):
        raise _Bad(f"{what} missing or not a number")
    return v


def _list(d: Any, k: int, what: str) -> list[Any]:
    v = d.get(k, []) if isinstance(d, dict) else None
    if not isinstance(v, list):
        raise _Bad(f"{what} not a list")
    return v


def footer(data: bytes) -> tuple[dict[bytes, bytes], list[list[Chunk]]]:
    """The key-value metadata and the column chunks (per row group) of a Parquet file's footer
    (``data``: the FileMetaData bytes), read here rather than through pyarrow's metadata objects: on
    some damaged footers those end the process (``RowGroupMetaData.column`` on a size-statistics
    histogram of the wrong length: "terminate called after throwing an instance of
    parquet::ParquetException", pyarrow 26)."""
    try:
        md, _ = _value(data, 0, T_STRUCT, 0)
    except IndexError:
        raise _Bad("footer runs past its length") from None
    kv = {}
    for e in _list(md, 5, "key-value metadata"):
        if isinstance(e, dict) and isinstance(e.get(1), bytes):
            kv[e[1]] = e.get(2) if isinstance(e.get(2), bytes) else b""
    groups = []
    for g in _list(md, 4, "row groups"):
        chunks = []
        for c in _list(g, 1, "row group's columns"):
            m = c.get(3) if isinstance(c, dict) else None
            if not isinstance(m, dict):
                raise _Bad("column chunk without its metadata")
            path = m.get(3)
            if not isinstance(path, list) or not path or not all(isinstance(x, bytes) for x in path):
                raise _Bad("column chunk without its column's name")
            encs = m.get(2) if isinstance(m.get(2), list) else []
            dict_off = m.get(11)
            chunks.append(Chunk(b".".join(path).decode("utf-8", "replace"),
                                frozenset(ENCODINGS.get(e, "?") for e in encs if isinstance(e, int)),
                                _int(m, 5, "value count"), _int(m, 6, "uncompressed size"),
                                _int(m, 7, "compressed size"), _int(m, 9, "data page offset"),
                                _num(dict_off)))
        groups.append(chunks)
    return kv, groups


FOOTERS_KEY = "parquet_footer_crc32"  # _trace_meta.json: file name -> CRC-32 of its footer


def footer_crc(path: Path) -> int | None:
    """CRC-32 of a Parquet file's footer (its FileMetaData, length and magic): the footer has no
    checksum of its own, so the dataset's sidecar keeps one per file (``FOOTERS_KEY``). None when the
    file has no footer at its end."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        if size < 12:
            return None
        f.seek(size - 8)
        n = int.from_bytes(f.read(4), "little")
        if n > size - 12:
            return None
        f.seek(size - 8 - n)
        return zlib.crc32(f.read(n + 8))


def footer_crcs(paths: list[Path]) -> dict[str, int]:
    return {p.name: c for p in sorted(paths) if (c := footer_crc(p)) is not None}


def check_footers(files: list[Path], recorded: dict[str, int]) -> None:
    """Each file's footer against the CRC-32 the sidecar recorded for it (files it does not name:
    datasets written before footers were recorded)."""
    for f in files:
        want = recorded.get(f.name)
        if want is not None and footer_crc(f) != want:
            raise InputError(str(f), "damaged Parquet footer: it does not match its checksum in the dataset's "
                                     "metadata")


def one_line(e: BaseException) -> str:
    """An Arrow error's message on one line (pyarrow's Thrift errors end in a newline)."""
    return " ".join(str(e).split()) or type(e).__name__


def unreadable(path: Path, e: BaseException) -> InputError:
    """A Parquet file whose footer (or whole file) pyarrow cannot read."""
    return InputError(str(path), f"unreadable Parquet file ({one_line(e)})")


def errors() -> tuple[type[BaseException], ...]:
    """What pyarrow raises for a Parquet file it cannot read (a footer whose names are not UTF-8:
    UnicodeDecodeError)."""
    import pyarrow as pa

    return OSError, pa.ArrowException, UnicodeDecodeError


def open_file(path: Path) -> Any:
    """A pyarrow ParquetFile (its footer read), or an InputError naming the file."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except errors() as e:
        raise unreadable(path, e) from None


def check_chunk(path: Path, f: Any, rg: int, cm: Chunk, file_size: int, need_crc: bool) -> None:
    """Walk one column chunk (``cm``, of row group ``rg``) of the open file ``f``; raise InputError at
    the first page that fails a check (module docstring)."""
    where = f"row group {rg}, column {cm.column}"

    def bad(at: int, what: str) -> InputError:
        return InputError(str(path), f"{where}: damaged Parquet page: {what}", f"offset {at}")

    start = cm.data_page_offset  # (0 in a chunk of no values, which has only its dictionary page)
    if cm.dictionary_page_offset is not None and cm.dictionary_page_offset > 0:
        start = min(start, cm.dictionary_page_offset) if start > 0 else cm.dictionary_page_offset
    size = cm.total_compressed_size
    if start < 4 or size < 0 or start + size > file_size:
        raise bad(start, f"column chunk of {size} bytes at {start} is outside the file ({file_size} bytes)")
    f.seek(start)
    buf = f.read(size)
    if len(buf) != size:
        raise bad(start, "column chunk cut by the end of the file")
    view = memoryview(buf)
    allowed = cm.encodings
    pos = values = uncompressed = 0
    first = True
    while pos < size:
        try:
            h, body = page_header(buf, pos)
        except _Bad as e:
            raise bad(start + pos, str(e)) from None
        ptype, usize, csize, crc = (_num(h.get(k)) for k in (1, 2, 3, 4))
        if ptype not in (DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2) or usize is None or csize is None:
            raise bad(start + pos, f"page header of type {ptype} without its sizes")
        if ptype == DICTIONARY_PAGE and not first:
            raise bad(start + pos, "dictionary page after the first page")
        if csize < 0 or usize < 0 or body + csize > size:
            raise bad(start + pos, f"page of {csize} bytes ({usize} uncompressed) does not fit the column chunk "
                                   f"({size - body} bytes left)")
        if crc is not None:
            if zlib.crc32(view[body:body + csize]) != crc & 0xFFFFFFFF:
                raise bad(start + pos, f"its {csize} bytes do not match their checksum")
        elif need_crc:
            raise bad(start + pos, "page without its checksum in a file written with page checksums")
        sub = h.get({DATA_PAGE: 5, DICTIONARY_PAGE: 7, DATA_PAGE_V2: 8}[ptype])
        if not isinstance(sub, dict):
            raise bad(start + pos, "page header without its data or dictionary page header")
        enc = sub.get(4 if ptype == DATA_PAGE_V2 else 2)
        used = [enc] + ([sub.get(3), sub.get(4)] if ptype == DATA_PAGE else [])
        names = [ENCODINGS.get(e) if isinstance(e, int) else None for e in used]
        if names[0] not in allowed or any(n not in LEVEL_ENCODINGS for n in names[1:]):
            raise bad(start + pos, f"page encodings {used} are not the column chunk's ({', '.join(sorted(allowed))})")
        if ptype != DICTIONARY_PAGE:
            values += _num(sub.get(1)) or 0
        uncompressed += body - pos + usize
        pos = body + csize
        first = False
    if values != cm.num_values:
        raise bad(start, f"data pages hold {values} values, the footer says {cm.num_values}")
    if uncompressed != cm.total_uncompressed_size:
        raise bad(start, f"pages add up to {uncompressed} uncompressed bytes, the footer says "
                         f"{cm.total_uncompressed_size}")


def check_file(path: Path, columns: list[str] | None = None) -> bool:
    """Check the pages of ``columns`` (every column when None) in every row group of one Parquet file;
    whether its pages carry checksums (when not, their data could not be checked)."""
    file_size = path.stat().st_size
    with path.open("rb") as f:
        if file_size < 12:
            raise InputError(str(path), f"not a Parquet file ({file_size} bytes)")
        f.seek(file_size - 8)
        tail = f.read(8)
        n = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or n > file_size - 12:
            raise InputError(str(path), "not a Parquet file (no footer at its end)", f"offset {file_size - 8}")
        f.seek(file_size - 8 - n)
        try:
            kv, groups = footer(f.read(n))
        except _Bad as e:
            raise InputError(str(path), f"unreadable Parquet footer ({e})", f"offset {file_size - 8 - n}") from None
        need_crc = kv.get(KV_PAGE_CHECKSUMS) == PAGE_CHECKSUMS
        read = set()
        for rg, chunks in enumerate(groups):
            for cm in chunks:
                if columns is None or cm.column.split(".")[0] in columns:
                    check_chunk(path, f, rg, cm, file_size, need_crc)
                    read.add(cm.column.split(".")[0])
    if not need_crc:
        decode(path, open_file(path), sorted(read))
    return need_crc


def decode(path: Path, pf: Any, columns: list[str]) -> None:
    """Pages without checksums (files written before them): decoded once by pyarrow, row group by row
    group, so that a page that does not decompress or decode is an InputError naming its row group
    and column rather than an error of polars' reader later. (A changed byte that still decodes
    cannot be found without a checksum.)"""
    import pyarrow as pa

    for rg in range(pf.metadata.num_row_groups):
        try:
            pf.read_row_group(rg, columns=columns)
        except (OSError, pa.ArrowException) as e:
            why = one_line(e)
            bad = next((c for c in columns if not _decodes(pf, rg, c)), None)
            where = f"row group {rg}" + (f", column {bad}" if bad else "")
            raise InputError(str(path), f"{where}: damaged Parquet page: it does not decode ({why})") from None


def _decodes(pf: Any, rg: int, column: str) -> bool:
    import pyarrow as pa

    try:
        pf.read_row_group(rg, columns=[column])
    except (OSError, pa.ArrowException):
        return False
    return True
