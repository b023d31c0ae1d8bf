"""Capture on this host: the bundled guest, both backends, refusals, and clean interruption."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import need_tool
from vpmutrace.collectors import events as evsets
from vpmutrace.collectors.host import Refusal, snapshot
from vpmutrace.collectors.microguest import WORKLOADS, assemble, parse_ops, run

from vpmutrace.readers import symbols as S

KVM = Path("/dev/kvm").exists()
ROOT = os.geteuid() == 0
TRACEFS = Path("/sys/kernel/tracing")
needs_kvm = pytest.mark.skipif(not KVM, reason="/dev/kvm absent: not a KVM host")
needs_root_kvm = pytest.mark.skipif(not (KVM and ROOT), reason="needs root and /dev/kvm")


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpmutrace", *args], capture_output=True, text=True, check=False,
                          env=env, **kw)


def test_op_parsing_and_assembly() -> None:
    ops = parse_ops("cpuid 0xa; wrmsr 0x186 0x4300c0; rdpmc 0; out 0x80 1; hlt")
    assert ops == [("cpuid", 0xA), ("wrmsr", 0x186, 0x4300C0), ("rdpmc", 0), ("out", 0x80, 1), ("hlt",)]
    code = assemble(ops, 5, irq=False)
    assert b"\x0f\x30" in code and b"\x0f\x33" in code and b"\x0f\xa2" in code  # wrmsr, rdpmc, cpuid
    with pytest.raises(ValueError, match="bad op"):
        parse_ops("wrmsr 0x186")


@needs_kvm
def test_guest_runs_and_reports() -> None:
    res = run(WORKLOADS["io"], 50, irq=True, timeout=10)
    assert res.outcome == "done" and res.iterations_done == 50
    assert res.io_writes == {"0x80=0x11": 50}
    assert res.interrupts_injected == 50 and res.interrupts_taken == 50
    assert res.exits == {"IO": 51, "HLT": 50}


@needs_kvm
def test_guest_wall_clock_cap() -> None:
    res = run(parse_ops("cpuid 0"), 10**9, timeout=0.5)
    assert res.outcome == "timeout" and 0 < res.iterations_done < 10**9 and res.seconds < 3


@needs_kvm
def test_guest_counts_its_gp_faults() -> None:
    # MSR 0x12345 is not architected on any x86 CPU (KVM #GPs unknown MSRs unless ignore_msrs is set)
    if Path("/sys/module/kvm/parameters/ignore_msrs").exists() and \
            Path("/sys/module/kvm/parameters/ignore_msrs").read_text().strip() == "Y":
        pytest.skip("kvm.ignore_msrs=Y: unknown MSRs do not fault")
    res = run(parse_ops("rdmsr 0x12345; wrmsr 0x12345 0; rdpmc 0x7fff"), 20, timeout=10)
    assert res.outcome == "done" and res.gp_faults == 60


def test_event_sets() -> None:
    assert evsets.expand("exits") == ["kvm:kvm_exit", "kvm:kvm_entry"]
    v = evsets.expand("vpmu,host-msr,kvm:kvm_eoi")
    assert v[:2] == ["kvm:kvm_exit", "kvm:kvm_entry"] and "msr:rdpmc" in v and v[-1] == "kvm:kvm_eoi"
    assert "msr:read_msr" not in evsets.expand("vpmu")
    with pytest.raises(Refusal, match="unknown event set"):
        evsets.expand("nonsense")


def test_snapshot_has_what_the_analyses_need() -> None:
    s = snapshot()
    for k in ("kernel_release", "kernel_cmdline", "cpu_model", "pmus", "pmu_counters", "kvm", "watchdog",
              "perf_event_paranoid", "running_vms"):
        assert k in s
    assert s["kernel_release"] == os.uname().release
    if Path("/sys/module/kvm/parameters/enable_pmu").exists():
        assert "enable_pmu" in s["kvm"]["kvm"]


@needs_root_kvm
@pytest.mark.parametrize("backend", ["perf", "tracefs"])
def test_selftest_recovers_exactly_what_the_guest_did(tmp_path: Path, backend: str) -> None:
    if backend == "perf":
        need_tool("perf")
    from vpmutrace.collectors.selftest import run_backend

    checks = run_backend(backend, tmp_path)
    bad = [(c.what, c.expected, c.got) for c in checks if not c.ok]
    assert not bad, bad
    assert any(c.what.startswith("MSR") for c in checks)


@needs_root_kvm
def test_tracefs_capture_is_read_by_trace_cmd_and_matches(tmp_path: Path) -> None:
    tc = need_tool("trace-cmd")
    guest = Path(__file__).resolve().parents[1] / "collectors" / "microguest.py"
    r = _cli("record", "--backend", "tracefs", "-o", str(tmp_path / "cap"), "--", sys.executable, str(guest),
             "-n", "100", "-q")
    assert r.returncode == 0, r.stderr
    dat = tmp_path / "cap" / "trace.dat"
    rep = subprocess.run([tc, "report", "-i", str(dat)], capture_output=True, text=True, check=False)
    assert rep.returncode == 0 and "kvm_msr" in rep.stdout
    (tmp_path / "r.txt").write_text(rep.stdout)
    from vpmutrace.readers import load_trace

    ours, theirs = load_trace([dat]), load_trace([tmp_path / "r.txt"])
    assert ours.meta["events"] == theirs.meta["events"]
    for t in ("kvm_msr", "kvm_pio", "kvm_cpuid", "kvm_userspace_exit"):
        a = ours.df(t).with_columns(((pl.col("ts_ns") + 500) // 1000 * 1000).alias("ts_ns")).drop("comm", "seq")
        assert a.equals(theirs.df(t).drop("comm", "seq")), t
    host = json.loads((tmp_path / "cap" / "host.json").read_text())
    assert host["kernel_release"] == os.uname().release
    # the kernel's symbols are kept with the capture (perf samples' kernel IPs resolve anywhere)
    if host["kallsyms"].get("addresses_visible"):
        assert host["kallsyms"]["file"] == "kallsyms.xz" and (tmp_path / "cap" / "kallsyms.xz").is_file()
    assert host["kernel_build_id"] == S.running_kernel_build_id()
    assert load_trace([tmp_path / "cap" / "dataset"]).meta["host"]["kernel_release"] == os.uname().release


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def _tracefs_state(pid: int | None = None) -> dict[str, str]:
    """The top-level tracefs settings, and the instance a recorder of process ``pid`` would own
    (instances of other processes, e.g. a test run in another checkout, are not ours to judge)."""
    state = {"instances": " ".join(sorted(p.name for p in (TRACEFS / "instances").iterdir()
                                          if pid is not None and p.name == f"vpmutrace.{pid}"))}
    for f in ("tracing_on", "set_event", "buffer_size_kb", "trace_clock"):
        state[f] = (TRACEFS / f).read_text()
    return state


@needs_root_kvm
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("backend", ["tracefs", "perf"])
def test_interrupted_record_leaves_tracefs_as_it_was(tmp_path: Path, sig: int, backend: str) -> None:
    if backend == "perf":
        need_tool("perf")
    before = _tracefs_state()
    guest = Path(__file__).resolve().parents[1] / "collectors" / "microguest.py"
    proc = subprocess.Popen([sys.executable, "-m", "vpmutrace", "record", "--backend", backend, "-o",
                             str(tmp_path / "cap"), "--", sys.executable, str(guest), "-n", "100000000",
                             "--timeout", "60", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, VPMUTRACE_STATE_DIR=str(tmp_path / "state")))
    # the signal comes 3 s after the capture started (its state file names the workload or perf), however
    # long a loaded machine took to get there
    state = tmp_path / "state" / f"{proc.pid}.json"
    end = time.monotonic() + 60
    while time.monotonic() < end and not ('"workload"' in _read(state) or '"perf"' in _read(state)):
        time.sleep(0.1)
    time.sleep(3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in out and "Traceback" not in err
    assert _tracefs_state(proc.pid) == before
    from vpmutrace.readers import load_trace

    trace = tmp_path / "cap" / ("trace.dat" if backend == "tracefs" else "trace.perf.data")
    td = load_trace([trace])
    assert td.meta["events"].get("kvm:kvm_msr", 0) > 100  # what was captured so far is kept


def test_refusals_are_one_line_with_the_fix(tmp_path: Path) -> None:
    env = dict(os.environ, VPMUTRACE_TRACEFS=str(tmp_path / "nowhere"))
    r = _cli("record", "--backend", "tracefs", "-o", str(tmp_path / "x"), "--duration", "1", env=env)
    if ROOT:
        assert r.returncode == 2 and "no tracefs" in r.stderr and "unset it" in r.stderr
        assert r.stderr.strip().count("\n") == 0
    path_without_perf = ":".join(p for p in os.environ.get("PATH", "").split(":")
                                 if not (Path(p) / "perf").exists())
    env = dict(os.environ, PATH=path_without_perf)
    r = subprocess.run([sys.executable, "-m", "vpmutrace", "record", "--backend", "perf", "-o",
                        str(tmp_path / "y"), "--duration", "1"], capture_output=True, text=True, env=env,
                       check=False)
    assert r.returncode == 2 and "perf is not installed" in r.stderr and "--backend tracefs" in r.stderr
    r = _cli("record", "--events", "bogus", "-o", str(tmp_path / "z"))
    assert r.returncode == 2 and "unknown event set" in r.stderr
    r = _cli("record", "--cpus", "x1", "-o", str(tmp_path / "z"), "--", "true")
    assert r.returncode == 2 and "bad --cpus" in r.stderr
    r = _cli("record", "-o", str(tmp_path / "z"), "--", "/nonexistent/workload")
    assert r.returncode == 2 and "command not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not ROOT or shutil.which("setpriv") is None, reason="needs root to drop to nobody")
def test_refusal_when_not_root(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "vpmutrace", "record", "--backend", "tracefs", "-o", str(tmp_path / "c"), "--duration",
                        "1"], capture_output=True, text=True, check=False,
                       env=dict(os.environ, HOME=str(tmp_path), NUMBA_CACHE_DIR=str(tmp_path / "nb")))
    assert r.returncode == 2 and "needs root" in r.stderr and "sudo" in r.stderr


def test_no_kvm_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    import vpmutrace.collectors.host as host

    real = host.Path

    class NoKvm(type(real())):  # type: ignore[misc]
        def exists(self) -> bool:  # noqa: D102
            return False if str(self) == "/dev/kvm" else super().exists()

    monkeypatch.setattr(host, "Path", NoKvm)
    with pytest.raises(Refusal, match="no /dev/kvm"):
        host.require_kvm()


@needs_root_kvm
def test_samples_and_cpu_list(tmp_path: Path) -> None:
    need_tool("perf")
    guest = Path(__file__).resolve().parents[1] / "collectors" / "microguest.py"
    r = _cli("record", "--samples", "--cpus", "0", "-o", str(tmp_path / "cap"), "--", "taskset", "-c", "0",
             sys.executable, str(guest), "-n", "20000", "-q")
    assert r.returncode == 0, r.stderr
    from vpmutrace.readers import load_trace

    td = load_trace([tmp_path / "cap" / "dataset"])
    s = td.df("samples")
    assert s.height > 0
    # no hardware PMU here means software cpu-clock; with one, cycles for guest and host
    assert set(s["event"].unique().to_list()) <= {"cpu-clock", "cycles:HG"}
    assert set(s["cpumode"].unique().to_list()) <= {"kernel", "user", "guest_kernel", "guest_user", "hypervisor"}
    assert set(td.df("kvm_msr")["cpu"].unique().to_list()) == {0}


@needs_root_kvm
def test_perf_progress_counts_events_while_recording(tmp_path: Path) -> None:
    perf = need_tool("perf")
    from vpmutrace.collectors.perf_backend import PerfProgress

    guest = Path(__file__).resolve().parents[1] / "collectors" / "microguest.py"
    out = tmp_path / "p.perf.data"
    proc = subprocess.Popen([perf, "record", "-q", "-a", "-e", "kvm:kvm_msr", "-o", str(out), "--",
                             sys.executable, str(guest), "-n", "3000000", "--timeout", "4", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prog = PerfProgress(out)
    seen = []
    while proc.poll() is None:
        time.sleep(0.5)
        seen.append(prog.update()[0])
    final = prog.update()[0]
    from vpmutrace.readers import load_trace

    decoded = load_trace([out]).meta["events"]["kvm:kvm_msr"]
    assert final == decoded  # every sample counted once, nothing twice
    assert any(0 < s < final for s in seen)  # and counted while perf was still writing


PROC_INTERRUPTS = """           CPU0       CPU1
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
NMI:          3          4   Non-maskable interrupts
LOC:     225129     270070   Local timer interrupts
PMI:          3          4   Performance monitoring interrupts
VPMI:        17         25   Perf Guest Mediated PMI
"""


def test_interrupts_rows_are_summed_over_cpus() -> None:
    from vpmutrace.collectors.host import interrupts

    got = interrupts(PROC_INTERRUPTS)
    assert got == {"24": 1, "NMI": 7, "LOC": 495199, "PMI": 7, "VPMI": 42}


def test_finish_snapshot_records_the_capture_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    import vpmutrace.collectors.host as h

    monkeypatch.setattr(h, "interrupts", lambda text=None: {"VPMI": 50, "NMI": 9, "24": 3})
    snap = h.finish_snapshot({"interrupts_before": {"VPMI": 42, "NMI": 7, "24": 1}})
    assert snap["interrupts_delta"] == {"VPMI": 8, "NMI": 2}  # named rows only, not device IRQs


def test_watchdog_kind_from_dmesg_and_config() -> None:
    from vpmutrace.collectors.host import watchdog_kind

    perf_line = ["[    1.2] NMI watchdog: Enabled. Permanently consumes one hw-PMU counter."]
    assert watchdog_kind(1, perf_line, {})[0] == "perf"
    assert watchdog_kind(1, [], {"CONFIG_HARDLOCKUP_DETECTOR_BUDDY": "y"})[0] == "buddy"
    assert watchdog_kind(1, [], {"CONFIG_HARDLOCKUP_DETECTOR_BUDDY": "y", "CONFIG_HARDLOCKUP_DETECTOR_PERF": "y",
                                 "CONFIG_HARDLOCKUP_DETECTOR_PREFER_BUDDY": "y"})[0] == "buddy"
    assert watchdog_kind(1, None, {"CONFIG_HARDLOCKUP_DETECTOR_PERF": "y"})[0] == "perf"
    assert watchdog_kind(1, [], {"CONFIG_HARDLOCKUP_DETECTOR_PERF": "y"})[0] is None  # dmesg read: no line
    assert watchdog_kind(0, perf_line, {})[0] is None


def test_snapshot_feeds_the_analyses(tmp_path: Path) -> None:
    """A snapshot of this host gives the analyses their facts: design none when kvm.enable_pmu=N."""
    from vpmutrace.analyze.context import infer_design, infer_watchdog

    s = snapshot()
    wd = infer_watchdog(s)
    assert wd.source == "snapshot" and wd.value["enabled"] == bool(s["watchdog"]["nmi_watchdog"])
    enable_pmu = (s.get("kvm", {}).get("kvm") or {}).get("enable_pmu")
    if enable_pmu == "N":
        from vpmutrace.analyze.context import Config
        from vpmutrace.tracedata import TraceBuilder

        td = TraceBuilder().finish()
        assert infer_design(td, s, None, Config()).value == "none"


def test_tsc_khz_from_the_kernel_calibration() -> None:
    from vpmutrace.collectors.host import tsc_khz

    lines = ["[    0.000052] tsc: Detected 2599.998 MHz processor",
             "[    1.512345] tsc: Refined TSC clocksource calibration: 2918.400 MHz"]
    assert tsc_khz(lines)[0] == 2918400 and tsc_khz(lines[:1])[0] == 2599998
