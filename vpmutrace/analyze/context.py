"""What the analyses must know about the host and guest before they apply a rule: the vPMU design,
the guest and host PMU shapes, the CPU vendor, the kernel (for the NMI event order) and the NMI
watchdog. Each is inferred once, from the strongest source available, and carries that source,
its certainty and its evidence (design §3.5):

1. options given by the user (``--model``, ``--guest-gp``/``--guest-fixed``) override;
2. the host snapshot (``host.json`` of ``vpmutrace record``): kvm module parameters
   (``kvm.enable_pmu``, ``kvm_{intel,amd}.enable_mediated_pmu``), the host's CPUID, the VMM
   command lines;
3. the trace: the guest's own CPUID answers (``kvm_cpuid`` leaves 0xA, 0x80000001, 0x80000022),
   its PERF_CAPABILITIES reads, kvm_exit's isa, and design signatures (0xF5 interrupt exits ->
   mediated; NMI exits whose requests carry KVM_REQ_PMI, or perf-claimed NMI exits followed by
   an LVTPC injection -> emulated);
4. otherwise the value is unknown, and the rules that need it say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from vpmutrace.analyze import predicates as P
from vpmutrace.analyze.base import CANDIDATE, FACT
from vpmutrace.model import kernel as K
from vpmutrace.model import msrs as M
from vpmutrace.model.design import EMULATED, MEDIATED, NO_VPMU, UNKNOWN, HostSetup, PmuShape
from vpmutrace.tracedata import TraceData

FW_WRITE_BIT = 13  # IA32_PERF_CAPABILITIES.FW_WRITE (SDM vol. 4, 0x345)
PERFCTR_CORE_BIT = 23  # CPUID 0x80000001 ECX: PerfCtrExtCore (APM vol. 3, E.4.2)


@dataclass(frozen=True)
class Inference:
    value: Any
    source: str  # option, snapshot, trace, unknown
    certainty: str  # fact or candidate
    evidence: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        v = self.value.to_json() if hasattr(self.value, "to_json") else self.value
        return {"value": v, "source": self.source, "certainty": self.certainty, "evidence": list(self.evidence)}


UNKNOWN_INF = Inference(None, "unknown", CANDIDATE)


@dataclass
class Options:
    skid_window_ns: int = 10_000  # perf samples this close to a VM transition are suspect
    nmi_pair_ns: int = 20_000  # an NMI and its NMI exit lie within this on one CPU (§3.4: a few us)
    watchdog_tolerance: float = 0.5  # a watchdog gap is long beyond period * (1 + tolerance)
    storm_changes_per_ms: int = 50  # value-changing PMU control writes per vCPU per ms
    cadence_periods: int = 10  # an armed sampling counter silent for this many periods is suspect
    switch_cost_ns: tuple[float, float] | None = None  # override of the per-vendor range (what-if)
    calibration: dict[str, Any] | None = None  # from an emulated/mediated pair of traces
    exits_by: str = "reason"  # the exits table's grouping: reason, vcpu or vm (`exits --by`)
    vcpu: int | None = None  # only this vCPU id (`exits --vcpu`, as perf kvm stat --vcpu)
    vm: int | None = None  # only this VM: its VMM process id (`exits --vm`)
    row_tables: bool = True  # row-level results (Result.rows: `-o`, report); False: summaries only


@dataclass
class Config:
    design: Inference = UNKNOWN_INF
    vendor: Inference = UNKNOWN_INF
    host_pmu: Inference = UNKNOWN_INF
    guest_pmu: Inference = UNKNOWN_INF
    guest_pmu_by_thread: dict[tuple[str, int], PmuShape] = field(default_factory=dict)
    kernel: tuple[int, int] | None = None
    nmi_order: K.NmiOrder = field(default_factory=lambda: K.nmi_order(None, None))
    watchdog: Inference = UNKNOWN_INF  # {"enabled": bool|None, "kind": perf|buddy|None, "thresh_s": float}
    options: Options = field(default_factory=Options)

    @property
    def model(self) -> str:
        return self.design.value or UNKNOWN

    @property
    def setup(self) -> HostSetup:
        host = (self.host_pmu.value.get("shape") if isinstance(self.host_pmu.value, dict) else None)
        return HostSetup(host=host, guest=self.guest_pmu.value)

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {"design": self.design.to_json(), "vendor": self.vendor.to_json(),
                "host_pmu": {**self.host_pmu.to_json(), "value": _jsonable(self.host_pmu.value)},
                "guest_pmu": self.guest_pmu.to_json(), "kernel": list(self.kernel) if self.kernel else None,
                "nmi_order": {"order": self.nmi_order.order, "why": self.nmi_order.why},
                "watchdog": self.watchdog.to_json(), "skid_window_ns": o.skid_window_ns,
                "nmi_pair_ns": o.nmi_pair_ns, "watchdog_tolerance": o.watchdog_tolerance,
                "storm_changes_per_ms": o.storm_changes_per_ms, "cadence_periods": o.cadence_periods,
                "switch_cost_ns": list(o.switch_cost_ns) if o.switch_cost_ns else None,
                "calibration": o.calibration}

    @classmethod
    def for_trace(cls, td: TraceData, model: str | None = None, guest_gp: int | None = None,
                  guest_fixed: int | None = None, **options: Any) -> Config:
        host = td.meta.get("host") or {}
        cfg = cls(options=Options(**options))
        cfg.vendor = infer_vendor(td, host)
        cfg.kernel = K.release_version(td.meta.get("kernel_release") or host.get("kernel_release"))
        isa = {"intel": K.ISA_VMX, "amd": K.ISA_SVM}.get(cfg.vendor.value or "")
        cfg.nmi_order = K.nmi_order(isa, cfg.kernel)
        # the trace's own order wins over the release (its pairing window is in ns)
        if td.has("kvm_exit") and td.has("nmi_handler") and td.meta.get("time_unit", "ns") == "ns":
            cfg.nmi_order = P.nmi_order_in_trace(td, P.exits_where(td, P.any_nmi_exit()), cfg.nmi_order,
                                                 cfg.options.nmi_pair_ns)
        cfg.host_pmu = infer_host_pmu(host, cfg.vendor.value)
        cfg.guest_pmu, cfg.guest_pmu_by_thread = infer_guest_pmu(td, host, cfg.vendor.value, cfg.host_pmu,
                                                                 guest_gp, guest_fixed, cfg.vendor.certainty)
        cfg.watchdog = infer_watchdog(host)
        cfg.design = infer_design(td, host, model, cfg)
        return cfg


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v.to_json() if hasattr(v, "to_json") else v


# ---- vendor ------------------------------------------------------------------------------------
def infer_vendor(td: TraceData, host: dict) -> Inference:
    if td.has("kvm_exit"):
        isas = P.exit_isas(td)
        if len(isas) == 1:
            isa = isas.pop()
            return Inference("intel" if isa == K.ISA_VMX else "amd", "trace", FACT,
                             (f"kvm_exit isa {isa} ({'VMX' if isa == K.ISA_VMX else 'SVM'})",))
    if td.has("kvm_cpuid"):
        leaf0 = td.scan("kvm_cpuid").filter(pl.col("function") == 0).collect()
        if leaf0.height:
            r = leaf0.row(0, named=True)
            name = b"".join(int(r[k] or 0).to_bytes(4, "little") for k in ("rbx", "rdx", "rcx")).decode(
                "latin-1")
            v = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}.get(name)
            if v:
                return Inference(v, "trace", FACT, (f"guest CPUID leaf 0 vendor {name!r}",))
    cv = host.get("cpu_vendor")
    if cv in ("GenuineIntel", "AuthenticAMD", "HygonGenuine"):
        return Inference("intel" if cv == "GenuineIntel" else "amd", "snapshot", FACT, (f"host cpu_vendor {cv}",))
    for i in td.meta.get("inputs", []):
        cpuid = (i.get("features") or {}).get("cpuid") or ""
        for name, v in (("GenuineIntel", "intel"), ("AuthenticAMD", "amd"), ("HygonGenuine", "amd")):
            if cpuid.startswith(name):
                return Inference(v, "trace", FACT, (f"perf.data HEADER_CPUID {cpuid}",))
    if td.has("kvm_msr"):
        msrs = td.scan("kvm_msr", ["msr"]).unique().collect()["msr"].to_list()
        vendors = {m.vendor for m in map(M.lookup, msrs) if m is not None}
        if len(vendors) == 1:
            v = vendors.pop()
            return Inference(v, "trace", CANDIDATE, (f"guest accessed only {v} PMU MSRs",))
    return UNKNOWN_INF


# ---- host PMU ----------------------------------------------------------------------------------
def infer_host_pmu(host: dict, vendor: str | None) -> Inference:
    """Host PMU shape and capabilities from the snapshot's CPUID and PERF_CAPABILITIES."""
    pc = host.get("pmu_counters") or {}
    if not pc or "gp_counters" not in pc:
        return Inference(None, "unknown", CANDIDATE, (f"host snapshot: {pc.get('source', 'none')}",))
    v = vendor or ("amd" if host.get("cpu_vendor") == "AuthenticAMD" else "intel")
    caps = pc.get("perf_capabilities")
    fw = bool(caps >> FW_WRITE_BIT & 1) if isinstance(caps, int) else None
    if v == "amd":
        version = 2 if pc.get("perfmon_v2") else 1
        shape = PmuShape("amd", version, int(pc["gp_counters"]), 0, 48, 0, False, bool(pc.get("perfctr_core", True)))
    else:
        version = int(pc.get("version") or 0)
        shape = PmuShape("intel", version, int(pc["gp_counters"]), int(pc.get("fixed_counters") or 0),
                         int(pc.get("gp_width") or 48), int(pc.get("fixed_width") or 48), bool(fw), False)
    return Inference({"shape": shape, "full_width_writes": fw, "perf_capabilities": caps}, "snapshot", FACT,
                     (f"host {pc.get('source')}: {pc}",))


