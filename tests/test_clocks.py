"""Clock units: ticks are never called ns; conversions name their source; merges check time lines.

Real captures: fixtures/tsc-clock.trace.dat and mono-clock.trace.dat hold the same events recorded at
once on the x86-tsc and mono clocks (fixtures/PROVENANCE.md); matching them event by event gives the
TSC rate the two clocks really ran at. The public 6.5 VMX host trace in ../shared (x86-tsc, no
TSC2NSEC) checks the kvm_vcpu_wakeup estimate against its host's own mult/shift.
"""

from __future__ import annotations

import json
import lzma
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import FIXTURES, shared

from vpmutrace.clocks import ticks_at
from vpmutrace.errors import InputError
from vpmutrace.readers import LoadOptions, load_trace
from vpmutrace.readers.trace_dat import content_of
from vpmutrace.writers.trace_dat import write_trace_dat

TSC = FIXTURES / "tsc-clock.trace.dat"
MONO = FIXTURES / "mono-clock.trace.dat"
TSC_TEXT = FIXTURES / "tsc-clock.ftrace.txt.xz"
HRT = "timer:hrtimer_expire_entry"
HIP24_HOST_TSC_KHZ = 2918400  # 2**31 / 735842807 (the TSC2NSEC mult/shift of the same host's other recordings)


def _stats(td, category: str) -> list:
    return [e for e in td.stats.entries() if e.category == category]


@pytest.fixture(scope="module")
def truth() -> float:
    """TSC ticks per ns of the capture: the same hrtimer expiries matched across the two buffers."""
    a = load_trace([TSC], LoadOptions(clock="x86-tsc", tsc_khz=1e6))  # 1 GHz: ts_ns = the raw ticks
    b = load_trace([MONO])
    t = a.event_tables()[HRT]
    j = a.df(t).select("ts_ns", "cpu", "now", "hrtimer").join(
        b.df(t).select(pl.col("ts_ns").alias("mono"), "cpu", "now", "hrtimer"), on=["cpu", "now", "hrtimer"])
    assert j.height > 500
    x = (j["mono"] - j["mono"][0]).to_numpy().astype(float)
    y = (j["ts_ns"] - j["ts_ns"][0]).to_numpy().astype(float)
    return float(np.polyfit(x, y, 1)[0])


def test_mislabelled_tsc_file_is_flagged_not_silently_read_as_ns() -> None:
    """trace-cmd extract of an x86-tsc instance records clock "local": the file says ns, its times run
    2.6x faster than the kernel's ns clock (hrtimer 'now'): a candidate clock_mismatch with the fix."""
    td = load_trace([TSC])
    inp = td.meta["inputs"][0]
    assert inp["clock"] == "local" and inp["time"]["unit"] == "ns"
    rate = float(re.search(r"advance ([\d.]+) x", inp["time"]["checked"]).group(1))
    assert 2.59 < rate < 2.61
    (mis,) = _stats(td, "clock_mismatch")
    assert mis.examples[0].startswith("candidate:") and "--clock x86-tsc" in mis.examples[0]
    # the mono file is checked too, and passes
    m = load_trace([MONO])
    assert not _stats(m, "clock_mismatch")
    assert 0.999 < float(re.search(r"advance ([\d.]+) x", m.meta["inputs"][0]["time"]["checked"]).group(1)) < 1.001


def test_tsc_ticks_converted_with_an_estimate_and_its_spread(truth: float) -> None:
    td = load_trace([TSC], LoadOptions(clock="x86-tsc"))
    t = td.meta["inputs"][0]["time"]
    assert t["recorded_unit"] == "tsc_ticks" and t["unit"] == "ns" and td.meta["time_unit"] == "ns"
    assert "estimated from timer:hrtimer_expire_entry" in t["source"] and t["pairs"] > 100
    assert abs(t["tsc_khz"] / 1e6 - truth) / truth < 5e-4  # within 0.05 % of the rate the clocks ran at
    assert t["spread_pct"] < 1
    assert any("converted to ns" in e.examples[0] for e in _stats(td, "time_base"))


def test_given_frequency_gives_the_mono_durations(truth: float) -> None:
    """With the frequency, every gap between two events equals the mono clock's gap (to 0.01 % + 2 us:
    the two buffers timestamp the same event a few hundred ns apart)."""
    td = load_trace([TSC], LoadOptions(clock="x86-tsc", tsc_khz=truth * 1e6))
    assert td.meta["inputs"][0]["time"]["source"].startswith("--tsc-khz")
    mono = load_trace([MONO])
    t = td.event_tables()[HRT]
    key = ["cpu", "now", "hrtimer"]
    j = td.df(t).select("ts_ns", *key).join(mono.df(t).select(pl.col("ts_ns").alias("m"), *key), on=key).sort("m")
    gap, ref = j["ts_ns"].diff().drop_nulls().to_numpy(), j["m"].diff().drop_nulls().to_numpy()
    assert (np.abs(gap - ref) <= 2000 + 1e-4 * np.abs(ref)).all()


