"""The tracepoint format engine: format files, print fmt evaluation, binary decoding."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpmutrace.formats.decode import decode_fields, factorize_rows
from vpmutrace.formats.event_format import parse_format
from vpmutrace.formats.known import exception_vectors, exit_reason_codes, reference_formats

# kvm_exit as printed by a 5.x kernel (no isa/vcpu_id/requests fields; different offsets)
KVM_EXIT_OLD = """name: kvm_exit
ID: 77
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int exit_reason;\toffset:8;\tsize:4;\tsigned:0;
\tfield:unsigned long guest_rip;\toffset:16;\tsize:8;\tsigned:0;
\tfield:u32 isa;\toffset:24;\tsize:4;\tsigned:0;
\tfield:u64 info1;\toffset:32;\tsize:8;\tsigned:0;
\tfield:u64 info2;\toffset:40;\tsize:8;\tsigned:0;

print fmt: "reason %s rip 0x%lx info %llx %llx", (REC->isa == 1) ? __print_symbolic(REC->exit_reason, \
{ 0, "EXCEPTION_NMI" }, { 1, "EXTERNAL_INTERRUPT" }, { 48, "EPT_VIOLATION" }) : \
__print_symbolic(REC->exit_reason, { 0x07c, "msr" }), REC->guest_rip, REC->info1, REC->info2
"""

STRINGY = """name: sched_process_exec
ID: 300
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:16;\tsize:16;\tsigned:0;
\tfield:s64 delta;\toffset:32;\tsize:8;\tsigned:1;

