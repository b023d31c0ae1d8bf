"""Text trace reader: ftrace ``trace`` files, ``trace-cmd report`` output, ``perf script`` output.

Every line is classified: event, header/comment, tool notice (``cpus=N``, lost
events), perf callchain continuation, or unparsed. Unparsed lines are counted in
the stats with their line numbers; nothing is skipped silently. Parsing is
vectorised with polars regexes.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import zstandard

from vpmutrace import clocks as C
from vpmutrace import kernels
from vpmutrace.errors import InputError
from vpmutrace.formats.decode import valid_utf8, var_array
from vpmutrace.formats.foreign import HEAD_BYTES, not_a_trace
from vpmutrace.kernels import text_layout as tk
from vpmutrace.readers.binio import MAX_EXPANSION, expansion_room
from vpmutrace.readers.text_tables import COMMON_COLS, arrow, emit_text_event, system_of
from vpmutrace.tracedata import TraceBuilder

FTRACE_LINE = (
    r"^\s*(?:(?P<src>[^\s:]+):\s+)?\s*"
    # the task name may end in "-" (async-executor--20974): the pid is after the last "-"
    r"(?:(?P<comm>.+)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>[\d-]+)\)\s+)?\[(?P<cpu>\d+)\]\s*"
    r"(?:(?P<flags>[\w.]{4,6})\s+)?)?"
    r"(?P<ts>\d+(?:\.\d+)?):\s+(?P<event>\w+):\s?(?P<body>.*)$"
)
PERF_LINE = (
    r"^\s*(?P<comm>.+?)\s+(?P<pid>-?\d+)(?:/(?P<tid>-?\d+))?\s+(?:\[(?P<cpu>\d+)\]\s+)?"
    r"(?P<ts>\d+(?:\.\d+)?):\s+(?:(?P<period>\d+)\s+)?(?P<event>\S+?):(?:\s+|$)(?P<body>.*)$"
)
PERF_CALLCHAIN = r"^\s+[0-9a-fA-F]+\s+\S"
CPUS_LINE = r"^\s*(?:(?P<src>\S+):\s*)?cpus=(?P<n>\d+)\s*$"
LOST_LINE = (r"^\s*(?:(?P<src>[^\s:]+):\s+)?CPU:\s*(?P<cpu>\d+) "
             r"\[(?:LOST (?P<a>\d+) EVENTS|(?P<b>\d+)? ?EVENTS DROPPED)\]")
NOTICE_LINE = r"^(?:#####.*#####|version = \d+|CPU \d+ is empty)\s*$"
PERF_MODIFIERS = re.compile(r"^[ukhpPGHISDWeb]+$")
SAMPLE_BODY = r"^\s*(?P<ip>[0-9a-fA-F]+)\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$"

MAX_BINARY_PROBE = 65536
SNIFF_LINES, SNIFF_BYTES = 400, 1 << 20  # lines the flavor is guessed from
SNIFF_LINE_CHARS = 256  # of each, the start (task, cpu, flags, time and event name fit in it)


def sniff_text_flavor(lines: list[str]) -> str:
    """'perf-script', 'trace-cmd-report' or 'ftrace-text' from the first event-like lines (their first
    SNIFF_LINE_CHARS characters: the regexes backtrack, so a long line must not reach them whole)."""
    ftrace = re.compile(FTRACE_LINE)
    perf = re.compile(PERF_LINE)
    n_perf = n_ft = padded = 0
    tc = False
    for line in (ln[:SNIFF_LINE_CHARS] for ln in lines[:SNIFF_LINES]):
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


def _time_unit(head: str) -> dict[str, str | None]:
    """What the printed timestamps are: ``secs.frac`` is a clock in ns (the kernel and trace-cmd print
    ns clocks so); a bare integer is a clock in ticks (x86-tsc, counter), whose unit the text does
    not say."""
    head = "\n".join(ln[:SNIFF_LINE_CHARS] for ln in head.splitlines()[:SNIFF_LINES])
    m = re.search(r"(?:\]|\s)\s*(\d+(\.\d+)?):\s+\w+:", head)
    if m is None or m.group(2):
        return {"clock": None, "time_unit": C.NS, "time_source": "timestamps printed as seconds"}
    return {"clock": None, "time_unit": C.UNKNOWN_TICKS,
            "time_source": "timestamps printed as integers: a clock in ticks (x86-tsc) or the counter clock"}


COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2"}


def decompress_text(p: Path, raw: bytes) -> tuple[bytes, str | None]:
    """Text traces are often kept compressed (trace.txt.gz, .zst, .xz, .bz2): read them as they are.

    Returns the text and, when the compressed data ends inside a frame / stream (a file cut
    short), why: the text decompressed up to there is kept. Concatenated frames / members are read
    one after the other. What it expands to is bounded (binio.expansion_room): zstd has no output
    limit per call, so it is fed 1 KB at a time (one KB of zstd expands to at most ~32 MB: 128 KB
    per 4-byte RLE block)."""
    kind = next((k for magic, k in COMPRESSED_MAGIC.items() if raw.startswith(magic)), None)
    if kind is None:
        return raw, None
    room = expansion_room(len(raw))
    new = {"gzip": lambda: zlib.decompressobj(wbits=31), "xz": lzma.LZMADecompressor, "bzip2": bz2.BZ2Decompressor,
           "zstd": lambda: zstandard.ZstdDecompressor().decompressobj()}[kind]
    step = 1024 if kind == "zstd" else 1 << 20
    parts: list[bytes] = []
    total = pos = fed = 0
    d = new()
    try:
        while pos < len(raw):
            piece = raw[pos:pos + step]
            pos += len(piece)
            fed += len(piece)
            out = d.decompress(piece) if kind == "zstd" else d.decompress(piece, room + 1 - total)
            total += len(out)
            parts.append(out)
            if total > room:  # (zlib, lzma, bz2 stop at room + 1 bytes)
                raise InputError(str(p), f"{kind} data expands to more than {room} bytes ({MAX_EXPANSION} "
                                         "times the file): not read")
            if d.eof:  # one frame / member ended: what follows starts the next
                rest = d.unused_data
                pos -= len(rest)
                if not raw[pos:].strip(b"\0"):  # (gzip and xz may be padded with zeros)
                    pos = len(raw)
                    fed = 0
                    break
                d, fed = new(), 0
    except (OSError, EOFError, lzma.LZMAError, ValueError, zlib.error, zstandard.ZstdError) as e:
        raise InputError(str(p), f"corrupt {kind} data ({e})", f"offset {pos}") from None
    cut = f"the {kind} data ends inside a frame (the file is cut short)" if fed else None
    return b"".join(parts), cut


def read_text(path: str | Path, builder: TraceBuilder) -> None:
    p = Path(path)
    try:
        raw, cut = decompress_text(p, p.read_bytes())
    except OSError as e:
        raise InputError(str(p), f"cannot read: {e.strerror}") from None
    if not raw.strip():
        raise InputError(str(p), "empty file: no trace lines")
    if cut:
        builder.stats.add(str(p), "partial", "", 1, f"{cut}: the text decompressed up to there is read")
    nul = raw.find(b"\0", 0, MAX_BINARY_PROBE)
    if nul >= 0:
        raise InputError(str(p), not_a_trace(raw[:HEAD_BYTES]) + f"; NUL byte at offset {nul}")
    if not raw.endswith(b"\n"):  # the tools end every line: a last line without one was cut (not read)
        last = raw.rfind(b"\n") + 1
        lineno = raw.count(b"\n", 0, last) + 1
        builder.stats.add(str(p), "unparsed_line", "", 1,
                          f"line {lineno}: {raw[last:last + 120].decode('utf-8', 'replace')} "
                          "(the file ends inside this line: not read)")
        raw = raw[:last]
        if not raw.strip():
            raise InputError(str(p), "no complete line: the file ends inside its first line")
    flavor = sniff_text_flavor(raw[:SNIFF_BYTES].decode("utf-8", "replace").splitlines()[:SNIFF_LINES])
    src_file = str(p)
    tool = {"perf-script": "perf script", "trace-cmd-report": "trace-cmd report",
            "ftrace-text": "kernel ftrace"}[flavor]
    builder.meta["inputs"].append({"path": src_file, "format": flavor, "tool": tool, "size_bytes": len(raw),
                                   **_time_unit(raw[:SNIFF_BYTES].decode("utf-8", "replace"))})
    buf = np.frombuffer(raw, dtype=np.uint8)
    starts = line_starts(buf)
    nlines = len(starts) - 1
    frames: list[pa.Table] = []
    lost: list[pl.DataFrame] = []
    heads = np.empty(tk.H_COLUMNS * min(nlines, CHUNK_LINES), np.int64)  # reused for every chunk
    for a in range(0, nlines, CHUNK_LINES):  # in chunks of lines: the parse's scratch stays small
        z = min(nlines, a + CHUNK_LINES)
        h = heads[:tk.H_COLUMNS * (z - a)].reshape(tk.H_COLUMNS, z - a)  # a row per column
        kernels.parallel(kernels.parse_lines, z - a, buf, starts[a:z + 1],
                         tk.FLAVOR_PERF if flavor == "perf-script" else tk.FLAVOR_FTRACE, h)
        kind = h[tk.H_KIND]
        other = np.flatnonzero(kind == tk.LINE_OTHER)
        if len(other):
            lost.append(_other_lines(buf, h, other, a, flavor, src_file, builder))
        ev = np.flatnonzero(kind == tk.LINE_EVENT)
        if len(ev):
            frames.append(_event_frame(buf, h, ev, a))
    del buf, raw, heads, starts  # the frames hold copies of what they need: the file's bytes can go
    if not frames:
        bad = builder.stats.entries()
        raise InputError(src_file, f"no trace events recognised in {nlines} lines "
                                   f"(not ftrace, trace-cmd report or perf script text)",
                         next((e.examples[0].split(":")[0] for e in bad if e.category == "unparsed_line"), None))
    frame = pl.from_arrow(pa.concat_tables(frames, promote_options="permissive"))
    del frames
    notices = pl.concat(lost) if lost else None
    if notices is not None and notices.height:
        _add_lost(notices, frame, src_file, builder)  # type: ignore[arg-type]
    _emit_events(frame.with_columns(pl.col("event").cast(pl.String)), flavor, src_file, builder)  # type: ignore[union-attr]


CHUNK_LINES = 1 << 20


def line_starts(buf: np.ndarray) -> np.ndarray:
    """Where each line starts, and the end: len(lines) + 1 offsets, found in compiled passes."""
    n = len(buf)
    pieces = max(1, min(64, n >> 20))
    bounds = np.linspace(0, n, pieces + 1).astype(np.int64)
    counts = np.zeros(pieces, np.int64)
    kernels.parallel(kernels.count_lines, pieces, buf, bounds, counts, pieces=pieces)
    first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    lines = int(counts.sum()) + (1 if n and buf[-1] != 10 else 0)
    starts = np.empty(lines + 1, np.int64)
    starts[0] = 0
    kernels.parallel(kernels.line_starts, pieces, buf, bounds, first, starts, pieces=pieces)
    starts[lines] = n
    return starts


def spans(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.Array:
    """Strings buf[start[i]:end[i]] (null where start < 0), built in compiled passes."""
    absent = start < 0
    sizes = np.where(absent, 0, end - start)
    value_offsets = np.zeros(len(start) + 1, np.int64)
    np.cumsum(sizes, out=value_offsets[1:])
    data = np.empty(int(value_offsets[-1]), np.uint8)
    kernels.parallel(kernels.copy_values, len(start), buf, np.where(absent, 0, start), 0, value_offsets, data)
    value_offsets, data = valid_utf8(value_offsets, data)
    arr = var_array(pa.string(), value_offsets, data)
    if absent.any():
        arr = pc.if_else(pa.array(absent), pa.nulls(len(arr), pa.string()), arr)
    return arr


def _numbers(col: np.ndarray, dtype: type) -> pa.Array:
    absent = col == tk.NONE
    return pa.array(np.where(absent, 0, col).astype(dtype), mask=absent if absent.any() else None)


def _event_frame(buf: np.ndarray, heads: np.ndarray, rows: np.ndarray, first_line: int) -> pa.Table:
    """The event lines ``rows`` of a chunk of parsed lines (its first line: ``first_line``) as columns."""
    every = len(rows) == heads.shape[1]  # (usually every line is an event)

    def h(c: int) -> np.ndarray:
        return heads[c] if every else heads[c][rows]

    cpu = h(tk.H_CPU)
    frame = {
        "lineno": pa.array(rows + first_line + 1), "ts_ns": pa.array(h(tk.H_TS).copy()),
        "cpu": pa.array(cpu.astype(np.int32), mask=cpu < 0 if (cpu < 0).any() else None),
        "pid": _numbers(h(tk.H_PID), np.int32), "tgid": _numbers(h(tk.H_TGID), np.int32),
        "comm": spans(buf, h(tk.H_COMM_S), h(tk.H_COMM_E)),
        "src": spans(buf, h(tk.H_SRC_S), h(tk.H_SRC_E)),
        "event": spans(buf, h(tk.H_EVENT_S), h(tk.H_EVENT_E)).dictionary_encode(),
        "body": spans(buf, h(tk.H_BODY_S), h(tk.H_LINE_E)),
        "period": _numbers(h(tk.H_PERIOD), np.int64),
    }
    return pa.table(frame)


def _other_lines(buf: np.ndarray, heads: np.ndarray, rows: np.ndarray, first_line: int, flavor: str, src_file: str,
                 builder: TraceBuilder) -> pl.DataFrame:
    """Lines that are no event: tool notices (``cpus=N``), perf callchain lines, or unparsed
    (counted, with the first few); returns the lost-events notices (lineno, cpu, a / b: the count),
    placed by ``_add_lost`` once the events are known."""
    stats = builder.stats
    df = pl.DataFrame({"lineno": rows + first_line + 1,
                       "line": spans(buf, heads[tk.H_LINE_S][rows], heads[tk.H_LINE_E][rows])})
    line = pl.col("line")
    cpus = df.filter(line.str.contains(CPUS_LINE)).select(line.str.extract_groups(CPUS_LINE)).unnest("line")
    if cpus.height:
        builder.meta["cpus"] = max(builder.meta.get("cpus") or 0, int(cpus["n"].cast(pl.Int64).max()))  # type: ignore[arg-type]
    lost = df.filter(line.str.contains(LOST_LINE))
    lost = lost.select("lineno", line.str.extract_groups(LOST_LINE).alias("g")).unnest("g")
    notice = line.str.contains(CPUS_LINE) | line.str.contains(LOST_LINE) | line.str.contains(NOTICE_LINE)
    bad = df.filter(~notice)
    if flavor == "perf-script" and bad.height:
        chain = bad["line"].str.contains(PERF_CALLCHAIN)
        if chain.any():
            stats.add(src_file, "callchain_lines", "", int(chain.sum()))
        bad = bad.filter(~chain)
    for row in bad.head(5).iter_rows():
        stats.add(src_file, "unparsed_line", "", 0, f"line {row[0]}: {row[1][:120]}")
    if bad.height:
        stats.add(src_file, "unparsed_line", "", bad.height)
    return lost


def _add_lost(rows: pl.DataFrame, ev: pl.DataFrame, src_file: str, builder: TraceBuilder) -> None:
    """'CPU:N [LOST M EVENTS]' lines (the kernel prints them before the first event after the loss on
    that CPU): placed at that event's time, so the loss covers [last event before, it] on CPU N."""
    nxt = ev.select("lineno", "cpu", "ts_ns").filter(pl.col("cpu").is_not_null()).sort("lineno")
    r = rows.with_columns(pl.col("cpu").cast(pl.Int32)).sort("lineno").join_asof(
        nxt, on="lineno", by="cpu", strategy="forward")
    for row in r.iter_rows(named=True):  # (one per loss notice)
        n = row["a"] or row["b"]
        builder.add_lost(src_file, "lost_events", int(n) if n else None, row["ts_ns"], int(row["cpu"]),
                         f"line {row['lineno']}")