def test_text_with_integer_timestamps_is_ticks_then_estimated() -> None:
    """The kernel prints an x86-tsc buffer with integer timestamps: read as ticks of unknown unit, the
    hrtimer 'now' field gives the rate; the fields equal the trace.dat's."""
    td = load_trace([TSC_TEXT])
    t = td.meta["inputs"][0]["time"]
    assert t["recorded_unit"] == "unknown_ticks" and t["unit"] == "ns" and 2.59e6 < t["tsc_khz"] < 2.61e6
    binary = load_trace([TSC], LoadOptions(clock="x86-tsc", tsc_khz=t["tsc_khz"]))
    tb = binary.event_tables()[HRT]
    a, b = td.df(td.event_tables()[HRT]), binary.df(tb)
    assert a.select("cpu", "pid", "now").equals(b.select("cpu", "pid", "now"))
    assert (a["ts_ns"] - b["ts_ns"]).abs().max() <= 1  # the same ticks, scaled alike


def test_ticks_without_a_frequency_stay_ticks(tmp_path: Path) -> None:
    """No hrtimer/kvm_vcpu_wakeup events, no option, no snapshot: the times stay ticks, info and the
    analysis say so, and analyzers that compare with ns constants are not computable."""
    text = lzma.decompress(TSC_TEXT.read_bytes()).decode()
    kept = "\n".join(ln for ln in text.splitlines() if "hrtimer_expire_entry" not in ln) + "\n"
    f = tmp_path / "no-hrtimer.txt"
    f.write_text(kept)
    td = load_trace([f])
    assert td.meta["time_unit"] == "unknown_ticks"
    assert any("no frequency is known" in e.examples[0] for e in _stats(td, "time_base"))
    from vpmutrace.analyze import Config, run
    from vpmutrace.report.text import info_dict, render_info

    assert "not ns" in render_info(info_dict(td))
    doc, _ = run(td, Config.for_trace(td))
    assert doc["trace"]["time_unit"] == "unknown_ticks"
    assert doc["watchdog"]["computable"] is False and "timestamps in ns" in doc["watchdog"]["reason"]
    # with the frequency given, the same file is in ns
    conv = load_trace([f], LoadOptions(tsc_khz=2_599_998))
    assert conv.meta["time_unit"] == "ns" and conv.meta["inputs"][0]["time"]["source"] == "--tsc-khz 2.6e+06"


def test_host_snapshot_next_to_the_trace_gives_the_frequency(tmp_path: Path) -> None:
    f = tmp_path / "t.dat"
    f.write_bytes(TSC.read_bytes())
    (tmp_path / "host.json").write_text(json.dumps({"tsc_khz": 2599998, "tsc_khz_source": "dmesg: test"}))
    td = load_trace([f], LoadOptions(clock="x86-tsc"))
    t = td.meta["inputs"][0]["time"]
    assert t["tsc_khz"] == 2599998 and "host snapshot" in t["source"]
    assert td.meta["host_snapshot"] == str(tmp_path / "host.json")


def test_uptime_and_counter_clocks(tmp_path: Path) -> None:
    """uptime counts clock_t (10 ms): converted exactly; counter numbers the events: not a time."""
    c = content_of(MONO)
    for b in c.buffers:
        b.clock = "uptime"
    up = load_trace([write_trace_dat(tmp_path / "up.dat", c, 7, "none")])
    raw = load_trace([MONO])
    t = up.event_tables()[HRT]
    assert (up.df(t)["ts_ns"] == raw.df(t)["ts_ns"] * 10_000_000).all()
    assert "clock_t" in up.meta["inputs"][0]["time"]["source"]
    lines = lzma.decompress(TSC_TEXT.read_bytes()).decode().splitlines()[:50]
    counted = [re.sub(r"\] (\S+) \d+:", lambda m, i=i: f"] {m.group(1)} {i + 1}:", ln, count=1)
               for i, ln in enumerate(lines)]
    f = tmp_path / "counter.txt"
    f.write_text("\n".join(counted) + "\n")
    td = load_trace([f])
    assert td.meta["time_unit"] == "events" and td.meta["inputs"][0]["time"]["clock"] == "counter"


def test_inputs_in_different_units_are_not_merged(tmp_path: Path) -> None:
    text = lzma.decompress(TSC_TEXT.read_bytes()).decode()
    f = tmp_path / "ticks.txt"
    f.write_text("\n".join(ln for ln in text.splitlines() if "hrtimer" not in ln) + "\n")
    with pytest.raises(InputError) as e:
        load_trace([f, MONO])
    assert "different units" in str(e.value) and "\n" not in str(e.value)


