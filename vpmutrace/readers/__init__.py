"""Readers: every input format -> TraceData. :func:`load_trace` picks the reader by content."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vpmutrace import timebase
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
        raise InputError(str(path), "is a directory but not a vpmutrace dataset (no _trace_meta.json)")
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


@dataclass(frozen=True)
class LoadOptions:
    """How to read inputs: the TSC frequency for clocks in ticks (``--tsc-khz``), the host snapshot
    (``--snapshot``; one found next to the first input is used when none is given: see
    ``snapshot_for``), and the clock of inputs that record theirs wrongly (``--clock``)."""

    tsc_khz: float | None = None
    snapshot: Path | None = None
    find_snapshot: bool = True  # look for a snapshot next to the first input when none is given
    clock: str | None = None  # the inputs' clock, when a file records it wrongly (``--clock``)


def load_trace(paths: list[str | Path], options: LoadOptions | None = None) -> TraceData:
    """Read one or more inputs (merged on one time line) or one saved dataset. The host snapshot gives
    the TSC frequency for clocks in ticks and the kallsyms that resolves perf samples' kernel IPs when
    the recording has none of its own."""
    opts = options or LoadOptions()
    if not paths:
        raise InputError("-", "no trace given")
    kinds = [(Path(p), sniff(Path(p))) for p in paths]
    if any(k == "dataset" for _, k in kinds):
        if len(kinds) > 1:
            raise InputError(str(kinds[0][0]), "a dataset cannot be merged with other inputs; give it alone")
        return load_dataset(kinds[0][0])
    if opts.tsc_khz is not None and not opts.tsc_khz > 0:
        raise InputError("--tsc-khz", f"{opts.tsc_khz} is not a frequency in kHz")
    host, host_path = host_snapshot(opts.snapshot, kinds[0][0]) if opts.snapshot or opts.find_snapshot \
        else (None, None)
    builder = TraceBuilder()
    dats = {}
    if any(k == "trace.dat" for _, k in kinds):
        from vpmutrace.readers.trace_dat import open_trace_dat

        dats = {p: open_trace_dat(p) for p, k in kinds if k == "trace.dat"}
    roles = host_guest_roles({p: d for p, (d, _) in dats.items()})
    bases = []
    for p, kind in kinds:
        mark = builder.mark()
        if kind == "perf.data":
            from vpmutrace.readers.perf_data import read_perf_data

            read_perf_data(perf_data_dir(p) if p.is_dir() else p, builder, snapshot=host_path)
        elif kind == "trace.dat":
            from vpmutrace.readers.trace_dat import emit_trace_dat

            source, shift, how = roles.get(p, ("host", None, None))
            emit_trace_dat(*dats.pop(p), builder, source, shift)
            if how:
                builder.meta["inputs"][-1]["time_shift"] = how
        else:
            from vpmutrace.readers.text import read_text

            read_text(p, builder)
        bases.append(timebase.settle(builder, mark, opts.tsc_khz, host, opts.clock))
    builder.meta["time_unit"] = timebase.merged_unit(bases, [str(p) for p, _ in kinds])
    check_time_lines(builder, roles)
    td = builder.finish()
    if roles:
        td.meta["host_guest"] = {str(p): r[0] for p, r in roles.items()}
    if host is not None:
        td.meta["host"] = host
        td.meta["host_snapshot"] = str(host_path)
    return td


def snapshot_for(trace: Path) -> Path | None:
    """A host snapshot given alongside a trace: ``<trace>.host.json``, ``<name>.host.json`` (the trace's
    name up to its first dot) or ``host.json`` in its directory (the layout ``vpmutrace record`` writes;
    for a ``perf record --kcore`` directory, next to the directory)."""
    if trace.name == "data" and (trace.parent / "kcore_dir").is_dir():
        trace = trace.parent
    for cand in (trace.with_name(trace.name + ".host.json"), trace.with_name(trace.name.split(".")[0] + ".host.json"),
                 trace.parent / "host.json"):
        if cand.is_file():
            return cand
    return None


def host_snapshot(given: Path | None, first_input: Path) -> tuple[dict | None, Path | None]:
    """The host snapshot: ``given``, else one next to the first input (``snapshot_for``), else none."""
    path = given if given is not None else snapshot_for(first_input)
    if path is None:
        return None, None
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise InputError(str(path), f"cannot read the host snapshot: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise InputError(str(path), f"not a host snapshot (invalid JSON: {e.msg})", f"line {e.lineno}") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "not a host snapshot (expected a JSON object)")
    return data, path


def check_time_lines(b: TraceBuilder, roles: dict) -> None:
    """Inputs merged on one time line must share a clock base and a machine; count it when they do not."""
    from vpmutrace import clocks

    inputs = b.meta["inputs"]
    clock_names = {i.get("clock") for i in inputs}
    b.meta["clock"] = clock_names.pop() if len(clock_names) == 1 else "mixed"
    if len(inputs) < 2:
        return
    guests = {str(p) for p in roles}
    first = inputs[0]
    for other in inputs[1:]:
        if other["path"] in guests:
            continue  # moved onto its host's clock by its TIME_SHIFT option
        a, c = first.get("clock"), other.get("clock")
        if a and c and not clocks.same_time_line(a, c):
            b.stats.add(other["path"], "clock_mismatch", "", 1,
                        f"clock {c} is not the time line of {first['path']} (clock {a}): merged as recorded, "
                        "times across the two are not comparable")
        ha, hc = _host_of(first), _host_of(other)
        if ha and hc and ha != hc:
            b.stats.add(other["path"], "clock_mismatch", "", 1,
                        f"recorded on {hc}, {first['path']} on {ha}: clocks of two machines are not one time line")


def _host_of(inp: dict) -> str | None:
    f = inp.get("features") or {}
    if f.get("hostname"):
        return str(f["hostname"])
    uname = inp.get("uname") or ""
    parts = uname.split()
    return parts[1] if len(parts) > 1 else None


def host_guest_roles(dats: dict) -> dict:
    """{path: (source name, TimeShift, how)} for trace.dat files with a TimeShift option (guests).

    A guest file's timestamps are moved onto its host's clock with its TIME_SHIFT samples, as
    ``trace-cmd report`` does (trace-input.c: the option enables the host sync while the file is
    opened, whether or not the host file is read too; only --raw-ts turns it off). When the file
    whose TRACEID the option names is an input too, the guest's rows are named after that host's
    GUEST option for the guest's trace id, else (an empty name, as trace-cmd writes when the guest
    has none) after the guest file; a guest read alone keeps the name "host".
    """
    if not dats:
        return {}
    from vpmutrace.readers.trace_dat import TimeShift

    by_id = {d.options.get("trace_id"): p for p, d in dats.items() if d.options.get("trace_id") is not None}
    roles: dict = {}
    for p, d in dats.items():
        ts = d.options.get("time_shift")
        if not ts or not any(c["times"] for c in ts["cpus"]):
            continue
        peer = f"{ts['peer_trace_id']:#x}"
        host_path = by_id.get(ts["peer_trace_id"])
        if host_path is None or host_path == p:
            roles[p] = ("host", TimeShift(ts["flags"], ts["cpus"]),
                        f"moved onto the clock of host trace {peer} with its TimeShift option, as trace-cmd report "
                        "does (that host's file is not an input)")
            continue
        host = dats[host_path]
        gid = d.options.get("trace_id")
        name = next((g["name"] for g in host.options.get("guests", []) if g["trace_id"] == gid), "") or Path(p).stem
        roles[p] = (name, TimeShift(ts["flags"], ts["cpus"]),
                    f"moved onto the clock of host trace {peer} ({host_path}) with its TimeShift option")
    return roles
