"""Where perf samples ran: the address-space records of a perf.data (MMAP, MMAP2, FORK, KSYMBOL,
HEADER_BUILD_ID) and the symbols that name them, as ``perf script -F ip,sym,dso`` resolves them
(tools/perf/util/machine.c, map.c, thread.c, symbol.c).

Maps over time: every process has the maps its MMAP/MMAP2 records gave it, a later map hiding
the part of an earlier one it overlaps (perf splits the older map), and a new process (FORK with
a new pid) starts with a copy of its parent's maps as they were at the fork. The kernel's maps
are the kernel text (``[kernel.kallsyms]_text``, whose pgoff is the address of the reference
symbol ``_text``, for relocation), the modules, and BPF programs (KSYMBOL register/unregister).
A sample resolves against the maps of its process (user mode) or the kernel's (kernel mode) as they
were at its time.

Symbolisation is one vectorised pass over the finished ``samples`` columns, after the reader
made them: per process the maps become elementary address intervals, each with its maps in
insertion order, and every sample finds its map with two ``searchsorted``; then per DSO its
symbol table is searched for all its samples at once. Guest samples (guest kernel/user cpumode)
are not resolved against the host's symbols.

Every sample left without a symbol is counted in the stats (category ``unresolved_symbols``, one
row per reason in ``UNRESOLVED``) and its ``sym_source`` column says why.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from vpmutrace.readers import symbols as S

if TYPE_CHECKING:
    from vpmutrace.readers.perf_data import PerfFile
    from vpmutrace.tracedata import TraceBuilder

REC_MMAP, REC_FORK, REC_MMAP2, REC_KSYMBOL, REC_HEADER_BUILD_ID = 1, 7, 10, 17, 67
MISC_CPUMODE_MASK = 7
MISC_KERNEL, MISC_USER, MISC_GUEST_KERNEL, MISC_GUEST_USER = 1, 2, 4, 5
MISC_MMAP_BUILD_ID = 1 << 14  # MMAP2 carries a build-id instead of maj/min/ino
MISC_BUILD_ID_SIZE = 1 << 15  # HEADER_BUILD_ID entry gives its build-id size
KSYMBOL_FLAGS_UNREGISTER = 1
HOST_KERNEL_ID = -1
U64_MAX = (1 << 64) - 1
KERNEL_DSO = "[kernel.kallsyms]"

STAT_CATEGORY = "unresolved_symbols"
# why a sample has no symbol: the stats name and the sym_source text of such samples
UNRESOLVED = {
    "no_ip": "the sample carries no IP (PERF_SAMPLE_IP not recorded)",
    "guest": "guest sample: the host's symbols do not describe guest code",
    "no_map": "no map covers the address (perf prints [unknown] ([unknown]))",
    "no_kallsyms": "no kallsyms for the recorded kernel (none in the file, the build-id cache, a host snapshot, "
                   "or this machine's /proc/kallsyms of the same kernel)",
    "build_id_mismatch": "the only symbol file found has another build-id than the recorded one",
    "dso_not_here": "the DSO is not on this machine (nor in the build-id cache)",
    "no_symbol": "no symbol covers the address in the DSO's symbol table",
}


@dataclass
class Mapping:
    start: int
    end: int
    pgoff: int
    filename: str
    time: int  # record time (-1: not recorded, before everything)
    order: int  # file order
    build_id: str | None = None


@dataclass
class Side:
    """The address-space records of one file."""

    user: dict[int, list[Mapping]] = field(default_factory=dict)  # by process id
    kernel: list[Mapping] = field(default_factory=list)  # kernel text and modules
    forks: dict[int, tuple[int, int]] = field(default_factory=dict)  # child pid -> (parent pid, time)
    # KSYMBOL records: time, order, addr, len, unregister, name
    ksyms: list[tuple[int, int, int, int, bool, str]] = field(default_factory=list)
    build_ids: dict[tuple[bool, str], str] = field(default_factory=dict)  # (kernel space, filename) -> build-id
    guest_maps: int = 0


def parse_build_ids(data: bytes) -> list[dict[str, Any]]:
    """HEADER_BUILD_ID feature (perf_header__read_build_ids): records of header, pid, 24 bytes of
    build-id (+ size byte when MISC_BUILD_ID_SIZE), NUL-padded filename. Files from before the pid
    field was added are recognised by their first name losing its first 4 characters."""
    out: list[dict[str, Any]] = []
    pos = 0
    old = len(data) >= 45 and data[36:49] == b"nel.kallsyms]"
    while pos + 8 <= len(data):
        _typ, misc, size = struct.unpack_from("<IHH", data, pos)
        if size < 8 or pos + size > len(data):
            break
        if old:
            pid, bid, name = HOST_KERNEL_ID, data[pos + 8:pos + 28], data[pos + 32:pos + size]
        else:
            pid = struct.unpack_from("<i", data, pos + 8)[0]
            bsize = data[pos + 32] if misc & MISC_BUILD_ID_SIZE else 20
            bid, name = data[pos + 12:pos + 12 + min(bsize, 20)], data[pos + 36:pos + size]
        out.append({"pid": pid, "cpumode": misc & MISC_CPUMODE_MASK, "build_id": bid.hex(),
                    "filename": name.split(b"\0", 1)[0].decode("utf-8", "replace")})
        pos += size
    return out


def read_side(pf: PerfFile, buf: np.ndarray, offs: np.ndarray, types: np.ndarray, sizes: np.ndarray) -> Side:
    """MMAP, MMAP2, FORK and KSYMBOL records (and pipe-mode HEADER_BUILD_ID) of the file."""
    from vpmutrace.readers.perf_data import _trailer, _trailer_fields

    side = Side()
    a0 = pf.attrs[0]
    ntrail = 8 * len(_trailer_fields(a0))
    timed = "time" in _trailer_fields(a0)
    for e in pf.build_ids:
        side.build_ids[(e["cpumode"] in (MISC_KERNEL, MISC_GUEST_KERNEL), e["filename"])] = e["build_id"]
    sel = np.flatnonzero(np.isin(types, [REC_MMAP, REC_MMAP2, REC_FORK, REC_KSYMBOL, REC_HEADER_BUILD_ID]))
    for order, k in enumerate(sel.tolist()):
        o, t, s = int(offs[k]), int(types[k]), int(sizes[k])
        rec = buf[o:o + s].tobytes()
        misc = struct.unpack_from("<H", rec, 4)[0]
        if t == REC_HEADER_BUILD_ID:
            for e in parse_build_ids(rec):
                side.build_ids[(e["cpumode"] in (MISC_KERNEL, MISC_GUEST_KERNEL), e["filename"])] = e["build_id"]
            continue
        time = _trailer(a0, rec).get("time", -1) if timed else -1
        body_end = s - ntrail if a0.sample_id_all else s
        if t == REC_FORK:
            pid, ppid = struct.unpack_from("<II", rec, 8)
            if pid != ppid:  # a new process (a new thread shares its process's maps)
                side.forks.setdefault(pid, (ppid, time))
            continue
        if t == REC_KSYMBOL:
            addr, ln, _ktype, flags = struct.unpack_from("<QIHH", rec, 8)
            name = rec[24:body_end].split(b"\0", 1)[0].decode("utf-8", "replace")
            side.ksyms.append((time, order, addr, ln, bool(flags & KSYMBOL_FLAGS_UNREGISTER), name))
            continue
        pid, _tid, start, ln, pgoff = struct.unpack_from("<iIQQQ", rec, 8)
        bid = None
        if t == REC_MMAP2:
            if misc & MISC_MMAP_BUILD_ID:
                bsize = rec[40]
                bid = rec[44:44 + min(bsize, 20)].hex()
            fname = rec[72:body_end]
        else:
            fname = rec[40:body_end]
        name = fname.split(b"\0", 1)[0].decode("utf-8", "replace")
        mode = misc & MISC_CPUMODE_MASK
        m = Mapping(start, min(start + ln, U64_MAX), pgoff, name, time, order, bid)  # (a damaged length: clamped)
        if mode in (MISC_GUEST_KERNEL, MISC_GUEST_USER):
            side.guest_maps += 1
        elif mode == MISC_KERNEL or pid == HOST_KERNEL_ID:
            side.kernel.append(m)
        else:
            side.user.setdefault(pid, []).append(m)
    return side


# ---- which map covers an address, at a time ----------------------------------------------------

def cover(starts: np.ndarray, ends: np.ndarray, mtime: np.ndarray, addr: np.ndarray, time: np.ndarray,
          mspace: np.ndarray | None = None, qspace: np.ndarray | None = None) -> np.ndarray:
    """For maps given in insertion order (``mtime`` nondecreasing within an address space), the map
    covering each (addr, time): the last one inserted at or before ``time`` whose [start, end) holds
    ``addr``; -1 where none. ``mspace``/``qspace``: the address space (process) of each map and each
    query, so that all processes are done in one pass: every space's map bounds cut it into
    elementary intervals, each interval lists the maps covering it by insertion time, and a query
    finds its interval, then its map, with two searchsorted."""
    n = len(addr)
    if not len(starts) or not n:
        return np.full(n, -1, np.int64)
    mspace = np.zeros(len(starts), np.int64) if mspace is None else mspace.astype(np.int64)
    qspace = np.zeros(n, np.int64) if qspace is None else qspace.astype(np.int64)
    vals = np.unique(np.concatenate([starts, ends]))
    r = np.int64(len(vals) + 1)
    ks, ke = mspace * r + np.searchsorted(vals, starts), mspace * r + np.searchsorted(vals, ends)
    bkeys = np.unique(np.concatenate([ks, ke]))  # every space's bounds, space by space
    s0, s1 = np.searchsorted(bkeys, ks), np.searchsorted(bkeys, ke)
    cnt = np.maximum(s1 - s0, 0)
    mid = np.repeat(np.arange(len(starts)), cnt)  # (interval, map) pairs
    seg = np.repeat(s0, cnt) + (np.arange(len(mid)) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    ut = np.unique(mtime)
    w = len(ut) + 1
    key = seg.astype(np.int64) * w + np.searchsorted(ut, mtime[mid])
    o = np.argsort(key, kind="stable")  # by interval, then time; equal keys keep insertion order
    key, mid = key[o], mid[o]
    qseg = np.searchsorted(bkeys, qspace * r + (np.searchsorted(vals, addr, side="right") - 1), side="right") - 1
    qrank = np.searchsorted(ut, time, side="right").astype(np.int64) - 1
    j = np.searchsorted(key, qseg * w + qrank, side="right") - 1
    jj = np.maximum(j, 0)
    ok = (j >= 0) & (qseg >= 0) & (key[jj] // w == qseg) & (bkeys[np.maximum(qseg, 0)] // r == qspace)
    return np.where(ok, mid[jj], -1)


def effective_maps(side: Side, pid: int, memo: dict[int, list[Mapping]], depth: int = 0) -> list[Mapping]:
    """A process's maps in insertion order: those inherited from its parent at the fork, then its own."""
    if pid in memo:
        return memo[pid]
    own = sorted(side.user.get(pid, []), key=lambda m: (m.time, m.order))
    inherited: list[Mapping] = []
    if pid in side.forks and depth < 64:
        ppid, ftime = side.forks[pid]
        if ppid != pid:
            inherited = [m for m in effective_maps(side, ppid, memo, depth + 1) if m.time <= ftime]
    memo[pid] = inherited + own
    return memo[pid]


