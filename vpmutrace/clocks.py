"""Trace clocks: what each counts, in which unit, and which can share a time line. Declared once.

ftrace's clocks are the table ``trace_clocks[]`` of kernel/trace/trace.c; its ``in_ns`` flag
says whether a clock counts nanoseconds (trace_print_time prints ``secs.usecs`` for those and a
bare integer for the others). x86 adds ``x86-tsc`` (ARCH_TRACE_CLOCKS in
arch/x86/include/asm/trace_clock.h: rdtsc_ordered(), in_ns 0); arm64, powerpc and s390 add
their own counters. trace-cmd names a file recorded with ``--tsc2nsec`` "tsc2nsec" and stores
the perf mmap page's time_mult/time_shift in its TSC2NSEC option. perf records with the perf
clock (local_clock(), ns) unless ``-k/--clockid`` set attr.use_clockid.

A timestamp column named ``ts_ns`` holds ns only when the trace's ``time_unit`` is "ns": a
clock in ticks is converted with a stated frequency (``vpmutrace.timebase``) or left in its
unit, and ``info``, JSON and reports say which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NS, TSC_TICKS, ARCH_TICKS, EVENTS, CLOCK_T, UNKNOWN_TICKS = (
    "ns", "tsc_ticks", "arch_ticks", "events", "clock_t", "unknown_ticks")
UNIT_TEXT = {NS: "ns", TSC_TICKS: "TSC ticks", ARCH_TICKS: "architecture counter ticks",
             EVENTS: "event count (not time)", CLOCK_T: "clock_t (1/USER_HZ s)",
             UNKNOWN_TICKS: "integer clock units (ticks of a cycle counter, or the counter clock)"}
USER_HZ = 100  # clock_t: 1/USER_HZ s; 100 on every architecture that has these clocks


@dataclass(frozen=True)
class Clock:
    name: str
    unit: str  # one of the units above
    base: str  # which time line: clocks of the same base in one boot can be merged
    what: str


CLOCKS: dict[str, Clock] = {c.name: c for c in (
    Clock("local", NS, "sched_clock", "sched_clock(): per-CPU, may drift between CPUs"),
    Clock("global", NS, "sched_clock", "sched_clock() serialized over all CPUs (monotonic across CPUs)"),
    Clock("perf", NS, "sched_clock", "local_clock(), the clock perf uses"),
    Clock("counter", EVENTS, "counter", "an atomic count, +1 per event: an order, not a time"),
    Clock("uptime", CLOCK_T, "jiffies", "jiffies since boot in clock_t (10 ms resolution)"),
    Clock("mono", NS, "monotonic", "CLOCK_MONOTONIC (ktime_get_mono_fast_ns)"),
    Clock("mono_raw", NS, "monotonic_raw", "CLOCK_MONOTONIC_RAW (ktime_get_raw_fast_ns)"),
    Clock("boot", NS, "boottime", "CLOCK_BOOTTIME (ktime_get_boot_fast_ns): monotonic plus suspend"),
    Clock("tai", NS, "tai", "CLOCK_TAI (ktime_get_tai_fast_ns): wall-clock based"),
    Clock("x86-tsc", TSC_TICKS, "tsc", "the TSC (rdtsc_ordered): cycles at the TSC frequency"),
    Clock("tsc2nsec", NS, "tsc", "the TSC, converted to ns with the kernel's mult/shift (trace-cmd --tsc2nsec)"),
    Clock("arm64-tsc", ARCH_TICKS, "arch_counter", "the arm64 architected counter (CNTVCT)"),
    Clock("ppc-tb", ARCH_TICKS, "arch_counter", "the powerpc timebase"),
    Clock("s390-tod", ARCH_TICKS, "arch_counter", "the s390 TOD clock"),
    # perf clocks (attr.clockid, include/uapi/linux/time.h) when perf record -k was given
    Clock("realtime", NS, "realtime", "CLOCK_REALTIME (perf -k realtime)"),
    Clock("monotonic", NS, "monotonic", "CLOCK_MONOTONIC (perf -k monotonic)"),
    Clock("monotonic_raw", NS, "monotonic_raw", "CLOCK_MONOTONIC_RAW (perf -k monotonic_raw)"),
    Clock("boottime", NS, "boottime", "CLOCK_BOOTTIME (perf -k boottime)"),
)}
PERF_CLOCKIDS = {0: "realtime", 1: "monotonic", 4: "monotonic_raw", 7: "boottime", 11: "tai"}


def clock(name: str | None) -> Clock | None:
    return CLOCKS.get(name or "")


def same_time_line(a: str | None, b: str | None) -> bool:
    """Whether timestamps of clocks ``a`` and ``b`` (recorded on one boot) can be merged as they are."""
    ca, cb = clock(a), clock(b)
    if ca is None or cb is None:
        return a == b
    return ca.base == cb.base and ca.unit == cb.unit


def ticks_at(ts: np.ndarray, khz: float) -> np.ndarray:
    """Counter ticks to ns at ``khz`` kHz as ``trace-cmd report --ts2secs HZ`` converts them
    (trace-input.c timestamp_calc(): ``ts *= 1e9 / HZ`` in double, truncated on the way back): exact to
    the ns for times below 2**53 ns (104 days), where a 32-bit mult/shift drifts by ~1e-9 of the time
    (microseconds after an hour)."""
    factor = 1e9 / float(round(khz * 1000))
    return (ts.astype(np.float64) * factor).astype(np.int64)


def ticks_to_ns(ts: np.ndarray, mult: int, shift: int) -> np.ndarray:
    """Counter ticks to ns as the kernel's mul_u64_u32_shr: (ts * mult) >> shift without a 128-bit
    product (the high and low 32 bits of ts are scaled separately)."""
    t = ts.astype(np.uint64)
    lo, hi = t & np.uint64(0xFFFFFFFF), t >> np.uint64(32)
    m = np.uint64(mult)
    out = (lo * m) >> np.uint64(shift)
    if shift <= 32:
        out = out + ((hi * m) << np.uint64(32 - shift))
    else:
        out = out + ((hi * m) >> np.uint64(shift - 32))
    return out.astype(np.int64)