print fmt: "filename=%s pid=%d comm=%s delta=%lld flags=%s", __get_str(filename), REC->pid, REC->comm, \
REC->delta, __print_flags(REC->pid, "|", { 1, "ONE" }, { 2, "TWO" })
"""


# print fmts with a GNU statement expression calling kernel functions (kvm_mmu_page's role), which
# libtraceevent cannot evaluate either (trace-cmd prints them through its kvm plugin)
STATEMENT_EXPRESSIONS = {"kvmmmu:kvm_mmu_get_page", "kvmmmu:kvm_mmu_prepare_zap_page", "kvmmmu:kvm_mmu_sync_page",
                         "kvmmmu:kvm_mmu_unsync_page"}


def test_reference_formats_parse_completely() -> None:
    fmts = reference_formats()
    assert {"kvm:kvm_exit", "kvm:kvm_msr", "nmi:nmi_handler", "msr:rdpmc", "sched:sched_wakeup"} <= set(fmts)
    for name, f in fmts.items():
        if name in STATEMENT_EXPRESSIONS:
            assert f.printer is None and "trace_seq_buffer_ptr" in f.print_fmt
            continue
        assert f.printer is not None, f"{name}: {f.fallback_reason}"
    ex = fmts["kvm:kvm_exit"]
    assert [(x.name, x.offset, x.size) for x in ex.fields][:3] == [("exit_reason", 8, 4), ("guest_rip", 16, 8),
                                                                    ("isa", 24, 4)]
    assert ex.id == 103


def test_kvm_exit_print_fmt_matches_kernel_text() -> None:
    p = reference_formats()["kvm:kvm_exit"].printer
    rec = dict(vcpu_id=1, exit_reason=28, isa=1, guest_rip=0xFFFFFFFF8100007A, info1=0, info2=0,
               intr_info=0, error_code=0, requests=0)
    # the kernel's text for this exit in lkml_krause_vmx_nested_6x_ftrace.txt (plus 6.18's requests field)
    assert p.render(rec) == ("vcpu 1 reason CR_ACCESS rip 0xffffffff8100007a info1 0x0000000000000000 info2 "
                             "0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 "
                             "requests 0x0000000000000000")
    rec.update(exit_reason=0x80000021)
    assert " reason INVALID_STATE FAILED_VMENTRY rip" in p.render(rec)
    rec.update(isa=2, exit_reason=0x64)
    assert " reason vintr rip" in p.render(rec)
    rec.update(exit_reason=0x12345)
    assert " reason 0x12345 rip" in p.render(rec)


def test_empty_symbol_table_that_perf_61_rejects() -> None:
    # libtraceevent in perf 6.1 fails on `__print_symbolic(REC->error_code, { })`; the kernel prints hex
    p = reference_formats()["kvm:kvm_inj_exception"].printer
    assert p.render(dict(exception=13, has_error=1, error_code=0, reinjected=0)) == "#GP (0x0)"
    assert p.render(dict(exception=14, has_error=1, error_code=3, reinjected=1)) == "#PF (0x3) [reinjected]"
    assert p.render(dict(exception=6, has_error=0, error_code=0, reinjected=0)) == "#UD"


def test_emulate_insn_hex_and_mode() -> None:
    p = reference_formats()["kvm:kvm_emulate_insn"].printer
    insn = bytes([0x0F, 0x00, 0xD8]) + bytes(12)
    # kernel text in the Krause snippet: "0:ffffffff810551b8:0f 00 d8 (prot64)"
    assert p.render(dict(csbase=0, rip=0xFFFFFFFF810551B8, insn=insn, len=3, flags=9, failed=0)) == \
        "0:ffffffff810551b8:0f 00 d8 (prot64)"


def test_symbol_tables_give_codes_for_text() -> None:
    codes = exit_reason_codes()
    assert codes["EPT_VIOLATION"] == (48, 1)
    assert codes["MSR_WRITE"] == (32, 1)
    assert codes["RDPMC"] == (15, 1)
    assert codes["msr"] == (0x7C, 2)
    assert codes["rdpmc"] == (0x6F, 2)
    assert codes["vintr"] == (0x64, 2)
    assert codes["npf"] == (0x400, 2)
    assert exception_vectors()["#GP"] == 13


def test_old_kvm_exit_layout_decodes_from_its_own_format() -> None:
    fmt = parse_format(KVM_EXIT_OLD, "kvm")
    assert fmt.field("vcpu_id") is None and fmt.record_size == 48
    recs = [struct.pack("<HBBiI4xQI4xQQ", 77, 0, 0, 1234, 48, 0xFFFF8000, 1, 0x683, 0x800000D1),
            struct.pack("<HBBiI4xQI4xQQ", 77, 0, 0, 99, 0x7C, 0x4004AE, 2, 1, 0)]
    buf = np.frombuffer(b"".join(recs), dtype=np.uint8)
    cols = decode_fields(fmt, buf, np.array([0, 48]), np.array([48, 48]))
    assert cols["common_pid"].tolist() == [1234, 99]
    assert cols["exit_reason"].tolist() == [48, 0x7C]
    assert cols["guest_rip"].tolist() == [0xFFFF8000, 0x4004AE]
    assert cols["info2"].tolist() == [0x800000D1, 0]
    rows = [dict(exit_reason=48, isa=1, guest_rip=0xFFFF8000, info1=0x683, info2=0x800000D1)]
    # the same text trace-cmd printed for such a kernel (lkml_rak snippet)
    assert fmt.printer.render(rows[0]) == "reason EPT_VIOLATION rip 0xffff8000 info 683 800000d1"


def test_data_loc_strings_arrays_signed_and_flags() -> None:
    fmt = parse_format(STRINGY, "sched")
    f = fmt.field("filename")
    assert f is not None and f.data_loc and f.is_string
    assert fmt.field("comm").array_len == 16
    name = b"/usr/bin/qemu\0"
    loc = (len(name) << 16) | 40
    rec = struct.pack("<HBBiIi16sq", 300, 0, 0, 7, loc, 3, b"qemu-kvm", -5) + name
    buf = np.frombuffer(rec + bytes(8), dtype=np.uint8)
    cols = decode_fields(fmt, buf, np.array([0]), np.array([len(rec)]))
    assert cols["filename"].to_pylist() == ["/usr/bin/qemu"]
    assert cols["comm"].to_pylist() == ["qemu-kvm"]
    assert cols["delta"].tolist() == [-5]
    r = {k: (v.tolist()[0] if hasattr(v, "tolist") else v.to_pylist()[0]) for k, v in cols.items()}
    assert fmt.printer.render(r) == "filename=/usr/bin/qemu pid=3 comm=qemu-kvm delta=-5 flags=ONE|TWO"


def test_truncated_record_reads_zero_not_neighbour_bytes() -> None:
    fmt = parse_format(KVM_EXIT_OLD, "kvm")
    full = struct.pack("<HBBiI4xQI4xQQ", 77, 0, 0, 1, 48, 1, 1, 2, 3)
    buf = np.frombuffer(full[:24] + b"\xff" * 24, dtype=np.uint8)
    cols = decode_fields(fmt, buf, np.array([0]), np.array([24]))
    assert cols["info1"].tolist() == [0] and cols["isa"].tolist() == [0]


@pytest.mark.parametrize("bad", ['"%s", sizeof(REC->x)', '"%d", foo(REC->x)'])
def test_unsupported_print_fmt_falls_back_with_reason(bad: str) -> None:
    text = KVM_EXIT_OLD.split("print fmt:")[0] + "print fmt: " + bad + "\n"
    fmt = parse_format(text, "kvm")
    assert fmt.printer is None
    assert fmt.fallback_reason


_INT_DTYPES = [np.uint8, np.int8, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_factorize_rows_codes_each_distinct_tuple_once(data) -> None:
    """The direct-table path (small value ranges), the hash path and the sort path (wider than 64
    bits) all give each distinct tuple of field values its own code, and each code its first row."""
    n = data.draw(st.integers(1, 300))
    arrays = []
    for _ in range(data.draw(st.integers(1, 2))):
        dt = np.dtype(data.draw(st.sampled_from(_INT_DTYPES)))
        info = np.iinfo(dt)
        span = data.draw(st.sampled_from([3, 1000, None]))  # small, medium, or the dtype's whole range
        lo = data.draw(st.integers(int(info.min), int(info.max)))
        hi = int(info.max) if span is None else min(int(info.max), lo + span)
        arrays.append(np.array(data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), dtype=dt))
    codes, first = factorize_rows(arrays)
    rows = list(zip(*(a.tolist() for a in arrays), strict=True))
    code_of: dict[tuple, int] = {}
    for r, c in zip(rows, codes.tolist(), strict=True):
        assert code_of.setdefault(r, c) == c  # one code per tuple
    assert len(set(code_of.values())) == len(code_of)  # and one tuple per code
    assert sorted(code_of.values()) == list(range(len(code_of)))
    assert [rows.index(r) for r in sorted(code_of, key=code_of.get)] == first.tolist()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_scalar_fields_decode_as_struct_unpacks_them(data: st.DataObject) -> None:
    """Scalar fields of any width, signedness and byte order, in records of any length: each
    value equals struct.unpack of its bytes, and a field past its record's end reads 0."""
    from vpmutrace.formats.event_format import EventFormat, Field

    order = data.draw(st.sampled_from("<>"))
    specs = data.draw(st.lists(st.tuples(st.sampled_from([1, 2, 4, 8]), st.booleans()), min_size=1, max_size=6))
    fields, at = [], 8
    for k, (size, signed) in enumerate(specs):
        at = -(-at // size) * size
        fields.append(Field(f"f{k}", "int" if signed else "unsigned", at, size, signed))
        at += size
    fmt = EventFormat("s", "e", 1, fields, [Field("common_type", "unsigned short", 0, 2, False)], "")
    n = data.draw(st.integers(0, 40))
    raw = data.draw(st.binary(min_size=n * at, max_size=n * at))
    lengths = np.array([data.draw(st.integers(0, at)) for _ in range(n)], dtype=np.int64)
    offsets = np.arange(n, dtype=np.int64) * at
    cols = decode_fields(fmt, np.frombuffer(raw, np.uint8), offsets, lengths, order)
    letters = {1: "b", 2: "h", 4: "i", 8: "q"}
    for f in fields:
        code = order + (letters[f.size] if f.signed else letters[f.size].upper())
        want = [struct.unpack_from(code, raw, o + f.offset)[0] if f.offset + f.size <= ln else 0
                for o, ln in zip(offsets.tolist(), lengths.tolist(), strict=True)]
        assert cols[f.name].tolist() == want, f
        assert cols[f.name].dtype == np.dtype(f"{'i' if f.signed else 'u'}{f.size}")


def test_array_declared_longer_than_its_size_is_read_as_its_size() -> None:
    """A vendor arm32 kernel (public lisa_arm32_sched_hmp_noclock.dat) declares 'char comm[32]' in 16
    bytes; trace-cmd reads the 16 bytes the size gives, and so do we (no bad format)."""
    from vpmutrace.formats.event_format import parse_format

    f = parse_format("name: sched_process_exec\nID: 62\nformat:\n"
                     "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
                     "\tfield:char comm[32];\toffset:8;\tsize:16;\tsigned:0;\n\n"
                     'print fmt: "comm=%s", REC->comm\n', "sched")
    comm = next(x for x in f.fields if x.name == "comm")
    assert (comm.offset, comm.size, comm.array_len, comm.elem_size) == (8, 16, 16, 1)