# ---- kernel symbols ----------------------------------------------------------------------------

@dataclass
class KernelSyms:
    """The kernel's symbols in the recorded address space, and where they came from."""

    ks: S.Kallsyms | None
    delta: int  # kallsyms address - recorded address of the reference symbol
    source: str  # e.g. "build-id cache ~/.debug/[kernel.kallsyms]/<id>/kallsyms"
    verified: str  # how the source was matched to the recording
    why: str = "no_kallsyms"  # when ks is None
    tried: list[str] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        return {"source": self.source if self.ks else None, "verified": self.verified if self.ks else None,
                "relocation_delta": hex(self.delta) if self.ks and self.delta else "0x0" if self.ks else None,
                "unresolved_reason": None if self.ks else self.why, "tried": self.tried}


def _kernel_ref(side: Side) -> tuple[str | None, int | None, Mapping | None]:
    """The kernel text map and its reference symbol (name after ']' in its name, address = pgoff)."""
    for m in side.kernel:
        if m.filename.startswith("[kernel.kallsyms]"):
            ref = m.filename[len("[kernel.kallsyms]"):] or None
            return ref, (m.pgoff if ref else None), m
    return None, None, None


def load_snapshot(path: Path | None) -> tuple[dict[str, Any] | None, Path | None]:
    if path is None or not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text()), path
    except (OSError, json.JSONDecodeError):
        return None, None


