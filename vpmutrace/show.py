"""Events as text lines on demand (``vpmutrace show``), as ``trace-cmd report`` prints them.

Ingest stores fields, never text; a line is computed here for the rows asked for only:
``[source: ]comm-pid [cpu] seconds.micros: event: body``, the body being the event's print fmt
evaluated on the row's fields (the trace's own format for binary traces, the reference
kernel's for text traces) as trace-cmd 3.2 prints it without plugins (``trace-cmd report -N``;
formats/printeval.py), one trailing newline removed as trace-cmd removes it. Rows of text traces
carry the names a print fmt printed (exit reasons, ...) but not always the raw field behind
them: those arguments are given their printed text.

Times are printed as the trace's ``time_unit`` says (clocks.py, timebase.py): ns as trace-cmd
prints a clock in ns (`` %5llu.%06llu:``, rounded to the microsecond: print_event_time() of
libtraceevent 1.8.2 with trace-cmd 3.2's " %6.1000d:"); ticks that could not be converted
(x86-tsc without TSC2NSEC and no frequency, an unknown counter, the counter clock) as the bare
integer trace-cmd prints for a clock that is not in ns (``"%12llu:"`` glued to the CPU column:
trace-read.c time_format() when TRACECMD_FL_IN_USECS is clear). A file converted with a frequency
(--tsc-khz, a host snapshot, an estimate) is in ns and printed as seconds, as
``trace-cmd report --ts2secs HZ`` prints it.

Nothing is printed silently otherwise: an event whose print fmt does not parse is printed as
trace-cmd prints it, ``[FAILED TO PARSE]`` and its fields; a row its print fmt cannot be printed
for (a field the row lacks) as ``field=value`` pairs; each such row is counted in the trace's
``stats`` under stats.TEXT_CATEGORIES, with its event and an example, and ``vpmutrace show``
reports them at the end. (trace-cmd's plugins print a few events, sched_switch among them, in
their own layout instead; ``trace-cmd report -N`` does not load them.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vpmutrace.clocks import NS
from vpmutrace.errors import InputError, UnsupportedFormat
from vpmutrace.formats import bprint
from vpmutrace.formats.event_format import EventFormat, parse_format
from vpmutrace.formats.kernel_maps import FunctionMap, parse_printk
from vpmutrace.formats.known import reference_formats
from vpmutrace.formats.printeval import Env, MissingValue
from vpmutrace.formats.printfmt import PrintFmt
from vpmutrace.schema import ALL_TABLES, COMMON, EVENT_TABLES, column_names, is_event_table
from vpmutrace.stats import CATEGORIES, TEXT_CATEGORIES, TEXT_NO_PRINT_FMT, TEXT_ROW_FAILED
from vpmutrace.tracedata import TraceData
from vpmutrace.typed_fields import CUTS, FIELD_MAP, NAMED_ARGS, named_args

if TYPE_CHECKING:
    import polars as pl

COMMON_NAMES = {c.name for c in COMMON}
HOST_MSR_OPS = {"read": "msr:read_msr", "write": "msr:write_msr", "rdpmc": "msr:rdpmc"}
# columns of named tables that say which event a row is (tables that hold several events)
EVENT_COLUMN = {"host_msr": "op", "irq_vectors": "event", "samples": "event", "unparsed": "event"}


def event_tables(td: TraceData) -> list[str]:
    """The tables of ``td`` that hold events, named tables first."""
    named = [s.name for s in EVENT_TABLES if td.has(s.name)]
    return named + sorted(n for n in td.tables if is_event_table(n) and td.has(n))


def _row_event(table: str, value: Any) -> str:
    """system:name of a row of a table that holds several events, from its EVENT_COLUMN value."""
    if table == "host_msr":
        return HOST_MSR_OPS.get(value, f"msr:{value}")
    if table == "irq_vectors":
        return f"irq_vectors:{value}"
    return str(value)


def _select(td: TraceData, event: str | None) -> list[tuple[str, np.ndarray | None]]:
    """(table, row indices or None for all) of the rows of ``event`` (system:name, name or table)."""
    tables = event_tables(td)
    if event is None:
        return [(t, None) for t in tables]
    if event in tables:
        return [(event, None)]
    owners = td.event_tables()
    full = [e for e in owners if e == event or e.partition(":")[2] == event]
    if not full:
        raise InputError("--event", f"no event {event!r} in the trace; events: {', '.join(sorted(owners))}")
    out = []
    for e in full:
        t = owners[e]
        if t not in td.tables:
            continue
        col = EVENT_COLUMN.get(t)
        if col is None:
            out.append((t, None))
            continue
        name = e.partition(":")[2]
        wanted = [v for v, ev in HOST_MSR_OPS.items() if ev == e] if t == "host_msr" else [e, name]
        column = td.tables[t].column(col).cast(pa.string())
        out.append((t, np.flatnonzero(pc.is_in(column, pa.array(wanted, pa.string())).to_numpy(zero_copy_only=False))))
    return out


def lines(td: TraceData, event: str | None = None, limit: int | None = None,
          as_trace_cmd: Callable[[EventFormat], PrintFmt | None] | None = None, cpu: int | None = None
          ) -> Iterator[str]:
    """Text lines of the rows of ``event`` (all events when None; of CPU ``cpu`` only when given), in
    time order, at most ``limit``.
    ``as_trace_cmd``: an event's print fmt as libtraceevent parses it, printed with its arithmetic
    (printeval.Env.trace_cmd), to compare with trace-cmd's bugs; such rows are not counted in the stats."""
    picks = []
    for t, rows in _select(td, event):
        table = td.tables[t]
        idx = rows if rows is not None else np.arange(table.num_rows, dtype=np.int64)
        if cpu is not None:
            on = pc.fill_null(pc.equal(table.column("cpu"), pa.scalar(cpu, pa.int32())), False)
            idx = idx[on.to_numpy(zero_copy_only=False)[idx]]
        if limit is not None:
            idx = idx[:limit]  # tables are in time order: the first ``limit`` of each can win
        ts = table.column("ts_ns").to_numpy()[idx] if len(idx) else np.zeros(0, np.int64)
        seq = table.column("seq").to_numpy()[idx] if len(idx) else np.zeros(0, np.int64)
        picks.append((t, idx, ts, seq))
    if not picks:
        return
    which = np.concatenate([np.full(len(p[1]), k, np.int32) for k, p in enumerate(picks)])
    idx = np.concatenate([p[1] for p in picks])
    order = np.lexsort((np.concatenate([p[3] for p in picks]), np.concatenate([p[2] for p in picks])))
    if limit is not None:
        order = order[:limit]
    rows: dict[int, Iterator[dict[str, Any]]] = {}
    for k in np.unique(which[order]).tolist():
        mine = order[which[order] == k]  # this table's rows, in the merged order
        rows[k] = _rows(td.tables[picks[k][0]], idx[mine])
    renderers = {k: _Renderer(td, picks[k][0], as_trace_cmd) for k in rows}
    for k in which[order].tolist():
        yield renderers[k].line(next(rows[k]))


