"""Exit/entry pairing range by range (vpmutrace/analyze/runloop.py) gives the whole trace's rows, and
the exits analyzer's statistics counted range by range are polars' own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.conftest import FIXTURES, shared
from vpmutrace.analyze import exits, run, runloop
from vpmutrace.analyze.context import Config
from vpmutrace.readers import load_trace
from vpmutrace.sim import SCENARIOS, simulate
from vpmutrace.tracedata import TraceData, load_dataset

EXIT_TRACES = ("lkml_krause_vmx_nested_6x_ftrace.txt", "lkml_shukla_svm_idle_hlt_6x.txt",
               "lkml_rak_ept_violation_loop_host_write_msr.txt", "lkml_avery_svm_plugin_format_nmi.txt",
               "lkml_exception_nmi_not_nmi.txt")


def _intervals(td: TraceData, rows: int) -> pl.DataFrame:
    return pl.concat(list(runloop.exit_interval_chunks(td, rows))).sort("exit_row")


def _same_in_ranges(td: TraceData, sizes: tuple[int, ...]) -> None:
    whole = _intervals(td, runloop.ONE_RANGE)
    assert whole.height == td.row_counts().get("kvm_exit", 0)
    assert whole["exit_row"].to_list() == list(range(whole.height))
    for rows in sizes:
        assert_frame_equal(_intervals(td, rows), whole)


@pytest.mark.parametrize("name", EXIT_TRACES)
def test_real_traces_pair_alike_in_ranges_of_a_few_exits(name: str) -> None:
    td = load_trace([FIXTURES / name])
    _same_in_ranges(td, (1, 2, 7))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("isa", ["vmx", "svm"])
def test_simulator_traces_pair_alike_in_ranges(scenario: str, isa: str, tmp_path: Path) -> None:
    simulate(scenario, isa, 3, tmp_path)
    _same_in_ranges(load_dataset(tmp_path / "dataset"), (1, 13, 97))


def test_public_vmx_host_capture_pairs_alike_in_ranges() -> None:
    """110,653 exits of a real VMX host (hip24, 2 vCPUs), the lazy dataset path: pyarrow batches."""
    td = load_trace([shared("public-github/hip24_host_kvm_2vcpu.dat")])
    _same_in_ranges(td, (4099,))


def test_a_saved_dataset_is_read_in_batches_as_in_memory(tmp_path: Path) -> None:
    td = load_trace([FIXTURES / "lkml_krause_vmx_nested_6x_ftrace.txt"])
    td.save(tmp_path / "ds")
    lazy = load_dataset(tmp_path / "ds")
    got = pl.concat(list(lazy.batches("kvm_exit", ["ts_ns", "reason", "pid"], 3)))
    assert_frame_equal(got, td.df("kvm_exit").select("ts_ns", "reason", "pid"))
    assert_frame_equal(_intervals(lazy, 2), _intervals(td, runloop.ONE_RANGE))


def _tables(rows: list[tuple]) -> TraceData:
    """A trace of kvm_exit (kind "x") and kvm_entry ("n") rows: (kind, ts, pid, rip)."""
    ex = [r for r in rows if r[0] == "x"]
    en = [r for r in rows if r[0] == "n"]
    base = load_trace([FIXTURES / "lkml_krause_vmx_nested_6x_ftrace.txt"])
    x0, n0 = base.df("kvm_exit").head(1), base.df("kvm_entry").head(1)

    def frame(proto: pl.DataFrame, rs: list[tuple], rip: str) -> pl.DataFrame:
        return pl.concat([proto.with_columns(pl.lit(t, pl.Int64).alias("ts_ns"), pl.lit(i, pl.Int64).alias("seq"),
                                             pl.lit(p, pl.Int32).alias("pid"), pl.lit(r, pl.UInt64).alias(rip))
                          for i, (_, t, p, r) in enumerate(rs)])
    return TraceData({"kvm_exit": frame(x0, ex, "guest_rip").to_arrow(),
                      "kvm_entry": frame(n0, en, "rip").to_arrow()}, dict(base.meta))


def test_many_exits_at_one_time_stamp_stay_in_one_range() -> None:
    """A range ends after ``rows`` exits unless more share the time stamp: the range then takes them all
    (a range of one time stamp never splits, whatever ``rows``)."""
    rows = [("x", 100, 1, 0x10), ("x", 100, 2, 0x20), ("x", 100, 3, 0x30), ("n", 150, 1, 0x10),
            ("n", 150, 2, 0x20), ("x", 200, 1, 0x10), ("n", 250, 3, 0x30), ("n", 260, 1, 0x10)]
    td = _tables(rows)
    src = runloop._sources(td)
    parts = [(p["exit"]["ts_ns"].to_list(), last) for p, last in runloop.time_chunks(td, src, "exit", 1)]
    assert parts == [([100, 100, 100], False), ([200], True)]
    iv = _intervals(td, 1)
    assert iv["handling_ns"].to_list() == [50, 50, 150, 60]
    assert_frame_equal(iv, _intervals(td, runloop.ONE_RANGE))


def test_an_exit_waits_across_ranges_for_its_entry() -> None:
    """Thread 1 exits at 100 and enters only at 900, after three ranges of thread 2's traffic."""
    rows = [("x", 100, 1, 0x10), ("x", 200, 2, 0x20), ("n", 210, 2, 0x20), ("x", 300, 2, 0x20),
            ("n", 310, 2, 0x20), ("x", 400, 2, 0x20), ("n", 410, 2, 0x20), ("n", 900, 1, 0x10)]
    iv = _intervals(_tables(rows), 1)
    assert iv.select("ts_ns", "pid", "handling_ns").rows() == [(100, 1, 800), (200, 2, 10), (300, 2, 10),
                                                             (400, 2, 10)]


