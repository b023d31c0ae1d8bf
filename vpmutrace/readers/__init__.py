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
    if path.is_dir() and perf_data_dir(path) is not None:
        return "perf.data"
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


def perf_data_dir(path: Path) -> Path | None:
    """The data file of a perf.data directory (``perf record --kcore`` writes perf.data/data and
    perf.data/kcore_dir/), or None."""
    data = path / "data"
    try:
        with data.open("rb") as f:
            return data if f.read(8) in PERF_MAGIC else None
    except OSError:
        return None


def load_trace(paths: list[str | Path], snapshot: str | Path | None = None) -> TraceData:
    """Read one or more inputs (merged on one time line) or one saved dataset. ``snapshot``: the host
    snapshot (host.json) of the recording host, whose kallsyms resolves perf samples' kernel IPs when
    the recording has none of its own (default: a snapshot found next to each perf.data)."""
    if not paths:
        raise InputError("-", "no trace given")
    kinds = [(Path(p), sniff(Path(p))) for p in paths]
    if any(k == "dataset" for _, k in kinds):
        if len(kinds) > 1:
            raise InputError(str(kinds[0][0]), "a dataset cannot be merged with other inputs; give it alone")
        return load_dataset(kinds[0][0])
    builder = TraceBuilder()
    dats = {}
    if sum(1 for _, k in kinds if k == "trace.dat") > 1:
        from vpmutrace.readers.trace_dat import open_trace_dat

        dats = {p: open_trace_dat(p) for p, k in kinds if k == "trace.dat"}
    roles = host_guest_roles({p: d for p, (d, _) in dats.items()})
    for p, kind in kinds:
        if kind == "perf.data":
            from vpmutrace.readers.perf_data import read_perf_data

            read_perf_data(perf_data_dir(p) if p.is_dir() else p, builder,
                           snapshot=Path(snapshot) if snapshot is not None else None)
        elif kind == "trace.dat":
            from vpmutrace.readers.trace_dat import emit_trace_dat, read_trace_dat

            if p in dats:
                source, shift = roles.get(p, ("host", None))
                emit_trace_dat(*dats[p], builder, source, shift)
            else:
                read_trace_dat(p, builder)
        else:
            from vpmutrace.readers.text import read_text

            read_text(p, builder)
    td = builder.finish()
    if snapshot is not None and "host" not in td.meta:
        from vpmutrace.readers.perf_maps import load_snapshot

        host, _ = load_snapshot(Path(snapshot))
        if host is not None:
            td.meta["host"] = host
    if roles:
        td.meta["host_guest"] = {str(p): r[0] for p, r in roles.items()}
    return td


def host_guest_roles(dats: dict) -> dict:
    """{path: (source name, TimeShift or None)} for trace.dat files recorded together.

    A file whose TIME_SHIFT names another file's TRACEID as its peer is that host's guest:
    its rows are named after the host's GUEST option for its trace id and its timestamps are
    moved onto the host clock. Files with no such relation stay "host".
    """
    if not dats:
        return {}
    from vpmutrace.readers.trace_dat import TimeShift

    by_id = {d.options.get("trace_id"): p for p, d in dats.items() if d.options.get("trace_id") is not None}
    roles: dict = {}
    for p, d in dats.items():
        ts = d.options.get("time_shift")
        if not ts or ts["peer_trace_id"] not in by_id:
            continue
        host = dats[by_id[ts["peer_trace_id"]]]
        name = next((g["name"] for g in host.options.get("guests", []) if g["trace_id"] == d.options.get("trace_id")),
                    Path(p).stem)
        roles[p] = (name, TimeShift(ts["flags"], ts["cpus"]))
    return roles
