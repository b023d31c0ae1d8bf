"""analyze/ behaviours that a uniform sample of the package's mutants showed no test looked at
(docs/reliability.md, Mutation testing): the rule every declared finding kind obeys, and what an
analyzer that needs nanoseconds says on a real trace whose times are ticks.
"""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest
from conftest import FIXTURES

from vpmutrace.analyze import Config, registry, run
from vpmutrace.analyze.base import CANDIDATE, FACT, FindingKind, fmt_ns
from vpmutrace.readers import load_trace


def test_finding_kinds_a_candidate_is_never_of_high_severity() -> None:
    """A candidate (an inference) cannot be of high severity; a fact can; every kind the analyzers
    declare is valid when declared again."""
    assert FindingKind("k", "high", FACT, "t").severity == "high"
    assert FindingKind("k", "low", CANDIDATE, "t").certainty == CANDIDATE
    with pytest.raises(ValueError, match="candidate cannot be of high severity"):
        FindingKind("k", "high", CANDIDATE, "t")
    kinds = [k for a in registry().values() for k in a.findings]
    assert {k.certainty for k in kinds} == {FACT, CANDIDATE} and any(k.severity == "high" for k in kinds)
    for k in kinds:
        assert FindingKind(k.id, k.severity, k.certainty, k.title) == k


def test_analyzers_that_need_ns_name_the_trace_s_unit(tmp_path: Path) -> None:
    """The x86-tsc text capture without its hrtimer events (so no TSC rate can be measured) keeps
    its times in ticks: an analyzer that compares times with ns constants is not computable and
    says in which unit the times are (clocks.UNIT_TEXT)."""
    text = lzma.decompress((FIXTURES / "tsc-clock.ftrace.txt.xz").read_bytes()).decode()
    f = tmp_path / "no-hrtimer.txt"
    f.write_text("\n".join(ln for ln in text.splitlines() if "hrtimer_expire_entry" not in ln) + "\n")
    td = load_trace([f])
    doc, _ = run(td, Config.for_trace(td))
    need = [a.name for a in registry().values() if a.needs_ns]
    assert need and doc["trace"]["time_unit"] == "unknown_ticks"
    for name in need:
        assert doc[name]["computable"] is False
        assert doc[name]["reason"].endswith("timestamps in ns (this trace's times are integer clock units (ticks of a "
                                       "cycle counter, or the counter clock) and no frequency is known: give "
                                       "--tsc-khz, or a host snapshot with tsc_khz)"), name


def test_pmu_msr_writes_per_msr_add_up_to_the_trace_s() -> None:
    """microguest200.trace.dat (fixtures/PROVENANCE.md): each of 200 guest iterations writes 0x186 and
    0xc1 (accepted, value unchanged: 0) and 0x38f / 0x38d (#GP). Per MSR, a write either changed the
    value, left it unchanged or has no known previous value; the per-MSR counts add up to the
    summary's, which the analyzer counts over all accesses at once."""
    td = load_trace([FIXTURES / "microguest200.trace.dat"])
    s = run(td, Config.for_trace(td))[0]["pmu_msr"]
    rows = s["by_msr"]
    assert s["writes_unchanged"] == sum(r["writes_unchanged"] for r in rows) > 0
    assert s["writes_changed"] == sum(r["writes_changed"] for r in rows)
    for r in rows:
        assert r["writes_changed"] + r["writes_unchanged"] <= r["writes"], r
    by = {r["msr"]: r for r in rows}
    assert by[0x186]["writes_unchanged"] >= 199 and by[0x186]["writes_changed"] == 0


