"""Ground-truth simulator: host traces generated from the reference model, in the event orders of the
kernel the simulated host claims to run, with their right answers.

Model of one vCPU (design §1-§4, §6): a Linux (or Windows) guest runs its perf PMU driver:
a sampling counter overflows every few hundred microseconds of guest time, and the guest's PMI
handler then disables the PMU (GLOBAL_CTRL=0), reads GLOBAL_STATUS, reads the counter (RDPMC),
re-arms it, acks the overflow and re-enables the PMU, and unmasks its LVTPC (x2APIC MSR 0x834,
intel_pmu_handle_irq()); perf multiplexes more events than counters by rotating event selects
on its timer tick. Every such access exits to KVM or passes through as the design says
(model.design.msr_intercepted / rdpmc_intercepted for the guest's PMU shape). A guest counter
overflow arrives as the design delivers it: emulated, a host NMI (nmi:nmi_handler of
perf_event_nmi_handler on the vCPU thread, *before* the EXCEPTION_NMI/`nmi` exit on VMX >= 6.3,
VMX <= 5.7 and SVM, *after* it on VMX 5.8-6.2; kvm_exit.requests carries KVM_REQ_PMI|PMU on
6.14+); mediated, an interrupt on vector 0xF5 (VMX EXTERNAL_INTERRUPT, SVM `interrupt`). KVM
injects the guest's LVTPC (kvm_apic_accept_irq on the vCPU's own thread) before the next entry,
whose intr_info shows the NMI on 6.14+. Background exits (CPUID, I/O, EPT, host timer
interrupts, HLT, PAUSE) and fastpath exits (VMX preemption timer, WRMSR TSC_DEADLINE, HLT with a
pending wake on 6.12+) fill the rest; each exit's handling time is drawn around the published
per-reason averages of model.costs (HLT scaled down to keep runs short). Under the mediated
design every exit that leaves the fastpath pays put+load (the per-vendor range of model.costs
at 2.5 GHz), and with msr:* events recorded the put (RDPMC of each counter) and the load
(WRMSR of GLOBAL_CTRL, counters, event selects) appear on the host.

Only states the kernel allows are generated: a mediated VM never coexists with the perf NMI
watchdog or a host include-guest event; that configuration is the `mediated-refused`
scenario, in which KVM refuses the VM (dmesg) and the trace holds no guest at all.
Timestamps are in ns. The events are rendered as `trace-cmd report -t` text through the
kernel's own print fmts, and written as a perf.data of tracepoint samples.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpmutrace.model import costs
from vpmutrace.model import design as D
from vpmutrace.model import kernel as K
from vpmutrace.model import msrs as M
from vpmutrace.sim.formats import kernel_format_texts, kernel_formats
from vpmutrace.sim.probes import ProbeEmitter

US = 1000
MS = 1_000_000
SIM_GHZ = 2.5  # the simulated host's frequency (switch cost cycles -> ns, watchdog period)
VM_PID = 999  # the simulated VMM process owning the vCPU threads
HANDLERS = {0xFFFFFFFF8100A000: "perf_event_nmi_handler", 0xFFFFFFFF8100B000: "nmi_cpu_backtrace_handler"}
PERF_H, BACKTRACE_H = 0xFFFFFFFF8100A000, 0xFFFFFFFF8100B000
GUEST_RIP = 0xFFFFFFFF81000000
WINDOWS_LVTPC_VECTOR = 0xFE  # HalpPerfInterrupt's IDT vector (Windows HAL)

VMX = {"hlt": 12, "cpuid": 10, "io": 30, "ept": 49, "timer": 52, "msr_read": 31, "msr_write": 32, "rdpmc": 15,
       "extint": 1, "nmi": 0, "pause": 40}
SVM = {"hlt": 0x78, "cpuid": 0x72, "io": 0x7B, "ept": 0x400, "msr_read": 0x7C, "msr_write": 0x7C, "rdpmc": 0x6F,
       "extint": 0x60, "nmi": 0x61, "pause": 0x77}
PUBLISHED = {"cpuid": "CPUID", "io": "IO_INSTRUCTION", "ept": "EPT_MISCONFIG", "timer": "PREEMPTION_TIMER",
             "msr_read": "MSR_READ", "msr_write": "MSR_WRITE", "rdpmc": "MSR_READ", "extint": "EXTERNAL_INTERRUPT",
             "nmi": "EXCEPTION_NMI", "pause": "PAUSE_INSTRUCTION"}
REPROGRAM_US = (2.0, 8.0)  # extra handling of a value-changing control write under the emulated design
# (Like Xu, RFC v2 2019: guest eventsel r/w 7.6 us with perf_event reuse; model.costs sources)
HLT_US = (50.0, 2000.0)  # HLT exits, scaled down from the published 0.34-600 ms averages

SCENARIOS = {
    "mediated-steady": "mediated vPMU, guest perf sampling + multiplexing: counters pass through, selectors trap, "
                       "PMIs on 0xF5, fastpath exits, host msr:* events show each PMU put/load",
    "mediated-partial": "mediated vPMU, the guest sees fewer counters than the host: GLOBAL_CTRL/STATUS and RDPMC "
                        "keep exiting, no divergence",
    "emulated-multiplex": "emulated vPMU, the same guest workload: every PMU MSR access and RDPMC exits, PMIs as "
                          "host NMIs in the kernel's event order, reprogram storms",
    "pinned-contention": "emulated vPMU with the perf NMI watchdog: the guest enables every counter, one of its "
                         "events loses its counter (silent error), its PMIs stop",
    "emulated-watchdog": "emulated vPMU with the perf NMI watchdog over seconds with idle periods: watchdog NMIs "
                         "by unhalted cycles, NMI exits when they hit guest time",
    "skid": "emulated vPMU with host perf sampling that includes the guest: perf NMIs in NMI exits, after exits, "
            "before entries and in the host",
    "emulated-create-fail": "emulated vPMU, the multiplexing guest: at 8 ms it programs counter 2 with an event the "
                            "host perf driver refuses, pmc_reprogram_counter() fails (-EINVAL) at every retry "
                            "until the next rotation reprograms the counter (kvm-pmu probes make it a fact)",
    "mediated-refused": "enable_mediated_pmu=Y with the perf NMI watchdog on: KVM refuses the VM (dmesg); the trace "
                        "holds only host NMIs",
}
DEFAULT_KERNEL = "6.18"


@dataclass
class Event:
    ts: int
    cpu: int
    pid: int
    name: str  # system:event
    fields: dict[str, Any]


@dataclass
class Truth:
    exits: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)  # guest runs: cpu, pid, start, end
    msr: list[dict] = field(default_factory=list)  # every intercepted PMU MSR access
    rdpmc: list[dict] = field(default_factory=list)  # exit records of RDPMC exits
    pmi_exits: list[dict] = field(default_factory=list)  # path, ts, pid
    injections: int = 0
    injections_outside_exits: int = 0
    nmi_exits: dict[str, int] = field(default_factory=dict)  # class -> count
    host_nmis: list[dict] = field(default_factory=list)  # perf-claimed NMIs that are not guest PMIs
    unhandled_nmis: int = 0
    silent: list[dict] = field(default_factory=list)
    switches: int = 0  # mediated put/load pairs that really happened
    fastpath_exits: int = 0  # exits that really re-entered from the fastpath


@dataclass
class Vcpu:
    pid: int
    cpu: int
    idx: int
    eventsel: dict[int, int] = field(default_factory=dict)
    counters: dict[tuple[str, int], int] = field(default_factory=dict)
    global_ctrl: int = 0
    fixed_ctrl: int = 0
    pmi_in: float = 0.0  # guest ns until the sampling counter overflows
    rotate_in: float = 0.0
    bg_in: float = 0.0
    frozen: bool = False  # the sampling counter lost its hardware counter (emulated contention)
    reprogram: dict[int, tuple[int, bool]] = field(default_factory=dict)  # pmc idx -> (config, enabled) to redo
    last: int = 0  # last exit time (for the trace end)
    entered: int | None = None  # time of the last kvm_entry


class Sim:
    def __init__(self, scenario: str, isa: str, seed: int, kernel: str | None = None,
                 guest_os: str = "linux", probes: str | None = None) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}: {', '.join(SCENARIOS)}")
        if guest_os not in ("linux", "windows"):
            raise ValueError(f"unknown guest os {guest_os!r}: linux or windows")
        self.scenario, self.isa_name, self.seed, self.guest_os = scenario, isa, seed, guest_os
        self.rng = random.Random(seed)
        self.kernel = kernel or DEFAULT_KERNEL
        v = K.release_version(self.kernel)
        if v is None:
            raise ValueError(f"kernel {kernel!r}: expected a release such as 6.1 or 6.18")
        self.version = v
        self.isa = K.ISA_VMX if isa == "vmx" else K.ISA_SVM
        self.codes = VMX if isa == "vmx" else SVM
        self.vendor = "intel" if isa == "vmx" else "amd"
        self.fmts = kernel_formats(v)
        self.model = D.MEDIATED if scenario.startswith("mediated") else D.EMULATED
        self.host = D.PmuShape("intel", 5, 8, 3) if self.vendor == "intel" else D.PmuShape("amd", 2, 6, 0, 48, 0,
                                                                                          False, True)
        self.guest = self.host
        if scenario == "mediated-partial":
            self.guest = D.PmuShape(self.vendor, self.host.version, 4, self.host.nr_fixed, 48, self.host.fixed_width,
                                    self.host.full_width_writes, self.host.perfctr_core)
        self.setup = D.HostSetup(self.host, self.guest)
        self.watchdog = scenario in ("pinned-contention", "emulated-watchdog", "mediated-refused")
        self.thresh_s = 1
        self.nmi_before = K.nmi_order(self.isa, v).order == K.NMI_BEFORE_EXIT
        self.has_requests = v >= (6, 14)
        self.entry_info = v >= (6, 14)
        self.host_msr = scenario == "mediated-steady"
        self.events: list[Event] = []
        self.truth = Truth()
        self.ncpu = 2
        self.vcpus = [Vcpu(1000 + i, i, i) for i in range(2)]
        self.skid_window = 10 * US
        # per-reason mean handling time, drawn once per run within the published range
        self.mean_ns = {k: self.rng.uniform(*costs.PUBLISHED_EXIT_AVG_US[r]) * US for k, r in PUBLISHED.items()}
        self.mean_ns["hlt"] = self.rng.uniform(*HLT_US) * US
        lo, hi = costs.SWITCH_CYCLES[self.vendor]
        self.switch_ns = int(self.rng.uniform(lo, hi) / SIM_GHZ)
        self.busy_cycles: dict[int, float] = {}  # per CPU: ns of busy time left until the watchdog's NMI
        self.sampling: dict[int, float] = {}  # per CPU: ns of busy time left until host sampling overflows
        # kvm-pmu probe events (sim/probes.py), in the layout of `probes` (fprobe with BTF args, or kprobe)
        self.probes = ProbeEmitter(probes, self.emit, self.model == D.MEDIATED) if probes else None
        self.probe_formats = self.probes.formats() if self.probes else {}
        self.fmts = {**self.fmts, **{n: f for n, (f, _) in self.probe_formats.items()}}
        self.refused_sel = M.EVENTSEL_ENABLE | (3 << 16) | 0x1FF  # the event the host refuses (create-fail)
        if self.probes is not None:
            self.probes.refused.add(self.refused_sel)

    # ---- events ---------------------------------------------------------------------------------
    def emit(self, ts: int, cpu: int, pid: int, name: str, **f: Any) -> None:
        self.events.append(Event(ts, cpu, pid, name, f))

    def comm(self, pid: int) -> str:
        return {0: "<idle>", VM_PID: "qemu-system-x86"}.get(pid, f"CPU {pid - 1000}/KVM")

    def cost(self, kind: str) -> int:
        """One exit's handling time: lognormal around the run's mean for that reason (sigma 0.5)."""
        m = self.mean_ns[kind]
        return max(200, int(m * math.exp(self.rng.gauss(-0.125, 0.5))))

    def sel(self, i: int) -> int:
        return (0x186 + i) if self.vendor == "intel" else (0xC0010200 + 2 * i)

    def ctr(self, i: int) -> int:
        return (0xC1 + i) if self.vendor == "intel" else (0xC0010201 + 2 * i)

    def gctl(self) -> int:
        return M.lookup(0x38F).addr if self.vendor == "intel" else 0xC0000301

    def gsts(self) -> int:
        return 0x38E if self.vendor == "intel" else 0xC0000300

    def gclr(self) -> int:
        return 0x390 if self.vendor == "intel" else 0xC0000302

    # ---- exits and entries ----------------------------------------------------------------------
    def exit(self, t: int, v: Vcpu, kind: str, handling: int, intr_info: int = 0, info1: int = 0, requests: int = 0,
             fastpath: bool = False, msr: int | None = None) -> dict:
        code = self.codes[kind]
        if self.isa == K.ISA_SVM and kind in ("msr_read", "msr_write"):
            info1 = 1 if kind == "msr_write" else 0
        rip = GUEST_RIP + (t // 7) % 4096 * 16
        f: dict[str, Any] = {"exit_reason": code, "guest_rip": rip, "isa": self.isa, "info1": info1, "info2": 0,
                             "intr_info": intr_info, "error_code": 0, "vcpu_id": v.idx}
        if self.has_requests:
            f["requests"] = requests
        self.emit(t, v.cpu, v.pid, "kvm:kvm_exit", **f)
        if v.entered is not None:
            self.truth.runs.append({"cpu": v.cpu, "pid": v.pid, "start": v.entered, "end": t})
            v.entered = None
        fmt = self.fmts["kvm:kvm_exit"]
        name = fmt.printer.eval_arg(fmt.printer.arg_after("reason "), {"exit_reason": code, "isa": self.isa})
        slow = not fastpath
        if self.model == D.MEDIATED and self.guest.version and slow:
            handling += self.switch_ns
        rec = {"reason": name, "exit_reason": code, "isa": self.isa, "handling_ns": handling, "pid": v.pid, "ts": t,
               "fastpath": fastpath, "eligible": K.fastpath_eligible(self.isa, code & 0xFFFF if self.isa == 1 else code,
                                                                     msr, self.version), "rip": rip,
               "insn_len": {"cpuid": 2, "io": 1, "msr_read": 2, "msr_write": 2, "rdpmc": 2, "hlt": 1,
                            "pause": 2}.get(kind, 0)}
        self.truth.exits.append(rec)
        if fastpath:
            self.truth.fastpath_exits += 1
        v.last = t
        return rec

    def put_load(self, t_exit: int, t_entry: int, v: Vcpu) -> None:
        """The mediated PMU put after a slow-path exit and the load before the next entry, as msr:* events."""
        self.truth.switches += 1
        if not self.host_msr:
            return
        t = t_exit + 300
        for i in range(self.guest.nr_gp):
            self.emit(t, v.cpu, v.pid, "msr:rdpmc", msr=i, val=v.counters.get(("gp", i), 0), failed=0)
            t += 20
        self.emit(t, v.cpu, v.pid, "msr:write_msr", msr=self.gctl(), val=0, failed=0)
        t = t_entry - 400
        for i in range(self.guest.nr_gp):
            if v.eventsel.get(i):
                self.emit(t, v.cpu, v.pid, "msr:write_msr", msr=self.sel(i), val=v.eventsel[i], failed=0)
                t += 20

    def entry(self, t: int, v: Vcpu, inject_nmi: bool = False) -> None:
        f: dict[str, Any] = {"vcpu_id": v.idx, "rip": self.truth.exits[-1]["rip"] + self.truth.exits[-1]["insn_len"]
                             if self.truth.exits and self.truth.exits[-1]["pid"] == v.pid else GUEST_RIP}
        if self.version >= (6, 9):
            f["immediate_exit"] = 0
        if self.entry_info:
            f["intr_info"] = (K.INTR_INFO_NMI if self.isa == K.ISA_VMX else K.ENTRY_NMI) if inject_nmi else 0
            f["error_code"] = 0
        pr = self.probes
        if pr is not None and self.model == D.MEDIATED and self.guest.version and v.pid not in pr.loaded:
            pr.load(t - 50 - self.switch_ns // 2, t - 50, v.cpu, v.pid, v.idx)
        self.emit(t, v.cpu, v.pid, "kvm:kvm_entry", **f)
        v.entered = t

    def inject_lvtpc(self, t: int, v: Vcpu) -> None:
        if self.guest_os == "windows":
            self.emit(t, v.cpu, v.pid, "kvm:kvm_apic_accept_irq", apicid=v.idx, dm=0, tm=0, vec=WINDOWS_LVTPC_VECTOR)
        else:
            self.emit(t, v.cpu, v.pid, "kvm:kvm_apic_accept_irq", apicid=v.idx, dm=0x400, tm=0, vec=0)
        self.truth.injections += 1

    def nmi_handler(self, t: int, v: Vcpu, handler: int, handled: int) -> None:
        self.emit(t, v.cpu, v.pid, "nmi:nmi_handler", handler=handler, delta_ns=self.rng.randint(800, 3000),
                  handled=handled)

    # ---- one exit with its handling and the next entry -----------------------------------------
    def do_exit(self, t: int, v: Vcpu, kind: str, handling: int | None = None, *, fastpath: bool = False,
                msr: tuple[int, bool, int, bool] | None = None, intr_info: int = 0, requests: int = 0,
                nmi: tuple[int, int] | None = None, inject: bool = False, pmi_path: str | None = None,
                nmi_class: str | None = None) -> int:
        """Emit exit (+ NMI in kernel order, kvm_msr, put/load, LVTPC injection) and the next entry;
        return the entry time. ``msr`` = (addr, write, value, changed); ``nmi`` = (handler, handled)."""
        h = handling if handling is not None else self.cost(kind)
        m = M.lookup(msr[0]) if msr is not None else None
        if msr is not None and msr[3] and self.model == D.EMULATED and m is not None and m.kind in (
                M.GP_SELECTOR, M.FIXED_CTRL, M.GLOBAL_CTRL):
            h += int(self.rng.uniform(*REPROGRAM_US) * US)
        nmi_ts = None
        if nmi is not None and self.nmi_before:  # the NMI arrived in guest mode, after the last entry
            lo = v.entered + 1 if v.entered is not None else t - 3000
            nmi_ts = max(lo, t - self.rng.randint(1000, 3000))
            self.nmi_handler(nmi_ts, v, *nmi)
        rec = self.exit(t, v, kind, h, intr_info=intr_info, requests=requests, fastpath=fastpath,
                        msr=msr[0] if msr else None)
        h = rec["handling_ns"]
        if nmi is not None and not self.nmi_before:
            nmi_ts = t + min(self.rng.randint(300, 1500), h // 2)
            self.nmi_handler(nmi_ts, v, *nmi)
        if self.probes is not None and nmi_ts is not None and nmi_class == "guest_pmi":
            self.probes.overflow(nmi_ts + 100, v.cpu, v.pid, v.idx, 0)  # kvm_perf_overflow() inside the NMI
        if nmi_class:
            self.truth.nmi_exits[nmi_class] = self.truth.nmi_exits.get(nmi_class, 0) + 1
        if msr is not None:
            addr, write, value, changed = msr
            self.emit(t + min(150, h // 3), v.cpu, v.pid, "kvm:kvm_msr", write=int(write), ecx=addr, data=value,
                      exception=0)
            if M.lookup(addr) is not None:
                self.truth.msr.append({"msr": addr, "write": write, "value": value, "pid": v.pid,
                                       "ts": t + min(150, h // 3), "exit": rec})
        if kind == "rdpmc":
            self.truth.rdpmc.append(rec)
        if pmi_path:
            self.truth.pmi_exits.append({"path": pmi_path, "ts": t, "pid": v.pid, "handling_ns": h})
        end = t + h
        pr = self.probes
        if pr is not None and pmi_path == "0xf5 interrupt":
            pr.mediated_pmi(t + 30, v.cpu, v.pid)  # the 0xF5 handler runs right after the exit
        if self.model == D.MEDIATED and self.guest.version and not fastpath:
            self.put_load(t, end, v)
            if pr is not None:
                pr.put(t + 50, t + 50 + self.switch_ns // 2, v.cpu, v.pid, v.idx)
        if pr is not None and self.model == D.EMULATED and (v.reprogram or nmi_class == "guest_pmi"):
            if nmi_class == "guest_pmi":  # kvm_perf_overflow() set the sampling counter's reprogram bit
                v.reprogram.setdefault(0, (v.eventsel.get(0, 0), True))
            a = t + min(150, h // 3) + 10
            pr.handle_event(a, max(a + 10, end - min(400, h // 4) - 30), v.cpu, v.pid, v.idx, v.reprogram)
            v.reprogram = {}
        if inject:
            if pr is not None:
                pr.deliver(end - min(400, h // 4) - 20, v.cpu, v.pid, v.idx)
            self.inject_lvtpc(end - min(400, h // 4), v)
        self.entry(end, v, inject_nmi=inject)
        return end

    # ---- guest PMU actions ----------------------------------------------------------------------
    def guest_msr(self, t: int, v: Vcpu, addr: int, write: bool, value: int) -> int:
        """One guest RDMSR/WRMSR of a PMU MSR: exits (returns the next entry) or passes through."""
        m = M.lookup(addr)
        prev = None
        if m is not None and m.kind == M.GP_SELECTOR:
            prev = v.eventsel.get(m.index or 0, 0)
            if write:
                v.eventsel[m.index or 0] = value
        elif m is not None and m.kind == M.GLOBAL_CTRL:
            prev = v.global_ctrl
            if write:
                v.global_ctrl = value
        elif m is not None and m.kind == M.FIXED_CTRL:
            prev = v.fixed_ctrl
            if write:
                v.fixed_ctrl = value
        changed = (prev != value) if write and prev is not None else (True if write else None)
        if write and changed and self.probes is not None and self.model == D.EMULATED and m is not None:
            v.reprogram.update(self._to_reprogram(v, m, prev or 0, value))
        trap = addr == 0x834 or D.msr_intercepted(self.model, addr, self.setup)
        if not trap:
            return t + 60
        kind = "msr_write" if write else "msr_read"
        return self.do_exit(t, v, kind, msr=(addr, write, value, bool(changed)))

    def _to_reprogram(self, v: Vcpu, m: M.PmuMsr, prev: int, value: int) -> dict[int, tuple[int, bool]]:
        """The counters a value-changing control write marks for reprogramming (pmc idx -> (config,
        enabled)): an event select its counter; GLOBAL_CTRL the counters whose enable bit changed;
        FIXED_CTR_CTRL the fixed counters whose field changed (kvm_pmu_request_counter_reprogram(),
        reprogram_counters() in arch/x86/kvm/vmx/pmu_intel.c / svm/pmu.c)."""
        def gp(i: int) -> tuple[int, tuple[int, bool]]:
            sel = v.eventsel.get(i, 0)
            return i, (sel, bool(sel & M.EVENTSEL_ENABLE) and bool(v.global_ctrl >> i & 1))

        def fixed(j: int) -> tuple[int, tuple[int, bool]]:
            f = v.fixed_ctrl >> (4 * j) & 0xF
            return 32 + j, (f, bool(f & 3) and bool(v.global_ctrl >> (32 + j) & 1))

        if m.kind == M.GP_SELECTOR:
            return dict([gp(m.index or 0)])
        if m.kind == M.GLOBAL_CTRL:
            diff = prev ^ value
            return dict([gp(i) for i in range(self.guest.nr_gp) if diff >> i & 1]
                        + [fixed(j) for j in range(self.guest.nr_fixed) if diff >> (32 + j) & 1])
        if m.kind == M.FIXED_CTRL:
            return dict(fixed(j) for j in range(self.guest.nr_fixed) if (prev ^ value) >> (4 * j) & 0xF)
        return {}

    def boot_cpuid(self, t: int, v: Vcpu) -> int:
        """The guest kernel's PMU probe at boot: CPUID leaf 0xA (Intel) or 0x80000001/0x80000022 (AMD),
        each a CPUID exit with the kvm_cpuid answer KVM gave (cpuid.c __do_cpuid_func)."""
        g = self.guest
        if self.vendor == "intel":
            leaves = [(0xA, g.version | g.nr_gp << 8 | g.gp_width << 16 | 7 << 24, 0, 0,
                       g.nr_fixed | g.fixed_width << 5)]
        else:
            leaves = [(0x80000001, 0, 0, (1 << 23) if g.perfctr_core else 0, 0),
                      (0x80000022, 1 if g.version >= 2 else 0, g.nr_gp if g.version >= 2 else 0, 0, 0)]
        for leaf, a, b, c, d in leaves:
            h = self.cost("cpuid")
            self.emit(t + min(200, h // 3), v.cpu, v.pid, "kvm:kvm_cpuid", function=leaf, index=0, rax=a, rbx=b,
                      rcx=c, rdx=d, found=1, used_max_basic=0)
            t = self.do_exit(t, v, "cpuid", h) + self.rng.randint(500, 2000)
        if self.guest_os == "windows":  # the HAL programs LVTPC once: fixed delivery, vector 0xFE
            t = self.guest_msr(t, v, 0x834, True, WINDOWS_LVTPC_VECTOR) + self.rng.randint(500, 2000)
        return t

    def guest_rdpmc(self, t: int, v: Vcpu, i: int) -> int:
        if not D.rdpmc_intercepted(self.model, self.setup):
            return t + 40
        return self.do_exit(t, v, "rdpmc")

    def pmi_handler(self, t: int, v: Vcpu, sample_idx: int, enabled_mask: int) -> int:
        """intel_pmu_handle_irq() / amd_pmu_v2_handle_irq(): the guest's accesses after a PMI."""
        step = lambda: self.rng.randint(300, 900)  # noqa: E731 guest time between the accesses
        t = self.guest_msr(t + step(), v, self.gctl(), True, 0)
        t = self.guest_msr(t + step(), v, self.gsts(), False, 1 << sample_idx)
        t = self.guest_rdpmc(t + step(), v, sample_idx)
        t = self.guest_msr(t + step(), v, self.ctr(sample_idx), True, (1 << 48) - self.rng.randint(200000, 900000))
        t = self.guest_msr(t + step(), v, self.gclr(), True, 1 << sample_idx)
        t = self.guest_msr(t + step(), v, self.gctl(), True, enabled_mask)
        if self.guest_os == "linux":
            t = self.guest_msr(t + step(), v, 0x834, True, 0x400)  # apic_write(APIC_LVTPC, APIC_DM_NMI)
        return t

    def rotate(self, t: int, v: Vcpu, ncounters: int) -> int:
        """perf's multiplexing rotation on the guest's timer tick: stop, read, reprogram, restart."""
        t = self.guest_msr(t + 400, v, self.gctl(), True, 0)
        for i in range(1, ncounters):
            t = self.guest_rdpmc(t + 300, v, i)
            new = M.EVENTSEL_ENABLE | (1 << 16) | (1 << 17) | self.rng.choice([0xC0, 0x3C, 0xC4, 0xC5, 0x2E, 0x41])
            t = self.guest_msr(t + 300, v, self.sel(i), True, new)
            t = self.guest_msr(t + 300, v, self.ctr(i), True, 0)
        return self.guest_msr(t + 400, v, self.gctl(), True, (1 << ncounters) - 1)

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> None:
        getattr(self, "_" + self.scenario.replace("-", "_"))()
        if self.probes is not None:
            self.probes.close()
        self.events.sort(key=lambda e: e.ts)

    def _setup_guest_pmu(self, t: int, v: Vcpu, n: int) -> int:
        """The guest perf driver programs n GP counters (counter 0 samples with INT) and enables them."""
        for i in range(n):
            sel = M.EVENTSEL_ENABLE | (1 << 16) | (1 << 17) | (1 << 20 if i == 0 else 0) | (0x3C if i == 0 else 0xC0)
            t = self.guest_msr(t + 500, v, self.sel(i), True, sel)
            t = self.guest_msr(t + 500, v, self.ctr(i), True, (1 << 48) - 500000 if i == 0 else 0)
        return self.guest_msr(t + 500, v, self.gctl(), True, (1 << n) - 1)

    def background(self, t: int, v: Vcpu, fastpath_ok: bool = True, hlt: bool = True) -> int:
        """A non-PMU exit: CPUID, I/O, EPT, host timer interrupt, HLT, PAUSE, or a fastpath exit."""
        r = self.rng.random()
        if r < 0.2 and fastpath_ok:
            if self.isa == K.ISA_VMX and r < 0.1:  # VMX preemption timer: fastpath since 5.8
                fp = self.version >= (5, 8)
                return self.do_exit(t, v, "timer", self.rng.randint(300, 700) if fp else None, fastpath=fp)
            # WRMSR TSC_DEADLINE: fastpath on VMX since 5.8, SVM since 6.18
            fp = K.fastpath_eligible(self.isa, self.codes["msr_write"], K.MSR_TSC_DEADLINE, self.version)
            return self.do_exit(t, v, "msr_write", self.rng.randint(300, 700) if fp else None, fastpath=fp,
                                msr=(K.MSR_TSC_DEADLINE, True, t * 3, True))
        kind = self.rng.choice(["cpuid", "io", "ept", "extint", "extint", "pause"] + (["hlt"] if hlt else []))
        if kind == "hlt" and self.version >= (6, 12) and self.rng.random() < 0.3:
            return self.do_exit(t, v, "hlt", self.rng.randint(400, 900), fastpath=True)  # a wake event was pending
        info = (K.INTR_INFO_EXTINT | 0xEC) if kind == "extint" and self.isa == K.ISA_VMX else 0
        end = self.do_exit(t, v, kind, intr_info=info)
        if kind == "extint":  # the host timer IRQ expired the guest's LAPIC timer: LVTT on its vector 0xEC
            self.emit(end - 100, v.cpu, v.pid, "kvm:kvm_apic_accept_irq", apicid=v.idx, dm=0, tm=0, vec=0xEC)
        return end

    def guest_pmi(self, t: int, v: Vcpu) -> int:
        """The sampling counter overflowed at t in guest mode: deliver it as the design does."""
        if self.model == D.MEDIATED:
            info = (K.INTR_INFO_EXTINT | D.MEDIATED_PMI_VECTOR) if self.isa == K.ISA_VMX else 0
            path = "0xf5 interrupt"
            return self.do_exit(t, v, "extint", intr_info=info, inject=True, pmi_path=path)
        req = (1 << K.REQ_PMU) | (1 << K.REQ_PMI)
        info = K.INTR_INFO_NMI | (0x1000 if self.rng.random() < 0.3 else 0) if self.isa == K.ISA_VMX else 0
        return self.do_exit(t, v, "nmi", intr_info=info, requests=req, nmi=(PERF_H, 1), inject=True, pmi_path="NMI",
                            nmi_class="guest_pmi")

    def _vcpu(self, v: Vcpu, start: int, until: int, *, sample_us: tuple[int, int] = (200, 600), counters: int = 4,
              rotate_us: int = 1000, background_us: tuple[int, int] = (20, 120), watchdog: bool = False,
              host_sampling: bool = False, storm_at: int | None = None, refuse_at: int | None = None) -> None:
        """Run vCPU ``v`` from ``start`` to ``until``: guest runs between exits of the workload model."""
        self.entry(start, v)
        t = self.boot_cpuid(start + 1000, v)
        t = self._setup_guest_pmu(t + 2000, v, counters)
        v.pmi_in = self.rng.uniform(*sample_us) * US
        v.rotate_in = rotate_us * US
        v.bg_in = self.rng.uniform(*background_us) * US
        while t < until:
            if storm_at is not None and t >= storm_at:
                storm_at = None
                t = self.storm(t, v)
                continue
            if refuse_at is not None and t >= refuse_at:
                refuse_at = None
                t = self.guest_msr(t + 300, v, self.sel(2), True, self.refused_sel)
                continue
            step = min(v.pmi_in if not v.frozen else math.inf, v.rotate_in, v.bg_in,
                       self.busy_cycles.get(v.cpu, math.inf) if watchdog else math.inf,
                       self.sampling.get(v.cpu, math.inf) if host_sampling else math.inf)
            step = max(step, 500)
            t_exit = int(t + step)
            for name in ("pmi_in", "rotate_in", "bg_in"):
                setattr(v, name, getattr(v, name) - step)
            if watchdog:
                self.busy_cycles[v.cpu] -= step
            if host_sampling:
                self.sampling[v.cpu] -= step
            if watchdog and self.busy_cycles[v.cpu] <= 0:
                self.busy_cycles[v.cpu] = self.thresh_s * 1e9
                t = self.host_pmi_exit(t_exit, v, "watchdog")
            elif host_sampling and self.sampling[v.cpu] <= 0:
                self.sampling[v.cpu] = self.rng.uniform(100, 300) * US
                t = self.host_pmi_exit(t_exit, v, "sampling")
            elif v.pmi_in <= 0 and not v.frozen:
                t = self.guest_pmi(t_exit, v)
                t = self.pmi_handler(t, v, 0, (1 << counters) - 1)
                v.pmi_in = self.rng.uniform(*sample_us) * US
            elif v.rotate_in <= 0:
                t = self.do_exit(t_exit, v, "extint", intr_info=(K.INTR_INFO_EXTINT | 0xEC)
                                 if self.isa == K.ISA_VMX else 0)  # the guest's tick arrives as a host timer IRQ
                t = self.rotate(t, v, counters)
                v.rotate_in = rotate_us * US
            else:
                t = self.background(t_exit, v)
                v.bg_in = self.rng.uniform(*background_us) * US
                if host_sampling:  # one exit-entry pair: host time [t_exit, t)
                    self.host_time_sampling(v, t_exit, t)

    def storm(self, t: int, v: Vcpu) -> int:
        """A guest PMU test cycling event selects: 60 value-changing writes within a millisecond."""
        for k in range(60):
            t = self.guest_msr(t + 300, v, self.sel(k % 4), True, M.EVENTSEL_ENABLE | (3 << 16) | (0xC0 + k % 7)
                               | (k % 2) << 8)
        return t

    def host_time_sampling(self, v: Vcpu, a: int, b: int) -> None:
        """Host sampling that counts KVM's own exit handling in [a, b): overflows there are host NMIs on
        the vCPU thread with no exit of their own."""
        left = self.sampling[v.cpu]
        if left > b - a:
            self.sampling[v.cpu] = left - (b - a)
            return
        at = a + int(left)
        if at >= b - 50:
            at = b - 50
        self.nmi_handler(at, v, PERF_H, 1)
        self.truth.host_nmis.append({"cpu": v.cpu, "ts": at, "why": "sampling", "in_guest": False})
        self.sampling[v.cpu] = self.rng.uniform(100, 300) * US

    def host_pmi_exit(self, t: int, v: Vcpu, why: str) -> int:
        """A host perf event that counts guest cycles overflowed in guest mode (emulated design only)."""
        info = K.INTR_INFO_NMI if self.isa == K.ISA_VMX else 0
        req = 0 if self.has_requests else 0
        end = self.do_exit(t, v, "nmi", intr_info=info, requests=req, nmi=(PERF_H, 1), nmi_class="host_pmi")
        self.truth.host_nmis.append({"cpu": v.cpu, "ts": t, "why": why, "in_guest": True})
        return end

    # ---- scenarios -------------------------------------------------------------------------------
    def _mediated_steady(self) -> None:
        for v in self.vcpus:
            self._vcpu(v, 100 * US + v.cpu * 7 * US, 20 * MS, counters=4)

    def _mediated_partial(self) -> None:
        for v in self.vcpus:
            self._vcpu(v, 100 * US + v.cpu * 7 * US, 20 * MS, counters=4)

    def _emulated_multiplex(self) -> None:
        for v in self.vcpus:
            self._vcpu(v, 100 * US + v.cpu * 7 * US, 20 * MS, counters=4, rotate_us=800,
                       storm_at=10 * MS + 20 * US if v.idx == 0 else None)

    def _emulated_create_fail(self) -> None:
        """The multiplexing guest of emulated-multiplex; at 8 ms vCPU 0 programs counter 2 with an event the
        host perf driver refuses: pmc_reprogram_counter() returns -EINVAL, the counter does not count, and
        KVM retries it at every later KVM_REQ_PMU until the next rotation writes another event select."""
        bad = self.vcpus[0]
        for v in self.vcpus:
            self._vcpu(v, 100 * US + v.cpu * 7 * US, 20 * MS, counters=4, rotate_us=800,
                       refuse_at=8 * MS if v is bad else None)

    def _skid(self) -> None:
        for v in self.vcpus:
            self.sampling[v.cpu] = self.rng.uniform(100, 300) * US
            self._vcpu(v, 100 * US + v.cpu * 7 * US, 20 * MS, counters=2, host_sampling=True)

    def _pinned_contention(self) -> None:
        """vCPU 0 runs a PMU test that samples with one counter S and reads it with RDMSR. At 5 ms it
        enables every GP counter (and fixed 0 on Intel): with the perf watchdog holding fixed counter 1
        (Intel) or a GP counter (AMD), KVM's events need one GP counter more than the host has, and
        perf puts S's event in ERROR (Intel: S is fixed counter 1, whose cycles event falls back to a
        GP counter; AMD: S is the last GP counter). S stops counting: its reads repeat and its PMIs
        stop. At 15 ms the test disables two counters (the contention ends) and toggles GLOBAL_CTRL,
        which reprograms S (perf_event_enable() clears ERROR)."""
        v = self.vcpus[0]
        n = self.host.nr_gp
        intel = self.vendor == "intel"
        s_addr, s_bit = (0x30A, 33) if intel else (self.ctr(n - 1), n - 1)
        rearm = (1 << 48) - 400_000
        self.entry(100 * US, v)
        t0 = self.boot_cpuid(101 * US, v)
        if intel:
            t = self.guest_msr(t0 + 1000, v, 0x38D, True, 0xB0)  # fixed 1: OS+USR, PMI
        else:
            t = self.guest_msr(t0 + 1000, v, self.sel(n - 1), True, M.EVENTSEL_ENABLE | (3 << 16) | (1 << 20) | 0x76)
        t = self.guest_msr(t + 500, v, s_addr, True, rearm)
        t = self.guest_msr(t + 500, v, self.gctl(), True, 1 << s_bit)
        s_value = rearm
        phase2, phase3, until = 5 * MS, 15 * MS, 20 * MS
        state, start_ts = 1, 0
        frozen_prev: int | None = None
        frozen_win: dict | None = None
        pmi_in, read_in, bg_in = (self.rng.uniform(150, 250) * US, self.rng.uniform(30, 60) * US,
                                  self.rng.uniform(20, 80) * US)

        def msr_ts() -> int:
            e = self.truth.msr[-1]["exit"]
            return e["ts"] + min(150, e["handling_ns"] // 3)

        while t < until:
            if state == 1 and t >= phase2:
                for i in range(n if intel else n - 1):
                    t = self.guest_msr(t + 300, v, self.sel(i), True, M.EVENTSEL_ENABLE | (3 << 16) | 0xC0)
                if intel:
                    t = self.guest_msr(t + 300, v, 0x38D, True, 0xB3)
                t = self.guest_msr(t + 300, v, self.gctl(), True, ((1 << n) - 1) | ((3 << 32) if intel else 0))
                s_value += int(300 * (n + 2) * SIM_GHZ)  # S counted the guest time of the enabling writes
                state, start_ts = 2, msr_ts()
                continue
            if state == 2 and t >= phase3:
                t = self.guest_msr(t + 300, v, self.sel(0), True, 0)
                end_ts = msr_ts()
                t = self.guest_msr(t + 300, v, self.sel(1), True, 0)
                t = self.guest_msr(t + 300, v, self.gctl(), True, 0)
                t = self.guest_msr(t + 300, v, self.gctl(), True, ((1 << n) - 4) | ((3 << 32) if intel else 0))
                for kind in ("contention", "pmi_cadence_stopped"):
                    self.truth.silent.append({"kind": kind, "pid": v.pid, "start_ns": start_ts, "end_ns": end_ts})
                state = 3
                continue
            counting = state != 2
            step = max(500.0, min(pmi_in if counting else math.inf, read_in, bg_in))
            t_exit = int(t + step)
            read_in -= step
            bg_in -= step
            if counting:
                pmi_in -= step
                s_value += int(step * SIM_GHZ)
            if counting and pmi_in <= 0:
                t = self.guest_pmi(t_exit, v)
                t = self.guest_msr(t + 400, v, self.gsts(), False, 1 << s_bit)
                t = self.guest_msr(t + 400, v, s_addr, True, rearm)
                s_value = rearm
                t = self.guest_msr(t + 400, v, self.gclr(), True, 1 << s_bit)
                if self.guest_os == "linux":
                    t = self.guest_msr(t + 400, v, 0x834, True, 0x400)
                pmi_in = self.rng.uniform(150, 250) * US
            elif read_in <= 0:
                t = self.guest_msr(t_exit, v, s_addr, False, s_value)
                if state == 2:  # one window from the first repeated read to the last
                    if frozen_win is not None:
                        frozen_win["end_ns"] = msr_ts()
                    elif frozen_prev is not None:
                        frozen_win = {"kind": "frozen_counter", "pid": v.pid, "start_ns": frozen_prev,
                                      "end_ns": msr_ts()}
                        self.truth.silent.append(frozen_win)
                    else:
                        frozen_prev = msr_ts()
                read_in = self.rng.uniform(30, 60) * US
            else:  # a busy PMU test: no HLT
                t = self.background(t_exit, v, fastpath_ok=False, hlt=False)
                bg_in = self.rng.uniform(20, 80) * US
        self._vcpu(self.vcpus[1], 150 * US, until, counters=1)

    def _emulated_watchdog(self) -> None:
        """Seconds of vCPU activity with long idle HLTs (the thread sleeps: sched_switch to the idle task);
        the perf watchdog counts busy (unhalted) time only and fires every thresh seconds of it."""
        until = 6 * 10**9
        for v in self.vcpus:
            self.busy_cycles[v.cpu] = self.rng.uniform(0.2, 1.0) * 1e9
            t = 1 * MS + v.cpu * 3 * MS
            self.entry(t, v)
            t = self.boot_cpuid(t + 1000, v)
            while t < until:
                busy_left = self.busy_cycles[v.cpu]
                step = self.rng.uniform(0.5, 3) * MS
                if busy_left <= step:
                    t_exit = int(t + max(busy_left, 500))
                    self.busy_cycles[v.cpu] = self.thresh_s * 1e9
                    t = self.host_pmi_exit(t_exit, v, "watchdog")
                    continue
                t_exit = int(t + step)
                self.busy_cycles[v.cpu] -= step
                if self.rng.random() < 0.02:  # idle: HLT, the vCPU thread sleeps for 20..100 ms
                    sleep = int(self.rng.uniform(20, 100) * MS)
                    self.emit(t_exit + 2000, v.cpu, v.pid, "sched:sched_switch", prev_comm=self.comm(v.pid),
                              prev_pid=v.pid, prev_prio=120, prev_state=1, next_comm="swapper/" + str(v.cpu),
                              next_pid=0, next_prio=120)
                    self.emit(t_exit + sleep - 3000, v.cpu, 0, "sched:sched_switch", prev_comm="swapper/" +
                              str(v.cpu), prev_pid=0, prev_prio=120, prev_state=0, next_comm=self.comm(v.pid),
                              next_pid=v.pid, next_prio=120)
                    self.busy_cycles[v.cpu] -= 5000  # the few us of host work around the sleep
                    t = self.do_exit(t_exit, v, "hlt", sleep)
                else:
                    t = self.background(t_exit, v, fastpath_ok=True)
                    self.busy_cycles[v.cpu] -= self.truth.exits[-1]["handling_ns"]

    def _mediated_refused(self) -> None:
        """KVM refused the mediated VM: only the host runs; the perf watchdog fires every thresh seconds."""
        until = 3 * 10**9
        for cpu in range(self.ncpu):
            t = int(self.rng.uniform(0.1, 0.9) * 1e9)
            while t < until:
                self.emit(t, cpu, 0, "nmi:nmi_handler", handler=PERF_H, delta_ns=self.rng.randint(800, 3000),
                          handled=1)
                self.truth.host_nmis.append({"cpu": cpu, "ts": t, "why": "watchdog", "in_guest": False})
                t += self.thresh_s * 10**9 + self.rng.randint(-2000, 2000) * US

    def pmu_overhead(self) -> float:
        """PMU-attributable exit handling per ns of guest time: the exits of PMU MSR accesses, RDPMCs and
        PMIs, plus, under the mediated design, the put+load of every other slow-path exit. The quantity the
        published overheads compare across designs (design §7: SPECint2017 with guest perf sampling,
        emulated 33.62%/79.32% vs mediated 6.21%/10.45%, basic/multiplexed)."""
        t = self.truth
        pmu = {id(m["exit"]): m["exit"] for m in t.msr} | {id(e): e for e in t.rdpmc}
        pmi_ts = {(p["pid"], p["ts"]) for p in t.pmi_exits}
        pmu |= {id(e): e for e in t.exits if (e["pid"], e["ts"]) in pmi_ts}
        cost = sum(e["handling_ns"] for e in pmu.values())
        if self.model == D.MEDIATED and self.guest.version:
            cost += self.switch_ns * sum(1 for e in t.exits if id(e) not in pmu and not e["fastpath"])
        return cost / max(1, sum(r["end"] - r["start"] for r in t.runs))

    # ---- output ----------------------------------------------------------------------------------
    def report_text(self) -> str:
        """The events as `trace-cmd report -t` text (ns timestamps)."""
        lines = [f"cpus={self.ncpu}"]
        for e in self.events:
            if e.name in self.probe_formats:
                continue  # probe events: binary outputs only (write_perf_data, write_trace_dat)
            fmt = self.fmts[e.name]
            text = fmt.printer.render(e.fields, HANDLERS.get)
            comm = self.comm(e.pid)
            name = fmt.name
            lines.append(f"{comm:>16}-{e.pid:<5} [{e.cpu:03d}] {e.ts // 10**9}.{e.ts % 10**9:09d}: "
                         f"{name}:{' ' * max(1, 21 - len(name))}{text}")
        return "\n".join(lines) + "\n"

    def write_perf_data(self, path: Path) -> Path:
        """The same events as a perf.data of tracepoint samples (what perf record -a would write)."""
        from vpmutrace.formats.known import reference_ring_headers
        from vpmutrace.writers.perf_data import PerfDataContent, pack_payload, write_perf_data

        names = sorted({e.name for e in self.events})
        header_page, header_event = reference_ring_headers()
        texts = {**kernel_format_texts(self.version), **{n: t for n, (_, t) in self.probe_formats.items()}}
        pc = PerfDataContent(formats={n: self.fmts[n] for n in names}, format_texts={n: texts[n] for n in names},
                             header_page=header_page, header_event=header_event, os_release=self.kernel_release,
                             cpuid="GenuineIntel,6,143,8" if self.vendor == "intel" else "AuthenticAMD,25,17,1",
                             nr_cpus=self.ncpu, comms={v.pid: self.comm(v.pid) for v in self.vcpus},
                             tgids={v.pid: VM_PID for v in self.vcpus})
        for e in self.events:
            pc.samples.append((e.ts, e.cpu, e.pid, e.name, pack_payload(self.fmts[e.name], e.fields, e.pid)))
        return write_perf_data(path, pc)

    def write_trace_dat(self, path: Path) -> Path:
        """The same events as a trace.dat (what trace-cmd record writes): per-CPU ring-buffer pages, the
        format files of every event (probes included), saved cmdlines; local clock in ns."""
        import numpy as np

        from vpmutrace.formats.known import reference_ring_headers
        from vpmutrace.writers.perf_data import pack_payload
        from vpmutrace.writers.ringbuf import pack_pages
        from vpmutrace.writers.trace_dat import BufferData, TraceDatContent, write_trace_dat

        header_page, header_event = reference_ring_headers()
        texts = {**kernel_format_texts(self.version), **{n: t for n, (_, t) in self.probe_formats.items()}}
        by_sys: dict[str, list[bytes]] = {}
        for n in sorted({e.name for e in self.events}):
            by_sys.setdefault(n.split(":")[0], []).append(texts[n])
        cpus = {}
        for cpu in range(self.ncpu):
            evs = [e for e in self.events if e.cpu == cpu]
            cpus[cpu] = pack_pages([pack_payload(self.fmts[e.name], e.fields, e.pid) for e in evs],
                                   np.array([e.ts for e in evs], dtype=np.int64))
        pids = {e.pid for e in self.events}
        c = TraceDatContent(page_size=4096, header_page=header_page, header_event=header_event, event_formats=by_sys,
                            cmdlines="".join(f"{p} {self.comm(p)}\n" for p in sorted(pids)).encode(),
                            buffers=[BufferData("", "local", cpus)], uname=f"Linux sim {self.kernel_release} x86_64",
                            trace_clock="[local] global", cpucount=self.ncpu, tool_version="vpmutrace simulator")
        return write_trace_dat(path, c, 7, "zstd")

    @property
    def kernel_release(self) -> str:
        return f"{self.kernel}.0-sim"

    def host_snapshot(self) -> dict[str, Any]:
        h = self.host
        mod = "kvm_intel" if self.vendor == "intel" else "kvm_amd"
        pc: dict[str, Any] = {"source": "simulator", "gp_counters": h.nr_gp, "fixed_counters": h.nr_fixed,
                              "version": h.version, "gp_width": h.gp_width, "fixed_width": h.fixed_width}
        if self.vendor == "intel":
            pc["perf_capabilities"] = 1 << 13
        else:
            pc["perfmon_v2"] = True
            pc["perfctr_core"] = True
        params: dict[str, str] = {}
        if self.version >= (7, 0) or self.model == D.MEDIATED:
            params["enable_mediated_pmu"] = "Y" if self.model == D.MEDIATED else "N"
        dmesg = ["NMI watchdog: Enabled. Permanently consumes one hw-PMU counter."] if self.watchdog else []
        if self.scenario == "mediated-refused":
            dmesg.append("kvm: Failed to enable mediated vPMU, try disabling system wide perf events and "
                         "nmi_watchdog.")
        running = [] if self.scenario == "mediated-refused" else [
            {"pid": VM_PID, "cmdline": "qemu-system-x86_64 -enable-kvm -cpu host,pmu=on (simulated)",
             "vcpus": [{"vcpu": v.idx, "tid": v.pid} for v in self.vcpus]}]
        return {"kernel_release": self.kernel_release,
                "cpu_vendor": "GenuineIntel" if self.vendor == "intel" else "AuthenticAMD",
                "cpu_model": f"simulated {self.isa_name.upper()} host", "cpus_online": self.ncpu,
                "cpu_mhz": str(SIM_GHZ * 1000), "tsc_khz": int(SIM_GHZ * 1e6), "pmu_counters": pc,
                "watchdog": {"nmi_watchdog": int(self.watchdog), "watchdog_thresh": self.thresh_s,
                             "kind": "perf" if self.watchdog else None,
                             "kind_evidence": dmesg[0] if self.watchdog else None},
                "dmesg": {"lines": dmesg},
                "kvm": {"kvm": {"enable_pmu": "Y", "enable_vmware_backdoor": "N"}, mod: params},
                "running_vms": running}