# ---- guest PMU ---------------------------------------------------------------------------------
def _shape_from_cpuid(rows: dict[int, dict], vendor: str | None, fw: bool | None) -> tuple[PmuShape, list[str]] | None:
    """Guest PMU shape from the CPUID answers KVM gave it (kvm_cpuid rows by leaf)."""
    if vendor != "amd" and 0xA in rows:
        r = rows[0xA]
        eax, edx = int(r["rax"] or 0), int(r["rdx"] or 0)
        version = eax & 0xFF
        nr_gp, width = (eax >> 8) & 0xFF, (eax >> 16) & 0xFF
        nr_fixed, fwidth = (edx & 0x1F, (edx >> 5) & 0xFF) if version > 1 else (0, 0)
        ev = [f"CPUID 0xA eax={eax:#x} edx={edx:#x}: version {version}, {nr_gp} GP x {width} bits, "
              f"{nr_fixed} fixed x {fwidth} bits"]
        if fw is not None:
            ev.append(f"PERF_CAPABILITIES read: FW_WRITE={int(fw)}")
        return PmuShape("intel", version, nr_gp if version else 0, nr_fixed, width, fwidth,
                        bool(fw) if fw is not None else True, False), ev
    if vendor == "amd" and (0x80000001 in rows or 0x80000022 in rows):
        core = bool(int(rows.get(0x80000001, {}).get("rcx") or 0) >> PERFCTR_CORE_BIT & 1)
        l22 = rows.get(0x80000022)
        v2 = bool(int(l22["rax"] or 0) & 1) if l22 else False
        nr_gp = (int(l22["rbx"] or 0) & 0xF) if v2 and l22 else (6 if core else 4)
        ev = [f"CPUID 0x80000001 PerfCtrExtCore={int(core)}"
              + (f", 0x80000022 eax={int(l22['rax'] or 0):#x} ebx={int(l22['rbx'] or 0):#x}" if l22 else "")]
        return PmuShape("amd", 2 if v2 else 1, nr_gp, 0, 48, 0, False, core), ev
    return None


