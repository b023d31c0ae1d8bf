"""The `kvm-pmu` event set: dynamic probes on KVM's and perf's PMU functions, created for one capture.

No kvm_pmu tracepoint exists (reference SUMMARY 12), but most distribution kernels build probe
events, and a probe on the PMU code turns inferences into facts. The functions, their signatures
and which arguments identify the vCPU and the counter are declared in ``vpmutrace.model.kernel``
(FN_*). Rules:

- A probe is created only for a function the running kernel has: ``available_filter_functions``
  (what ftrace, hence fprobe, can attach to), else ``/proc/kallsyms`` text symbols. A static
  function may be inlined (absent) or cloned by the compiler (``name.constprop.0``, ``.isra.0``,
  ``.part.0``): a clone is probed by its symbol, but its register arguments may not be the
  source's, so only the return value is fetched from it.
- fprobe events (``f:`` in ``dynamic_events``, CONFIG_FPROBE_EVENTS, 6.5+) are preferred; kprobe
  events (``p:``/``r:`` in ``kprobe_events``, CONFIG_KPROBE_EVENTS) otherwise; which exist is read
  from tracefs (the files, and the syntax lines kernel/trace/trace.c readme_msg writes into
  ``README``). With BTF arguments (CONFIG_PROBE_EVENTS_BTF_ARGS, 6.6+: ``<argname>[->field]``) the
  vCPU id (``vcpu->vcpu_id``) and the counter index (``pmc->idx``) are fetched; without them the
  pointers are (``$argN`` for fprobes, the x86-64 argument registers %di, %si, %dx for kprobes:
  Documentation/trace/kprobetrace.rst), and common_pid, the vCPU thread, identifies the vCPU.
- A definition the kernel rejects is retried with fewer arguments (BTF ones first, then all),
  and what was dropped is reported with the kernel's error_log line; a function whose probe
  cannot be created at all is reported too.
- Probes live in the group ``vpmutrace_<pid>``: entry events are named after the function, return
  events ``<function>__return``. They are removed when the capture ends, fails or is interrupted
  (SIGINT/SIGTERM), and ``cleanup_leftovers`` removes the groups (and tracefs instances) of
  recorders that died without removing theirs (SIGKILL), before each capture.
- Definitions are appended (never written with O_TRUNC: truncating kprobe_events or
  dynamic_events deletes every probe on the system, other tools' included).
"""

from __future__ import annotations

import errno
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpmutrace.model import kernel as K

GROUP_PREFIX = "vpmutrace_"
RETURN_SUFFIX = "__return"
# Feature tests on tracefs README (kernel/trace/trace.c readme_msg), the prefixes of the lines the
# kernel's own selftests grep for (tools/testing/selftests/ftrace/test.d/dynevent/add_remove_btfarg.tc:
# "f[:[<group>/][<event>]] <func-name>[%return] [<args>]" and "<argname>[->field[->field|.field...]]");
# prefixes, because later kernels changed the rest of the fprobe line (":entry|:exit" lists).
FPROBE_SYNTAX = "f[:[<group>/][<event>]]"  # present with CONFIG_FPROBE_EVENTS
BTF_ARGS_SYNTAX = "<argname>["  # present with CONFIG_PROBE_EVENTS_BTF_ARGS
CLONE_SUFFIX = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*)\.(constprop|isra|part)\.\d+$")
X86_64_ARG_REGS = ("%di", "%si", "%dx", "%cx", "%r8", "%r9")


@dataclass(frozen=True)
class Arg:
    """One fetch argument: its field name, the BTF fetch (by parameter name, with member access)
    and the positional one (1-based parameter number; None when only BTF can fetch it)."""

    name: str
    btf: str | None = None
    pos: int | None = None
    type: str = "x64"


@dataclass(frozen=True)
class ProbeSpec:
    func: str
    ret: bool  # a return probe ($retval)
    args: tuple[Arg, ...]
    shows: str  # what it makes a fact of


