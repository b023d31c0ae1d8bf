"""Text trace reader: ftrace ``trace`` files, ``trace-cmd report`` output, ``perf script`` output.

Every line is classified: event, header/comment, tool notice (``cpus=N``, lost
events), perf callchain continuation, or unparsed. Unparsed lines are counted in
the stats with their line numbers; nothing is skipped silently. Parsing is
vectorised with polars regexes.
"""

from __future__ import annotations

import bz2
import fnmatch
import gzip
import lzma
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import zstandard

from vpmutrace.errors import InputError
from vpmutrace.formats.known import reference_formats
from vpmutrace.readers.text_events import PATTERNS, convert
from vpmutrace.schema import ALL_TABLES, COMMON, table_for_event
from vpmutrace.tracedata import TraceBuilder
from vpmutrace.typed_fields import event_columns, typed_columns

FTRACE_LINE = (
    r"^\s*(?:(?P<src>[^\s:]+):\s+)?\s*"
    r"(?:(?P<comm>.+?)-(?P<pid>-?\d+)\s+(?:\(\s*(?P<tgid>[\d-]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[\w.]{4,6})\s+)?)?"
    r"(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s?(?P<body>.*)$"
)
PERF_LINE = (
    r"^\s*(?P<comm>.+?)\s+(?P<pid>-?\d+)(?:/(?P<tid>-?\d+))?\s+(?:\[(?P<cpu>\d+)\]\s+)?"
    r"(?P<ts>\d+\.\d+):\s+(?:(?P<period>\d+)\s+)?(?P<event>\S+?):(?:\s+|$)(?P<body>.*)$"
)
PERF_CALLCHAIN = r"^\s+[0-9a-fA-F]+\s+\S"
CPUS_LINE = r"^\s*(?:(?P<src>\S+):\s*)?cpus=(?P<n>\d+)\s*$"
LOST_LINE = (r"^\s*(?:(?P<src>[^\s:]+):\s+)?CPU:\s*(?P<cpu>\d+) "
             r"\[(?:LOST (?P<a>\d+) EVENTS|(?P<b>\d+)? ?EVENTS DROPPED)\]")
NOTICE_LINE = r"^(?:#####.*#####|version = \d+|CPU \d+ is empty)\s*$"
PERF_MODIFIERS = re.compile(r"^[ukhpPGHISDWeb]+$")
SAMPLE_BODY = r"^\s*(?P<ip>[0-9a-fA-F]+)\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$"
FAILED = "[FAILED TO PARSE]"
COMMON_COLS = [c.name for c in COMMON]

MAX_BINARY_PROBE = 65536


def sniff_text_flavor(lines: list[str]) -> str:
    """'perf-script', 'trace-cmd-report' or 'ftrace-text' from the first event-like lines."""
    ftrace = re.compile(FTRACE_LINE)
    perf = re.compile(PERF_LINE)
    n_perf = n_ft = padded = 0
    tc = False
    for line in lines[:400]:
        if re.match(CPUS_LINE, line):
            tc = True
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = ftrace.match(line)
        if m:
            n_ft += 1
            if m.group("src") or re.match(r"^ {2,}", m.group("body") or "") or \
                    re.search(r"\w+: {2,}", line[m.start("event"):]):
                padded += 1
        elif perf.match(line):
            n_perf += 1
    if n_perf > n_ft:
        return "perf-script"
    if tc or padded:
        return "trace-cmd-report"
    return "ftrace-text"


COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2"}


def decompress_text(p: Path, raw: bytes) -> bytes:
    """Text traces are often kept compressed (trace.txt.gz, .zst, .xz, .bz2): read them as they are."""
    for magic, kind in COMPRESSED_MAGIC.items():
        if raw.startswith(magic):
            try:
                if kind == "gzip":
                    return gzip.decompress(raw)
                if kind == "xz":
                    return lzma.decompress(raw)
                if kind == "bzip2":
                    return bz2.decompress(raw)
                return zstandard.ZstdDecompressor().stream_reader(raw).read()
            except (OSError, EOFError, lzma.LZMAError, ValueError, zstandard.ZstdError) as e:
                raise InputError(str(p), f"corrupt {kind} data ({e})") from None
    return raw


