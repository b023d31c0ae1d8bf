"""One buffer for the columns of every event of a trace, laid out for the compiled fills.

The fills (``kernels.fill_sample_columns``, ``kernels.fill_run_columns``) write each
record's columns straight to its row of its event's columns. Each event (group) declares its
columns as name -> (source, byte position, dtype): sources the fill computes itself (time,
sequence number, ...; ``computed``, in the order the kernel takes them) and sources copied from
the record. A copied column of an integer dtype takes its bytes as one integer of that width;
one of a ``V<size>`` dtype (a fixed char or byte array, a fixed array) takes them as they are,
zero past the record, and is given back as an (n, size) uint8 matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vpmutrace.formats.decode import width_views
from vpmutrace.readers.binio import scratch

Layout = Mapping[str, tuple[int, int, np.dtype]]  # column -> (source, byte position, dtype)
ALIGN = 64  # every column starts on a cache line


def byte_columns_dtype(size: int) -> np.dtype:
    """The dtype that declares a column of ``size`` bytes copied as they are."""
    return np.dtype(f"V{size}")


@dataclass
class Arena:
    """Every group's columns as views of one arena, and the layout tables the fills take: per
    computed source, each group's element index of it (-1: absent); col_start (group g's copied
    columns are col_start[g]..col_start[g + 1]); per copied column its source, byte position in
    the record, size (bytes; negative: copied as they are) and element index (at the column's
    width; the byte index for those copied as they are); the arena at four widths."""

    views: dict[int, dict[str, np.ndarray]]
    special: tuple[np.ndarray, ...]
    col_start: np.ndarray
    col_src: np.ndarray
    col_pos: np.ndarray
    col_size: np.ndarray
    col_elem: np.ndarray
    widths: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def layout(layouts: Mapping[int, Layout], counts: np.ndarray, computed: Sequence[int]) -> Arena:
    """Place every group's columns (``counts[g]`` rows; groups without a layout get none) in one
    zeroed arena of its own (binio.scratch: a column no longer needed can be handed back with
    binio.discard), each column 64-byte aligned."""
    ng = len(counts)
    special = np.full((len(computed), ng), -1, dtype=np.int64)
    col_start = np.zeros(ng + 1, dtype=np.int64)
    src_, pos, size, elem = [], [], [], []
    where: dict[int, dict[str, tuple[int, np.dtype]]] = {}
    total = 0
    for g in range(ng):
        cols = layouts.get(g)
        if cols is not None:
            where[g] = {}
            for name, (src, p, dt) in cols.items():
                where[g][name] = (total, dt)
                raw = dt.kind == "V"
                if src in computed:
                    special[computed.index(src), g] = total // dt.itemsize
                else:
                    src_.append(src)
                    pos.append(p)
                    size.append(-dt.itemsize if raw else dt.itemsize)
                    elem.append(total if raw else total // dt.itemsize)
                total += (int(counts[g]) * dt.itemsize + ALIGN - 1) & ~(ALIGN - 1)
        col_start[g + 1] = len(src_)
    arena = scratch(max(total, ALIGN), np.uint8)  # (zeroed; columns no longer needed can be discarded)
    views = {g: {name: _view(arena, d, int(counts[g]), dt) for name, (d, dt) in cols.items()}
             for g, cols in where.items()}
    return Arena(views, tuple(special), col_start, np.array(src_, np.int64), np.array(pos, np.int64),
                 np.array(size, np.int64), np.array(elem, np.int64), width_views(arena))


def _view(arena: np.ndarray, at: int, n: int, dt: np.dtype) -> np.ndarray:
    part = arena[at:at + n * dt.itemsize]
    return part.reshape(n, dt.itemsize) if dt.kind == "V" else part.view(dt)
