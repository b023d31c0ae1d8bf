"""``vpmutrace show`` prints every event type as trace-cmd 3.2 prints it (``trace-cmd report -N``: no
plugins) and perf.data events as ``perf script`` prints them, line body by line body, event type by
event type; the only differences allowed are trace-cmd's documented bugs (tests/tracecmd_bugs.py),
where the kernel's own text of the same records is what we print. Rows printed without their print
fmt are counted in the trace's stats with their event and an example.

fixtures/allevents.* (PROVENANCE.md): a capture of every tracepoint of a 6.18 kernel (429 event types,
a few records each) with trace-cmd 3.2's report and the kernel's text stored beside it, so a clean
clone runs the comparison without trace-cmd; the other traces are compared with trace-cmd 3.2 and
perf when this host has them.
"""

from __future__ import annotations

import json
import lzma
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import COMMON_FORMAT_FIELDS, FIXTURES, ROOT, need_tool, shared, trace_cmd_32
from libtraceevent_parse import trace_cmd_printer
from report_compare import parse_perf_script, parse_report
from tracecmd_bugs import BUGS, explain
from typer.testing import CliRunner

from vpmutrace.cli import app
from vpmutrace.readers import LoadOptions, load_trace
from vpmutrace.readers.trace_dat import content_of
from vpmutrace.show import _format, lines, text_fallbacks
from vpmutrace.stats import TEXT_NO_PRINT_FMT
from vpmutrace.tracedata import TraceData
from vpmutrace.writers.trace_dat import write_trace_dat

ALLEVENTS = FIXTURES / "allevents.trace.dat"
# the event types of the all-events capture trace-cmd prints wrongly (each explained by a documented bug)
ALLEVENTS_TRACE_CMD_BUGS = {
    "kvm_inj_exception": "empty-symbol-table", "ma_op": "non-printable-in-format",
    "ma_read": "non-printable-in-format", "ma_write": "non-printable-in-format",
    "timer_start": "operator-association", "writeback_dirty_inode": "zero-flags-print-a-name",
    "writeback_dirty_inode_start": "zero-flags-print-a-name", "writeback_mark_inode_dirty": "zero-flags-print-a-name",
}


def _xz_text(name: str) -> str:
    return lzma.decompress((FIXTURES / name).read_bytes()).decode("utf-8", "replace")


def _grouped(rows: list[dict[str, str]]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in rows:
        out[r["event"], r["cpu"]].append(r["body"])
    return out


def _pairs(ours: list[dict[str, str]], theirs: list[dict[str, str]], emulated: list[dict[str, str]]
           ) -> Iterator[tuple[str, str, str, str]]:
    """(event, our body, their body, our body with libtraceevent's arithmetic) of every line, matched
    per event and CPU in order."""
    a, b, c = _grouped(ours), _grouped(theirs), _grouped(emulated)
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in b.items()}, "lines per event and CPU"
    for key, bodies in a.items():
        for x, y, z in zip(bodies, b[key], c[key], strict=True):
            yield key[0], x, y, z


def _full_names(td: TraceData) -> dict[str, str]:
    out: dict[str, str] = {}
    for full in td.event_tables():
        short = full.partition(":")[2] or full
        assert out.setdefault(short, full) == full, f"two events named {short}"
    return out


def compare(td: TraceData, theirs: list[dict[str, str]]) -> tuple[set[str], dict[str, set[str]]]:
    """The event types compared, and per documented bug the event types it explains; fails on any
    difference no documented bug explains."""
    names = _full_names(td)
    explained: dict[str, set[str]] = defaultdict(set)
    events: set[str] = set()
    emulated = parse_report(list(lines(td, as_trace_cmd=trace_cmd_printer)))
    for event, ours, their, ours_as_trace_cmd in _pairs(parse_report(list(lines(td))), theirs, emulated):
        events.add(event)
        if ours != their:
            bug = explain(_format(td, names[event]), ours, their, ours_as_trace_cmd)
            assert bug is not None, f"{event}: we print {ours!r}, trace-cmd {their!r}"
            explained[bug.key].add(event)
    return events, explained


def test_every_event_type_of_the_all_events_capture_prints_as_trace_cmd() -> None:
    td = load_trace([ALLEVENTS])
    events, explained = compare(td, parse_report(_xz_text("allevents.report.txt.xz")))
    assert len(events) == len(td.event_tables()) == 429
    assert {e: k for k, evs in explained.items() for e in evs} == ALLEVENTS_TRACE_CMD_BUGS


