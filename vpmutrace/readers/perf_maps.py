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

Symbolisation is one pass over the finished ``samples`` columns, after the reader made them, done
on the samples' distinct (address space, IP) pairs (:func:`symbolize`): each pair finds its map
once (:func:`cover`: the maps become elementary address intervals, each with its maps in
insertion order, found with ``searchsorted``; :class:`ProcessMaps`: a process's own maps, then its
parent's at the fork), then per DSO its symbol table (readers/symtab.py) is searched for all its
pairs at once, and the samples' columns are gathered from their pairs'. Guest samples (guest
kernel/user cpumode) are not resolved against the host's symbols.

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

from vpmutrace.formats.perf_abi import (
    MISC_BUILD_ID_SIZE,
    MISC_CPUMODE_MASK,
    MISC_GUEST_KERNEL,
    MISC_GUEST_USER,
    MISC_KERNEL,
    MISC_MMAP_BUILD_ID,
    MISC_MMAP_DATA,
    MISC_USER,
    REC_FORK,
    REC_HEADER_BUILD_ID,
    REC_KSYMBOL,
    REC_MMAP,
    REC_MMAP2,
)
from vpmutrace.readers import symbols as S
from vpmutrace.readers.symtab import SymTab, demangle

if TYPE_CHECKING:
    from vpmutrace.readers.perf_data import PerfFile
    from vpmutrace.tracedata import TraceBuilder

PROT_EXEC, MAP_HUGETLB = 0x4, 0x40000
# perf's map__new (tools/perf/util/map.c): an executable map of anonymous memory (is_anon_memory: "//anon",
# "/dev/zero...", "/anon_hugepage...", or MAP_HUGETLB) or of no DSO (is_no_dso_memory: "[stack...", "/SYSV...",
# "[heap]") is named /tmp/perf-PID.map, where JITs write their symbols; perf script prints that name.
ANON_PREFIXES, NO_DSO_PREFIXES = ("/dev/zero", "/anon_hugepage"), ("[stack", "/SYSV")


def perf_map_name(name: str, pid: int, prot: int, flags: int) -> str:
    """The DSO name perf gives a user map (see ANON_PREFIXES)."""
    anon = name == "//anon" or name.startswith(ANON_PREFIXES) or bool(flags & MAP_HUGETLB)
    no_dso = name == "[heap]" or name.startswith(NO_DSO_PREFIXES)
    return f"/tmp/perf-{pid}.map" if (anon or no_dso) and prot & PROT_EXEC else name
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
            prot, flags = struct.unpack_from("<II", rec, 64)
            fname = rec[72:body_end]
        else:  # perf's machine__process_mmap_event: PROT_EXEC unless the record says data
            prot, flags = (0 if misc & MISC_MMAP_DATA else PROT_EXEC), 0
            fname = rec[40:body_end]
        name = fname.split(b"\0", 1)[0].decode("utf-8", "replace")
        mode = misc & MISC_CPUMODE_MASK
        if mode not in (MISC_KERNEL, MISC_GUEST_KERNEL) and pid != HOST_KERNEL_ID:
            name = perf_map_name(name, pid, prot, flags)
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
          mspace: np.ndarray | None = None, qspace: np.ndarray | None = None, window: bool = False) -> Any:
    """For maps given in insertion order (``mtime`` nondecreasing within an address space), the map
    covering each (addr, time): the last one inserted at or before ``time`` whose [start, end) holds
    ``addr``; -1 where none. ``mspace``/``qspace``: the address space (process) of each map and each
    query, so that all processes are done in one pass: every space's map bounds cut it into
    elementary intervals, each interval lists the maps covering it by insertion time, and a query
    finds its interval, then its map, with two searchsorted.

    ``window``: also the times between which each answer holds, (map, lo, hi): the same map covers
    the address at every time in [lo, hi) (the insertion times around the query's in its interval)."""
    n = len(addr)
    lo_all, hi_all = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    if not np.any(ends > starts) or not n:  # (no map covers an address: none, or all empty or reversed)
        none = np.full(n, -1, np.int64)
        return (none, np.full(n, lo_all, np.int64), np.full(n, hi_all, np.int64)) if window else none
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
    inside = (qseg >= 0) & (bkeys[np.maximum(qseg, 0)] // r == qspace)
    ok = (j >= 0) & inside & (key[jj] // w == qseg)
    hit = np.where(ok, mid[jj], -1)
    if not window:
        return hit
    lo = np.where(ok, ut[np.minimum(key[jj] % w, len(ut) - 1)], lo_all)
    nxt = np.minimum(j + 1, len(key) - 1)
    later = inside & (j + 1 < len(key)) & (key[nxt] // w == qseg)
    hi = np.where(later, ut[np.minimum(key[nxt] % w, len(ut) - 1)], hi_all)
    return hit, lo, hi


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


MAX_FORK_DEPTH = 64  # effective_maps follows at most this many forks up


@dataclass
class ProcessMaps:
    """The maps of many processes, to find for many (process, address, time) at once the map that
    effective_maps' list for the process would give (:meth:`find`).

    Each process is an address space holding its own maps; a forked process's lookup that none of
    its own maps answers falls through to its parent, at the time of the fork: the same answer as
    searching the parent's maps at the fork followed by the child's own, while searching a few
    maps per process instead of every inherited copy (a shell's children each inherit all its
    maps). This holds when every process's own maps come after its fork and no chain of forks loops
    or reaches effective_maps' depth limit; otherwise (``flat``) each process is searched through its
    effective_maps list."""

    maps: list[Mapping]  # every map an answer names
    start: np.ndarray
    end: np.ndarray
    mtime: np.ndarray
    mspace: np.ndarray  # each map's address space
    pids: np.ndarray  # each address space's process id
    parent: np.ndarray  # per address space: its parent's (-1: none)
    ftime: np.ndarray  # per address space: the fork's time
    flat: bool

    @classmethod
    def of(cls, side: Side, pids: list[int]) -> ProcessMaps:
        order: list[int] = []  # the processes and their ancestors
        space_of: dict[int, int] = {}
        flat = False
        for p in pids:
            chain: list[int] = []  # p and its ancestors, up to the first without a parent
            while True:
                if p in chain or len(chain) >= MAX_FORK_DEPTH:  # a loop, or effective_maps' depth limit
                    flat = True
                    break
                chain.append(p)
                ppid = side.forks.get(p, (p, 0))[0]
                if ppid == p:
                    break
                p = ppid
            for q in chain:
                if q not in space_of:
                    space_of[q] = len(order)
                    order.append(q)
        if not flat:
            own = [sorted(side.user.get(p, []), key=lambda m: (m.time, m.order)) for p in order]
            parent = np.full(len(order), -1, np.int64)
            ftime = np.zeros(len(order), np.int64)
            for k, p in enumerate(order):
                ppid, ft = side.forks.get(p, (p, 0))
                if ppid != p:
                    parent[k], ftime[k] = space_of[ppid], ft
                    flat = flat or any(m.time < ft for m in own[k])
        if flat:  # each process through its effective_maps list
            memo: dict[int, list[Mapping]] = {}
            order = list(dict.fromkeys(pids))
            own = [effective_maps(side, p, memo) for p in order]
            parent = np.full(len(order), -1, np.int64)
            ftime = np.zeros(len(order), np.int64)
        maps = [m for ms in own for m in ms]
        return cls(maps, np.array([m.start for m in maps], np.uint64), np.array([m.end for m in maps], np.uint64),
                   np.array([m.time for m in maps], np.int64),
                   np.repeat(np.arange(len(own)), [len(ms) for ms in own]).astype(np.int64),
                   np.array(order, np.int64), parent, ftime, flat)

    def find(self, pid: np.ndarray, addr: np.ndarray, time: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each query, the map (index into ``maps``, -1: none) and the times between which the
        same answer holds, [lo, hi) (as :func:`cover`'s ``window``): one :func:`cover` per fork level.
        A query going up to a parent asks at min(time, the fork times passed) (``fmin``), so an answer's
        window there holds for the query's times t with min(t, fmin) inside it."""
        n = len(addr)
        hit = np.full(n, -1, np.int64)
        lo = np.full(n, np.iinfo(np.int64).min, np.int64)
        hi = np.full(n, np.iinfo(np.int64).max, np.int64)
        o = np.argsort(self.pids)
        space = o[np.searchsorted(self.pids[o], pid)]
        fmin = np.full(n, np.iinfo(np.int64).max, np.int64)
        act = np.arange(n)
        while len(act) and len(self.maps):
            h, a, b = cover(self.start, self.end, self.mtime, addr[act], np.minimum(time[act], fmin[act]),
                            self.mspace, space[act], window=True)
            hi[act] = np.minimum(hi[act], np.where(b <= fmin[act], b, hi[act]))
            got = h >= 0
            hit[act[got]], lo[act[got]] = h[got], a[got]
            act = act[~got]
            up = self.parent[space[act]]
            act, up = act[up >= 0], up[up >= 0]
            fmin[act] = np.minimum(fmin[act], self.ftime[space[act]])
            space[act] = up
        return hit, lo, hi


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
    tab: SymTab | None = None
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
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)) if parts else np.zeros(0, dtype)


def _modes(tables: list[pa.Table]) -> np.ndarray:
    """cpumode per sample as perf's number (CPUMODES of perf_samples); NO_IP for the samples of a
    chunk without IPs (no ip column, or one with nulls)."""
    from vpmutrace.readers.perf_samples import CPUMODES

    code = {v: k for k, v in CPUMODES.items()}
    parts = []
    for t in tables:
        if "ip" not in t.column_names or t.column("ip").null_count:
            parts.append(np.full(t.num_rows, NO_IP, np.int8))
            continue
        c = t.column("cpumode").combine_chunks()
        if pa.types.is_dictionary(c.type):
            lut = np.array([code.get(v, 0) for v in c.dictionary.to_pylist()] or [0], dtype=np.int8)
            idx = c.indices.fill_null(0).to_numpy()
            parts.append(lut[idx])
        else:
            parts.append(np.array([code.get(v, 0) for v in c.to_pylist()], dtype=np.int8))
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)) if parts else np.zeros(0, np.int8)


def apply(pf: PerfFile, side: Side, b: TraceBuilder, first: int, snapshot: Path | None) -> None:
    """Symbolise the samples chunks this file added to the builder (``first``: how many there were before)."""
    chunks = b.chunks.get("samples", [])
    if len(chunks) > first:
        chunks[first:] = symbolize(pf, side, chunks[first:], b, snapshot)


def symbolize(pf: PerfFile, side: Side, tables: list[pa.Table], b: TraceBuilder,
              snapshot: Path | None) -> list[pa.Table]:
    """``tables`` (this file's samples chunks) with sym, dso and sym_source filled in.

    Samples repeat themselves (a loop is sampled at a few IPs thousands of times, many processes
    run the same code), so the work is done on items, the distinct (address space, IP) pairs (one
    hash pass over the samples, kernels.sample_items): each item finds its map at the time of its
    first sample, together with the times between which that answer holds; the samples of an item
    outside that window (a map replaced in between; kernels.item_windows counts them) are items of
    their own. Every item then gets its DSO, its address there and its symbol, and the samples'
    columns are gathered from the items'."""
    n = sum(t.num_rows for t in tables)
    if n == 0:
        return tables
    smp = Samples(_concat(tables, "ip", np.uint64, 0), _concat(tables, "tgid", np.int32, -1),
                  _concat(tables, "pid", np.int32, -1), _concat(tables, "ts_ns", np.int64, 0), _modes(tables))
    reasons = list(UNRESOLVED)
    kern = KernelSyms(None, 0, "", "", "no_kallsyms")
    if ((smp.mode == MISC_USER) | (smp.mode == MISC_KERNEL)).any():
        kern = kernel_symbols(pf, side, snapshot)
    dsos: list[Dso] = []
    kmaps, kdso = _kernel_space(side, kern, dsos)  # kernel space: kernel text, modules, BPF programs
    it = find_items(side, smp, kmaps)
    idso = np.full(len(it.first), -1, np.int64)  # index into dsos
    ilook = smp.ip[it.first]  # the address to look up in the DSO's table
    uit = np.flatnonzero(~it.kernel & (it.hit >= 0))
    if len(uit):
        h = it.hit[uit]
        maps = it.user.maps
        map_dso = np.full(len(maps), -1, np.int64)
        udso: dict[tuple[str, str | None], int] = {}
        _, at = np.unique(h, return_index=True)
        for g in h[np.sort(at)].tolist():  # user DSOs in the order of their first items
            m = maps[g]
            key = (m.filename, m.build_id or side.build_ids.get((False, m.filename)))
            if key not in udso:
                udso[key] = len(dsos)
                dsos.append(_user_dso(*key))
            map_dso[g] = udso[key]
        idso[uit] = map_dso[h]
        pgoff = np.array([maps[g].pgoff for g in range(len(maps))], np.uint64)
        ilook[uit] = ilook[uit] - it.user.start[h] + pgoff[h]  # file offset, for now
    kit = np.flatnonzero(it.kernel & (it.hit >= 0))
    idso[kit] = kdso[it.hit[kit]]
    iwhy = np.full(len(idso), -1, np.int8)  # index into UNRESOLVED keys
    iwhy[idso < 0] = reasons.index("no_map")
    isym, names = _lookup_items(dsos, idso, ilook, iwhy, reasons)
    # samples that are no item: no IP, guest samples (the host's symbols do not describe guest code),
    # other cpumodes (no map): three items more
    item, count, first = it.item, it.count, it.first
    rest = np.flatnonzero(item < 0)
    if len(rest):
        mode = smp.mode[rest]
        kind = np.where(mode == NO_IP, 0, np.where((mode == MISC_GUEST_KERNEL) | (mode == MISC_GUEST_USER), 1, 2))
        item[rest] = len(idso) + kind
        count = np.concatenate([count, np.bincount(kind, minlength=3)])
        first = np.concatenate([first, [int(rest[np.argmax(kind == k)]) if (kind == k).any() else 0
                                        for k in range(3)]])
        isym = np.concatenate([isym, [-1, -1, -1]])
        idso = np.concatenate([idso, [-1, -1, -1]])
        iwhy = np.concatenate([iwhy, np.array([reasons.index(r) for r in ("no_ip", "guest", "no_map")], np.int8)])
    del rest
    _count(pf, b, reasons, smp, item, first, count, iwhy, idso, dsos, kern)
    # columns: sym and dso as dictionaries; sym_source says where sym came from, or why it is null
    src = np.where(isym >= 0, idso, np.where(iwhy >= 0, len(dsos) + iwhy.astype(np.int64), -1))
    sources = [d.source for d in dsos] + [f"unresolved: {UNRESOLVED[r]}" for r in reasons]
    cols = dict(zip(("sym", "dso", "sym_source"),
                    _columns(item, count, [(isym, names), (idso, [d.name for d in dsos]), (src, sources)]),
                    strict=True))
    unresolved = np.bincount(iwhy[iwhy >= 0], weights=count[iwhy >= 0], minlength=len(reasons))
    _meta(pf, b, kern, dsos, n, int(count[isym >= 0].sum()), unresolved, reasons)
    out = []
    at = 0
    for t in tables:
        k = t.num_rows
        for col, arr in cols.items():
            piece = arr.slice(at, k)
            i = t.schema.get_field_index(col)
            f = pa.field(col, piece.type, True)
            t = t.set_column(i, f, piece) if i >= 0 else t.append_column(f, piece)
        out.append(t)
        at += k
    return out


KSPACE = np.iinfo(np.int64).min  # the kernel's address space in the items' keys (no process has this id)
NO_IP = -1  # the cpumode code (_modes) of a sample without an IP


@dataclass
class Samples:
    """The columns of the samples that symbolisation reads."""

    ip: np.ndarray  # uint64
    tgid: np.ndarray  # int32, -1: none
    tid: np.ndarray  # int32, -1: none
    time: np.ndarray  # int64 ns
    mode: np.ndarray  # int8: perf's cpumode, NO_IP for a sample without an IP

    def pid(self, rows: np.ndarray) -> np.ndarray:
        """The process of samples: tgid, or the thread id where there is none."""
        return np.where(self.tgid[rows] >= 0, self.tgid[rows], self.tid[rows]).astype(np.int64)


@dataclass
class Items:
    """The distinct (address space, IP) pairs of the samples and the map each is in."""

    item: np.ndarray  # per sample: its item (int32; -1: none, a sample resolved without maps)
    first: np.ndarray  # per item: its first sample
    count: np.ndarray  # per item: its samples
    kernel: np.ndarray  # per item: in the kernel's address space
    hit: np.ndarray  # per item: its map (in ``user.maps``, or the kernel's maps), -1: none
    user: ProcessMaps


def find_items(side: Side, smp: Samples, kmaps: list[Mapping]) -> Items:
    """The items of the samples (user-mode samples in their process's address space, kernel-mode
    ones in the kernel's; others have none) and their maps. A user-mode sample's IP is looked up in
    its process's maps only, even a kernel address after a skid past the return to user mode
    (perf's thread__find_map; its _fb fallback is for branch addresses)."""
    from vpmutrace import kernels

    item, first = _factorize(smp)
    ikern = smp.mode[first] == MISC_KERNEL
    upids = smp.pid(first[~ikern])
    user = ProcessMaps.of(side, np.unique(upids).tolist())
    karr = _map_arrays(kmaps)
    hit = np.full(len(first), -1, np.int64)
    lo = np.full(len(first), np.iinfo(np.int64).min, np.int64)
    hi = np.full(len(first), np.iinfo(np.int64).max, np.int64)
    u, k = np.flatnonzero(~ikern), np.flatnonzero(ikern)
    hit[u], lo[u], hi[u] = user.find(upids, smp.ip[first[u]], smp.time[first[u]])
    if len(k) and kmaps:
        hit[k], lo[k], hi[k] = cover(*karr, smp.ip[first[k]], smp.time[first[k]], window=True)
    # each item's samples, and those outside its window: items of their own
    count = np.zeros(len(first), np.int64)
    if kernels.item_windows(item, smp.time, lo, hi, count):
        it = np.maximum(item, 0)
        slow = np.flatnonzero((item >= 0) & ((smp.time < lo[it]) | (smp.time >= hi[it])))
        del it
        count -= np.bincount(item[slow], minlength=len(count))
        item[slow] = len(first) + np.arange(len(slow), dtype=item.dtype)
        first = np.concatenate([first, slow])
        count = np.concatenate([count, np.ones(len(slow), np.int64)])
        sk = smp.mode[slow] == MISC_KERNEL
        shit = np.full(len(slow), -1, np.int64)
        u, k = np.flatnonzero(~sk), np.flatnonzero(sk)
        shit[u] = user.find(smp.pid(slow[u]), smp.ip[slow[u]], smp.time[slow[u]])[0]
        if len(k) and kmaps:
            shit[k] = cover(*karr, smp.ip[slow[k]], smp.time[slow[k]])
        hit = np.concatenate([hit, shit])
        ikern = np.concatenate([ikern, sk])
    return Items(item, first, count, ikern, hit, user)


def _map_arrays(maps: list[Mapping]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([m.start for m in maps], np.uint64), np.array([m.end for m in maps], np.uint64),
            np.array([m.time for m in maps], np.int64))


def _factorize(smp: Samples) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's item (kernels.sample_items; -1: none) and each item's first sample: one pass of a
    hash table over the samples, grown (2x, rehashed) when full."""
    from vpmutrace import kernels

    n = len(smp.ip)
    slots = 1 << 16
    tab = np.zeros((slots, 3), np.int64)
    codes = np.empty(n, np.int32)
    first = np.empty(slots, np.int64)
    row = nc = 0
    while True:
        row, nc = kernels.sample_items(smp.ip, smp.tgid, smp.tid, smp.mode, np.int8(MISC_USER), np.int8(MISC_KERNEL),
                                       np.int64(KSPACE), np.int64(row), tab, codes, first, np.int64(nc))
        if row == n:
            return codes, first[:nc].copy()
        slots *= 2
        new = np.zeros((slots, 3), np.int64)
        kernels.rehash_items(tab, new)
        tab = new
        grown = np.empty(slots, np.int64)
        grown[:nc] = first[:nc]
        first = grown


def _lookup_items(dsos: list[Dso], idso: np.ndarray, ilook: np.ndarray, iwhy: np.ndarray,
                  reasons: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each item's symbol: codes (-1: none; ``iwhy`` set) into the names returned, in DSO order then
    table order. Names are decoded for the entries items land on only, and demangled (user
    symbols, as perf shows them; not the kernel's) in two c++filt runs for all DSOs: the names
    that settle which of several symbols at one address an ELF table keeps, before the lookups;
    the names found, after."""
    by_dso = np.argsort(idso, kind="stable")
    bounds = np.searchsorted(idso[by_dso], np.arange(len(dsos) + 1))
    work: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    for d, dso in enumerate(dsos):
        r = by_dso[bounds[d]:bounds[d + 1]]
        if not len(r):
            continue
        if dso.tab is None:
            iwhy[r] = reasons.index(dso.why)
            continue
        addr = ilook[r] if dso.elf is None else dso.elf.addr_of_offset(ilook[r])
        work.append((d, r, addr, dso.tab.near(addr)))
    demangle([nm for d, _, _, i in work for nm in dsos[d].tab.prefetch(i)])
    found: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, list[str]]] = []
    for d, r, addr, i in work:
        tab = dsos[d].tab
        e = tab.lookup(addr, i)
        hit = e >= 0
        iwhy[r[~hit]] = reasons.index("no_symbol")
        e = e[hit]
        used = np.zeros(len(tab), bool)
        used[e] = True
        code = np.cumsum(used) - 1
        ents = np.flatnonzero(used)
        found.append((d, r[hit], ents, code[e], tab.raw_names(ents)))
    demangle([nm for d, *_, raw in found if dsos[d].elf is not None for nm in raw])
    isym = np.full(len(idso), -1, np.int64)
    names: list[str] = []
    for d, r, ents, code, raw in found:
        isym[r] = len(names) + code
        got = dsos[d].tab.names(ents, raw)
        names.extend(demangle(got) if dsos[d].elf is not None else got)
    return isym, names


