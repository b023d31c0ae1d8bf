"""Symbol tables for perf samples: kallsyms (kernel), ELF .symtab/.dynsym (user DSOs), and where
to find them, the way perf looks them up (tools/perf/util/symbol.c, build-id.c, symbol-elf.c).

A table is sorted start addresses, end addresses and names; :meth:`SymTab.lookup` resolves many
addresses at once (one ``searchsorted``). Sizes follow perf: a kallsyms symbol ends where the next
one starts (``symbols__fixup_end``), symbols at one address keep the one perf keeps
(``symbols__fixup_duplicate``/``choose_best_symbol``), an address resolves to the symbol with
start <= address < end (or a zero-size symbol at exactly that address).

Where files are found (perf's order):

- kernel: a kallsyms kept with the recording (``perf record`` copies /proc/kallsyms into its
  build-id cache, ``~/.debug/[kernel.kallsyms]/<build-id>/kallsyms``; ``perf record --kcore``
  keeps ``kcore_dir/kallsyms`` in the perf.data directory; older perf wrote it into the tracing
  data), a host snapshot's copy, and this machine's /proc/kallsyms only when the running kernel's
  build-id (/sys/kernel/notes) is the recorded one;
- user DSOs: the build-id cache (``~/.debug/.build-id/xx/yyyy…``), debuginfo
  (``/usr/lib/debug/.build-id/xx/yyyy….debug``), then the recorded path on this machine, each used
  only when its build-id is the recorded one (without a recorded build-id, the path itself,
  unverified).

``PERF_BUILDID_DIR`` moves the build-id cache, as it does for perf.
"""

from __future__ import annotations

import lzma
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

KSYM_TYPES = frozenset("TtWwDdBb")  # perf's symbol_type__filter: text, weak, data, bss
KALLSYMS_LINE = re.compile(rb"^([0-9a-fA-F]+) (\S) (\S+)(?:\t\[(\S+)\])?", re.M)
PAGE = 4096


@dataclass
class SymTab:
    """Symbols sorted by start: [start, end) and name."""

    start: np.ndarray  # uint64
    end: np.ndarray  # uint64
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, addr: np.ndarray) -> np.ndarray:
        """Index of the symbol covering each address, -1 where none does (perf's symbols__find)."""
        addr = np.asarray(addr, dtype=np.uint64)
        if not len(self.names):
            return np.full(len(addr), -1, np.int64)
        i = np.searchsorted(self.start, addr, side="right").astype(np.int64) - 1
        j = np.maximum(i, 0)
        ok = (i >= 0) & ((addr < self.end[j]) | (addr == self.start[j]))
        # a symbol nested in an earlier, larger one (ELF tables): look one further back
        miss = np.flatnonzero(~ok & (i > 0))
        if len(miss):
            k = i[miss] - 1
            a = addr[miss]
            back = (a < self.end[k]) & (a >= self.start[k])
            i[miss[back]] = k[back]
            ok[miss[back]] = True
        return np.where(ok, i, -1)


def _choose(a: tuple, b: tuple) -> bool:
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


def _dedupe(start: np.ndarray, end: np.ndarray, names: list[str], weak: list[bool],
            glob: list[bool], demangle_ties: bool = False) -> SymTab:
    """One symbol per start address (``start`` sorted). ``demangle_ties``: compare (and keep) names
    demangled, as perf holds ELF symbols (it demangles each one as it loads it)."""
    if not len(start):
        return SymTab(start, end, names)
    dup = np.flatnonzero(start[1:] == start[:-1])
    if not len(dup):
        return SymTab(start, end, names)
    keep = np.ones(len(start), bool)
    if demangle_ties:
        ties = sorted({k for d in dup.tolist() for k in (d, d + 1)})
        shown = demangle([names[k] for k in ties])
        names = list(names)
        for k, nm in zip(ties, shown, strict=True):
            names[k] = nm
    # runs of equal starts: pick the best of each run
    run_first = dup[np.r_[True, dup[1:] != dup[:-1] + 1]]
    for f in run_first.tolist():
        last = f
        while last + 1 < len(start) and start[last + 1] == start[f]:
            last += 1
        best = f
        for k in range(f + 1, last + 1):
            if not _choose((int(end[best] - start[best]), weak[best], glob[best], names[best]),
                           (int(end[k] - start[k]), weak[k], glob[k], names[k])):
                best = k
        keep[f:last + 1] = False
        keep[best] = True
    idx = np.flatnonzero(keep)
    return SymTab(start[idx], end[idx], [names[i] for i in idx.tolist()])


