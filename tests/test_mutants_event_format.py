"""formats/event_format.py: every field line of a real kernel's 446 format descriptions (the ones
fixtures/allevents.trace.dat carries) read to the offset, size and sign the line states; the
layouts libtraceevent gives the kinds of field a kernel writes (char arrays, ``char buf[]`` of size
0, ``__data_loc``, pointers, u8 arrays); and each rule of the parser at its edge. Written to kill the
mutants mutmut left alive (docs/reliability.md, Mutation testing).

Format grammar: kernel/trace/trace_events.c f_show; field reading: libtraceevent event-parse.c.
"""

from __future__ import annotations

import re
from functools import cache

import pytest
from conftest import COMMON_FORMAT_FIELDS, FIXTURES

from vpmutrace.errors import BadFormat
from vpmutrace.formats.event_format import (
    ARRAY,
    BYTES,
    CHARS,
    MAX_RECORD,
    SCALAR,
    EventFormat,
    parse_format,
    parse_header_page,
)
from vpmutrace.formats.known import reference_ring_headers
from vpmutrace.readers.trace_dat import content_of

# one field line as f_show prints it, split without the parser's regexes
_LINE = re.compile(r"^\s*field(?: special)?:(.*?);\s*offset:(\d+);\s*size:(\d+);\s*signed:(\d+);", re.M)


@cache
def _texts() -> list[tuple[str, str]]:
    c = content_of(FIXTURES / "allevents.trace.dat")
    return [("ftrace", t.decode()) for t in c.ftrace_formats] + \
        [(s, t.decode()) for s, ts in c.event_formats.items() for t in ts]


@cache
def _formats() -> dict[str, EventFormat]:
    return {f.full_name: f for f in (parse_format(t, s) for s, t in _texts())}


def test_every_field_line_of_a_real_kernel_reads_as_written() -> None:
    assert len(_texts()) == len(_formats()) == 446
    for system, text in _texts():
        f = parse_format(text, system)
        assert f.system == system and f.full_name == f"{system}:{f.name}"
        assert f.name == re.search(r"^name: (\S+)$", text, re.M).group(1)
        assert f.id == int(re.search(r"^ID: (\d+)$", text, re.M).group(1))
        assert f.print_fmt == text.split("print fmt: ", 1)[1].strip() != ""
        assert f.text == text
        lines = _LINE.findall(text)
        got = f.common_fields + f.fields
        assert len(got) == len(lines)
        for x, (decl, off, size, signed) in zip(got, lines, strict=True):
            assert (x.offset, x.size, x.signed) == (int(off), int(size), signed == "1"), (f.full_name, decl)
            assert re.search(rf"\b{x.name}\b", decl), (f.full_name, decl)
            assert x.name.startswith("common_") == (x in f.common_fields)
            assert f.field(x.name) is x
        assert [x.name for x in f.common_fields] == ["common_type", "common_flags", "common_preempt_count",
                                                     "common_pid"]
        assert f.record_size == max(x.offset + x.size for x in got)
        assert f.field("no_such_field") is None


def _field(event: str, name: str):
    x = _formats()[event].field(name)
    assert x is not None
    return x