def kernel_symbols(pf: PerfFile, side: Side, snapshot: Path | None) -> KernelSyms:
    """The kallsyms to resolve this file's kernel samples with, in this order: what was recorded with
    the file (``perf record --kcore``'s kcore_dir/kallsyms, the tracing data's kallsyms of older
    perf), perf's build-id cache, a host snapshot's kallsyms, this machine's /proc/kallsyms. Each is
    used only when it is the recorded kernel: the build-id cache is keyed by the recorded build-id, a
    snapshot and /proc/kallsyms must have the recorded build-id (without a recorded one: the same
    kernel release, unverified), and every source must hold the reference symbol the recording
    names, so that relocation (KASLR) between the two is known."""
    ref, ref_addr, _kmap = _kernel_ref(side)
    bid = side.build_ids.get((True, KERNEL_DSO))
    release = pf.features.get("os_release")
    tried: list[str] = []
    mismatch = False
    cands: list[tuple[str, str, Any]] = []  # (source, how verified, bytes or path)
    pdir = Path(pf.path).parent if Path(pf.path).name == "data" else None
    if pdir is not None and (pdir / "kcore_dir" / "kallsyms").is_file():
        cands.append((f"{pdir / 'kcore_dir' / 'kallsyms'} (perf record --kcore)", "recorded with the file",
                      pdir / "kcore_dir" / "kallsyms"))
    if pf.tracing is not None and pf.tracing.raw.get("kallsyms"):
        cands.append(("the file's tracing data (kallsyms written by perf record)", "recorded with the file",
                      bytes(pf.tracing.raw["kallsyms"])))
    if bid:
        bdir = S.buildid_dir()
        kcore = bdir / "[kernel.kcore]" / bid
        if kcore.is_dir():
            for d in sorted(kcore.iterdir()):
                if (d / "kallsyms").is_file():
                    cands.append((f"build-id cache {d / 'kallsyms'}", f"build-id {bid}", d / "kallsyms"))
        for p in (bdir / "[kernel.kallsyms]" / bid / "kallsyms", bdir / "[kernel.kallsyms]" / bid):
            if p.is_file():
                cands.append((f"build-id cache {p}", f"build-id {bid}", p))
                break
    snap, spath = load_snapshot(snapshot)
    if snap is not None and isinstance(snap.get("kallsyms"), dict) and snap["kallsyms"].get("file"):
        kp = spath.parent / snap["kallsyms"]["file"]
        sbid = snap.get("kernel_build_id")
        if not kp.is_file():
            tried.append(f"host snapshot {spath}: {kp} missing")
        elif bid and sbid and not S.same_build_id(bid, sbid):
            tried.append(f"host snapshot {spath}: kernel build-id {sbid} is not the recorded {bid}")
            mismatch = True
        elif bid and sbid:
            cands.append((f"host snapshot {kp}", f"build-id {bid}", kp))
        elif release and snap.get("kernel_release") == release:
            cands.append((f"host snapshot {kp}", f"unverified: same kernel release {release} (no build-id "
                                                 f"{'recorded' if not bid else 'in the snapshot'})", kp))
        else:
            tried.append(f"host snapshot {spath}: kernel {snap.get('kernel_release')} is not the recorded {release}")
            mismatch = True
    running = S.running_kernel_build_id()
    proc = Path("/proc/kallsyms")
    if proc.is_file():
        import platform

        if bid and running and S.same_build_id(bid, running):
            cands.append(("/proc/kallsyms of this machine", f"build-id {bid} (/sys/kernel/notes)", proc))
        elif not bid and release and release == platform.release():
            cands.append(("/proc/kallsyms of this machine", f"unverified: no build-id recorded, same kernel "
                                                            f"release {release}", proc))
        elif bid and not running:
            tried.append("/proc/kallsyms: the running kernel's build-id is unknown (no /sys/kernel/notes)")
        else:
            tried.append(f"/proc/kallsyms: running kernel {running or platform.release()} is not the recorded "
                         f"{bid or release}")
            mismatch = mismatch or bool(bid or release)
    for source, how, what in cands:
        try:
            data = what if isinstance(what, bytes) else S.read_text(what)
        except OSError as e:
            tried.append(f"{source}: {e.strerror}")
            continue
        ks = S.parse_kallsyms(data)
        if not len(ks.kernel):
            tried.append(f"{source}: no kernel symbols")
            continue
        if S.all_zero(ks):
            tried.append(f"{source}: every address is 0 (read with kptr_restrict in force)")
            continue
        delta = 0
        if ref is not None and ref_addr is not None:
            got = ks.ref(ref)
            if got is None:
                tried.append(f"{source}: no {ref} symbol to relocate with")
                continue
            delta = got - ref_addr
        return KernelSyms(ks, delta, source, how, tried=tried)
    return KernelSyms(None, 0, "", "", "build_id_mismatch" if mismatch else "no_kallsyms", tried)