@dataclass
class Kallsyms:
    """A kallsyms file: the kernel's symbols, each module's symbols, and the reference addresses."""

    kernel: SymTab
    modules: dict[str, SymTab]
    refs: dict[str, int]  # _text, _stext, _etext addresses (when present)
    lines: int

    def ref(self, name: str) -> int | None:
        return self.refs.get(name)


def read_text(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:6] == b"\xfd7zXZ\0":
        return lzma.decompress(data)
    if data[:2] == b"\x1f\x8b":
        import gzip

        return gzip.decompress(data)
    return data


def parse_kallsyms(data: bytes) -> Kallsyms:
    """kallsyms text as perf loads it (dso__load_all_kallsyms, symbols__fixup_end(kallsyms),
    symbols__fixup_duplicate). Lines are ``addr type name[\\t[module]]``."""
    rows = KALLSYMS_LINE.findall(data)
    refs: dict[str, int] = {}
    for a, _t, n, m in rows:
        if not m and n in (b"_text", b"_stext", b"_etext") and n.decode() not in refs:
            refs[n.decode()] = int(a, 16)
    sel = [(int(a, 16), t.decode(), n.decode("utf-8", "replace"), m.decode() if m else "")
           for a, t, n, m in rows if t.decode() in KSYM_TYPES and not n.startswith(b"$")]
    order = sorted(range(len(sel)), key=lambda k: sel[k][0])  # stable: file order among equal addresses
    sel = [sel[k] for k in order]
    n = len(sel)
    start = np.fromiter((s[0] for s in sel), dtype=np.uint64, count=n)
    end = start.copy()
    mods = [s[3] for s in sel]
    # symbols__fixup_end for kallsyms: up to the next symbol, unless kernel <-> module or module
    # <-> other module changes there (then to the next page); the last one to the page after
    for k in range(n - 1):
        if mods[k] == mods[k + 1]:
            end[k] = start[k + 1]
        else:
            end[k] = (int(start[k]) + PAGE + PAGE - 1) // PAGE * PAGE
    if n:
        end[-1] = (int(start[-1]) + PAGE - 1) // PAGE * PAGE + PAGE
    names = [s[2] for s in sel]
    weak = [s[1] in "Ww" for s in sel]
    glob = [s[1].isupper() for s in sel]
    groups: dict[str, list[int]] = {}
    for k, m in enumerate(mods):
        groups.setdefault(m, []).append(k)
    tabs: dict[str, SymTab] = {}
    for m, ks in groups.items():
        ix = np.array(ks, dtype=np.int64)
        tabs[m] = _dedupe(start[ix], end[ix], [names[k] for k in ks], [weak[k] for k in ks], [glob[k] for k in ks])
    kernel = tabs.pop("", SymTab(np.zeros(0, np.uint64), np.zeros(0, np.uint64), []))
    return Kallsyms(kernel, tabs, refs, len(rows))


def all_zero(k: Kallsyms) -> bool:
    """A kallsyms read without the right to see addresses (kptr_restrict): every address is 0."""
    return len(k.kernel) > 0 and int(k.kernel.start.max()) == 0


# ---- build-ids ---------------------------------------------------------------------------------

def buildid_dir() -> Path:
    """perf's build-id cache (``PERF_BUILDID_DIR``, else ~/.debug)."""
    env = os.environ.get("PERF_BUILDID_DIR")
    return Path(env) if env else Path.home() / ".debug"


def notes_build_id(data: bytes) -> str | None:
    """The GNU build-id in a run of ELF notes (e.g. /sys/kernel/notes)."""
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, typ = (int.from_bytes(data[pos + i:pos + i + 4], "little") for i in (0, 4, 8))
        name = data[pos + 12:pos + 12 + namesz]
        dpos = pos + 12 + (namesz + 3) // 4 * 4
        desc = data[dpos:dpos + descsz]
        if typ == 3 and name.rstrip(b"\0") == b"GNU":
            return desc.hex()
        pos = dpos + (descsz + 3) // 4 * 4
    return None


def running_kernel_build_id() -> str | None:
    try:
        return notes_build_id(Path("/sys/kernel/notes").read_bytes())
    except OSError:
        return None


@lru_cache(maxsize=4096)
def elf_build_id(path: str) -> str | None:
    """The GNU build-id note of an ELF file (None when it has none or is not ELF)."""
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
            f.seek(0)
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if sec.header.sh_type != "SHT_NOTE":
                    continue
                for note in sec.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return str(note["n_desc"])
    except (OSError, ELFError, ValueError, KeyError):
        return None
    return None