VCPU = (Arg("vcpu", pos=1), Arg("vcpu_id", btf="vcpu->vcpu_id"))
RETVAL = (Arg("ret", btf="$retval", pos=0, type="s32"),)  # pos 0: $retval, no parameter
CATALOG: tuple[ProbeSpec, ...] = (
    ProbeSpec(K.FN_MEDIATED_LOAD, False, VCPU, "mediated PMU load: an ownership window opens"),
    ProbeSpec(K.FN_MEDIATED_LOAD, True, (), "end of the load (its cost)"),
    ProbeSpec(K.FN_MEDIATED_PUT, False, VCPU, "mediated PMU put: the ownership window closes"),
    ProbeSpec(K.FN_MEDIATED_PUT, True, (), "end of the put (its cost)"),
    ProbeSpec(K.FN_PERF_LOAD_GUEST, False, (), "perf schedules host exclude_guest events out"),
    ProbeSpec(K.FN_PERF_PUT_GUEST, False, (), "perf schedules host exclude_guest events back in"),
    ProbeSpec(K.FN_MEDIATED_PMI, False, (), "a mediated guest PMI (vector 0xF5) reached KVM"),
    ProbeSpec(K.FN_REPROGRAM, False, (Arg("pmc", pos=1), Arg("pmc_idx", btf="pmc->idx"),
                                      Arg("eventsel", btf="pmc->eventsel")), "a counter is reprogrammed"),
    ProbeSpec(K.FN_PMC_REPROGRAM, False, (Arg("pmc", pos=1), Arg("pmc_idx", btf="pmc->idx"),
                                          Arg("type", pos=2, type="u32"), Arg("config", pos=3)),
              "KVM creates a perf event for a counter"),
    ProbeSpec(K.FN_PMC_REPROGRAM, True, RETVAL, "the creation's result: non-zero = no event, the counter "
                                                "does not count"),
    ProbeSpec(K.FN_PERF_OVERFLOW, False, (Arg("event", pos=1),
                                          Arg("pmc", btf="perf_event->overflow_handler_context")),
              "a guest counter's perf event overflowed"),
    ProbeSpec(K.FN_DELIVER_PMI, False, VCPU, "KVM injects the guest's LVTPC interrupt"),
    ProbeSpec(K.FN_HANDLE_EVENT, False, VCPU, "KVM serves KVM_REQ_PMU"),
)


def event_name(spec: ProbeSpec) -> str:
    return spec.func + (RETURN_SUFFIX if spec.ret else "")