def read_text(path: str | Path, builder: TraceBuilder) -> None:
    p = Path(path)
    try:
        raw = decompress_text(p, p.read_bytes())
    except OSError as e:
        raise InputError(str(p), f"cannot read: {e.strerror}") from None
    if not raw.strip():
        raise InputError(str(p), "empty file: no trace lines")
    nul = raw.find(b"\0", 0, MAX_BINARY_PROBE)
    if nul >= 0:
        raise InputError(str(p), "binary data where a text trace was expected (NUL byte)", f"offset {nul}")
    text = raw.decode("utf-8", errors="replace")
    lines = text.splitlines()
    flavor = sniff_text_flavor(lines)
    src_file = str(p)
    df = pl.DataFrame({"line": lines}).with_row_index("lineno", offset=1)
    tool = {"perf-script": "perf script", "trace-cmd-report": "trace-cmd report",
            "ftrace-text": "kernel ftrace"}[flavor]
    builder.meta["inputs"].append({"path": src_file, "format": flavor, "tool": tool, "size_bytes": len(raw)})
    stats = builder.stats

    line = pl.col("line")
    blank = line.str.strip_chars() == ""
    comment = line.str.strip_chars_start().str.starts_with("#") & ~line.str.contains(r"^#####.*#####\s*$")
    df = df.filter(~blank & ~comment)

    cpus = df.filter(line.str.contains(CPUS_LINE)).select(line.str.extract_groups(CPUS_LINE)).unnest("line")
    if cpus.height:
        builder.meta["cpus"] = int(cpus["n"].cast(pl.Int64).max())  # type: ignore[arg-type]
    lost = df.filter(line.str.contains(LOST_LINE))
    lost_rows = lost.select("lineno", line.str.extract_groups(LOST_LINE).alias("g")).unnest("g") \
        if lost.height else None
    notice = line.str.contains(CPUS_LINE) | line.str.contains(LOST_LINE) | line.str.contains(NOTICE_LINE)
    df = df.filter(~notice)

    pattern = PERF_LINE if flavor == "perf-script" else FTRACE_LINE
    parsed = df.select("lineno", "line", line.str.extract_groups(pattern).alias("h")).unnest("h")
    ok = pl.col("ts").is_not_null()
    bad = parsed.filter(~ok)
    if flavor == "perf-script" and bad.height:
        chain = bad["line"].str.contains(PERF_CALLCHAIN)
        if chain.any():
            stats.add(src_file, "callchain_lines", "", int(chain.sum()))
        bad = bad.filter(~chain)
    for row in bad.select("lineno", "line").head(5).iter_rows():
        stats.add(src_file, "unparsed_line", "", 0, f"line {row[0]}: {row[1][:120]}")
    if bad.height:
        stats.add(src_file, "unparsed_line", "", bad.height)
    ev = parsed.filter(ok)
    if lost_rows is not None:
        _add_lost(lost_rows, ev, src_file, builder)
    if ev.height == 0:
        raise InputError(src_file, f"no trace events recognised in {len(lines)} lines "
                                   f"(not ftrace, trace-cmd report or perf script text)",
                         f"line {int(bad['lineno'][0])}" if bad.height else None)
    _emit_events(ev, flavor, src_file, builder)


def _add_lost(rows: pl.DataFrame, ev: pl.DataFrame, src_file: str, builder: TraceBuilder) -> None:
    """'CPU:N [LOST M EVENTS]' lines (the kernel prints them before the first event after the loss on
    that CPU): placed at that event's time, so the loss covers [last event before, it] on CPU N."""
    nxt = ev.select("lineno", pl.col("cpu").cast(pl.Int32), _ts_ns("ts").alias("ts_ns")).sort("lineno")
    r = rows.with_columns(pl.col("cpu").cast(pl.Int32)).sort("lineno").join_asof(
        nxt, on="lineno", by="cpu", strategy="forward")
    for row in r.iter_rows(named=True):
        n = row["a"] or row["b"]
        builder.add_lost(src_file, "lost_events", int(n) if n else None, row["ts_ns"], int(row["cpu"]),
                         f"line {row['lineno']}")


def _ts_ns(col: str) -> pl.Expr:
    parts = pl.col(col).str.split_exact(".", 1)
    sec = parts.struct.field("field_0").cast(pl.Int64)
    frac = parts.struct.field("field_1").str.pad_end(9, "0").str.slice(0, 9).cast(pl.Int64)
    return sec * 1_000_000_000 + frac


def _emit_events(ev: pl.DataFrame, flavor: str, src_file: str, builder: TraceBuilder) -> None:
    perf = flavor == "perf-script"
    ev = ev.with_columns(
        ts_ns=_ts_ns("ts"),
        seq=pl.col("lineno").cast(pl.Int64),
        cpu=pl.col("cpu").cast(pl.Int32),
        pid=(pl.col("tid").fill_null(pl.col("pid")) if perf else pl.col("pid")).cast(pl.Int32),
        # perf script prints pid/tid only when asked (-F pid,tid); ftrace has "(tgid)" with -o record-tgid
        tgid=(pl.when(pl.col("tid").is_not_null()).then(pl.col("pid")) if perf else pl.col("tgid"))
        .cast(pl.Int32, strict=False),
        # perf script prints ":<tid>" when it knows no name for the thread
        comm=pl.when(pl.col("comm").str.contains(r"^\s*:-?\d+\s*$")).then(None)
        .otherwise(pl.col("comm").str.strip_chars()) if perf else pl.col("comm").str.strip_chars(),
        source=pl.col("src").fill_null("host") if "src" in ev.columns else pl.lit("host"),
        body=pl.col("body").str.strip_chars_start(" ") if not perf else pl.col("body"),
    )
    if perf:
        split = pl.col("event").str.split_exact(":", 1)
        ev = ev.with_columns(system=split.struct.field("field_0"), evname=split.struct.field("field_1"))
        is_sample = pl.col("evname").is_null() | pl.col("evname").str.contains(PERF_MODIFIERS.pattern)
        samples = ev.filter(is_sample)
        if samples.height:
            _emit_samples(samples, src_file, builder)
        ev = ev.filter(~is_sample)
    else:
        ev = ev.with_columns(system=pl.lit(None, pl.String), evname=pl.col("event"))
    common = COMMON_COLS
    for (system, name), grp in ev.group_by(["system", "evname"], maintain_order=True):
        table = table_for_event(system, name)
        if system is None and table is not None:
            system = _system_of(table, name)
        full = f"{system}:{name}" if system else name
        if table is None:
            _emit_generic(grp, full, builder)
            continue
        remaining = grp
        for pat in PATTERNS[table]:
            if remaining.height == 0:
                break
            matches = pl.col("body").str.contains(pat)
            hit = remaining.filter(matches)
            remaining = remaining.filter(~matches)
            if hit.height == 0:
                continue
            typed = convert(table, hit.select(pl.col("body").str.extract_groups(pat).alias("g")).unnest("g"))
            cols: dict[str, Any] = {c: hit[c] for c in common}
            cols.update({c: typed[c] for c in typed.columns})
            cols.update(event_columns(table, name, hit.height))
            builder.add(table, {k: _arrow(v) for k, v in cols.items()}, hit.height, full)
        if remaining.height:
            _emit_unmatched(remaining, table, system, name, src_file, builder)


