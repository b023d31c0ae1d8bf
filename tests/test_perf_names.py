"""perf.data event names and tracepoint formats come from the file, never from this host by id alone."""

from __future__ import annotations

import struct
from pathlib import Path

import polars as pl
import pytest
from conftest import FIXTURES

from vpmutrace.formats.perf_names import event_name
from vpmutrace.readers import load_trace
from vpmutrace.readers import local_formats as lf
from vpmutrace.readers.perf_data import FEAT_EVENT_DESC, FEAT_TRACING_DATA

MICRO = FIXTURES / "microguest200.perf.data"
LOST44 = FIXTURES / "perf.data.lost_samples-4.4"
P3, EXCL_GUEST, EXCL_HOST = 3 << 15, 1 << 20, 1 << 19
EXCL_USER, EXCL_KERNEL, EXCL_HV = 1 << 4, 1 << 5, 1 << 6


def strip_features(src: Path, dst: Path, *bits: int) -> Path:
    """A copy of a perf.data without some feature sections (their bits cleared, their table entries
    removed), as a file written by a perf that had none of them."""
    b = bytearray(src.read_bytes())
    data_off, data_size = struct.unpack_from("<QQ", b, 40)
    feats = int.from_bytes(b[72:104], "little")
    have = [i for i in range(256) if feats >> i & 1]
    table = data_off + data_size
    entries = [struct.unpack_from("<QQ", b, table + 16 * k) for k in range(len(have))]
    kept = [e for i, e in zip(have, entries, strict=True) if i not in bits]
    for i in bits:
        feats &= ~(1 << i)
    b[72:104] = feats.to_bytes(32, "little")
    b[table:table + 16 * len(have)] = b"".join(struct.pack("<QQ", *e) for e in kept).ljust(16 * len(have), b"\0")
    dst.write_bytes(bytes(b))
    return dst


@pytest.mark.parametrize("type_,config,flags,name", [
    (0, 0, P3, "cycles:ppp"),  # the case: type 0 / config 0 / precise 3
    (0, 0, P3 | EXCL_GUEST, "cycles:pppH"),
    (0, 0, 0, "cycles"),
    (0, 0, EXCL_GUEST, "cycles:H"),
    (0, 0, EXCL_HOST, "cycles:G"),
    (0, 1, EXCL_USER | EXCL_HV, "instructions:k"),  # what perf's ':k' sets
    (0, 1, EXCL_USER, "instructions:kh"),
    (0, 1, EXCL_KERNEL | EXCL_HV | 2 << 15, "instructions:upp"),
    (0, 42, 0, "unknown-hardware"),
    (0, 0 | 4 << 32, 0, "cpu_core/cycles/"),  # hybrid: the PMU type in config's upper half
    (1, 0, 0, "cpu-clock"), (1, 9, 0, "dummy"), (1, 10, 0, "unknown-software"),
    (3, 0 | 0 << 8 | 1 << 16, 0, "L1-dcache-load-misses"), (3, 0, 0, "L1-dcache-loads"),
    (3, 2 | 1 << 8, 0, "LLC-stores"), (3, 4 | 1 << 8, 0, "invalid-cache"),  # iTLB has no stores
    (4, 0x1c0, 0, "raw 0x1c0"),
    (9, 0x12, 0, "msr/config=0x12/"), (77, 1, 0, "unknown attr type: 77"),
])
def test_computed_names_follow_perf(type_: int, config: int, flags: int, name: str) -> None:
    assert event_name(type_, config, flags, pmus={4: "cpu_core", 9: "msr"}) == name


def test_breakpoint_name() -> None:
    assert event_name(5, 0, 0, bp_type=3, bp_addr=0xFFFF1234) == "mem:0xffff1234:rw"