def test_what_if_text_gives_the_switch_cost_range(tmp_path: Path) -> None:
    """The what-if text of a simulated emulated-design host (the simulator of test_analyzers.py) prints
    the PMU switch cost range and its source from the summary."""
    from vpmutrace.sim import simulate

    simulate("emulated-multiplex", "vmx", 7, tmp_path, kernel="6.18")
    td = load_trace([tmp_path / "dataset"])
    w = run(td, Config.for_trace(td), ["what_if"])[1]["what_if"]
    s = w.summary
    lo, hi = s["switch_cost_ns"]
    assert w.computable and 0 < lo < hi
    text = "\n".join(registry()["what_if"].render(w))
    assert f"PMU switches at {lo:.0f}..{hi:.0f} ns ({s['switch_cost_source']})" in text
    (f,) = [f for f in w.findings if f.kind == "mediated_saving"]
    assert f"exits removed ({fmt_ns(s['time_removed_ns'])}), {s['slow_path_exits_remaining']} PMU switches added" \
        in f.text, f.text


def test_config_json_gives_the_host_pmu_shape_of_the_snapshot(tmp_path: Path) -> None:
    """The configuration in the JSON document carries the host PMU read from the snapshot (the
    simulator's host: PMU version 5, 8 GP and 3 fixed counters of 48 bits, PERF_CAPABILITIES 0x2000)
    as plain JSON."""
    import json

    from vpmutrace.sim import simulate

    simulate("emulated-multiplex", "vmx", 7, tmp_path, kernel="6.18")
    td = load_trace([tmp_path / "dataset"])
    hp = json.loads(json.dumps(Config.for_trace(td).to_json()))["host_pmu"]
    assert hp["source"] == "snapshot"
    doc = json.loads(json.dumps(Config.for_trace(td).to_json()))
    assert doc["design"]["value"] == "emulated" and doc["vendor"]["value"] == "intel"
    assert hp["value"]["perf_capabilities"] == 0x2000
    assert {k: hp["value"]["shape"][k] for k in ("vendor", "version", "nr_gp", "nr_fixed", "gp_width")} == \
        {"vendor": "intel", "version": 5, "nr_gp": 8, "nr_fixed": 3, "gp_width": 48}


def test_config_checks_on_an_amd_perfmonv2_host(tmp_path: Path) -> None:
    """A simulated AMD host whose PMU is PerfMonV2 (version 2: amd_pmu_is_mediated_pmu_supported())
    supports the mediated vPMU, and the check says so in its detail."""
    from vpmutrace.sim import simulate

    simulate("mediated-steady", "svm", 7, tmp_path, kernel="6.18")
    td = load_trace([tmp_path / "dataset"])
    cfg = Config.for_trace(td)
    assert cfg.to_json()["host_pmu"]["value"]["shape"]["version"] == 2
    checks = {c["check"]: c for c in run(td, cfg, ["config_checks"])[0]["config_checks"]["checks"]}
    assert checks["host PMU supports the mediated vPMU"] == \
        {"check": "host PMU supports the mediated vPMU", "ok": True, "detail": "host PerfMonV2 True"}


def test_times_from_the_trace_s_start_unless_absolute() -> None:
    """The document's trace.time_origin_ns is the first event's time (findings' times count from it),
    and null with ``absolute`` (times as recorded)."""
    td = load_trace([FIXTURES / "microguest200.trace.dat"])
    cfg = Config.for_trace(td)
    first = td.meta["time_span_ns"][0]  # trace-cmd report's first event: 829.500100
    assert first == 829_500_100_276
    assert run(td, cfg, ["exits"])[0]["trace"]["time_origin_ns"] == first
    assert run(td, cfg, ["exits"], absolute=True)[0]["trace"]["time_origin_ns"] is None


def test_ownership_names_the_pmu_switches_it_saw(tmp_path: Path) -> None:
    """On a simulated mediated host whose capture has the host's PMU MSR events, the ownership
    finding counts the PMU load/put pairs it saw there, in its text and its count."""
    from vpmutrace.sim import simulate

    simulate("mediated-steady", "vmx", 7, tmp_path, kernel="6.18")
    td = load_trace([tmp_path / "dataset"])
    r = run(td, Config.for_trace(td), ["ownership"])[1]["ownership"]
    (f,) = [f for f in r.findings if f.kind == "switches_observed"]
    assert f.count > 1 and f.text.startswith(f"{f.count} PMU load/put pairs seen in host MSR events over "), f.text
