"""Events as text lines on demand (``vpmutrace show``), like ``trace-cmd report`` prints them.

Ingest stores fields, never text; a line is computed here for the rows asked for only:
``[source: ]comm-pid [cpu] seconds.micros: event: body``, the body being the event's print fmt
evaluated on the row's fields (the trace's own format for binary traces, the reference
kernel's for text traces), as the kernel prints it. Rows of text traces carry the names a
print fmt printed (exit reasons, ...) but not always the raw field behind them: those
arguments are given their printed text. An event whose print fmt cannot be evaluated is shown
as ``field=value`` pairs, as ``trace-cmd report -R`` does. (trace-cmd's plugins print a few
events, sched_switch among them, in their own layout instead.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vpmutrace.errors import BadFormat, InputError, UnsupportedFormat
from vpmutrace.formats.event_format import EventFormat, parse_format
from vpmutrace.formats.known import reference_formats
from vpmutrace.schema import ALL_TABLES, COMMON, EVENT_TABLES, column_names, is_event_table
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


def lines(td: TraceData, event: str | None = None, limit: int | None = None) -> Iterator[str]:
    """Text lines of the rows of ``event`` (all events when None), in time order, at most ``limit``."""
    picks = []
    for t, rows in _select(td, event):
        table = td.tables[t]
        idx = rows if rows is not None else np.arange(table.num_rows, dtype=np.int64)
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
        rows[k] = iter(td.tables[picks[k][0]].take(pa.array(idx[mine])).to_pylist())
    renderers = {k: _Renderer(td, picks[k][0]) for k in rows}
    for k in which[order].tolist():
        yield renderers[k].line(next(rows[k]))


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
    """seconds.microseconds, rounded as trace-cmd prints them."""
    us = (ts_ns + 500) // 1000
    return f"{us // 1_000_000:5d}.{us % 1_000_000:06d}"


class _Renderer:
    """Lines of one table's rows."""

    def __init__(self, td: TraceData, table: str) -> None:
        self.td = td
        self.table = table
        self.owners = {t: e for e, t in td.event_tables().items()}
        self.symbols: Callable[[int], str | None] | None = td.symbols

    def line(self, row: dict[str, Any]) -> str:
        full = self._event(row)
        name = full.partition(":")[2] or full
        src = row.get("source")
        comm = row.get("comm") or "<...>"
        pid = row.get("pid") if row.get("pid") is not None else -1
        cpu = f"{row['cpu']:03d}" if row.get("cpu") is not None else "???"
        return (f"{src + ': ' if src and src != 'host' else ''}{comm:>16}-{pid:<5} [{cpu}] {_micros(row['ts_ns'])}: "
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
        if fmt is not None and fmt.printer is not None:
            try:
                return fmt.printer.render(rec, self.symbols, given)
            except (UnsupportedFormat, IndexError, KeyError, TypeError, ValueError, OverflowError):
                pass
        return " ".join(f"{k}={_raw(v)}" for k, v in rec.items())

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
            needed = set().union(*(fmt.printer.fields_used(fmt.printer.args[k]) for k in ks))
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
    except BadFormat:
        return None