def _rows(table: pa.Table, idx: np.ndarray, chunk: int = 4096) -> Iterator[dict[str, Any]]:
    """The rows ``idx`` of ``table`` as dicts, converted a chunk at a time as they are asked for."""
    for at in range(0, len(idx), chunk):
        yield from table.take(pa.array(idx[at:at + chunk])).to_pylist()


def bodies(td: TraceData, events: Iterable[str]) -> pl.DataFrame:
    """(ts_ns, source, pid, text) of every row of ``events`` (system:name or name; those the trace
    does not have give no rows), in time order; ``text`` is the event's body as ``lines`` prints it,
    computed once per distinct combination of the row's fields, not per row."""
    import polars as pl

    owners = td.event_tables()
    parts = []
    for event in events:
        if not any(e == event or e.partition(":")[2] == event for e in owners):
            continue
        for t, rows in _select(td, event):
            table = td.tables[t] if rows is None else td.tables[t].take(pa.array(rows))
            if table.num_rows:
                parts.append(_bodies_of(td, t, pl.from_arrow(table)))  # type: ignore[arg-type]
    if not parts:
        return pl.DataFrame(schema={"ts_ns": pl.Int64, "source": pl.String, "pid": pl.Int32, "text": pl.String})
    return pl.concat(parts).sort("ts_ns", maintain_order=True)


