"""docs/dataset.md's recipes (polars, pyarrow.dataset, DuckDB) run on a real dataset, and every
Parquet file of a dataset carries the trace metadata and schema version in its key-value metadata."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, ROOT

from vpmutrace.parquet_pages import FOOTERS_KEY, footer_crc
from vpmutrace.readers import load_trace
from vpmutrace.schema import SCHEMA_VERSION
from vpmutrace.tracedata import LEGACY_META_FILE, META_FILE

SRC = FIXTURES / "lkml_krause_vmx_nested_6x_ftrace.txt"  # a real VMX trace with kvm_exit rows


@pytest.fixture(scope="module", params=["save", "ingest"])
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset as TraceData.save writes it, and as `vpmutrace ingest` does (its tables' files
    written while the trace is read: tracedata.EarlyWrites)."""
    out = tmp_path_factory.mktemp("ds") / "ds"
    if request.param == "save":
        return load_trace([SRC]).save(out)
    from typer.testing import CliRunner

    from vpmutrace.cli import app

    r = CliRunner().invoke(app, ["ingest", str(SRC), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert not list(out.glob("*.part"))
    return out


def _recipe(lib: str) -> str:
    doc = (ROOT / "docs" / "dataset.md").read_text()
    section = doc.split(f"## {lib}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))


def test_every_file_carries_metadata(dataset: Path) -> None:
    sidecar = json.loads((dataset / META_FILE).read_text())
    footers = sidecar.pop(FOOTERS_KEY)  # (the sidecar alone keeps each file's footer checksum)
    files = sorted(dataset.glob("*.parquet"))
    assert len(files) >= 5
    for f in files:
        kv = pq.read_metadata(f).metadata  # the footer's key-value metadata
        assert kv[b"vpmutrace.table"].decode() == f.stem
        assert int(kv[b"vpmutrace.schema_version"]) == SCHEMA_VERSION
        assert json.loads(kv[b"vpmutrace.trace_meta"]) == sidecar
        assert footers[f.name] == footer_crc(f)
        assert kv[b"vpmutrace.page_checksums"] == b"crc32"  # and pyarrow verifies them (docs/dataset.md)
        assert pq.read_table(f, page_checksum_verification=True).num_rows == pq.read_metadata(f).num_rows


def test_polars_recipe(dataset: Path) -> None:
    ns: dict = {"DIR": dataset}
    exec(_recipe("polars"), ns)  # noqa: S102 - the documented recipe itself
    direct = load_trace([SRC])
    assert ns["by_reason"]["len"].sum() == direct.df("kvm_exit").height == 13
    assert ns["rel"]["t_s"].min() >= 0 and ns["rel"]["t_s"].max() < 1


def test_pyarrow_dataset_recipe(dataset: Path) -> None:
    ns: dict = {"DIR": dataset}
    exec(_recipe("pyarrow"), ns)  # noqa: S102
    assert "kvm_exit" in ns["tables"] and META_FILE not in str(ns["everything"].files)
    assert ns["exits"].num_rows == 13 and ns["schema_version"] == SCHEMA_VERSION
    assert ns["meta"]["events"]["kvm:kvm_exit"] == 13


def test_duckdb_recipe(dataset: Path) -> None:
    ns: dict = {"DIR": dataset}
    exec(_recipe("DuckDB"), ns)  # noqa: S102
    assert sum(n for _, n in ns["by_reason"]) == 13
    assert sorted(v for _, _, v in ns["kv"]) == sorted(f.stem for f in dataset.glob("*.parquet"))


def test_old_sidecar_name_still_reads(dataset: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for f in dataset.iterdir():
        (old / (LEGACY_META_FILE if f.name == META_FILE else f.name)).write_bytes(f.read_bytes())
    back = load_trace([old])
    assert back.df("kvm_exit").height == 13
    back.save(old)  # rewriting it leaves one sidecar, under the new name
    assert (old / META_FILE).is_file() and not (old / LEGACY_META_FILE).exists()


def test_files_written_while_reading_carry_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ingest` of a trace.dat writes its tables' files while it reads (tracedata.EarlyWrites); their
    footers get the same key-value metadata, known only once the whole trace is read."""
    from typer.testing import CliRunner

    from vpmutrace.cli import app
    from vpmutrace.tracedata import EarlyWrites

    kept: list[str] = []
    keep = EarlyWrites.keep

    def spy(self: EarlyWrites, name: str, *a: object) -> bool:
        r = keep(self, name, *a)  # type: ignore[arg-type]
        if r:
            kept.append(name)
        return r

    out = tmp_path / "ds"
    monkeypatch.setattr(EarlyWrites, "keep", spy)
    r = CliRunner().invoke(app, ["ingest", str(FIXTURES / "microguest200.trace.dat"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "kvm_msr" in kept
    sidecar = json.loads((out / META_FILE).read_text())
    assert set(sidecar.pop(FOOTERS_KEY)) == {p.name for p in out.glob("*.parquet")}
    for name in kept:
        kv = pq.read_metadata(out / f"{name}.parquet").metadata
        assert kv[b"vpmutrace.table"].decode() == name and json.loads(kv[b"vpmutrace.trace_meta"]) == sidecar
