"""Decode binary tracepoint records into columns, driven only by the event's format.

Records of one event share a fixed-offset layout (the format's fields), so the
fixed part of every record is gathered into one ``(n, record_size)`` byte matrix
with a single numpy fancy-index and reinterpreted through a structured dtype built
from the format. Only dynamic (``__data_loc``/``__rel_loc``) fields take a per-row
path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vpmutrace.formats.event_format import EventFormat, Field

_CHUNK = 1 << 18


def _scalar_dtype(f: Field, byteorder: str) -> np.dtype | None:
    if f.size not in (1, 2, 4, 8):
        return None
    kind = "i" if f.signed else "u"
    return np.dtype(f"{byteorder}{kind}{f.size}")


def gather(buf: np.ndarray, offsets: np.ndarray, width: int, lengths: np.ndarray | None = None) -> np.ndarray:
    """Bytes ``buf[offsets[i] : offsets[i] + width]`` for every i as an (n, width) uint8 matrix.

    Rows shorter than ``width`` (per ``lengths``) are zero-padded, never read past
    their record.
    """
    n = len(offsets)
    out = np.zeros((n, width), dtype=np.uint8)
    if n == 0 or width == 0:
        return out
    cols = np.arange(width, dtype=np.int64)
    limit = len(buf)
    for s in range(0, n, _CHUNK):
        off = offsets[s:s + _CHUNK].astype(np.int64)
        idx = off[:, None] + cols[None, :]
        valid = idx < limit
        if lengths is not None:
            valid &= cols[None, :] < lengths[s:s + _CHUNK, None]
        np.clip(idx, 0, limit - 1, out=idx)
        block = buf[idx]
        block[~valid] = 0
        out[s:s + _CHUNK] = block
    return out


def decode_fields(fmt: EventFormat, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                  byteorder: str = "<", long_size: int = 8) -> dict[str, Any]:
    """Decode every field of ``fmt`` for records at ``offsets`` (payload start, i.e. common_type).

    Returns {field name: numpy array (numbers/bools) or list (strings/bytes)}.
    Fields that extend beyond a record's length read as zero (truncated record).
    """
    width = fmt.record_size
    mat = gather(buf, offsets, width, lengths)
    out: dict[str, Any] = {}
    n = len(offsets)
    for f in fmt.common_fields + fmt.fields:
        if f.data_loc or f.rel_loc:
            out[f.name] = _dynamic(f, buf, offsets, lengths, mat, byteorder)
            continue
        raw = mat[:, f.offset:f.offset + f.size]
        if f.array_len is not None:
            if f.is_string:
                out[f.name] = [bytes(r).split(b"\0", 1)[0].decode("utf-8", "replace") for r in raw]
            else:
                out[f.name] = [bytes(r) for r in raw]
            continue
        dt = _scalar_dtype(f, byteorder)
        if dt is None:
            out[f.name] = [bytes(r) for r in raw]
            continue
        vals = np.ascontiguousarray(raw).view(dt).reshape(n)
        if f.type in ("bool", "_Bool"):
            vals = vals.astype(bool)
        out[f.name] = vals.astype(dt.newbyteorder("=")) if dt.byteorder not in ("=", "|") else vals
    return out


def _dynamic(f: Field, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, mat: np.ndarray,
             byteorder: str) -> list[Any]:
    loc = np.ascontiguousarray(mat[:, f.offset:f.offset + 4]).view(np.dtype(f"{byteorder}u4")).reshape(-1)
    rel = (f.offset + f.size) if f.rel_loc else 0
    out: list[Any] = []
    for base, ln, v in zip(offsets.tolist(), lengths.tolist(), loc.tolist(), strict=True):
        start, size = (v & 0xFFFF) + rel, v >> 16
        if start + size > ln:
            size = max(0, ln - start)
        data = buf[base + start:base + start + size].tobytes()
        out.append(data.split(b"\0", 1)[0].decode("utf-8", "replace") if f.is_string else data)
    return out


def row_dicts(cols: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Per-row dicts of Python values (for print fmt rendering)."""
    names = list(cols)
    lists = [c.tolist() if isinstance(c, np.ndarray) else c for c in cols.values()]
    return [dict(zip(names, vals, strict=True)) for vals in zip(*lists, strict=True)] if n else []
