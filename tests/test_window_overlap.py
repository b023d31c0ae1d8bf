"""``windows.Overlap`` (guest time inside [a, b) by binary search over a thread's windows, what the
silent analyzer asks for each frozen read and each PMI gap) gives what ``windows.overlap_ns`` (a filter
over the windows) gives, on the guest windows of simulator runs and on windows that overlap, come out
of start order or have null ends (where Overlap hands the query to overlap_ns)."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

from vpmutrace.analyze.windows import Overlap, guest_windows, overlap_ns, thread_overlaps
from vpmutrace.sim import simulate
from vpmutrace.tracedata import load_dataset


def _queries(w: pl.DataFrame, rng: random.Random, n: int = 400) -> list[tuple[int, int]]:
    """Intervals with ends at, just before and just after window edges, and random ones."""
    edges = sorted({x for c in ("start_ns", "end_ns") for x in w[c].drop_nulls().to_list()})
    if not edges:
        return [(0, 10)]
    pts = [x + d for x in edges for d in (-1, 0, 1)] + [edges[0] - 100, edges[-1] + 100]
    out = []
    for _ in range(n):
        a, b = sorted(rng.sample(pts, 2)) if len(pts) > 1 else (pts[0], pts[0] + 1)
        out.append((a, b))
    return out


@pytest.mark.parametrize("scenario", ["pinned-contention", "emulated-watchdog", "mediated-steady"])
def test_overlap_is_overlap_ns_on_simulated_guest_windows(scenario: str, tmp_path: Path) -> None:
    simulate(scenario, "vmx", 3, tmp_path)
    wins = guest_windows(load_dataset(tmp_path / "dataset"))
    per = thread_overlaps(wins)
    assert per and all(ov.exact for ov in per.values())  # a thread's runs: ends in start order
    rng = random.Random(14)
    checked = 0
    for (src, pid), ov in per.items():
        w = wins.filter((pl.col("source") == src) & (pl.col("pid") == pid))
        assert len(ov.s) == w.height
        for a, b in _queries(w, rng):
            assert ov(a, b) == overlap_ns(a, b, w), (src, pid, a, b)
            checked += 1
    assert checked >= 400


def test_overlap_of_windows_out_of_order_overlapping_or_open() -> None:
    rng = random.Random(7)
    for case in range(200):
        n = rng.randint(0, 12)
        starts = [rng.randint(0, 100) for _ in range(n)]
        ends = [None if rng.random() < 0.1 else s + rng.randint(-5, 30) for s in starts]
        if case % 2:  # disjoint runs in order: the binary-search path
            starts, ends, t = [], [], 0
            for _ in range(n):
                t += rng.randint(0, 10)
                starts.append(t)
                t += rng.randint(0, 10)
                ends.append(t)
        w = pl.DataFrame({"start_ns": starts, "end_ns": ends}, schema={"start_ns": pl.Int64, "end_ns": pl.Int64})
        ov = Overlap(w)
        assert ov.exact or case % 2 == 0
        for _ in range(30):
            a = rng.randint(-10, 140)
            b = a + rng.randint(-5, 60)
            assert ov(a, b) == overlap_ns(a, b, w), (starts, ends, a, b)


def test_thread_overlaps_leave_out_threads_without_a_key() -> None:
    w = pl.DataFrame({"source": ["vm", None, "vm"], "pid": [1, 1, None], "start_ns": [0, 0, 0], "end_ns": [5, 5, 5]},
                     schema={"source": pl.String, "pid": pl.Int32, "start_ns": pl.Int64, "end_ns": pl.Int64})
    per = thread_overlaps(w)
    assert list(per) == [("vm", 1)]
    assert per[("vm", 1)](2, 10) == 3