def infer_guest_pmu(td: TraceData, host: dict, vendor: str | None, host_pmu: Inference, guest_gp: int | None,
                    guest_fixed: int | None, vendor_certainty: str = FACT
                    ) -> tuple[Inference, dict[tuple[str, int], PmuShape]]:
    """The guest PMU shape: options, else the guest's CPUID answers (per vCPU thread), else the VMM
    command line in the snapshot, else unknown."""
    if guest_gp is not None or guest_fixed is not None:
        v = vendor or "intel"
        nr_fixed = guest_fixed if guest_fixed is not None else (0 if v == "amd" else 3)
        nr_gp = guest_gp if guest_gp is not None else (6 if v == "amd" else 8)
        version = 0 if nr_gp == 0 and nr_fixed == 0 else (2 if v == "amd" or nr_fixed else 1)
        shape = PmuShape(v, version, nr_gp, nr_fixed)
        return Inference(shape, "option", FACT, (f"--guest-gp {guest_gp} --guest-fixed {guest_fixed}",)), {}
    by_thread: dict[tuple[str, int], PmuShape] = {}
    evidence: dict[PmuShape, list[str]] = {}
    if td.has("kvm_cpuid"):
        # rows KVM answered from another leaf ("entry not found, used max basic") are not these leaves
        cp = td.scan("kvm_cpuid").filter(pl.col("function").is_in([0xA, 0x80000001, 0x80000022])
                                         & pl.col("found").fill_null(True)
                                         & ~pl.col("used_max_basic").fill_null(False)).collect()
        fw = _fw_writes(td)
        for (src, pid), g in cp.group_by(pl.col("source").cast(pl.String), "pid"):
            rows = {r["function"]: r for r in g.sort("ts_ns").iter_rows(named=True)}  # the last answer per leaf
            got = _shape_from_cpuid(rows, vendor, fw.get((src, pid), fw.get(("*", 0))))
            if got is not None:
                by_thread[(src, pid)] = got[0]
                evidence.setdefault(got[0], got[1])
    shapes = set(by_thread.values())
    if len(shapes) == 1:
        shape = shapes.pop()
        ev = [*evidence[shape], f"from the CPUID answers of {len(by_thread)} vCPU thread(s)"]
        if shape.version == 0:
            ev.append("PMU version 0: the guest has no PMU (kvm_vcpu_has_mediated_pmu() needs pmu->version)")
        # the leaves read depend on the vendor: as sure as the vendor is
        return Inference(shape, "trace", FACT if vendor_certainty == FACT else CANDIDATE, tuple(ev)), by_thread
    if len(shapes) > 1:
        return Inference(None, "trace", FACT, tuple(f"{k[1]}: {v}" for k, v in by_thread.items())
                         + ("vCPU threads differ: verdicts use each thread's own shape",)), by_thread
    snap = _shape_from_cmdline(host, host_pmu, vendor)
    if snap is not None:
        return snap, {}
    why = ["no guest CPUID leaf 0xA/0x80000001/0x80000022 in the trace (record kvm:kvm_cpuid; guests ask at boot), "
           "no VMM command line in a host snapshot; give --guest-gp/--guest-fixed"]
    if vendor == "amd" and td.has("kvm_cpuid") and \
            not td.scan("kvm_cpuid").filter(pl.col("function") == 0xA).collect().is_empty():
        why.insert(0, "the guest asked CPUID leaf 0xA, Intel's: on an AMD host it says nothing of the guest's PMU")
    return Inference(None, "unknown", CANDIDATE, tuple(why)), {}