def test_tables_out_of_time_order_are_paired_in_one_range() -> None:
    """A table whose times go back (a text trace with lines out of order) cannot be cut at a time: it is
    paired whole, as before ranges existed."""
    rows = [("x", 100, 1, 0x10), ("x", 300, 2, 0x20), ("x", 200, 1, 0x10), ("n", 150, 1, 0x10),
            ("n", 250, 1, 0x10), ("n", 350, 2, 0x20)]
    td = _tables(rows)
    assert not runloop.in_time_order(td.batches("kvm_exit", ("ts_ns",), 2))
    iv = _intervals(td, 1)
    assert iv.select("ts_ns", "handling_ns").rows() == [(100, 50), (300, 50), (200, 50)]


@pytest.mark.parametrize("seed", range(6))
def test_statistics_from_counts_are_polars_statistics(seed: int) -> None:
    """stats_of_counts (exits counted range by range) against polars' own aggregates on the rows."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    df = pl.DataFrame({"reason": rng.choice(["HLT", "MSR_WRITE", "EPT_VIOLATION", "IO"], n),
                       "handling_ns": rng.integers(0, 50 if seed % 2 else 10**7, n)})
    h = pl.col("handling_ns")
    ref = df.group_by("reason").agg(pl.len().alias("samples"), h.sum().alias("time_ns"), h.min().alias("min_ns"),
                                    h.max().alias("max_ns"), h.mean().alias("mean_ns"), h.median().alias("p50_ns"),
                                    h.quantile(0.99, "nearest").alias("p99_ns"), h.std().alias("stddev_ns"))
    got = exits.stats(df, ["reason"])
    j = got.join(ref, on="reason", suffix="_ref")
    assert j.height == ref.height
    for c in ("samples", "time_ns", "min_ns", "max_ns", "p50_ns", "p99_ns"):
        assert j[c].to_list() == j[f"{c}_ref"].to_list(), c
    for c in ("mean_ns", "stddev_ns"):
        assert np.allclose(j[c].fill_null(-1).to_numpy(), j[f"{c}_ref"].fill_null(-1).to_numpy(), rtol=1e-12), c
    assert got["samples"].to_list() == sorted(got["samples"].to_list(), reverse=True)


def test_analyze_without_row_tables_gives_the_same_document() -> None:
    """`analyze` without -o keeps no row tables (Options.row_tables False): the document is the same."""
    td = load_trace([FIXTURES / "lkml_krause_vmx_nested_6x_ftrace.txt"])
    with_rows, r1 = run(td, Config.for_trace(td))
    without, r2 = run(td, Config.for_trace(td, row_tables=False))
    assert with_rows == without
    assert "exit_intervals" in r1["exits"].rows and "exit_intervals" not in r2["exits"].rows