def _bodies_of(td: TraceData, table: str, df: pl.DataFrame) -> pl.DataFrame:
    import polars as pl

    renderer = _Renderer(td, table)
    fields = [c for c in df.columns if c not in COMMON_NAMES or c == EVENT_COLUMN.get(table)]
    groups = df.with_row_index("_row").group_by(fields, maintain_order=True).agg(pl.col("_row"))
    codes = np.empty(df.height, np.int64)
    texts = []
    for g, (first, row_ids) in enumerate(zip(groups.drop("_row").iter_rows(named=True), groups["_row"].to_list(),
                                             strict=True)):
        texts.append(renderer.body(renderer._event(first), first))
        codes[row_ids] = g
    return df.select("ts_ns", pl.col("source").cast(pl.String), pl.col("pid").cast(pl.Int32),
                     pl.Series("text", texts, pl.String).gather(codes))


def _micros(ts_ns: int) -> str:
    """A space and seconds.microseconds of a time in ns, rounded as trace-cmd prints them."""
    us = (ts_ns + 500) // 1000
    return f" {us // 1_000_000:5d}.{us % 1_000_000:06d}"


def _ticks(ts: int) -> str:
    """A time that is not in ns, as trace-cmd prints it (%12llu, no space before it)."""
    return f"{ts:12d}"


def time_text(unit: str) -> Callable[[int], str]:
    """How a timestamp of ``unit`` (a trace's time_unit) is printed after the CPU column."""
    return _micros if unit == NS else _ticks


