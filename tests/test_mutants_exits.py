"""analyze/exits.py on a real two-vCPU host capture: per-vCPU and per-VM statistics equal to a count
by hand from the paired exits (perf kvm stat's definitions: nearest-rank p99, sample stddev, "+-%" =
100 * stddev / sqrt(n) / mean), the --vcpu / --vm selections and their errors, the unpaired-exit
finding, and the text the command prints. Written to kill the mutants mutmut left alive
(docs/reliability.md, Mutation testing); perf kvm stat itself is compared in tests/test_perf_kvm_stat.py.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import polars as pl
import pytest
from conftest import shared

from vpmutrace.analyze import exits
from vpmutrace.analyze.context import Config
from vpmutrace.errors import InputError
from vpmutrace.readers import load_trace

TWO_VCPUS = "public-github/hip24_host_kvm_2vcpu.dat"  # 22,772 exits of three vCPU threads (two VMs)


@cache
def _td():
    return load_trace([shared(TWO_VCPUS)])


def _run(td=None, host: dict | None = None, **opts):
    td = td or _td()
    if host is not None:
        td = dataclasses.replace(td, meta={**td.meta, "host": host})
    cfg = Config.for_trace(td)
    cfg = dataclasses.replace(cfg, options=dataclasses.replace(cfg.options, **opts))
    return exits.analyze(td, cfg)


def _by_hand(values: list[int], total_n: int, total_t: int) -> dict:
    v = sorted(values)
    n = len(v)
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else None
    mid = (v[(n - 1) // 2] + v[n // 2]) / 2
    return {"samples": n, "time_ns": sum(v), "min_ns": v[0], "max_ns": v[-1], "mean_ns": mean, "p50_ns": mid,
            "p99_ns": v[math.ceil(0.99 * n) - 1] if n > 1 else v[0],
            "samples_pct": 100 * n / total_n, "time_pct": 100 * sum(v) / total_t,
            "rel_stderr_pct": 100 * std / math.sqrt(n) / mean if n > 1 else 0.0}


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-3 * max(1.0, abs(b))  # (records() rounds to 3 decimals)


def test_per_vcpu_statistics_equal_a_count_by_hand() -> None:
    r = _run()
    iv = r.rows["exit_intervals"]
    paired = iv.filter(pl.col("handling_ns").is_not_null())
    s = r.summary
    assert (s["exits_total"], s["exits_paired"], s["exits_unpaired"]) == (iv.height, paired.height,
                                                                          iv.height - paired.height)
    assert s["exits_paired"] + sum(s["unpaired_by_cause"].values()) == s["exits_total"]
    assert s["unpaired_by_cause"] == {c: iv.filter(pl.col("unpaired") == c).height
                                      for c in ("no_entry", "lost", "rip_jump")}
    total_t = int(paired["handling_ns"].sum())
    assert s["handling_ns_total"] == total_t
    rows = s["by_vcpu"]
    assert len(rows) == 3 and [x["samples"] for x in rows] == sorted((x["samples"] for x in rows), reverse=True)
    for row in rows:
        mine = paired.filter(pl.col("pid") == row["pid"])
        assert set(mine["vcpu_id"].to_list()) == {row["vcpu_id"]} and row["source"] == "host"
        want = _by_hand(mine["handling_ns"].to_list(), paired.height, total_t)
        for k, w in want.items():
            assert _near(row[k], w), (row["pid"], k, row[k], w)
    assert s["fastpath_eligible"] == int(iv["fastpath_eligible"].sum()) > 0
    assert s["fastpath_share"] == round(s["fastpath_eligible"] / iv.height, 6)
    by_reason = {x["reason"]: x for x in s["by_reason"]}
    for reason, n in iv.group_by("reason").agg(pl.col("fastpath_eligible").sum()).rows():
        assert by_reason.get(reason, {"fastpath_eligible": 0})["fastpath_eligible"] == n
    assert sum(x["samples"] for x in s["by_reason"]) == paired.height


def test_statistics_of_a_few_values() -> None:
    """stats() on values worked out on paper: one group of 1..100 us and one single exit."""
    df = pl.DataFrame({"handling_ns": list(range(1000, 100_001, 1000)) + [7], "reason": ["A"] * 100 + ["B"]})
    out = {r["reason"]: r for r in exits.stats(df, ["reason"]).to_dicts()}
    a, b = out["A"], out["B"]
    assert list(out) == ["A", "B"]  # most samples first
    assert (a["samples"], a["min_ns"], a["max_ns"], a["time_ns"]) == (100, 1000, 100_000, 5_050_000)
    assert (a["p50_ns"], a["p99_ns"], a["mean_ns"]) == (50_500, 99_000, 50_500)
    assert a["samples_pct"] == pytest.approx(100 * 100 / 101) and a["time_pct"] == pytest.approx(
        100 * 5_050_000 / 5_050_007)
    std = math.sqrt(sum((x - 50_500) ** 2 for x in range(1000, 100_001, 1000)) / 99)
    assert a["rel_stderr_pct"] == pytest.approx(100 * std / 10 / 50_500)
    assert (b["samples"], b["p99_ns"], b["rel_stderr_pct"], b["time_ns"]) == (1, 7, 0.0, 7)
    ties = exits.stats(pl.DataFrame({"handling_ns": [1, 2, 3, 4], "reason": ["Z", "Y", "Y", "Z"]}), ["reason"])
    assert ties["reason"].to_list() == ["Y", "Z"]  # equal counts: by name
    none = exits.stats(pl.DataFrame({"handling_ns": [0, 0], "reason": ["A", "A"]}, schema_overrides={
        "handling_ns": pl.Int64}), ["reason"])
    assert none["time_pct"].to_list() == [0.0] and none["samples_pct"].to_list() == [100.0]


def _host() -> dict:
    pids = [x["pid"] for x in _run().summary["by_vcpu"]]
    return {"running_vms": [{"pid": 111, "vcpus": [{"tid": pids[0]}]},
                            {"pid": 222, "vcpus": [{"tid": p} for p in pids[1:]]}]}


def test_vms_from_the_host_snapshot_and_the_selections() -> None:
    host = _host()
    r = _run(host=host, exits_by="vm")
    s = r.summary
    assert s["vm_grouping"] == "host snapshot vCPU threads"
    by_vcpu = {x["pid"]: x for x in s["by_vcpu"]}
    vm_of = {v["tid"]: vm["pid"] for vm in host["running_vms"] for v in vm["vcpus"]}
    assert {p: x["vm_pid"] for p, x in by_vcpu.items()} == vm_of
    by_vm = {x["vm_pid"]: x["samples"] for x in s["by_vm"]}
    assert by_vm == {111: by_vcpu[host["running_vms"][0]["vcpus"][0]["tid"]]["samples"],
                     222: sum(by_vcpu[v["tid"]]["samples"] for v in host["running_vms"][1]["vcpus"])}
    text = exits.render(r)
    assert text[1] == "  by VM (host snapshot vCPU threads)" and "VM (pid)" in text[2]
    assert text[3].split()[:2] == [str(max(by_vm, key=by_vm.get)), str(max(by_vm.values()))]

    one = _run(host=host, vm=222, vcpu=1)
    paired = one.rows["exit_intervals"].filter(pl.col("handling_ns").is_not_null())
    assert one.summary["selection"] == {"vcpu": 1, "vm": 222}
    assert set(paired["vm_pid"].to_list()) == {222} and set(paired["vcpu_id"].to_list()) == {1}
    assert one.summary["exits_paired"] == sum(x["samples"] for x in s["by_vcpu"]
                                              if x["vm_pid"] == 222 and x["vcpu_id"] == 1)
    assert exits.render(one)[0].startswith(f"  {one.summary['exits_total']} exits of VM 222, vCPU 1, ")
    vm_only = _run(host=host, vm=111)
    assert vm_only.summary["selection"] == {"vcpu": None, "vm": 111}
    assert exits.render(vm_only)[0].startswith(f"  {vm_only.summary['exits_total']} exits of VM 111, ")
    vcpu0 = _run(vcpu=0)
    assert set(vcpu0.rows["exit_intervals"]["vcpu_id"].to_list()) == {0}
    assert vcpu0.summary["exits_total"] == _td().df("kvm_exit").filter(pl.col("vcpu_id") == 0).height


@pytest.mark.parametrize("opts,host,msg", [
    ({"vm": 5}, False, r"--vm: this trace does not say which VM a vCPU thread belongs to \(unknown \(no host"),
    ({"vm": 5}, True, r"--vm: no exits of VM 5; VMs in the trace: 111, 222$"),
    ({"vcpu": 7}, False, r"--vcpu: no exits of vCPU 7; vCPUs: 0, 1$"),
    ({"vcpu": 7, "vm": 111}, True, r"--vcpu: no exits of vCPU 7; vCPUs: 0$"),
])
def test_selection_errors(opts: dict, host: bool, msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        _run(host=_host() if host else None, **opts)


def test_unpaired_finding_and_the_printed_table() -> None:
    r = _run()
    s = r.summary
    iv = r.rows["exit_intervals"]
    broken = iv.filter(pl.col("unpaired").is_in(["lost", "rip_jump"])).sort("ts_ns")
    (f,) = r.findings
    assert f.kind == "unpaired_exits" and f.count == broken.height == s["unpaired_by_cause"]["rip_jump"] > 3
    assert f.first_ts_ns == broken["ts_ns"][0]
    assert f.text == (f"{broken.height} exits not timed: their next entry lies after lost events (0) or resumes "
                      f"elsewhere ({broken.height})")
    first = broken.row(0, named=True)
    assert len(f.evidence) == 3 and f.evidence[0].startswith("rip_jump at ")
    assert f.evidence[0].endswith(f": {first['reason']} exit of thread {first['pid']}")
    text = exits.render(r)
    u = s["unpaired_by_cause"]
    assert text[0] == (f"  {s['exits_total']} exits, {s['exits_paired']} timed, {s['exits_unpaired']} unpaired "
                       f"(no entry {u['no_entry']}, lost events 0, rip jump {u['rip_jump']}); handling time "
                       f"150.576 s; fastpath-eligible {s['fastpath_eligible']}")
    assert text[1].split() == ["reason", "samples", "samples%", "time%", "min", "max", "avg", "+-%", "p99",
                               "fastpath?"]
    top = s["by_reason"][0]
    assert text[2].split()[:3] == [top["reason"], str(top["samples"]), f"{top['samples_pct']:.2f}"]
    vcpu = exits.render(_run(exits_by="vcpu"))
    assert vcpu[1] == f"  by vCPU (VM: {s['vm_grouping']})" and vcpu[2].split()[:3] == ["thread", "vcpu", "samples"]
    vm = exits.render(_run(exits_by="vm"))
    assert vm[1:] == [f"  by VM: not computable: {s['vm_grouping']}"]


def test_exits_without_entries_print_their_counts() -> None:
    td = _td()
    no_entry = dataclasses.replace(td, tables={k: v for k, v in td.tables.items() if k != "kvm_entry"})
    r = _run(no_entry)
    assert exits.render(r) == [f"  {td.df('kvm_exit').height} exits (counts only): {r.summary['by_reason_counts']}"]
    neither = dataclasses.replace(td, tables={k: v for k, v in td.tables.items() if k not in ("kvm_entry",
                                                                                             "kvm_exit")})
    r = _run(neither)
    assert r.summary == {} and exits.render(r) == [] and len(r.needs) == 2


def test_vms_from_the_tgid_of_perf_samples(tmp_path) -> None:
    """Without a host snapshot, a perf.data capture's samples carry each vCPU thread's process (tgid):
    that is its VM. (A simulated two-vCPU VM written as perf.data, the file perf kvm stat reads in
    tests/test_perf_kvm_stat.py.)"""
    from vpmutrace.sim import simulate

    simulate("mediated-steady", "vmx", 4, tmp_path)
    td = load_trace([tmp_path / "trace.perf.data"])
    td = dataclasses.replace(td, meta={k: v for k, v in td.meta.items() if k != "host"})
    tgid = dict(td.df("kvm_exit").select("pid", "tgid").unique().rows())
    assert len(tgid) == 2 and len(set(tgid.values())) == 1
    r = _run(td, exits_by="vm")
    s = r.summary
    assert s["vm_grouping"] == "VMM process (tgid) of each vCPU thread"
    assert {x["pid"]: x["vm_pid"] for x in s["by_vcpu"]} == tgid
    assert r.rows["exit_intervals"]["vm_pid"].to_list() == [tgid[p] for p in r.rows["exit_intervals"]["pid"]]
    assert [(x["vm_pid"], x["samples"]) for x in s["by_vm"]] == [(next(iter(tgid.values())), s["exits_paired"])]
    assert exits.render(r)[1] == "  by VM (VMM process (tgid) of each vCPU thread)"
