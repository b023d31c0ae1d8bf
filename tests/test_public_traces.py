"""Every trace.dat and perf.data of the public collection (../shared/traces/public-github, SOURCES.md:
other hosts, kernels 3.x..6.x, x86/i686/arm32/arm64, trace.dat v6 and v7 with zstd/zlib, perf 4.1..4.18
and simpleperf) read as the reference tools read them, compared live:

- trace.dat: the events per event name equal what ``trace-cmd report`` (3.2) prints, and ``vpmutrace
  show`` prints what ``trace-cmd report -N`` prints, line by line (comm, pid, CPU, time, body) for the
  first ROWS lines of every event type on each CPU, but for documented trace-cmd bugs
  (tests/tracecmd_bugs.py; the libtraceevent emulation of tests/libtraceevent_parse.py must print
  trace-cmd's text exactly for the arithmetic ones);
- perf.data: the samples per event equal what ``perf script`` (6.1) prints, and tracepoint bodies
  are perf script's; files perf 6.1 refuses are listed with its reason (PERF_REFUSES), checked to
  be still refused, and read by vpmutrace on their own terms.

The files have no licence to be copied: they are read from ../shared only; without it the tests skip.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import pytest
from conftest import SHARED_TRACES, need_tool, shared, trace_cmd_32
from libtraceevent_parse import trace_cmd_printer
from report_compare import parse_perf_script, parse_report
from tracecmd_bugs import explain

from vpmutrace.readers import load_trace
from vpmutrace.show import _format, _select, lines
from vpmutrace.tracedata import TraceData

PUBLIC = SHARED_TRACES / "public-github"
ABSENT = "(../shared absent)"
DATS = sorted(p.name for p in PUBLIC.glob("*.dat")) if PUBLIC.is_dir() else [ABSENT]
PERFS = sorted(p.name for p in PUBLIC.glob("*.data")) if PUBLIC.is_dir() else [ABSENT]
ROWS = 200  # lines compared per event type and CPU (the first ones): every event type, a bounded time

# files that hold no event record, for trace-cmd 3.2 as for vpmutrace (SOURCES.md)
EMPTY = {
    "aos_v7zstd_tc340_empty.dat": "trace-cmd 3.4 recording whose CPU data sections are empty",
    "hip24_guest_v6_291_truncated.dat": "v6 file cut before its first ring-buffer page",
    "hip24_host_rt_nodata.dat": "recording with no CPU data",
}
# perf.data files perf 6.1 does not read: what it says, and the samples per event vpmutrace reads (their
# totals are SOURCES.md's record counts: 9 SAMPLE records; simpleperf's 0, 2,430, 45 and 2,369 samples)
PERF_REFUSES = {
    # perf record killed (data size 0): records read to the end of the file; the tracing data is in the
    # unreachable feature sections, so the tracepoints stay raw, named by their id and counted
    "perf413_unterminated_datasize0.data": ("data size field is 0",
                                            {"unknown:388": 4, "unknown:268": 3, "unknown:270": 2}),
    # simpleperf: its own feature sections; the tracing data is a record of the data section (read)
    "simpleperf_arm64_200tracepoints.data": ("incompatible file format", {}),
    "simpleperf_arm64_sched_stat_runtime.data": ("incompatible file format", {"sched:sched_stat_runtime": 2430}),
    "simpleperf_arm64_sched_switch.data": ("incompatible file format", {"sched:sched_switch": 31, "cycles": 14}),
    # no tracing data anywhere: the tracepoint's samples stay unnamed (and counted as no_format)
    "simpleperf_arm64_trace_offcpu.data": ("incompatible file format", {"cycles": 2270, "unknown tracepoint": 99}),
}


def _public(name: str) -> Path:
    return shared(f"public-github/{name}") if name != ABSENT else shared("public-github")


@lru_cache(maxsize=1)
def _report(path: Path) -> list[dict[str, str]]:
    out = subprocess.run([trace_cmd_32(), "report", "-N", str(path)], capture_output=True, check=True).stdout
    return parse_report(out.decode("utf-8", "replace"))


def _short(full: str) -> str:
    return full.partition(":")[2] or full


def _per_cpu(td: TraceData) -> Counter[tuple[str, str]]:
    """Rows per (event name, CPU as trace-cmd prints it)."""
    out: Counter[tuple[str, str]] = Counter()
    for full in td.meta["events"]:
        for table, idx in _select(td, full):
            cpus = td.tables[table].column("cpu").to_numpy(zero_copy_only=False)
            out.update((_short(full), f"{c:03d}") for c in (cpus if idx is None else cpus[idx]).tolist())
    return out


def _compare_text(td: TraceData, theirs: list[dict[str, str]]) -> tuple[int, dict[str, set[str]]]:
    """(lines compared, {documented bug: event types}) over the first ROWS lines of every event type on
    each CPU; times are compared where both print them in the same unit."""
    by_event: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for r in theirs:
        if len(by_event[r["event"]][r["cpu"]]) < ROWS:
            by_event[r["event"]][r["cpu"]].append(r)
    fulls = [e for e in td.meta["events"] if td.meta["events"][e]]
    assert len({_short(e) for e in fulls}) == len(fulls), "two systems' events of one name"
    compared, explained = 0, defaultdict(set)
    for full in fulls:
        for cpu, want in by_event[_short(full)].items():
            got = parse_report(list(lines(td, full, ROWS, cpu=int(cpu))))
            emulated = parse_report(list(lines(td, full, ROWS, trace_cmd_printer, int(cpu))))
            assert len(got) == len(want), (full, cpu, len(got), len(want))
            for a, b, c in zip(got, want, emulated, strict=True):
                compared += 1
                assert (a["src"], a["comm"], a["pid"], a["cpu"]) == (b["src"], b["comm"], b["pid"], b["cpu"]), (a, b)
                if ("." in a["ts"]) == ("." in b["ts"]):
                    assert a["ts"] == b["ts"], (full, a, b)
                if a["body"] != b["body"]:
                    bug = explain(_format(td, full), a["body"], b["body"], c["body"])
                    assert bug is not None, f"{full}: we print {a['body']!r}, trace-cmd {b['body']!r}"
                    explained[bug.key].add(full)
    return compared, explained


@pytest.mark.parametrize("name", DATS)
def test_trace_dat_counts_and_text_are_trace_cmds(name: str) -> None:
    path = _public(name)
    theirs = _report(path)
    td = load_trace([path])
    ours = Counter({_short(e): n for e, n in td.meta["events"].items() if n})
    assert ours == Counter(r["event"] for r in theirs)
    assert _per_cpu(td) == Counter((r["event"], r["cpu"]) for r in theirs)
    assert (sum(ours.values()) == 0) == (name in EMPTY)
    compared, _ = _compare_text(td, theirs)
    assert compared >= min(len(theirs), ROWS)
    if theirs and ("." in theirs[0]["ts"]) != (td.meta["time_unit"] == "ns"):
        # trace-cmd prints an x86-tsc file's ticks; vpmutrace converted them with a stated frequency
        assert td.meta["inputs"][0]["time"]["recorded_unit"] == "tsc_ticks" and td.meta["time_unit"] == "ns"


def _perf_events(text: str) -> Counter[str]:
    """Samples per event in ``perf script -F event`` output (one ``name:`` per line)."""
    return Counter(ln.strip().rstrip(":") for ln in text.splitlines() if ln.strip())


@pytest.mark.parametrize("name", PERFS)
def test_perf_data_counts_and_text_are_perf_scripts(name: str) -> None:
    path = _public(name)
    perf = need_tool("perf")
    run = subprocess.run([perf, "script", "-F", "event", "-i", str(path)], capture_output=True, text=True,
                         errors="replace")
    td = load_trace([path])
    ours = Counter({e: n for e, n in td.meta["events"].items() if n})
    if name in PERF_REFUSES:  # still refused; vpmutrace reads it as far as the file allows
        message, counts = PERF_REFUSES[name]
        assert run.returncode != 0 and message in run.stderr, run.stderr[:300]
        assert ours == Counter(counts)
        return
    assert run.returncode == 0, run.stderr[:300]
    assert ours == _perf_events(run.stdout) and ours
    tracepoints = [e for e in ours if td.event_tables().get(e) not in (None, "samples", "unparsed")]
    if not tracepoints:
        return
    full = subprocess.run([perf, "script", "-i", str(path)], capture_output=True, check=True).stdout
    theirs = defaultdict(list)
    for r in parse_perf_script(full.decode("utf-8", "replace")):
        theirs[f"{r['system']}:{r['event']}"].append(r["body"])
    for e in tracepoints:
        assert [r["body"] for r in parse_report(list(lines(td, e)))] == theirs[e], e


def test_every_public_file_is_covered() -> None:
    """The lists above name files that exist (a renamed file must not silently drop a check)."""
    _public(DATS[0])
    names = set(DATS) | set(PERFS)
    assert set(EMPTY) <= names and set(PERF_REFUSES) <= names
    assert not [p.name for p in PUBLIC.iterdir() if p.is_file() and re.search(r"\.(dat|data)$", p.name)
                and p.name not in names]
