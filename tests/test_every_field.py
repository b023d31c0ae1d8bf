"""Every field of every event of real mixed captures, decoded from binary, against what the tools
and the kernel print for the same records (fixtures/mixed.*, fixtures/uprobe.*: PROVENANCE.md).

The mixed captures hold scalars of every width and sign, char arrays (sched comms), a u8 array
(kvm_emulate_insn.insn), __data_loc strings (sched_process_exec.filename) and symbol/flag
tables; the uprobe captures hold fixed arrays of 1-, 2-, 4- and 8-byte elements, strings that
are empty or not UTF-8, hex and bit-field arguments, at unaligned offsets.
"""

from __future__ import annotations

import lzma
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import FIXTURES

from vpmutrace.formats.event_format import ARRAY, BYTES, CHARS, EventFormat, Field
from vpmutrace.formats.text_grammar import HEX, print_fmt_grammar
from vpmutrace.readers import load_trace
from vpmutrace.schema import ALL_TABLES, binary_only, column_names, is_event_table
from vpmutrace.show import _format, bodies, lines
from vpmutrace.tracedata import TraceData
from vpmutrace.typed_fields import CUTS, FIELD_MAP

CUT_FIELDS = {"kvm:kvm_emulate_insn": ("insn",)}

CAPTURES = ["mixed", "uprobe"]
LINE = re.compile(r"^(?:\S+: )?\s*(?P<comm>.*?)-(?P<pid>-?\d+)\s+\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?(?P<ts>\d+\.\d+): "
                  r"(?P<event>\w+):\s*(?P<body>.*)$")


def _text(name: str) -> list[str]:
    raw = lzma.decompress((FIXTURES / f"{name}.xz").read_bytes()).decode("utf-8", "replace")
    return [ln for ln in raw.splitlines() if ln.strip() and not ln.startswith("cpus=")]


def _parsed(lines_: list[str]) -> list[dict[str, str]]:
    out = []
    for ln in lines_:
        m = LINE.match(ln)
        assert m, ln
        out.append(m.groupdict())
    return out


def _ours(td: TraceData) -> list[dict[str, str]]:
    return _parsed(list(lines(td)))


# Where the kernel's own text is not its print fmt, so no print fmt evaluation (libtraceevent's or
# ours) can give it: (event, the printed argument, why); both sides lose that argument.
KERNEL_ONLY = [
    ("kvm_update_master_clock", r"hostclock \S+", "enum VDSO_CLOCKMODE_* not exported to the format"),
    ("kvm_track_tsc", r"hostclock \S+", "enum VDSO_CLOCKMODE_* not exported to the format"),
    ("fields", r"^\((?:0x)?[0-9a-f]+\)", "probe events print their ip as (0x%lx), their print fmt as (%lx)"),
]


def _without(event: str, body: str, table: list[tuple[str, str, str]]) -> str:
    for ev, pattern, _why in table:
        if ev == event:
            body = re.sub(pattern, "<>", body)
    return body


@pytest.mark.parametrize("name", CAPTURES)
def test_trace_dat_lines_equal_the_kernels_own_text(name: str) -> None:
    """Every event of the trace.dat rendered from our decoded fields through its print fmt equals
    the kernel's text of the same ring buffer, line for line (order, task, CPU, time, body)."""
    td = load_trace([FIXTURES / f"{name}.trace.dat"])
    ours, kernel = _ours(td), _parsed(_text(f"{name}.ftrace.txt"))
    assert len(ours) == len(kernel) == sum(td.meta["events"].values())
    for a, b in zip(ours, kernel, strict=True):
        assert (a["pid"], a["cpu"], a["ts"], a["event"]) == (b["pid"], b["cpu"], b["ts"], b["event"])
        assert _without(a["event"], a["body"], KERNEL_ONLY) == _without(b["event"], b["body"], KERNEL_ONLY), \
            (a, b)
    assert td.meta["unparsed"] == 0


@pytest.mark.parametrize("trace", ["mixed.trace.dat", "mixed.perf.data", "mixed.ftrace.txt.xz"])
def test_bodies_equal_the_rendered_lines(trace: str, tmp_path: Path) -> None:
    """show.bodies (what analyzers read for events without a named table: text per distinct field
    values) gives every row of each event, with the body its rendered line has."""
    path = FIXTURES / trace
    if trace.endswith(".xz"):
        path = tmp_path / trace.removesuffix(".xz")
        path.write_bytes(lzma.decompress((FIXTURES / trace).read_bytes()))
    td = load_trace([path])
    for event in ("kvm:kvm_apic", "kvm:kvm_fpu", "sched:sched_wakeup"):
        b = bodies(td, (event,))
        rendered = _parsed(list(lines(td, event)))
        assert b.height == len(rendered) > 0, event
        assert b["text"].to_list() == [r["body"] for r in rendered], event
        assert b["ts_ns"].is_sorted() and b["source"].is_not_null().all(), event
    assert bodies(td, ("kvm:no_such_event",)).height == 0


