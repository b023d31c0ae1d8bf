"""`vpmutrace record`: checks, host snapshot, capture with progress, summary, ingest.

Output directory layout:
  trace.perf.data | trace.dat   the raw capture
  host.json                     host snapshot (kernel, kvm parameters, PMU, watchdog, VMs)
  capture.json                  what was asked and what happened (events, missing, lost, errors)
  dataset/                      the Parquet dataset (unless --raw-only)

Faults (collectors/guardian.py): the workload and perf get a parent-death signal, and a guardian
process stops and salvages the capture if the recorder is killed; before each capture (and on
``record --cleanup``) what dead recorders left is salvaged and removed. A full disk ends the
capture with ``fault`` set: what was written is kept readable and the loss is in the summary.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpmutrace.collectors import events as evsets
from vpmutrace.collectors import probes as probe_set
from vpmutrace.collectors.guardian import Guard, pdeathsig, proc_ref, salvage_dead
from vpmutrace.collectors.host import (
    Refusal,
    finish_snapshot,
    hardware_pmu,
    require_kvm,
    require_perf,
    require_root,
    save_kallsyms,
    snapshot,
    tracefs_root,
)
from vpmutrace.collectors.perf_repair import disk_full, needs_repair, repair
from vpmutrace.collectors.probes import ProbeSession, TracefsIO, cleanup_leftovers

from vpmutrace.capture import CAPTURE_FILE, DATASET_DIR, HOST_FILE, PERF_TRACE, TRACEFS_TRACE, coverage, coverage_lines
from vpmutrace.errors import warning_line
from vpmutrace.outputs import output_dir


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class RecordOptions:
    out: Path
    backend: str = "perf"
    events: str = "vpmu"
    cpus: list[int] | None = None
    duration: float | None = None
    command: list[str] | None = None
    samples: bool = False
    raw_only: bool = False
    buffer_kb: int = 16384
    progress: bool = True


@dataclass
class RecordResult:
    backend: str
    trace_file: Path
    events_requested: list[str]
    events_missing: list[str]
    interrupted: str | None = None
    command_status: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    dataset: Path | None = None
    fault: str | None = None  # the capture ended early (disk full, perf died): what is kept is readable


def parse_cpus(spec: str | None) -> list[int] | None:
    """'0-3,6' -> [0, 1, 2, 3, 6]."""
    if not spec:
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            a, _, b = part.partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise Refusal(f"bad --cpus {spec!r}: expected a CPU list such as 0-3,6") from None
    return sorted(set(out))


def _progress(msg: str, enabled: bool) -> None:
    if enabled:
        sys.stderr.write("\r" + msg.ljust(78))
        sys.stderr.flush()


def record(opt: RecordOptions) -> RecordResult:
    if opt.backend not in ("perf", "tracefs"):
        raise Refusal(f"unknown backend {opt.backend!r}: perf or tracefs")
    if opt.command and opt.duration is not None:
        raise Refusal("give either --duration or a command after --, not both")
    if opt.command and shutil.which(opt.command[0]) is None:
        raise Refusal(f"command not found: {opt.command[0]}")
    wanted = evsets.expand(opt.events)
    probes = evsets.wants_probes(opt.events)
    if opt.backend == "tracefs":
        require_root("the tracefs backend")
    for line in cleanup():
        print(f"record: cleaned up after an earlier capture: {line}", file=sys.stderr)
    if probes:
        require_root("the kvm-pmu probes")
    perf = require_perf() if opt.backend == "perf" else None
    root = tracefs_root()
    require_kvm()
    have, missing = evsets.available(wanted, root)
    if wanted and not any(e.startswith("kvm:") for e in have):
        raise Refusal("this kernel has no kvm tracepoints (is the kvm module loaded?): modprobe kvm_intel/kvm_amd")
    session = _probe_session(root) if probes else None
    if session is not None and session.mechanism is None and not wanted:
        raise Refusal(f"cannot record kvm-pmu: {session.mech.why_none()}; record tracepoints instead "
                      "(--events vpmu)")
    output_dir(opt.out, "record", owns=(CAPTURE_FILE,))
    opt.out = opt.out.resolve()
    opt.out.mkdir(exist_ok=True)
    snap = snapshot()
    (opt.out / HOST_FILE).write_text(json.dumps(snap, indent=2) + "\n")
    if missing:
        print(warning_line(f"not on this kernel, skipped: {', '.join(missing)}"), file=sys.stderr)
    trace_file = opt.out / (PERF_TRACE if opt.backend == "perf" else TRACEFS_TRACE)
    res = RecordResult(opt.backend, trace_file, wanted, missing)

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    for s in old:
        signal.signal(s, on_signal)
    guard = Guard({"backend": opt.backend, "out": str(opt.out), "trace_file": str(trace_file),
                   "tracefs_root": str(root), "probe_group": session.group if session is not None else None,
                   "command": opt.command})
    try:
        # the probes exist only inside this block: removed on the capture's end, error or interruption
        events = have + (session.create() if session is not None else [])
        if opt.backend == "perf":
            assert perf is not None
            _run_perf(opt, perf, events, res, guard, root)
        else:
            _run_tracefs(opt, root, events, res, guard)
    finally:
        if session is not None:
            session.remove()
            res.summary["probes"] = session.summary()
        guard.done()
        for s, h in old.items():
            signal.signal(s, h)
    res.fault = res.fault or next(iter(res.summary.get("errors", [])), None)
    _progress("", opt.progress)
    if opt.progress:
        sys.stderr.write("\r")
    # the kernel's symbols, for naming samples' kernel IPs wherever the trace is read (after the capture:
    # modules loaded during it are in, and nothing delays its start)
    try:
        snap["kallsyms"] = save_kallsyms(opt.out)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        (opt.out / "kallsyms.xz").unlink(missing_ok=True)  # a partial copy is worse than none
        snap["kallsyms"] = {"file": None, "why": f"not kept: {e.strerror}"}
    try:
        (opt.out / HOST_FILE).write_text(json.dumps(finish_snapshot(snap), indent=2) + "\n")
        (opt.out / CAPTURE_FILE).write_text(json.dumps({
            "backend": res.backend, "trace_file": str(res.trace_file), "events_requested": res.events_requested,
            "events_missing": res.events_missing, "interrupted": res.interrupted, "fault": res.fault,
            "command": opt.command, "command_status": res.command_status, "duration": opt.duration,
            "cpus": opt.cpus, "summary": res.summary}, indent=2) + "\n")
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        res.fault = res.fault or f"disk full writing {e.filename or opt.out}: {e.strerror}"
        return res  # the raw capture is kept; nothing more fits
    if not opt.raw_only:
        from vpmutrace.readers import load_trace

        td = load_trace([trace_file])
        td.meta["host"] = json.loads((opt.out / HOST_FILE).read_text())
        td.meta["capture"] = json.loads((opt.out / CAPTURE_FILE).read_text())
        try:
            res.dataset = td.save(opt.out / DATASET_DIR)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            res.fault = res.fault or f"disk full writing the dataset ({e.strerror}): the raw capture is kept"
            shutil.rmtree(opt.out / DATASET_DIR, ignore_errors=True)
        res.summary["decoded_events"] = sum(td.meta["events"].values())
        res.summary["events_by_kind"] = td.meta["events"]
        res.summary["lost_events"] = td.meta["lost_events"]
        res.summary["lost_notices"] = td.meta["lost_notices"]
        res.summary["unparsed"] = td.meta["unparsed"]
    return res


def cleanup(root: Path | None = None) -> list[str]:
    """Salvage and remove what dead recorders left (`record --cleanup`, and before every capture):
    captures whose recorder and guardian both died become trace.dat files, then instances and probe
    groups of dead recorders are removed. Returns what was done."""
    done = salvage_dead()
    with contextlib.suppress(Refusal):
        root = root or tracefs_root()
    if root is not None:
        done += cleanup_leftovers(TracefsIO(root))
    return done


def _probe_session(root: Path) -> ProbeSession:
    return ProbeSession(root, TracefsIO(root))


def _workload(opt: RecordOptions, guard: Guard) -> subprocess.Popen | None:
    if not opt.command:
        return None
    proc = subprocess.Popen(opt.command, env=guard.env(), preexec_fn=pdeathsig(signal.SIGTERM))  # noqa: PLW1509
    guard.update(workload=proc_ref(proc.pid))
    return proc


def _stop_workload(proc: subprocess.Popen | None, res: RecordResult, guard: Guard) -> None:
    """The workload stopped (SIGTERM, SIGKILL after 5 s), and what it started and left running."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        res.command_status = proc.returncode
    guard.stop_marked()