@pytest.mark.parametrize("event,name,want", [
    # (type, offset, size, signed, array_len, data_loc, is_pointer, kind, elem_size, flexible)
    ("sched:sched_switch", "prev_comm", ("char", 8, 16, False, 16, False, False, CHARS, 1, False)),
    ("sched:sched_switch", "prev_state", ("long", 32, 8, True, None, False, False, SCALAR, 8, False)),
    ("sched:sched_switch", "next_pid", ("pid_t", 56, 4, True, None, False, False, SCALAR, 4, False)),
    ("sched:sched_process_exec", "filename", ("char", 8, 4, False, None, True, False, CHARS, 1, False)),
    ("ftrace:print", "buf", ("char", 16, 0, False, 0, False, False, CHARS, 0, True)),
    ("ftrace:bprint", "buf", ("u32", 24, 0, False, 0, False, False, BYTES, 0, True)),
    ("ftrace:bprint", "fmt", ("const char", 16, 8, False, None, False, True, SCALAR, 8, False)),
    ("ftrace:function", "args", ("unsigned long", 24, 0, False, 0, False, False, BYTES, 0, True)),
    ("kvm:kvm_emulate_insn", "insn", ("__u8", 21, 15, False, 15, False, False, BYTES, 1, False)),
    ("kvm:kvm_msr", "write", ("unsigned", 8, 4, False, None, False, False, SCALAR, 4, False)),
    ("x86_fpu:x86_fpu_regs_activated", "load_fpu", ("bool", 16, 1, False, None, False, False, SCALAR, 1, False)),
])
def test_real_fields_of_each_kind(event: str, name: str, want: tuple) -> None:
    x = _field(event, name)
    got = (x.type, x.offset, x.size, x.signed, x.array_len, x.data_loc, x.is_pointer, x.kind, x.elem_size, x.flexible)
    assert got == want
    assert not x.rel_loc and x.dynamic == x.data_loc and x.is_string == (want[7] == CHARS)


def test_real_arrays_of_integers() -> None:
    arrays = sorted((n, x.name, x.type, x.array_len, x.elem_size) for n, f in _formats().items() for x in f.fields
                    if x.kind == ARRAY)
    assert arrays == [("ftrace:kernel_stack", "caller", "unsigned long", 8, 8),
                      ("ftrace:user_stack", "caller", "unsigned long", 8, 8),
                      ("raw_syscalls:sys_enter", "args", "unsigned long", 6, 8)]


def _one(decl: str, offset: int = 8, size: int = 4, signed: str | None = "0", system: str = "s") -> EventFormat:
    tail = f"\tsigned:{signed};" if signed is not None else ""
    return parse_format(f"name: ev\nID: 7\nformat:\n{COMMON_FORMAT_FIELDS}\n\tfield:{decl};\toffset:{offset};"
                        f"\tsize:{size};{tail}\n\nprint fmt: \"x\"\n", system)


@pytest.mark.parametrize("decl,size,want", [
    # (type, array_len, data_loc, rel_loc, is_pointer, kind, elem_size)
    ("__data_loc char[] name", 4, ("char", None, True, False, False, CHARS, 1)),
    ("__rel_loc char[] name", 4, ("char", None, False, True, False, CHARS, 1)),
    ("__data_loc u64[] ids", 4, ("u64", None, True, False, False, ARRAY, 8)),
    ("__data_loc u16[] ids", 4, ("u16", None, True, False, False, ARRAY, 2)),
    ("__data_loc u32[] ids", 4, ("u32", None, True, False, False, ARRAY, 4)),
    ("__data_loc u8[] raw", 4, ("u8", None, True, False, False, BYTES, 1)),
    ("__rel_loc struct foo[] raw", 4, ("struct foo", None, False, True, False, BYTES, 1)),
    ("__data_loc int[] v", 4, ("int", None, True, False, False, ARRAY, 4)),
    ("__data_loc unsigned long[] v", 4, ("unsigned long", None, True, False, False, ARRAY, 8)),
    ("__data_loc short[] v", 4, ("short", None, True, False, False, ARRAY, 2)),
    ("__data_loc const char[] v", 4, ("const char", None, True, False, False, CHARS, 1)),
    ("__data_loc signed char[] v", 4, ("signed char", None, True, False, False, CHARS, 1)),
    ("u32 regs[TASK_REGS]", 24, ("u32", 6, False, False, False, ARRAY, 4)),
    ("u64 vals[3]", 24, ("u64", 3, False, False, False, ARRAY, 8)),
    ("u16 vals[5]", 10, ("u16", 5, False, False, False, ARRAY, 2)),
    ("u16 odd[3]", 7, ("u16", 3, False, False, False, BYTES, 2)),
    ("char name [ 8 ]", 8, ("char", 8, False, False, False, CHARS, 1)),
    ("unsigned char mac[6]", 6, ("unsigned char", 6, False, False, False, BYTES, 1)),
    ("char buf", 0, ("char", 0, False, False, False, CHARS, 0)),
    ("void *ptr", 0, ("void", None, False, False, True, BYTES, 0)),
    ("char *name", 8, ("char", None, False, False, True, SCALAR, 8)),
    ("struct foo blob", 12, ("struct foo", None, False, False, False, BYTES, 12)),
    ("u64 big", 8, ("u64", None, False, False, False, SCALAR, 8)),
    ("u16 half", 2, ("u16", None, False, False, False, SCALAR, 2)),
    ("u8 byte", 1, ("u8", None, False, False, False, SCALAR, 1)),
])
def test_declarations(decl: str, size: int, want: tuple) -> None:
    x = _one(decl, size=size).fields[0]
    assert (x.type, x.array_len, x.data_loc, x.rel_loc, x.is_pointer, x.kind, x.elem_size) == want
    assert x.dynamic == (x.data_loc or x.rel_loc) and x.size == size and x.offset == 8
    assert x.flexible == (x.array_len == 0 and size == 0 and not x.dynamic)


