"""Event bodies of text traces -> tables, vectorised (polars regexes over all lines of an event).

An event with a named table is parsed with that table's grammars (text_events.PATTERNS); an
event the tools could not print (``[FAILED TO PARSE] f=v ...``) keeps its raw fields. Any
other event gets a table of its own, as for binary traces: with the reference kernel's format
of the event, its columns are that format's fields, given back by the event's print fmt
grammar (formats/text_grammar.py); an event that format does not know, whose body is
``key=value`` pairs, gets one column per key. Lines no grammar matches go to ``unparsed``,
counted.
"""

from __future__ import annotations

import fnmatch
from functools import cache
from typing import Any

import polars as pl
import pyarrow as pa

from vpmutrace.formats.event_format import EventFormat
from vpmutrace.formats.known import reference_formats
from vpmutrace.formats.text_grammar import (
    ARRAY,
    BOOL,
    FLAGS,
    HEX,
    HEXBYTES,
    INT,
    KEY_VALUE,
    PLUGIN_GRAMMARS,
    SYMBOL,
    Grammar,
    Group,
    print_fmt_grammar,
)
from vpmutrace.readers.text_events import PATTERNS, convert
from vpmutrace.schema import (
    ALL_TABLES,
    COMMON,
    Col,
    TableSpec,
    column_names,
    const_column,
    event_table_name,
    event_table_spec,
    table_for_event,
    unfit_columns,
)
from vpmutrace.tracedata import TraceBuilder
from vpmutrace.typed_fields import event_columns, typed_columns

FAILED = "[FAILED TO PARSE]"
COMMON_COLS = [c.name for c in COMMON]
KV_PAIR = r"(\w+)=(\S*)"


@cache
def _systems_by_name() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for full in reference_formats():
        system, _, name = full.partition(":")
        out.setdefault(name, []).append(system)
    return out


def system_of(name: str) -> str | None:
    """The tracepoint system of an event printed without one (ftrace / trace-cmd text): from the
    named tables, else from the reference kernel's formats when exactly one system has the name."""
    table = table_for_event(None, name)
    if table is not None:
        for ev in ALL_TABLES[table].events:
            sys_, _, pat = ev.partition(":")
            if fnmatch.fnmatchcase(name, pat):
                return sys_
    systems = _systems_by_name().get(name, [])
    return systems[0] if len(systems) == 1 else None


def arrow(v: Any) -> Any:
    return v.to_arrow() if isinstance(v, pl.Series) else v


def _common(rows: pl.DataFrame) -> dict[str, Any]:
    return {c: arrow(rows[c]) for c in COMMON_COLS}


def emit_text_event(grp: pl.DataFrame, system: str | None, name: str, src_file: str, builder: TraceBuilder) -> None:
    """All lines of one event (columns: the common ones, ``body``, ``lineno``) into their tables."""
    table = table_for_event(system, name)
    full = f"{system}:{name}" if system else name
    if table is None:
        _emit_own(grp, system, name, full, src_file, builder)
        return
    remaining = grp
    for pat in PATTERNS[table]:
        if remaining.height == 0:
            break
        hit, parts, remaining = _match(remaining, pat)
        if hit.height == 0:
            continue
        typed = convert(table, parts)
        cols = _common(hit)
        cols.update({c: arrow(typed[c]) for c in typed.columns})
        cols.update(event_columns(table, name, hit.height))
        builder.add(table, cols, hit.height, full)
    if remaining.height:
        remaining = _emit_failed(remaining, table, system, name, full, src_file, builder)
    if remaining.height:
        _emit_unparsed(remaining, full, src_file, builder)


