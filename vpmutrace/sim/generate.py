"""Ground-truth simulator: host traces generated from the reference model, with their right answers.

A scenario drives vCPU threads on host CPUs through guest runs and VM-exits. Which
accesses exit, how PMIs arrive and what the host perf handler does follow the model of
the chosen design (model/design.py). Events are rendered as `trace-cmd report` text
through the kernel's own print fmts (the bundled reference formats), so the analyzers
read them exactly as they read a real capture. Every timestamp is a whole microsecond,
the resolution of that text. While generating, the simulator records what happened
(each exit's reason and handling time, each guest window, each deliberately placed
PMI and its class, each frozen counter and contention window, each storm) and writes
it as truth.json in the schema of `vpmutrace analyze --json`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpmutrace.formats.known import reference_formats
from vpmutrace.model import design as D
from vpmutrace.model import msrs as M

US = 1000
PERF_NMI_HANDLER = 0xFFFFFFFF8100A000
VM_PID = 999  # the simulated VMM process owning the vCPU threads
NMI_SYMBOLS = {PERF_NMI_HANDLER: "perf_event_nmi_handler"}

VMX = {"hlt": 12, "cpuid": 10, "io": 30, "ept": 48, "timer": 52, "msr_read": 31, "msr_write": 32,
       "rdpmc": 15, "extint": 1, "nmi": 0}
SVM = {"hlt": 0x78, "cpuid": 0x72, "io": 0x7B, "ept": 0x400, "timer": 0x60, "msr_read": 0x7C, "msr_write": 0x7C,
       "rdpmc": 0x6F, "extint": 0x60, "nmi": 0x61}

SCENARIOS = {
    "mediated-steady": "mediated vPMU, guest profiling: counters pass through, selectors trap, PMIs on 0xF5",
    "emulated-multiplex": "emulated vPMU, guest multiplexing: every PMU MSR and RDPMC exits, reprogram storms",
    "pinned-contention": "emulated vPMU, NMI watchdog + 8 guest counters on 8: a counter silently stops",
    "watchdog-residency": "long guest residency; watchdog NMIs only in host time: blind gaps with guest time",
    "skid": "emulated vPMU, PMIs landing after VM-exits and before VM-entries (skid classes)",
    "host-include-guest": "mediated VM while a host !exclude_guest event runs: host PMIs during guest time",
}


@dataclass
class Event:
    ts: int
    cpu: int
    pid: int
    comm: str
    name: str  # system:event
    fields: dict[str, Any]


@dataclass
class Truth:
    exits: list[dict] = field(default_factory=list)  # reason, code, isa, handling_ns
    windows: list[dict] = field(default_factory=list)  # cpu, pid, start, end
    msr: list[dict] = field(default_factory=list)  # msr, write, passes (under mediated), its exit record
    rdpmc: list[dict] = field(default_factory=list)  # the exit records of RDPMC exits
    skid: dict[str, int] = field(default_factory=lambda: {"guest_exit": 0, "misattributed_host": 0,
                                                          "ambiguous": 0, "host": 0})
    nmi_exits: int = 0
    mediated_pmi_exits: int = 0
    watchdog_nmis: dict[int, list[int]] = field(default_factory=dict)
    silent: list[dict] = field(default_factory=list)
    divergences: dict[str, int] = field(default_factory=dict)


class Sim:
    def __init__(self, scenario: str, isa: str, seed: int) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}: {', '.join(SCENARIOS)}")
        self.scenario, self.isa_name, self.rng = scenario, isa, random.Random(seed)
        self.isa = 1 if isa == "vmx" else 2
        self.codes = VMX if isa == "vmx" else SVM
        self.vendor = "intel" if isa == "vmx" else "amd"
        self.model = D.MEDIATED if scenario in ("mediated-steady", "host-include-guest", "watchdog-residency") \
            else D.EMULATED
        shape = D.PmuShape(vendor=self.vendor, nr_gp=8 if self.vendor == "intel" else 6,
                           nr_fixed=3 if self.vendor == "intel" else 0)
        self.setup = D.HostSetup(host=shape, guest=shape, nmi_watchdog=scenario == "pinned-contention",
                                 watchdog_thresh_s=1.0 if scenario == "watchdog-residency" else 10.0)
        self.events: list[Event] = []
        self.truth = Truth()
        self.ncpu = 2
        self.vcpus = [(1000 + i, i % self.ncpu) for i in range(2)]  # (thread id, cpu)
        self.skid_window = 10 * US

    # ---- event helpers -------------------------------------------------------------------------
    def emit(self, ts: int, cpu: int, pid: int, name: str, **f: Any) -> None:
        self.events.append(Event(ts, cpu, pid, "CPU 0/KVM" if pid == 1000 else "CPU 1/KVM", name, f))

    def pmu_msrs(self) -> dict[str, int]:
        if self.vendor == "intel":
            return {"sel": 0x186, "ctr": 0xC1, "gctl": 0x38F, "gsts": 0x38E}
        return {"sel": 0xC0010200, "ctr": 0xC0010201, "gctl": 0xC0000301, "gsts": 0xC0000300}

    def sel(self, i: int) -> int:
        return (0x186 + i) if self.vendor == "intel" else (0xC0010200 + 2 * i)

    def ctr(self, i: int) -> int:
        return (0xC1 + i) if self.vendor == "intel" else (0xC0010201 + 2 * i)

    def exit(self, t: int, cpu: int, pid: int, vcpu: int, kind: str, handling: int, intr_info: int = 0,
             info1: int = 0, record: bool = True) -> None:
        code = self.codes[kind]
        if kind == "nmi" and self.isa == 1:
            intr_info = D.NMI_INTR_INFO
        if self.isa == 2 and kind in ("msr_read", "msr_write"):
            info1 = 1 if kind == "msr_write" else 0
        self.emit(t, cpu, pid, "kvm:kvm_exit", exit_reason=code, guest_rip=0xFFFFFFFF81000000 + t % 4096,
                  isa=self.isa, info1=info1, info2=0, intr_info=intr_info, error_code=0, vcpu_id=vcpu, requests=0)
        if record:
            names = reference_formats()["kvm:kvm_exit"]
            name = names.printer.eval_arg(names.printer.arg_after("reason "), {"exit_reason": code, "isa": self.isa})
            self.truth.exits.append({"reason": name, "exit_reason": code, "isa": self.isa, "handling_ns": handling,
                                     "pid": pid, "ts": t})

    def entry(self, t: int, cpu: int, pid: int, vcpu: int, inject_nmi: bool = False) -> None:
        self.emit(t, cpu, pid, "kvm:kvm_entry", vcpu_id=vcpu, rip=0xFFFFFFFF81000000 + t % 4096, immediate_exit=0,
                  intr_info=D.NMI_INTR_INFO if inject_nmi else 0, error_code=0)

    def msr(self, t: int, cpu: int, pid: int, addr: int, write: bool, value: int, gp: bool = False) -> None:
        self.emit(t, cpu, pid, "kvm:kvm_msr", write=int(write), ecx=addr, data=value, exception=int(gp))

    def perf_nmi(self, t: int, cpu: int, handled: int = 1) -> None:
        self.emit(t, cpu, 0, "nmi:nmi_handler", handler=PERF_NMI_HANDLER, delta_ns=1500, handled=handled)

    def accept_nmi(self, t: int, cpu: int, pid: int) -> None:
        self.emit(t, cpu, pid, "kvm:kvm_apic_accept_irq", apicid=pid - 1000, dm=0x400, tm=0, vec=0)

    # ---- the run -------------------------------------------------------------------------------
    def run(self) -> None:
        getattr(self, "_" + self.scenario.replace("-", "_"))()
        self.events.sort(key=lambda e: e.ts)

    def _vcpu_loop(self, pid: int, cpu: int, vcpu: int, t: int, until: int, step) -> int:  # noqa: ANN001
        """Alternate guest windows and exits; ``step(t_exit)`` emits one exit and returns its handling time."""
        while t < until:
            run = self.rng.randint(20, 80) * US
            start = t
            self.entry(start, cpu, pid, vcpu)
            t = start + run
            self.truth.windows.append({"cpu": cpu, "pid": pid, "start": start, "end": t})
            t += step(t, pid, cpu, vcpu)
        self._last_exit_unpaired(pid)
        return t

    def _run_vcpus(self, until: int, step) -> None:  # noqa: ANN001
        """Every vCPU thread runs the scenario's step from a slightly different start."""
        for pid, cpu in self.vcpus:
            self._vcpu_loop(pid, cpu, pid - 1000, 100 * US + cpu * 7 * US, until, step)

    def _last_exit_unpaired(self, pid: int) -> None:
        """The thread's last exit has no entry after it: perf kvm stat (and we) cannot time it."""
        for e in reversed(self.truth.exits):
            if e["pid"] == pid:
                e["handling_ns"] = None
                return

    def _plain_exit(self, t: int, pid: int, cpu: int, vcpu: int) -> int:
        kind = self.rng.choice(["hlt", "cpuid", "io", "ept", "timer"])
        h = self.rng.randint(2, 30) * US
        self.exit(t, cpu, pid, vcpu, kind, h, intr_info=0x800000EC if kind == "timer" and self.isa == 1 else 0)
        return h

    def _pmu_access_exit(self, t: int, pid: int, cpu: int, vcpu: int, addr: int, write: bool, value: int,
                         h: int | None = None) -> int:
        h = h if h is not None else self.rng.randint(2, 12) * US
        self.exit(t, cpu, pid, vcpu, "msr_write" if write else "msr_read", h)
        self.msr(t + US, cpu, pid, addr, write, value)
        self.truth.msr.append({"msr": addr, "write": write, "exit": self.truth.exits[-1],
                               "passes": not D.msr_intercepted(D.MEDIATED, addr, self.setup)})
        return h

    # scenario: mediated steady state
    def _mediated_steady(self) -> None:
        until = 20_000 * US

        def step(t: int, pid: int, cpu: int, vcpu: int) -> int:
            r = self.rng.random()
            if r < 0.15:  # guest reprograms an event select: intercepted under mediated
                return self._pmu_access_exit(t, pid, cpu, vcpu, self.sel(0), True, M.EVENTSEL_ENABLE | 0xC0)
            if r < 0.25:  # counter overflow: PMI on the dedicated vector, LVTPC injected at next entry
                h = self.rng.randint(3, 15) * US
                self.exit(t, cpu, pid, vcpu, "extint", h, intr_info=0x80000000 | D.MEDIATED_PMI_VECTOR)
                self.truth.mediated_pmi_exits += 1 if self.isa == 1 else 0
                self.accept_nmi(t + h - US, cpu, pid)
                return h
            return self._plain_exit(t, pid, cpu, vcpu)

        self._run_vcpus(until, step)

    # scenario: emulated multiplexing (+ storms, RDPMC)
    def _emulated_multiplex(self) -> None:
        until = 20_000 * US
        storm_at = {1000: 5, 1001: 12}  # ms bucket of one storm per vCPU

        def step(t: int, pid: int, cpu: int, vcpu: int) -> int:
            ms = t // 1_000_000
            if storm_at.get(pid) == ms:
                # the storm bucket holds the storm's writes only (it starts early enough to fit)
                if not getattr(self, f"_storm{pid}", False) and t % 1_000_000 < 500 * US:
                    setattr(self, f"_storm{pid}", True)
                    return self._storm(t, pid, cpu, vcpu)
                return self._plain_exit(t, pid, cpu, vcpu)
            if storm_at.get(pid) == (t + 100 * US) // 1_000_000:
                # nor may a write of an exit that starts just before it land in it
                return self._plain_exit(t, pid, cpu, vcpu)
            r = self.rng.random()
            if r < 0.3:
                i = self.rng.randrange(4)
                choice = self.rng.choice(["sel", "ctr_read", "ctr_write", "gctl", "gsts"])
                m = self.pmu_msrs()
                addr, write, val = {"sel": (self.sel(i), True, M.EVENTSEL_ENABLE | 0xC0),
                                    "ctr_read": (self.ctr(i), False, self.rng.randrange(1 << 40)),
                                    "ctr_write": (self.ctr(i), True, 0), "gctl": (m["gctl"], True, 0xF),
                                    "gsts": (m["gsts"], False, 0)}[choice]
                return self._pmu_access_exit(t, pid, cpu, vcpu, addr, write, val)
            if r < 0.4:
                h = self.rng.randint(2, 8) * US
                self.exit(t, cpu, pid, vcpu, "rdpmc", h)
                self.truth.rdpmc.append(self.truth.exits[-1])
                return h
            if r < 0.45:  # guest counter overflow: host NMI exit, perf handler, LVTPC NMI at next entry
                return self._nmi_pmi(t, pid, cpu, vcpu)
            return self._plain_exit(t, pid, cpu, vcpu)

        self._run_vcpus(until, step)

    def _storm(self, t: int, pid: int, cpu: int, vcpu: int) -> int:
        """60 control writes within one millisecond bucket, each its own 3 us exit, 2 us guest runs between."""
        start = t
        n = 60
        for k in range(n):
            self._pmu_access_exit(t, pid, cpu, vcpu, self.sel(k % 4), True, M.EVENTSEL_ENABLE | (0xC0 + k), 3 * US)
            if k == 0:
                first = t + US
            if k < n - 1:
                self.entry(t + 3 * US, cpu, pid, vcpu)
                self.truth.windows.append({"cpu": cpu, "pid": pid, "start": t + 3 * US, "end": t + 5 * US})
                t += 5 * US
        self.truth.silent.append({"kind": "reprogram_storm", "pid": pid, "start_ns": first, "end_ns": t + US})
        return t + 3 * US - start

    def _nmi_pmi(self, t: int, pid: int, cpu: int, vcpu: int) -> int:
        h = self.rng.randint(6, 15) * US
        self.exit(t, cpu, pid, vcpu, "nmi", h)
        self.truth.nmi_exits += 1
        self.perf_nmi(t + US, cpu, 1)
        self.truth.skid["guest_exit"] += 1
        self.accept_nmi(t + h - US, cpu, pid)
        return h

    # scenario: pinned contention (silent error)
    def _pinned_contention(self) -> None:
        pid, cpu = self.vcpus[0]
        t = 200 * US
        nr = self.setup.host.nr_gp
        seq: list[tuple[str, int, int]] = []  # (what, counter, value)
        for i in range(nr):
            seq.append(("sel", i, M.EVENTSEL_ENABLE | 0xC0))
        lost = nr - 1  # perf schedules the watchdog first: the last guest counter gets no hardware
        values = {i: 1000 * (i + 1) for i in range(nr)}
        for _ in range(6):
            for i in (0, lost):
                seq.append(("read", i, 0))
        seq.append(("sel", lost, 0xC0))  # guest disables it: contention over
        contention_start = None
        for what, i, val in seq:
            self.entry(t, cpu, pid, 0)
            run = self.rng.randint(30, 60) * US
            self.truth.windows.append({"cpu": cpu, "pid": pid, "start": t, "end": t + run})
            t += run
            if what == "sel":
                self._pmu_access_exit(t, pid, cpu, 0, self.sel(i), True, val, 10 * US)
                if i == lost and val & M.EVENTSEL_ENABLE:
                    contention_start = t + US
                if i == lost and not val & M.EVENTSEL_ENABLE and contention_start is not None:
                    self.truth.silent.append({"kind": "contention", "pid": pid, "start_ns": contention_start,
                                              "end_ns": t + US})
            else:
                if i != lost:
                    values[i] += self.rng.randint(5000, 90000)
                prev = getattr(self, f"_last{i}", None)
                self._pmu_access_exit(t, pid, cpu, 0, self.ctr(i), False, values[i], 10 * US)
                if i == lost and prev is not None:
                    self.truth.silent.append({"kind": "frozen_counter", "pid": pid, "start_ns": prev,
                                              "end_ns": t + US})
                setattr(self, f"_last{i}", t + US)
            t += 10 * US
        self._last_exit_unpaired(pid)
        # the other vCPU just runs
        p2, c2 = self.vcpus[1]
        self._vcpu_loop(p2, c2, 1, 150 * US, t, self._plain_exit)

    # scenario: watchdog under long guest residency
    def _watchdog_residency(self) -> None:
        period = int(self.setup.watchdog_thresh_s * 1e9)
        until = 12 * period
        for pid, cpu in self.vcpus:
            t = (10 + cpu) * 1_000 * US
            wins = []
            while t < until:
                run = self.rng.randint(300, 3500) * 1_000 * US  # 0.3 .. 3.5 s in the guest
                start = t
                self.entry(start, cpu, pid, pid - 1000)
                t = min(start + run, until + 5 * US)
                wins.append((start, t))
                self.truth.windows.append({"cpu": cpu, "pid": pid, "start": start, "end": t})
                h = self.rng.randint(40, 90) * US
                self.exit(t, cpu, pid, pid - 1000, "timer", h, intr_info=0x800000EC if self.isa == 1 else 0)
                t += h
            self._last_exit_unpaired(pid)
            # the watchdog's cycles do not advance in guest time: an NMI due inside a window fires
            # right after it
            nmis, due = [], 0
            while due < until:
                due += period
                for a, b in wins:
                    if a <= due < b:
                        due = b + self.skid_window + 5 * US  # out of the skid window of the exit
                        break
                if due < until:
                    nmis.append(due)
                    self.perf_nmi(due, cpu, 1)
                    self.truth.skid[self._host_nmi_class(cpu, due, wins)] += 1
            self.truth.watchdog_nmis[cpu] = nmis

    def _host_nmi_class(self, cpu: int, t: int, wins: list[tuple[int, int]]) -> str:
        """Where a host NMI falls relative to this CPU's exits (window ends) and entries (window starts)."""
        w = self.skid_window
        if any(0 <= t - b <= w for _a, b in wins):
            return "misattributed_host"
        if any(0 <= a - t <= w for a, _b in wins):
            return "ambiguous"
        return "host"

    # scenario: skid classes
    def _skid(self) -> None:
        until = 20_000 * US
        w = self.skid_window

        def step(t: int, pid: int, cpu: int, vcpu: int) -> int:
            r = self.rng.random()
            if r < 0.1:
                return self._nmi_pmi(t, pid, cpu, vcpu)
            if r < 0.35:  # a long exit; one host perf NMI placed deliberately inside it
                h = self.rng.randint(40, 90) * US
                self.exit(t, cpu, pid, vcpu, "io", h)
                last = t + h >= until  # the loop's final exit: no entry follows it
                where = self.rng.choice(["misattributed_host", "host"] if last else
                                        ["misattributed_host", "ambiguous", "host"])
                if where == "misattributed_host":
                    at = t + self.rng.randint(1, w // US) * US
                elif where == "ambiguous":
                    at = t + h - self.rng.randint(1, w // US) * US
                else:
                    at = t + w + US + self.rng.randint(0, (h - 2 * w - 2 * US) // US) * US
                self.perf_nmi(at, cpu, 1)
                self.truth.skid[where] += 1
                return h
            return self._plain_exit(t, pid, cpu, vcpu)

        self._run_vcpus(until, step)

    # scenario: host include-guest event while a mediated VM runs
    def _host_include_guest(self) -> None:
        until = 20_000 * US

        def step(t: int, pid: int, cpu: int, vcpu: int) -> int:
            r = self.rng.random()
            if r < 0.1:  # the host event overflows in guest time: NMI exit, perf claims it
                h = self.rng.randint(6, 15) * US
                self.exit(t, cpu, pid, vcpu, "nmi", h)
                self.truth.nmi_exits += 1
                self.perf_nmi(t + US, cpu, 1)
                self.truth.skid["guest_exit"] += 1
                self.truth.divergences["host_pmi_during_guest"] = \
                    self.truth.divergences.get("host_pmi_during_guest", 0) + 1
                return h
            return self._plain_exit(t, pid, cpu, vcpu)

        self._run_vcpus(until, step)

    # ---- output --------------------------------------------------------------------------------
    def report_text(self) -> str:
        fmts = reference_formats()
        lines = [f"cpus={self.ncpu}"]
        for e in self.events:
            fmt = fmts[e.name]
            text = fmt.printer.render(e.fields, NMI_SYMBOLS.get)
            comm = "<idle>" if e.pid == 0 else e.comm
            name = fmt.name
            lines.append(f"{comm:>16}-{e.pid:<5} [{e.cpu:03d}] {e.ts // 10**9}.{e.ts % 10**9 // 1000:06d}: "
                         f"{name}:{' ' * max(1, 21 - len(name))}{text}")
        return "\n".join(lines) + "\n"

    def write_perf_data(self, path: Path) -> Path:
        """The same events as a perf.data of tracepoint samples (what perf record -a would write)."""
        from vpmutrace.formats.known import reference_format_texts, reference_ring_headers
        from vpmutrace.writers.perf_data import PerfDataContent, pack_payload, write_perf_data

        fmts = reference_formats()
        names = sorted({e.name for e in self.events})
        header_page, header_event = reference_ring_headers()
        texts = reference_format_texts()
        pc = PerfDataContent(formats={n: fmts[n] for n in names}, format_texts={n: texts[n] for n in names},
                             header_page=header_page, header_event=header_event, os_release="sim",
                             cpuid="GenuineIntel,6,143,8" if self.vendor == "intel" else "AuthenticAMD,25,17,1",
                             nr_cpus=self.ncpu, comms={p: f"CPU {p - 1000}/KVM" for p, _ in self.vcpus},
                             tgids={p: VM_PID for p, _ in self.vcpus})
        for e in self.events:
            pc.samples.append((e.ts, e.cpu, e.pid, e.name, pack_payload(fmts[e.name], e.fields, e.pid)))
        return write_perf_data(path, pc)

    def host_snapshot(self) -> dict[str, Any]:
        h = self.setup.host
        return {"kernel_release": "sim", "cpu_vendor": "GenuineIntel" if self.vendor == "intel" else "AuthenticAMD",
                "cpu_model": f"simulated {self.isa_name.upper()} host", "cpus_online": self.ncpu,
                "pmu_counters": {"source": "simulator", "gp_counters": h.nr_gp, "fixed_counters": h.nr_fixed},
                "watchdog": {"nmi_watchdog": int(self.setup.nmi_watchdog),
                             "watchdog_thresh": self.setup.watchdog_thresh_s},
                "kvm": {"kvm": {"enable_pmu": "Y"}}, "running_vms": [
                    {"pid": VM_PID, "cmdline": "simulated VM", "vcpus": [{"vcpu": p - 1000, "tid": p}
                                                                      for p, _ in self.vcpus]}]}
