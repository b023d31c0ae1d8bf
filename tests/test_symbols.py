"""Symbols of perf samples (readers/perf_maps.py, readers/symbols.py) against what perf script prints.

fixtures/cpuclock.perf.data is `perf record -e cpu-clock -a -g` around microguest (KVM exits) on a
kvm_pvm host, with the text `perf script -F ip,sym,dso -G` printed for it on the recording host and
that host's kallsyms kept next to it (cpuclock.host.json + cpuclock.kallsyms.xz), so that its kernel
symbols resolve in any clone. User-space symbols resolve only where the DSO with the recorded
build-id is on the machine running the tests.
"""

from __future__ import annotations

import bisect
import json
import lzma
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import FIXTURES, need_tool, shared

from vpmutrace.readers import LoadOptions, load_trace
from vpmutrace.readers import perf_maps as pm
from vpmutrace.readers import symbols as S
from vpmutrace.readers import symtab as T

CPUCLOCK = FIXTURES / "cpuclock.perf.data"


def _perf_lines(text: str) -> list[tuple[int, str, str]]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"\s*([0-9a-f]+) (.*)$", line)
        assert m, line
        out.append((int(m.group(1), 16), m.group(2), line.strip()))
    return out


def _ours(td) -> list[tuple[int, str | None, str | None, str | None, str]]:  # noqa: ANN001
    df = td.df("samples").sort(["ts_ns", "seq"])
    return list(zip(df["ip"].to_list(), df["sym"].cast(pl.String).to_list(), df["dso"].cast(pl.String).to_list(),
                    df["sym_source"].cast(pl.String).to_list(), df["cpumode"].cast(pl.String).to_list(), strict=True))


def _line(ip: int, sym: str | None, dso: str | None) -> str:
    return f"{ip:x} {sym or '[unknown]'} ({dso or '[unknown]'})"


