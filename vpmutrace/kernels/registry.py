"""Every compiled kernel: its source module and the argument types it is compiled for.

Declared once here (no numba import): the ahead-of-time build exports one native function per
combination of argument types, and the loader checks each call's arguments against the same
declaration, so a kernel gets the same types whether it runs ahead-of-time compiled or
through numba's JIT. Types use numba's names: ``u1`` .. ``i8``, ``b1``; arrays ``u1[::1]``
(1-D, C order) and ``i8[:, ::1]`` (2-D); ``a|b`` lists the alternatives of one argument;
``buf`` is a uint8 array the kernel only reads; ``const `` before an array type marks another
array the kernel only reads (it may be a read-only view, e.g. of an Arrow buffer).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

BUF = "buf"  # bytes of a trace file or decompressed data (u1[::1]; read only, possibly a read-only mapping)
CONST = "const "  # prefix of an array argument the kernel only reads
RANGE = ("i8", "i8")  # lo, hi: the items a call handles (see vpmutrace.kernels.parallel)


@dataclass(frozen=True)
class Kernel:
    module: str  # vpmutrace.kernels.<module>
    returns: str
    args: tuple[str, ...]

    def variants(self) -> list[tuple[str, ...]]:
        """Argument type tuples, one per alternative combination."""
        return list(product(*(a.split("|") for a in self.args)))

    def signature(self, variant: tuple[str, ...]) -> str:
        return f"{self.returns}({', '.join('u1[::1]' if a == BUF else a.removeprefix(CONST) for a in variant)})"


def _k(module: str, returns: str, *args: str) -> Kernel:
    return Kernel(module, returns, args)


_I8, _I4, _U8, _U4, _U2 = "i8[::1]", "i4[::1]", "u8[::1]", "u4[::1]", "u2[::1]"
_ARENA = ("u1[::1]", "u2[::1]", "u4[::1]", "u8[::1]")  # one buffer seen at four widths
_ID_LOOKUP = ("i8", "i8", _U8, _I8, _I4, "u8", "i8[:, ::1]")  # id mode/pos, ids, attrs, lut, base, attr table
_OFFSETS = "u4[::1]|i8[::1]"  # sample offsets: 32 bits for files below 4 GiB

KERNELS: dict[str, Kernel] = {
    # ring-buffer pages
    "walk_pages": _k("ringbuf", "i8", BUF, _I8, "i8", "i8", "i8", "i8", "i8", "b1", "b1", _I8, _I8, _I4, _I8, _U2,
                     _I8, _I8, *RANGE),
    # perf.data records
    "walk_records": _k("perf_walk", "UniTuple(i8, 3)", BUF, "i8", "i8", "b1", _I8, _I4, _I4, _I4),
    "walk_samples": _k("perf_walk", "none", BUF, _I8, _I4, "i8", "i8", _U8, _I8, _U8, _I8, _I4, _U8, _I4, _I4,
                       _I8, _I4, _U8, _I8, _I4, "i1[::1]", *RANGE),
    "scan_records": _k("perf_walk", "UniTuple(i8, 4)", BUF, "i8", "i8", _I8, _I8, _I4, _I4),
    "split_chunks": _k("perf_walk", "none", BUF, "i8", "i8", "i8", _I8, _I8, _I8, _I8, *RANGE),
    "sample_keys": _k("perf_walk", "none", BUF, _OFFSETS, *_ID_LOOKUP, _U2, _I8, _I4, _I4, *RANGE),
    "split_keys_chunks": _k("perf_walk", "none", BUF, _I8, _I8, _I8, _I8, *_ID_LOOKUP, _OFFSETS, _I8, _I4, _I4,
                            _U2, _I8, _I4, _I4, *RANGE),
    "assign_groups": _k("perf_walk", "i8", _I4, _I4, _I8),
    "count_groups": _k("perf_walk", "none", _I8, _I4, "i8[:, ::1]", *RANGE),
    "number_rows": _k("perf_walk", "none", _I8, _I4, _I4, "i8[:, ::1]", *RANGE),
    "comm_counts": _k("perf_walk", "none", _I4, _I8, _I4, _I8, _I8, _I8, _I4, *RANGE),
    "dense_codes": _k("perf_walk", "i8", "i4[::1]|i8[::1]", "i8", _I4, _I4, _I8, _I4, _I8, _I8, _I8),
    "fill_sample_columns": _k("perf_walk", "none", BUF, "i8", _OFFSETS, _U2, _I4, _I4, _I4, _I4, _I8, _I8, _I8, _I8,
                              _I8, _I8, _I8, _I8, _I8, *_ARENA, *RANGE),
    # tracepoint fields
    "gather": _k("fields", "none", BUF, _I8, _I8, "i8", "i8", "u1[:, ::1]", *RANGE),
    "count_run_groups": _k("fields", "none", _U2, _I4, "i8[:, ::1]", _I8, "i8[:, ::1]", *RANGE),
    "fill_run_columns": _k("fields", "none", BUF, "i8", _I8, _I4, _I8, _U2, _I4, _I8, _I8, "i8[:, ::1]", _I8,
                           "i8[:, ::1]", "b1", _I8, _I8, _I8, _I8, _I8, _I8, _I8, _I8, _I8, _I8, *_ARENA, *RANGE),
    "decode_scalars": _k("fields", "none", BUF, _I8, _I8, _I8, _I8, _I8, "b1", *_ARENA, *RANGE),
    "dynamic_spans": _k("fields", "i8", BUF, _I8, _I8, "i8", "b1", "b1", _I8, _I8, *RANGE),
    "string_sizes": _k("fields", "none", BUF, _I8, _I8, "b1", _I8, *RANGE),
    "fixed_sizes": _k("fields", "none", BUF, _I8, _I8, "i8", "i8", "u1[::1]|u2[::1]|u4[::1]|u8[::1]", "b1", _I8,
                      *RANGE),
    "row_sizes": _k("fields", "none", "u1[:, ::1]", _I4, "i8", "u1[::1]|u2[::1]|u4[::1]|u8[::1]", "b1", _I4, *RANGE),
    "copy_rows": _k("fields", "none", "u1[:, ::1]", _I4, "u1[::1]", *RANGE),
    "copy_values": _k("fields", "none", BUF, _I8, "i8", _I8, "u1[::1]", *RANGE),
    "utf8_invalid": _k("fields", "i8", "u1[::1]", "i4[::1]|i8[::1]", *RANGE),
    "utf8_replace": _k("fields", "i8", "u1[::1]", _I8, "u1[::1]", _I8, "b1"),
    # text lines
    "count_lines": _k("text", "none", BUF, _I8, _I8, *RANGE),
    "line_starts": _k("text", "none", BUF, _I8, _I8, _I8, *RANGE),
    "parse_lines": _k("text", "none", BUF, _I8, "i8", "i8[:, ::1]", *RANGE),
    # distinct values
    "factorize_hash": _k("factorize", "i8", _I8, _I4, _I8),
    "factorize_dense": _k("factorize", "i8", "|".join(CONST + t for t in ("u1[::1]", "u2[::1]", "u4[::1]", "i1[::1]",
                                                                          "i2[::1]", "i4[::1]", "i8[::1]")),
                          "i8", _I4, _I4, _I8),
    "lookup_codes": _k("factorize", "none", _I4, _I4, _I4, *RANGE),
    # perf sample symbols
    "sample_items": _k("symbolize", "UniTuple(i8, 2)", CONST + _U8, CONST + _I4, CONST + _I4, "i1[::1]",
                       "i1", "i1", "i8", "i8", "i8[:, ::1]",
                       _I4, _I8, "i8"),
    "rehash_items": _k("symbolize", "none", "i8[:, ::1]", "i8[:, ::1]"),
    "item_windows": _k("symbolize", "i8", _I4, CONST + _I8, _I8, _I8, _I8),
    "kallsyms_lines": _k("symbolize", "i8", BUF, _U8, "u1[::1]", _I8, _I8, _I8, _I8),
    "gather_columns": _k("symbolize", "none", _I4, _I4, _I4, _I4, _I4, _I4, _I4, "u1[::1]", "u1[::1]", "u1[::1]"),
}

# what the compiled code is made of: a change to any of these makes a built extension stale
SOURCES = ("kernels/__init__.py", "kernels/registry.py", "kernels/hints.py", "kernels/ringbuf.py",
           "kernels/perf_walk.py", "kernels/fields.py", "kernels/factorize.py", "kernels/symbolize.py",
           "kernels/text.py",
           "kernels/text_layout.py", "formats/perf_abi.py", "formats/ringbuf_abi.py")


def export_name(name: str, variant: int) -> str:
    return f"{name}__{variant}"