@pytest.fixture(scope="module")
def allevents_lines() -> list[str]:
    return list(lines(load_trace([ALLEVENTS])))


def test_zlib_v7_and_v6_copies_print_the_same_lines(tmp_path: Path, allevents_lines: list[str]) -> None:
    c = content_of(ALLEVENTS)
    for version, codec in ((7, "zlib"), (6, "none")):
        out = write_trace_dat(tmp_path / f"allevents-{codec}.dat", c, version, codec)
        assert list(lines(load_trace([out]))) == allevents_lines, codec


KERNEL_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>\d+\.\d+): "
                         r"(?P<event>\w+): (?P<body>.*)$")
# the part of each line a documented bug is about, where the kernel prints it as we do (the kernel's
# %p hashes pointers, so whole lines are compared only where the text holds none)
KERNEL_PARTS = {
    "empty-symbol-table": r"^(.*)$",
    "non-printable-in-format": r"^(\w+\t)\w*:? \S+ (\(\d+ \d+\) range: ?\d+-\d+)",
    "operator-association": r"(flags=\S*)$",
    "zero-flags-print-a-name": r"(state= )",  # (rows whose state is 0; others are named from unknown enums)
}


def test_where_trace_cmd_is_wrong_we_print_the_kernels_text(allevents_lines: list[str]) -> None:
    kernel: dict[tuple[str, str], list[str]] = defaultdict(list)
    for ln in _xz_text("allevents.ftrace.txt.xz").splitlines():
        m = KERNEL_LINE.match(ln)
        if m is None:  # (syscalls print "sys_x(...)" / "sys_x -> ret", no event name)
            continue
        kernel[m["event"], str(int(m["cpu"])).zfill(3)].append(m["body"])
    ours: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in parse_report(allevents_lines):
        ours[r["event"], r["cpu"]].append(r["body"])
    checked = 0
    seen: set[str] = set()
    for (event, cpu), bodies in ours.items():
        bug = ALLEVENTS_TRACE_CMD_BUGS.get(event)
        if bug is None:
            continue
        assert len(bodies) == len(kernel[event, cpu]), event
        for a, b in zip(bodies, kernel[event, cpu], strict=True):
            pa, pb = re.search(KERNEL_PARTS[bug], a), re.search(KERNEL_PARTS[bug], b)
            if pa is None and bug == "zero-flags-print-a-name":
                continue
            assert pa and pb and pa.groups() == pb.groups(), (event, a, b)
            checked += 1
            seen.add(event)
    assert seen == set(ALLEVENTS_TRACE_CMD_BUGS) and checked >= 20


def test_every_documented_bug_says_why() -> None:
    for b in BUGS:
        assert b.why and b.trace_cmd_prints and "(" in b.why, b.key  # names the libtraceevent function


TRACE_DATS = ["fixtures/mixed.trace.dat", "fixtures/uprobe.trace.dat", "fixtures/microguest200.trace.dat",
              "fixtures/allevents.trace.dat", "shared:captured-here/microguest_tracefs_extract.trace.dat"]


def _path(where: str) -> Path:
    return shared(where.removeprefix("shared:")) if where.startswith("shared:") else ROOT / where


@pytest.mark.parametrize("where", TRACE_DATS)
def test_trace_dat_prints_as_trace_cmd_3_2_prints_it(where: str, tmp_path: Path) -> None:
    path = _path(where)
    tc = trace_cmd_32()
    td = load_trace([path])
    for p in (path, write_trace_dat(tmp_path / "zlib.dat", content_of(path), 7, "zlib")):
        report = subprocess.run([tc, "report", "-N", str(p)], capture_output=True, check=True).stdout
        events, _ = compare(td, parse_report(report.decode("utf-8", "replace")))
        assert events == set(_full_names(td)), p


PERF_DATAS = ["fixtures/mixed.perf.data", "fixtures/uprobe.perf.data", "fixtures/microguest200.perf.data",
              "fixtures/microguest50-zstd.perf.data", "fixtures/probe.data.file",
              "shared:captured-here/microguest_perf_record.perf.data", "shared:public/perfparser/probe.data.stream"]