class TracefsIO:
    """File access to tracefs (a fake tree in tests overrides ``append`` to act as the kernel)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def append(self, rel: str, line: str) -> None:
        with open(self.root / rel, "a") as f:  # never O_TRUNC (see the module docstring)
            f.write(line + "\n")

    def read(self, rel: str) -> str | None:
        try:
            return (self.root / rel).read_text()
        except OSError:
            return None

    def write(self, rel: str, value: str) -> None:
        (self.root / rel).write_text(value)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()


@dataclass
class Mechanisms:
    fprobe: bool
    kprobe: bool
    btf_args: bool

    @property
    def chosen(self) -> str | None:
        return "fprobe" if self.fprobe else "kprobe" if self.kprobe else None

    def why_none(self) -> str:
        return ("this kernel has neither kprobe events (no kprobe_events in tracefs: CONFIG_KPROBE_EVENTS) nor "
                "fprobe events (no f: syntax in tracefs README: CONFIG_FPROBE_EVENTS)")


def mechanisms(io: TracefsIO) -> Mechanisms:
    readme = io.read("README") or ""
    return Mechanisms(fprobe=io.exists("dynamic_events") and FPROBE_SYNTAX in readme,
                      kprobe=io.exists("kprobe_events"), btf_args=BTF_ARGS_SYNTAX in readme)


def kernel_functions(io: TracefsIO, kallsyms: Path) -> tuple[set[str], str]:
    """The function symbols probes can attach to, and where they came from."""
    text = io.read("available_filter_functions")
    if text:
        return {ln.split()[0] for ln in text.splitlines() if ln.strip()}, "available_filter_functions"
    try:
        ks = kallsyms.read_text()
    except OSError as e:
        return set(), f"none (available_filter_functions and {kallsyms} unreadable: {e.strerror})"
    names = {p[2] for p in (ln.split() for ln in ks.splitlines()) if len(p) >= 3 and p[1] in ("t", "T")}
    return names, f"{kallsyms} (available_filter_functions unreadable)"


def resolve(func: str, names: set[str]) -> tuple[str | None, str | None]:
    """(symbol to probe, note): the function itself, else a compiler clone of it, else None."""
    if func in names:
        return func, None
    clones = sorted(n for n in names if (m := CLONE_SUFFIX.match(n)) and m.group("base") == func)
    if clones:
        return clones[0], f"only a compiler clone ({clones[0]}): its arguments may not be the source's"
    return None, None


def _fetch(a: Arg, kind: str, btf: bool) -> str | None:
    """The fetcharg of ``a`` for a probe of ``kind`` (fprobe/kprobe), or None when it cannot be fetched."""
    if a.btf == "$retval":
        return f"{a.name}=$retval:{a.type}"
    if btf and a.btf:
        return f"{a.name}={a.btf}"  # the type comes from BTF
    if a.pos is None:
        return None
    if kind == "fprobe":
        return f"{a.name}=$arg{a.pos}:{a.type}"
    if platform.machine() != "x86_64" or a.pos > len(X86_64_ARG_REGS):
        return None
    return f"{a.name}={X86_64_ARG_REGS[a.pos - 1]}:{a.type}"


@dataclass
class ProbeSession:
    """Create the kvm-pmu probes of one capture, and remove them."""

    root: Path
    io: TracefsIO | None = None
    kallsyms: Path = Path("/proc/kallsyms")
    group: str = field(default_factory=lambda: f"{GROUP_PREFIX}{os.getpid()}")
    version: tuple[int, int] | None = None
    created: list[dict[str, Any]] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    unresolved: dict[str, list[str]] = field(default_factory=dict)
    removed: bool = False
    symbols_from: str = ""

    def __post_init__(self) -> None:
        if self.io is None:
            self.io = TracefsIO(self.root)
        self.mech = mechanisms(self.io)
        if self.version is None:
            self.version = K.release_version(platform.release())

    @property
    def mechanism(self) -> str | None:
        return self.mech.chosen

    @property
    def events(self) -> list[str]:
        return [c["event"] for c in self.created]

    def create(self) -> list[str]:
        """Create every probe this kernel can take; returns their ``group:event`` names."""
        assert self.io is not None
        kind = self.mechanism
        if kind is None:
            return []
        names, self.symbols_from = kernel_functions(self.io, self.kallsyms)
        ctl = "dynamic_events" if kind == "fprobe" else "kprobe_events"
        for spec in CATALOG:
            ev = event_name(spec)
            sym, note = resolve(spec.func, names)
            if sym is None:
                self.missing[ev] = "not in this kernel (its version has no such function, or it was inlined)"
                continue
            if (spec.func == K.FN_PMC_REPROGRAM and spec.ret and self.version is not None
                    and self.version < K.PMC_REPROGRAM_RETURNS_INT):
                self.missing[ev] = "returns void before {}.{}".format(*K.PMC_REPROGRAM_RETURNS_INT)
                continue
            self._create_one(spec, ev, sym, note, kind, ctl)
        return self.events

    def _attempts(self, spec: ProbeSpec, kind: str, clone: bool) -> list[tuple[list[str], list[str]]]:
        """Argument lists to try, most complete first, each with the args it leaves out."""
        out: list[tuple[list[str], list[str]]] = []
        for btf in ([True, False] if self.mech.btf_args and kind == "fprobe" else [False]):
            got, lost = [], []
            for a in spec.args:
                f = _fetch(a, kind, btf) if not (clone and a.btf != "$retval") else None
                if f:
                    got.append(f)
                else:
                    lost.append(a.name)
            if (got, lost) not in out:
                out.append((got, lost))
        if spec.args and ([], [a.name for a in spec.args]) not in out:
            out.append(([], [a.name for a in spec.args]))
        return out

    def _create_one(self, spec: ProbeSpec, ev: str, sym: str, note: str | None, kind: str, ctl: str) -> None:
        assert self.io is not None
        full = f"{self.group}:{ev}"
        errors: list[str] = []
        for args, lost in self._attempts(spec, kind, note is not None):
            if kind == "fprobe":
                head = f"f:{self.group}/{ev} {sym}{'%return' if spec.ret else ''}"
            else:
                head = f"{'r' if spec.ret else 'p'}:{self.group}/{ev} {sym}"
            definition = " ".join([head, *args])
            try:
                self.io.append(ctl, definition)
            except OSError as e:
                errors.append(self._error(e))
                continue
            if not self.io.exists(f"events/{self.group}/{ev}/format"):
                errors.append("the kernel accepted the definition but made no event")
                continue
            self.created.append({"event": full, "function": spec.func, "symbol": sym, "kind": kind,
                                 "return": spec.ret, "definition": definition, "shows": spec.shows})
            why = "; ".join(filter(None, [note, *(errors[-1:] if lost and errors else [])]))
            if lost:
                self.unresolved[full] = [f"{a}: {why or 'not fetchable without BTF arguments'}" for a in lost]
            return
        self.missing[ev] = f"{sym}: the kernel refused every definition ({errors[-1] if errors else 'unknown'})"

    def _error(self, e: OSError) -> str:
        """The kernel's reason for a refused definition: the last 'error:' line of error_log."""
        assert self.io is not None
        log = self.io.read("error_log") or ""
        lines = [ln.split("error:", 1)[1].strip() for ln in log.splitlines() if "error:" in ln]
        return lines[-1] if lines else (e.strerror or errno.errorcode.get(e.errno or 0, str(e)))

    def remove(self) -> None:
        """Remove this session's probes (disabled first: a probe in use cannot be removed)."""
        assert self.io is not None
        ctl = "dynamic_events" if self.mechanism == "fprobe" else "kprobe_events"
        for c in reversed(self.created):
            g, _, ev = c["event"].partition(":")
            _remove_probe(self.io, ctl, g, ev)
        self.removed = all(not self.io.exists(f"events/{self.group}/{event_name(s)}") for s in CATALOG)

    def summary(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "why_none": None if self.mechanism else self.mech.why_none(),
                "btf_args": self.mech.btf_args, "group": self.group, "symbols_from": self.symbols_from or None,
                "created": self.created, "not_created": self.missing, "unresolved_args": self.unresolved,
                "removed": self.removed}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers(io: TracefsIO) -> list[str]:
    """Remove what recorders that died without cleaning up left in tracefs: their private instances
    (``instances/vpmutrace.<pid>``, collectors/tracefs_backend.py) and their probe groups
    (``vpmutrace_<pid>``), for pids that no longer run. Returns what was removed."""
    removed: list[str] = []
    inst = io.root / "instances"
    if inst.is_dir():
        for d in sorted(inst.iterdir()):
            m = re.fullmatch(r"vpmutrace\.(\d+)", d.name)
            if m and not _alive(int(m.group(1))):
                for rel, val in (("tracing_on", "0"), ("events/enable", "0")):
                    try:
                        if io.exists(f"instances/{d.name}/{rel}"):
                            io.write(f"instances/{d.name}/{rel}", val)
                    except OSError:
                        pass
                try:
                    d.rmdir()
                    removed.append(f"instance {d.name}")
                except OSError:
                    pass
    groups = set()
    for ctl in ("dynamic_events", "kprobe_events"):
        for line in (io.read(ctl) or "").splitlines():
            m = re.match(r"^[a-z]\d*:(?P<g>" + GROUP_PREFIX + r"(?P<pid>\d+))/", line)
            if m and not _alive(int(m.group("pid"))):
                groups.add(m.group("g"))
    for g in sorted(groups):
        removed += [f"probe {x}" for x in remove_group(io, g)]
    return removed


