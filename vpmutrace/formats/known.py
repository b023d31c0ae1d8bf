"""Formats of a reference kernel, for inputs that carry none (ftrace / perf script text).

Binary inputs always use their own embedded formats. Text traces only carry the
printed names ("EPT_VIOLATION", "#GP"), so the numbers behind the names come from
the symbol tables in the Linux 6.18 format files bundled in ``data/`` (kernel ABI
text, read from tracefs).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from vpmutrace.formats.event_format import EventFormat, parse_format
from vpmutrace.formats.printfmt import Node


@cache
def reference_format_texts() -> dict[str, bytes]:
    """{"system:event": format file text} of the bundled reference kernel."""
    text = resources.files("vpmutrace.formats").joinpath("data/linux-6.18.formats").read_text()
    parts = re.split(r"^=+ events/(\w+)/(\w+)/format\n", text, flags=re.M)
    return {f"{parts[i]}:{parts[i + 1]}": parts[i + 2].rstrip("\n").encode() + b"\n"
            for i in range(1, len(parts), 3)}


@cache
def reference_ring_headers() -> tuple[bytes, bytes]:
    """events/header_page and events/header_event of the reference kernel (64-bit)."""
    d = resources.files("vpmutrace.formats").joinpath("data")
    return d.joinpath("header_page").read_bytes(), d.joinpath("header_event").read_bytes()


@cache
def reference_formats() -> dict[str, EventFormat]:
    """{"system:event": EventFormat} of the bundled reference kernel."""
    text = resources.files("vpmutrace.formats").joinpath("data/linux-6.18.formats").read_text()
    parts = re.split(r"^=+ events/(\w+)/(\w+)/format\n", text, flags=re.M)
    out: dict[str, EventFormat] = {}
    for i in range(1, len(parts), 3):
        fmt = parse_format(parts[i + 2], parts[i])
        out[fmt.full_name] = fmt
    return out


def symbol_tables(fmt: EventFormat) -> list[list[tuple[int, str]]]:
    """Every __print_symbolic table of an event's print fmt, in order of appearance."""
    p = fmt.printer
    if p is None:
        return []
    tables: list[list[tuple[int, str]]] = []

    def walk(n: Node) -> None:
        if not isinstance(n, tuple):
            return
        if n[0] == "call" and n[1].startswith("__print_symbolic"):
            tbl: list[tuple[int, str]] = []
            for item in n[2][1:]:
                if item[0] == "list" and len(item[1]) == 2:
                    v, s = item[1]
                    tbl.append((_const(v), _const(s)))
            tables.append(tbl)
        for x in n[1:]:
            if isinstance(x, tuple):
                walk(x)
            elif isinstance(x, list):
                for y in x:
                    walk(y)

    for a in p.args:
        walk(a)
    return tables


def _const(n: Node):
    from vpmutrace.formats.printfmt import const_eval

    return const_eval(n)


@cache
def exit_reason_codes() -> dict[str, tuple[int, int]]:
    """Exit reason name -> (code, isa) with isa 1 = VMX, 2 = SVM (names do not overlap)."""
    fmt = reference_formats()["kvm:kvm_exit"]
    vmx, svm = symbol_tables(fmt)[:2]
    out: dict[str, tuple[int, int]] = {}
    for code, name in svm:
        out[name] = (code & 0xFFFFFFFF, 2)
    for code, name in vmx:
        out[name] = (code, 1)
    return out


VMX_REASON_FLAGS = {"FAILED_VMENTRY": 0x80000000}


@cache
def exception_vectors() -> dict[str, int]:
    """'#GP' -> 13, from kvm_inj_exception's symbol table."""
    fmt = reference_formats()["kvm:kvm_inj_exception"]
    return {name: code for code, name in symbol_tables(fmt)[0]}


@cache
def userspace_exit_codes() -> dict[str, int]:
    fmt = reference_formats()["kvm:kvm_userspace_exit"]
    return {name: code for code, name in symbol_tables(fmt)[0]}