@pytest.mark.parametrize("where", PERF_DATAS)
def test_perf_data_prints_as_perf_script_prints_it(where: str) -> None:
    path = _path(where)
    perf = need_tool("perf")
    out = subprocess.run([perf, "script", "-i", str(path)], capture_output=True)
    if out.returncode:
        pytest.skip(f"perf script cannot read {path.name}: {out.stderr.decode(errors='replace')[:200]}")
    td = load_trace([path])
    events, _ = compare(td, parse_perf_script(out.stdout.decode("utf-8", "replace")))
    assert events == set(_full_names(td))


def test_rows_printed_without_their_print_fmt_are_counted() -> None:
    """kvm_mmu_get_page's print fmt calls kernel code (a statement expression): its rows print as
    trace-cmd prints them, [FAILED TO PARSE] and the fields, and each is counted with an example."""
    td = load_trace([ALLEVENTS])
    shown = list(lines(td, "kvmmmu:kvm_mmu_get_page"))
    assert shown and all("[FAILED TO PARSE] mmu_valid_gen=" in ln for ln in shown)
    (entry,) = [e for e in td.stats.entries() if e.category == TEXT_NO_PRINT_FMT and e.name.endswith("get_page")]
    assert entry.count == len(shown) == td.meta["events"]["kvmmmu:kvm_mmu_get_page"]
    assert entry.examples and "print fmt does not parse" in entry.examples[0]
    assert [f["event"] for f in text_fallbacks(td)] == ["kvmmmu:kvm_mmu_get_page"]


def test_show_reports_its_fallbacks_at_the_end_and_in_json() -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["show", str(ALLEVENTS), "--event", "kvm_mmu_prepare_zap_page"])
    assert r.exit_code == 0
    assert "[FAILED TO PARSE]" in r.stdout
    assert re.search(r"vpmutrace show: \d+ kvmmmu:kvm_mmu_prepare_zap_page row\(s\) text_no_print_fmt", r.stderr)
    r = runner.invoke(app, ["show", str(ALLEVENTS), "--event", "kvm_mmu_prepare_zap_page", "--json"])
    doc = json.loads(r.stdout)
    assert doc["fallbacks"][0]["count"] == len(doc["lines"]) > 0 and doc["fallbacks"][0]["examples"]


MADE_UP = """name: {name}
ID: {id}
format:
""" + COMMON_FORMAT_FIELDS + """
\tfield:unsigned long ip;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const char * s;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int x;\toffset:24;\tsize:4;\tsigned:0;
\tfield:char buf[];\toffset:28;\tsize:0;\tsigned:0;

print fmt: {fmt}
"""


def _made_up_trace(tmp_path: Path, zero: bool = True) -> Path:
    """A trace.dat of two made-up events with kallsyms and printk strings (``zero``: with a row whose
    print fmt divides by zero)."""
    import struct

    import numpy as np

    from vpmutrace.formats.known import reference_ring_headers
    from vpmutrace.writers.ringbuf import pack_pages
    from vpmutrace.writers.trace_dat import BufferData, TraceDatContent

    texts = [MADE_UP.format(name="marker", id=901, fmt='"%ps %s: %s", (void *)REC->ip, REC->s, REC->buf'),
             MADE_UP.format(name="ratio", id=902, fmt='"%u per %u", 100 / REC->x, REC->x')]

    def rec(eid: int, ip: int, s: int, x: int, buf: bytes) -> bytes:
        return struct.pack("<HBBiQQI", eid, 0, 0, 42, ip, s, x) + buf

    payloads = [rec(901, 0xFFFFFFFF81000104, 0xFFFFFFFF82000000, 0, b"two lines\n\n\0"),
                rec(901, 0xFFFFFFFF81000200, 0xFFFFFFFF82000008, 0, b"one\n\0\0\0"),
                rec(902, 0, 0, 4, b""), rec(902, 0, 0, 0, b"")][:4 if zero else 3]
    hp, he = reference_ring_headers()
    c = TraceDatContent(page_size=4096, header_page=hp, header_event=he,
                        event_formats={"test": [t.encode() for t in texts]}, cmdlines=b"42 task\n",
                        kallsyms=b"ffffffff81000100 T do_foo\nffffffff81000200 T do_bar\nffffffff81000300 T end\n",
                        printk=b'0xffffffff82000000 : "hello printk\\n"\n',
                        buffers=[BufferData("", "local", {0: pack_pages(payloads, 1000 + np.arange(len(payloads)))})],
                        cpucount=1, trace_clock="[local] global")
    return write_trace_dat(tmp_path / f"made-up-{zero}.dat", c, 7, "zlib")


