"""kvm-pmu probes: creation and removal against a fake tracefs, the refusal and summary on this host, and the
analyses on simulated traces that carry probe events in real kprobe/fprobe layouts (trace.dat and perf.data)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from vpmutrace.collectors import probes as PR

from vpmutrace.analyze import run
from vpmutrace.analyze.context import Config
from vpmutrace.model import kernel as K
from vpmutrace.readers import load_trace
from vpmutrace.sim.formats import probe_format_text
from vpmutrace.sim.generate import Sim

KVM, ROOT = Path("/dev/kvm").exists(), os.geteuid() == 0
TRACEFS = Path("/sys/kernel/tracing")
FPROBE_README = ("\t   Format: p[:[<group>/][<event>]] <place> [<args>]\n"
                 "\t           f[:[<group>/][<event>]] <func-name>[%return] [<args>]\n"
                 "\t fetcharg: (%<register>|$<efield>), @<address>, @<symbol>[+|-<offset>],\n"
                 "\t           <argname>[->field[->field|.field...]],\n")


class FakeKernel(PR.TracefsIO):
    """A tracefs tree whose control files act as the kernel's: a definition makes events/<group>/<event>/
    format (the layout sim.formats gives), `-:` removes it; a symbol the fake kallsyms lacks, or a BTF
    argument in ``bad_btf``, is refused with an error_log line."""

    def __init__(self, root: Path, symbols: set[str], bad_btf: tuple[str, ...] = ()) -> None:
        super().__init__(root)
        self.symbols, self.bad_btf, self.lines = symbols, bad_btf, []
        self.next_id = 5000

    def append(self, rel: str, line: str) -> None:
        self.lines.append((rel, line))
        m = re.match(r"^-:(\S+)/(\S+)$", line)
        if m:
            d = self.root / "events" / m.group(1) / m.group(2)
            (d / "format").unlink()
            (d / "enable").unlink(missing_ok=True)
            d.rmdir()
            return
        head, sym, *args = line.split()
        kind, _, name = head.partition(":")
        group, _, event = name.partition("/")
        ret = kind == "r" or sym.endswith("%return")
        sym = sym.removesuffix("%return")
        bad = [a for a in args if any(b in a for b in self.bad_btf)]
        if sym not in self.symbols or bad:
            with open(self.root / "error_log", "a") as f:
                f.write(f"[  1.0] trace_fprobe: error: {'Invalid argument' if bad else 'No such symbol'}\n"
                        f"  Command: {line}\n")
            raise OSError(22, "Invalid argument")
        fields = []
        for a in args:
            n, _, fetch = a.partition("=")
            typ = fetch.rpartition(":")[2] if ":" in fetch and not fetch.startswith("%") else "x64"
            fields.append((n, typ if re.fullmatch(r"[usx](8|16|32|64)", typ) else "u64"))
        d = self.root / "events" / group / event
        d.mkdir(parents=True)
        (d / "format").write_text(probe_format_text(event, self.next_id, ret, fields))
        self.next_id += 1


def _fake(tmp_path: Path, readme: str, kprobe: bool = True) -> Path:
    root = tmp_path / "tracing"
    (root / "events").mkdir(parents=True)
    (root / "instances").mkdir()
    (root / "README").write_text(readme)
    (root / "dynamic_events").write_text("")
    if kprobe:
        (root / "kprobe_events").write_text("")
    return root


KALLSYMS_70 = ["kvm_mediated_pmu_load", "kvm_mediated_pmu_put", "perf_load_guest_context", "perf_put_guest_context",
               "kvm_handle_guest_mediated_pmi", "kvm_perf_overflow", "kvm_pmu_deliver_pmi", "kvm_pmu_handle_event",
               "pmc_reprogram_counter.constprop.0"]  # reprogram_counter inlined; its callee cloned


def _kallsyms(tmp_path: Path, names: list[str]) -> Path:
    p = tmp_path / "kallsyms"
    p.write_text("".join(f"ffffffff8120{i:04x} t {n}\n" for i, n in enumerate(names)) + "ffffffff81000000 T _text\n")
    return p


def test_fprobes_with_btf_args_are_created_and_removed(tmp_path: Path) -> None:
    root = _fake(tmp_path, FPROBE_README)
    io = FakeKernel(root, set(KALLSYMS_70), bad_btf=("overflow_handler_context",))
    s = PR.ProbeSession(root, io, kallsyms=_kallsyms(tmp_path, KALLSYMS_70), group="vpmutrace_77", version=(7, 0))
    assert s.mechanism == "fprobe" and s.mech.btf_args
    events = s.create()
    assert all(rel == "dynamic_events" for rel, _ in io.lines)  # fprobes only, appended
    load = next(c for c in s.created if c["event"] == "vpmutrace_77:kvm_mediated_pmu_load")
    assert load["definition"] == "f:vpmutrace_77/kvm_mediated_pmu_load kvm_mediated_pmu_load vcpu=$arg1:x64 " \
                                 "vcpu_id=vcpu->vcpu_id"
    assert "vpmutrace_77:kvm_mediated_pmu_put__return" in events
    ret = next(c for c in s.created if c["event"] == "vpmutrace_77:pmc_reprogram_counter__return")
    assert ret["symbol"] == "pmc_reprogram_counter.constprop.0" and ret["definition"].endswith(
        "pmc_reprogram_counter.constprop.0%return ret=$retval:s32")
    # the clone's entry probe keeps no register argument; the rejected BTF member is dropped with the reason
    un = s.unresolved
    assert all("compiler clone" in a for a in un["vpmutrace_77:pmc_reprogram_counter"])
    assert un["vpmutrace_77:kvm_perf_overflow"] == ["pmc: Invalid argument"]
    assert s.missing["reprogram_counter"].startswith("not in this kernel")
    assert (root / "events" / "vpmutrace_77" / "kvm_pmu_deliver_pmi" / "format").is_file()
    s.remove()
    assert s.removed and not list((root / "events" / "vpmutrace_77").iterdir())
    lines = PR.describe(s.summary())
    assert lines[0].startswith("probes       fprobe: 12 created in vpmutrace_77 (BTF args); removed")
    assert any("reprogram_counter: not in this kernel" in ln for ln in lines)


def test_kprobes_when_the_kernel_has_no_fprobe_events(tmp_path: Path) -> None:
    root = _fake(tmp_path, "\t   Format: p[:[<group>/][<event>]] <place> [<args>]\n")
    names = ["reprogram_counter", "pmc_reprogram_counter", "kvm_perf_overflow", "kvm_pmu_deliver_pmi",
             "kvm_pmu_handle_event"]  # a 6.x kernel: no mediated PMU
    io = FakeKernel(root, set(names))
    s = PR.ProbeSession(root, io, kallsyms=_kallsyms(tmp_path, names), group="vpmutrace_78", version=(6, 12))
    assert s.mechanism == "kprobe"
    s.create()
    defs = {c["event"].split(":")[1]: c["definition"] for c in s.created}
    assert defs["pmc_reprogram_counter"] == ("p:vpmutrace_78/pmc_reprogram_counter pmc_reprogram_counter "
                                             "pmc=%di:x64 type=%si:u32 config=%dx:x64")
    assert defs["pmc_reprogram_counter__return"].startswith("r:vpmutrace_78/pmc_reprogram_counter__return ")
    assert {k for k in s.missing} == {"kvm_mediated_pmu_load", "kvm_mediated_pmu_load__return",
                                      "kvm_mediated_pmu_put", "kvm_mediated_pmu_put__return",
                                      "perf_load_guest_context", "perf_put_guest_context",
                                      "kvm_handle_guest_mediated_pmi"}
    assert s.unresolved["vpmutrace_78:pmc_reprogram_counter"] == ["pmc_idx: not fetchable without BTF arguments"]
    # a 6.0 kernel: pmc_reprogram_counter() returns void, no return probe
    s0 = PR.ProbeSession(root, FakeKernel(root, set(names)), kallsyms=_kallsyms(tmp_path, names),
                         group="vpmutrace_79", version=(6, 0))
    s0.create()
    assert s0.missing["pmc_reprogram_counter__return"] == "returns void before 6.1"
    s.remove()
    s0.remove()
    assert not (root / "events" / "vpmutrace_78" / "reprogram_counter").exists()


def test_leftovers_of_dead_recorders_are_removed(tmp_path: Path) -> None:
    root = _fake(tmp_path, FPROBE_README)
    io = FakeKernel(root, {"kvm_pmu_deliver_pmi"})
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):
        s = PR.ProbeSession(root, io, kallsyms=_kallsyms(tmp_path, ["kvm_pmu_deliver_pmi"]),
                            group=f"vpmutrace_{pid}", version=(7, 0))
        s.create()
        (root / "instances" / f"vpmutrace.{pid}").mkdir()
    (root / "dynamic_events").write_text("".join(line + "\n" for rel, line in io.lines if rel == "dynamic_events"))
    removed = PR.cleanup_leftovers(io)
    assert removed == [f"instance vpmutrace.{dead.pid}", f"probe vpmutrace_{dead.pid}:kvm_pmu_deliver_pmi"]
    assert not (root / "events" / f"vpmutrace_{dead.pid}" / "kvm_pmu_deliver_pmi").exists()
    assert (root / "events" / f"vpmutrace_{os.getpid()}" / "kvm_pmu_deliver_pmi").exists()  # ours: alive
    assert (root / "instances" / f"vpmutrace.{os.getpid()}").exists()


@pytest.mark.skipif(not (KVM and ROOT), reason="needs root and /dev/kvm")
def test_record_removes_its_probes_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """record() against the fake tracefs: the probes exist during the capture and are gone after a signal."""
    import vpmutrace.collectors.record as R

    root = _fake(tmp_path, FPROBE_README)
    (root / "events" / "kvm" / "kvm_exit").mkdir(parents=True)
    (root / "events" / "kvm" / "kvm_exit" / "format").write_text("name: kvm_exit\n")
    names = ["kvm_pmu_deliver_pmi", "kvm_perf_overflow"]
    fake = FakeKernel(root, set(names))
    seen = {}

    def session(r: Path) -> PR.ProbeSession:
        return PR.ProbeSession(r, fake, kallsyms=_kallsyms(tmp_path, names), version=(7, 0))

    def capture(opt, r, events, res, guard) -> None:  # noqa: ANN001
        seen["events"] = list(events)
        seen["exist"] = [(root / "events" / e.replace(":", "/")).is_dir() for e in events if "vpmutrace_" in e]
        raise R.Interrupted(2)

    monkeypatch.setenv("VPMUTRACE_TRACEFS", str(root))
    monkeypatch.setenv("VPMUTRACE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(R, "_probe_session", session)
    monkeypatch.setattr(R, "_run_tracefs", capture)
    with pytest.raises(R.Interrupted):
        R.record(R.RecordOptions(out=tmp_path / "cap", backend="tracefs", events="kvm:kvm_exit,kvm-pmu",
                                 duration=1, progress=False))
    assert seen["exist"] == [True, True] and "kvm:kvm_exit" in seen["events"]
    assert not [p for p in (root / "events").iterdir() if p.name.startswith("vpmutrace_")
                and any(p.iterdir())]
    assert not list((tmp_path / "state").iterdir())  # the guardian was told the capture ended cleanly


def _neither() -> bool:
    return not (TRACEFS / "kprobe_events").exists() and "f[:[<group>/]" not in \
        (TRACEFS / "README").read_text(errors="replace") if (TRACEFS / "README").exists() else False


@pytest.mark.skipif(not (KVM and ROOT), reason="needs root and /dev/kvm")
def test_refusal_and_summary_on_a_host_without_probe_events(tmp_path: Path) -> None:
    if not _neither():
        pytest.skip("this host has kprobe or fprobe events")
    cli = [sys.executable, "-m", "vpmutrace", "record"]
    r = subprocess.run([*cli, "--events", "kvm-pmu", "-o", str(tmp_path / "a"), "--duration", "1"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "neither kprobe events" in r.stderr and "--events vpmu" in r.stderr
    r = subprocess.run([*cli, "--backend", "tracefs", "--events", "exits,kvm-pmu", "-o", str(tmp_path / "b"),
                        "--duration", "0.5"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^probes +none: this kernel has neither kprobe events", r.stdout, re.M)
    cap = json.loads((tmp_path / "b" / "capture.json").read_text())
    assert cap["summary"]["probes"]["mechanism"] is None and cap["summary"]["probes"]["created"] == []


# ---- analyses on simulated traces with probe events ----------------------------------------------------------
def _load(sim: Sim, tmp_path: Path, fmt: str):  # noqa: ANN202
    f = sim.write_trace_dat(tmp_path / "t.dat") if fmt == "trace.dat" else sim.write_perf_data(tmp_path / "t.perf.data")
    td = load_trace([f])
    td.meta["host"] = sim.host_snapshot()
    assert td.meta["unparsed"] == 0
    return td


@pytest.mark.parametrize("fmt", ["trace.dat", "perf.data"])
@pytest.mark.parametrize("kind", ["fprobe", "kprobe"])
@pytest.mark.parametrize("isa", ["vmx", "svm"])
def test_mediated_windows_and_switches_equal_the_probes_truth(tmp_path: Path, fmt: str, kind: str,
                                                              isa: str) -> None:
    sim = Sim("mediated-steady", isa, 5, probes=kind)
    sim.run()
    td = _load(sim, tmp_path, fmt)
    doc, res = run(td, Config.for_trace(td), only=["ownership", "pmi"])
    o = doc["ownership"]
    assert o["source"] == "probes" and o["probes"] == f"{K.FN_MEDIATED_LOAD}/{K.FN_MEDIATED_PUT}"
    w = res["ownership"].rows["ownership_windows"]
    got = sorted(zip(w["pid"].to_list(), w["start_ns"].to_list(), w["end_ns"].to_list(), strict=True))
    assert got == sorted((x["pid"], x["load"], x["put"]) for x in sim.probes.truth.windows)
    assert o["switches"]["count"] == sim.truth.switches
    # fastpath exits happened inside windows, and did not count as switches
    assert o["switches"]["fastpath_exits"] == sim.truth.fastpath_exits > 0
    # every complete guest run ended in an exit that either switched or stayed (the last runs are open)
    assert o["guest_runs"] == o["switches"]["count"] + o["switches"]["fastpath_exits"]
    assert o["switches"]["cost_ns_per_switch_p50"] == 2 * (sim.switch_ns // 2)
    lat = o["switches"]["exit_latency"]
    assert lat["stayed"]["exits"] == sim.truth.fastpath_exits and lat["switched"]["exits"] == sim.truth.switches
    assert any(f["kind"] == "switches_probed" and f["certainty"] == "fact" for f in doc["findings"])
    d = doc["pmi"]["delivery"]
    assert d["source"] == "probes" and d["pairs"] == len(sim.probes.truth.deliveries) > 0
    truth = sorted(b["ts"] - a["ts"] for a, b in zip(sim.probes.truth.overflows, sim.probes.truth.deliveries,
                                                       strict=True))
    assert d["max_ns"] == truth[-1]
    # the same trace without the probe tables: back to the inferred range
    for t in [t for t in td.tables if t.startswith("vpmutrace_")]:
        del td.tables[t]
    doc2, _ = run(td, Config.for_trace(td), only=["ownership", "pmi"])
    assert doc2["ownership"]["source"] == "inferred" and doc2["pmi"]["delivery"]["source"] == "inferred"
    assert doc2["ownership"]["switches"]["min"] <= sim.truth.switches <= doc2["ownership"]["switches"]["max"]


@pytest.mark.parametrize("fmt", ["trace.dat", "perf.data"])
@pytest.mark.parametrize("kind", ["fprobe", "kprobe"])
def test_failed_perf_event_creation_is_a_fact_with_counter_and_time(tmp_path: Path, fmt: str, kind: str) -> None:
    sim = Sim("emulated-create-fail", "vmx", 5, probes=kind)
    sim.run()
    td = _load(sim, tmp_path, fmt)
    doc, _ = run(td, Config.for_trace(td), only=["reprogram"])
    fails = sim.probes.truth.create_failures
    assert fails and {f["pmc_idx"] for f in fails} == {2}
    f = [x for x in doc["findings"] if x["kind"] == "perf_event_create_failed"]
    assert len(f) == 1 and f[0]["certainty"] == "fact" and f[0]["severity"] == "high"
    assert f[0]["first_ts_ns"] == fails[0]["ts"] and f[0]["count"] == len(fails)
    assert "counter 2 (GP 2)" in f[0]["text"] and "-EINVAL (-22)" in f[0]["text"]
    ep = doc["reprogram"]["failed_episodes"][0]
    recovered = min(r["ts"] for r in sim.probes.truth.reprograms
                    if r["pid"] == fails[0]["pid"] and r["pmc_idx"] == 2 and r["created"] and r["ts"] > fails[-1]["ts"])
    # the recovery is the successful creation's entry probe (the truth records its reprogram_counter call)
    assert ep["counter"] == 2 and ep["attempts"] == len(fails) and recovered < ep["recovered_ns"] < recovered + 5000
    assert doc["reprogram"]["source"] == "probes"
    # without probes: inferred, failures not knowable
    for t in [t for t in td.tables if t.startswith("vpmutrace_")]:
        del td.tables[t]
    doc2, _ = run(td, Config.for_trace(td), only=["reprogram"])
    assert doc2["reprogram"]["source"] == "inferred" and doc2["reprogram"]["failures"] is None
