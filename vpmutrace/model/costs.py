"""Published cost figures the what-if and the simulator use, each with its source and its range.

No published figure gives the mediated PMU's context-switch cost directly. The closest is the
commit that elides PMC WRMSRs on load (kvm b0b6a8d3be16, v6 34/44, Message-ID
<20251206001720.468579-35-seanjc@google.com>): a CPUID VM-exit, which leaves the fastpath and so
pays kvm_mediated_pmu_put()+load(), took 4k cycles before and 3k after on Intel Emerald Rapids,
6.2k and 5.3k on AMD Turin. A CPUID exit without a mediated PMU takes about 1.0k cycles
(mitigations off) to 1.6k+ (mitigations on) on a recent Intel host (Sean Christopherson, kvm list,
2024-12-09, quoted in <Z1nI22dBe01m3_k6@google.com>; CPU not named) and 1.05k-1.11k cycles
(Bernhard Kauer, <Z1q4vxmEmZbkOiqC@mias.mediconcil.de>). Hence put+load on Intel is about
3.0k - 1.6k = 1.4k to 4.0k - 1.0k = 3.0k cycles (with and without the elision). For AMD there is
no baseline on Turin: the range runs from the Intel lower bound to the whole mediated CPUID exit
(5.3k cycles), and says so. Cycles become ns at the host's frequency from the snapshot, else
over 2.0-3.5 GHz, which widens the range.
"""

from __future__ import annotations

SWITCH_CYCLES = {"intel": (1400.0, 3000.0), "amd": (1400.0, 5300.0)}
SWITCH_SOURCE = {
    "intel": "CPUID exit with mediated PMU 3k-4k cycles on Emerald Rapids (kvm b0b6a8d3be16) minus a 1.0k-1.6k "
             "cycle CPUID exit without it (kvm list, Dec 2024)",
    "amd": "no AMD baseline published: from the Intel lower bound to the whole mediated CPUID exit on Turin "
           "(5.3k cycles, kvm b0b6a8d3be16)",
}
GHZ_RANGE = (2.0, 3.5)  # when the host frequency is unknown

# Published perf kvm stat averages per exit reason on Intel hosts (us), for the simulator and as a
# sanity check of traces: (low, high) of the averages in the sources below.
#   A1 0xba1a blog 2020 (sysbench), A2 perf blog 2021, A4 openEuler 4.19, A6 Wanpeng Li (Skylake, 2019),
#   A7 OpenCloudOS perf-prof docs 2022, A8 SystemTap kvm_service_time example.
PUBLISHED_EXIT_AVG_US = {
    "MSR_WRITE": (0.58, 3.0), "EXTERNAL_INTERRUPT": (0.71, 3.1), "PREEMPTION_TIMER": (0.62, 2.13),
    "CPUID": (0.65, 1.11), "MSR_READ": (1.56, 1.87), "IO_INSTRUCTION": (3.0, 13.6), "EPT_MISCONFIG": (10.9, 21.8),
    "EXCEPTION_NMI": (0.47, 2.0), "HLT": (341.97, 602567.95), "PAUSE_INSTRUCTION": (0.66, 8.27),
}
PUBLISHED_EXIT_SOURCES = (
    "0xba1a/blog_source 2020-09-28 perf kvm stat (sysbench)", "perf kvm stat blog 2021-01-24",
    "PengJi/compute-go doc/linux/kvm.md (openEuler 4.19)", "Wanpeng Li, kvm list 2019-11-09 and 2019-06-11 (Skylake)",
    "OpenCloudOS/perf-prof docs/kvm-exit.md (2022)", "SystemTap examples kvm_service_time",
)


def ghz_range(host: dict | None) -> tuple[float, float, str]:
    """Host frequency in GHz (low, high) and where it comes from: the TSC frequency of the snapshot
    (nominal; the kernel's tsc_khz, which hw_nmi_get_sample_period() also uses), else 2.0-3.5 GHz.
    /proc/cpuinfo's "cpu MHz" is CPU 0's current clock (low when idle) and is not used."""
    khz = (host or {}).get("tsc_khz")
    if isinstance(khz, int | float) and khz > 500_000:
        return khz / 1e6, khz / 1e6, f"host TSC {khz / 1e6:.3f} GHz (snapshot)"
    return GHZ_RANGE[0], GHZ_RANGE[1], f"host frequency unknown: {GHZ_RANGE[0]}-{GHZ_RANGE[1]} GHz"


def switch_cost_range(vendor: str | None, override: tuple[float, float] | None = None,
                      host: dict | None = None) -> tuple[float, float, str]:
    """(low ns, high ns, source) of one kvm_mediated_pmu_put()+load() pair."""
    if override is not None:
        return float(override[0]), float(override[1]), "given with --switch-cost-ns"
    v = vendor if vendor in SWITCH_CYCLES else None
    lo_c, hi_c = SWITCH_CYCLES[v] if v else (min(c[0] for c in SWITCH_CYCLES.values()),
                                             max(c[1] for c in SWITCH_CYCLES.values()))
    g_lo, g_hi, g_src = ghz_range(host)
    src = (SWITCH_SOURCE[v] if v else "vendor unknown: the union of the Intel and AMD ranges") + f"; {g_src}"
    return round(lo_c / g_hi, 1), round(hi_c / g_lo, 1), src
