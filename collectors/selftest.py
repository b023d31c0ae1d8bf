"""`vpmutrace selftest`: record the microguest with every available backend and check the trace.

The guest reports what it did (iterations, MSR ops, port writes, #GP faults taken,
exits); the check compares that with the decoded trace, restricted to the guest's
vCPU thread, event by event kind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from vpmutrace.collectors.host import Refusal
from vpmutrace.collectors.microguest import WORKLOADS
from vpmutrace.collectors.record import RecordOptions, record

GUEST = Path(__file__).resolve().parent / "microguest.py"


@dataclass
class Check:
    backend: str
    what: str
    expected: object
    got: object

    @property
    def ok(self) -> bool:
        return self.expected == self.got


def cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def backends_here() -> list[str]:
    out = []
    if shutil.which("perf"):
        out.append("perf")
    if os.geteuid() == 0:
        out.append("tracefs")
    return out


def expected_checks(workload: str, result: dict) -> dict[str, object]:
    ops = WORKLOADS[workload]
    n = result["iterations_done"]
    msr_ops: dict[str, int] = {}
    for op in ops:
        if op[0] == "wrmsr":
            k = f"write {op[1]:#x} = {op[2]:#x}"
        elif op[0] == "rdmsr":
            k = f"read {op[1]:#x}"
        else:
            continue
        msr_ops[k] = msr_ops.get(k, 0) + n
    cpuid = {f"{op[1]:#x}": n for op in ops if op[0] == "cpuid"}
    return {"guest outcome": "done", "MSR accesses (kvm_msr)": dict(sorted(msr_ops.items())),
            "CPUID leaves (kvm_cpuid)": cpuid, "port writes (kvm_pio)": dict(sorted(result["io_writes"].items())),
            "#GP injected (kvm_inj_exception)": result["gp_faults"],
            "exits to user space (kvm_userspace_exit)": sum(result["exits"].values()),
            "lost events": 0}


def observed_checks(dataset: Path, tid: int, outcome: str) -> dict[str, object]:
    from vpmutrace.readers import load_trace

    td = load_trace([dataset])

    def mine(t: str) -> pl.DataFrame:
        return td.df(t).filter(pl.col("pid") == tid)

    msr = mine("kvm_msr")
    ops: dict[str, int] = {}
    for w, m, v, c in msr.group_by("write", "msr", "value").len().iter_rows():
        k = f"write {m:#x} = {v:#x}" if w else f"read {m:#x}"
        ops[k] = ops.get(k, 0) + c
    cpuid = {f"{f:#x}": c for f, c in mine("kvm_cpuid").group_by("function").len().iter_rows()}
    pio = {f"{p:#x}={v:#x}": c for p, v, c in mine("kvm_pio").filter(pl.col("write"))
           .group_by("port", "value").len().iter_rows() if p != 0xF4}
    # a re-injection (delivery interrupted, e.g. by a host interrupt) is the same fault again
    gp = mine("kvm_inj_exception").filter((pl.col("exception") == 13) & ~pl.col("reinjected").fill_null(False)).height
    return {"guest outcome": outcome, "MSR accesses (kvm_msr)": dict(sorted(ops.items())),
            "CPUID leaves (kvm_cpuid)": cpuid, "port writes (kvm_pio)": dict(sorted(pio.items())),
            "#GP injected (kvm_inj_exception)": gp,
            # a KVM_RUN interrupted by a signal (errno -EINTR, "restart") is not an exit the guest made
            "exits to user space (kvm_userspace_exit)": mine("kvm_userspace_exit").filter(pl.col("errno") == 0).height,
            "lost events": td.meta["lost_events"]}


def run_backend(backend: str, out: Path, iterations: int = 200) -> list[Check]:
    workload = "amd" if cpu_vendor() == "AuthenticAMD" else "intel"
    result_file = out / f"{backend}-guest.json"
    cmd = [sys.executable, str(GUEST), "--workload", workload, "-n", str(iterations), "-q",
           "--json-out", str(result_file)]
    record(RecordOptions(out=out / backend, backend=backend, events="vpmu", command=cmd, progress=False))
    result = json.loads(result_file.read_text())
    exp = expected_checks(workload, result)
    got = observed_checks(out / backend / "dataset", result["tid"], result["outcome"])
    return [Check(backend, k, exp[k], got[k]) for k in exp]


def selftest(out: Path, backends: list[str] | None = None) -> list[Check]:
    if not Path("/dev/kvm").exists():
        raise Refusal("no /dev/kvm: selftest needs a KVM host (load kvm_intel or kvm_amd)")
    chosen = backends or backends_here()
    if not chosen:
        raise Refusal("no capture backend: install perf, or run as root for the tracefs backend")
    out.mkdir(parents=True, exist_ok=True)
    checks: list[Check] = []
    for b in chosen:
        try:
            checks += run_backend(b, out)
        except Refusal as e:
            checks.append(Check(b, "capture", "recorded", f"refused: {e}"))
    return checks


def render(checks: list[Check]) -> str:
    def short(v: object) -> str:
        s = json.dumps(v) if not isinstance(v, str) else v
        return s if len(s) <= 60 else s[:57] + "..."

    lines = [f"{'backend':<8} {'check':<42} {'result':<6} detail"]
    for c in checks:
        detail = short(c.got) if c.ok else f"expected {short(c.expected)}, got {short(c.got)}"
        lines.append(f"{c.backend:<8} {c.what:<42} {'pass' if c.ok else 'FAIL':<6} {detail}")
    return "\n".join(lines)
