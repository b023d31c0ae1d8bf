"""Capture faults on this host: a recorder killed with SIGKILL, its guardian killed too, leftovers of dead
recorders, a full disk, perf dying mid-run, ring-buffer overruns (perf's LOST records:
tests/test_defects.py). Each ends with nothing recording, what was captured readable (by us and by
trace-cmd / perf script) and the loss reported."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_tool

from vpmutrace.readers import load_trace

KVM = Path("/dev/kvm").exists()
ROOT = os.geteuid() == 0
TRACEFS = Path("/sys/kernel/tracing")
GUEST = Path(__file__).resolve().parents[1] / "collectors" / "microguest.py"
pytestmark = pytest.mark.skipif(not (KVM and ROOT and TRACEFS.is_dir()), reason="needs root, /dev/kvm and tracefs")


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, VPMUTRACE_STATE_DIR=str(tmp_path / "state"))


def _record(tmp_path: Path, backend: str, out: Path, *extra: str, seconds: int = 60) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vpmutrace", "record", "--backend", backend, "-o", str(out),
                             *extra, "--", sys.executable, str(GUEST), "-n", "100000000", "--timeout",
                             str(seconds), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))


def _state(tmp_path: Path, pid: int, key: str, timeout: float = 30) -> dict:
    """The recorder's state file once it names ``key`` (the instance, the workload, perf)."""
    f = tmp_path / "state" / f"{pid}.json"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            st = json.loads(f.read_text())
            if key in st:
                return st
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no {key} in {f}")


