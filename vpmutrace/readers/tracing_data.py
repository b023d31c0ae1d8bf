"""The tracing-data block shared by trace.dat v6 and perf.data's HEADER_TRACING_DATA.

Layout (trace-cmd.dat.v6(5); tools/perf/util/trace-event-info.c): header_page,
header_event, ftrace formats, event formats per system, kallsyms, printk formats,
saved cmdlines. trace.dat v7 stores the same pieces as separate sections; the
per-piece parsers here serve both.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from vpmutrace.errors import BadFormat, InputError
from vpmutrace.formats.event_format import EventFormat, parse_format, parse_header_page
from vpmutrace.readers.binio import Cursor

_ID_RE = re.compile(rb"^ID:\s*(\d+)", re.M)


class Formats(Mapping[int, EventFormat]):
    """Event formats by id, each parsed when first asked for: a trace.dat carries the format of
    every event of its kernel (thousands), of which a trace uses a few. A format that does not
    parse is not there, and ``bad`` says why."""

    def __init__(self, parsed: dict[int, EventFormat] | None = None) -> None:
        self._texts: dict[int, tuple[bytes, str]] = {}
        self._parsed: dict[int, EventFormat | None] = dict(parsed or {})
        self.bad: list[str] = []

    def add(self, text: bytes, system: str) -> None:
        m = _ID_RE.search(text)
        if m is None:  # no ID line: the parse says what is wrong
            self._parse(text, system)
            return
        ev_id = int(m.group(1))
        if ev_id in self._texts:
            self.bad.append(f"{system}: ID {ev_id} is the ID of two formats (the later one kept)")
        self._texts[ev_id] = (text, system)

    def update(self, parsed: Mapping[int, EventFormat]) -> None:
        """Add formats parsed elsewhere (this host's, readers/local_formats.py)."""
        self._parsed.update(parsed)

    def _parse(self, text: bytes, system: str) -> EventFormat | None:
        try:
            return parse_format(text.decode("utf-8", "replace"), system)
        except BadFormat as e:
            self.bad.append(f"{system}: {e}")
            return None

    def __getitem__(self, event_id: int) -> EventFormat:
        if event_id not in self._parsed:
            text = self._texts.get(event_id)
            self._parsed[event_id] = self._parse(*text) if text is not None else None
        fmt = self._parsed[event_id]
        if fmt is None:
            raise KeyError(event_id)
        return fmt

    def __iter__(self) -> Iterator[int]:
        return iter(set(self._texts) | {k for k, v in self._parsed.items() if v is not None})

    def __len__(self) -> int:
        return len(set(self._texts) | {k for k, v in self._parsed.items() if v is not None})


@dataclass
class TracingData:
    header_page: dict[str, tuple[int, int]] = field(default_factory=dict)
    formats: Mapping[int, EventFormat] = field(default_factory=Formats)
    kallsyms: Kallsyms | None = None
    cmdlines: dict[int, str] = field(default_factory=dict)
    # the texts as stored, so a file can be re-written (writers/trace_dat.py)
    raw: dict[str, Any] = field(default_factory=lambda: {"ftrace": [], "events": {}})

    @property
    def bad_formats(self) -> list[str]:
        return self.formats.bad if isinstance(self.formats, Formats) else []


class Kallsyms:
    """Address -> symbol name for %ps/%pS printing (nearest symbol at or below the address). The
    text (/proc/kallsyms: a hundred thousand lines) is parsed on the first lookup."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.addrs: list[int] = []
        self.names: list[str] = []
        self._parsed = False

    def _parse(self) -> None:
        self._parsed = True
        pairs: list[tuple[int, str]] = []
        for line in self.text.splitlines():
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
        if not self._parsed:
            self._parse()
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
    assert isinstance(td.formats, Formats)
    td.formats.add(text, system)


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
