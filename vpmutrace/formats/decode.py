"""Decode binary tracepoint records into columns, driven only by the event's format.

Every field kind of the format language becomes a column in compiled passes over the records,
with no per-row Python (kernels/fields.py):

- scalars of 1, 2, 4 or 8 bytes, signed or not, in either byte order: numpy integers of that
  width (bool fields: bool), all of an event's scalars in one pass into one arena;
- char arrays, fixed (``char comm[16]``) or dynamic (``__data_loc char[]``, ``__rel_loc
  char[]``): Arrow strings up to the first NUL, built from one data buffer and offsets; bytes
  that are not UTF-8 become U+FFFD, as ``bytes.decode(errors="replace")`` does;
- arrays of 1-byte elements that are not chars (``u8 insn[15]``, ``__data_loc u8[]``,
  ``cpumask_t``) and fields of other sizes (a struct): Arrow binary;
- arrays of 2-, 4- or 8-byte integers: Arrow ``fixed_size_list`` (fixed arrays) or ``list``
  (dynamic arrays) of integers of that width and signedness.

Fixed fields that reach past a record read as zero (a truncated record); the data of a
dynamic field is cut at its record's end and counted in ``damaged``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from vpmutrace import kernels
from vpmutrace.formats.event_format import ARRAY, BYTES, CHARS, SCALAR, EventFormat, Field

ARROW_MAX_OFFSET = (1 << 31) - 1  # int32 offsets of Arrow string / binary / list arrays


def gather(buf: np.ndarray, offsets: np.ndarray, width: int, lengths: np.ndarray | None = None,
           start: int = 0) -> np.ndarray:
    """Bytes ``buf[offsets[i] + start : ... + width]`` for every i as an (n, width) uint8 matrix.

    Bytes past a record (per ``lengths``) or past the buffer are zero.
    """
    n = len(offsets)
    out = np.zeros((n, width), dtype=np.uint8)
    if n == 0 or width == 0:
        return out
    lens = lengths if lengths is not None else np.full(n, start + width, dtype=np.int64)
    kernels.parallel(kernels.gather, n, buf, _i8(offsets), _i8(lens), start, width, out)
    return out


def _i8(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


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
        kernels.parallel(kernels.decode_scalars, n, buf, offsets, lengths,
                         np.array([f.offset for f in fields], np.int64), np.array([f.size for f in fields], np.int64),
                         np.array([d // f.size for d, f in zip(starts, fields, strict=True)], np.int64),
                         big_endian, *width_views(arena))
    return {f.name: scalar_column(f, arena[d:d + n * f.size].view(scalar_dtype(f)))
            for d, f in zip(starts, fields, strict=True)}


def is_scalar(f: Field) -> bool:
    """A field read as one integer (1, 2, 4 or 8 bytes, not an array, not dynamic)."""
    return f.kind == SCALAR


def scalar_dtype(f: Field) -> np.dtype:
    """The numpy type of a scalar field's bytes (bool fields become bool in ``scalar_column``)."""
    return np.dtype(f"{'i' if f.signed else 'u'}{f.size}")


def scalar_column(f: Field, col: np.ndarray) -> np.ndarray:
    """A scalar field's column from its raw little-endian bytes viewed at its width."""
    return col.astype(bool) if f.type in ("bool", "_Bool") else col


def element_type(f: Field) -> pa.DataType:
    """Arrow type of one element of an ARRAY field."""
    return pa.from_numpy_dtype(np.dtype(f"{'i' if f.signed else 'u'}{f.elem_size}"))


def arrow_type(f: Field) -> pa.DataType:
    """The column type of a non-scalar field (see the module docstring)."""
    if f.kind == CHARS:
        return pa.string()
    if f.kind == ARRAY:
        return pa.list_(element_type(f), f.array_len) if not f.dynamic else pa.list_(element_type(f))
    return pa.binary()