def same_build_id(a: str | None, b: str | None) -> bool:
    """Build-ids equal (perf compares the recorded size; older perf padded 20 bytes with zeros)."""
    if not a or not b:
        return False
    a, b = a.lower(), b.lower()
    n = min(len(a), len(b))
    return a[:n] == b[:n] and not a[n:].strip("0") and not b[n:].strip("0")


# ---- ELF symbols -------------------------------------------------------------------------------

@dataclass
class ElfSyms:
    """A DSO's function symbols in its virtual address space, and its loadable segments (to turn a
    file offset into an address)."""

    tab: SymTab
    segs: np.ndarray  # rows: p_offset, p_vaddr, p_filesz of PT_LOAD
    table: str  # .symtab or .dynsym
    et_exec: bool

    def addr_of_offset(self, off: np.ndarray) -> np.ndarray:
        """File offsets -> virtual addresses through the PT_LOAD segment holding them."""
        out = off.astype(np.uint64).copy()
        for p_off, p_vaddr, p_filesz in self.segs.tolist():
            sel = (off >= p_off) & (off < p_off + max(p_filesz, 1))
            out[sel] = off[sel] - np.uint64(p_off) + np.uint64(p_vaddr)
        return out


ELF64_SYM = [("name", "u4"), ("info", "u1"), ("other", "u1"), ("shndx", "u2"), ("value", "u8"), ("size", "u8")]
ELF32_SYM = [("name", "u4"), ("value", "u4"), ("size", "u4"), ("info", "u1"), ("other", "u1"), ("shndx", "u2")]
STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC = 0, 2, 10
STB_GLOBAL, STB_WEAK = 1, 2
SHN_UNDEF, SHN_ABS = 0, 0xFFF1


def _sym_dtype(elf: Any) -> np.dtype:
    order = "<" if elf.little_endian else ">"
    return np.dtype([(n, order + t) for n, t in (ELF64_SYM if elf.elfclass == 64 else ELF32_SYM)])