def _columns(item: np.ndarray, count: np.ndarray, coded: list[tuple[np.ndarray, list[str]]]
             ) -> list[pa.DictionaryArray]:
    """The samples' dictionary columns (``item``: each sample's item; ``count``: each item's samples)
    from per item codes (-1: null) over values, each keeping only the values its samples use, in
    code order: one pass over the samples for all of them (kernels.gather_columns)."""
    from vpmutrace import kernels

    n = len(item)
    codes, dicts, nulls = [], [], []
    for icode, values in coded:
        used = np.zeros(len(values) + 1, bool)
        used[icode[(count > 0) & (icode >= 0)]] = True
        remap = (np.cumsum(used) - 1).astype(np.int32)
        codes.append(np.where(icode >= 0, remap[np.maximum(icode, 0)], -1).astype(np.int32))
        dicts.append(pa.array([values[u] for u in np.flatnonzero(used).tolist()], pa.string()))
        nulls.append(int(count[icode < 0].sum()))
    out = [np.empty(n, np.int32) for _ in coded]
    valid = [np.zeros((n + 7) // 8, np.uint8) for _ in coded]
    kernels.gather_columns(item, *codes, *out, *valid)
    return [pa.DictionaryArray.from_arrays(
        pa.Array.from_buffers(pa.int32(), n, [pa.py_buffer(v) if z else None, pa.py_buffer(o)], null_count=z), d,
        safe=False) for o, v, z, d in zip(out, valid, nulls, dicts, strict=True)]


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
                tab = ks.kernel.shifted(kern.delta) if kern.delta else ks.kernel
                # perf's map__fixup_start/end: the kernel map spans its symbols once they are loaded
                start, end = tab.bounds()
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
            dsos.append(Dso(name, SymTab.of(np.array([addr], np.uint64), np.array([addr + ln], np.uint64), [name]),
                            source="KSYMBOL record (BPF program or trampoline)"))
            which.append(len(dsos) - 1)
    order = sorted(range(len(maps)), key=lambda k: (maps[k].time, k))
    return [maps[k] for k in order], np.array([which[k] for k in order], np.int64)


def _count(pf: PerfFile, b: TraceBuilder, reasons: list[str], smp: Samples, item: np.ndarray, first: np.ndarray,
           count: np.ndarray, iwhy: np.ndarray, idso: np.ndarray, dsos: list[Dso], kern: KernelSyms) -> None:
    """Each reason's samples in the stats, with examples: the first sample of each DSO (or of no map)
    in file order, up to five; once every DSO has one, the samples after. From the items (``first``:
    each one's first sample; ``count``: its samples)."""
    for k, r in enumerate(reasons):
        its = np.flatnonzero((iwhy == k) & (count > 0))
        if not len(its):
            continue
        d_of, f = idso[its], first[its]
        o = np.lexsort((f, d_of))
        new = np.ones(len(o), bool)
        new[1:] = d_of[o][1:] != d_of[o][:-1]
        rows, ds = f[o][new], d_of[o][new]  # each DSO's first sample
        p = np.argsort(rows)
        picks = list(zip(rows[p][:5].tolist(), ds[p][:5].tolist(), strict=True))
        if len(rows) == len(dsos) + 1 and len(picks) < 5:
            after = int(rows.max()) + 1
            more = after + np.flatnonzero(iwhy[item[after:]] == k)[:5 - len(picks)]
            picks += [(j, int(idso[item[j]])) for j in more.tolist()]
        b.stats.add(pf.path, STAT_CATEGORY, r, int(count[its].sum()), None)
        for j, d in picks:
            where = dsos[d].name if d >= 0 else "no map"
            extra = f"; kernel symbols: {'; '.join(kern.tried) or 'none found'}" \
                if r in ("no_kallsyms", "build_id_mismatch") and d >= 0 and dsos[d].name.startswith("[") else ""
            pid = int(smp.pid(np.array([j]))[0])
            b.stats.add(pf.path, STAT_CATEGORY, r, 0, f"ip {int(smp.ip[j]):#x} pid {pid} in {where}{extra}")


def _meta(pf: PerfFile, b: TraceBuilder, kern: KernelSyms, dsos: list[Dso], samples: int, resolved: int,
          counts: np.ndarray, reasons: list[str]) -> None:
    user = [d for d in dsos if not d.name.startswith("[") or d.name in ("[vdso]",)]
    info = {
        "kernel": kern.meta(),
        "samples": samples, "resolved": resolved,
        "unresolved": {r: int(c) for r, c in zip(reasons, counts.tolist(), strict=True) if c},
        "user_dsos": {"with_symbols": sorted({d.source for d in user if d.tab is not None}),
                      "without": sorted({f"{d.name}: {d.why}" for d in user if d.tab is None})},
    }
    for i in reversed(b.meta["inputs"]):
        if i.get("path") == pf.path:
            i["symbols"] = info
            break
