"""One fuzz target per reader: bytes in, the reader run on them, the result summarised.

A target's ``read(data, tmpdir)`` writes the bytes where the reader expects them (a file with the
right name, or a trace.dat built around damaged pages or a damaged format description, or a
dataset directory) and returns the TraceData. Acceptable outcomes are a TraceData or an
``errors.InputError``; anything else is a defect (``fuzz/harness.py`` classifies).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fuzz import corpus


def _load(path: Path) -> Any:
    from vpmutrace.readers import LoadOptions, load_trace

    return load_trace([path], LoadOptions(find_snapshot=False))


def _file(suffix: str) -> Callable[[bytes, Path], Any]:
    def read(data: bytes, tmp: Path) -> Any:
        p = tmp / f"input{suffix}"
        p.write_bytes(data)
        return _load(p)
    return read


@cache
def _content():  # -> TraceDatContent
    return corpus.trace_dat_content()


def _with_pages(data: bytes, tmp: Path) -> Any:
    """The seed trace.dat (v6) with CPU 0's ring-buffer pages replaced by ``data``."""
    import dataclasses

    from vpmutrace.writers.trace_dat import write_trace_dat

    c = _content()
    first = next(b for b in c.buffers if any(b.cpus.values()))
    cpu = next(k for k, v in first.cpus.items() if v)
    bufs = [dataclasses.replace(b, cpus={**b.cpus, cpu: data}) if b is first else b for b in c.buffers]
    return _load(write_trace_dat(tmp / "pages.dat", dataclasses.replace(c, buffers=bufs), 6, "none"))


def _with_format(data: bytes, tmp: Path) -> Any:
    """The seed trace.dat (v6) with the format description of the same event (by name) replaced by ``data``
    (the header_page when ``data`` is one)."""
    import dataclasses

    from vpmutrace.writers.trace_dat import write_trace_dat

    c = _content()
    if data.lstrip().startswith(b"field: u64 timestamp"):
        c = dataclasses.replace(c, header_page=data)
    else:
        name = format_name(data)
        fmts = {s: [data if format_name(t) == name else t for t in ts] for s, ts in c.event_formats.items()}
        c = dataclasses.replace(c, event_formats=fmts)
    return _load(write_trace_dat(tmp / "formats.dat", c, 6, "none"))


def format_name(text: bytes) -> bytes:
    first = text.split(b"\n", 1)[0]
    return first.removeprefix(b"name:").strip()


def dataset_bytes(files: dict[str, bytes]) -> bytes:
    """A dataset directory as one input: its files in a tar stream."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def dataset_files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _dataset(data: bytes, tmp: Path) -> Any:
    d = tmp / "dataset"
    d.mkdir()
    try:
        files = dataset_files(data)
    except (tarfile.TarError, EOFError):
        from vpmutrace.tracedata import META_FILE

        files = {META_FILE: data}  # (atheris: bytes that are no tar: taken as the metadata)
    for name, content in files.items():
        (d / Path(name).name).write_bytes(content)
    td = _load(d)
    td.check_pages()  # (every page of every table, as info --check: opening reads the footers only)
    return td


@cache
def dataset_seed() -> bytes:
    """The seed trace.dat ingested, as ``dataset_bytes``."""
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        td = _load(corpus.FIXTURES / corpus.TRACE_DAT)
        out = td.save(Path(t) / "ds")
        return dataset_bytes({p.name: p.read_bytes() for p in out.iterdir()})


@dataclass(frozen=True)
class Target:
    name: str
    read: Callable[[bytes, Path], Any]
    doc: str


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("perf_file", _file(".perf.data"), "perf.data, file mode (readers/perf_data.py)"),
    Target("perf_pipe", _file(".perf.data"), "perf.data, pipe mode (perf record -o -)"),
    Target("trace_dat", _file(".dat"), "trace.dat v6, v7 uncompressed, zlib and zstd (readers/trace_dat.py)"),
    Target("ringbuf", _with_pages, "ring-buffer pages of one CPU (readers/ringbuf.py, kernels/ringbuf.py)"),
    Target("event_format", _with_format, "event format descriptions and print fmts (formats/event_format.py, "
                                         "formats/printfmt.py) and the header_page"),
    Target("text", _file(".txt"), "ftrace, trace-cmd report and perf script text (readers/text.py)"),
    Target("text_zst", _file(".txt.zst"), "zstd-compressed text"),
    Target("text_gz", _file(".txt.gz"), "gzip-compressed text"),
    Target("text_xz", _file(".txt.xz"), "xz-compressed text"),
    Target("dataset", _dataset, "vpmutrace dataset directories (tracedata.load_dataset)"),
)}


# columns not recorded in the record but worked out from other parts of the file (sequence numbers in
# time order; a sample's symbol from maps, build ids and kallsyms, and its event's name from the
# header's EVENT_DESC, which a cut file may no longer have: perf's computed name then)
DERIVED = ("seq", "sym", "dso", "sym_source", "event")


def summary(td: Any) -> dict[str, Any]:
    """What a result is compared on: rows per table, a hash of each event row (without the DERIVED
    columns), the loss counted per category/name, and whether ``info --json`` is valid JSON."""
    import json

    import polars as pl

    from vpmutrace.report.text import info_dict
    from vpmutrace.stats import CATEGORIES

    rows = td.row_counts()
    hashes = {}
    for name in (set(td.event_tables().values()) | {"samples"}) - {"unparsed"}:  # (unparsed rows are counted)
        t = td.tables.get(name)
        if t is None or not t.num_rows:
            continue
        df = pl.from_arrow(t)
        df = df.select([c for c in df.columns if c not in DERIVED])
        df = df.with_columns(pl.col(pl.Categorical).cast(pl.String))
        hashes[name] = df.hash_rows(seed=0).to_numpy()
    loss: dict[str, int] = {}  # "category/name" -> count, for the categories of data loss and errors
    for e in td.stats.entries():
        if CATEGORIES[e.category].severity in ("data_loss", "error"):
            key = f"{e.category}/{e.name}"
            loss[key] = loss.get(key, 0) + max(e.count, 1)
    try:
        json.dumps(info_dict(td), allow_nan=False)
        json_ok = True
    except (ValueError, TypeError):
        json_ok = False
    # a cut said where it is: the file ends early (partial / truncated) or inside its last line
    cut = any(e.category in ("partial", "truncated") or any("ends inside this line" in x for x in e.examples)
              for e in td.stats.entries())
    return {"rows": rows, "events": sum(td.event_counts().values()), "hashes": hashes, "loss": loss,
            "json_ok": json_ok, "cut": cut}


def dumps(obj: Any) -> bytes:
    return pickle.dumps(obj)