def test_clocks_of_different_time_lines_are_flagged_when_merged(tmp_path: Path) -> None:
    """A perf.data (perf clock: sched_clock) and a trace.dat on the mono clock (the mono capture with the
    clock it really had): merged as recorded, counted as not one time line."""
    c = content_of(MONO)
    for b in c.buffers:
        b.clock = "mono"
    mono = write_trace_dat(tmp_path / "mono.dat", c, 7, "none")
    td = load_trace([FIXTURES / "microguest200.perf.data", mono])
    why = [x for e in _stats(td, "clock_mismatch") if e.source_file == str(mono) for x in e.examples]
    assert any("clock mono is not the time line" in w for w in why), why
    assert td.meta["clock"] == "mixed"
    # a trace.dat on the local clock and a perf.data (both sched_clock): nothing to flag on that ground
    same = load_trace([FIXTURES / "microguest200.trace.dat", FIXTURES / "microguest200.perf.data"])
    assert not [e for e in _stats(same, "clock_mismatch") if "is not the time line" in e.examples[0]]


def test_unknown_clock_name_is_a_one_line_error() -> None:
    with pytest.raises(InputError) as e:
        load_trace([MONO], LoadOptions(clock="sundial"))
    assert "not a trace clock" in str(e.value)


def test_frequency_conversion_is_exact_to_the_ns() -> None:
    """ticks * 10**6 / khz, truncated, to the ns while the times stay below 2**53 ns (104 days; a 32-bit
    mult/shift is microseconds off after an hour at GHz rates): an x86-tsc trace at 2.6 GHz after ~3 hours
    of uptime is ~3e13 ticks. As trace-cmd report --ts2secs, whose text the show tests compare."""
    from fractions import Fraction

    for khz in (2_599_998, 2_918_400, 25_000, 1_000_000, 2_918_780.5):
        ticks = np.array([0, 1, int(khz * 1000), 25_560_928_714_680, int(2**52 * khz / 1e6)], dtype=np.int64)
        ns = ticks_at(ticks, khz)
        exact = [int(Fraction(int(t)) * 10**9 / Fraction(round(khz * 1000))) for t in ticks]
        assert np.all(np.abs(ns - np.array(exact)) <= 1), (khz, ns - np.array(exact))


def test_public_vmx_host_trace_in_tsc_ticks() -> None:
    """A 6.5 VMX host's trace.dat recorded with x86-tsc and no TSC2NSEC (trace-cmd report prints raw
    ticks): converted with the kvm_vcpu_wakeup estimate, within 0.05 % of its host's own scaling."""
    p = shared("public-github/hip24_host_kvm_x86tsc_v7zlib.dat")
    td = load_trace([p])
    t = td.meta["inputs"][0]["time"]
    assert t["clock"] == "x86-tsc" and t["recorded_unit"] == "tsc_ticks" and t["unit"] == "ns"
    assert "kvm:kvm_vcpu_wakeup" in t["source"]
    assert abs(t["tsc_khz"] - HIP24_HOST_TSC_KHZ) / HIP24_HOST_TSC_KHZ < 5e-4
    # HLT exits of ~1.67 ms average, not 2.92x that
    from vpmutrace.analyze import Config, run

    doc, _ = run(td, Config.for_trace(td))
    hlt = next(r for r in doc["exits"]["by_reason"] if r["reason"] == "HLT")
    assert 1.5e6 < hlt["mean_ns"] < 1.9e6


def test_trace_cmd_report_of_a_tsc_file_prints_ticks_we_read(tmp_path: Path) -> None:
    """trace-cmd report prints an x86-tsc file's raw ticks with "%12llu:" glued to the CPU column
    ("[000]25560928714680:"), and its hrtimer plugin's own text: read back, the same ticks and fields."""
    import subprocess

    from conftest import need_tool

    tc = need_tool("trace-cmd")
    c = content_of(TSC)  # the capture with the clock its instance really had
    for b in c.buffers:
        b.clock = "x86-tsc"
    c.trace_clock = c.trace_clock.replace("[local]", "local").replace("x86-tsc", "[x86-tsc]")
    dat = write_trace_dat(tmp_path / "tsc.dat", c, 7, "zstd")
    r = subprocess.run([tc, "report", "-i", str(dat)], capture_output=True, text=True, check=True)
    assert re.search(r"\[\d{3}\]\d{10,}: hrtimer_expire_entry", r.stdout)
    (tmp_path / "tsc.txt").write_text(r.stdout)
    opts = LoadOptions(tsc_khz=1e6)  # 1 GHz: ts_ns = the ticks
    text, binary = load_trace([tmp_path / "tsc.txt"], opts), load_trace([dat], opts)
    assert binary.meta["inputs"][0]["time"]["recorded_unit"] == "tsc_ticks"
    assert text.meta["inputs"][0]["time"]["recorded_unit"] == "unknown_ticks"
    assert text.meta["events"] == binary.meta["events"] and text.meta["unparsed"] == 0
    t = binary.event_tables()[HRT]
    cols = ["ts_ns", "cpu", "pid", "hrtimer", "now"]
    assert text.df(text.event_tables()[HRT]).select(cols).equals(binary.df(t).select(cols))