@lru_cache(maxsize=512)
def elf_symbols(path: str, runtime: str | None = None) -> ElfSyms | None:
    """Function symbols of an ELF file as perf keeps them (dso__load_sym): .symtab when there is
    one, else .dynsym; STT_FUNC/STT_GNU_IFUNC symbols defined in a section, and STT_NOTYPE labels
    in text sections; sizes from the table, zero sizes ending at the next symbol. pyelftools finds
    the sections and segments; the symbol array (fixed-size Elf_Sym records, hundreds of thousands
    in a large library) is read as one numpy array. ``runtime``: the image whose program headers
    map file offsets to addresses (a separate debuginfo file's are not usable)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    empty = SymTab(np.zeros(0, np.uint64), np.zeros(0, np.uint64), [])
    try:
        with open(runtime or path, "rb") as f:
            elf = ELFFile(f)
            segs = np.array([(s["p_offset"], s["p_vaddr"], s["p_filesz"]) for s in elf.iter_segments()
                             if s["p_type"] == "PT_LOAD"], dtype=np.uint64).reshape(-1, 3)
            et_exec = elf.header["e_type"] == "ET_EXEC"
        with open(path, "rb") as f:
            elf = ELFFile(f)
            sec = elf.get_section_by_name(".symtab")
            if sec is None or sec.header.sh_type == "SHT_NOBITS":
                sec = elf.get_section_by_name(".dynsym")
            if sec is None or sec.header.sh_type not in ("SHT_SYMTAB", "SHT_DYNSYM"):
                return ElfSyms(empty, segs, "", et_exec)
            table = sec.name
            syms = np.frombuffer(sec.data(), dtype=_sym_dtype(elf))
            strtab = elf.get_section(sec.header.sh_link).data()
            text = np.zeros(max(elf.num_sections(), 1), bool)
            for i, sc in enumerate(elf.iter_sections()):
                text[i] = "text" in sc.name
    except (OSError, ELFError, ValueError, KeyError, AttributeError, IndexError):
        return None
    typ, bind, shndx = syms["info"] & 0xF, syms["info"] >> 4, syms["shndx"].astype(np.int64)
    in_text = np.zeros(len(syms), bool)
    regular = shndx < len(text)
    in_text[regular] = text[shndx[regular]]
    keep = (syms["name"] != 0) & (shndx != SHN_UNDEF) & (
        np.isin(typ, [STT_FUNC, STT_GNU_IFUNC]) | ((typ == STT_NOTYPE) & (shndx != SHN_ABS) & in_text))
    idx = np.flatnonzero(keep)
    names = [_cstr(strtab, off) for off in syms["name"][idx].tolist()]
    ok = np.array([bool(nm) and not nm.startswith("$") for nm in names], bool)
    idx = idx[ok]
    names = [nm for nm, k in zip(names, ok.tolist(), strict=True) if k]
    order = np.argsort(syms["value"][idx], kind="stable")
    idx = idx[order]
    names = [names[k] for k in order.tolist()]
    start = syms["value"][idx].astype(np.uint64)
    end = start + syms["size"][idx].astype(np.uint64)
    label = typ[idx] == STT_NOTYPE
    # symbols__fixup_end (not kallsyms): a zero-size symbol (other than a label) ends at the next
    zero = np.flatnonzero((end[:-1] == start[:-1]) & ~label[:-1])
    end[zero] = start[zero + 1]
    if len(start) and end[-1] == start[-1]:
        end[-1] = (int(start[-1]) + PAGE - 1) // PAGE * PAGE + PAGE
    b = bind[idx]
    tab = _dedupe(start, end, names, (b == STB_WEAK).tolist(), (b == STB_GLOBAL).tolist(), demangle_ties=True)
    plt = plt_symbols(runtime or path)
    if plt is not None and len(plt):  # added after the table's fixups, as perf does
        o = np.argsort(np.concatenate([tab.start, plt.start]), kind="stable")
        names = tab.names + plt.names
        tab = SymTab(np.concatenate([tab.start, plt.start])[o], np.concatenate([tab.end, plt.end])[o],
                     [names[k] for k in o.tolist()])
    return ElfSyms(tab, segs, table, et_exec)


def _cstr(strtab: bytes, off: int) -> str:
    z = strtab.find(b"\0", off)
    return strtab[off:z if z >= 0 else len(strtab)].decode("utf-8", "replace")


@lru_cache(maxsize=512)
def plt_symbols(path: str) -> SymTab | None:
    """``<name>@plt`` for each PLT slot (perf 6.1's dso__synthesize_plt_symbols): the .rela.plt (or
    .rel.plt) entries in order, each naming its .dynsym symbol (demangled), one .plt entry each after
    the .plt header (entry and header size: the .plt entry size)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            rel = elf.get_section_by_name(".rela.plt") or elf.get_section_by_name(".rel.plt")
            plt = elf.get_section_by_name(".plt")
            dynsym = elf.get_section_by_name(".dynsym")
            if rel is None or plt is None or dynsym is None or rel.header.sh_type not in ("SHT_RELA", "SHT_REL"):
                return None
            if rel.header.sh_type == "SHT_NOBITS" or dynsym.header.sh_type == "SHT_NOBITS":
                return None
            if elf.get_section(rel.header.sh_link).name != ".dynsym":
                return None
            ent = int(plt.header.sh_entsize)
            if not ent:
                return None
            syms = np.frombuffer(dynsym.data(), dtype=_sym_dtype(elf))
            strtab = elf.get_section(dynsym.header.sh_link).data()
            # Elf_Rel(a) records: r_offset, r_info (symbol index in its high half) [, r_addend]
            order = "<" if elf.little_endian else ">"
            word = "u8" if elf.elfclass == 64 else "u4"
            fields = [("off", order + word), ("info", order + word)]
            if rel.header.sh_type == "SHT_RELA":
                fields.append(("addend", order + word.replace("u", "i")))
            info = np.frombuffer(rel.data(), dtype=np.dtype(fields))["info"]
            symidx = (info >> (32 if elf.elfclass == 64 else 8)).astype(np.int64).tolist()
            base = int(plt.header.sh_addr)
    except (OSError, ELFError, ValueError, KeyError, AttributeError, IndexError):
        return None
    raw = [_cstr(strtab, int(syms["name"][i])) if i < len(syms) else "" for i in symidx]
    names = [f"{nm}@plt" for nm in demangle(raw)]
    start = np.uint64(base + ent) + np.arange(len(names), dtype=np.uint64) * np.uint64(ent)
    return SymTab(start, start + np.uint64(ent), names)


def _mangled(name: str) -> bool:
    return name.startswith(("_Z", "_R"))


def demangle(names: list[str]) -> list[str]:
    """C++ (Itanium) and Rust names as perf shows them: libiberty's demangler without parameters
    and without verbose details (perf's demangle_sym with DMGL_NO_OPTS), through binutils' c++filt
    (``-p -i``), run once for all the names; names that are not mangled, or everything when
    c++filt is not installed, stay as they are."""
    todo = sorted({n for n in names if _mangled(n)})
    if not todo:
        return list(names)
    got = _demangled(tuple(todo))
    return [got.get(n, n) for n in names]