# ---- the DSOs samples land in ------------------------------------------------------------------

@dataclass
class Dso:
    name: str  # as perf script prints it
    tab: S.SymTab | None = None
    why: str = "no_symbol"  # reason when tab is None
    source: str = ""  # sym_source text of its resolved samples
    elf: S.ElfSyms | None = None  # user DSOs: file offset -> address


def _module_name(filename: str) -> str:
    """A module map's DSO name as perf prints it (kmod_path__parse_name): [name], '-' as '_'."""
    if filename.startswith("["):
        return filename
    base = filename.rsplit("/", 1)[-1]
    for ext in (".ko.zst", ".ko.xz", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return "[" + base.replace("-", "_") + "]"


def _user_dso(filename: str, build_id: str | None) -> Dso:
    found, why = S.find_dso_file(filename, build_id)
    if found is None:
        return Dso(filename, None, "dso_not_here" if why.startswith("DSO") else "build_id_mismatch")
    elf = S.elf_symbols(found.path, found.runtime)
    if elf is None:
        return Dso(filename, None, "dso_not_here")
    ver = f"build-id {build_id}" if found.verified else "unverified: no build-id recorded, same path"
    return Dso(filename, elf.tab, source=f"ELF {elf.table} of {found.path} ({found.how}; {ver})", elf=elf)


# ---- the pass ----------------------------------------------------------------------------------

def _concat(tables: list[pa.Table], name: str, dtype: Any, fill: int) -> np.ndarray:
    parts = []
    for t in tables:
        if name not in t.column_names:
            parts.append(np.full(t.num_rows, fill, dtype))
            continue
        c = t.column(name)
        if pa.types.is_dictionary(c.type):
            c = c.cast(pa.string())
        parts.append(c.fill_null(fill).to_numpy().astype(dtype, copy=False) if c.null_count
                     else c.to_numpy().astype(dtype, copy=False))
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _modes(tables: list[pa.Table]) -> np.ndarray:
    """cpumode per sample as perf's number (CPUMODES of perf_samples)."""
    from vpmutrace.readers.perf_samples import CPUMODES

    code = {v: k for k, v in CPUMODES.items()}
    parts = []
    for t in tables:
        c = t.column("cpumode").combine_chunks()
        if pa.types.is_dictionary(c.type):
            lut = np.array([code.get(v, 0) for v in c.dictionary.to_pylist()] or [0], dtype=np.int8)
            idx = c.indices.fill_null(0).to_numpy()
            parts.append(lut[idx])
        else:
            parts.append(np.array([code.get(v, 0) for v in c.to_pylist()], dtype=np.int8))
    return np.concatenate(parts) if parts else np.zeros(0, np.int8)


def apply(pf: PerfFile, side: Side, b: TraceBuilder, first: int, snapshot: Path | None) -> None:
    """Symbolise the samples chunks this file added to the builder (``first``: how many there were before)."""
    chunks = b.chunks.get("samples", [])
    if len(chunks) > first:
        chunks[first:] = symbolize(pf, side, chunks[first:], b, snapshot)


def symbolize(pf: PerfFile, side: Side, tables: list[pa.Table], b: TraceBuilder,
              snapshot: Path | None) -> list[pa.Table]:
    """``tables`` (this file's samples chunks) with sym, dso and sym_source filled in."""
    n = sum(t.num_rows for t in tables)
    if n == 0:
        return tables
    ip = _concat(tables, "ip", np.uint64, 0)
    has_ip = np.concatenate([np.full(t.num_rows, "ip" in t.column_names and t.column("ip").null_count == 0)
                             for t in tables])
    pid = _concat(tables, "tgid", np.int64, -1)
    tid = _concat(tables, "pid", np.int64, -1)
    pid = np.where(pid >= 0, pid, tid)
    time = _concat(tables, "ts_ns", np.int64, 0)
    mode = _modes(tables)
    dsos: list[Dso] = []
    dso_of = np.full(n, -1, np.int32)  # index into dsos
    look = ip.copy()  # the address to look up in the DSO's table
    why = np.full(n, -1, np.int8)  # index into UNRESOLVED keys, for samples without a DSO
    reasons = list(UNRESOLVED)
    why[~has_ip] = reasons.index("no_ip")
    guest = np.isin(mode, [MISC_GUEST_KERNEL, MISC_GUEST_USER]) & has_ip
    why[guest] = reasons.index("guest")
    kern = KernelSyms(None, 0, "", "", "no_kallsyms")
    user = (mode == MISC_USER) & has_ip
    ksel = (mode == MISC_KERNEL) & has_ip
    if ksel.any() or user.any():
        kern = kernel_symbols(pf, side, snapshot)
    # kernel space: kernel text, modules, BPF programs
    kmaps, kdso = _kernel_space(side, kern, dsos)
    # user space: every process's maps in one pass
    memo: dict[int, list[Mapping]] = {}
    udso: dict[tuple[str, str | None], int] = {}
    usel = np.flatnonzero(user)
    if len(usel):
        upids, qspace = np.unique(pid[usel], return_inverse=True)
        allmaps: list[Mapping] = []
        mspace: list[int] = []
        for k, p in enumerate(upids.tolist()):
            maps = effective_maps(side, p, memo)
            allmaps.extend(maps)
            mspace.extend([k] * len(maps))
        if allmaps:
            st = np.array([m.start for m in allmaps], np.uint64)
            en = np.array([m.end for m in allmaps], np.uint64)
            mt = np.array([m.time for m in allmaps], np.int64)
            hit = cover(st, en, mt, ip[usel], time[usel], np.array(mspace, np.int64), qspace)
            got = hit >= 0
            map_dso = np.full(len(allmaps), -1, np.int64)
            for g in np.unique(hit[got]).tolist():
                m = allmaps[g]
                key = (m.filename, m.build_id or side.build_ids.get((False, m.filename)))
                if key not in udso:
                    udso[key] = len(dsos)
                    dsos.append(_user_dso(*key))
                map_dso[g] = udso[key]
            r = usel[got]
            h = hit[got]
            dso_of[r] = map_dso[h]
            look[r] = ip[r] - st[h] + np.array([m.pgoff for m in allmaps], np.uint64)[h]  # file offset, for now
    # (a user-mode sample's IP is looked up in its process's maps only, even a kernel address after a
    # skid past the return to user mode: perf's thread__find_map; its _fb fallback is for branch addresses)
    kq = np.flatnonzero(ksel)
    if len(kq) and kmaps:
        st = np.array([m.start for m in kmaps], np.uint64)
        en = np.array([m.end for m in kmaps], np.uint64)
        mt = np.array([m.time for m in kmaps], np.int64)
        hit = cover(st, en, mt, ip[kq], time[kq])
        dso_of[kq] = np.where(hit >= 0, kdso[np.maximum(hit, 0)], -1)
    why[(dso_of < 0) & (why < 0)] = reasons.index("no_map")
    # per DSO: its symbol table, all its samples at once; a symbol's code is its DSO's base + its index
    sym_code = np.full(n, -1, np.int64)
    base = np.zeros(len(dsos) + 1, np.int64)
    by_dso = np.argsort(dso_of, kind="stable")
    bounds = np.searchsorted(dso_of[by_dso], np.arange(len(dsos) + 1))
    for d, dso in enumerate(dsos):
        base[d + 1] = base[d] + (len(dso.tab) if dso.tab is not None else 0)
        r = by_dso[bounds[d]:bounds[d + 1]]
        if not len(r):
            continue
        if dso.tab is None:
            why[r] = reasons.index(dso.why)
            continue
        addr = look[r] if dso.elf is None else dso.elf.addr_of_offset(look[r])
        i = dso.tab.lookup(addr)
        hit = i >= 0
        why[r[~hit]] = reasons.index("no_symbol")
        sym_code[r[hit]] = base[d] + i[hit]
    # names of the symbols used only (perf demangles user symbols, not the kernel's)
    used = _used(sym_code, int(base[-1]))
    owner = np.searchsorted(base, used, side="right") - 1
    names = [dsos[d].tab.names[int(c - base[d])] for c, d in zip(used.tolist(), owner.tolist(), strict=True)]
    user_k = [k for k, d in enumerate(owner.tolist()) if dsos[d].elf is not None]
    for k, nm in zip(user_k, S.demangle([names[k] for k in user_k]), strict=True):
        names[k] = nm
    remap = np.full(int(base[-1]) + 1, -1, np.int64)
    remap[used] = np.arange(len(used))
    sym_code = np.where(sym_code >= 0, remap[np.maximum(sym_code, 0)], -1)
    _count(pf, b, reasons, why, ip, pid, dso_of, dsos, kern)
    # columns: sym and dso as dictionaries; sym_source says where sym came from, or why it is null
    dso_names = [d.name for d in dsos]
    dso_arr = _dict(dso_of, dso_names)
    sources = [d.source for d in dsos] + [f"unresolved: {UNRESOLVED[r]}" for r in reasons]
    src_code = np.where(sym_code >= 0, dso_of, len(dsos) + np.maximum(why, 0).astype(np.int64))
    sym_arr = _dict(sym_code, names)
    src_arr = _dict(np.where((sym_code >= 0) | (why >= 0), src_code, -1), sources)
    _meta(pf, b, kern, dsos, dso_of, sym_code, why, reasons)
    out = []
    at = 0
    for t in tables:
        k = t.num_rows
        for col, arr in (("sym", sym_arr), ("dso", dso_arr), ("sym_source", src_arr)):
            piece = arr.slice(at, k)
            i = t.schema.get_field_index(col)
            f = pa.field(col, piece.type, True)
            t = t.set_column(i, f, piece) if i >= 0 else t.append_column(f, piece)
        out.append(t)
        at += k
    return out


def _used(codes: np.ndarray, size: int) -> np.ndarray:
    """The distinct non-negative codes (< size), sorted, without sorting the codes."""
    valid = codes[codes >= 0]
    return np.flatnonzero(np.bincount(valid, minlength=size)) if len(valid) else np.zeros(0, np.int64)


def _dict(codes: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    """int codes (-1: null) over ``values``, only the values used kept."""
    valid = codes >= 0
    used = _used(codes, len(values))
    remap = np.zeros(len(values) + 1, np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    idx = remap[np.where(valid, codes, len(values))]
    return pa.DictionaryArray.from_arrays(pa.array(idx, mask=~valid), pa.array([values[u] for u in used.tolist()],
                                                                                   pa.string()))


def _kernel_space(side: Side, kern: KernelSyms, dsos: list[Dso]) -> tuple[list[Mapping], np.ndarray]:
    """The kernel's maps in insertion order (kernel text, modules, BPF programs; an unregistered BPF
    program's range becomes a hole) and the DSO index of each (-1 for a hole)."""
    maps: list[Mapping] = []
    which: list[int] = []
    ks = kern.ks
    verified = f"kallsyms: {kern.source}; {kern.verified}" if ks else ""
    for m in side.kernel:
        if m.filename.startswith("[kernel.kallsyms]"):
            if ks is not None:
                tab = S.SymTab(ks.kernel.start - np.uint64(kern.delta) if kern.delta >= 0 else
                               ks.kernel.start + np.uint64(-kern.delta),
                               ks.kernel.end - np.uint64(kern.delta) if kern.delta >= 0 else
                               ks.kernel.end + np.uint64(-kern.delta), ks.kernel.names)
                # perf's map__fixup_start/end: the kernel map spans its symbols once they are loaded
                start, end = int(tab.start[0]), int(tab.end[-1])
                dsos.append(Dso(KERNEL_DSO, tab, source=verified))
            else:
                start, end = m.start, m.end
                dsos.append(Dso(KERNEL_DSO, None, kern.why))
            maps.append(Mapping(start, end, m.pgoff, m.filename, -1, -1))
            which.append(len(dsos) - 1)
    for m in side.kernel:
        if m.filename.startswith("[kernel.kallsyms]"):
            continue
        short = _module_name(m.filename)
        # perf names a module's DSO by the path its build-id entry gives (perf record writes one for every
        # module with samples), else [name]
        name = m.filename if (True, m.filename) in side.build_ids else short
        tab = ks.modules.get(short[1:-1]) if ks is not None else None
        if tab is not None and len(tab) and (int(tab.start[0]) < m.start or int(tab.start[-1]) >= m.end):
            # the kallsyms is of another boot (the module was elsewhere): its addresses do not apply
            dsos.append(Dso(name, None, "build_id_mismatch"))
        elif tab is not None:
            dsos.append(Dso(name, tab, source=verified))
        else:
            dsos.append(Dso(name, None, kern.why if ks is None else "no_symbol"))
        maps.append(m)
        which.append(len(dsos) - 1)
    for time, order, addr, ln, unreg, name in sorted(side.ksyms):
        maps.append(Mapping(addr, addr + ln, 0, name, time, order))
        if unreg:
            which.append(-1)
        else:
            dsos.append(Dso(name, S.SymTab(np.array([addr], np.uint64), np.array([addr + ln], np.uint64), [name]),
                            source="KSYMBOL record (BPF program or trampoline)"))
            which.append(len(dsos) - 1)
    order = sorted(range(len(maps)), key=lambda k: (maps[k].time, k))
    return [maps[k] for k in order], np.array([which[k] for k in order], np.int64)


def _count(pf: PerfFile, b: TraceBuilder, reasons: list[str], why: np.ndarray, ip: np.ndarray, pid: np.ndarray,
           dso_of: np.ndarray, dsos: list[Dso], kern: KernelSyms) -> None:
    for k, r in enumerate(reasons):
        rows = np.flatnonzero(why == k)
        if not len(rows):
            continue
        examples = []
        seen: set[int] = set()
        for j in rows.tolist():
            d = int(dso_of[j])
            if d in seen and len(seen) < len(dsos) + 1:
                continue
            seen.add(d)
            where = dsos[d].name if d >= 0 else "no map"
            extra = f"; kernel symbols: {'; '.join(kern.tried) or 'none found'}" \
                if r in ("no_kallsyms", "build_id_mismatch") and d >= 0 and dsos[d].name.startswith("[") else ""
            examples.append(f"ip {int(ip[j]):#x} pid {int(pid[j])} in {where}{extra}")
            if len(examples) >= 5:
                break
        b.stats.add(pf.path, STAT_CATEGORY, r, len(rows), None)
        for ex in examples:
            b.stats.add(pf.path, STAT_CATEGORY, r, 0, ex)


def _meta(pf: PerfFile, b: TraceBuilder, kern: KernelSyms, dsos: list[Dso], dso_of: np.ndarray,
          sym_code: np.ndarray, why: np.ndarray, reasons: list[str]) -> None:
    counts = np.bincount(why[why >= 0], minlength=len(reasons)) if (why >= 0).any() else np.zeros(len(reasons), int)
    user = [d for d in dsos if not d.name.startswith("[") or d.name in ("[vdso]",)]
    info = {
        "kernel": kern.meta(),
        "samples": int(len(sym_code)), "resolved": int((sym_code >= 0).sum()),
        "unresolved": {r: int(c) for r, c in zip(reasons, counts.tolist(), strict=True) if c},
        "user_dsos": {"with_symbols": sorted({d.source for d in user if d.tab is not None}),
                      "without": sorted({f"{d.name}: {d.why}" for d in user if d.tab is None})},
    }
    for i in reversed(b.meta["inputs"]):
        if i.get("path") == pf.path:
            i["symbols"] = info
            break
