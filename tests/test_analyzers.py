"""Analyzers: recover the simulator's truth exactly; hand counts on real traces; honest gating."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpmutrace.analyze import KEYS, run
from vpmutrace.analyze.base import Config
from vpmutrace.model.design import DEFAULT_SWITCH_COST_NS
from vpmutrace.readers import load_trace
from vpmutrace.render import render
from vpmutrace.sim import SCENARIOS, simulate
from vpmutrace.sim.compare import mismatches


def _check(tmp: Path, scenario: str, isa: str, seed: int) -> dict:
    t = simulate(scenario, isa, seed, tmp)
    td = load_trace([tmp / "dataset"])
    doc, _ = run(td, Config.for_trace(td, model=t["scenario"]["model"]))
    truth = {k: v for k, v in t.items() if k != "scenario"}
    bad = mismatches(doc, truth)
    assert not bad, f"{scenario}/{isa}/seed {seed}: {bad[:5]}"
    return doc


@pytest.mark.parametrize("isa", ["vmx", "svm"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_analyzer_recovers_the_truth(tmp_path: Path, scenario: str, isa: str) -> None:
    _check(tmp_path, scenario, isa, 7)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), scenario=st.sampled_from(list(SCENARIOS)), isa=st.sampled_from(["vmx", "svm"]))
def test_truth_over_many_seeds(tmp_path_factory: pytest.TempPathFactory, seed: int, scenario: str, isa: str) -> None:
    _check(tmp_path_factory.mktemp("sim"), scenario, isa, seed)


def test_what_if_is_the_model_arithmetic(tmp_path: Path) -> None:
    doc = _check(tmp_path, "emulated-multiplex", "vmx", 3)
    w, p = doc["what_if"], doc["pmu_msr"]
    # every PMU MSR access the mediated design passes through, plus every RDPMC exit (all counters exposed)
    assert w["exits_removed"] == p["accesses_mediated_would_pass_through"] + p["rdpmc_exits"]
    assert w["switches_added"] == doc["exits"]["exits_paired"] - w["exits_removed_matched"]
    assert w["switch_cost_added_ns"] == w["switches_added"] * DEFAULT_SWITCH_COST_NS
    assert w["net_saving_ns"] == w["time_removed_ns"] - w["switch_cost_added_ns"]
    by = {r["name"]: r["mediated"] for r in p["by_msr"]}
    assert by["IA32_PERFEVTSEL0"] == "intercepted" and by["IA32_PMC0"] == "pass-through"
    assert by["IA32_PERF_GLOBAL_CTRL"] == "pass-through"  # all counters exposed, guest has GLOBAL_CTRL


def test_exits_hand_count_vmx_snippet() -> None:
    td = load_trace([FIXTURES / "lkml_krause_vmx_nested_6x_ftrace.txt"])
    doc, _ = run(td, Config.for_trace(td))
    e = doc["exits"]
    assert (e["exits_total"], e["exits_paired"], e["exits_unpaired"]) == (13, 12, 1)  # TRIPLE_FAULT ends it
    by = {r["reason"]: r for r in e["by_reason"]}
    # by hand from the text: CR_ACCESS 389366->389461, 389481->389491, 389536->389562 (us)
    assert (by["CR_ACCESS"]["samples"], by["CR_ACCESS"]["time_ns"], by["CR_ACCESS"]["max_ns"]) == (3, 131000, 95000)
    # EXTERNAL_INTERRUPT 389421->389435, 389448->389456, 389462->389462, 389574->389583
    assert (by["EXTERNAL_INTERRUPT"]["samples"], by["EXTERNAL_INTERRUPT"]["time_ns"]) == (4, 31000)
    assert by["EXTERNAL_INTERRUPT"]["min_ns"] == 0 and by["LDTR_TR"]["time_ns"] == 65000
    assert e["handling_ns_total"] == 232000
    assert doc["ownership"]["windows_total"] == 11


def test_exits_hand_count_svm_snippet() -> None:
    td = load_trace([FIXTURES / "lkml_shukla_svm_idle_hlt_6x.txt"])
    doc, _ = run(td, Config.for_trace(td))
    e = doc["exits"]
    # the two blocks: vintr, msr | hlt, vintr, msr; an exit pairs with the next entry in the text
    assert e["exits_total"] == 5 and e["exits_paired"] == 4
    assert {r["reason"]: r["samples"] for r in e["by_reason"]} == {"vintr": 2, "msr": 1, "hlt": 1}


def test_pmu_msr_hand_count_on_the_capture() -> None:
    td = load_trace([FIXTURES / "microguest200.trace.dat"])
    doc, _ = run(td, Config.for_trace(td))
    p = doc["pmu_msr"]
    rows = {r["name"]: (r["reads"], r["writes"], r["gp"], r["mediated"]) for r in p["by_msr"]}
    assert rows == {"IA32_PMC0": (200, 200, 0, "pass-through"),
                    "IA32_PERFEVTSEL0": (200, 200, 0, "intercepted"),
                    "IA32_FIXED_CTR_CTRL": (200, 200, 400, "intercepted"),
                    "IA32_PERF_GLOBAL_CTRL": (200, 200, 400, "pass-through")}
    assert p["pmu_msr_accesses"] == 1600 and p["rdpmc_exits"] is None  # this host records no kvm_exit


def test_not_computable_is_said_not_zeroed() -> None:
    td = load_trace([FIXTURES / "microguest200.perf.data"])
    doc, results = run(td, Config.for_trace(td))
    for k in ("exits", "ownership", "skid"):
        assert doc[k]["computable"] is False and "not computable: needs" in doc[k]["reason"]
        assert "exits_total" not in doc[k] and "windows_total" not in doc[k]
    assert doc["watchdog"]["computable"] is False
    # PMC0 (400 accesses) and GLOBAL_CTRL (400) pass through for a guest that sees all counters
    assert doc["what_if"]["time_removed_ns"] is None and doc["what_if"]["pmu_msr_exits_removed"] == 800
    text = "\n".join(render(n, r, doc) for n, r in results.items())
    assert "None" not in text
    assert "adds - PMU switches" in text and "what-if times not computable: needs kvm:kvm_exit" in text


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpmutrace", *args], capture_output=True, text=True, check=False)


def test_cli_analyze_json_and_parquet(tmp_path: Path) -> None:
    r = _cli("simulate", "--scenario", "skid", "--isa", "svm", "--seed", "5", "-o", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    r = _cli("analyze", str(tmp_path / "s" / "dataset"), "--json", "--model", "emulated", "-o", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [k for k in doc if k != "config"] == KEYS
    truth = json.loads((tmp_path / "s" / "truth.json").read_text())
    assert doc["skid"]["classes"] == truth["skid"]["classes"]
    att = pl.read_parquet(tmp_path / "a" / "pmi_attribution.parquet")
    assert att.height == truth["skid"]["host_perf_nmis"]
    r = _cli("skid", str(tmp_path / "s" / "report.txt"), "--model", "emulated")
    assert r.returncode == 0 and "misattributed to host" in r.stdout
    r = _cli("analyze", str(tmp_path / "s" / "dataset"), "--only", "nonsense")
    assert r.returncode == 2 and "unknown analyzer" in r.stderr


def test_cli_fail_on_divergence(tmp_path: Path) -> None:
    _cli("simulate", "--scenario", "host-include-guest", "-o", str(tmp_path / "s"))
    r = _cli("analyze", str(tmp_path / "s" / "dataset"), "--fail-on-divergence")
    assert r.returncode == 1 and "host_pmi_during_guest" in r.stdout
    _cli("simulate", "--scenario", "mediated-steady", "-o", str(tmp_path / "m"))
    r = _cli("analyze", str(tmp_path / "m" / "dataset"), "--fail-on-divergence")
    assert r.returncode == 0


def test_sample_attribution_around_transitions() -> None:
    """Samples placed by hand around one guest window [100, 200) us on CPU 0 (window 10 us)."""
    from vpmutrace.tracedata import TraceBuilder

    us = 1000
    b = TraceBuilder()
    common = {"seq": [0, 1, 2, 3], "cpu": [0, 0, 0, 0], "pid": [7, 7, 7, 7], "comm": ["CPU 0/KVM"] * 4,
              "source": ["host"] * 4}
    b.add("kvm_entry", {**common, "ts_ns": [100 * us, 300 * us, 400 * us, 500 * us], "vcpu_id": [0] * 4}, 4)
    b.add("kvm_exit", {**common, "ts_ns": [200 * us, 350 * us, 450 * us, 550 * us], "vcpu_id": [0] * 4,
                       "exit_reason": [1] * 4, "reason": ["EXTERNAL_INTERRUPT"] * 4, "isa": [1] * 4}, 4)
    rows = [(150, "guest_kernel", "correct"), (160, "kernel", "misattributed_host"),
            (205, "kernel", "misattributed_host"), (206, "guest_user", "ambiguous"),
            (250, "guest_kernel", "misattributed_guest"), (250, "user", "correct"),
            (295, "kernel", "ambiguous")]
    b.add("samples", {"ts_ns": [t * us for t, _, _ in rows], "seq": list(range(len(rows))),
                      "cpu": [0] * len(rows), "pid": [7] * len(rows), "comm": ["x"] * len(rows),
                      "source": ["host"] * len(rows), "event": ["cycles"] * len(rows),
                      "cpumode": [m for _, m, _ in rows], "exact_ip": [False] * len(rows)}, len(rows))
    td = b.finish()
    from vpmutrace.analyze.skid import classify_samples

    got = classify_samples(td, 10 * us).sort("ts_ns", "cpumode")
    want = sorted(((t * us, m, c) for t, m, c in rows), key=lambda x: (x[0], x[1]))
    assert got.select("ts_ns", "cpumode", "class").rows() == want
    doc, _ = run(td, Config.for_trace(td))
    assert doc["skid"]["computable"] is False  # no nmi_handler: the PMI part needs it ...
    assert doc["skid"]["samples"]["classes"] == {"correct": 2, "misattributed_host": 2, "misattributed_guest": 1,
                                                 "ambiguous": 2}  # ... the sample part does not