def _run_tracefs(opt: RecordOptions, root: Path, have: list[str], res: RecordResult, guard: Guard) -> None:
    from vpmutrace.collectors.tracefs_backend import TracefsCapture

    cap = TracefsCapture(root, have, res.trace_file, opt.cpus, opt.buffer_kb)
    cap.start(on_ready=lambda st: guard.update(**st))
    proc = None
    t0 = time.monotonic()
    try:
        try:
            proc = _workload(opt, guard)
            while True:
                if proc is not None and proc.poll() is not None:
                    res.command_status = proc.returncode
                    break
                if cap.fault:  # disk full: the capture ends here, the workload with it
                    res.fault = cap.fault
                    _stop_workload(proc, res, guard)
                    break
                if proc is None and time.monotonic() - t0 >= (opt.duration if opt.duration is not None else 10):
                    break
                n, lost = cap.progress()
                _progress(f"recording (tracefs) {time.monotonic() - t0:6.1f} s  {n} events  lost {lost}",
                          opt.progress)
                time.sleep(0.2)
        except Interrupted as e:
            res.interrupted = str(e)
            _stop_workload(proc, res, guard)
        try:
            res.summary = cap.stop()
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise Refusal(f"disk full: {res.trace_file} could not be written ({e.strerror}), even without the "
                          "spool and symbol tables: the capture is lost; free space in "
                          f"{res.trace_file.parent}") from None
    finally:
        cap.cleanup()