class _Renderer:
    """Lines of one table's rows."""

    def __init__(self, td: TraceData, table: str,
                 as_trace_cmd: Callable[[EventFormat], PrintFmt | None] | None = None) -> None:
        self.td = td
        self.table = table
        self.owners = {t: e for e, t in td.event_tables().items()}
        self.env = kernel_env(td)
        self.time = time_text(td.meta.get("time_unit") or NS)
        self.printer: Callable[[EventFormat], PrintFmt | None] = lambda f: f.printer
        if as_trace_cmd is not None:
            self.env = dataclasses.replace(self.env, trace_cmd=True)
            self.printer = as_trace_cmd
        self.counting = as_trace_cmd is None
        self._envs: dict[str, Env] = {}
        self._needed: dict[int, set[str]] = {}  # fields of the named arguments, per format (by id: formats live on)

    def line(self, row: dict[str, Any]) -> str:
        full = self._event(row)
        name = full.partition(":")[2] or full
        src = row.get("source")
        comm = row.get("comm") or "<...>"
        pid = row.get("pid") if row.get("pid") is not None else -1
        cpu = f"{row['cpu']:03d}" if row.get("cpu") is not None else "???"
        return (f"{src + ': ' if src and src != 'host' else ''}{comm:>16}-{pid:<5} [{cpu}]{self.time(row['ts_ns'])}: "
                f"{name + ':':<21} {self.body(full, row)}")

    def _event(self, row: dict[str, Any]) -> str:
        col = EVENT_COLUMN.get(self.table)
        if col is not None:
            return _row_event(self.table, row[col])
        return self.owners.get(self.table, self.table)

    def body(self, full: str, row: dict[str, Any]) -> str:
        if self.table == "unparsed":
            return row.get("text") if row.get("text") is not None else (row.get("raw") or b"").hex(" ")
        if self.table == "samples":
            ip = f"{row['ip']:x}" if row.get("ip") is not None else "?"
            return f"{row.get('period')} {ip} {row.get('sym') or ''} ({row.get('dso') or ''})"
        if "text" in row and not any(k not in COMMON_NAMES | {"text"} for k in row):
            return row["text"]  # an event of a text trace with no grammar: its text as printed
        fmt = _format(self.td, full)
        rec, given = self._fields(fmt, row)
        printer = self.printer(fmt) if fmt is not None else None
        if full == bprint.EVENT and fmt is not None and printer is not None and bprint.has_fields(rec):
            env = self._env(fmt)  # (the record's own format string and arguments)
            printer = bprint.printfmt(env.printk, rec["fmt"], rec["ip"], rec["buf"],
                                      next(f.offset for f in fmt.fields if f.name == "buf"), env.long_size, env.order)
        if fmt is None or printer is None:
            why = "no format" if fmt is None else f"print fmt does not parse: {fmt.fallback_reason}"
            text = "[FAILED TO PARSE]" + "".join(f" {k}={_raw_field(fmt, k, v)}" for k, v in rec.items())
            self._count(TEXT_NO_PRINT_FMT, full, row, why)
            return text
        try:
            text = printer.render(rec, given=given, env=self._env(fmt))
        except (UnsupportedFormat, IndexError, KeyError, TypeError, ValueError, OverflowError) as e:
            why = str(e) if isinstance(e, MissingValue) else f"{type(e).__name__}: {e}"
            self._count(TEXT_ROW_FAILED, full, row, why)
            return " ".join(f"{k}={_raw(v)}" for k, v in rec.items())
        return text[:-1] if text.endswith("\n") else text  # (trace-cmd report drops one trailing newline)

    def _env(self, fmt: EventFormat) -> Env:
        env = self._envs.get(fmt.full_name)
        if env is None:
            env = self._envs[fmt.full_name] = self.env.with_fields({f.name: f for f in fmt.common_fields + fmt.fields})
        return env

    def _count(self, category: str, full: str, row: dict[str, Any], why: str) -> None:
        if not self.counting:
            return
        where = f"ts {row.get('ts_ns')} cpu {row.get('cpu')}"
        inputs = self.td.meta.get("inputs") or []
        src = str(inputs[0].get("path")) if len(inputs) == 1 else str(row.get("source") or "")
        self.td.stats.add(src, category, full, 1, f"{where}: {why}")

    def _fields(self, fmt: EventFormat | None, row: dict[str, Any]) -> tuple[dict[str, Any], dict[int, str]]:
        """The row's format fields, and the text of arguments it holds printed but not as raw fields."""
        rec: dict[str, Any] = {}
        if self.table not in ALL_TABLES:  # an event's own table
            names = column_names(fmt) if fmt is not None else {k: k for k in row if k not in COMMON_NAMES}
            for field, col in names.items():
                if col in row and not field.startswith("common_"):
                    rec[field] = _value(row[col])
            return rec, {}
        present = {f.name for f in fmt.fields} if fmt is not None else set()
        for col, candidates in FIELD_MAP.get(self.table, {}).items():
            field = next((c for c in candidates if c in present), candidates[0])
            if col in row and row[col] is not None:
                rec[field] = _value(row[col])
        for field, count in CUTS.get(self.table, {}).items():
            if row.get(field) is not None:  # (bytes cut to a count field: the count is their length)
                rec[field] = row[field]
                rec[count] = len(row[field])
        if self.table == "kvm_inj_exception" and rec.get("error_code") is None:
            rec["error_code"] = 0  # (not delivered: not printed)
        if self.table == "kvm_userspace_exit" and rec.get("reason") is None:
            rec["reason"] = 0  # (KVM_RUN failed: not printed)
        given: dict[int, str] = {}
        ks = named_args(self.table, fmt)
        if ks and fmt is not None and fmt.printer is not None:
            needed = self._needed.get(id(fmt))
            if needed is None:
                needed = self._needed[id(fmt)] = set().union(*(fmt.printer.fields_used(fmt.printer.args[k])
                                                                for k in ks))
            if any(rec.get(f) is None for f in needed):
                given = {k: "" for k in ks}
                given[ks[0]] = self._named_text(row)
        return rec, given

    def _named_text(self, row: dict[str, Any]) -> str:
        col = NAMED_ARGS[self.table][0]
        text = str(row.get(col) or "")
        if self.table == "kvm_exit" and row.get("reason_flags"):
            text += " " + row["reason_flags"]
        return text