def _emit_events(ev: pl.DataFrame, flavor: str, src_file: str, builder: TraceBuilder) -> None:
    perf = flavor == "perf-script"
    ev = ev.with_columns(
        seq=pl.col("lineno").cast(pl.Int64),
        # perf script prints pid/tid only when asked (-F pid,tid): the thread id is the pid column
        # and the process id the tgid; ftrace has "(tgid)" with -o record-tgid
        # perf script prints ":<tid>" when it knows no name for the thread
        comm=pl.when(pl.col("comm").str.contains(r"^:-?\d+$")).then(None).otherwise(pl.col("comm"))
        if perf else pl.col("comm"),
        source=pl.col("src").fill_null("host"),
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
    for (system, name), grp in ev.group_by(["system", "evname"], maintain_order=True):
        emit_text_event(grp, system if system is not None else system_of(name), name, src_file, builder)


def _emit_samples(rows: pl.DataFrame, src_file: str, builder: TraceBuilder) -> None:
    g = rows.select(pl.col("body").str.extract_groups(SAMPLE_BODY).alias("g")).unnest("g")
    cols: dict[str, Any] = {c: arrow(rows[c]) for c in COMMON_COLS}
    cols["event"] = arrow(rows["event"])
    cols["tid"] = arrow(rows["pid"])
    cols["period"] = arrow(rows["period"].cast(pl.UInt64))
    cols["ip"] = arrow(g["ip"].str.to_integer(base=16, dtype=pl.UInt64, strict=False))
    cols["sym"] = arrow(g["sym"])
    cols["dso"] = arrow(g["dso"])
    builder.add("samples", cols, rows.height)
    for ev, n in rows.group_by("event").len().iter_rows():
        builder.event_counts[ev] += n
    nobody = g["ip"].is_null() & (rows["body"].str.strip_chars() != "")
    if nobody.any():
        builder.stats.add(src_file, "body_unparsed", "sample", int(nobody.sum()),
                          f"line {rows.filter(nobody)['lineno'][0]}: sample text without ip/sym/dso")


__all__ = ["read_text", "sniff_text_flavor"]
