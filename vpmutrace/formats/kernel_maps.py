"""The recording kernel's address maps a print fmt is printed with, read as trace-cmd reads them.

- :class:`FunctionMap`, from the trace's kallsyms text: ``%ps``/``%pS`` name an address by the
  symbol at or below it, and a print fmt's bare identifier that is not a number (an enum the
  kernel did not export, a variable such as ``jiffies``) reads as that symbol's address, or 0.
- :func:`parse_printk`, from the trace.dat "printk" section (tracefs ``printk_formats``):
  address -> constant string, for ``%s`` of a pointer-sized field (``rcu_utilization``'s
  ``const char *s``).

Facts from libtraceevent 1.8.2 (src/event-parse.c): tep_parse_kallsyms skips symbols of type
``A``/``a`` and names starting with ``$``; find_func (func_bcmp over the address-sorted map with
a zero-address sentinel after the last entry) resolves an address equal to a symbol's, or
strictly between a symbol and the next one, so an address past the last symbol is unresolved, and
of several symbols at one address the one glibc's bsearch() probes first (the map is the
kallsyms in reverse order, stably sorted by address: tep_register_function prepends, glibc's
qsort merges);
test_for_symbol looks a name up linearly in that sorted map (the lowest address of that name
wins). tep_parse_printk_formats splits each line at its first ``:``, reads the address in hex
and skips one space; tep_register_print_string drops a leading ``"``, a trailing ``"`` and then
a trailing two-character ``\\n``; find_printk matches an address exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_KALLSYMS_LINE = re.compile(r"^([0-9a-fA-F]{1,16})\s+(\S)\s+(\S+)")


@dataclass
class FunctionMap:
    """Address <-> kernel symbol, as libtraceevent resolves them (see the module docstring)."""

    text: str
    _addrs: list[int] = field(default_factory=list, repr=False)
    _names: list[str] = field(default_factory=list, repr=False)
    _by_name: dict[str, int] = field(default_factory=dict, repr=False)
    _parsed: bool = field(default=False, repr=False)

    def _parse(self) -> None:
        self._parsed = True
        pairs: list[tuple[int, str]] = []
        for line in self.text.splitlines():
            m = _KALLSYMS_LINE.match(line)
            if m is None:
                break  # (tep_parse_kallsyms stops at a line it cannot read)
            addr, kind, name = int(m.group(1), 16), m.group(2), m.group(3)
            if name.startswith("$") or kind in ("A", "a"):
                continue
            pairs.append((addr, name))
        pairs.reverse()  # (tep_register_function prepends to its list: the map starts in reverse file order)
        pairs.sort(key=lambda p: p[0])  # (glibc's qsort is a stable merge sort for such arrays)
        self._addrs = [a for a, _ in pairs]
        self._names = [n for _, n in pairs]
        for a, n in pairs:
            self._by_name.setdefault(n, a)

    def find(self, addr: int) -> tuple[str, int] | None:
        """(name, start) of the symbol ``addr`` falls in, or None."""
        if not self._parsed:
            self._parse()
        a = self._addrs
        lo, hi = 0, len(a)
        while lo < hi:  # glibc's bsearch with func_bcmp: of several symbols at one address, the one it probes
            i = (lo + hi) // 2
            nxt = a[i + 1] if i + 1 < len(a) else 0  # (the sentinel's address is 0)
            if addr == a[i] or a[i] < addr < nxt:
                return self._names[i], a[i]
            if addr < a[i]:
                hi = i
            else:
                lo = i + 1
        return None  # before the first symbol, or past the last one

    def address(self, name: str) -> int | None:
        """The address of the symbol called ``name``, or None."""
        if not self._parsed:
            self._parse()
        return self._by_name.get(name)


def parse_printk(data: bytes | str) -> dict[int, str]:
    """The printk section's ``addr : "string"`` lines as {address: string}."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    out: dict[int, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        addr_text, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            addr = int(addr_text.strip().removeprefix("0x").removeprefix("0X") or "0", 16)
        except ValueError:
            addr = 0  # (strtoull reads no digits as 0)
        s = rest[1:]
        if s.startswith('"'):
            s = s[1:]
        if s.endswith('"'):
            s = s[:-1]
            if s.endswith("\\n"):
                s = s[:-2]
        out.setdefault(addr, s)
    return out
