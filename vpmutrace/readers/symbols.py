"""Symbol tables for perf samples: kallsyms (kernel), ELF .symtab/.dynsym (user DSOs), and where
to find them, the way perf looks them up (tools/perf/util/symbol.c, build-id.c, symbol-elf.c).

Tables are :class:`symtab.SymTab`: numbers read in bulk (the kallsyms text parsed with numpy,
an ELF symbol table viewed as one record array), names decoded only where samples land. Sizes
follow perf: a kallsyms symbol ends where the next one starts (``symbols__fixup_end``), an ELF
symbol of size zero at the next symbol; symbols at one address keep the one perf keeps.

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
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from vpmutrace.readers import elf as E
from vpmutrace.readers.elf import ElfFile, file_identity
from vpmutrace.readers.symtab import CStrings, Spans, SymTab

KSYM_TYPES = frozenset("TtWwDdBb")  # perf's symbol_type__filter: text, weak, data, bss
KALLSYMS_LINE = re.compile(rb"^([0-9a-fA-F]+) (\S) (\S+)(?:\t\[(\S+)\])?", re.M)
PAGE = 4096


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
    symbols__fixup_duplicate). Lines are ``addr type name[\\t[module]]`` (KALLSYMS_LINE; lines
    that do not match are skipped); symbols of the types perf keeps (KSYM_TYPES), names not
    starting with '$'. A text whose every line has exactly that form (as the kernel prints it) is
    parsed with array operations, any other line by line with the pattern: the same rows."""
    rows = _kallsyms_lines(data if data.endswith(b"\n") else data + b"\n") or _kallsyms_matches(data)
    text, addr, typ, noff, nlen, mod, mod_names = rows
    refs: dict[str, int] = {}
    for k in np.flatnonzero((mod < 0) & ((nlen == 5) | (nlen == 6))).tolist():
        nm = text[noff[k]:noff[k] + nlen[k]].decode()
        if nm in ("_text", "_stext", "_etext") and nm not in refs:
            refs[nm] = int(addr[k])
    first = np.frombuffer(text, np.uint8)[noff] if len(noff) else np.zeros(0, np.uint8)
    keep = np.flatnonzero(np.isin(typ, np.frombuffer("".join(sorted(KSYM_TYPES)).encode(), np.uint8))
                          & (first != ord("$")))
    keep = keep[np.argsort(addr[keep], kind="stable")]  # stable: file order among equal addresses
    start, mods = addr[keep], mod[keep]
    end = start.copy()
    if len(start):
        # symbols__fixup_end for kallsyms: up to the next symbol, unless kernel <-> module or module
        # <-> other module changes there (then to the next page); the last one to the page after
        page = np.uint64(PAGE)
        same = mods[:-1] == mods[1:]
        end[:-1] = np.where(same, start[1:], (start[:-1] + page + page - np.uint64(1)) // page * page)
        end[-1] = (start[-1] + page - np.uint64(1)) // page * page + page
    t = typ[keep]
    weak = (t == ord("W")) | (t == ord("w"))
    glob = (t >= ord("A")) & (t <= ord("Z"))
    noff, nlen = noff[keep], nlen[keep]
    tabs: dict[int, SymTab] = {}
    by_mod = np.argsort(mods, kind="stable")
    ids, at = np.unique(mods[by_mod], return_index=True)
    for m, ix in zip(ids.tolist(), np.split(by_mod, at[1:]), strict=True):
        tabs[m] = SymTab(start[ix], end[ix], Spans(text, noff[ix], nlen[ix]), weak[ix], glob[ix])
    kernel = tabs.pop(-1, SymTab.of(np.zeros(0, np.uint64), np.zeros(0, np.uint64), []))
    return Kallsyms(kernel, {mod_names[m]: tab for m, tab in tabs.items()}, refs, len(addr))


_Rows = tuple[bytes, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]


def _kallsyms_lines(text: bytes) -> _Rows | None:
    """The rows of a kallsyms text (ending with a newline) whose every line is ``addr type name``
    with an optional ``\\t[module]`` (kernels.kallsyms_lines), as arrays: the text, addresses, type
    bytes, name offsets and lengths, module numbers (-1: none) and the modules' names; None when a
    line has another form."""
    from vpmutrace import kernels

    buf = np.frombuffer(text, np.uint8)
    n = int(np.count_nonzero(buf == 10))
    addr, typ = np.empty(n, np.uint64), np.empty(n, np.uint8)
    noff, nlen, moff, mlen = (np.empty(n, np.int64) for _ in range(4))
    if kernels.kallsyms_lines(buf, addr, typ, noff, nlen, moff, mlen) != n:
        return None
    mod = np.full(n, -1, np.int64)
    mod_names: list[str] = []
    t = np.flatnonzero(mlen)
    if len(t):  # the modules' names, as rows of bytes made distinct at once
        mo, ml = moff[t], mlen[t]
        width = int(ml.max())
        cols = np.arange(width)
        grid = np.where(cols < ml[:, None], buf[np.minimum(mo[:, None] + cols, len(buf) - 1)], 0).astype(np.uint8)
        _, firsts, inv = np.unique(np.ascontiguousarray(grid).view(np.dtype((np.void, width))).ravel(),
                                   return_index=True, return_inverse=True)
        mod[t] = inv.ravel()
        mod_names = [text[int(mo[f]):int(mo[f] + ml[f])].decode("utf-8", "replace") for f in firsts.tolist()]
    return text, addr, typ, noff, nlen, mod, mod_names


def _kallsyms_matches(data: bytes) -> _Rows:
    """The rows of any kallsyms text, line by line (KALLSYMS_LINE)."""
    addr, typ, noff, nlen, mod = [], [], [], [], []
    mods: dict[bytes, int] = {}
    for m in KALLSYMS_LINE.finditer(data):
        addr.append(int(m.group(1), 16))
        typ.append(data[m.start(2)])
        noff.append(m.start(3))
        nlen.append(m.end(3) - m.start(3))
        mod.append(mods.setdefault(m.group(4), len(mods)) if m.group(4) else -1)
    return (data, np.array(addr, np.uint64), np.array(typ, np.uint8), np.array(noff, np.int64),
            np.array(nlen, np.int64), np.array(mod, np.int64), [m.decode() for m in mods])


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


@dataclass(frozen=True)
class ElfFacts:
    """What finding a DSO's symbol files asks of a file, from one read of its headers."""

    build_id: str | None  # its GNU build-id note (None: none, or not ELF)
    symtab: bool  # a .symtab with contents
    dynsym: bool  # a .dynsym with contents
    debuglink: str | None  # the .gnu_debuglink file name


def elf_facts(path: str) -> ElfFacts | None:
    """A regular file's :class:`ElfFacts` (None: no regular file there), remembered per file version
    (device, inode, size, mtime): a rebuilt file is read again."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return _elf_facts(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


@lru_cache(maxsize=4096)
def _elf_facts(path: str, _ident: tuple[int, int, int, int]) -> ElfFacts:
    try:
        with ElfFile(path) as elf:
            try:
                bid = elf.build_id()
            except ValueError:
                bid = None
            try:
                sym, dyn, dl = (elf.section(n) for n in (".symtab", ".dynsym", ".gnu_debuglink"))
                link = bytes(elf.data(dl)).split(b"\0", 1)[0].decode() if elf.has_contents(dl) else None
                return ElfFacts(bid, elf.has_contents(sym), elf.has_contents(dyn), link)
            except Exception:  # noqa: BLE001 - unreadable headers: no tables
                return ElfFacts(bid, False, False, None)
    except (OSError, ValueError):  # not ELF, or headers outside the file
        return ElfFacts(None, False, False, None)


def elf_build_id(path: str) -> str | None:
    """The GNU build-id note of an ELF file (None when it has none or is not ELF)."""
    facts = elf_facts(path)
    return facts.build_id if facts else None


def same_build_id(a: str | None, b: str | None) -> bool:
    """Build-ids equal (perf compares the recorded size; older perf padded 20 bytes with zeros)."""
    if not a or not b:
        return False
    a, b = a.lower(), b.lower()
    n = min(len(a), len(b))
    return a[:n] == b[:n] and not a[n:].strip("0") and not b[n:].strip("0")


# ---- ELF symbols -------------------------------------------------------------------------------

ELF64_SYM = [("name", "u4"), ("info", "u1"), ("other", "u1"), ("shndx", "u2"), ("value", "u8"), ("size", "u8")]
ELF32_SYM = [("name", "u4"), ("value", "u4"), ("size", "u4"), ("info", "u1"), ("other", "u1"), ("shndx", "u2")]
STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC = 0, 2, 10
STB_GLOBAL, STB_WEAK = 1, 2
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
_EMPTY = np.zeros(0, np.uint64)


def _sym_dtype(elf: ElfFile) -> np.dtype:
    return np.dtype([(n, elf.order + t) for n, t in (ELF64_SYM if elf.elfclass == 64 else ELF32_SYM)])


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


def elf_symbols(path: str, runtime: str | None = None) -> ElfSyms | None:
    """Function symbols of an ELF file as perf keeps them (dso__load_sym): .symtab when there is
    one, else .dynsym; STT_FUNC/STT_GNU_IFUNC symbols defined in a section, and STT_NOTYPE labels
    in text sections; sizes from the table, zero sizes ending at the next symbol; then the PLT
    entries. The symbol array (fixed-size Elf_Sym records, hundreds of thousands in a large
    library) is read as one record array of the mapped file. ``runtime``: the image whose program
    headers map file offsets to addresses (a separate debuginfo file's are not usable). Remembered
    per version of both files (device, inode, size, mtime)."""
    ids = (file_identity(path), file_identity(runtime) if runtime else None)
    if ids[0] is None or (runtime and ids[1] is None):
        return None
    return _elf_symbols(path, runtime, ids)


@lru_cache(maxsize=512)
def _elf_symbols(path: str, runtime: str | None, _ids: tuple[Any, Any]) -> ElfSyms | None:
    try:
        with ElfFile(runtime or path) as image:
            ph = image.phdrs
            load = ph["type"] == E.PT_LOAD
            segs = np.stack([ph["offset"][load], ph["vaddr"][load], ph["filesz"][load]], axis=1).astype(np.uint64)
            et_exec = image.e_type == E.ET_EXEC
            plt = _plt(image)
            if runtime and runtime != path:
                with ElfFile(path) as elf:
                    syms = _function_symbols(elf)
            else:
                syms = _function_symbols(image)
    except (OSError, ValueError, IndexError):
        return None
    if syms is None:
        return ElfSyms(SymTab.of(_EMPTY, _EMPTY, []), segs, "", et_exec)  # (no PLT entries either)
    table, start, end, label, bind, strtab, noff = syms
    # symbols__fixup_end (not kallsyms): a zero-size symbol (other than a label) ends at the next
    zero = np.flatnonzero((end[:-1] == start[:-1]) & ~label[:-1])
    end[zero] = start[zero + 1]
    if len(start) and end[-1] == start[-1]:
        end[-1] = (int(start[-1]) + PAGE - 1) // PAGE * PAGE + PAGE
    pstart = pend = _EMPTY
    praw = None
    if plt is not None and len(plt[0]):  # added after the table's fixups, as perf does
        pnoff, dynstr, base, ent = plt
        pstart = np.uint64(base + ent) + np.arange(len(pnoff), dtype=np.uint64) * np.uint64(ent)
        pend = pstart + np.uint64(ent)
        praw = CStrings(dynstr, pnoff)
    tab = SymTab(start, end, CStrings(strtab, noff), bind == STB_WEAK, bind == STB_GLOBAL, demangle_ties=True,
                 plt_start=pstart, plt_end=pend, plt_raw=praw)
    return ElfSyms(tab, segs, table, et_exec)


def _function_symbols(elf: ElfFile) -> tuple[Any, ...] | None:
    """The symbols perf keeps of an ELF file's .symtab (else .dynsym), sorted by address: the table's
    name, start, end (the table's sizes), label (STT_NOTYPE), binding, the string table and each
    name's offset in it; None without a table. Raises ValueError for a table of partial records."""
    sec = elf.section(".symtab")
    if sec is None or elf.sh(sec, "type") == E.SHT_NOBITS:
        sec = elf.section(".dynsym")
    if sec is None or elf.sh(sec, "type") not in (E.SHT_SYMTAB, E.SHT_DYNSYM):
        return None
    dt = _sym_dtype(elf)
    data = elf.data(sec)
    if len(data) % dt.itemsize:
        raise ValueError(f"{elf.path}: {elf.names[sec]} is not a whole number of symbols")
    syms = data.view(dt)
    strtab = elf.data(elf.sh(sec, "link")).tobytes()
    text = np.zeros(max(len(elf.shdrs), 1), bool)
    text[:len(elf.names)] = ["text" in n for n in elf.names]
    info, shndx, noff = syms["info"], syms["shndx"].astype(np.int64), syms["name"].astype(np.int64)
    typ = info & 0xF
    in_text = np.zeros(len(syms), bool)
    regular = shndx < len(text)
    in_text[regular] = text[shndx[regular]]
    # names that are empty or start with '$' (mapping symbols) are not kept
    sb = np.frombuffer(strtab, np.uint8)
    first = sb[np.minimum(noff, len(sb) - 1)] if len(sb) else np.zeros(len(noff), np.uint8)
    keep = (noff != 0) & (shndx != SHN_UNDEF) & (
        (typ == STT_FUNC) | (typ == STT_GNU_IFUNC) | ((typ == STT_NOTYPE) & (shndx != SHN_ABS) & in_text)) \
        & (noff < len(sb)) & (first != 0) & (first != ord("$"))
    idx = np.flatnonzero(keep)
    value = syms["value"][idx].astype(np.uint64)
    order = np.argsort(value, kind="stable")
    idx = idx[order]
    start = value[order]
    return (elf.names[sec], start, start + syms["size"][idx].astype(np.uint64), typ[idx] == STT_NOTYPE,
            info[idx] >> 4, strtab, noff[idx])


def _plt(elf: ElfFile) -> tuple[np.ndarray, bytes, int, int] | None:
    """The PLT slots (perf 6.1's dso__synthesize_plt_symbols): the .rela.plt (or .rel.plt) entries
    in order, each naming its .dynsym symbol, one .plt entry each after the .plt header (entry and
    header size: the .plt entry size). Returns the names' offsets in .dynstr (-1: none), .dynstr,
    the .plt address and entry size."""
    try:
        rel = elf.section(".rela.plt")
        rel = rel if rel is not None else elf.section(".rel.plt")
        plt, dynsym = elf.section(".plt"), elf.section(".dynsym")
        if rel is None or plt is None or dynsym is None or elf.sh(rel, "type") not in (E.SHT_RELA, E.SHT_REL):
            return None
        if elf.sh(dynsym, "type") == E.SHT_NOBITS:
            return None
        link = elf.sh(rel, "link")
        if not 0 <= link < len(elf.names) or elf.names[link] != ".dynsym":
            return None
        ent = elf.sh(plt, "entsize")
        if not ent:
            return None
        dt = _sym_dtype(elf)
        sdata = elf.data(dynsym)
        if len(sdata) % dt.itemsize:
            return None
        names = sdata.view(dt)["name"]
        dynstr = elf.data(elf.sh(dynsym, "link")).tobytes()
        # Elf_Rel(a) records: r_offset, r_info (symbol index in its high half) [, r_addend]
        word = "u8" if elf.elfclass == 64 else "u4"
        fields = [("off", elf.order + word), ("info", elf.order + word)]
        if elf.sh(rel, "type") == E.SHT_RELA:
            fields.append(("addend", elf.order + word.replace("u", "i")))
        rdt = np.dtype(fields)
        rdata = elf.data(rel)
        if len(rdata) % rdt.itemsize:
            return None
        symidx = (rdata.view(rdt)["info"] >> (32 if elf.elfclass == 64 else 8)).astype(np.int64)
        inside = symidx < len(names)
        pnoff = np.full(len(symidx), -1, np.int64)
        pnoff[inside] = names[symidx[inside]]
        return pnoff, dynstr, elf.sh(plt, "addr"), ent
    except (ValueError, IndexError):
        return None


@dataclass
class Found:
    """The files to read a user DSO's symbols from: the first candidate with a .symtab (else the
    runtime one), the runtime image (its program headers turn file offsets into addresses; a
    separate debuginfo file's are not usable), how they were found, verified by build-id or not."""

    path: str
    runtime: str
    how: str  # build-id cache, debuginfo, this machine
    verified: bool


def find_dso_file(filename: str, build_id: str | None) -> tuple[Found | None, str]:
    """The files to read a user DSO's symbols from, in perf's order (dso__load: debuglink, build-id
    cache elf and debug, /usr/lib/debug by path and by build-id, the path itself), each only when its
    build-id is the recorded one; or None and why (``build-id mismatch``, ``DSO not on this machine``).
    Without a recorded build-id the path's own build-id is used, and the result is unverified."""
    p = Path(filename)
    own = elf_facts(filename) if filename.startswith("/") else None
    here = own is not None
    verified = bool(build_id)
    if not build_id and own is not None:
        build_id = own.build_id
    cands: list[tuple[Path, str]] = []
    if own is not None:
        link = own.debuglink
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
        facts = elf_facts(str(c))
        if facts is None:
            continue
        if build_id and not same_build_id(facts.build_id, build_id):
            mismatch = True
            continue
        if symtab is None and facts.symtab:
            symtab, how = str(c), kind
        if runtime is None and facts.dynsym:
            runtime = str(c)
            how = how or kind
        if symtab and runtime:
            break
    if symtab is None and runtime is None:
        return None, "build-id mismatch" if mismatch else "DSO not on this machine"
    return Found(symtab or runtime or "", runtime or symtab or "", how, verified), ""
