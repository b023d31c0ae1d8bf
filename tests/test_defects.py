"""Tests that catch realistic one-line defects (issue 15, item 7; benchmarks/mutants/planted.py plants
each one): every value is checked against an independent computation on real traces, or against perf's
and trace-cmd's own reading of the same file."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import polars as pl
import pytest
from conftest import FIXTURES, need_tool, shared

from vpmutrace.analyze.exits import stats
from vpmutrace.analyze.windows import exit_intervals
from vpmutrace.readers import load_trace
from vpmutrace.tracedata import TraceData

TWO_VCPUS = "public-github/hip24_host_kvm_2vcpu.dat"


def _expected_pairs(td: TraceData) -> dict[int, int | None]:
    """exit_row -> handling ns by the rule written out by hand: the next event of the same (source,
    vCPU thread) among kvm_exit/kvm_entry, in (ts, seq) order, if it is an entry; else None."""
    ex = td.df("kvm_exit").with_row_index("exit_row").select(
        "exit_row", "ts_ns", "seq", pl.col("source").cast(pl.String), "pid", pl.lit(True).alias("is_exit"))
    en = td.df("kvm_entry").select(pl.lit(None, pl.UInt32).alias("exit_row"), "ts_ns", "seq",
                                   pl.col("source").cast(pl.String), "pid", pl.lit(False).alias("is_exit"))
    rows = pl.concat([ex, en]).sort("source", "pid", "ts_ns", "seq").rows(named=True)
    out: dict[int, int | None] = {}
    for a, b in zip(rows, rows[1:] + [None], strict=True):
        if not a["is_exit"]:
            continue
        same = b is not None and (b["source"], b["pid"]) == (a["source"], a["pid"])
        out[a["exit_row"]] = b["ts_ns"] - a["ts_ns"] if same and not b["is_exit"] else None
    return out


def _check_pairs(td: TraceData) -> int:
    """Every trusted pair is the hand rule's; every exit the rule leaves without an entry is unpaired for
    that reason. Returns how many pairs were compared."""
    want = _expected_pairs(td)
    iv = exit_intervals(td)
    n = 0
    for row, handling, why in iv.select("exit_row", "handling_ns", "unpaired").iter_rows():
        if want[row] is None:
            assert why == "no_entry", (row, why)
        elif why is None:
            assert handling == want[row], (row, handling, want[row])
            n += 1
    return n


def test_exits_pair_with_the_next_event_of_their_vcpu_thread_on_a_two_vcpu_host() -> None:
    """Two vCPU threads sharing two host CPUs (a public host capture): pairing by CPU, or with the next
    event of any kind, gives other pairs than the hand rule."""
    td = load_trace([shared(TWO_VCPUS)])
    threads = td.df("kvm_exit").select("cpu", "pid").unique()
    assert threads["pid"].n_unique() >= 2 and threads.height > threads["pid"].n_unique()  # threads move
    assert _check_pairs(td) > 1000


@pytest.mark.parametrize(("name", "pairs"), [(TWO_VCPUS, 1000), ("lkml_krause_vmx_nested_6x_ftrace.txt", 8)])
def test_an_exit_whose_entry_was_lost_is_not_paired_with_the_next_exit(name: str, pairs: int) -> None:
    """Real traces with every 5th kvm_entry removed (what a lost event does): the exit before a removed
    entry is followed by the thread's next exit, and stays unpaired."""
    td = load_trace([shared(name) if "/" in name else FIXTURES / name])
    en = td.tables["kvm_entry"]
    keep = pl.from_arrow(en).with_row_index("_i").filter(pl.col("_i") % 5 != 4).drop("_i").to_arrow()
    thin = dataclasses.replace(td, tables={**td.tables, "kvm_entry": keep.cast(en.schema)})
    assert _check_pairs(thin) >= pairs
    iv = exit_intervals(thin)
    assert iv.filter(pl.col("unpaired") == "no_entry").height >= en.num_rows // 5


def test_exit_statistics_are_perf_kvm_stat_nearest_rank_percentiles() -> None:
    """p50/p99/min/max per reason against a by-hand nearest-rank computation on a real host trace."""
    td = load_trace([shared(TWO_VCPUS)])
    iv = exit_intervals(td).filter(pl.col("handling_ns").is_not_null())
    got = {r["reason"]: r for r in stats(iv, ["reason"]).iter_rows(named=True)}
    checked = 0
    for reason, g in iv.group_by("reason"):
        v = sorted(g["handling_ns"].to_list())
        r = got[reason[0]]
        assert (r["min_ns"], r["max_ns"], r["samples"]) == (v[0], v[-1], len(v))
        idx = round(0.99 * (len(v) - 1))
        if len(v) >= 100 and v[idx] != v[round(0.95 * (len(v) - 1))]:
            assert r["p99_ns"] == v[idx], reason
            checked += 1
    assert checked >= 2


def _perf_report_lost(perf: str, path: Path) -> tuple[int, int]:
    """The sums of PERF_RECORD_LOST's and PERF_RECORD_LOST_SAMPLES's counts, as perf's raw dump prints them."""
    dump = subprocess.run([perf, "report", "-D", "-i", str(path)], capture_output=True, text=True,
                          check=False).stdout
    return (sum(int(n) for n in re.findall(r"PERF_RECORD_LOST: id:\d+: lost:(\d+)", dump)),
            sum(int(n) for n in re.findall(r"PERF_RECORD_LOST_SAMPLES: id:\d+: lost samples :(\d+)", dump)))


def test_perf_lost_counts_equal_perfs_own(tmp_path: Path) -> None:
    """perf record with 4-page buffers, stopped for 2 s while a guest runs: the LOST and LOST_SAMPLES
    records' counts (not their ids) summed equal what `perf report -D` prints."""
    import os
    import signal
    import sys
    import time

    if os.geteuid() != 0 or not Path("/dev/kvm").exists():
        pytest.skip("needs root and /dev/kvm to record")
    perf = need_tool("perf")
    from collectors.perf_backend import PerfCapture

    guest = Path(__file__).resolve().parents[1] / "collectors" / "microguest.py"
    cap = PerfCapture(perf, ["kvm:kvm_msr", "kvm:kvm_exit"], tmp_path / "p.perf.data", mmap_pages="4")
    cap.start([sys.executable, str(guest), "-n", "100000000", "--timeout", "6", "-q"], None)
    assert cap.proc is not None
    time.sleep(2)
    cap.proc.send_signal(signal.SIGSTOP)
    time.sleep(2)
    cap.proc.send_signal(signal.SIGCONT)
    cap.wait(timeout=60)
    td = load_trace([tmp_path / "p.perf.data"])
    lost, lost_samples = _perf_report_lost(perf, tmp_path / "p.perf.data")
    ours = dict(td.df("lost").group_by("kind").agg(pl.col("count").sum()).rows())
    assert lost > 0 and ours.get("lost_events") == lost
    assert ours.get("lost_samples", 0) == lost_samples and td.meta["lost_events"] == lost + lost_samples
