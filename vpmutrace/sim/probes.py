"""The kvm-pmu probe events a simulated host records (collectors/probes.py creates them on real hosts).

Field layouts are those the kernel gives the definitions `vpmutrace record` writes
(sim/formats.py probe_format_text): with ``fprobe`` (BTF arguments) the vCPU id and counter
index are fields; with ``kprobe`` only the pointers are (register arguments). Where and when each
fires follows the kernel (model/kernel.py FN_*, design §2.1-§2.2, §3.1-§3.3, §6.1):

- mediated: kvm_mediated_pmu_load() before the first entry of an inner run loop and
  kvm_mediated_pmu_put() after the exit that leaves it (every exit not handled in the fastpath);
  each with its return. kvm_handle_guest_mediated_pmi() when a 0xF5 PMI exit is handled;
- emulated: kvm_perf_overflow() in the host NMI of a guest counter overflow (the pmc of the
  sampling counter); kvm_pmu_handle_event() at the next entry after a KVM_REQ_PMU (an overflow or a
  value-changing PMU control write), reprogram_counter() for each counter whose reprogram bit is
  set, and pmc_reprogram_counter() (with its return) for those whose configuration changed or that
  have no perf event; a failed creation leaves the bit set, so the counter is retried at every
  later KVM_REQ_PMU (kvm_pmu_handle_event(): "re-set the regprogram bit ... Don't make a new
  request");
- both: kvm_pmu_deliver_pmi() right before the LVTPC injection (kvm_apic_accept_irq).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vpmutrace.formats.event_format import EventFormat, parse_format
from vpmutrace.model import kernel as K
from vpmutrace.sim.formats import probe_format_text

GROUP = "vpmutrace_4242"  # the probe group of the simulated recorder (pid 4242)
PMC_BASE = 0xFFFF888012340000  # struct kvm_pmc addresses: one block per vCPU, 0x40 per counter
VCPU_BASE = 0xFFFF888056780000  # struct kvm_vcpu addresses
EVENT_BASE = 0xFFFF8880AB000000  # struct perf_event addresses

FIRST_ID = 3000

# (function, return probe) -> fields with BTF args (fprobe) and without (kprobe); as collectors/probes.py fetches
_VCPU_BTF = [("vcpu", "x64"), ("vcpu_id", "s32")]
LAYOUTS: dict[tuple[str, bool], tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    (K.FN_MEDIATED_LOAD, False): (_VCPU_BTF, [("vcpu", "x64")]),
    (K.FN_MEDIATED_LOAD, True): ([], []),
    (K.FN_MEDIATED_PUT, False): (_VCPU_BTF, [("vcpu", "x64")]),
    (K.FN_MEDIATED_PUT, True): ([], []),
    (K.FN_MEDIATED_PMI, False): ([], []),
    (K.FN_REPROGRAM, False): ([("pmc", "x64"), ("pmc_idx", "u8"), ("eventsel", "u64")], [("pmc", "x64")]),
    (K.FN_PMC_REPROGRAM, False): ([("pmc", "x64"), ("pmc_idx", "u8"), ("type", "u32"), ("config", "x64")],
                                  [("pmc", "x64"), ("type", "u32"), ("config", "x64")]),
    (K.FN_PMC_REPROGRAM, True): ([("ret", "s32")], [("ret", "s32")]),
    (K.FN_PERF_OVERFLOW, False): ([("event", "x64"), ("pmc", "x64")], [("event", "x64")]),
    (K.FN_DELIVER_PMI, False): (_VCPU_BTF, [("vcpu", "x64")]),
    (K.FN_HANDLE_EVENT, False): (_VCPU_BTF, [("vcpu", "x64")]),
}
PERF_TYPE_RAW = 4  # include/uapi/linux/perf_event.h


def event_name(func: str, ret: bool) -> str:
    return func + ("__return" if ret else "")


@dataclass
class ProbeTruth:
    windows: list[dict] = field(default_factory=list)  # pid, load, put (None: open at the end)
    overflows: list[dict] = field(default_factory=list)  # pid, ts, pmc_idx (emulated) / None (mediated)
    deliveries: list[dict] = field(default_factory=list)  # pid, ts
    reprograms: list[dict] = field(default_factory=list)  # pid, ts, pmc_idx, created (None: resumed), ret
    create_failures: list[dict] = field(default_factory=list)  # pid, ts (of the return), pmc_idx, ret


@dataclass
class _Pmc:
    config: int | None = None  # current_config
    has_event: bool = False
    pending: bool = False  # reprogram bit left set by a failed creation


class ProbeEmitter:
    """Probe events for a Sim (``emit(ts, cpu, pid, name, **fields)``), in the ``kind``'s layout."""

    def __init__(self, kind: str, emit: Any, mediated: bool) -> None:
        if kind not in ("fprobe", "kprobe"):
            raise ValueError(f"probe kind {kind!r}: fprobe or kprobe")
        self.kind, self._emit, self.mediated = kind, emit, mediated
        self.truth = ProbeTruth()
        self.loaded: dict[int, int] = {}  # pid -> load time of the open window
        self.pmcs: dict[tuple[int, int], _Pmc] = {}
        self.refused: set[int] = set()  # configs the host perf driver refuses to create

    # ---- formats ---------------------------------------------------------------------------------
    def formats(self) -> dict[str, tuple[EventFormat, bytes]]:
        """{group:event: (format, format text)} of every probe, with ids from FIRST_ID."""
        out = {}
        for i, ((func, ret), (btf, plain)) in enumerate(LAYOUTS.items()):
            if self.mediated != (func in (K.FN_MEDIATED_LOAD, K.FN_MEDIATED_PUT, K.FN_MEDIATED_PMI)) and \
                    func not in (K.FN_DELIVER_PMI,):
                continue
            name = event_name(func, ret)
            text = probe_format_text(name, FIRST_ID + i, ret, btf if self.kind == "fprobe" else plain)
            out[f"{GROUP}:{name}"] = (parse_format(text, GROUP), text.encode())
        return out

    def _fire(self, ts: int, cpu: int, pid: int, func: str, is_ret: bool = False, **f: Any) -> None:
        ret = is_ret
        btf, plain = LAYOUTS[(func, ret)]
        keep = {n for n, _ in (btf if self.kind == "fprobe" else plain)}
        vals = {k: v for k, v in f.items() if k in keep}
        # the probe head: the function's address at entry; the function and return address at return
        addr = 0xFFFFFFFF81200000 + (sum(map(ord, func)) << 6)
        head = {"__probe_func": addr, "__probe_ret_ip": 0xFFFFFFFF81000000 + 0x4321} if ret else \
            {"__probe_ip": addr}
        self._emit(ts, cpu, pid, f"{GROUP}:{event_name(func, ret)}", **head, **vals)

    @staticmethod
    def vcpu_ptr(vidx: int) -> int:
        return VCPU_BASE + vidx * 0x4000

    @staticmethod
    def pmc_ptr(vidx: int, pmc_idx: int) -> int:
        return PMC_BASE + vidx * 0x1000 + pmc_idx * 0x40

    # ---- mediated --------------------------------------------------------------------------------
    def load(self, t0: int, t1: int, cpu: int, pid: int, vidx: int) -> None:
        self._fire(t0, cpu, pid, K.FN_MEDIATED_LOAD, vcpu=self.vcpu_ptr(vidx), vcpu_id=vidx)
        self._fire(t1, cpu, pid, K.FN_MEDIATED_LOAD, True)
        self.loaded[pid] = t0

    def put(self, t0: int, t1: int, cpu: int, pid: int, vidx: int) -> None:
        self._fire(t0, cpu, pid, K.FN_MEDIATED_PUT, vcpu=self.vcpu_ptr(vidx), vcpu_id=vidx)
        self._fire(t1, cpu, pid, K.FN_MEDIATED_PUT, True)
        self.truth.windows.append({"pid": pid, "load": self.loaded.pop(pid), "put": t0})

    def mediated_pmi(self, ts: int, cpu: int, pid: int) -> None:
        self._fire(ts, cpu, pid, K.FN_MEDIATED_PMI)
        self.truth.overflows.append({"pid": pid, "ts": ts, "pmc_idx": None})

    def close(self) -> None:
        for pid, t in self.loaded.items():
            self.truth.windows.append({"pid": pid, "load": t, "put": None})
        self.loaded = {}

    # ---- both ------------------------------------------------------------------------------------
    def deliver(self, ts: int, cpu: int, pid: int, vidx: int) -> None:
        self._fire(ts, cpu, pid, K.FN_DELIVER_PMI, vcpu=self.vcpu_ptr(vidx), vcpu_id=vidx)
        self.truth.deliveries.append({"pid": pid, "ts": ts})

    # ---- emulated --------------------------------------------------------------------------------
    def overflow(self, ts: int, cpu: int, pid: int, vidx: int, pmc_idx: int) -> None:
        self._fire(ts, cpu, pid, K.FN_PERF_OVERFLOW, event=EVENT_BASE + vidx * 0x1000 + pmc_idx * 0x80,
                   pmc=self.pmc_ptr(vidx, pmc_idx))
        self.truth.overflows.append({"pid": pid, "ts": ts, "pmc_idx": pmc_idx})

    def handle_event(self, t: int, t_end: int, cpu: int, pid: int, vidx: int,
                     counters: dict[int, tuple[int, bool]]) -> None:
        """kvm_pmu_handle_event() in [t, t_end): reprogram each counter of ``counters`` (pmc idx ->
        (config, enabled)) and every counter whose earlier creation failed."""
        pending = {i for (p, i), c in self.pmcs.items() if p == pid and c.pending}
        todo = sorted(set(counters) | pending)
        self._fire(t, cpu, pid, K.FN_HANDLE_EVENT, vcpu=self.vcpu_ptr(vidx), vcpu_id=vidx)
        step = max(1, (t_end - t) // (3 * len(todo) + 1)) if todo else 1
        ts = t
        for idx in todo:
            pmc = self.pmcs.setdefault((pid, idx), _Pmc())
            config, enabled = counters.get(idx, (pmc.config or 0, True))
            ts += step
            self._fire(ts, cpu, pid, K.FN_REPROGRAM, pmc=self.pmc_ptr(vidx, idx), pmc_idx=idx, eventsel=config)
            rec = {"pid": pid, "ts": ts, "pmc_idx": idx, "created": None, "ret": None}
            self.truth.reprograms.append(rec)
            if not enabled:
                pmc.pending = False
                continue
            if pmc.config == config and pmc.has_event:
                pmc.pending = False  # pmc_resume_counter(): the perf event is reused
                continue
            pmc.config = config
            ts += step
            self._fire(ts, cpu, pid, K.FN_PMC_REPROGRAM, pmc=self.pmc_ptr(vidx, idx), pmc_idx=idx,
                       type=PERF_TYPE_RAW, config=config & K.RAW_EVENT_MASK)
            ret = -22 if config in self.refused else 0  # -EINVAL: the host perf driver refused the event
            ts += step
            self._fire(ts, cpu, pid, K.FN_PMC_REPROGRAM, True, ret=ret)
            pmc.has_event, pmc.pending = ret == 0, ret != 0
            rec["created"], rec["ret"] = ret == 0, ret
            if ret:
                self.truth.create_failures.append({"pid": pid, "ts": ts, "pmc_idx": idx, "ret": ret})