def _run_perf(opt: RecordOptions, perf: str, have: list[str], res: RecordResult, guard: Guard,
              root: Path) -> None:
    from vpmutrace.collectors.perf_backend import PerfCapture, PerfProgress

    sample = None
    if opt.samples:
        sample = "cycles:HG" if hardware_pmu() else "cpu-clock"
    cap = PerfCapture(perf, have, res.trace_file, opt.cpus, sample)
    cap.start(opt.command, opt.duration, preexec_fn=pdeathsig(signal.SIGINT), env=guard.env())
    assert cap.proc is not None
    guard.update(perf=proc_ref(cap.proc.pid))
    progress = PerfProgress(res.trace_file)
    t0 = time.monotonic()
    try:
        while cap.running():
            if opt.progress:
                n, lost = progress.update()
                _progress(f"recording (perf) {time.monotonic() - t0:6.1f} s  {n} events  lost {lost}  "
                          f"{cap.bytes_written() / 2**20:.1f} MB", True)
            time.sleep(0.5)
    except Interrupted as e:
        res.interrupted = str(e)
        cap.interrupt()
    try:
        status = cap.wait(timeout=120)
    except Interrupted as e:  # a second signal: still let perf finish its file
        res.interrupted = str(e)
        status = cap.wait(timeout=120)
    if res.interrupted:  # perf stopped its workload; not what that started
        guard.stop_marked()
    if opt.command:
        res.command_status = status
    res.summary = {"perf_status": status, "bytes": cap.bytes_written(), "sample_event": sample,
                   "perf_argv": cap.argv, "file": str(res.trace_file)}
    why = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}, see {cap.stderr_file}"
    if not res.trace_file.exists() or res.trace_file.stat().st_size == 0:
        raise Refusal(f"perf record wrote no data ({why})")
    full = disk_full(res.trace_file)
    if needs_repair(res.trace_file):
        try:
            rep = repair(res.trace_file, root, have)
        except OSError as e:
            raise Refusal(f"perf record died ({why}) and its file could not be repaired: {e.strerror}") from None
        res.summary["repair"] = rep
        res.fault = (f"{'disk full: ' if full else ''}perf record stopped ({why}) before finishing its file: "
                     f"repaired ({rep['records']} records kept, {rep['torn_bytes']} bytes of a torn record and "
                     f"{rep['records_cut_for_room']} records cut; events still in perf's buffers are lost)")
    elif full or (status != 0 and not opt.command and not res.interrupted):
        res.fault = f"{'disk full: ' if full else ''}perf record failed ({why})"


def describe(res: RecordResult) -> str:
    s = res.summary
    lines = [f"backend      {res.backend}", f"trace        {res.trace_file}"]
    if res.interrupted:
        lines.append(f"interrupted  by {res.interrupted}; what was captured so far is kept")
    if res.command_status is not None:
        lines.append(f"command      exit status {res.command_status}")
    if res.events_missing:
        lines.append(f"skipped      {', '.join(res.events_missing)} (not on this kernel)")
    if "decoded_events" in s:
        lines.append(f"events       {s['decoded_events']}  lost {s['lost_events']} "
                     f"({s['lost_notices']} notices)  unparsed {s['unparsed']}")
        lines += coverage_lines(coverage(res.events_requested, s["events_by_kind"], res.events_missing))
        others = {k: v for k, v in s["events_by_kind"].items() if k not in res.events_requested}
        for k, v in sorted(others.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:<40}{v:>10}  (not a requested tracepoint)")
    else:
        lines.append("events       not decoded (--raw-only): `vpmutrace info` on the directory counts them")
    if "probes" in s:
        lines += probe_set.describe(s["probes"])
    if s.get("overruns"):
        lines.append(f"overruns     {s['overruns']} (ring buffer too small: raise --buffer-kb)")
    for e in s.get("errors", []):
        lines.append(f"error        {e}")
    if s.get("lost_unwritten_events") or s.get("lost_unwritten_pages") or s.get("lost_unread_events"):
        lines.append(f"lost         {s['lost_unwritten_events']} events in {s['lost_unwritten_pages']} pages read "
                     f"from the kernel but not written, {s['lost_unread_events']} left unread in the kernel's "
                     "buffer")
    for n in s.get("notes", []):
        lines.append(f"note         {n}")
    if res.fault and res.fault not in s.get("errors", []):
        lines.append(f"error        {res.fault}")
    if res.dataset:
        lines.append(f"dataset      {res.dataset}")
    return "\n".join(lines)


__all__ = ["RecordOptions", "RecordResult", "record", "describe", "parse_cpus", "Refusal"]
