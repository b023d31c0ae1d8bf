"""Ingest piece by piece (--max-memory) of perf.data written with ``perf record -z`` (COMPRESSED
records) against the in-memory ingest of the same file: the same Parquet tables row for row, the
same meta and stats; the decompressed bytes held at once bounded by the piece, not the file; damage
(a cut record, a corrupt zstd frame) reported as the in-memory reader reports it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, shared
from test_stream import _in_memory, _same_dataset

from vpmutrace.formats.perf_abi import REC_COMPRESSED, REC_COMPRESSED2, REC_FINISHED_ROUND
from vpmutrace.ingest_stream import ingest_perf_stream
from vpmutrace.readers import perf_data as pd
from vpmutrace.readers.perf_expand import Expansion
from vpmutrace.readers.perf_stream import PerfStream
from vpmutrace.tracedata import META_FILE

LOCAL = ["microguest50-zstd.perf.data", "microguest300-zstd.perf.data"]
SHARED = ["public-github/perf418_zstd_compressed_cycles.data"]  # (no licence to copy it into fixtures/)


def _src(rel: str) -> Path:
    return FIXTURES / rel if rel in LOCAL else shared(rel)


def _expanded(src: Path) -> np.ndarray:
    """The whole decompressed record stream, as the in-memory reader makes it."""
    pf, buf, start, end = pd.open_perf_data(src)
    offs, types, _m, sizes, stop, _ = pd.walk(buf, start, end)
    return pd._decompress_records(pf, buf, offs, types, sizes, stop)


def _streamed(src: Path, out: Path, piece: int) -> None:
    got = ingest_perf_stream(src, out, 1 << 30, piece_samples=piece)
    assert not isinstance(got, str), got


@pytest.mark.parametrize("rel", LOCAL + SHARED)
def test_compressed_pieces_equal_in_memory(rel: str, tmp_path: Path) -> None:
    src = _src(rel)
    s = PerfStream(src, 10)
    assert s.zplan is not None and s.zplan.n_compressed > 0 and s.needs_memory() is None
    n = s.plan.n_samples
    piece = max(1, min(97, n // 4))
    assert len(PerfStream(src, piece).plan.pieces) >= 3
    _in_memory(src, tmp_path / "mem")
    _streamed(src, tmp_path / "st", piece)
    _same_dataset(tmp_path / "mem", tmp_path / "st")


def test_stream_offsets_are_the_in_memory_ones() -> None:
    """The plan walks the stream perf_data expands in memory: its records at the same offsets, its
    pieces covering it without gaps, at most the asked samples each, ending after round records."""
    src = FIXTURES / "microguest300-zstd.perf.data"
    whole = _expanded(src)
    p = PerfStream(src, 40).plan
    assert p.pieces[0].start == 0 and p.pieces[-1].stop == len(whole) == p.stop
    assert all(a.stop == b.start for a, b in zip(p.pieces, p.pieces[1:], strict=False))
    assert all(x.n_samples <= 40 for x in p.pieces) and sum(x.n_samples for x in p.pieces) == p.n_samples
    z = PerfStream(src, 40).zplan
    for o, so, sz in zip(z.r_off.tolist(), z.side_off.tolist(), z.r_size.tolist(), strict=True):
        assert bytes(whole[o:o + sz]) == bytes(z.side[so:so + sz])
    rounds = {int(o + s) for o, t, s in zip(p.r_off, p.r_type, p.r_size, strict=True) if t == REC_FINISHED_ROUND}
    assert rounds and all(x.stop in rounds for x in p.pieces[:-1] if x.ends_round)


def test_decompressed_bytes_held_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With small chunks and pieces, the largest amount of decompressed data held at once is a
    piece and a chunk, a small part of what the file decompresses to."""
    import vpmutrace.readers.perf_stream_z as pz

    src = FIXTURES / "microguest300-zstd.perf.data"
    pf, buf, start, end = pd.open_perf_data(src)
    offs, types, _m, sizes, stop, _ = pd.walk(buf, start, end)
    ex = Expansion(pf.path, buf, 1 << 40)
    total = sum(len(x) for x in ex.records(offs, types, sizes, np.append(offs[1:], stop)))
    monkeypatch.setattr(pz, "CHUNK_BYTES", 1 << 14)
    monkeypatch.setattr(pz, "MIN_PIECE_BYTES", 1 << 14)
    s = PerfStream(src, 40)
    biggest = max(x.stop - x.start for x in s.plan.pieces)
    b = pd.TraceBuilder()
    s.header(b)
    for _ in s.pieces():
        pass
    assert 0 < s.held_max <= biggest + (1 << 14) + ex.largest  # a piece, a chunk and one feed's output
    assert s.held_max < total / 8, (s.held_max, total)