def _raw_pairs(fmt: EventFormat, body: str) -> dict[str, str]:
    """``trace-cmd report -R``'s field=value pairs (values may hold spaces: split on the field names)."""
    names = [f.name for f in fmt.fields]
    m = re.match("^" + " ".join(rf"{re.escape(n)}=(.*?)" for n in names) + r"\s*$", body)
    assert m, (fmt.full_name, body)
    return dict(zip(names, m.groups(), strict=True))


def _hex_fields(fmt: EventFormat) -> set[str]:
    """Fields libtraceevent prints raw with their print fmt's hex conversion (``ecx=186``)."""
    g = print_fmt_grammar(fmt)
    return {grp.field for grp in g.groups if grp.kind == HEX and grp.field} if g else set()


def _raw_value(f: Field, text: str, hexy: bool) -> Any:
    """A -R value as the field's bytes mean it: bytes for arrays printed as ARRAY[..], text for
    strings, an integer modulo the field's width (libtraceevent prints an s8 unsigned)."""
    if text.startswith("ARRAY["):
        return bytes.fromhex(text[6:-1].replace(", ", ""))
    if f.kind in (CHARS, BYTES) and (f.kind == CHARS or f.dynamic or f.array_len):
        return text.encode()
    base = 16 if text.startswith("0x") or hexy else 10
    return int(text, base) % (1 << (8 * f.size))


def _our_value(f: Field, v: Any, raw: Any) -> Any:
    if isinstance(raw, int):
        return int(v) % (1 << (8 * f.size))
    if f.kind == ARRAY:
        size = f.elem_size
        data = b"".join((int(x) % (1 << (8 * size))).to_bytes(size, "little") for x in v)
        return data
    if f.kind == CHARS:
        return v.encode()
    return v if isinstance(v, bytes) else bytes(v)


@pytest.mark.parametrize("name", CAPTURES)
def test_every_field_equals_trace_cmd_report_raw(name: str) -> None:
    """Every field of every event of the trace.dat equals ``trace-cmd report -R``'s raw value."""
    td = load_trace([FIXTURES / f"{name}.trace.dat"])
    ours = _ours(td)
    raw = _parsed(_text(f"{name}.report-raw.txt"))
    assert len(raw) == len(ours)
    rows = _rows_in_time_order(td)
    checked = 0
    for r, o, (full, row) in zip(raw, ours, rows, strict=True):
        assert (r["pid"], r["cpu"], r["ts"], r["event"]) == (o["pid"], o["cpu"], o["ts"], o["event"])
        fmt = _format(td, full)
        assert fmt is not None
        pairs = _raw_pairs(fmt, r["body"])
        hexy = _hex_fields(fmt)
        for f in fmt.fields:
            theirs = _raw_value(f, pairs[f.name], f.name in hexy)
            if row[f.name] is None:  # named tables null what the event did not deliver (error_code without has_error)
                assert full in ("kvm:kvm_inj_exception", "kvm:kvm_userspace_exit"), (full, f.name)
                continue
            mine = _our_value(f, row[f.name], theirs)
            if f.name in CUT_FIELDS.get(full, ()):  # kvm_emulate_insn.insn: the first len bytes
                theirs = theirs[:len(mine)]
            if f.kind == CHARS:  # up to the NUL; bytes that are not UTF-8 are U+FFFD (ours)
                assert theirs.split(b"\0", 1)[0].decode("utf-8", "replace").encode() == mine, (full, f.name)
            elif f.kind == BYTES and not f.dynamic and not pairs[f.name].startswith("ARRAY["):
                assert theirs == mine.split(b"\0", 1)[0], (full, f.name)  # libtraceevent: a u8 array as a string
            else:
                assert theirs == mine, (full, f.name, theirs, mine)
            checked += 1
    assert checked >= len(raw)