def _match(rows: pl.DataFrame, pattern: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The rows whose body matches, their groups, and the other rows, in one regex pass (an empty
    group before the pattern marks a match)."""
    parts = rows.select(pl.col("body").str.extract_groups("(?P<matched__>)" + pattern).alias("g")).unnest("g")
    hit = parts["matched__"].is_not_null()
    return rows.filter(hit), parts.filter(hit).drop("matched__"), rows.filter(~hit)


def _reference(system: str | None, name: str) -> EventFormat | None:
    fmts = reference_formats()
    if system:
        return fmts.get(f"{system}:{name}")
    systems = _systems_by_name().get(name, [])
    return fmts[f"{systems[0]}:{name}"] if len(systems) == 1 else None


def _emit_own(grp: pl.DataFrame, system: str | None, name: str, full: str, src_file: str,
              builder: TraceBuilder) -> None:
    """An event without a named table: its own table, from its format's grammars or key=value pairs."""
    fmt = _reference(system, name)
    remaining = grp
    grammars = list(PLUGIN_GRAMMARS.get(fmt.full_name, [])) if fmt is not None else []
    g = print_fmt_grammar(fmt) if fmt is not None else None
    if g is not None:
        grammars.append(g)
    if fmt is not None and grammars:
        spec = event_table_spec(fmt)
        names = column_names(fmt)
        for grammar in grammars:
            if remaining.height == 0:
                break
            hit, parts, remaining = _match(remaining, grammar.pattern)
            if hit.height:
                _add_grammar_rows(hit, parts, grammar, fmt, spec, names, full, src_file, builder)
        if remaining.height:
            remaining = _emit_failed(remaining, None, system, name, full, src_file, builder, fmt)
    elif remaining.height and remaining["body"].str.contains(KEY_VALUE.pattern).all():
        _add_key_value_rows(remaining, system, name, full, builder)
        remaining = remaining.clear()
    elif remaining.height:  # no grammar at all: the text is all there is
        remaining = _emit_failed(remaining, None, system, name, full, src_file, builder, fmt)
        _add_text_rows(remaining, system, name, full, src_file, builder, fmt)
        remaining = remaining.clear()
    if remaining.height:
        _emit_unparsed(remaining, full, src_file, builder)


def _add_text_rows(rows: pl.DataFrame, system: str | None, name: str, full: str, src_file: str,
                   builder: TraceBuilder, fmt: EventFormat | None) -> None:
    """An event with no grammar (no format for it, or a print fmt that does not parse): its own
    table with the printed text, counted."""
    if rows.height == 0:
        return
    why = "no format for the event (text traces carry none; the reference kernel's formats do not have it)" \
        if fmt is None else f"its print fmt does not parse ({fmt.fallback_reason})"
    builder.stats.add(src_file, "fields_unknown", full, rows.height, f"kept as text: {why}")
    spec = TableSpec(event_table_name(system, name), f"{full}, text as printed",
                     (Col("text", pa.string(), "the body as printed"),), (full,))
    cols = _common(rows)
    cols["text"] = arrow(rows["body"])
    builder.add(spec.name, cols, rows.height, full, spec)


def _add_grammar_rows(hit: pl.DataFrame, parts: pl.DataFrame, grammar: Grammar, fmt: EventFormat, spec: TableSpec,
                      names: dict[str, str], full: str, src_file: str, builder: TraceBuilder) -> None:
    types = {c.name: c.type for c in spec.columns}
    cols = _common(hit)
    for i, g in enumerate(grammar.groups):
        if g.field is None or g.field not in names or f"g{i}" not in parts.columns:
            continue
        col = names[g.field]
        unsigned = pa.types.is_unsigned_integer(types[col])
        cols[col] = _typed(parts.select(_group_expr(pl.col(f"g{i}"), g, unsigned)).to_series(), types[col])
        if g.count_field in names:
            count = names[g.count_field]
            cols[count] = _typed(parts.select(pl.col(f"g{i}").str.replace_all(" ", "").str.len_bytes() // 2)
                                 .to_series(), types[count])
    lost = sorted(set(f.name for f in fmt.fields) - grammar.fields)
    if lost:
        builder.stats.add(src_file, "text_fields_not_recovered", full, hit.height,
                          f"{', '.join(lost)}: printed through expressions that cannot be inverted (null)")
    builder.add(spec.name, cols, hit.height, full, spec)


def _hex(e: pl.Expr) -> pl.Expr:
    return e.str.strip_chars().str.strip_prefix("0x").str.strip_prefix("0X").str.to_integer(
        base=16, dtype=pl.UInt64, strict=False)


def _group_expr(e: pl.Expr, g: Group, unsigned: bool = False) -> pl.Expr:
    """A group's text as its field's value (Group kinds of formats/text_grammar.py); decimal numbers
    of an unsigned field as unsigned 64-bit (%llu past 2**63)."""
    if g.kind == INT:
        return e.str.strip_chars().str.to_integer(base=10, dtype=pl.UInt64 if unsigned else pl.Int64, strict=False)
    if g.kind == HEX:
        return _hex(e)
    if g.kind in (SYMBOL, BOOL):
        table = pl.DataFrame({"k": list(g.table), "v": list(g.table.values())}, schema={"k": pl.String,
                                                                                        "v": pl.UInt64})
        named = e.replace_strict(table["k"], table["v"], default=None, return_dtype=pl.UInt64)
        return named if g.kind == BOOL else pl.coalesce(named, _hex(e))
    if g.kind == FLAGS:
        keys, vals = list(g.table), [int(v) for v in g.table.values()]
        one = pl.element().replace_strict(keys, vals, default=None, return_dtype=pl.UInt64)
        part = pl.coalesce(one, _hex(pl.element()))
        return pl.when(e == "").then(pl.lit(0, pl.UInt64)).otherwise(
            e.str.split(g.delim).list.eval(part).list.sum())
    if g.kind == HEXBYTES:
        return e.str.replace_all(" ", "").str.decode("hex")
    if g.kind == ARRAY:
        return e.str.strip_chars("{}").str.split(",").list.eval(_hex(pl.element()))
    return e


def _typed(s: pl.Series, typ: pa.DataType) -> pa.Array:
    arr = s.to_arrow()
    try:
        return arr.cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a list printed for a fixed-size one, ...
        return pa.nulls(len(arr), typ)


def _key_value_columns(rows: pl.DataFrame) -> dict[str, pl.Series]:
    """key=value bodies: one column per key (in order of first appearance), integers where every
    value is one (decimal or 0x hex), else strings."""
    keys: list[str] = []
    for k in rows["body"].head(64).str.extract_all(r"(\w+)=").explode().drop_nulls().to_list():
        k = k[:-1]
        if k not in keys:
            keys.append(k)
    out: dict[str, pl.Series] = {}
    for k in keys:
        v = rows.select(pl.col("body").str.extract(rf"(?:^| ){k}=(\S*)", 1)).to_series()
        ints = pl.select(pl.when(v.str.starts_with("0x")).then(_hex(pl.lit(v)).cast(pl.Int64, strict=False))
                         .otherwise(v.str.to_integer(strict=False))).to_series()
        out[k] = ints if ints.null_count() == v.null_count() else v
    return out


def _add_key_value_rows(rows: pl.DataFrame, system: str | None, name: str, full: str,
                        builder: TraceBuilder) -> None:
    values = _key_value_columns(rows)
    taken = set(COMMON_COLS)
    cols = _common(rows)
    spec_cols = []
    for k, v in values.items():
        col = k if k not in taken else f"field_{k}"
        taken.add(col)
        arr = v.to_arrow()
        spec_cols.append(Col(col, pa.int64() if pa.types.is_integer(arr.type) else pa.string(), ""))
        cols[col] = arr
    spec = TableSpec(event_table_name(system, name), f"{full}, key=value fields", tuple(spec_cols), (full,))
    builder.add(spec.name, cols, rows.height, full, spec)


def _emit_failed(rows: pl.DataFrame, table: str | None, system: str | None, name: str, full: str, src_file: str,
                 builder: TraceBuilder, fmt: EventFormat | None = None) -> pl.DataFrame:
    """Lines the tool printed as ``[FAILED TO PARSE] field=value ...``: the raw fields, into the named
    table (with the reference kernel's print fmt for its derived names) or the event's own table.
    Returns the other lines."""
    failed_mask = pl.col("body").str.starts_with(FAILED)
    failed = rows.filter(failed_mask)
    if failed.height == 0:
        return rows
    kv = failed.with_columns(body=pl.col("body").str.slice(len(FAILED)).str.strip_chars())
    fields: dict[str, Any] = {}
    for k, v in _key_value_columns(kv).items():
        fields[k] = v.to_numpy() if v.dtype.is_integer() and v.null_count() == 0 else v.to_arrow()
    ref = fmt or reference_formats().get(full)
    missing: list[str] = []
    if table is not None:
        cols = typed_columns(table, name, ref, fields, failed.height)
        cols.update(_common(failed))
        missing = unfit_columns(ALL_TABLES[table], cols)
        if missing and ref is None:
            return rows  # (no layout to make a table of their own from: unparsed lines, counted there)
    if table is not None and not missing:
        builder.add(table, cols, failed.height, full)
    elif ref is not None:
        if missing:
            builder.stats.add(src_file, "fields_missing", full, failed.height,
                              f"line {failed['lineno'][0]}: no field of the kind of column(s) "
                              f"{', '.join(missing)} of table {table}: kept in table {event_table_spec(ref).name}")
        spec = event_table_spec(ref)
        cols = _common(failed)
        cols.update({col: fields[f] for f, col in column_names(ref).items() if f in fields})
        builder.add(spec.name, cols, failed.height, full, spec)
    else:
        return rows
    builder.stats.add(src_file, "print_fmt_fallback", full, failed.height,
                      f"line {failed['lineno'][0]}: the tool printed raw fields")
    return rows.filter(~failed_mask)


def _emit_unparsed(rows: pl.DataFrame, full: str, src_file: str, builder: TraceBuilder) -> None:
    """Lines of an event no grammar matches: kept as printed in ``unparsed``, counted."""
    for ln, body in rows.select("lineno", "body").head(5).iter_rows():
        builder.stats.add(src_file, "body_unparsed", full, 0, f"line {ln}: {body[:120]}")
    builder.stats.add(src_file, "body_unparsed", full, rows.height)
    cols = _common(rows)
    cols["event"] = const_column(full, rows.height)
    cols["text"] = arrow(rows["body"])
    builder.add("unparsed", cols, rows.height, full)
