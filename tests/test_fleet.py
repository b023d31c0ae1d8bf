"""Fleet: a hive-partitioned tree of more than 20 hosts (bundled real captures and simulator output) ingested
and analysed as tasks on a Dask local cluster that this test starts; every fleet number equals what
``vpmutrace analyze`` gives that host's capture alone, and the fleet report opens offline with a working
drill-down link per capture."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from tests.conftest import FIXTURES
from vpmutrace.analyze.base import SEVERITIES
from vpmutrace.cli import app
from vpmutrace.sim import simulate

distributed = pytest.importorskip("distributed", reason="the fleet extra (scripts/setup installs it)")

# (host, capture, bundled files): real captures; microguest has two captures (perf and tracefs backends)
REAL = [("microguest", "perf", ["microguest200.perf.data"]), ("microguest", "tracefs", ["microguest200.trace.dat"]),
        ("microguest50-zstd", "c1", ["microguest50-zstd.perf.data"]), ("mixed-perf", "c1", ["mixed.perf.data"]),
        ("mixed-tracedat", "c1", ["mixed.trace.dat"]), ("uprobe", "c1", ["uprobe.perf.data"]),
        ("tsc-clock", "c1", ["tsc-clock.trace.dat"]), ("mono-clock", "c1", ["mono-clock.trace.dat"]),
        ("cpuclock", "c1", ["cpuclock.perf.data"]),
        ("lkml-krause-vmx", "c1", ["lkml_krause_vmx_nested_6x_ftrace.txt"]),
        ("lkml-shukla-svm", "c1", ["lkml_shukla_svm_idle_hlt_6x.txt"]),
        ("lkml-rak-ept", "c1", ["lkml_rak_ept_violation_loop_host_write_msr.txt"]),
        ("lkml-avery-svm", "c1", ["lkml_avery_svm_plugin_format_nmi.txt"]),
        ("lkml-exception-nmi", "c1", ["lkml_exception_nmi_not_nmi.txt"]),
        ("two-inputs", "c1", ["two-inputs.report.txt"])]
# (scenario, isa, seed, the simulator's file the capture holds: its trace-cmd report text or its perf.data)
SIMULATED = [("emulated-multiplex", "vmx", 1, "report.txt"), ("mediated-steady", "svm", 1, "trace.perf.data"),
             ("pinned-contention", "vmx", 2, "report.txt"), ("skid", "vmx", 1, "report.txt"),
             ("emulated-watchdog", "vmx", 1, "trace.perf.data"), ("mediated-partial", "vmx", 1, "report.txt"),
             ("mediated-refused", "svm", 1, "report.txt"), ("skid", "svm", 2, "trace.perf.data")]


@pytest.fixture(scope="module")
def cluster():
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    yield c
    c.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, cluster) -> dict:
    tmp = tmp_path_factory.mktemp("fleet")
    src = tmp / "src"
    for host, cap, files in REAL:
        d = src / f"host={host}" / f"capture={cap}"
        d.mkdir(parents=True)
        for f in files:
            shutil.copy(FIXTURES / f, d / f)
        if host == "cpuclock":
            shutil.copy(FIXTURES / "cpuclock.host.json", d / "host.json")
    for scenario, isa, seed, trace in SIMULATED:
        simulate(scenario, isa, seed, tmp / "sim" / f"{scenario}-{isa}")
        d = src / f"host=sim-{scenario}-{isa}" / "capture=c1"
        d.mkdir(parents=True)
        for f in (trace, "host.json"):
            shutil.copy(tmp / "sim" / f"{scenario}-{isa}" / f, d / f)
    root, out = tmp / "root", tmp / "out"
    runner = CliRunner()
    ing = runner.invoke(app, ["fleet", "ingest", str(src), "-o", str(root), "--scheduler", cluster.scheduler_address])
    assert ing.exit_code == 0, ing.output
    res = runner.invoke(app, ["fleet", "analyze", str(root), "-o", str(out), "--scheduler", cluster.scheduler_address])
    assert res.exit_code == 0, res.output
    return {"root": root, "out": out, "output": res.output,
            "tables": {n: pl.read_parquet(out / f"{n}.parquet") for n in ("captures", "hosts", "exits", "findings")}}


def _alone(root: Path, host: str, capture: str) -> dict:
    """`vpmutrace analyze --json` on one capture's dataset, run by itself."""
    r = CliRunner().invoke(app, ["analyze", "--json", str(root / f"host={host}" / f"capture={capture}")])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_fleet_tree_has_more_than_20_hosts_of_both_kinds(fleet: dict) -> None:
    caps = fleet["tables"]["captures"]
    assert caps["host"].n_unique() >= 20 and caps.height == len(REAL) + len(SIMULATED)
    assert caps["error"].null_count() == caps.height
    assert caps.filter(pl.col("host").str.starts_with("sim-")).height == len(SIMULATED)
    # the ingested tree is hive-partitioned: one table across the fleet, with host and capture columns
    ex = pl.scan_parquet(fleet["root"] / "**" / "kvm_exit.parquet", hive_partitioning=True) \
        .group_by("host", "capture").len().collect()
    assert ex.height >= len(SIMULATED) and "host" in ex.columns


