"""A symbol table as perf holds one (tools/perf/util/symbol.c), kept as numbers: names are decoded,
demangled and compared only where addresses land.

perf keeps one symbol per start address (``symbols__fixup_duplicate``: of the symbols sharing a
start, the one ``choose_best_symbol`` prefers) and resolves an address to the symbol with
start <= address < end, or a zero-size symbol at exactly that address (``symbols__find``).
Here every symbol of the file stays in the arrays, sorted by start; each run of symbols with one
start is one *entry* of the table. Which symbol an entry keeps is settled from the numbers when
they decide (a symbol with a size over one without, a non-weak over a weak one, a global over a
local one), and otherwise, from the names, only for entries an address lands on (or next to).
ELF tables also hold the synthesized PLT entries, added after the fixups as perf adds them.

Names are demangled as perf shows them: C++ (Itanium) and Rust names through binutils' c++filt,
one run for every name not seen before in this process (:func:`demangle`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Names = Callable[[np.ndarray], list[str]]  # symbol indices -> their names as the file holds them


class NameList:
    """Names given as a list."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __call__(self, idx: np.ndarray) -> list[str]:
        return [self.names[k] for k in idx.tolist()]


class CStrings:
    """NUL-terminated names at offsets of a string table (ELF .strtab/.dynstr); -1: no name ("")."""

    def __init__(self, data: bytes, off: np.ndarray) -> None:
        self.data = data
        self.off = off

    def __call__(self, idx: np.ndarray) -> list[str]:
        d = self.data
        out = []
        for o in self.off[idx].tolist():
            if o < 0:
                out.append("")
                continue
            z = d.find(b"\0", o)
            out.append(d[o:z if z >= 0 else len(d)].decode("utf-8", "replace"))
        return out


class Spans:
    """Names at (offset, length) in a text (kallsyms)."""

    def __init__(self, data: bytes, off: np.ndarray, length: np.ndarray) -> None:
        self.data = data
        self.off = off
        self.length = length

    def __call__(self, idx: np.ndarray) -> list[str]:
        d = self.data
        return [d[o:o + n].decode("utf-8", "replace") for o, n in zip(self.off[idx].tolist(),
                                                                       self.length[idx].tolist(), strict=True)]


def choose(a: tuple, b: tuple) -> bool:
    """True when symbol a is kept over b at the same address (perf's choose_best_symbol).
    Items: (size, weak, global, name)."""
    if (a[0] == 0) != (b[0] == 0):
        return a[0] > 0
    if a[1] != b[1]:
        return not a[1]
    if a[2] != b[2]:
        return a[2]
    ua, ub = len(a[3]) - len(a[3].lstrip("_")), len(b[3]) - len(b[3].lstrip("_"))
    if ua != ub:
        return ua < ub
    if len(a[3]) != len(b[3]):
        return len(a[3]) > len(b[3])
    return not a[3].startswith(("SyS", "compat_SyS"))


_EMPTY = np.zeros(0, np.uint64)