def _cpu_seconds(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime (fields 14, 15)


def _guest_pid(st: dict) -> int | None:
    if "workload" in st:
        return int(st["workload"]["pid"])
    try:  # perf's workload is perf's child
        kids = Path(f"/proc/{st['perf']['pid']}/task/{st['perf']['pid']}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def _recording(out: Path, backend: str, st: dict, timeout: float = 120) -> None:
    """Wait until the guest has run 1 s of CPU time inside the capture (a loaded machine starts it late,
    and other processes' events can fill the first pages) and the capture holds data."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid = _guest_pid(st)
        if pid is not None and _cpu_seconds(pid) >= 1.0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the guest did not run")
    if backend == "perf":
        from vpmutrace.collectors.perf_backend import PerfProgress

        prog = PerfProgress(out / "trace.perf.data")
        while time.monotonic() < end and prog.update()[0] < 2000:
            time.sleep(0.2)
        assert prog.events >= 2000, "perf recorded nothing"
        return
    spool = out / ".trace.dat.spool"
    while time.monotonic() < end and sum(f.stat().st_size for f in spool.glob("cpu*")) < 64 * 4096:
        time.sleep(0.2)
    assert sum(f.stat().st_size for f in spool.glob("cpu*")) >= 64 * 4096, "nothing spooled"


def _gone(pid: int, timeout: float) -> bool:
    """The process ended (a zombie waiting for its parent counts as ended)."""
    from vpmutrace.collectors.guardian import start_time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if start_time(pid) is None:
            return True
        time.sleep(0.1)
    return False


def _wait_no_state(tmp_path: Path, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and list((tmp_path / "state").glob("*.json")):
        time.sleep(0.2)
    assert not list((tmp_path / "state").glob("*.json")), "the capture was not salvaged"


def _trace_cmd_counts(dat: Path) -> dict[str, int]:
    tc = need_tool("trace-cmd")
    rep = subprocess.run([tc, "report", "-i", str(dat)], capture_output=True, text=True, check=True).stdout
    out: dict[str, int] = {}
    for m in re.finditer(r"\]\s+\d+\.\d+:\s+(\w+):", rep):
        out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB tmpfs: the disk that fills up during a capture."""
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(d)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the disk-full case: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _tracefs_capture_running(tmp_path: Path) -> tuple[Path, subprocess.Popen, dict, Path]:
    """A tracefs capture of the guest that has spooled pages: (out dir, recorder, its state, instance)."""
    out = tmp_path / "cap"
    rec = _record(tmp_path, "tracefs", out)
    st = _state(tmp_path, rec.pid, "workload")
    _recording(out, "tracefs", st)
    return out, rec, st, TRACEFS / "instances" / st["instance"]


def test_sigkilled_tracefs_recorder_leaves_nothing_recording_and_a_readable_trace(tmp_path: Path) -> None:
    out, rec, st, inst = _tracefs_capture_running(tmp_path)
    assert (inst / "tracing_on").read_text().strip() == "1"
    rec.kill()
    rec.wait()
    _wait_no_state(tmp_path)
    assert not inst.exists()  # stopped and removed
    assert _gone(st["workload"]["pid"], 10)  # the workload stopped with it
    cap = json.loads((out / "capture.json").read_text())
    assert "died" in cap["interrupted"] and cap["salvaged_by"] == "vpmutrace.collectors.guardian"
    assert any("stopped" in x for x in cap["salvaged"])
    td = load_trace([out / "trace.dat"])
    n = td.meta["events"]
    assert n.get("kvm:kvm_msr", 0) > 100 and sum(n.values()) == cap["summary"]["events"]
    assert td.meta["lost_events"] == 0 and not (out / ".trace.dat.spool").exists()
    theirs = _trace_cmd_counts(out / "trace.dat")
    assert theirs["kvm_msr"] == n["kvm:kvm_msr"] and theirs["kvm_cpuid"] == n["kvm:kvm_cpuid"]


def test_sigkilled_recorder_stops_what_the_workload_started(tmp_path: Path) -> None:
    """A workload that starts a process of its own (here a shell: a sleep in the background, then the
    guest): the parent-death signal reaches the guest only; the guardian stops the sleep too, found by
    the capture's mark in its environment (it was reparented when the guest ended)."""
    out = tmp_path / "cap"
    cmd = f"sleep 3141 & exec {sys.executable} {GUEST} -n 100000000 --timeout 60 -q"
    rec = subprocess.Popen([sys.executable, "-m", "vpmutrace", "record", "--backend", "tracefs", "-o", str(out),
                            "--", "sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env(tmp_path))
    st = _state(tmp_path, rec.pid, "workload")
    _recording(out, "tracefs", st)
    from vpmutrace.collectors.guardian import marked

    kids = [p for p in marked(st["mark"]) if "3141" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(kids) == 1
    rec.kill()
    rec.wait()
    _wait_no_state(tmp_path)
    assert _gone(kids[0], 10) and _gone(st["workload"]["pid"], 10)
    cap = json.loads((out / "capture.json").read_text())
    assert any("the workload started stopped" in x for x in cap["salvaged"]), cap["salvaged"]


def test_sigkilled_perf_recorder_stops_perf_which_finishes_its_file(tmp_path: Path) -> None:
    need_tool("perf")
    out = tmp_path / "cap"
    rec = _record(tmp_path, "perf", out, seconds=57)
    st = _state(tmp_path, rec.pid, "perf")
    _recording(out, "perf", st)
    rec.kill()
    rec.wait()
    assert _gone(st["perf"]["pid"], 60)  # the parent-death signal (SIGINT) ended perf
    _wait_no_state(tmp_path)
    from vpmutrace.collectors.perf_repair import needs_repair

    assert not needs_repair(out / "trace.perf.data")  # perf wrote its header and features itself
    assert json.loads((out / "capture.json").read_text())["salvaged_by"] == "vpmutrace.collectors.guardian"
    assert load_trace([out / "trace.perf.data"]).meta["events"].get("kvm:kvm_msr", 0) > 100
    # perf stopped its workload (SIGTERM) before exiting
    r = subprocess.run(["pgrep", "-f", f"{GUEST} -n 100000000 --timeout 57"], capture_output=True, text=True,
                       check=False)
    assert r.stdout.strip() == ""


def test_recorder_and_guardian_killed_next_cleanup_salvages(tmp_path: Path) -> None:
    out, rec, st, inst = _tracefs_capture_running(tmp_path)
    os.kill(st["guardian"]["pid"], signal.SIGKILL)
    assert _gone(st["guardian"]["pid"], 10)
    rec.kill()
    rec.wait()
    time.sleep(1)
    assert (inst / "tracing_on").read_text().strip() == "1"  # left recording: what the cleanup is for
    assert _gone(st["workload"]["pid"], 10)  # the kernel's parent-death signal stopped the workload
    r = subprocess.run([sys.executable, "-m", "vpmutrace", "record", "--cleanup"], capture_output=True, text=True,
                       env=_env(tmp_path), check=False)
    assert r.returncode == 0, r.stderr
    assert "instance " + st["instance"] + " stopped" in r.stdout and "events in" in r.stdout
    assert not inst.exists()
    assert load_trace([out / "trace.dat"]).meta["events"].get("kvm:kvm_msr", 0) > 100
    r = subprocess.run([sys.executable, "-m", "vpmutrace", "record", "--cleanup"], capture_output=True, text=True,
                       env=_env(tmp_path), check=False)
    assert r.stdout.strip() == "nothing left behind by earlier captures"


def test_leftover_instance_of_a_dead_recorder_is_removed_by_the_next_record(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    inst = TRACEFS / "instances" / f"vpmutrace.{dead.pid}"
    inst.mkdir()
    (inst / "events" / "sched" / "sched_switch" / "enable").write_text("1")
    (inst / "tracing_on").write_text("1")
    r = subprocess.run([sys.executable, "-m", "vpmutrace", "record", "--backend", "tracefs", "--raw-only",
                        "--events", "exits", "-o", str(tmp_path / "c"), "--duration", "0.5"], capture_output=True,
                       text=True, env=_env(tmp_path), check=False)
    assert r.returncode == 0, r.stderr
    assert f"cleaned up after an earlier capture: instance vpmutrace.{dead.pid}" in r.stderr
    assert not inst.exists()


def test_disk_full_tracefs_capture_ends_with_a_clear_error_and_a_readable_trace(tmp_path: Path,
                                                                                tiny_disk: Path) -> None:
    out = tiny_disk / "c"
    rec = _record(tmp_path, "tracefs", out, seconds=30)
    stdout, stderr = rec.communicate(timeout=120)
    assert rec.returncode == 1, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("vpmutrace: error: disk full: ") and "what was captured so far is kept" in last
    assert "lost " in stdout and "read from the kernel but not written" in stdout
    td = load_trace([out / "trace.dat"])
    n = td.meta["events"]
    assert n.get("kvm:kvm_msr", 0) > 100
    cap = json.loads((out / "capture.json").read_text())
    assert cap["fault"].startswith("disk full") and cap["summary"]["events"] == sum(n.values())
    assert cap["summary"]["lost_unwritten_pages"] >= 1
    assert _trace_cmd_counts(out / "trace.dat")["kvm_msr"] == n["kvm:kvm_msr"]


def test_disk_full_perf_capture_is_repaired_readable_and_reported(tmp_path: Path, tiny_disk: Path) -> None:
    perf = need_tool("perf")
    out = tiny_disk / "c"
    rec = _record(tmp_path, "perf", out, seconds=30)
    stdout, stderr = rec.communicate(timeout=120)
    assert rec.returncode == 1 and "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("vpmutrace: error: disk full: perf record stopped") and "repaired" in last
    td = load_trace([out / "trace.perf.data"])
    ours = td.meta["events"].get("kvm:kvm_msr", 0)
    assert ours > 100
    rep = subprocess.run([perf, "script", "-i", str(out / "trace.perf.data")], capture_output=True, text=True,
                         check=False)
    assert rep.stdout.count("kvm:kvm_msr:") == ours


def test_perf_killed_mid_run_file_repaired_and_fault_reported(tmp_path: Path) -> None:
    perf = need_tool("perf")
    out = tmp_path / "cap"
    rec = _record(tmp_path, "perf", out, "--events", "exits,kvm:kvm_msr,kvm:kvm_cpuid")
    st = _state(tmp_path, rec.pid, "perf")
    _recording(out, "perf", st)
    os.kill(st["perf"]["pid"], signal.SIGKILL)
    stdout, stderr = rec.communicate(timeout=120)
    assert rec.returncode == 1 and "Traceback" not in stderr, stderr
    assert "perf record stopped (killed by SIGKILL) before finishing its file: repaired" in stderr
    cap = json.loads((out / "capture.json").read_text())
    rep = cap["summary"]["repair"]
    assert rep["records"] > 0 and 1 in rep["features_written"]  # HEADER_TRACING_DATA
    td = load_trace([out / "trace.perf.data"])
    ours = td.meta["events"]
    assert ours.get("kvm:kvm_msr", 0) > 100 and td.meta["unparsed"] == 0
    script = subprocess.run([perf, "script", "-i", str(out / "trace.perf.data")], capture_output=True, text=True,
                            check=False).stdout
    assert script.count("kvm:kvm_msr:") == ours["kvm:kvm_msr"]
    assert script.count("kvm:kvm_cpuid:") == ours["kvm:kvm_cpuid"]


def test_tracefs_overrun_loss_is_reported_and_the_rest_readable(tmp_path: Path) -> None:
    """A recorder that cannot keep up (stopped for 3 s, a 64 KiB buffer): the kernel overwrites pages; the
    capture reports the overruns and the trace.dat's pages carry the missing-events flags."""
    out = tmp_path / "cap"
    rec = _record(tmp_path, "tracefs", out, "--buffer-kb", "64", "--raw-only", seconds=8)
    _recording(out, "tracefs", _state(tmp_path, rec.pid, "workload"))
    rec.send_signal(signal.SIGSTOP)
    time.sleep(3)
    rec.send_signal(signal.SIGCONT)
    stdout, stderr = rec.communicate(timeout=120)
    assert rec.returncode == 0, stderr
    assert "overruns " in stdout and "raise --buffer-kb" in stdout
    cap = json.loads((out / "capture.json").read_text())
    assert cap["summary"]["overruns"] > 0
    td = load_trace([out / "trace.dat"])
    assert td.meta["lost_notices"] > 0 and td.meta["events"].get("kvm:kvm_msr", 0) > 100
