"""Decode binary tracepoint records into columns, driven only by the event's format.

Records of one event share a fixed-offset layout (the format's fields), so the
fixed part of every record is gathered into one ``(n, record_size)`` byte matrix
with a single numpy fancy-index and reinterpreted through a structured dtype built
from the format. Only dynamic (``__data_loc``/``__rel_loc``) fields take a per-row
path.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from vpmutrace.formats.event_format import EventFormat, Field


@numba.njit(cache=True, nogil=True, parallel=True)
def _gather(buf, offsets, lengths, width, limit, out):  # pragma: no cover - compiled
    for i in numba.prange(len(offsets)):
        o = offsets[i]
        n = width
        if lengths[i] < n:
            n = lengths[i]
        if o + n > limit:
            n = max(0, limit - o)
        for k in range(n):
            out[i, k] = buf[o + k]


def gather(buf: np.ndarray, offsets: np.ndarray, width: int, lengths: np.ndarray | None = None) -> np.ndarray:
    """Bytes ``buf[offsets[i] : offsets[i] + width]`` for every i as an (n, width) uint8 matrix.

    Rows shorter than ``width`` (per ``lengths``) are zero-padded, never read past
    their record or the buffer.
    """
    n = len(offsets)
    out = np.zeros((n, width), dtype=np.uint8)
    if n == 0 or width == 0:
        return out
    lens = lengths if lengths is not None else np.full(n, width, dtype=np.int64)
    _gather(buf, offsets.astype(np.int64, copy=False), lens.astype(np.int64, copy=False), width, len(buf), out)
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _decode_scalars(buf, offsets, lengths, f_off, f_size, f_elem, big_endian, limit, a8, a16, a32,
                    a64):  # pragma: no cover - compiled
    """Field f of record i into element f_elem[f] + i of the arena seen at its width (a8/a16/a32/
    a64: one buffer), as the host's integer of that width; left alone (zero) when the record is
    too short."""
    for i in numba.prange(len(offsets)):
        o = offsets[i]
        ln = lengths[i]
        for f in range(len(f_off)):
            a = f_off[f]
            z = f_size[f]
            if a + z > ln or o + a + z > limit:
                continue
            v = np.uint64(0)
            if big_endian:
                for k in range(z):
                    v = (v << np.uint64(8)) | np.uint64(buf[o + a + k])
            else:
                for k in range(z):
                    v |= np.uint64(buf[o + a + k]) << np.uint64(8 * k)
            d = f_elem[f] + i
            if z == 8:
                a64[d] = v
            elif z == 4:
                a32[d] = np.uint32(v)
            elif z == 2:
                a16[d] = np.uint16(v)
            else:
                a8[d] = np.uint8(v)


def width_views(arena: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One uint8 arena seen as uint8/16/32/64 arrays, for kernels that write each column at its
    own width (element ``e`` of the w-byte view is at byte ``e * w``)."""
    a16, a32, a64 = (arena[:len(arena) // w * w].view(f"u{w}") for w in (2, 4, 8))
    return arena, a16, a32, a64


def _scalar_columns(fields: list[Field], buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                    big_endian: bool) -> dict[str, np.ndarray]:
    """Every scalar field's column at its own width, all in one zeroed arena, in one compiled pass."""
    n = len(offsets)
    starts, total = [], 0
    for f in fields:
        starts.append(total)
        total += (n * f.size + 63) & ~63  # each column starts 64-byte aligned
    arena = np.zeros(max(total, 64), dtype=np.uint8)
    if n:
        _decode_scalars(buf, offsets, lengths, np.array([f.offset for f in fields], np.int64),
                        np.array([f.size for f in fields], np.int64),
                        np.array([d // f.size for d, f in zip(starts, fields, strict=True)], np.int64),
                        big_endian, len(buf), *width_views(arena))
    return {f.name: scalar_column(f, arena[d:d + n * f.size].view(scalar_dtype(f)))
            for d, f in zip(starts, fields, strict=True)}


def is_scalar(f: Field) -> bool:
    """A field read as one integer (1, 2, 4 or 8 bytes, not an array, not dynamic)."""
    return f.array_len is None and not (f.data_loc or f.rel_loc) and f.size in (1, 2, 4, 8)


def scalar_dtype(f: Field) -> np.dtype:
    """The numpy type of a scalar field's bytes (bool fields become bool in ``scalar_column``)."""
    if f.signed:
        return np.dtype(f"i{f.size}")
    return np.dtype(f"u{f.size}")


def scalar_column(f: Field, col: np.ndarray) -> np.ndarray:
    """A scalar field's column from its raw little-endian bytes viewed at its width."""
    return col.astype(bool) if f.type in ("bool", "_Bool") else col


def decode_fields(fmt: EventFormat, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                  byteorder: str = "<", long_size: int = 8, scalars_done: bool = False) -> dict[str, Any]:
    """Decode every field of ``fmt`` for records at ``offsets`` (payload start, i.e. common_type).

    Returns {field name: numpy array (numbers/bools) or list (strings/bytes)}.
    Fields that extend beyond a record's length read as zero (truncated record).
    Scalars are read in one compiled pass; arrays and dynamic fields take slower paths.
    With ``scalars_done`` only the non-scalar fields are decoded (the caller has the scalars).
    """
    offsets = offsets.astype(np.int64, copy=False)
    lengths = lengths.astype(np.int64, copy=False)
    fields = fmt.common_fields + fmt.fields
    scalars = [] if scalars_done else [f for f in fields if is_scalar(f)]
    out: dict[str, Any] = _scalar_columns(scalars, buf, offsets, lengths, byteorder == ">") if scalars else {}
    rest = [f for f in fields if not is_scalar(f)]
    if rest:
        width = max(f.offset + f.size for f in rest)
        mat = gather(buf, offsets, width, lengths)
        for f in rest:
            if f.data_loc or f.rel_loc:
                out[f.name] = _dynamic(f, buf, offsets, lengths, mat, byteorder)
                continue
            part = mat[:, f.offset:f.offset + f.size]
            if f.is_string:
                out[f.name] = [bytes(r).split(b"\0", 1)[0].decode("utf-8", "replace") for r in part]
            else:
                out[f.name] = [bytes(r) for r in part]
    return {f.name: out[f.name] for f in fields if f.name in out}


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


@numba.njit(cache=True, inline="always")
def _pair_key(a, b, i, shift):  # pragma: no cover - compiled
    if shift < 0:  # one array
        return np.int64(a[i])
    mask = (np.int64(1) << shift) - 1 if shift < 64 else np.int64(-1)
    return (np.int64(a[i]) & mask) | (np.int64(b[i]) << shift)


@numba.njit(cache=True)
def _factorize_keys(a, b, shift):  # pragma: no cover - compiled
    """Codes of the keys a[i] (shift < 0) or a[i] | b[i] << shift, in order of first appearance,
    and the first row of each (a hash table)."""
    n = len(a)
    codes = np.empty(n, dtype=np.int32)
    seen = numba.typed.Dict.empty(key_type=numba.types.int64, value_type=numba.types.int32)
    first = [0]
    first.pop()
    last_k = np.int64(0)
    last_c = np.int32(-1)
    for i in range(n):
        k = _pair_key(a, b, i, shift)
        if k != last_k or last_c < 0:  # runs of equal keys are common (one exception, one exit reason)
            c = seen.get(k, np.int32(-1))
            if c < 0:
                c = np.int32(len(first))
                seen[k] = c
                first.append(i)
            last_k = k
            last_c = c
        codes[i] = last_c
    return codes, np.array(first, dtype=np.int64)


@numba.njit(cache=True)
def _factorize_dense(a, b, a_min, b_min, b_range, table):  # pragma: no cover - compiled
    """As _factorize_keys for values in small ranges: the key (a - a_min) * b_range + (b - b_min)
    indexes ``table`` (all -1) directly. b_range 0: one array."""
    n = len(a)
    codes = np.empty(n, dtype=np.int32)
    first = [0]
    first.pop()
    for i in range(n):
        k = np.int64(a[i]) - a_min
        if b_range > 0:
            k = k * b_range + (np.int64(b[i]) - b_min)
        c = table[k]
        if c < 0:
            c = np.int32(len(first))
            table[k] = c
            first.append(i)
        codes[i] = c
    return codes, np.array(first, dtype=np.int64)


DENSE_KEYS = 1 << 20  # distinct-key space small enough for a direct table


def _factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _factorize_keys(keys, keys, -1)


def _factorize_ints(a: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One or two integer arrays: a direct table when their value ranges are small, else a hash."""
    lo_a, hi_a = int(a.min()), int(a.max())
    ra = hi_a - lo_a + 1 if hi_a < 1 << 63 else DENSE_KEYS + 1  # (u64 values past int64 hash instead)
    if b is None:
        if ra <= DENSE_KEYS:
            return _factorize_dense(a, a, lo_a, 0, 0, np.full(ra, -1, np.int32))
        return _factorize_keys(a, a, -1)
    lo_b, hi_b = int(b.min()), int(b.max())
    rb = hi_b - lo_b + 1 if hi_b < 1 << 63 else DENSE_KEYS + 1
    if ra * rb <= DENSE_KEYS:
        return _factorize_dense(a, b, lo_a, lo_b, rb, np.full(ra * rb, -1, np.int32))
    return _factorize_keys(a, b, a.dtype.itemsize * 8)


def factorize_rows(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Codes of distinct value tuples across equal-length integer arrays, and each code's first row.

    Linear time (a hash per row) when the values pack into 64 bits, as the few fields a
    print fmt argument reads usually do; a sort otherwise.
    """
    n = len(arrays[0])
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    widths = [a.dtype.itemsize * 8 for a in arrays]
    if len(arrays) == 1 and arrays[0].dtype.kind in "iu":
        return _factorize_ints(arrays[0], None)
    if len(arrays) == 2 and sum(widths) <= 64 and all(a.dtype.kind in "iu" for a in arrays):
        return _factorize_ints(arrays[0], arrays[1])
    if sum(widths) <= 64:
        key = np.zeros(n, dtype=np.uint64)
        shift = 0
        for a, w in zip(arrays, widths, strict=True):
            key |= (a.astype(np.uint64) & np.uint64((1 << w) - 1)) << np.uint64(shift)
            shift += w
        return _factorize(key.view(np.int64))
    stacked = np.stack([a.astype(np.int64) for a in arrays], axis=1)
    _, first, inv = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
    return inv.reshape(-1).astype(np.int32), first