@dataclass
class SymTab:
    """Symbols sorted by start (``start``, ``end``: perf's end fixups applied; ``weak``/``glob``: the
    binding, None: none weak / none global), their names (``raw``), and PLT entries (``plt_start``,
    ``plt_end``, ``plt_raw``: the .dynsym names they stand for). ``demangle_ties``: an ELF table,
    whose names perf demangles as it loads them: where symbols share a start, names are compared and
    kept demangled; a PLT entry is named ``<demangled name>@plt``.

    The entries (``estart``, ``eend``, ``esrc``: a run of symbols r >= 0, or the PLT entry -1 - p)
    are sorted by start, a run before a PLT entry at the same address; ``rchosen`` is the symbol a
    run keeps, -1 until settled (``eopen``: the entries whose ``eend`` is not known yet)."""

    start: np.ndarray
    end: np.ndarray
    raw: Names
    weak: np.ndarray | None = None
    glob: np.ndarray | None = None
    demangle_ties: bool = False
    plt_start: np.ndarray = field(default_factory=lambda: _EMPTY)
    plt_end: np.ndarray = field(default_factory=lambda: _EMPTY)
    plt_raw: Names | None = None

    def __post_init__(self) -> None:
        n = len(self.start)
        new = np.ones(n, bool)
        new[1:] = self.start[1:] != self.start[:-1]
        self.rfirst = np.flatnonzero(new)
        self.rlen = np.diff(np.append(self.rfirst, n))
        self.rchosen = self.rfirst.copy()  # a run of one keeps its symbol
        several = np.flatnonzero(self.rlen > 1)
        if len(several):  # the others keep one with the largest key (_top); names decide between several
            k, top, at = self._top(several)
            tops = np.flatnonzero(top)
            run = np.repeat(np.arange(len(several)), self.rlen[several])[tops]
            first = tops[np.append(True, run[1:] != run[:-1])]  # (every run has a symbol with its largest key)
            self.rchosen[several] = np.where(np.add.reduceat(top, at) == 1, k[first], -1)
        self.estart = self.start[self.rfirst]
        self.eend = self.end[self.rchosen]
        self.esrc = np.arange(len(self.rfirst))
        self.eopen = self.rchosen < 0
        if len(self.plt_start):  # merged in, each after the runs at or below its start (PLT starts ascend)
            at = np.searchsorted(self.estart, self.plt_start, side="right")
            self.estart = np.insert(self.estart, at, self.plt_start)
            self.eend = np.insert(self.eend, at, self.plt_end)
            self.esrc = np.insert(self.esrc, at, -1 - np.arange(len(self.plt_start)))
            self.eopen = np.insert(self.eopen, at, False)
        self.nopen = int(self.eopen.sum())

    @classmethod
    def of(cls, start: np.ndarray, end: np.ndarray, names: list[str]) -> SymTab:
        """A table of distinct starts with their names (BPF programs, tests)."""
        return cls(np.asarray(start, np.uint64), np.asarray(end, np.uint64), NameList(names))

    def __len__(self) -> int:
        return len(self.estart)

    def shifted(self, delta: int) -> SymTab:
        """The same table ``delta`` lower in the address space (kallsyms of a relocated kernel)."""
        d = np.uint64(abs(delta))
        move = (lambda a: a - d) if delta >= 0 else (lambda a: a + d)
        return SymTab(move(self.start), move(self.end), self.raw, self.weak, self.glob, self.demangle_ties,
                      move(self.plt_start), move(self.plt_end), self.plt_raw)

    # ---- settling the runs whose symbol the names decide ---------------------------------------

    def _open_runs(self, entries: np.ndarray) -> np.ndarray:
        """The unsettled runs among ``entries`` (valid entry numbers, repeats allowed)."""
        if not self.nopen or not len(entries):
            return np.zeros(0, np.int64)
        mark = np.zeros(len(self.estart), bool)
        mark[entries] = True
        return self.esrc[np.flatnonzero(mark & self.eopen)]

    def _top(self, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The symbols of runs (k), which of them have their run's largest key (top), and where each
        run's start in k (at). The key is choose_best_symbol's numeric criteria in its order: a size,
        not weak, global."""
        ln = self.rlen[runs]
        at = np.cumsum(ln) - ln
        k = np.repeat(self.rfirst[runs] - at, ln) + np.arange(int(ln.sum()))
        key = (self.end[k] != self.start[k]).astype(np.int8) * 4
        key += 2 if self.weak is None else (~self.weak[k]).astype(np.int8) * 2
        if self.glob is not None:
            key += self.glob[k].astype(np.int8)
        return k, key == np.repeat(np.maximum.reduceat(key, at), ln), at

    def near(self, addr: np.ndarray) -> np.ndarray:
        """The last entry starting at or below each address (-1: none): :meth:`prefetch` and
        :meth:`lookup` take it."""
        return np.searchsorted(self.estart, addr, side="right").astype(np.int64) - 1

    def prefetch(self, i: np.ndarray) -> list[str]:
        """The names a lookup may compare (from :meth:`near`: the entries there and one below), to
        demangle at once with other tables' (through :func:`demangle`) before the lookups."""
        if not self.demangle_ties or not self.nopen:
            return []
        runs = self._open_runs(np.concatenate([i[i >= 0], i[i >= 1] - 1]))
        if not len(runs):
            return []
        k, top, _ = self._top(runs)
        return self.raw(k[top])

    def _settle(self, entries: np.ndarray) -> None:
        runs = self._open_runs(entries)
        if not len(runs):
            return
        k, top, _ = self._top(runs)
        tied = k[top]
        names = self.raw(tied)
        if self.demangle_ties:
            names = demangle(names)
        run = np.repeat(np.arange(len(runs)), self.rlen[runs])[top].tolist()
        tied = tied.tolist()
        best = 0
        for j in range(1, len(tied) + 1):  # a fold over each run's tied symbols, in order
            if j == len(tied) or run[j] != run[best]:
                self.rchosen[runs[run[best]]] = tied[best]
                best = j
                continue
            a, b = tied[best], tied[j]
            if not choose((int(self.end[a] - self.start[a]), self._weak(a), self._glob(a), names[best]),
                          (int(self.end[b] - self.start[b]), self._weak(b), self._glob(b), names[j])):
                best = j
        e = np.flatnonzero(np.isin(self.esrc, runs) & self.eopen)
        self.eend[e] = self.end[self.rchosen[self.esrc[e]]]
        self.eopen[e] = False
        self.nopen -= len(e)

    def _weak(self, k: int) -> bool:
        return bool(self.weak[k]) if self.weak is not None else False

    def _glob(self, k: int) -> bool:
        return bool(self.glob[k]) if self.glob is not None else False

    # ---- lookups -------------------------------------------------------------------------------

    def lookup(self, addr: np.ndarray, i: np.ndarray | None = None) -> np.ndarray:
        """The entry covering each address, -1 where none does (perf's symbols__find): the last entry
        starting at or below it (``i``, when :meth:`near` gave it already), when the address is below
        its end or at its start; else, for a symbol nested in an earlier, larger one (ELF tables), the
        one before, when it covers it."""
        addr = np.asarray(addr, dtype=np.uint64)
        if not len(self.estart):
            return np.full(len(addr), -1, np.int64)
        i = self.near(addr) if i is None else i.copy()
        self._settle(i[i >= 0])
        j = np.maximum(i, 0)
        ok = (i >= 0) & ((addr < self.eend[j]) | (addr == self.estart[j]))
        miss = np.flatnonzero(~ok & (i > 0))
        if len(miss):
            k = i[miss] - 1
            self._settle(k)
            a = addr[miss]
            back = (a < self.eend[k]) & (a >= self.estart[k])
            i[miss[back]] = k[back]
            ok[miss[back]] = True
        return np.where(ok, i, -1)

    def raw_names(self, entries: np.ndarray) -> list[str]:
        """The file's names of entries (settled; the symbols they keep, or the PLT entries'
        symbols): what :meth:`names` demangles, to demangle at once with other tables'."""
        src = self.esrc[entries]
        out = [""] * len(entries)
        sym = np.flatnonzero(src >= 0)
        for k, nm in zip(sym.tolist(), self.raw(self.rchosen[src[sym]]), strict=True):
            out[k] = nm
        plt = np.flatnonzero(src < 0)
        if len(plt) and self.plt_raw is not None:
            for k, nm in zip(plt.tolist(), self.plt_raw(-1 - src[plt]), strict=True):
                out[k] = nm
        return out

    def names(self, entries: np.ndarray, raw: list[str] | None = None) -> list[str]:
        """Entries' names as the table holds them (settled entries: see :meth:`lookup`; ``raw``: their
        :meth:`raw_names`, when known): a PLT entry is ``<name>@plt``; in an ELF table a run of
        several symbols keeps its symbol's name demangled, and a PLT entry its symbol's."""
        out = list(self.raw_names(entries) if raw is None else raw)
        src = self.esrc[entries]
        plt = src < 0
        if self.demangle_ties:
            several = np.zeros(len(src), bool)
            several[~plt] = self.rlen[src[~plt]] > 1
            todo = np.flatnonzero(several | plt).tolist()
            for k, d in zip(todo, demangle([out[k] for k in todo]), strict=True):
                out[k] = d
        for k in np.flatnonzero(plt).tolist():
            out[k] += "@plt"
        return out

    def all_names(self) -> list[str]:
        """Every entry's name (small tables and tests; settles every entry)."""
        e = np.arange(len(self.estart))
        self._settle(e)
        return self.names(e)

    def bounds(self) -> tuple[int, int]:
        """The first entry's start and the last one's end."""
        last = np.array([len(self.estart) - 1])
        self._settle(last)
        return int(self.estart[0]), int(self.eend[-1])


MANGLED = ("_Z", "_R")  # C++ (Itanium) and legacy Rust mangled names start with _Z, Rust v0 ones with _R


def demangle(names: list[str]) -> list[str]:
    """C++ (Itanium) and Rust names as perf shows them: libiberty's demangler without parameters
    and without verbose details (perf's demangle_sym with DMGL_NO_OPTS), through binutils' c++filt
    (``-p -i``), one run for all the names not demangled before in this process; names that are not
    mangled, or everything when c++filt is not installed, stay as they are."""
    todo = {n for n in names if n.startswith(MANGLED) and n not in DEMANGLED}
    if todo:
        _demangle_new(sorted(todo))
    return [DEMANGLED.get(n, n) for n in names]


DEMANGLED: dict[str, str] = {}


def _demangle_new(missing: list[str]) -> None:
    import shutil
    import subprocess

    missing = [n for n in missing if "\n" not in n]  # (one name a line)
    exe = shutil.which("c++filt")
    if missing and exe:
        try:
            out = subprocess.run([exe, "-p", "-i"], input="\n".join(missing) + "\n", capture_output=True,
                                 text=True, timeout=120, check=False).stdout.split("\n")
        except (OSError, subprocess.SubprocessError):
            out = []
        if len(out) >= len(missing):
            DEMANGLED.update(zip(missing, out, strict=False))