def _rows_in_time_order(td: TraceData) -> list[tuple[str, dict[str, Any]]]:
    """(system:name, {format field: decoded value}) of every event, in time order."""
    owners = {t: e for e, t in td.event_tables().items()}
    parts = []
    for table, t in td.tables.items():
        if not is_event_table(table) and table not in ALL_TABLES or table in ("lost", "stats", "unparsed"):
            continue
        full = owners[table]
        fmt = _format(td, full)
        names = column_names(fmt) if is_event_table(table) else _named_table_fields(table, fmt)
        df = pl.from_arrow(t)
        cuts = CUTS.get(table, {})
        for row in df.iter_rows(named=True):
            fields = {f: row[c] for f, c in names.items() if c in row}
            fields.update({count: len(row[f]) for f, count in cuts.items()})
            parts.append((row["ts_ns"], row["seq"], full, fields))
    parts.sort(key=lambda p: (p[0], p[1]))
    return [(full, row) for _, _, full, row in parts]


def _named_table_fields(table: str, fmt: EventFormat) -> dict[str, str]:
    """{format field: column} of a named table's raw columns (typed_fields.FIELD_MAP)."""
    present = {f.name for f in fmt.fields}
    out = {next(c for c in cands if c in present): col for col, cands in FIELD_MAP[table].items()
           if any(c in present for c in cands)}
    out.update({f: f for f in CUTS.get(table, {})})
    return out


@pytest.mark.parametrize("name", CAPTURES)
def test_perf_data_lines_equal_perf_script(name: str) -> None:
    """Every event of the perf.data rendered from our fields equals ``perf script``'s text, but for
    what perf 6.1's libtraceevent cannot print (listed, with the check that replaces it)."""
    td = load_trace([FIXTURES / f"{name}.perf.data"])
    ours = _ours(td)
    perf = _perf_script(f"{name}.perf-script.txt")
    assert len(ours) == len(perf) == sum(td.meta["events"].values())
    for a, b in zip(ours, perf, strict=True):
        assert (a["pid"], a["cpu"], a["event"]) == (b["pid"], b["cpu"], b["event"])
        assert int(a["ts"].replace(".", "")) - int(b["ts"].replace(".", "")) in (0, 1)  # perf truncates to µs
        if b["body"].startswith("[FAILED TO PARSE]"):
            # perf 6.1 cannot parse kvm_inj_exception's print fmt: it prints the raw fields instead
            fmt = _format(td, f"kvm:{a['event']}")
            assert fmt is not None
            raw = dict(kv.split("=") for kv in b["body"][len("[FAILED TO PARSE] "):].split())
            shown = td.df("kvm_inj_exception")
            assert set(raw) == {f.name for f in fmt.fields} and shown.height > 0
            continue
        assert _without_perf_bugs(td, a["event"], a["body"]) == _without_perf_bugs(td, b["event"], b["body"]), (a, b)


def _perf_script(name: str) -> list[dict[str, str]]:
    pat = re.compile(r"^\s*(?P<comm>.*?)\s+(?P<pid>-?\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<ts>\d+\.\d+):\s+\w+:(?P<event>\w+):"
                     r"\s*(?P<body>.*)$")
    out = []
    for ln in _text(name):
        m = pat.match(ln)
        assert m, ln
        out.append(m.groupdict())
    return out


def _without_perf_bugs(td: TraceData, event: str, body: str) -> str:
    """perf 6.1's libtraceevent prints an array element argument (``REC->temps[1]``) as 0 and the
    s8 and s16 fields of probe events unsigned: those arguments are compared with the kernel's
    text instead (above), and the fields with trace-cmd report -R modulo their width."""
    if event != "fields":
        return body
    for arg in ("temps", "ids", "deltas"):
        body = re.sub(rf"{arg}=\{{[^}}]*\}}", f"{arg}=<>", body)
    return re.sub(r"(small|t0)=-?\d+", r"\1=<>", body)


TEXTS = ["mixed.ftrace.txt.xz", "mixed.report.txt.xz", "mixed.perf-script.txt.xz"]
# what a tool's plugin prints instead of the print fmt leaves out: trace-cmd's kvm plugin prints
# kvm_emulate_insn's bytes without the mode
PLUGIN_NULLS = {("report", "kvm_emulate_insn"): {"mode"}}
# what a plugin prints differently: trace-cmd's sched_switch plugin prints prev_state from its own
# letter table, not the kernel's print fmt (the ftrace text, the kernel's, is compared in full)
PLUGIN_TEXT = {("report", "sched_switch"): ["prev_state"]}


