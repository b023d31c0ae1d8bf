"""Each input's time base: the unit of its timestamps, and how they were turned into ns.

A reader records the clock of its input and the unit its timestamps are in
(``clocks.py``). Right after the input is read, :func:`settle` decides:

- a clock that counts ns (local, global, perf, mono, boot, tai, tsc2nsec, perf -k clocks) is
  kept as it is;
- ``uptime`` counts clock_t (1/USER_HZ s): multiplied by 10 ms (exact);
- a clock in ticks (x86-tsc without a TSC2NSEC option, integer timestamps of a text trace,
  another architecture's counter) is converted with the first frequency available: the
  ``--tsc-khz`` option, the host snapshot's ``tsc_khz`` (what ``vpmutrace record`` stores:
  the kernel's tsc_khz, else CPUID leaf 0x15/0x16), or an estimate from the trace itself
  (:func:`estimate`), stated as an estimate with its spread; without any, the timestamps stay
  in ticks and ``time_unit`` says so;
- the ``counter`` clock is an order, not a time: it is left as it is.

Estimates (events that carry a nanosecond time next to their trace timestamp):

1. ``timer:hrtimer_expire_entry`` carries ``now``, the hrtimer base's time in ns when
   __run_hrtimer() runs the timer (kernel/time/hrtimer.c). Between two expiries of the same
   timer function ``Δticks / Δnow`` is the counter's ticks per ns; pairs at least 1 ms apart
   keep the jitter of the interrupt path (µs) below 0.1 %; the median over all pairs is the
   estimate (a timer on another base, or a clock step, is an outlier the median ignores).
2. ``kvm:kvm_vcpu_wakeup`` carries ``ns``, the time kvm_vcpu_halt() spent halted (ktime,
   virt/kvm/kvm_main.c), and is emitted after the halt ends; the halt started after the vCPU
   thread's preceding HLT ``kvm:kvm_exit``. So ``(t_wakeup - t_exit) / ns`` bounds the ticks
   per ns from above (the exit handling before the halt adds a few µs); slept halts
   (waited = 1) of at least 1 ms keep that below 1 %; as every pair is an upper bound, the
   estimate is their 5th percentile and the spread the distance of their median above it. (On
   a public 6.5 VMX host trace: 2918.78 MHz against 2918.40 MHz from the same host's TSC2NSEC
   mult/shift in another recording, +0.013 %; the median would give +0.055 %.)

For the hrtimer estimate the spread is half the 10th..90th percentile range of the per-pair
ratios, relative to the median. Every decision is recorded in the input's ``time`` entry of the trace meta and, when
a conversion or its absence matters, counted in the stats (category ``time_base``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vpmutrace import clocks as C
from vpmutrace.errors import InputError
from vpmutrace.tracedata import TraceBuilder

MIN_PAIRS = 5
RATE_TOLERANCE = 0.02  # an ns clock whose rate against the kernel's ns differs more is mislabelled
LONG_NS, SHORT_NS = 1_000_000, 100_000  # pairs at least this far apart (ns); the shorter one as fallback
HLT_REASONS = ("hlt",)  # VMX "HLT", SVM "hlt" (lower-cased)
# the events and columns the estimates read (readers that keep only part of a trace keep these)
EVIDENCE = {"timer:hrtimer_expire_entry": ("ts_ns", "now", "function"),
            "kvm:kvm_vcpu_wakeup": ("ts_ns", "pid", "ns", "waited"),
            "kvm:kvm_exit": ("ts_ns", "pid", "reason")}


@dataclass
class TimeBase:
    clock: str | None  # as recorded (None when the file does not say)
    recorded_unit: str  # unit of the file's timestamps
    unit: str  # unit of ts_ns after loading
    source: str  # how ts_ns came to be in ``unit``
    tsc_khz: float | None = None  # the frequency used for ticks
    spread_pct: float | None = None  # estimates: half the p10..p90 range of the per-pair ratios, in %
    pairs: int | None = None  # estimates: how many pairs
    checked: str | None = None  # ns clocks: the rate measured against events carrying ns times

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        if self.unit == self.recorded_unit:
            return f"{C.UNIT_TEXT[self.unit]} ({self.source})"
        return f"{C.UNIT_TEXT[self.recorded_unit]} -> ns ({self.source})"


@dataclass(frozen=True)
class Estimate:
    khz: float
    spread_pct: float
    pairs: int
    how: str


def _ratios_summary(r: np.ndarray, how: str, upper_bounds: bool = False) -> Estimate | None:
    """Ticks per ns from per-pair ratios: their median with half the p10..p90 range as the spread; or,
    when every ratio bounds the truth from above, their 5th percentile with the distance of the
    median above it as the spread."""
    r = r[np.isfinite(r) & (r > 0)]
    if len(r) < MIN_PAIRS:
        return None
    if upper_bounds:
        est, med = np.percentile(r, [5, 50])
        return Estimate(float(est) * 1e6, round(100 * float(med - est) / float(est), 4), len(r), how)
    med = float(np.median(r))
    p10, p90 = np.percentile(r, [10, 90])
    return Estimate(med * 1e6, round(100 * float(p90 - p10) / 2 / med, 4), len(r), how)


def _from_hrtimer(t: pa.Table) -> Estimate | None:
    import polars as pl

    if "now" not in t.column_names or "function" not in t.column_names:
        return None
    # (text traces print the function as a symbol: its address column is null, one group then)
    df = pl.from_arrow(t.select(["ts_ns", "now", "function"])).sort("ts_ns")  # type: ignore[union-attr]
    d = df.with_columns(pl.col("ts_ns").diff().over("function").alias("dt"),
                        pl.col("now").cast(pl.Int64).diff().over("function").alias("dn")).drop_nulls(["dt", "dn"])
    for floor in (LONG_NS, SHORT_NS):
        sel = d.filter((pl.col("dn") >= floor) & (pl.col("dt") > 0))
        est = _ratios_summary((sel["dt"] / sel["dn"]).to_numpy(),
                              f"timer:hrtimer_expire_entry 'now' against the trace clock, pairs >= {floor // 1000} us")
        if est is not None:
            return est
    return None


def _from_wakeups(wake: pa.Table, exits: pa.Table) -> Estimate | None:
    import polars as pl

    if "ns" not in wake.column_names or "reason" not in exits.column_names:
        return None
    w = pl.from_arrow(wake.select(["ts_ns", "pid", "ns", "waited"]))
    e = pl.from_arrow(exits.select(["ts_ns", "pid", "reason"])).with_columns(
        pl.col("reason").cast(pl.String).str.to_lowercase().alias("reason"))
    w = w.filter(pl.col("waited").cast(pl.Boolean)).sort("ts_ns")  # type: ignore[union-attr]
    e = e.sort("ts_ns").rename({"ts_ns": "exit_ts"})  # type: ignore[union-attr]
    j = w.join_asof(e, left_on="ts_ns", right_on="exit_ts", by="pid", strategy="backward",
                    check_sortedness=False)  # (both sorted by time; polars cannot check it per group)
    j = j.filter(pl.col("reason").is_in(HLT_REASONS))
    for floor in (LONG_NS, SHORT_NS):
        sel = j.filter(pl.col("ns").cast(pl.Int64) >= floor)
        est = _ratios_summary(((sel["ts_ns"] - sel["exit_ts"]) / sel["ns"].cast(pl.Int64)).to_numpy(),
                              f"kvm:kvm_vcpu_wakeup halt times against their HLT exits, halts >= {floor // 1000} us "
                              "(each pair an upper bound: its 5th percentile)", upper_bounds=True)
        if est is not None:
            return est
    return None


def estimate(b: TraceBuilder, mark: tuple[dict[str, int], int]) -> Estimate | None:
    """The counter frequency estimated from the rows of one input (see the module docstring)."""
    tables = b.event_tables
    hr = tables.get("timer:hrtimer_expire_entry")
    t = b.since(mark, hr) if hr else None
    est = _from_hrtimer(t) if t is not None else None
    if est is not None:
        return est
    wk, ex = tables.get("kvm:kvm_vcpu_wakeup"), tables.get("kvm:kvm_exit")
    w = b.since(mark, wk) if wk else None
    e = b.since(mark, ex) if ex else None
    return _from_wakeups(w, e) if w is not None and e is not None else None


def _counts_events(b: TraceBuilder, mark: tuple[dict[str, int], int]) -> bool:
    """Integer timestamps that number the events one by one: the counter clock."""
    ts = [b.since(mark, t) for t in set(b.event_tables.values())]
    parts = [t.column("ts_ns").to_numpy() for t in ts if t is not None]
    if not parts:
        return False
    a = np.unique(np.concatenate(parts))
    n = sum(len(p) for p in parts)
    return len(a) == n and n > 1 and int(a[-1] - a[0]) == n - 1


def _check_ns(b: TraceBuilder, mark: tuple[dict[str, int], int], inp: dict[str, Any], tb: TimeBase) -> None:
    """A clock said to count ns, checked against events that carry the kernel's ns time: a rate far
    from 1 means the file's clock label is wrong (``trace-cmd extract`` of an instance records the
    top-level clock, not the instance's). A candidate, reported with its evidence, not acted on."""
    est = estimate(b, mark)
    if est is None:
        return
    rate = est.khz / 1e6
    tb.checked = f"timestamps advance {rate:.4f} x the kernel's ns clock ({est.how}, {est.pairs} pairs)"
    if abs(rate - 1) > RATE_TOLERANCE:
        b.stats.add(inp["path"], "clock_mismatch", tb.clock or "", 1,
                    f"candidate: the file says clock {tb.clock or '?'} (ns) but its timestamps advance "
                    f"{rate:.4f} times as fast as the kernel's ns clock ({est.how}): they look like ticks of a "
                    f"{rate * 1000:.3f} MHz counter (x86-tsc?); durations are wrong by that factor. Read it with "
                    f"--clock x86-tsc (and --tsc-khz when known)")