SIZES = {1: "char u8 s8 __u8 __s8 bool _Bool uint8_t int8_t", 2: "short u16 s16 __u16 __s16 uint16_t int16_t",
         4: "int u32 s32 __u32 __s32 uint32_t int32_t pid_t", 8: "long u64 s64 __u64 __s64 uint64_t int64_t size_t "
         "ssize_t loff_t"}


@pytest.mark.parametrize("ctype,size", [(t, n) for n, ts in SIZES.items() for t in ts.split()] + [
    ("unsigned char", 1), ("signed char", 1), ("const char", 1), ("unsigned short", 2), ("unsigned int", 4),
    ("signed int", 4), ("const u32", 4), ("unsigned", 4), ("signed", 4), ("unsigned long", 8), ("long long", 8),
    ("unsigned long long", 8), ("const unsigned long", 8), ("struct page", 1), ("enum x", 1)])
def test_element_sizes_of_c_types(ctype: str, size: int) -> None:
    """A dynamic array's elements and a symbolic-length array's count follow the C type's size on a
    64-bit kernel (unknown types: bytes)."""
    assert _one(f"__data_loc {ctype}[] v").fields[0].elem_size == size
    assert _one(f"{ctype} v[N]", size=24).fields[0].array_len == 24 // size


def test_symbolic_length_and_declared_longer_than_size_follow_size() -> None:
    """A length that is not a number is what ``size:`` holds in elements of the declared type; a
    declared length of more elements than ``size:`` has bytes is cut to that. Otherwise the declared
    length stands and an element is size / length bytes, as libtraceevent's elementsize (event-parse.c,
    event_read_fields): "unsigned long args[6]; size:24" is six 4-byte longs on a 32-bit kernel."""
    assert _one("char comm[TASK_COMM_LEN]", size=16).fields[0].array_len == 16
    assert _one("u64 v[N]", size=16).fields[0].array_len == 2
    assert _one("char comm[32]", size=16).fields[0].array_len == 16
    assert _one("struct x v[9]", size=4).fields[0].array_len == 4  # unknown element type: bytes
    assert _one("u64 v[17]", size=16).fields[0].array_len == 2
    longs = _one("unsigned long args[6]", size=24).fields[0]
    assert (longs.array_len, longs.elem_size, longs.kind) == (6, 4, ARRAY)
    same = _one("u16 v[4]", size=4).fields[0]  # as many elements as bytes: kept
    assert (same.array_len, same.elem_size, same.kind) == (4, 1, BYTES)


