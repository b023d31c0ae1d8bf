"""Readers: every input format -> TraceData. :func:`load_trace` picks the reader by content."""

from __future__ import annotations

from pathlib import Path

from vpmutrace.errors import InputError
from vpmutrace.tracedata import TraceBuilder, TraceData, is_dataset, load_dataset

PERF_MAGIC = (b"PERFILE2", b"2ELIFREP")
TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"


def sniff(path: Path) -> str:
    """'dataset', 'perf.data', 'trace.dat' or 'text'."""
    if is_dataset(path):
        return "dataset"
    if path.is_dir():
        raise InputError(str(path), "is a directory but not a vpmutrace dataset (no trace_meta.json)")
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise InputError(str(path), "no such file") from None
    except OSError as e:
        raise InputError(str(path), f"cannot read: {e.strerror}") from None
    if head[:8] in PERF_MAGIC:
        return "perf.data"
    if head[:10] == TRACE_DAT_MAGIC:
        return "trace.dat"
    return "text"


def load_trace(paths: list[str | Path]) -> TraceData:
    """Read one or more inputs (merged on one time line) or one saved dataset."""
    if not paths:
        raise InputError("-", "no trace given")
    kinds = [(Path(p), sniff(Path(p))) for p in paths]
    if any(k == "dataset" for _, k in kinds):
        if len(kinds) > 1:
            raise InputError(str(kinds[0][0]), "a dataset cannot be merged with other inputs; give it alone")
        return load_dataset(kinds[0][0])
    builder = TraceBuilder()
    for p, kind in kinds:
        if kind == "perf.data":
            from vpmutrace.readers.perf_data import read_perf_data

            read_perf_data(p, builder)
        elif kind == "trace.dat":
            from vpmutrace.readers.trace_dat import read_trace_dat

            read_trace_dat(p, builder)
        else:
            from vpmutrace.readers.text import read_text

            read_text(p, builder)
    return builder.finish()