def _fw_writes(td: TraceData) -> dict[tuple[str, int], bool]:
    """Guest reads of IA32_PERF_CAPABILITIES (0x345): FW_WRITE bit per vCPU thread."""
    if not td.has("kvm_msr"):
        return {}
    r = td.scan("kvm_msr").filter(~pl.col("write") & (pl.col("msr") == 0x345) & ~pl.col("gp").fill_null(False)) \
        .collect()
    return {(str(s), p): bool(int(v) >> FW_WRITE_BIT & 1)
            for s, p, v in r.select(pl.col("source").cast(pl.String), "pid", "value").iter_rows()}


def _shape_from_cmdline(host: dict, host_pmu: Inference, vendor: str | None) -> Inference | None:
    """QEMU's -cpu option: pmu=off (or -pmu) gives the guest no PMU; -cpu host/max with the PMU on
    gives it the host's counters (QEMU passes KVM_GET_SUPPORTED_CPUID leaf 0xA through)."""
    for vm in host.get("running_vms") or []:
        cmd = vm.get("cmdline") or ""
        m = re.search(r"-cpu\s+(\S+)", cmd)
        if not m:
            continue
        opts = m.group(1).split(",")
        if "pmu=off" in opts or "-pmu" in opts or "pmu=false" in opts:
            return Inference(PmuShape(vendor or "intel", 0, 0, 0), "snapshot", FACT,
                             (f"VMM command line of pid {vm.get('pid')}: -cpu {m.group(1)}",))
        hs = host_pmu.value.get("shape") if isinstance(host_pmu.value, dict) else None
        if opts[0] in ("host", "max") and hs is not None and ("pmu=on" in opts or "+pmu" in opts):
            # KVM exposes at most its own maxima (KVM_MAX_NR_INTEL_GP_COUNTERS 8, fixed 3, AMD 6)
            g = PmuShape(hs.vendor, hs.version, min(hs.nr_gp, 8 if hs.vendor == "intel" else 6),
                         min(hs.nr_fixed, 3), hs.gp_width, hs.fixed_width, hs.full_width_writes, hs.perfctr_core)
            return Inference(g, "snapshot", CANDIDATE,
                             (f"VMM command line of pid {vm.get('pid')}: -cpu {m.group(1)}: the host's counters "
                              "within KVM's maxima (a guess: the VMM may trim CPUID leaf 0xA)",))
    return None