def _compressed_records(raw: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the COMPRESSED records of a file-mode perf.data."""
    d_off, d_size = struct.unpack_from("<QQ", raw, 40)
    out, at = [], d_off
    while at + 8 <= d_off + d_size:
        typ, _misc, size = struct.unpack_from("<IHH", raw, at)
        if typ == REC_COMPRESSED:
            out.append((at, size))
        at += size
    return out


def _stats(out: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    return {r["category"]: r["examples"] for r in pq.read_table(out / "stats.parquet").to_pylist()}


@pytest.mark.parametrize("damage", ["cut", "corrupt"])
def test_damaged_compressed_data_as_in_memory(damage: str, tmp_path: Path) -> None:
    """A data section that ends inside a COMPRESSED record, or zstd data corrupt in the middle of
    the file: read up to the damage, the loss counted (stats ``partial`` / ``truncated``) as the
    in-memory reader counts it, the same rows before it."""
    raw = bytearray((FIXTURES / "microguest300-zstd.perf.data").read_bytes())
    recs = _compressed_records(bytes(raw))
    at, size = recs[len(recs) // 2]
    if damage == "cut":  # the data section ends inside the record; the feature table, which follows
        # the data section (perf.data-file-format.txt), moved there so that the features stay readable
        d_off, d_size = struct.unpack_from("<QQ", raw, 40)
        n_feat = sum(bin(x).count("1") for x in struct.unpack_from("<4Q", raw, 72))
        table = raw[d_off + d_size:d_off + d_size + 16 * n_feat]
        new_end = at + size // 2
        struct.pack_into("<Q", raw, 48, new_end - d_off)
        raw[new_end:new_end + len(table)] = table
    else:
        raw[at + 8:at + 40] = b"\xff" * 32  # a reserved block type where the next block's header is
    bad = tmp_path / f"{damage}.perf.data"
    bad.write_bytes(bytes(raw))
    _in_memory(bad, tmp_path / "mem")
    n = PerfStream(bad, 10).plan.n_samples
    assert n > 40
    _streamed(bad, tmp_path / "st", n // 8)
    _same_dataset(tmp_path / "mem", tmp_path / "st")
    stats = _stats(tmp_path / "st")
    if damage == "cut":
        assert f"offset {at}: record cut off by the end of the data" in stats["truncated"]
    else:
        assert f"COMPRESSED record at offset {at} does not decompress" in stats["partial"]


def test_expansion_past_room_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records expanding past binio.expansion_room (here lowered to 1 MB: the file expands to 3 MB):
    the in-memory reader's one-line error, from the plan's walk, before any piece."""
    import vpmutrace.readers.perf_stream_z as pz
    from vpmutrace.errors import InputError

    src = FIXTURES / "microguest300-zstd.perf.data"
    for mod in (pd, pz):
        monkeypatch.setattr(mod, "expansion_room", lambda size: 1 << 20)
    with pytest.raises(InputError) as mem:
        pd.read_perf_data(src, pd.TraceBuilder())
    with pytest.raises(InputError) as st:
        PerfStream(src, 50)
    assert str(mem.value) == str(st.value) and "compressed records expand to more than 1048576" in str(st.value)


def test_pipe_mode_compressed_equal_in_memory(tmp_path: Path) -> None:
    """The same recording in pipe mode (fuzz.corpus.pipe_mode: attrs, tracing data and features as
    records before the data; the tracing data carried after its record's header)."""
    from fuzz.corpus import pipe_mode

    src = tmp_path / "pipe.perf.data"
    src.write_bytes(pipe_mode((FIXTURES / "microguest300-zstd.perf.data").read_bytes()))
    s = PerfStream(src, 10)
    assert s.pf.pipe and s.zplan is not None
    _in_memory(src, tmp_path / "mem")
    _streamed(src, tmp_path / "st", max(1, s.plan.n_samples // 16))
    _same_dataset(tmp_path / "mem", tmp_path / "st")


def _as_compressed2(raw: bytes) -> bytes:
    """The file with each COMPRESSED record rewritten as COMPRESSED2 (data_size, then the data
    padded to 8 bytes; tools/lib/perf/include/perf/event.h perf_record_compressed2), the sections
    after the data section moved along."""
    d_off, d_size = struct.unpack_from("<QQ", raw, 40)
    data, at = bytearray(), d_off
    while at < d_off + d_size:
        typ, misc, size = struct.unpack_from("<IHH", raw, at)
        if typ == REC_COMPRESSED:
            payload = raw[at + 8:at + size]
            pad = -len(payload) % 8
            assert 16 + len(payload) + pad < 1 << 16
            data += struct.pack("<IHHQ", REC_COMPRESSED2, misc, 16 + len(payload) + pad, len(payload))
            data += payload + b"\xee" * pad
        else:
            data += raw[at:at + size]
        at += size
    delta = len(data) - d_size
    out = bytearray(raw[:d_off] + data + raw[d_off + d_size:])
    struct.pack_into("<Q", out, 48, len(data))
    n_feat = sum(bin(x).count("1") for x in struct.unpack_from("<4Q", raw, 72))
    for k in range(n_feat):
        pos = d_off + len(data) + 16 * k
        struct.pack_into("<Q", out, pos, struct.unpack_from("<Q", out, pos)[0] + delta)
    return bytes(out)


def test_compressed2_equal_in_memory(tmp_path: Path) -> None:
    """COMPRESSED2 records (data_size, padding after the data) stream as COMPRESSED ones do, and a
    data_size past the record is counted as partial, as in memory."""
    src = tmp_path / "c2.perf.data"
    src.write_bytes(_as_compressed2((FIXTURES / "microguest300-zstd.perf.data").read_bytes()))
    s = PerfStream(src, 10)
    assert s.zplan is not None and s.zplan.n_compressed == 34 and s.plan.n_samples == 29341
    _in_memory(src, tmp_path / "mem")
    _streamed(src, tmp_path / "st", 97)
    _same_dataset(tmp_path / "mem", tmp_path / "st")
    meta = json.loads((tmp_path / "st" / META_FILE).read_text())
    assert meta["events"]["kvm:kvm_emulate_insn"] == 16201 and meta["events"]["sched:sched_switch"] == 6825
    raw = bytearray(src.read_bytes())
    d_off = struct.unpack_from("<Q", raw, 40)[0]
    c2, pos = [], d_off
    while len(c2) < 20:  # the 20th COMPRESSED2 record claims more data than it holds
        typ, _misc, size = struct.unpack_from("<IHH", raw, pos)
        if typ == REC_COMPRESSED2:
            c2.append((pos, size))
        pos += size
    at, size = c2[-1]
    struct.pack_into("<Q", raw, at + 8, size)
    bad = tmp_path / "c2bad.perf.data"
    bad.write_bytes(bytes(raw))
    _in_memory(bad, tmp_path / "bmem")
    _streamed(bad, tmp_path / "bst", 97)
    _same_dataset(tmp_path / "bmem", tmp_path / "bst")
    assert f"COMPRESSED2 record at offset {at}: data size {size}" in _stats(tmp_path / "bst")["partial"]
