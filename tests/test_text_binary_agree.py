"""Text and binary paths agree on every typed event: render kernel text from the reference print fmts,
parse it back as an ftrace file, and compare with the columns decoded from the same raw fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from conftest import FIXTURES

from vpmutrace.formats.known import reference_formats
from vpmutrace.readers import load_trace
from vpmutrace.schema import binary_only, table_for_event
from vpmutrace.typed_fields import typed_columns

SYMS = {0xFFFFFFFF81012340: "perf_event_nmi_handler"}
RECORDS: dict[str, list[dict]] = {
    "kvm:kvm_exit": [
        dict(exit_reason=15, guest_rip=0xFFFFFFFF81000010, isa=1, info1=0, info2=0, intr_info=0, error_code=0,
             vcpu_id=3, requests=0),
        dict(exit_reason=0x80000021, guest_rip=0x1000, isa=1, info1=1, info2=2, intr_info=0x80000b0e,
             error_code=0, vcpu_id=0, requests=5),
        dict(exit_reason=0x6F, guest_rip=0x4004AE, isa=2, info1=0, info2=0, intr_info=0, error_code=0, vcpu_id=1,
             requests=0),
        dict(exit_reason=0x400, guest_rip=0x4004AE, isa=2, info1=0x6, info2=0xfee00000, intr_info=0, error_code=0,
             vcpu_id=1, requests=0),
    ],
    "kvm:kvm_entry": [dict(vcpu_id=2, rip=0xFFFF8000, immediate_exit=1, intr_info=0x800000ec, error_code=0),
                      dict(vcpu_id=0, rip=0x10, immediate_exit=0, intr_info=0, error_code=0)],
    "kvm:kvm_msr": [dict(write=1, ecx=0x38F, data=0x70000000F, exception=0),
                    dict(write=0, ecx=0xC0010200, data=0, exception=1)],
    "kvm:kvm_inj_virq": [dict(vector=0xF5, soft=0, reinjected=0), dict(vector=0x80, soft=1, reinjected=1)],
    "kvm:kvm_apic_accept_irq": [dict(apicid=1, dm=0x400, tm=1, vec=2), dict(apicid=0, dm=0, tm=0, vec=0xF5)],
    "kvm:kvm_pio": [dict(rw=1, port=0x80, size=1, count=1, val=0x5A), dict(rw=0, port=0x3F8, size=2, count=4, val=1)],
    "kvm:kvm_cpuid": [dict(function=0xA, index=0, rax=0x7300403, rbx=0, rcx=0, rdx=0x8603, found=1,
                           used_max_basic=0),
                      dict(function=0x80000008, index=1, rax=1, rbx=2, rcx=3, rdx=4, found=0, used_max_basic=1)],
    "kvm:kvm_inj_exception": [dict(exception=13, has_error=1, error_code=0, reinjected=0),
                              dict(exception=6, has_error=0, error_code=0, reinjected=1)],
    "kvm:kvm_emulate_insn": [dict(rip=0xFFFFFFFF810551B8, csbase=0, len=3, insn=bytes([0x0F, 0x00, 0xD8]) + bytes(12),
                                  flags=9, failed=1)],
    "kvm:kvm_userspace_exit": [dict(reason=2, errno=0), dict(reason=0, errno=-4)],
    "nmi:nmi_handler": [dict(handler=0xFFFFFFFF81012340, delta_ns=2345, handled=1)],
    "msr:read_msr": [dict(msr=0x38E, val=0x1, failed=0)],
    "msr:write_msr": [dict(msr=0x390, val=0x1, failed=1)],
    "msr:rdpmc": [dict(msr=0x40000000, val=123456, failed=0)],
    "irq_vectors:local_timer_entry": [dict(vector=236)],
}


def test_text_and_binary_paths_give_the_same_columns(tmp_path: Path) -> None:
    fmts = reference_formats()
    lines, expected = [], {}
    ts = 1_000_000
    for name, recs in RECORDS.items():
        fmt = fmts[name]
        table = table_for_event(fmt.system, fmt.name)
        for r in recs:
            ts += 7
            text = fmt.printer.render(r, SYMS.get)
            lines.append(f"        qemu-kvm-4242    [001] d..1.  {ts // 1_000_000}.{ts % 1_000_000:06d}: "
                         f"{fmt.name}: {text}")
        cols = {k: (np.array([r[k] for r in recs], dtype=np.int64 if k in ("errno", "delta_ns", "handled")
                             else np.uint64) if not isinstance(recs[0][k], bytes) else [r[k] for r in recs])
                for k in recs[0]}
        typed = typed_columns(table, fmt.name, fmt, cols, len(recs), SYMS.get)
        expected.setdefault(table, []).append((fmt.name, typed, len(recs)))
    f = tmp_path / "rendered.txt"
    f.write_text("\n".join(lines) + "\n")
    td = load_trace([f])
    assert td.meta["unparsed"] == 0 and not td.has("unparsed")
    for table, parts in expected.items():
        got = td.df(table)
        start = 0
        for ev_name, typed, n in parts:
            rows = got.slice(start, n)
            start += n
            for col, want in typed.items():
                if col in binary_only(table):  # raw fields: the text prints their names only
                    continue
                want_list = want.to_pylist() if hasattr(want, "to_pylist") else list(np.asarray(want).tolist())
                have = rows[col].to_list()
                if col == "handler_addr":  # text shows the symbol, not the address
                    assert have == [None] * n
                    continue
                assert have == [bool(x) if isinstance(h, bool) else x for h, x in zip(have, want_list,
                                                                                       strict=True)], \
                    (table, ev_name, col, have, want_list)


def test_two_input_trace_cmd_report() -> None:
    td = load_trace([FIXTURES / "two-inputs.report.txt"])
    assert td.meta["unparsed"] == 0 and td.meta["cpus"] == 2
    src = td.df("sched_switch").group_by("source").len().sort("source")
    assert src.rows() == [("guest.dat", 84), ("host.dat", 84)]
    one = load_trace([FIXTURES / "microguest200.trace.dat"]).df("sched_switch").head(84)
    host = td.df("sched_switch").filter(pl.col("source") == "host.dat")
    a = one.with_columns(((pl.col("ts_ns") + 500) // 1000 * 1000).alias("ts_ns"))
    drop = ("source", "comm", "prev_state", "seq", *binary_only("sched_switch"))
    assert a.drop(drop).equals(host.drop(drop))
