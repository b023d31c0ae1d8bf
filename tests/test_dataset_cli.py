"""Parquet dataset round trip and the info/ingest commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from conftest import FIXTURES, ROOT

from vpmutrace.readers import load_trace
from vpmutrace.schema import ALL_TABLES, SCHEMA_VERSION, render_markdown


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpmutrace", *args], capture_output=True, text=True, check=False)


def test_ingest_writes_a_dataset_that_reads_back_equal(tmp_path: Path) -> None:
    inputs = [FIXTURES / "microguest200.trace.dat", FIXTURES / "lkml_krause_vmx_nested_6x_ftrace.txt"]
    r = _cli("ingest", *map(str, inputs), "-o", str(tmp_path / "ds"))
    assert r.returncode == 0, r.stderr
    direct = load_trace(inputs)
    back = load_trace([tmp_path / "ds"])
    assert set(back.tables) == set(direct.tables)
    for name in direct.tables:
        assert back.df(name).equals(direct.df(name)), name
    assert back.meta["events"] == direct.meta["events"]
    assert back.meta["format"] == "mixed"
    # plain polars / pyarrow read the files without us
    assert pl.read_parquet(tmp_path / "ds" / "kvm_msr.parquet").height == 1603
    assert pq.read_schema(tmp_path / "ds" / "kvm_exit.parquet").field("exit_reason").type == "uint32"
    meta = json.loads((tmp_path / "ds" / "_trace_meta.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and len(meta["inputs"]) == 2


def test_stats_survive_the_dataset(tmp_path: Path) -> None:
    src = FIXTURES / "microguest200.report.txt"
    direct = load_trace([src])
    direct.save(tmp_path / "ds")
    back = load_trace([tmp_path / "ds"])
    a = {(e.category, e.name, e.count) for e in direct.stats.entries()}
    b = {(e.category, e.name, e.count) for e in back.stats.entries()}
    assert a == b and ("print_fmt_fallback", "kvm:kvm_inj_exception", 1000) in a


def test_info_json_and_text() -> None:
    r = _cli("info", "--json", str(FIXTURES / "microguest200.perf.data"))
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert d["format"] == "perf.data" and d["kernel_release"] == "6.18.44-fc-v657"
    assert d["events"]["kvm:kvm_msr"] == 1600 and d["lost_events"] == 0 and d["unparsed"] == 0
    assert d["cpus"] == 2 and d["duration_ns"] > 0
    r = _cli("info", str(FIXTURES / "lkml_shukla_svm_idle_hlt_6x.txt"))
    assert r.returncode == 0 and "kvm:kvm_exit" in r.stdout and "ftrace-text" in r.stdout


def test_help_and_version() -> None:
    assert _cli("--version").stdout.startswith("vpmutrace ")
    for cmd in ("info", "ingest"):
        r = _cli(cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout


def test_schema_doc_is_generated_from_the_schema_module() -> None:
    doc = (ROOT / "docs" / "schema.md").read_text()
    assert doc == render_markdown(), "regenerate: python -m vpmutrace.schema > docs/schema.md"
    for name in ALL_TABLES:
        assert f"## `{name}`" in doc