_DEMANGLED: dict[str, str] = {}
DEMANGLER: dict[str, str | None] = {"tool": None}


def _demangled(todo: tuple[str, ...]) -> dict[str, str]:
    import shutil
    import subprocess

    missing = [n for n in todo if n not in _DEMANGLED]
    exe = shutil.which("c++filt")
    DEMANGLER["tool"] = exe
    if missing and exe:
        try:
            out = subprocess.run([exe, "-p", "-i"], input="\n".join(missing) + "\n", capture_output=True,
                                 text=True, timeout=120, check=False).stdout.split("\n")
        except (OSError, subprocess.SubprocessError):
            out = []
        if len(out) >= len(missing):
            _DEMANGLED.update(zip(missing, out, strict=False))
    return {n: _DEMANGLED.get(n, n) for n in todo}


@dataclass
class Found:
    """The files to read a user DSO's symbols from: the first candidate with a .symtab (else the
    runtime one), the runtime image (its program headers turn file offsets into addresses; a
    separate debuginfo file's are not usable), how they were found, verified by build-id or not."""

    path: str
    runtime: str
    how: str  # build-id cache, debuginfo, this machine
    verified: bool


@lru_cache(maxsize=4096)
def _elf_info(path: str) -> tuple[bool, bool, str | None]:
    """(has a .symtab, has a .dynsym, .gnu_debuglink name) of an ELF file, in one read of its headers."""
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return False, False, None
            f.seek(0)
            elf = ELFFile(f)
            have: dict[str, Any] = {}
            for sec in elf.iter_sections():
                if sec.name in (".symtab", ".dynsym", ".gnu_debuglink"):
                    have[sec.name] = sec
            ok = {n: sec.header.sh_type != "SHT_NOBITS" and sec.header.sh_size > 0 for n, sec in have.items()}
            link = have[".gnu_debuglink"].data().split(b"\0", 1)[0].decode() if ok.get(".gnu_debuglink") else None
            return ok.get(".symtab", False), ok.get(".dynsym", False), link
    except Exception:  # noqa: BLE001 - an unreadable file has no tables
        return False, False, None


def _debuglink(path: str) -> str | None:
    return _elf_info(path)[2]


def _has_table(path: str, name: str) -> bool:
    return _elf_info(path)[0 if name == ".symtab" else 1]


def find_dso_file(filename: str, build_id: str | None) -> tuple[Found | None, str]:
    """The files to read a user DSO's symbols from, in perf's order (dso__load: debuglink, build-id
    cache elf and debug, /usr/lib/debug by path and by build-id, the path itself), each only when its
    build-id is the recorded one; or None and why (``build-id mismatch``, ``DSO not on this machine``).
    Without a recorded build-id the path's own build-id is used, and the result is unverified."""
    p = Path(filename)
    here = filename.startswith("/") and p.is_file()
    verified = bool(build_id)
    if not build_id and here:
        build_id = elf_build_id(filename)
    cands: list[tuple[Path, str]] = []
    if here:
        link = _debuglink(filename)
        if link:
            cands += [(p.parent / link, "debuglink"), (p.parent / ".debug" / link, "debuglink"),
                      (Path("/usr/lib/debug") / p.parent.relative_to("/") / link, "debuglink")]
    if build_id:
        bid = build_id.lower()
        d = buildid_dir() / ".build-id" / bid[:2] / bid[2:]
        cands += [(d / "elf", "build-id cache"), (d / "vdso", "build-id cache"), (d, "build-id cache"),
                  (d / "debug", "build-id cache")]
    if filename.startswith("/"):
        cands += [(Path("/usr/lib/debug") / f"{filename[1:]}.debug", "debuginfo"),
                  (Path("/usr/lib/debug") / filename[1:], "debuginfo")]
    if build_id:
        cands.append((Path("/usr/lib/debug/.build-id") / build_id[:2] / f"{build_id[2:]}.debug", "debuginfo"))
    if here:
        cands.append((p, "this machine"))
    symtab = runtime = None
    how = ""
    mismatch = False
    for c, kind in cands:
        if not c.is_file():
            continue
        if build_id and not same_build_id(elf_build_id(str(c)), build_id):
            mismatch = True
            continue
        if symtab is None and _has_table(str(c), ".symtab"):
            symtab, how = str(c), kind
        if runtime is None and _has_table(str(c), ".dynsym"):
            runtime = str(c)
            how = how or kind
        if symtab and runtime:
            break
    if symtab is None and runtime is None:
        return None, "build-id mismatch" if mismatch else "DSO not on this machine"
    return Found(symtab or runtime or "", runtime or symtab or "", how, verified), ""