# ---- NMI watchdog ------------------------------------------------------------------------------
def infer_watchdog(host: dict) -> Inference:
    wd = host.get("watchdog") or {}
    if not wd:
        return Inference({"enabled": None, "kind": None, "thresh_s": 10.0}, "unknown", CANDIDATE,
                         ("no host snapshot: default watchdog_thresh 10 s",))
    enabled = wd.get("nmi_watchdog")
    kind = wd.get("kind")
    ev = [f"/proc/sys/kernel/nmi_watchdog={enabled}", f"watchdog_thresh={wd.get('watchdog_thresh')}"]
    if wd.get("kind_evidence"):
        ev.append(str(wd["kind_evidence"]))
    return Inference({"enabled": None if enabled is None else bool(enabled), "kind": kind,
                      "thresh_s": float(wd.get("watchdog_thresh") or 10)}, "snapshot", FACT, tuple(ev))


# ---- design ------------------------------------------------------------------------------------
def _snapshot_design(host: dict) -> Inference | None:
    kvm = host.get("kvm") or {}
    if not kvm:
        return None
    enable_pmu = (kvm.get("kvm") or {}).get("enable_pmu")
    if enable_pmu == "N":
        return Inference(NO_VPMU, "snapshot", FACT, ("kvm.enable_pmu=N: guests get no PMU",))
    for mod in ("kvm_intel", "kvm_amd"):
        params = kvm.get(mod)
        if params is None:
            continue
        med = params.get("enable_mediated_pmu")
        if med == "Y":
            return Inference(MEDIATED, "snapshot", FACT, (f"{mod}.enable_mediated_pmu=Y",))
        if med == "N":
            return Inference(EMULATED, "snapshot", FACT, (f"{mod}.enable_mediated_pmu=N, kvm.enable_pmu="
                                                          f"{enable_pmu}",))
        return Inference(EMULATED, "snapshot", FACT, (f"{mod} has no enable_mediated_pmu parameter (kernel "
                                                      "before 7.0): perf-based vPMU",))
    return None


def signatures(td: TraceData, cfg: Config) -> dict[str, list[str]]:
    """Design signatures in the trace (design §3.5): {'mediated': [...], 'emulated': [...]}."""
    out: dict[str, list[str]] = {MEDIATED: [], EMULATED: []}
    if not td.has("kvm_exit"):
        return out
    ex = P.exits_where(td, P.any_nmi_exit() | P.mediated_pmi_exit())  # the exits read below
    f5 = ex.filter(P.mediated_pmi_exit())
    if f5.height:
        out[MEDIATED].append(f"{f5.height} external-interrupt exits on vector 0xf5 (mediated PMI vector)")
    nx = ex.filter(P.nmi_exit())
    if nx.height and nx["requests"].null_count() < nx.height:
        req = nx.filter(P.requests_pmi().fill_null(False))
        if req.height:
            out[EMULATED].append(f"{req.height} NMI exits with KVM_REQ_PMI/KVM_REQ_PMU pending "
                                 "(kvm_perf_overflow() in the NMI)")
    if nx.height and td.has("nmi_handler") and td.has("kvm_apic_accept_irq"):
        pairs = P.pair_nmi_exits(td, ex, cfg.nmi_order.order, cfg.options.nmi_pair_ns) \
            .filter(pl.col("handled") >= 1)
        inj = P.pmi_injections(td)
        if pairs.height and inj.height:
            j = P.next_event_before_entry(pairs, inj, P.entries(td))
            n = j.filter(pl.col("ev_ts").is_not_null()).height
            if n:
                out[EMULATED].append(f"{n} NMI exits claimed by perf_event_nmi_handler and followed by an LVTPC "
                                     "injection before the next entry")
    return out


def infer_design(td: TraceData, host: dict, model: str | None, cfg: Config) -> Inference:
    if model:
        return Inference(model, "option", FACT, (f"--model {model}",))
    snap = _snapshot_design(host)
    if snap is not None:
        return snap
    g = cfg.guest_pmu.value
    if isinstance(g, PmuShape) and g.version == 0:
        return Inference(NO_VPMU, "trace", cfg.guest_pmu.certainty,
                         ("the guest's PMU has version 0 (CPUID): it has no vPMU",))
    sig = signatures(td, cfg)
    if sig[MEDIATED] and sig[EMULATED]:
        return Inference(UNKNOWN, "trace", CANDIDATE, ("conflicting signatures: " + "; ".join(
            sig[MEDIATED] + sig[EMULATED]),))
    for d in (MEDIATED, EMULATED):
        if sig[d]:
            return Inference(d, "trace", CANDIDATE, tuple(sig[d]))
    return Inference(UNKNOWN, "unknown", CANDIDATE, ("no host snapshot and no design signature in the trace "
                                                     "(0xF5 interrupt exits, PMI-carrying NMI exits); give --model",))
