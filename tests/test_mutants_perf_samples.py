"""readers/perf_samples.py: every sample of the fixtures' perf.data files against `perf script` of the
same file (time, CPU, process and thread ids, thread name, and for non-tracepoint samples the event
name, period and IP); the sample layout (perf_event.h field order) and how samples of several events
are told apart. Written to kill the mutants mutmut left alive (docs/reliability.md, Mutation testing).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import FIXTURES, need_tool

from vpmutrace.errors import InputError
from vpmutrace.formats import perf_abi as abi
from vpmutrace.readers import load_trace
from vpmutrace.readers.perf_data import Attr
from vpmutrace.readers.perf_samples import FIXED_PART, field_pos, id_index

LINE = re.compile(r"^\s*(?P<comm>.*?)\s+(?P<pid>-?\d+)/(?P<tid>-?\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<s>\d+)\.(?P<ns>\d{9}):"
                  r"\s+(?:(?P<period>\d+) )?(?P<event>[\w:-]+):\s*(?P<ip>[0-9a-f]+)?")


def _perf_script(path: Path, fields: str) -> list[dict]:
    perf = need_tool("perf")
    out = subprocess.run([perf, "script", "-G", "-i", str(path), "-F", fields, "--ns"], capture_output=True, text=True,
                         errors="replace", check=False).stdout
    return [m.groupdict() for m in map(LINE.match, out.splitlines()) if m]  # (-G: the IP on the line)


def _ours(td) -> pl.DataFrame:
    """Every sample of every table as (time, cpu, process id, thread id, thread name)."""
    parts = []
    for name, t in td.tables.items():
        if name in ("lost", "stats"):
            continue
        df = pl.from_arrow(t)
        tid = "tid" if name == "samples" else "pid"
        parts.append(df.select(pl.col("ts_ns").alias("time"), pl.col("cpu").cast(pl.Int64),
                               pl.col("tgid").cast(pl.Int64).alias("pid"), pl.col(tid).cast(pl.Int64).alias("tid"),
                               pl.col("comm").cast(pl.String)))
    return pl.concat(parts).sort(pl.all())


@pytest.mark.parametrize("name", ["mixed.perf.data", "microguest200.perf.data", "uprobe.perf.data",
                                  "cpuclock.perf.data", "microguest50-zstd.perf.data"])
def test_every_sample_equals_perf_script(name: str) -> None:
    path = FIXTURES / name
    theirs = _perf_script(path, "comm,pid,tid,cpu,time,event")
    assert theirs, f"perf script printed nothing for {name}"
    ref = pl.DataFrame([{"time": int(r["s"]) * 10**9 + int(r["ns"]), "cpu": int(r["cpu"]), "pid": int(r["pid"]),
                         # (perf names a thread it has no COMM for ":<tid>"; the tables leave it null)
                         "tid": int(r["tid"]), "comm": None if re.fullmatch(r":-?\d+", r["comm"]) else r["comm"]}
                        for r in theirs]).sort(pl.all())
    td = load_trace([path])
    ours = _ours(td)
    assert ours.height == ref.height == sum(td.meta["events"].values())
    assert ours.equals(ref)


def test_cpu_clock_samples_equal_perf_script_with_event_period_and_ip() -> None:
    """Non-tracepoint samples (cpu-clock, -F 1000: each carries its period): in time order, with
    the event's name, the period and the IP perf prints; seq numbers them in file order."""
    path = FIXTURES / "cpuclock.perf.data"
    theirs = _perf_script(path, "comm,pid,tid,cpu,time,event,period,ip")
    s = load_trace([path]).df("samples")
    assert s.height == len(theirs) > 1000
    assert s["ts_ns"].is_sorted() and sorted(s["seq"].to_list()) == list(range(s.height))
    got = sorted(zip(s["ts_ns"].to_list(), s["cpu"].to_list(), s["tgid"].to_list(), s["tid"].to_list(),
                     s["event"].cast(pl.String).to_list(), s["period"].to_list(), s["ip"].to_list(), strict=True))
    want = sorted((int(r["s"]) * 10**9 + int(r["ns"]), int(r["cpu"]), int(r["pid"]), int(r["tid"]), r["event"],
                   int(r["period"]), int(r["ip"], 16)) for r in theirs)
    assert got == want
    assert s["pid"].to_list() == s["tid"].to_list()  # the thread is the row's pid, as in the tracepoint tables


def _attr(st: int, ids: list[int], rf: int = 0) -> Attr:
    return Attr(type=2, config=1, sample_type=st, read_format=rf, flags=0, ids=ids)


def test_fixed_part_positions_follow_perf_event_h() -> None:
    """perf_event.h: { IDENTIFIER, IP, TID (pid, tid), TIME, ADDR, ID, STREAM_ID, CPU (cpu, res), PERIOD },
    8 bytes each, a field present only when its bit is set."""
    full = sum(FIXED_PART)
    assert [field_pos(full, b) for b in FIXED_PART] == [0, 8, 16, 24, 32, 40, 48, 56, 64]
    st = abi.S_IP | abi.S_TID | abi.S_TIME | abi.S_CPU | abi.S_PERIOD | abi.S_RAW  # perf record -e tracepoint
    assert [field_pos(st, b) for b in FIXED_PART] == [-1, 0, 8, 16, -1, -1, -1, 24, 32]
    st = abi.S_IDENTIFIER | abi.S_TIME | abi.S_ID | abi.S_READ  # READ comes after PERIOD: not in the fixed part
    assert [field_pos(st, b) for b in FIXED_PART] == [0, -1, -1, 8, -1, 16, -1, -1, -1]


def test_samples_of_several_events_are_told_apart_by_id() -> None:
    tp = abi.S_IP | abi.S_TID | abi.S_TIME | abi.S_CPU | abi.S_RAW
    assert id_index([_attr(tp, [5])], "f")[:2] == (0, 0)
    assert len(id_index([_attr(tp, [5])], "f")[2]) == 0
    mode, pos, ids, idx = id_index([_attr(tp | abi.S_IDENTIFIER | abi.S_ID, [30, 10]),
                                    _attr(tp | abi.S_IDENTIFIER, [20, 10])], "f")
    assert (mode, pos) == (1, 0)  # IDENTIFIER first in every sample: position 0
    assert ids.dtype == np.uint64 and ids.tolist() == [10, 10, 20, 30] and idx.tolist() == [0, 1, 1, 0]
    mode, pos, ids, idx = id_index([_attr(tp | abi.S_ID, [7, 9]), _attr(tp | abi.S_ID, [8])], "f")
    assert (mode, pos, ids.tolist(), idx.tolist()) == (2, 24, [7, 8, 9], [0, 1, 0])  # IP, TID, TIME, then ID
    assert idx.dtype == np.int64
    with pytest.raises(InputError, match="several events but samples carry no ID/IDENTIFIER") as e:
        id_index([_attr(tp | abi.S_ID, [1]), _attr(tp, [2])], "trace.perf.data")
    assert "trace.perf.data" in str(e.value)