def decode_fields(fmt: EventFormat, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                  byteorder: str = "<", long_size: int = 8, scalars: dict[str, np.ndarray] | None = None,
                  damaged: dict[str, int] | None = None, cuts: dict[str, str] | None = None,
                  fixed: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Decode every field of ``fmt`` for records at ``offsets`` (payload start, i.e. common_type).

    Returns {field name: numpy array (scalars) or Arrow array (everything else)}, in format
    order. With ``scalars`` (the caller's columns of the scalar fields) only the other fields are
    decoded. ``damaged`` receives, per dynamic field, the number of records whose data reached
    past the record's end (cut there). ``cuts`` names fixed byte fields to take only as many
    bytes of as a scalar field says (kvm_emulate_insn: ``insn`` to ``len``). ``fixed`` holds
    fixed fields' bytes the caller has already copied out of the records ((n, size) uint8, zero
    past a record): those are decoded from there, and the columns keep no reference to them.
    """
    offsets = _i8(offsets)
    lengths = _i8(lengths)
    big = byteorder == ">"
    fields = fmt.common_fields + fmt.fields
    out: dict[str, Any] = dict(scalars) if scalars is not None else \
        _scalar_columns([f for f in fields if is_scalar(f)], buf, offsets, lengths, big)
    for f in fields:
        if not is_scalar(f):
            cut = (cuts or {}).get(f.name)
            out[f.name] = field_column(f, buf, offsets, lengths, big, damaged,
                                       out[cut] if cut in out and f.kind == BYTES and not f.dynamic else None,
                                       (fixed or {}).get(f.name))
    return {f.name: out[f.name] for f in fields if f.name in out}


def field_column(f: Field, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, big_endian: bool,
                 damaged: dict[str, int] | None = None, cut: np.ndarray | None = None,
                 mat: np.ndarray | None = None) -> pa.Array | pa.ChunkedArray:
    """One non-scalar field of every record (offsets, lengths: int64) as an Arrow column; a fixed byte
    field with ``cut``: the first cut[i] bytes of it. ``mat``: a fixed field's bytes already
    copied out of the records ((n, size), zero past a record), read instead of ``buf``."""
    n = len(offsets)
    field_off = f.offset
    if mat is not None:  # the records, as far as this field goes, are the rows of mat
        buf, field_off = mat.reshape(-1), 0
        offsets = np.arange(n, dtype=np.int64) * np.int64(f.size)
        lengths = np.clip(lengths - f.offset, 0, f.size)
    if not f.dynamic and not f.flexible and f.kind != CHARS and cut is None:  # the bytes, zero past the record
        # (the column keeps its bytes: a copy of the caller's, whose memory is theirs to free)
        mat = gather(buf, offsets, f.size, lengths, f.offset) if mat is None else mat.copy()
        if f.kind == BYTES:
            return var_array(pa.binary(), np.arange(n + 1, dtype=np.int32) * np.int32(f.size), mat.reshape(-1))
        values = _elements(mat.reshape(-1), f, big_endian)
        return pa.FixedSizeListArray.from_arrays(pa.array(values), f.array_len)
    add = 0
    if f.flexible:  # the rest of the record (a string: up to its first NUL)
        starts = offsets + np.int64(f.offset)
        sizes = np.clip(lengths - f.offset, 0, None)
        if f.kind == CHARS:
            kept = np.empty(n, np.int64)
            kernels.parallel(kernels.string_sizes, n, buf, starts, sizes, True, kept)
            sizes = kept
    elif not f.dynamic:  # fixed char array, or bytes with a cut: from the record, cut at its end
        starts, add = offsets, field_off
        sizes = np.empty(n, np.int64)
        cuts = np.ascontiguousarray(cut) if cut is not None else np.zeros(0, np.uint8)
        kernels.parallel(kernels.fixed_sizes, n, buf, offsets, lengths, field_off, f.size, cuts, f.kind == CHARS,
                         sizes)
    else:
        starts, sizes = np.empty(n, np.int64), np.empty(n, np.int64)
        bad = sum(kernels.parallel(kernels.dynamic_spans, n, buf, offsets, lengths, f.offset, f.rel_loc, big_endian,
                                   starts, sizes))
        if bad and damaged is not None:
            damaged[f.name] = damaged.get(f.name, 0) + bad
        if f.kind == CHARS:  # up to the first NUL
            kept = np.empty(n, np.int64)
            kernels.parallel(kernels.string_sizes, n, buf, starts, sizes, True, kept)
            sizes = kept
        elif f.kind == ARRAY:
            sizes -= sizes % f.elem_size  # whole elements only
    value_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=value_offsets[1:])
    del sizes
    data = np.empty(int(value_offsets[-1]), dtype=np.uint8)
    kernels.parallel(kernels.copy_values, n, buf, starts, add, value_offsets, data)
    del starts
    if f.kind == CHARS:
        value_offsets, data = valid_utf8(value_offsets, data)
        return var_array(pa.string(), value_offsets, data)
    if f.kind == BYTES:
        return var_array(pa.binary(), value_offsets, data)
    return var_array(pa.list_(element_type(f)), value_offsets // f.elem_size, _elements(data, f, big_endian))


def _elements(data: np.ndarray, f: Field, big_endian: bool) -> np.ndarray:
    """Array elements from their bytes in the file's byte order, as host integers."""
    dt = np.dtype(f"{'>' if big_endian else '<'}{'i' if f.signed else 'u'}{f.elem_size}")
    vals = data[:len(data) // f.elem_size * f.elem_size].view(dt)
    return vals.astype(dt.newbyteorder("="), copy=False)


def valid_utf8(value_offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The values with every invalid UTF-8 sequence replaced by U+FFFD (a copy only when needed)."""
    n = len(value_offsets) - 1
    if not n or not sum(kernels.parallel(kernels.utf8_invalid, n, data, value_offsets)):
        return value_offsets, data
    new_offsets = np.empty_like(value_offsets)
    size = kernels.utf8_replace(data, value_offsets, data[:0], new_offsets, False)
    out = np.empty(size, dtype=np.uint8)
    kernels.utf8_replace(data, value_offsets, out, new_offsets, True)
    return new_offsets, out


def var_array(typ: pa.DataType, value_offsets: np.ndarray, values: np.ndarray) -> pa.Array | pa.ChunkedArray:
    """A string / binary / list array from int64 offsets into one values buffer (not copied), in
    chunks whose offsets fit Arrow's 32 bits."""
    n = len(value_offsets) - 1
    if value_offsets[-1] <= ARROW_MAX_OFFSET:
        return _onevar_array(typ, value_offsets.astype(np.int32), values, n)
    cuts = [0]
    while cuts[-1] < n:
        limit = value_offsets[cuts[-1]] + ARROW_MAX_OFFSET
        cuts.append(max(cuts[-1] + 1, int(np.searchsorted(value_offsets, limit, side="right")) - 1))
    parts = []
    for a, z in zip(cuts[:-1], cuts[1:], strict=True):
        base = int(value_offsets[a])
        parts.append(_onevar_array(typ, (value_offsets[a:z + 1] - base).astype(np.int32),
                                    values[base:int(value_offsets[z])], z - a))
    return pa.chunked_array(parts, typ)


def _onevar_array(typ: pa.DataType, offsets32: np.ndarray, values: np.ndarray, n: int) -> pa.Array:
    if pa.types.is_list(typ):
        return pa.ListArray.from_arrays(pa.array(offsets32), pa.array(values))
    return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(offsets32), pa.py_buffer(values)])


def factorize_rows(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Codes of distinct value tuples across equal-length integer arrays, and each code's first row.

    Linear time (a direct table for small value ranges, else a hash per row) when the values
    pack into 64 bits, as the few fields a print fmt argument reads usually do; a sort otherwise.
    """
    n = len(arrays[0])
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    widths = [a.dtype.itemsize * 8 for a in arrays]
    if sum(widths) > 64 or any(a.dtype.kind not in "iub" for a in arrays):
        stacked = np.stack([a.astype(np.int64) for a in arrays], axis=1)
        _, first, inv = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
        return inv.reshape(-1).astype(np.int32), first
    ranges = [(int(a.min()), int(a.max())) for a in arrays]
    space = 1
    for lo, hi in ranges:
        space *= hi - lo + 1
    if space <= DENSE_KEYS:  # small value ranges: the key is the tuple's index in their product
        key = np.zeros(n, dtype=np.int64)
        for a, (lo, hi) in zip(arrays, ranges, strict=True):
            key *= hi - lo + 1
            # unsigned: subtract in the array's type (u64 values past 2**63); signed: in int64
            key += (a - a.dtype.type(lo)).astype(np.int64) if a.dtype.kind == "u" else a.astype(np.int64) - lo
        return _codes(lambda codes, first: kernels.factorize_dense(key, np.full(space, -1, np.int32), codes, first),
                      n, space)
    key = np.zeros(n, dtype=np.uint64)
    shift = 0
    for a, w in zip(arrays, widths, strict=True):
        key |= (a.astype(np.uint64) & np.uint64((1 << w) - 1)) << np.uint64(shift)
        shift += w
    return _codes(lambda codes, first: kernels.factorize_hash(key.view(np.int64), codes, first), n, n)


FIRST_CODES = 4096  # codes first tried for (print fmt inputs, task names: usually few)


def _codes(run: Any, n: int, most: int) -> tuple[np.ndarray, np.ndarray]:
    """Run a factorize kernel with room for FIRST_CODES codes, again with room for ``most`` if
    that was too little."""
    codes = np.empty(n, dtype=np.int32)
    for cap in (min(FIRST_CODES, most), most):
        first = np.empty(cap, dtype=np.int64)
        nc = run(codes, first)
        if nc >= 0:
            return codes, first[:nc]
    raise AssertionError("factorize kernel: more codes than rows")


DENSE_KEYS = 1 << 20  # distinct-key space small enough for a direct table