def _arrow(v: Any) -> Any:
    return v.to_arrow() if isinstance(v, pl.Series) else v


_KV = re.compile(r"(\w+)=(\S*)")


def _emit_unmatched(rows: pl.DataFrame, table: str, system: str | None, name: str, src_file: str,
                    builder: TraceBuilder) -> None:
    """Rows of a typed event whose text did not match: raw-field fallback, else generic + counted."""
    full = f"{system}:{name}" if system else name
    failed = rows.filter(pl.col("body").str.starts_with(FAILED))
    if failed.height:
        recs = [dict(_KV.findall(b[len(FAILED):])) for b in failed["body"].to_list()]
        keys = sorted(set().union(*recs))
        fields: dict[str, Any] = {}
        for k in keys:
            vals = [r.get(k) for r in recs]
            fields[k] = [_int_or_str(v) for v in vals]
        for k, v in fields.items():
            if all(isinstance(x, int) for x in v):
                fields[k] = np.array(v, dtype=np.int64 if min(v, default=0) < 0 else np.uint64)
        ref = reference_formats().get(f"{system}:{name}")
        cols = typed_columns(table, name, ref, fields, failed.height)
        cols.update({c: _arrow(failed[c]) for c in COMMON_COLS})
        builder.add(table, cols, failed.height, full)
        builder.stats.add(src_file, "print_fmt_fallback", full, failed.height,
                          f"line {failed['lineno'][0]}: the tool printed raw fields")
    other = rows.filter(~pl.col("body").str.starts_with(FAILED))
    if other.height:
        for ln, body in other.select("lineno", "body").head(5).iter_rows():
            builder.stats.add(src_file, "body_unparsed", full, 0, f"line {ln}: {body[:120]}")
        builder.stats.add(src_file, "body_unparsed", full, other.height)
        _emit_generic(other, full, builder)


def _system_of(table: str, name: str) -> str | None:
    """The tracepoint system of a typed event seen without one (ftrace / trace-cmd text)."""
    for ev in ALL_TABLES[table].events:
        sys_, _, pat = ev.partition(":")
        if fnmatch.fnmatchcase(name, pat):
            return sys_
    return None


def _int_or_str(v: str | None) -> Any:
    if v is None:
        return None
    try:
        return int(v, 0)
    except ValueError:
        return v


def _emit_generic(rows: pl.DataFrame, full: str, builder: TraceBuilder) -> None:
    cols = {c: _arrow(rows[c]) for c in COMMON_COLS}
    cols["event"] = [full] * rows.height
    cols["text"] = _arrow(rows["body"])
    builder.add("events", cols, rows.height, full)


def _emit_samples(rows: pl.DataFrame, src_file: str, builder: TraceBuilder) -> None:
    g = rows.select(pl.col("body").str.extract_groups(SAMPLE_BODY).alias("g")).unnest("g")
    cols: dict[str, Any] = {c: _arrow(rows[c]) for c in COMMON_COLS}
    cols["event"] = _arrow(rows["event"])
    cols["tid"] = _arrow(rows["pid"])
    cols["period"] = _arrow(rows["period"].cast(pl.UInt64, strict=False))
    cols["ip"] = _arrow(g["ip"].str.to_integer(base=16, dtype=pl.UInt64, strict=False))
    cols["sym"] = _arrow(g["sym"])
    cols["dso"] = _arrow(g["dso"])
    builder.add("samples", cols, rows.height)
    for ev, n in rows.group_by("event").len().iter_rows():
        builder.event_counts[ev] += n
    nobody = g["ip"].is_null() & (rows["body"].str.strip_chars() != "")
    if nobody.any():
        builder.stats.add(src_file, "body_unparsed", "sample", int(nobody.sum()),
                          f"line {rows.filter(nobody)['lineno'][0]}: sample text without ip/sym/dso")


__all__ = ["read_text", "sniff_text_flavor"]