def test_names_without_event_desc_are_computed_as_perf_does(tmp_path: Path) -> None:
    """perf 6.1 prints cycles:ppH / instructions:ppH / branches:ppH for this file once its EVENT_DESC
    is removed (precise_ip 2, exclude_guest 1); with EVENT_DESC the recorded names win."""
    full = load_trace([LOST44])
    names = [e["name"] for e in full.meta["inputs"][0]["events"]]
    assert names == ["cycles:pp", "instructions:pp", "branch-instructions:pp"]
    bare = load_trace([strip_features(LOST44, tmp_path / "no-desc.data", FEAT_EVENT_DESC)])
    ev = bare.meta["inputs"][0]["events"]
    assert [e["name"] for e in ev] == ["cycles:ppH", "instructions:ppH", "branches:ppH"]
    assert {e["name_from"] for e in ev} == {"computed"}
    assert set(bare.df("samples")["event"].unique()) <= {"cycles:ppH", "instructions:ppH", "branches:ppH"}


def test_tracepoint_names_from_tracing_data_without_event_desc(tmp_path: Path) -> None:
    td = load_trace([strip_features(MICRO, tmp_path / "no-desc.data", FEAT_EVENT_DESC)])
    full = load_trace([MICRO])
    assert td.meta["events"] == full.meta["events"]
    ev = {e["name"]: e["name_from"] for e in td.meta["inputs"][0]["events"]}
    assert ev["kvm:kvm_msr"] == "tracing_data" and ev["dummy"] == "computed"


def _fake_tracefs(root: Path, events: dict[str, tuple[int, str]]) -> Path:
    """A tracefs with the given events: name -> (id, format text)."""
    for name, (ev_id, text) in events.items():
        system, event = name.split(":")
        d = root / "events" / system / event
        d.mkdir(parents=True)
        (d / "id").write_text(f"{ev_id}\n")
        (d / "format").write_text(text)
    return root


def test_local_formats_need_the_recorded_name_and_the_same_id(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TRACING_DATA: kvm_msr (same name, same id here) is decoded with the local format;
    kvm_pio has another id on this 'host' and sched_switch's id belongs to another event here: both
    stay raw under the names the file records, counted with why."""
    full = load_trace([MICRO])
    formats = full.meta["event_formats"]
    ids = {e["name"]: e["config"] for e in full.meta["inputs"][0]["events"] if e["type"] == 2}
    root = _fake_tracefs(tmp_path / "tracefs", {
        "kvm:kvm_msr": (ids["kvm:kvm_msr"], formats["kvm:kvm_msr"]),
        "kvm:kvm_pio": (ids["kvm:kvm_pio"] + 1000, formats["kvm:kvm_pio"]),
        # the id of the file's sched_switch belongs to a syscall on this host (the perf 4.13 case)
        "syscalls:sys_exit_getrusage": (ids["sched:sched_switch"], formats["kvm:kvm_cpuid"]),
    })
    monkeypatch.setattr(lf, "TRACEFS_ROOTS", (root,))
    td = load_trace([strip_features(MICRO, tmp_path / "no-tracing.data", FEAT_TRACING_DATA)])
    assert td.df("kvm_msr").drop("seq").equals(full.df("kvm_msr").drop("seq"))
    local = {e.name for e in td.stats.entries() if e.category == "formats_from_local_tracefs"}
    assert local == {"kvm:kvm_msr"}
    refused = {e.name: e.examples[0] for e in td.stats.entries() if e.category == "no_format"}
    assert "has id" in refused["kvm:kvm_pio"]
    assert "no tracepoint sched:sched_switch" in refused["sched:sched_switch"]
    un = td.df("unparsed")
    counts = dict(un.group_by("event").len().rows())
    assert counts["kvm:kvm_pio"] == full.meta["events"]["kvm:kvm_pio"]
    assert counts["sched:sched_switch"] == full.meta["events"]["sched:sched_switch"]
    assert not any("syscalls" in e for e in td.meta["events"])
    raw = un.filter(pl.col("event") == "kvm:kvm_pio")["raw"]
    # the raw payload is the record's RAW data: it starts with the event id (common_type)
    assert {int.from_bytes(r[:2], "little") for r in raw} == {ids["kvm:kvm_pio"]}