def test_kallsyms_printk_newlines_and_failed_rows(tmp_path: Path) -> None:
    """%ps from the file's kallsyms, %s of a char * from its printk strings (else the bare address),
    one trailing newline dropped (a second stays, as trace-cmd prints it), and a row whose print fmt
    fails (a division by zero: trace-cmd would crash) printed as its fields and counted."""
    path = _made_up_trace(tmp_path)
    td = load_trace([path])
    ours = list(lines(td))
    got = [ln.split(": ", 2)[2].lstrip() for ln in ours]
    assert got == ["do_foo hello printk: two lines\n", "do_bar ffffffff82000008: one", "25 per 4",
                   "ip=0 s=0 x=0 buf="]
    (entry,) = [e for e in td.stats.entries() if e.category == "text_row_failed"]
    assert entry.name == "test:ratio" and entry.count == 1 and "division by zero" in entry.examples[0]
    tc = None
    try:
        tc = trace_cmd_32()
    except pytest.skip.Exception:
        pass
    if tc is not None:  # trace-cmd prints the same lines, and dies of the division by zero (SIGFPE)
        assert subprocess.run([tc, "report", "-N", str(path)], capture_output=True).returncode == -8
        report = subprocess.run([tc, "report", "-N", str(_made_up_trace(tmp_path, zero=False))],
                                capture_output=True, check=True).stdout.decode()
        assert report.partition("\n")[2] == "\n".join(ours[:3]) + "\n"


def _tsc_ticks_trace(tmp_path: Path) -> Path:
    """fixtures/tsc-clock.trace.dat with the clock its instance really had (x86-tsc; trace-cmd extract
    recorded "local") and its hrtimer event renamed, so that nothing in it gives the TSC frequency: a
    trace whose times can only stay ticks."""
    c = content_of(FIXTURES / "tsc-clock.trace.dat")
    for b in c.buffers:
        b.clock = "x86-tsc"
    c.trace_clock = c.trace_clock.replace("[local]", "local").replace("x86-tsc", "[x86-tsc]")
    c.event_formats["timer"] = [f.replace(b"name: hrtimer_expire_entry\n", b"name: hrtimer_expire_entry_\n")
                                for f in c.event_formats["timer"]]
    return write_trace_dat(tmp_path / "ticks.dat", c, 7, "zstd")


def _report_lines(tc: str, path: Path, *options: str) -> list[str]:
    out = subprocess.run([tc, "report", "-N", *options, str(path)], capture_output=True, check=True).stdout
    return [ln for ln in out.decode("utf-8", "replace").splitlines() if not ln.startswith("cpus=")]


def test_show_prints_ticks_as_trace_cmd_prints_them(tmp_path: Path) -> None:
    """A trace in TSC ticks with no frequency known: every line, time included, is trace-cmd 3.2's
    ("[000]25560928714680:", %12llu glued to the CPU column); with --tsc-khz the times are seconds, the
    ns trace-cmd prints with --ts2secs at the same frequency rounded to the microsecond."""
    dat = _tsc_ticks_trace(tmp_path)
    td = load_trace([dat])
    assert td.meta["time_unit"] == "tsc_ticks"
    ours = list(lines(td))
    assert len(ours) == sum(td.meta["events"].values()) > 1000
    assert all(re.search(r"\[\d{3}\]\d{14}: ", ln) for ln in ours)
    tc = trace_cmd_32()
    assert ours == _report_lines(tc, dat)
    khz = 2_599_998  # the project host's TSC (fixtures/PROVENANCE.md)
    secs = list(lines(load_trace([dat], LoadOptions(tsc_khz=khz))))
    theirs = _report_lines(tc, dat, "--ts2secs", str(khz * 1000))  # (x86-tsc: printed as integer ns)

    def micros(m: re.Match[str]) -> str:
        us = (int(m.group(1)) + 500) // 1000
        return f"] {us // 1_000_000:5d}.{us % 1_000_000:06d}:"

    assert secs == [re.sub(r"\](\d+):", micros, ln, count=1) for ln in theirs]
    assert secs != ours


def test_show_prints_a_ns_clock_as_trace_cmd_prints_it() -> None:
    """The same capture as recorded (clock "local", ns): every line, time included, as trace-cmd 3.2."""
    path = FIXTURES / "tsc-clock.trace.dat"
    ours = list(lines(load_trace([path])))
    assert all(re.search(r"\[\d{3}\] \d{5}\.\d{6}: ", ln) for ln in ours)
    assert ours == _report_lines(trace_cmd_32(), path)