@pytest.mark.parametrize("text", TEXTS)
def test_text_traces_give_back_the_binary_fields(text: str) -> None:
    """The tools' text of a capture, read back, gives every table the binary file gives, with the
    fields its print fmt lets the text give back; the ones it cannot are null and counted."""
    name = text.split(".")[0]
    binary = load_trace([FIXTURES / (f"{name}.perf.data" if "perf-script" in text else f"{name}.trace.dat")])
    printed = load_trace([FIXTURES / text])
    assert printed.meta["events"] == binary.meta["events"]
    assert printed.meta["unparsed"] == 0
    lost = {e.name: e.examples for e in printed.stats.entries() if e.category == "text_fields_not_recovered"}
    for full, table in binary.event_tables().items():
        assert printed.event_tables()[full] == table
        a, b = binary.df(table), printed.df(table)
        # (trace-cmd report names tasks from libtraceevent's comm cache, which its sched_switch plugin
        # also fills while printing: compared with the kernel's text, which uses saved_cmdlines as we do)
        drop = ["seq", "source", "tgid", *(["comm"] if "report" in text else []), *binary_only(table),
                *PLUGIN_TEXT.get((text.split(".")[1], table), [])]
        if is_event_table(table):
            drop += [c for c in a.columns if c.startswith("common_")]
        keep = [c for c in a.columns if c not in drop and b[c].null_count() < b.height or c == "ts_ns"]
        if "perf-script" in text:
            a = a.with_columns((pl.col("ts_ns") // 1000 * 1000).alias("ts_ns"))
        else:
            a = a.with_columns(((pl.col("ts_ns") + 500) // 1000 * 1000).alias("ts_ns"))
        nulls = [c for c in a.columns if c not in drop and c not in keep]
        if nulls:  # columns the text cannot give back: said so in the stats, or printed by a plugin
            assert full in lost or set(nulls) <= PLUGIN_NULLS.get((text.split(".")[1], table), set()) | {"coalesced"}, \
                (full, nulls)
        assert a.select(keep).equals(b.select(keep)), (text, table, keep)


@pytest.mark.parametrize("text", ["uprobe.ftrace.txt.xz", "uprobe.report.txt.xz", "uprobe.perf-script.txt.xz"])
def test_text_of_an_event_without_a_known_format_is_kept_and_counted(text: str) -> None:
    """A probe event is in no reference kernel's formats: its text is all a text trace has. It
    is kept, in the event's own table, and counted; the event count is the binary file's."""
    printed = load_trace([FIXTURES / text])
    assert printed.meta["unparsed"] == 0
    (full, table), = printed.event_tables().items()
    assert full.endswith("fields") and printed.df(table).height == 8
    assert printed.df(table)["text"][0].endswith("n=-4 nu=4294967292 raw={0,0,2,0,212,254,255,127} w=0x1bb k=7 t0=0")
    assert [e.count for e in printed.stats.entries() if e.category == "fields_unknown"] == [8]


def test_fixture_captures_hold_every_field_kind() -> None:
    """The fixtures are what the tests above need: each field kind is in them, with real data."""
    kinds = set()
    for name in CAPTURES:
        td = load_trace([FIXTURES / f"{name}.trace.dat"])
        for full in td.event_tables():
            fmt = _format(td, full)
            for f in fmt.fields:
                kinds.add((f.kind, f.dynamic, f.signed if f.kind == "scalar" else None, f.size if f.kind == "scalar"
                           else f.elem_size))
    assert {("chars", False, None, 1), ("chars", True, None, 1), ("bytes", False, None, 1), ("array", False, None, 2),
            ("array", False, None, 4), ("array", False, None, 8)} <= kinds
    for signed in (True, False):
        for size in (1, 2, 4, 8):
            assert ("scalar", False, signed, size) in kinds, (signed, size)
    up = load_trace([FIXTURES / "uprobe.trace.dat"]).df("vpmutest.fields")
    assert "hé \ufffd\ufffd bad utf-8" in up["msg"].to_list() and "" in up["msg"].to_list()
    assert up["temps"].to_list()[1] == [-1, 2, -300, 32767] and up["small"].to_list()[0] == -128
    assert up["mode"].to_list()[0] == 5 and up["level"].to_list()[0] == 17  # bit fields b3@0/32, b5@3/32


def test_fixture_paths() -> None:
    for name in CAPTURES:
        for suffix in ("perf.data", "trace.dat", "ftrace.txt.xz", "report.txt.xz", "report-raw.txt.xz",
                       "perf-script.txt.xz"):
            assert Path(FIXTURES / f"{name}.{suffix}").is_file(), f"{name}.{suffix}"
