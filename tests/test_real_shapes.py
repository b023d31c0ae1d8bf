"""Trace shapes real hosts and tools produce that the simulator does not: old and plugin kvm_exit formats,
kernel-space rips across gaps, NMIs a few microseconds apart, backported kernels, self NMI IPIs, CPUID
answers from another leaf, a guest that stops sampling, skidded PMIs KVM delivered, host profiling under
the mediated design. Each case is written as ftrace text, line by line, as the kernel prints it."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from vpmutrace.analyze import run
from vpmutrace.analyze.context import Config
from vpmutrace.readers import load_trace

K_RIP = 0xFFFFFFFF81000100


class Text:
    """ftrace text of one vCPU thread (pid 1000) on CPU 1, timestamps in us."""

    def __init__(self) -> None:
        self.lines = ["# tracer: nop", "#"]

    def add(self, us: float, event: str, body: str, pid: int = 1000, cpu: int = 1) -> Text:
        comm = "qemu-system-x86" if pid else "<idle>"
        self.lines.append(f" {comm}-{pid:<6} [{cpu:03d}] d.... {us / 1e6:.6f}: {event}: {body}")
        return self

    def entry(self, us: float, rip: int = K_RIP) -> Text:
        return self.add(us, "kvm_entry", f"vcpu 0, rip {rip:#x}")

    def exit(self, us: float, reason: str = "EPT_VIOLATION", rip: int = K_RIP, info: int = 0) -> Text:
        body = f"vcpu 0 reason {reason} rip {rip:#x} info1 0x0000000000000000 info2 0x0000000000000000 " \
               f"intr_info {info:#010x} error_code 0x00000000"
        return self.add(us, "kvm_exit", body)

    def nmi(self, us: float, handled: int = 1, handler: str = "perf_event_nmi_handler") -> Text:
        return self.add(us, "nmi_handler", f"{handler}() delta_ns: 4000 handled: {handled}")

    def lvtpc(self, us: float, vec: int = 0, mode: str = "NMI") -> Text:
        return self.add(us, "kvm_apic_accept_irq", f"apicid 0 vec {vec} ({mode}|edge)")

    def write(self, tmp: Path, name: str = "t.txt") -> Path:
        p = tmp / name
        p.write_text("\n".join(self.lines) + "\n")
        return p


def _doc(path: Path, **kw: object) -> dict:
    td = load_trace([path])
    for k, v in kw.items():
        td.meta[k] = v
    doc, _ = run(td, Config.for_trace(td))
    return doc


def test_kernel_rips_across_a_gap_are_not_timed(tmp_path: Path) -> None:
    """Guest-kernel rips are >= 2^63: the rip check compares modulo 2^64."""
    t = Text().entry(1000).exit(2000, rip=K_RIP).entry(5_000_002_000, rip=K_RIP + 0xABCDEF)
    doc = _doc(t.write(tmp_path))
    assert doc["exits"]["unpaired_by_cause"]["rip_jump"] == 1 and doc["exits"]["exits_paired"] == 0


def test_an_explained_rip_change_is_timed(tmp_path: Path) -> None:
    """An emulated instruction between exit and entry may move rip (kvm_emulate_insn)."""
    t = Text().entry(1000).exit(2000, rip=K_RIP).add(2001, "kvm_emulate_insn", "0:ffffffff81000100: ff e0 (prot64)")
    t.entry(2005, rip=K_RIP + 0x5000)
    doc = _doc(t.write(tmp_path))
    assert doc["exits"]["exits_paired"] == 1


def test_a_trace_without_any_guest_window_does_not_crash(tmp_path: Path) -> None:
    t = Text().exit(2000, "EXCEPTION_NMI", info=0x80000306).entry(2090, rip=K_RIP)
    doc = _doc(t.write(tmp_path))
    assert doc["ownership"]["guest_runs"] == 0 and doc["exits"]["exits_paired"] == 1


def _old_format(tmp: Path) -> Path:
    """Kernels before 5.10 print kvm_exit as 'reason X rip .. info A B' (info2 = VM_EXIT_INTR_INFO)."""
    t = Text()
    t.entry(1000)
    for k in range(12):
        base = 2000 + 1000 * k
        t.add(base, "kvm_exit", f"vcpu 0 reason EXCEPTION_NMI rip {K_RIP:#x} info 0 80000202")
        t.nmi(base + 2).lvtpc(base + 4).entry(base + 6)
    return t.write(tmp)


def test_old_format_nmi_exits_are_not_charged_to_the_host(tmp_path: Path) -> None:
    """Without the kernel release the exits' type is unknown: no skid or watchdog candidates from them;
    with a release before 5.10, info2 is the interruption info and they are NMI exits."""
    p = _old_format(tmp_path)
    doc = _doc(p)
    assert doc["skid"]["nmi_classes"]["after_exit"] == 0 and doc["watchdog"].get("gaps") is None
    assert doc["pmi"]["pmi_exits"] == 12 and doc["pmi"]["by_certainty"] == {"candidate": 12}
    doc = _doc(p, kernel_release="5.4.0")
    assert doc["design"]["design"] == "emulated" and doc["pmi"]["pmi_exits"] == 12


def test_two_nmi_exits_microseconds_apart_pair_with_their_own_nmis(tmp_path: Path) -> None:
    """A guest PMI and an IPI backtrace NMI 5 us apart (6.3+ order: each NMI just before its exit)."""
    t = Text().entry(1000)
    for k in range(10):
        b = 2000 + 1000 * k
        t.nmi(b).exit(b + 3, "EXCEPTION_NMI", info=0x80000202).lvtpc(b + 4).entry(b + 4)
        t.nmi(b + 5, handled=0).nmi(b + 5, handler="nmi_cpu_backtrace_handler").exit(b + 7, "EXCEPTION_NMI",
                                                                                     info=0x80000202).entry(b + 9)
    doc = _doc(t.write(tmp_path))
    assert doc["config"]["nmi_order"]["order"] == "nmi_before_exit"
    assert doc["pmi"]["pmi_exits"] == 10 and doc["pmi"]["injections_without_pmi_exit"] == 0
    assert doc["skid"]["nmi_classes"]["in_nmi_exit"] == 10 and doc["design"]["design"] == "emulated"
    assert doc["host_impact"]["perf_nmis_unhandled"] == 0  # the backtrace handler claimed those NMIs


def test_a_backported_kernel_is_paired_by_what_the_trace_shows(tmp_path: Path) -> None:
    """A 5.14 distribution kernel with the 6.3 NMI handling: its NMIs precede their exits."""
    t = Text().entry(1000)
    for k in range(8):
        b = 2000 + 1000 * k
        t.nmi(b).exit(b + 2, "EXCEPTION_NMI", info=0x80000202).lvtpc(b + 3).entry(b + 4)
    doc = _doc(t.write(tmp_path), kernel_release="5.14.0-427.el9.x86_64")
    assert doc["config"]["nmi_order"]["order"] == "nmi_before_exit"
    assert "the trace wins" in doc["config"]["nmi_order"]["why"]
    assert doc["pmi"]["pmi_exits"] == 8


def test_a_self_nmi_ipi_is_not_a_guest_pmi(tmp_path: Path) -> None:
    """x2APIC ICR write of a self NMI (kvm_msr 0x830), no kvm_apic_ipi recorded."""
    t = Text().entry(1000)
    for k in range(10):
        b = 2000 + 1000 * k
        t.exit(b, "MSR_WRITE").add(b + 1, "kvm_msr", "msr_write 830 = 0x40400").lvtpc(b + 1).entry(b + 3)
    doc = _doc(t.write(tmp_path))
    assert doc["pmi"]["injections"] == 0
    doc = _doc(t.write(tmp_path), host={"kvm": {"kvm": {"enable_pmu": "N"}}})
    assert doc["diff"]["divergences"] == []


def test_cpuid_answered_from_another_leaf_is_no_pmu_shape(tmp_path: Path) -> None:
    answer = "func a idx 0 rax 207 rbx 340 rcx 340 rdx 0, cpuid entry not found, used max basic"
    t = Text().exit(1000, "CPUID").add(1001, "kvm_cpuid", answer)
    t.entry(1002, rip=K_RIP + 2)
    doc = _doc(t.write(tmp_path))
    assert doc["guest_pmu"]["guest"]["value"] is None


def test_no_cadence_candidate_after_the_guest_stops_sampling(tmp_path: Path) -> None:
    t = Text().entry(1000)
    t.exit(1100, "MSR_WRITE").add(1101, "kvm_msr", "msr_write 186 = 0x53003c").entry(1102, rip=K_RIP + 2)
    for k in range(10):
        b = 2000 + 200 * k
        t.nmi(b).exit(b + 2, "EXCEPTION_NMI", info=0x80000202).lvtpc(b + 3).entry(b + 4)
    t.exit(5000, "MSR_WRITE").add(5001, "kvm_msr", "msr_write 186 = 0x0").entry(5002, rip=K_RIP + 2)
    for k in range(50):  # 50 ms of guest time with the sampling counter disabled
        t.exit(6000 + 1000 * k).entry(6010 + 1000 * k)
    doc = _doc(t.write(tmp_path))
    assert doc["silent"]["counts"]["pmi_cadence_stopped"] == 0


def test_a_skidded_pmi_kvm_delivered_is_not_charged_to_the_host(tmp_path: Path) -> None:
    t = Text().entry(1000)
    for k in range(10):
        b = 2000 + 1000 * k
        t.exit(b).nmi(b + 3).lvtpc(b + 8).entry(b + 10)
    doc = _doc(t.write(tmp_path))
    assert doc["skid"]["nmi_classes"]["delivered_to_guest"] == 10 and doc["skid"]["nmi_classes"]["after_exit"] == 0
    assert not [f for f in doc["findings"] if f["kind"] == "skid_candidates"]


def test_host_profiling_under_the_mediated_design_is_not_a_contradiction(tmp_path: Path) -> None:
    """exclude_guest host sampling at 1 ms on a mediated host with nmi_watchdog=0."""
    t = Text().entry(1000)
    for k in range(30):
        t.nmi(1500 + 1000 * k, handled=1)  # host time: the vCPU thread is in KVM or the host
        t.exit(2000 + 1000 * k, "EXTERNAL_INTERRUPT", info=0x800000F5).lvtpc(2001 + 1000 * k).entry(2002 + 1000 * k)
    host = {"kvm": {"kvm": {"enable_pmu": "Y"}, "kvm_intel": {"enable_mediated_pmu": "Y"}},
            "watchdog": {"nmi_watchdog": 0, "watchdog_thresh": 10, "kind": None}}
    doc = _doc(t.write(tmp_path), host=host)
    assert doc["design"]["design"] == "mediated"
    assert not [f for f in doc["findings"] if f["kind"] in ("perf_nmis_under_mediated", "divergence",
                                                             "divergence_candidate")]
    assert doc["pmi"]["by_path"] == {"0xf5 interrupt": 30}


def test_a_pmu_without_global_ctrl_counts_with_every_counter_enabled(tmp_path: Path) -> None:
    """AMD legacy counters (no PERF_GLOBAL_CTRL): pmc_is_globally_enabled() is true on every kernel, so a
    repeated read is a frozen-counter candidate on 6.5 as on 6.10."""
    t = Text()
    t.add(800, "kvm_exit", "vcpu 0 reason cpuid rip 0x0ff0 info1 0x0000000000000000 info2 0x0000000000000000 "
                           "intr_info 0x00000000 error_code 0x00000000")
    t.add(801, "kvm_cpuid", "func 80000001 idx 0 rax 0 rbx 0 rcx 800000 rdx 0, cpuid entry found")  # PerfCtrExtCore
    t.entry(802, rip=0x0ff2)
    t.add(900, "kvm_exit", "vcpu 0 reason msr rip 0x1000 info1 0x0000000000000001 info2 0x0000000000000000 "
                           "intr_info 0x00000000 error_code 0x00000000")
    t.add(901, "kvm_msr", "msr_write c0010000 = 0x530076").entry(902, rip=0x1002)
    for k in range(3):
        b = 2000 + 1000 * k
        t.add(b, "kvm_exit", "vcpu 0 reason msr rip 0x1000 info1 0x0000000000000000 info2 0x0000000000000000 "
                             "intr_info 0x00000000 error_code 0x00000000")
        t.add(b + 1, "kvm_msr", "msr_read c0010004 = 0x1234").entry(b + 2, rip=0x1002)
    p = t.write(tmp_path)
    for release in ("6.5.0", "6.10.0"):
        td = load_trace([p])
        td.meta["kernel_release"] = release
        doc, _ = run(td, Config.for_trace(td, model="emulated"))
        assert doc["guest_pmu"]["guest"]["value"]["global_ctrl"] is False
        assert doc["silent"]["counts"]["frozen_counter"] == 1, release


def test_lost_marks_in_text_break_pairs(tmp_path: Path) -> None:
    t = Text().entry(1000).exit(2000)
    t.lines.append("CPU:1 [LOST 123 EVENTS]")
    t.entry(9000)
    doc = _doc(t.write(tmp_path))
    assert doc["exits"]["unpaired_by_cause"]["lost"] == 1


def test_exit_reason_without_type_in_text_stays_unpaired_not_zero(tmp_path: Path) -> None:
    doc = _doc(Text().entry(1000).exit(2000).write(tmp_path))
    assert doc["exits"]["unpaired_by_cause"]["no_entry"] == 1
    assert pl.DataFrame(doc["exits"]["by_reason"]).is_empty()


def test_fixed_vector_lvtpc_written_through_the_xapic(tmp_path: Path) -> None:
    """A Windows guest in xAPIC mode programs LVTPC = 0xfe (fixed) by MMIO (kvm_apic); its PMIs are
    accepted in Fixed mode on that vector."""
    t = Text().entry(1000).exit(1100, "EPT_MISCONFIG").add(1101, "kvm_apic", "apic_write APIC_LVTPC = 0xfe")
    t.entry(1102, rip=K_RIP + 3)
    for k in range(6):
        b = 2000 + 1000 * k
        t.nmi(b).exit(b + 2, "EXCEPTION_NMI", info=0x80000202).lvtpc(b + 3, vec=254, mode="Fixed").entry(b + 4)
    doc = _doc(t.write(tmp_path))
    assert doc["pmi"]["pmi_exits"] == 6 and doc["pmi"]["per_vcpu"][0]["lvtpc"] == "fixed 0xfe"