def remove_group(io: TracefsIO, group: str) -> list[str]:
    """Remove every probe of ``group`` (disabled first); returns the ``group:event`` names removed."""
    removed: list[str] = []
    for ctl in ("dynamic_events", "kprobe_events"):
        for line in (io.read(ctl) or "").splitlines():
            m = re.match(r"^[a-z]\d*:(?P<g>[^/\s]+)/(?P<e>\S+)", line)
            if not m or m.group("g") != group:
                continue
            if _remove_probe(io, ctl, group, m.group("e")):
                removed.append(f"{group}:{m.group('e')}")
    return removed


def _remove_probe(io: TracefsIO, ctl: str, group: str, ev: str) -> bool:
    """Disable (a probe in use cannot be removed) and remove one probe event."""
    try:
        if io.exists(f"events/{group}/{ev}/enable"):
            io.write(f"events/{group}/{ev}/enable", "0")
    except OSError:
        pass
    try:
        io.append(ctl, f"-:{group}/{ev}")
    except OSError:
        return False
    return True


def describe(summary: dict[str, Any]) -> list[str]:
    """Lines for the capture summary (collectors.record.describe)."""
    if not summary.get("mechanism"):
        return [f"probes       none: {summary.get('why_none')}"]
    out = [f"probes       {summary['mechanism']}: {len(summary['created'])} created in {summary['group']}"
           f"{' (BTF args)' if summary['btf_args'] else ''}; "
           f"{'removed' if summary['removed'] else 'NOT removed: see dynamic_events/kprobe_events'}"]
    for ev, why in summary["not_created"].items():
        out.append(f"  not probed  {ev}: {why}")
    for ev, args in summary["unresolved_args"].items():
        out.append(f"  args not resolved  {ev}: {', '.join(args)}")
    return out