def test_fleet_tables_have_page_checksums(fleet: dict) -> None:
    from vpmutrace.parquet_pages import check_file

    for n in ("captures", "hosts", "exits", "findings"):
        assert check_file(fleet["out"] / f"{n}.parquet") is True  # (pages with a CRC-32, footer says so)


def test_fleet_numbers_equal_each_host_alone(fleet: dict) -> None:
    t = fleet["tables"]
    for row in t["captures"].iter_rows(named=True):
        doc = _alone(fleet["root"], row["host"], row["capture"])
        saved = json.loads((fleet["out"] / f"host={row['host']}" / f"capture={row['capture']}" /
                            "analysis.json").read_text())
        assert saved == doc, row["host"]
        fs = doc["findings"]
        assert row["design"] == doc["design"]["design"] and row["design_source"] == doc["design"]["source"]
        assert row["guest_pmu"] == doc["guest_pmu"]["guest_text"]
        assert row["guest_gp"] == ((doc["config"]["guest_pmu"]["value"] or {}).get("nr_gp"))
        assert row["exits"] == (doc["exits"] or {}).get("exits_total")
        assert row["watchdog_findings"] == len([f for f in fs if f["analyzer"] == "watchdog"])
        assert row["silent_findings"] == len([f for f in fs if f["analyzer"] == "silent"])
        assert row["skid_candidates"] == sum(f["count"] for f in fs if f["kind"] == "skid_candidates")
        assert [row["what_if_saving_lo_ns"], row["what_if_saving_hi_ns"]] == \
            ((doc["what_if"] or {}).get("net_saving_ns") or [None, None])
        for s in SEVERITIES:
            assert row[f"findings_{s}"] == len([f for f in fs if f["severity"] == s])
        mine = t["exits"].filter((pl.col("host") == row["host"]) & (pl.col("capture") == row["capture"]))
        by_reason = (doc["exits"] or {}).get("by_reason") or []
        assert mine.drop("host", "capture").to_dicts() == [{k: r[k] for k in mine.columns[2:]} for r in by_reason]
        assert t["findings"].filter((pl.col("host") == row["host"]) & (pl.col("capture") == row["capture"])).height \
            == len(fs)
    assert t["exits"]["samples"].sum() > 0 and t["captures"]["skid_candidates"].sum() > 0
    assert set(t["captures"]["design"].drop_nulls()) >= {"emulated", "mediated"}


def test_hosts_are_ranked_by_findings_and_summed_over_captures(fleet: dict) -> None:
    h, caps = fleet["tables"]["hosts"], fleet["tables"]["captures"]
    key = [tuple(-r[f"findings_{s}"] for s in SEVERITIES) for r in h.iter_rows(named=True)]
    assert key == sorted(key) and h["rank"].to_list() == list(range(1, h.height + 1))
    mg = h.filter(pl.col("host") == "microguest").row(0, named=True)
    assert mg["captures"] == 2
    assert mg["findings_info"] == caps.filter(pl.col("host") == "microguest")["findings_info"].sum()
    first = fleet["output"].splitlines()[1].split()
    assert first[:2] == ["1", h["host"][0]]


def test_fleet_report_is_offline_and_links_every_capture_report(fleet: dict) -> None:
    out = fleet["out"]
    text = (out / "fleet.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", text) and "<script" not in text
    links = re.findall(r'href="([^"]+)"', text)
    caps = fleet["tables"]["captures"]
    assert len(links) == caps.height
    for link in links:
        report = out / link.replace("%3D", "=")
        assert report.is_file() and report.read_text().count("<script") >= 1
        assert "cdn" not in report.read_text()[:2000].lower()
    ranked = fleet["tables"]["hosts"]["host"].to_list()
    pos = [text.index(f">{h}<") for h in ranked]
    assert pos == sorted(pos)


def test_fleet_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from vpmutrace.errors import InputError
    from vpmutrace.fleet.engine import run_tasks

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(InputError, match=r"pip install 'vpmutrace\[fleet\]'"):
        run_tasks(print, [(1,)])


def test_fleet_tree_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "host=a" / "capture=b").mkdir(parents=True)
    r = CliRunner().invoke(app, ["fleet", "analyze", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and "fleet tree" in str(r.exception)
    r = CliRunner().invoke(app, ["fleet", "analyze", str(tmp_path), "--workers", "1", "--no-reports"])
    assert r.exit_code == 2 and "not a vpmutrace dataset" in r.output
