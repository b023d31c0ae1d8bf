"""ftrace:bprint records (trace_printk() with a constant format) printed as trace-cmd 3.2 prints them.

The record holds the caller's IP, the address of the format string (``fmt``, looked up in the
trace's printk section) and the arguments packed by the kernel's vbin_printf() (``buf``, the rest of
the record). Its print fmt (``"%ps: %s", REC->ip, REC->fmt``) is not what is printed: libtraceevent
1.8.2 (src/event-parse.c) prints ``"%ps: " + the format string`` with arguments read from ``buf``:

- get_bprint_format(): the format found at ``fmt`` in the printk section (quotes and one trailing
  ``\\n`` removed: kernel_maps.parse_printk), else ``(NO FORMAT FOUND at <addr>)`` and a newline;
- make_bprint_args() walks the format's conversions: ``%d %u %i %x %X %o`` read 4 bytes, with
  ``l`` / ``z`` / ``Z`` the file's long size, with ``ll`` / ``L`` 8; ``%p`` reads a long, except
  ``%p`` + an extension other than s, S, x, f, F (f, F not followed by w) whose first byte is
  printable, which is a NUL-terminated string like ``%s``; ``*`` reads a 4-byte width or
  precision; numbers are read at the next 4-byte boundary of the record; ``%%`` and any other
  letter (``h``, ``c``) read nothing; reading stops at the record's end;
- parse_args() then splits the format as any print fmt (printfmt.parse_conversions) and
  parse_arg_string() turns ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` into their characters and drops the
  backslash of any other escape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vpmutrace.formats.printfmt import Node, PrintFmt, parse_conversions

EVENT = "ftrace:bprint"  # libtraceevent: system "ftrace", event "bprint" (TEP_EVENT_FL_ISBPRINT)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def has_fields(rec: Mapping[str, Any]) -> bool:
    """Whether a row holds what a bprint record is printed from (ip and fmt numbers, buf bytes)."""
    return isinstance(rec.get("ip"), int) and isinstance(rec.get("fmt"), int) and isinstance(rec.get("buf"), bytes)


def _unescape(s: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append(_ESCAPES.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _printable(b: int) -> bool:
    return 0x20 <= b < 0x7F  # isprint() of a (signed) char in the C locale


def args(fmt: str, buf: bytes, buf_offset: int, long_size: int, order: str) -> list[Node]:
    """The arguments make_bprint_args() reads from ``buf`` for the format ``fmt`` (after "%ps: ");
    ``buf_offset``: where ``buf`` starts in the record (numbers are 4-byte aligned in the record)."""
    out: list[Node] = []
    pos, i, n = 0, 0, len(fmt)

    def number(size: int) -> None:
        nonlocal pos
        pos = (buf_offset + pos + 3) // 4 * 4 - buf_offset
        raw = buf[pos:pos + size].ljust(size, b"\0")
        out.append(("num", int.from_bytes(raw, order) if size in (1, 2, 4, 8) else 0, (64, False)))
        pos += size

    def string() -> None:
        nonlocal pos
        end = buf.find(b"\0", pos)
        end = len(buf) if end < 0 else end
        out.append(("str", buf[pos:end].decode("utf-8", "surrogateescape")))
        pos = end + 1

    while i < n and pos < len(buf):
        if fmt[i] == "%":
            ls = 0
            while True:  # (process_again)
                i += 1
                c = fmt[i] if i < n else "\0"
                if c == "l":
                    ls += 1
                elif c == "L":
                    ls = 2
                elif c in "0123456789.#+":
                    pass
                elif c in "zZ":
                    ls = 1
                elif c == "*":
                    number(4)
                elif c == "s":
                    string()
                    break
                elif c == "p" or c in "duixXo":
                    if c == "p":
                        ls = 1
                        if i + 1 < n and fmt[i + 1].isascii() and fmt[i + 1].isalnum():
                            i += 1
                            ext = fmt[i]
                            symbol = ext in "sSx" or (ext in "fF" and fmt[i + 1:i + 2] != "w")
                            if not symbol and pos < len(buf) and _printable(buf[pos]):
                                string()
                                break
                    number({0: 4, 1: long_size, 2: 8}.get(ls, ls))
                    break
                else:  # %%, h, c, anything else: no argument
                    break
        i += 1
    return out


def printfmt(printk: Mapping[int, str], fmt_addr: int, ip: int, buf: bytes, buf_offset: int, long_size: int,
             order: str) -> PrintFmt:
    """What libtraceevent prints for one bprint record, as a print fmt with its arguments."""
    found = printk.get(fmt_addr)
    fmt = found if found is not None else f"(NO FORMAT FOUND at {fmt_addr:x})\n"
    convs, tail = parse_conversions("%ps: " + _unescape(fmt))
    return PrintFmt(convs, tail, [("num", ip, (64, False)), *args(fmt, buf, buf_offset, long_size, order)])
