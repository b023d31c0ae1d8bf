"""The tracing-data block shared by trace.dat v6 and perf.data's HEADER_TRACING_DATA.

Layout (trace-cmd.dat.v6(5); tools/perf/util/trace-event-info.c): header_page,
header_event, ftrace formats, event formats per system, kallsyms, printk formats,
saved cmdlines. trace.dat v7 stores the same pieces as separate sections; the
per-piece parsers here serve both.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from vpmutrace.errors import InputError
from vpmutrace.formats.event_format import EventFormat, parse_format, parse_header_page
from vpmutrace.readers.binio import Cursor


@dataclass
class TracingData:
    header_page: dict[str, tuple[int, int]] = field(default_factory=dict)
    formats: dict[int, EventFormat] = field(default_factory=dict)
    kallsyms: Kallsyms | None = None
    cmdlines: dict[int, str] = field(default_factory=dict)
    bad_formats: list[str] = field(default_factory=list)
    # the texts as stored, so a file can be re-written (writers/trace_dat.py)
    raw: dict[str, Any] = field(default_factory=lambda: {"ftrace": [], "events": {}})


class Kallsyms:
    """Address -> symbol name for %ps/%pS printing (nearest symbol at or below the address)."""

    def __init__(self, text: str) -> None:
        pairs: list[tuple[int, str]] = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                try:
                    pairs.append((int(parts[0], 16), parts[2]))
                except ValueError:
                    continue
        pairs.sort()
        self.addrs = [a for a, _ in pairs]
        self.names = [n for _, n in pairs]

    def __call__(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0 or self.addrs[i] == 0:
            return None
        return self.names[i] if self.addrs[i] == addr else f"{self.names[i]}+0x{addr - self.addrs[i]:x}"


def read_header_info(c: Cursor, td: TracingData) -> None:
    c.expect(b"header_page\0", "header_page tag")
    size = c.u64()
    td.raw["header_page"] = c.bytes(size)
    td.header_page = parse_header_page(td.raw["header_page"].decode("utf-8", "replace"))
    c.expect(b"header_event\0", "header_event tag")
    td.raw["header_event"] = c.bytes(c.u64())


def _add_format(td: TracingData, text: bytes, system: str, path: str) -> None:
    try:
        fmt = parse_format(text.decode("utf-8", "replace"), system)
    except ValueError as e:
        td.bad_formats.append(f"{system}: {e}")
        return
    td.formats[fmt.id] = fmt


def read_ftrace_formats(c: Cursor, td: TracingData) -> None:
    for _ in range(c.u32()):
        text = c.bytes(c.u64())
        td.raw["ftrace"].append(text)
        _add_format(td, text, "ftrace", c.path)


def read_event_formats(c: Cursor, td: TracingData) -> None:
    for _ in range(c.u32()):
        system = c.cstr()
        for _ in range(c.u32()):
            text = c.bytes(c.u64())
            td.raw["events"].setdefault(system, []).append(text)
            _add_format(td, text, system, c.path)


def read_kallsyms(c: Cursor, td: TracingData) -> None:
    size = c.u32()
    td.raw["kallsyms"] = c.bytes(size)
    if size:
        td.kallsyms = Kallsyms(td.raw["kallsyms"].decode("utf-8", "replace"))


def read_printk(c: Cursor, td: TracingData) -> None:
    td.raw["printk"] = c.bytes(c.u32())


def read_cmdlines(c: Cursor, td: TracingData) -> None:
    td.raw["cmdlines"] = c.bytes(c.u64())
    for line in td.raw["cmdlines"].decode("utf-8", "replace").splitlines():
        pid, _, comm = line.strip().partition(" ")
        if pid.lstrip("-").isdigit():
            td.cmdlines[int(pid)] = comm


def read_tracing_block(c: Cursor, with_cmdlines: bool = True) -> tuple[TracingData, str, int, int]:
    """Parse the v6-style block from its magic. Returns (data, version, long size, page size)."""
    c.expect(b"\x17\x08\x44tracing", "tracing magic")
    version = c.cstr()
    endian = c.u8()
    c.endian = ">" if endian else "<"
    long_size = c.u8()
    page_size = c.u32()
    td = TracingData()
    read_header_info(c, td)
    read_ftrace_formats(c, td)
    read_event_formats(c, td)
    read_kallsyms(c, td)
    read_printk(c, td)
    try:
        v = float(version)
    except ValueError:
        raise c.fail(f"bad tracing data version {version!r}") from None
    if with_cmdlines and v >= 0.6 and c.left >= 8:
        read_cmdlines(c, td)
    return td, version, long_size, page_size


__all__ = ["TracingData", "Kallsyms", "read_tracing_block", "InputError"]