def text_fallbacks(td: TraceData) -> list[dict[str, Any]]:
    """The rows printed so far without their print fmt, per event (stats.TEXT_CATEGORIES)."""
    return [{"category": e.category, "meaning": CATEGORIES[e.category].meaning, "event": e.name, "count": e.count,
             "file": e.source_file, "examples": list(e.examples)}
            for e in td.stats.entries() if e.category in TEXT_CATEGORIES]


def kernel_env(td: TraceData) -> Env:
    """The trace's kallsyms and printk strings (binary inputs), read once per trace."""
    env = td.__dict__.get("_text_env")
    if env is None:
        text = getattr(td.symbols, "text", None)
        inputs = td.meta.get("inputs") or []
        long_size = next((i["long_size"] for i in inputs if i.get("long_size")), 8)
        env = Env(functions=FunctionMap(text) if isinstance(text, str) else None,
                  lookup=td.symbols if not isinstance(text, str) else None,
                  printk=parse_printk(td.printk) if td.printk else {}, long_size=long_size)
        td.__dict__["_text_env"] = env
    return env


def _raw_field(fmt: EventFormat | None, name: str, v: Any) -> str:
    """A field as libtraceevent prints it after [FAILED TO PARSE] (print_field_raw)."""
    f = fmt.field(name) if fmt is not None else None
    if f is None:
        return _raw(v)
    if f.dynamic or f.array_len is not None:
        data = v.encode("utf-8", "surrogateescape") if isinstance(v, str) else bytes(v or b"") \
            if not isinstance(v, list) else b"".join(
                (int(x) & ((1 << (8 * f.elem_size)) - 1)).to_bytes(f.elem_size, "little") for x in v)
        is_string = any(w in f.type for w in ("char", "u8", "s8"))
        head = data.split(b"\0", 1)[0]
        if is_string and all(32 <= b < 127 or b in b" \t\n\v\f\r" for b in head):
            return head.decode("latin-1")
        return "ARRAY[" + ", ".join(f"{b:02x}" for b in data) + "]"
    iv = int(v) if v is not None else 0
    if f.is_pointer:
        return f"0x{iv & ((1 << 64) - 1):x}"
    is_long = "long" in f.type
    if f.signed:
        if f.size == 4:
            return f"0x{iv & 0xFFFFFFFF:x}" if is_long else str(iv)
        if f.size == 2:
            return f"{iv:2d}"
        return str(iv)
    return f"0x{iv:x}" if is_long else str(iv)


def _value(v: Any) -> Any:
    return int(v) if isinstance(v, bool) else v


def _raw(v: Any) -> str:
    if isinstance(v, bytes):
        return "ARRAY[" + ", ".join(f"{b:02x}" for b in v) + "]"
    return str(v)


def _format(td: TraceData, full: str) -> EventFormat | None:
    """An event's format: the trace's own (binary traces), else the reference kernel's."""
    text = td.meta.get("event_formats", {}).get(full)
    if text is not None:
        return _parsed(text, full.partition(":")[0])
    return reference_formats().get(full)


@cache
def _parsed(text: str, system: str) -> EventFormat | None:
    try:
        return parse_format(text, system)
    except ValueError:
        return None