@pytest.fixture
def no_buildid_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty perf build-id cache: kernel symbols must come from what is stored with the fixture."""
    d = tmp_path / "debug"
    d.mkdir()
    monkeypatch.setenv("PERF_BUILDID_DIR", str(d))
    return d


def test_fixture_agrees_with_perf_script(no_buildid_cache: Path) -> None:
    """Every sample: the DSO perf printed; the kernel symbol perf printed (from the kallsyms stored
    with the fixture, verified by build-id); the user symbol perf printed wherever the DSO with the
    recorded build-id is on this machine (elsewhere: null, with the reason)."""
    perf = _perf_lines(lzma.decompress((FIXTURES / "cpuclock.perf-script.txt.xz").read_bytes()).decode())
    td = load_trace([CPUCLOCK])
    ours = _ours(td)
    assert len(ours) == len(perf) == 1100
    kern = td.meta["inputs"][0]["symbols"]["kernel"]
    assert kern["source"].startswith("host snapshot") and kern["source"].endswith("cpuclock.kallsyms.xz")
    assert kern["verified"] == "build-id abf9ec0ec5946600c90641cf5db998472fac410b"
    compared = {"kernel": 0, "user": 0, "user_absent": 0}
    for (pip, ptext, pline), (ip, sym, dso, src, mode) in zip(perf, ours, strict=True):
        assert ip == pip
        assert ptext.endswith(f" ({dso or '[unknown]'})"), (pline, dso)  # the DSO, always
        if mode == "kernel":
            assert _line(ip, sym, dso) == pline
            compared["kernel"] += 1
        elif sym is not None or src.startswith("unresolved: no symbol"):
            assert _line(ip, sym, dso) == pline, src
            compared["user"] += 1
        else:  # the DSO (with that build-id) is not on this machine
            assert src.startswith("unresolved: ") and sym is None
            compared["user_absent"] += 1
    assert compared["kernel"] == 533
    # KVM's run loop and PVM's exit handling are named in the samples (skid analysis reads them)
    syms = set(td.df("samples")["sym"].cast(pl.String).drop_nulls().to_list())
    assert {"kvm_arch_vcpu_ioctl_run", "pvm_do_event_irqoff", "__kvm_write_guest_page"} <= syms


def test_fixture_live_perf_script_agrees() -> None:
    """perf script run here on the fixture, line for line (where perf named something we must name the
    same; where perf printed [unknown], so do we unless we had symbols perf had not)."""
    perf_exe = need_tool("perf")
    out = subprocess.run([perf_exe, "script", "-i", str(CPUCLOCK), "-F", "ip,sym,dso", "-G"], capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0 or not out.stdout.strip():
        pytest.skip(f"perf script failed here: {out.stderr.strip()[:200]}")
    perf = _perf_lines(out.stdout)
    ours = _ours(load_trace([CPUCLOCK]))
    assert len(perf) == len(ours)
    same = sum(_line(ip, sym, dso) == pline for (_, _, pline), (ip, sym, dso, _, _) in zip(perf, ours, strict=True))
    for (_, ptext, pline), (ip, sym, dso, _, _) in zip(perf, ours, strict=True):
        if not ptext.startswith("[unknown]"):
            assert _line(ip, sym, dso) == pline
    assert same >= 0.9 * len(perf)


def _snapshot_with(tmp_path: Path, kallsyms: bytes, build_id: str | None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "k.xz").write_bytes(lzma.compress(kallsyms))
    snap = tmp_path / "host.json"
    snap.write_text(json.dumps({"kernel_release": "6.18.44-fc-v769", "kernel_build_id": build_id,
                                "kallsyms": {"file": "k.xz"}}))
    return snap


def _shifted(delta: int) -> bytes:
    text = lzma.decompress((FIXTURES / "cpuclock.kallsyms.xz").read_bytes())
    out = []
    for line in text.splitlines():
        a, rest = line.split(b" ", 1)
        out.append(b"%016x %s" % (int(a, 16) + delta, rest))
    return b"\n".join(out) + b"\n"


def test_kaslr_relocation_between_recording_and_kallsyms(tmp_path: Path, no_buildid_cache: Path) -> None:
    """A kallsyms of another boot of the same kernel (every address moved by the KASLR slide): the
    kernel map's reference symbol (_text, whose recorded address is the map's pgoff) gives the slide,
    as perf's kallsyms__delta does, and every kernel sample gets the same symbol."""
    base = _ours(load_trace([CPUCLOCK]))
    delta = 0x1e00000
    snap = _snapshot_with(tmp_path, _shifted(delta), "abf9ec0ec5946600c90641cf5db998472fac410b")
    td = load_trace([CPUCLOCK], LoadOptions(snapshot=snap))
    assert td.meta["inputs"][0]["symbols"]["kernel"]["relocation_delta"] == hex(delta)
    moved = _ours(td)
    assert [r[:3] for r in moved if r[4] == "kernel"] == [r[:3] for r in base if r[4] == "kernel"]
    assert td.meta["host"]["kernel_build_id"] == "abf9ec0ec5946600c90641cf5db998472fac410b"


