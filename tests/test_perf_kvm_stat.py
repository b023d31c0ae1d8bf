"""`exits` gives perf kvm stat's numbers on the same file (simulated hosts written as perf.data)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import polars as pl
import pytest
from conftest import need_tool

from vpmutrace.analyze import run
from vpmutrace.analyze.context import Config
from vpmutrace.readers import LoadOptions, load_trace
from vpmutrace.schema import binary_only
from vpmutrace.sim import simulate

ROW = re.compile(r"^\s*(?P<reason>\S.*?)\s+(?P<n>\d+)\s+(?P<spct>[\d.]+)%\s+(?P<tpct>[\d.]+)%\s+(?P<min>[\d.]+)us\s+"
                 r"(?P<max>[\d.]+)us\s+(?P<avg>[\d.]+)us \( \+-\s+(?P<se>[\d.]+)% \)\s*$")


def perf_kvm_stat(path: Path) -> tuple[dict[str, dict], int, float]:
    perf = need_tool("perf")
    r = subprocess.run([perf, "kvm", "-i", str(path), "stat", "report"], capture_output=True, text=True, check=False)
    out = r.stdout + r.stderr  # perf kvm stat prints its table on stderr
    rows = {m["reason"]: m.groupdict() for m in map(ROW.match, out.splitlines()) if m}
    total = re.search(r"Total Samples:(\d+), Total events handled time:([\d.]+)us", out)
    if not rows or not total:
        pytest.skip(f"perf kvm stat could not report on {path}: {out[-300:]}")
    return rows, int(total[1]), float(total[2])


@pytest.mark.parametrize("isa", ["vmx", "svm"])
@pytest.mark.parametrize("scenario", ["emulated-multiplex", "skid", "mediated-steady"])
def test_exits_equal_perf_kvm_stat(tmp_path: Path, scenario: str, isa: str) -> None:
    simulate(scenario, isa, 4, tmp_path)
    perf_file = tmp_path / "trace.perf.data"
    theirs, total_n, total_us = perf_kvm_stat(perf_file)
    td = load_trace([perf_file])
    doc, _ = run(td, Config.for_trace(td))
    e = doc["exits"]
    assert e["exits_paired"] == total_n
    assert round(e["handling_ns_total"] / 1000, 2) == total_us
    ours = {r["reason"]: r for r in e["by_reason"]}
    assert set(ours) == set(theirs)
    def near(a: float, printed: str) -> bool:
        # perf prints two decimals of its running (Welford) statistics: a half-way value may round
        # the other way, so allow one unit in the last printed digit
        return abs(a - float(printed)) <= 0.0100001

    for reason, t in theirs.items():
        o = ours[reason]
        assert o["samples"] == int(t["n"]), reason
        assert f"{o['min_ns'] / 1000:.2f}" == t["min"] and f"{o['max_ns'] / 1000:.2f}" == t["max"], reason
        assert near(o["samples_pct"], t["spct"]) and near(o["time_pct"], t["tpct"]), reason
        assert near(o["mean_ns"] / 1000, t["avg"]) and near(o["rel_stderr_pct"], t["se"]), reason


def test_simulated_perf_data_equals_its_text(tmp_path: Path) -> None:
    simulate("emulated-multiplex", "svm", 9, tmp_path)
    a, b = load_trace([tmp_path / "trace.perf.data"]), load_trace([tmp_path / "report.txt"])
    assert a.meta["events"] == b.meta["events"]
    for t in ("kvm_exit", "kvm_entry", "kvm_msr", "kvm_apic_accept_irq", "nmi_handler"):
        # the report text carries no process ids; the perf.data does (tgid)
        drop = ("seq", "comm", "tgid", *binary_only(t))
        x, y = a.df(t).drop(drop), b.df(t).drop(drop)
        if t == "nmi_handler":  # the text shows the symbol only
            x, y = x.drop("handler_addr", "handler"), y.drop("handler_addr", "handler")
        assert x.equals(y), t
    assert a.df("kvm_exit").filter(pl.col("pid") == 1000)["comm"].unique().to_list() == ["CPU 0/KVM"]


def test_simulated_perf_data_equals_perf_script(tmp_path: Path) -> None:
    perf = need_tool("perf")
    simulate("pinned-contention", "vmx", 2, tmp_path)
    text = subprocess.run([perf, "script", "-F", "comm,pid,tid,cpu,time,event,trace", "-i",
                           str(tmp_path / "trace.perf.data")], capture_output=True, text=True, check=False).stdout
    (tmp_path / "ps.txt").write_text(text)
    a, b = load_trace([tmp_path / "trace.perf.data"]), load_trace([tmp_path / "ps.txt"])
    for t in ("kvm_exit", "kvm_entry", "kvm_msr"):
        x = a.df(t).with_columns((pl.col("ts_ns") // 1000 * 1000).alias("ts_ns")).drop("seq")
        assert x.height > 0 and x.equals(b.df(t).drop("seq")), t


def test_exits_per_vm_from_process_ids(tmp_path: Path) -> None:
    simulate("skid", "vmx", 6, tmp_path)
    # no host snapshot: the VM comes from the sample's pid
    td = load_trace([tmp_path / "trace.perf.data"], LoadOptions(find_snapshot=False))
    doc, _ = run(td, Config.for_trace(td))
    e = doc["exits"]
    assert e["vm_grouping"].startswith("VMM process (tgid)")
    assert [(r["vm_pid"], r["samples"]) for r in e["by_vm"]] == [(999, e["exits_paired"])]