def test_signed_column() -> None:
    assert _one("int v", signed="1").fields[0].signed is True
    assert _one("int v", signed="0").fields[0].signed is False
    assert _one("int v", signed=None).fields[0].signed is False  # (kernels before 2.6.31 print no signed:)


def test_special_fields_and_print_fmt_over_several_lines() -> None:
    f = parse_format("name: x\nID: 12\nformat:\n\tfield special:const char * s;\toffset:0;\tsize:8;\tsigned:0;\n"
                     "\nprint fmt: \"%s\",\n  REC->s\nignored: 1\n", "sys")
    assert [(x.name, x.is_pointer) for x in f.fields] == [("s", True)] and f.common_fields == []
    assert f.print_fmt == "\"%s\",\n  REC->s\nignored: 1" and f.id == 12
    assert f.record_size == 8 and f.full_name == "sys:x"
    assert parse_format("name: lone\nformat:\n").full_name == "lone"
    assert parse_format("name: lone\nformat:\n").id == -1 and parse_format("name: lone\n").record_size == 0


def test_record_bounds() -> None:
    assert _one("u32 v", offset=MAX_RECORD - 4, size=4).record_size == MAX_RECORD
    with pytest.raises(BadFormat, match=r"line 9: field v at offset 1048573, 4 bytes, ends past 1048576"):
        _one("u32 v", offset=MAX_RECORD - 3, size=4)
    for size in (2, 8):
        with pytest.raises(BadFormat, match=rf"line 9: dynamic field s has size {size}, not 4"):
            _one("__data_loc char[] s", size=size)
    with pytest.raises(BadFormat, match="dynamic field s has size 8"):
        _one("__rel_loc char[] s", size=8)


@pytest.mark.parametrize("text,msg", [
    ("name: x\nID: 1a\n", r"line 2: ID '1a' is not a number"),
    ("name: x\nID: \n", r"line 2: ID '' is not a number"),
    ("ID: 3\nformat:\n", "format has no 'name:' line"),
    ("name: \nID: 3\n", "format has no 'name:' line"),
    ("name: x\nformat:\n\tfield:int a;\toffset:x;\tsize:4;\n", r"line 3: malformed field line 'field:int a;"),
    ("name: x\nformat:\n\tfield:int *;\toffset:0;\tsize:4;\n", r"cannot parse field declaration 'int \*'"),
])
def test_bad_descriptions(text: str, msg: str) -> None:
    with pytest.raises(BadFormat, match=msg):
        parse_format(text)


def test_printer_and_fallback_reason() -> None:
    good = _formats()["sched:sched_switch"]
    assert good.printer is not None and good.fallback_reason is None
    bad = _formats()["kvmmmu:kvm_mmu_get_page"]  # a GNU statement expression (libtraceevent cannot either)
    assert bad.printer is None and bad.fallback_reason
    # scalar fields' sizes reach the parser (sizeof(REC->x)); arrays and dynamic fields do not
    f = _one("u16 v", size=2)
    f.print_fmt = "\"%d\", sizeof(REC->v)"
    assert f.printer is not None


def test_header_page_of_64_and_32_bit_kernels() -> None:
    page, _ = reference_ring_headers()
    assert parse_header_page(page.decode()) == {"timestamp": (0, 8), "commit": (8, 8), "overwrite": (8, 1),
                                                "data": (16, 4080)}
    text32 = ("\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\tfield: local_t commit;\toffset:8;\t"
              "size:4;\tsigned:1;\n\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n"
              "\tfield: char data;\toffset:12;\tsize:4084;\tsigned:1;\n")
    assert parse_header_page(text32) == {"timestamp": (0, 8), "commit": (8, 4), "overwrite": (8, 1),
                                         "data": (12, 4084)}
    assert parse_header_page("\tfield: long commit;\toffset:8;\tsize:8;\n\tfield:char data[];\toffset:16;"
                             "\tsize:4080;\n") == {"commit": (8, 8), "data": (16, 4080)}