def test_unresolved_kernel_samples_are_counted_with_why(tmp_path: Path, no_buildid_cache: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No usable kallsyms: each kernel sample is counted under one reason, and says it in sym_source."""
    monkeypatch.setattr(S, "running_kernel_build_id", lambda: None)  # /proc/kallsyms is not of the recording
    cases = {
        # another kernel's snapshot: build-id mismatch
        "build_id_mismatch": _snapshot_with(tmp_path / "a", _shifted(0), "00" * 20),
        # kptr_restrict: every address 0
        "no_kallsyms": _snapshot_with(tmp_path / "b", re.sub(rb"(?m)^[0-9a-f]{16}", b"0" * 16, _shifted(0)),
                                      "abf9ec0ec5946600c90641cf5db998472fac410b"),
    }
    for why, snap in cases.items():
        td = load_trace([CPUCLOCK], LoadOptions(snapshot=snap))
        df = td.df("samples").filter(pl.col("cpumode").cast(pl.String) == "kernel")
        assert df["sym"].null_count() == df.height == 533
        assert set(df["dso"].cast(pl.String).to_list()) == {"[kernel.kallsyms]"}
        assert set(df["sym_source"].cast(pl.String).to_list()) == {f"unresolved: {pm.UNRESOLVED[why]}"}
        stats = {e.name: e.count for e in td.stats.entries() if e.category == pm.STAT_CATEGORY}
        assert stats[why] >= 533  # (+ user samples of DSOs rebuilt since the recording, for build_id_mismatch)
        assert sum(stats.values()) == td.df("samples")["sym"].null_count()
        if why == "no_kallsyms":
            assert any("every address is 0" in t for t in td.meta["inputs"][0]["symbols"]["kernel"]["tried"])


def test_other_hosts_files_agree_with_perf_script() -> None:
    """perf.data from other hosts and perf versions (3.4, 4.4, 4.14 ... 6.12): their kernels and DSOs are
    not here, so perf prints [unknown] with the DSO; so must we, with every sample counted."""
    perf_exe = need_tool("perf")
    names = ["perf.data.lost_samples-4.4", "perf.data.raw-3.4", "perf.data.branch-4.14", "perf.data.weight_struct",
             "perf.data.hybrid_topology", "perf.data.piped.header_features_aligned-6.12"]
    checked = 0
    for name in names:
        p = shared(f"public/perf_data_converter/{name}")
        out = subprocess.run([perf_exe, "script", "-i", str(p), "-F", "ip,sym,dso", "-G"], capture_output=True,
                             text=True, timeout=300)
        if out.returncode != 0:
            continue
        perf = _perf_lines(out.stdout)
        td = load_trace([p])
        ours = _ours(td)
        assert len(ours) == len(perf), name
        for (_, _, pline), (ip, sym, dso, _, _) in zip(perf, ours, strict=True):
            assert _line(ip, sym, dso) == pline, name
        unresolved = sum(e.count for e in td.stats.entries() if e.category == pm.STAT_CATEGORY)
        assert unresolved == td.df("samples")["sym"].null_count(), name
        checked += 1
    assert checked >= 4


def test_old_perf_file_reasons() -> None:
    """perf 4.4's file from a 4.14 kernel (fixture): kernel samples unresolved for a build-id mismatch
    (this machine runs another kernel), user samples because the DSOs are not here, and two user-mode
    samples with a kernel IP (a skid past the return to user mode) have no map, as in perf."""
    td = load_trace([FIXTURES / "perf.data.lost_samples-4.4"])
    sy = td.meta["inputs"][0]["symbols"]
    assert sy["resolved"] == 0 and sy["samples"] == 191
    assert sy["unresolved"] == {"no_map": 3, "build_id_mismatch": 116, "dso_not_here": 72}
    assert "/lib64/libc-2.23.so: dso_not_here" in sy["user_dsos"]["without"]


def test_build_id_feature_is_read() -> None:
    bids = pm.parse_build_ids(b"")
    assert bids == []
    from vpmutrace.readers.perf_data import PerfFile, _parse_feature
    # one entry: header(type 0, misc kernel|BUILD_ID_SIZE, size), pid -1, 20-byte id + size byte, name
    name = b"[kernel.kallsyms]".ljust(24, b"\0")
    bid = bytes(range(20))
    rec = (0).to_bytes(4, "little") + (1 | 1 << 15).to_bytes(2, "little") + (36 + len(name)).to_bytes(2, "little") \
        + (-1).to_bytes(4, "little", signed=True) + bid + bytes([20, 0, 0, 0]) + name
    pf = PerfFile("x", False)
    _parse_feature(pf, 2, rec)
    assert pf.build_ids == [{"pid": -1, "cpumode": 1, "build_id": bid.hex(), "filename": "[kernel.kallsyms]"}]


def test_maps_over_time_and_fork() -> None:
    """cover(): the last map inserted at or before the sample's time that holds the address; a later map
    hides the part of an older one it overlaps; a forked process starts with its parent's maps."""
    st = np.array([0x1000, 0x2000, 0x1800], np.uint64)
    en = np.array([0x3000, 0x2800, 0x1900], np.uint64)
    t = np.array([0, 10, 20], np.int64)
    addr = np.array([0x1500, 0x2100, 0x2100, 0x1850, 0x1850, 0x2900, 0x3000, 0x500], np.uint64)
    time = np.array([5, 5, 15, 15, 25, 30, 30, 30], np.int64)
    assert pm.cover(st, en, t, addr, time).tolist() == [0, 0, 1, 0, 2, 0, -1, -1]
    side = pm.Side(user={1: [pm.Mapping(0x1000, 0x2000, 0, "/a", 0, 0), pm.Mapping(0x5000, 0x6000, 0, "/late", 50, 3)],
                         2: [pm.Mapping(0x1000, 0x1800, 0, "/exec", 40, 2)]},
                   forks={2: (1, 30)})
    maps = pm.effective_maps(side, 2, {})
    assert [m.filename for m in maps] == ["/a", "/exec"]


def test_kallsyms_sizes_and_duplicates() -> None:
    """perf's kallsyms rules: a symbol ends where the next starts, the last kernel symbol before a module
    at the next page, symbols at one address keep the one perf keeps."""
    ks = S.parse_kallsyms(b"ffffffff81000000 T _stext\nffffffff81000000 T _text\nffffffff81000010 t a_fn\n"
                          b"ffffffff81000020 W weak_fn\nffffffff81000020 T strong_fn\nffffffff81000030 D some_data\n"
                          b"ffffffff81000038 A abs_sym\nffffffffc0001000 t mod_fn\t[kvm]\n")
    assert ks.kernel.all_names() == ["_text", "a_fn", "strong_fn", "some_data"]
    assert ks.kernel.eend.tolist()[:3] == [0xffffffff81000010, 0xffffffff81000020, 0xffffffff81000030]
    assert ks.kernel.bounds()[1] == 0xffffffff81002000  # up to the page after (next is a module)
    assert ks.refs["_text"] == 0xffffffff81000000
    assert ks.modules["kvm"].all_names() == ["mod_fn"]
    assert ks.kernel.lookup(np.array([0xffffffff81000015, 0xffffffff81000031, 0xffffffff81003000],
                                     np.uint64)).tolist() == [1, 3, -1]


def test_elf_symbols_of_a_local_binary() -> None:
    """An ELF on this machine: its build-id note, and a function symbol resolved from a file offset."""
    exe = shutil.which("ls") or "/bin/ls"
    bid = S.elf_build_id(str(Path(exe).resolve()))
    found, why = S.find_dso_file(str(Path(exe).resolve()), bid)
    assert found is not None and found.verified, why
    syms = S.elf_symbols(found.path, found.runtime)
    assert syms is not None and len(syms.tab) > 0
    found2, why2 = S.find_dso_file(str(Path(exe).resolve()), "00" * 20)
    assert found2 is None and why2 == "build-id mismatch"
    assert S.find_dso_file("/nonexistent/lib.so", None) == (None, "DSO not on this machine")


def test_skid_reads_dictionary_symbols() -> None:
    """The skid analyzer's contract: sym (now a dictionary column) with +0x offsets and clone suffixes
    stripped is matched against KVM_EXIT_PATH."""
    from vpmutrace.analyze.skid import CLONE_SUFFIX, KVM_EXIT_PATH, SYM_SUFFIX

    s = pl.Series(["vmx_vmexit+0x1a", "vmx_vcpu_enter_exit.isra.0", "__svm_vcpu_run", "kvm_arch_vcpu_ioctl_run"],
                  dtype=pl.Categorical)
    stripped = s.cast(pl.String).str.replace(SYM_SUFFIX, "").str.replace(CLONE_SUFFIX, "")
    assert stripped.is_in(list(KVM_EXIT_PATH)).to_list() == [True, True, True, False]


def _maps_of_each_sample_alone(side: pm.Side, kmaps: list[pm.Mapping], smp: pm.Samples) -> list[str | None]:
    """The map of every sample looked up on its own: the process's effective_maps list (the kernel's
    maps for kernel samples) and cover()."""
    out: list[str | None] = []
    for j in range(len(smp.ip)):
        mode = int(smp.mode[j])
        if mode not in (pm.MISC_USER, pm.MISC_KERNEL):
            out.append(None)
            continue
        maps = kmaps if mode == pm.MISC_KERNEL else pm.effective_maps(side, int(smp.pid(np.array([j]))[0]), {})
        st, en, mt = (np.array([getattr(m, f) for m in maps], dt) for f, dt in
                      (("start", np.uint64), ("end", np.uint64), ("time", np.int64)))
        h = int(pm.cover(st, en, mt, smp.ip[j:j + 1], smp.time[j:j + 1])[0]) if maps else -1
        out.append(maps[h].filename if h >= 0 else None)
    return out


@pytest.mark.parametrize("shape", ["forks", "fork_loop"])
def test_items_resolve_as_each_sample_alone(shape: str) -> None:
    """Symbolisation resolves each distinct (process, IP) once, at its first sample, with the times its
    answer holds, and a process's own maps before its parent's at the fork; every sample must still get
    the map a lookup of that sample alone gives (effective_maps + cover), also when maps are replaced
    between samples of one IP (those samples become items of their own) and when forks loop (then each
    process is searched through its effective_maps list)."""
    rng = np.random.default_rng(12)
    side = pm.Side()
    order = iter(range(10_000))

    def maps(tag: str, times: np.ndarray) -> list[pm.Mapping]:
        out = []
        for t in times.tolist():
            start = 0x10000 + 0x1000 * int(rng.integers(0, 12))
            out.append(pm.Mapping(start, start + 0x1000 * int(rng.integers(1, 5)), 0, f"/{tag}@{t}", t, next(order)))
        return out

    side.user[1] = maps("p1", np.sort(rng.integers(0, 1000, 40)))
    side.user[2] = maps("p2", np.sort(rng.integers(300, 1000, 15)))  # forked from 1 at 300
    side.user[3] = maps("p3", np.sort(rng.integers(500, 1000, 10)))  # forked from 2 at 500
    side.forks.update({2: (1, 300), 3: (2, 500), 4: (1, 700)})  # 4: no maps of its own
    if shape == "fork_loop":
        side.forks.update({6: (7, 100), 7: (6, 200)})
        side.user[6] = maps("p6", np.sort(rng.integers(100, 1000, 8)))
    kmaps = [pm.Mapping(0xffff0000, 0xffff8000, 0, "[kernel.kallsyms]", -1, -1),
             pm.Mapping(0xffff1000, 0xffff2000, 0, "bpf_prog_a", 400, 1),
             pm.Mapping(0xffff1000, 0xffff2000, 0, "bpf_prog_b", 800, 2)]
    n = 6000
    pids = np.array([1, 2, 3, 4, 5] + ([6, 7] if shape == "fork_loop" else []))
    tgid = rng.choice(pids, n).astype(np.int32)
    tgid[rng.random(n) < 0.05] = -1  # no tgid: the thread id is the process
    mode = rng.choice([pm.MISC_USER] * 6 + [pm.MISC_KERNEL] * 3 + [pm.MISC_GUEST_KERNEL, pm.NO_IP], n).astype(np.int8)
    ip = (0x10000 + 0x400 * rng.integers(0, 64, n)).astype(np.uint64)  # few IPs: many samples per item
    kern = mode == pm.MISC_KERNEL
    ip[kern] = (0xffff0000 + 0x800 * rng.integers(0, 8, int(kern.sum()))).astype(np.uint64)
    smp = pm.Samples(ip, tgid, rng.choice(pids, n).astype(np.int32), rng.integers(0, 1200, n), mode)
    it = pm.find_items(side, smp, kmaps)
    assert it.user.flat == (shape == "fork_loop")
    assert it.count.tolist() == np.bincount(it.item[it.item >= 0], minlength=len(it.first)).tolist()
    pairs = {(int(smp.pid(np.array([j]))[0]) if m == pm.MISC_USER else -1, int(ip[j]))
             for j, m in enumerate(mode.tolist()) if m in (pm.MISC_USER, pm.MISC_KERNEL)}
    assert len(it.first) > len(pairs)  # some samples were outside their item's window
    got = [None if i < 0 or it.hit[i] < 0 else (kmaps if it.kernel[i] else it.user.maps)[it.hit[i]].filename
           for i in it.item.tolist()]
    assert got == _maps_of_each_sample_alone(side, kmaps, smp)


def test_kallsyms_read_in_bulk_as_line_by_line() -> None:
    """A kallsyms text of the kernel's form is read with array operations; any other line sends the whole
    text through the line pattern: both must give the same tables (modules, duplicates, sizes)."""
    text = lzma.decompress((FIXTURES / "cpuclock.kallsyms.xz").read_bytes())
    extra = b"".join(b"ffffffffc%07x %s m%d_fn%d\t[mod_%d]\n" % (0x1000 + 0x40 * (k // 2), b"tTdW"[k % 4:k % 4 + 1],
                                                                  k % 3, k, k % 3) for k in range(300))
    for data in (text, text + extra):
        fast = S._kallsyms_lines(data)
        assert fast is not None
        slow = S._kallsyms_matches(data)
        assert all(np.array_equal(a, b) for a, b in zip(fast[1:6], slow[1:6], strict=True))
        assert [fast[6][m] for m in fast[5][fast[5] >= 0]] == [slow[6][m] for m in slow[5][slow[5] >= 0]]
        a, b = S.parse_kallsyms(data), S.parse_kallsyms(data + b"not a kallsyms line\n")
        assert a.lines == b.lines and a.refs == b.refs and a.modules.keys() == b.modules.keys()
        for ta, tb in [(a.kernel, b.kernel)] + [(a.modules[m], b.modules[m]) for m in a.modules]:
            assert ta.all_names() == tb.all_names()
            assert ta.estart.tolist() == tb.estart.tolist() and ta.eend.tolist() == tb.eend.tolist()
    assert {"mod_0", "mod_1", "mod_2", "__builtin__ftrace"} == set(S.parse_kallsyms(text + extra).modules)


def _reference_table(start: list[int], end: list[int], names: list[str], weak: list[bool], glob: list[bool],
                     plt: list[tuple[int, int, str]]) -> tuple[list[int], list[int], list[str]]:
    """One symbol per start as choose_best_symbol keeps it (a fold over each run), then the PLT entries
    merged in after the symbols at the same address."""
    ents: list[tuple[int, int, str]] = []
    k = 0
    while k < len(start):
        best, j = k, k + 1
        while j < len(start) and start[j] == start[k]:
            if not T.choose((end[best] - start[best], weak[best], glob[best], names[best]),
                            (end[j] - start[j], weak[j], glob[j], names[j])):
                best = j
            j += 1
        ents.append((start[best], end[best], names[best]))
        k = j
    ents = sorted(ents + plt, key=lambda e: e[0])  # (stable: symbols before PLT entries at one address)
    return [e[0] for e in ents], [e[1] for e in ents], [e[2] for e in ents]


@pytest.mark.parametrize("elf", [False, True])
def test_symbol_table_settles_duplicates_where_looked_up(elf: bool) -> None:
    """SymTab keeps every symbol and settles which one of those sharing a start perf keeps only where an
    address lands, from the numbers when they decide, else from the names: the answers must be those of
    the table perf builds up front (choose_best_symbol over every run) searched as symbols__find does."""
    rng = np.random.default_rng(4)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        start = np.sort(rng.integers(0, 40, n) * 16).astype(np.uint64)
        size = rng.choice([0, 0, 8, 16, 40, 100], n).astype(np.uint64)
        end = start + size
        names = [("_" * int(rng.integers(0, 3))) + rng.choice(["a", "bb", "SyS_x", "ccc"]) + str(k % 4)
                 for k in range(n)]
        weak, glob = rng.random(n) < 0.3, rng.random(n) < 0.5
        plt = [(int(s), int(s) + 16, f"p{k}@plt") for k, s in enumerate(range(int(rng.integers(0, 40)) * 16,
                                                                           700, 16 * int(rng.integers(1, 9))))]
        pstart = np.array([p[0] for p in plt], np.uint64)
        tab = T.SymTab(start, end, T.NameList(names), weak, glob, demangle_ties=elf,  # (no mangled names)
                       plt_start=pstart, plt_end=pstart + np.uint64(16), plt_raw=T.NameList([p[2][:-4] for p in plt]))
        rs, re_, rn = _reference_table(start.tolist(), end.tolist(), names, weak.tolist(), glob.tolist(), plt)
        addr = rng.integers(0, 720, 200).astype(np.uint64)
        got = tab.lookup(addr)
        want = []
        for a in addr.tolist():
            i = bisect.bisect_right(rs, a) - 1
            if i >= 0 and (a < re_[i] or a == rs[i]):
                want.append(i)
            elif i > 0 and rs[i - 1] <= a < re_[i - 1]:
                want.append(i - 1)
            else:
                want.append(-1)
        assert [-1 if e < 0 else (int(tab.estart[e]), int(tab.eend[e])) for e in got.tolist()] == \
            [-1 if w < 0 else (rs[w], re_[w]) for w in want]
        hit = got[got >= 0]
        assert tab.raw_names(hit) == [rn[w][:-4] if rn[w].endswith("@plt") else rn[w] for w in want if w >= 0]
        assert tab.all_names() == rn


def _elf_files_here() -> list[str]:
    """Some ELF files of this machine: the interpreter, ls, and the shared libraries this process maps."""
    paths = {str(Path(sys.executable).resolve()), str(Path(shutil.which("ls") or "/bin/ls").resolve())}
    for line in Path("/proc/self/maps").read_text().splitlines():
        f = line.split()[-1]
        if f.startswith("/") and ".so" in f:
            paths.add(f)
    return sorted(p for p in paths if Path(p).is_file() and Path(p).read_bytes()[:4] == b"\x7fELF")


def test_elf_reader_reads_as_pyelftools() -> None:
    """readers/elf.py (headers as record arrays, what symbolisation needs) reads section headers, names and
    contents, program headers and the GNU build-id note as pyelftools does, on this machine's ELF files."""
    from elftools.elf.elffile import ELFFile

    from vpmutrace.readers.elf import ElfFile

    checked = 0
    for path in _elf_files_here():
        with open(path, "rb") as f, ElfFile(path) as ours:
            ref = ELFFile(f)
            assert ours.elfclass == ref.elfclass and ours.little_endian == ref.little_endian, path
            secs = list(ref.iter_sections())
            assert ours.names == [s.name for s in secs], path
            for i, s in enumerate(secs):
                for field in ("offset", "size", "addr", "flags", "link", "info", "entsize"):
                    assert ours.sh(i, field) == s.header[f"sh_{field}"], (path, s.name, field)
                if s.name in (".dynsym", ".dynstr", ".symtab", ".strtab", ".gnu_debuglink", ".rela.plt"):
                    assert ours.data(i).tobytes() == s.data(), (path, s.name)
            loads = [(g["p_offset"], g["p_vaddr"], g["p_filesz"]) for g in ref.iter_segments()
                     if g["p_type"] == "PT_LOAD"]
            ph = ours.phdrs[ours.phdrs["type"] == 1]
            assert list(zip(ph["offset"].tolist(), ph["vaddr"].tolist(), ph["filesz"].tolist(), strict=True)) == loads
            notes = [n["n_desc"] for s in secs if s.header.sh_type == "SHT_NOTE" for n in s.iter_notes()
                     if n["n_type"] == "NT_GNU_BUILD_ID"]
            assert ours.build_id() == (notes[0] if notes else None), path
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize(("name", "prot", "flags", "want"), [
    ("//anon", 0x5, 0x22, "/tmp/perf-42.map"),  # a JIT's executable anonymous map
    ("//anon", 0x3, 0x22, "//anon"),  # not executable: kept
    ("/dev/zero (deleted)", 0x5, 0x1, "/tmp/perf-42.map"),
    ("/anon_hugepage (deleted)", 0x5, 0x1, "/tmp/perf-42.map"),
    ("/memfd:x (deleted)", 0x5, 0x40000, "/tmp/perf-42.map"),  # MAP_HUGETLB
    ("[heap]", 0x7, 0x22, "/tmp/perf-42.map"),
    ("[stack:7]", 0x7, 0x22, "/tmp/perf-42.map"),
    ("/SYSV00000000 (deleted)", 0x5, 0x1, "/tmp/perf-42.map"),
    ("/usr/lib/libc.so.6", 0x5, 0x2, "/usr/lib/libc.so.6"),
    ("[vdso]", 0x5, 0x2, "[vdso]"),
])
def test_user_map_names_as_perf_gives_them(name: str, prot: int, flags: int, want: str) -> None:
    """perf's map__new renames executable anonymous/no-DSO maps /tmp/perf-PID.map (perf script prints
    that DSO for a JIT's samples)."""
    from vpmutrace.readers.perf_maps import perf_map_name

    assert perf_map_name(name, 42, prot, flags) == want