def settle(b: TraceBuilder, mark: tuple[dict[str, int], int], tsc_khz: float | None = None,
           host: dict[str, Any] | None = None, clock_name: str | None = None) -> TimeBase:
    """Decide the time base of the input just read (the last of ``b.meta['inputs']``) and convert
    its rows to ns when it can; recorded in the input's meta entry."""
    inp = b.meta["inputs"][-1]
    name, unit = inp.get("clock"), inp.get("time_unit", C.NS)
    if clock_name is not None and clock_name != name:
        forced = C.clock(clock_name)
        if forced is None:
            raise InputError(inp["path"], f"--clock {clock_name}: not a trace clock "
                                          f"(one of {', '.join(sorted(C.CLOCKS))})")
        inp["clock_recorded"], inp["clock"] = name, clock_name
        name, unit = clock_name, forced.unit
        inp["time_unit"] = unit
        inp["time_source"] = f"--clock {clock_name} (the file records {name or 'no clock'})"
    tb = TimeBase(name, unit, unit, inp.get("time_source") or
                  ("the clock counts ns" if unit == C.NS else "not converted"))
    if unit == C.NS:
        _check_ns(b, mark, inp, tb)
    elif unit == C.UNKNOWN_TICKS and _counts_events(b, mark):
        tb = TimeBase("counter", unit, C.EVENTS, "integer timestamps numbering the events one by one: "
                                                 "the counter clock, an order and not a time")
    elif unit == C.CLOCK_T:
        b.retime(mark, lambda ts: ts * (1_000_000_000 // C.USER_HZ))
        tb.unit, tb.source = C.NS, f"clock_t x {1000 // C.USER_HZ} ms (USER_HZ {C.USER_HZ}); 10 ms resolution"
    elif unit in (C.TSC_TICKS, C.UNKNOWN_TICKS, C.ARCH_TICKS):
        khz, source, est = _frequency(b, mark, unit, tsc_khz, host)
        if khz is not None:
            b.retime(mark, lambda ts: C.ticks_at(ts, khz))
            tb.unit, tb.source, tb.tsc_khz = C.NS, source, round(khz, 3)
            if est is not None:
                tb.spread_pct, tb.pairs = est.spread_pct, est.pairs
            b.stats.add(inp["path"], "time_base", C.UNIT_TEXT[unit], 1,
                        f"timestamps in {C.UNIT_TEXT[unit]} converted to ns at {khz / 1000:.3f} MHz ({source})")
        else:
            b.stats.add(inp["path"], "time_base", C.UNIT_TEXT[unit], 1,
                        f"timestamps are {C.UNIT_TEXT[unit]} and no frequency is known (give --tsc-khz, a host "
                        "snapshot with tsc_khz, or record timer:hrtimer_expire_entry): times and durations are "
                        "shown in ticks")
    inp["time"] = tb.to_json()
    return tb


def _frequency(b: TraceBuilder, mark: tuple[dict[str, int], int], unit: str, tsc_khz: float | None,
               host: dict[str, Any] | None) -> tuple[float | None, str, Estimate | None]:
    if tsc_khz is not None:
        return tsc_khz, f"--tsc-khz {tsc_khz:g}", None
    hk = (host or {}).get("tsc_khz")
    if unit != C.ARCH_TICKS and hk:
        src = (host or {}).get("tsc_khz_source") or "the kernel"
        return float(hk), f"host snapshot tsc_khz {hk} (from {src})", None
    est = estimate(b, mark)
    if est is not None:
        return est.khz, f"estimated from {est.how}: {est.khz / 1000:.3f} MHz +- {est.spread_pct:g} % over " \
                        f"{est.pairs} pairs", est
    return None, "", None


def merged_unit(bases: list[TimeBase], paths: list[str]) -> str:
    """The unit of the merged trace; inputs whose timestamps are in different units cannot be merged."""
    units = {tb.unit for tb in bases}
    if len(units) > 1:
        detail = ", ".join(f"{p}: {C.UNIT_TEXT[tb.unit]}" for p, tb in zip(paths, bases, strict=True))
        raise InputError(paths[0], f"cannot merge inputs whose times are in different units ({detail}); give "
                                   "--tsc-khz or a host snapshot with tsc_khz to convert ticks to ns")
    return units.pop() if units else C.NS
