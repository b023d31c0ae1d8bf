"""A dataset analysed through lazy Parquet scans (vpmutrace.scanned) gives what the in-memory path gives:
the same JSON document, the same row-level results and the same report, on every bundled trace and on
every simulator scenario."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.conftest import FIXTURES
from vpmutrace.analyze import run
from vpmutrace.analyze.context import Config
from vpmutrace.readers import load_trace
from vpmutrace.scanned import ScannedTraceData
from vpmutrace.sim import SCENARIOS, simulate
from vpmutrace.tracedata import TraceData, load_dataset

NOT_TRACES = (".json", ".md", ".py", ".sh", ".c", ".kallsyms.xz")
# bundled files that are not traces vpmutrace reads alone
NOT_ALONE = {"cpuclock.perf-script.txt.xz": "perf script of cpuclock.perf.data's cpu-clock samples: no tracepoints, "
                                            "a reference for the sample reader's fields"}
TRACES = sorted(p.name for p in FIXTURES.iterdir()
                if p.is_file() and not p.name.endswith(NOT_TRACES) and p.name not in NOT_ALONE)


def _analysis(td: TraceData) -> tuple[dict, dict[str, pl.DataFrame]]:
    doc, results = run(td, Config.for_trace(td))
    rows = {f"{a}/{n}": df for a, r in results.items() for n, df in r.rows.items()}
    return json.loads(json.dumps(doc, default=str)), rows


def _same(a: tuple[dict, dict[str, pl.DataFrame]], b: tuple[dict, dict[str, pl.DataFrame]]) -> None:
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert_frame_equal(a[1][k], b[1][k], check_row_order=True), k


def test_the_fixture_list_is_the_bundled_traces() -> None:
    assert {"microguest200.perf.data", "microguest200.trace.dat", "mixed.perf.data", "mixed.trace.dat",
            "lkml_krause_vmx_nested_6x_ftrace.txt", "uprobe.ftrace.txt.xz"} <= set(TRACES)
    assert not [t for t in TRACES if t.endswith((".json", ".py"))]


@pytest.mark.parametrize("name", TRACES)
def test_scanned_dataset_analyses_as_the_trace_in_memory(name: str, tmp_path: Path) -> None:
    td = load_trace([FIXTURES / name])
    in_memory = _analysis(td)
    td.save(tmp_path / "ds")
    lazy = load_dataset(tmp_path / "ds")
    assert isinstance(lazy, ScannedTraceData)
    assert lazy.row_counts() == {n: t.num_rows for n, t in td.tables.items() if t.num_rows}
    _same(_analysis(lazy), in_memory)
    _same(_analysis(load_dataset(tmp_path / "ds", lazy=False)), in_memory)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scanned_simulator_dataset_analyses_as_in_memory(scenario: str, tmp_path: Path) -> None:
    simulate(scenario, "vmx", 3, tmp_path)
    _same(_analysis(load_dataset(tmp_path / "dataset")), _analysis(load_dataset(tmp_path / "dataset", lazy=False)))


def test_scan_pushes_the_projection_and_the_filter_into_the_reader(tmp_path: Path) -> None:
    """A filtered scan decodes only the row groups that can match: the plan shows the predicate and the
    projection at the Parquet scan, and the result is the in-memory filter's."""
    td = load_trace([FIXTURES / "mixed.perf.data"])
    td.save(tmp_path / "ds")
    lazy = load_dataset(tmp_path / "ds")
    lf = lazy.scan("kvm_msr").filter(pl.col("msr") == 0x38F).select("ts_ns", "value")
    plan = lf.explain()
    assert "Parquet SCAN" in plan and "SELECTION" in plan and "PROJECT 3/" in plan, plan
    assert_frame_equal(lf.collect(), td.df("kvm_msr").filter(pl.col("msr") == 0x38F).select("ts_ns", "value"))
    assert lazy.df("kvm_emulate_insn").height == lazy.row_counts().get("kvm_emulate_insn", 0)


def test_report_of_a_scanned_dataset_equals_the_in_memory_report(tmp_path: Path) -> None:
    from vpmutrace.report.html import build

    simulate("skid", "vmx", 1, tmp_path / "sim")
    out = []
    for lazy in (True, False):
        td = load_dataset(tmp_path / "sim" / "dataset", lazy=lazy)
        doc, results = run(td, Config.for_trace(td))
        out.append(build(td, doc, results, tmp_path / f"r{lazy}.html").read_text())
    assert out[0] == out[1]
