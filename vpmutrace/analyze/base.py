"""The one shape every analyzer has: its registry record, its result, its findings, its configuration.

An analyzer is a module of ``vpmutrace.analyze`` that defines ``ANALYZER``, an
:class:`Analyzer` record: name, rule (the module docstring, shipped in the output),
the event tables it requires and those it uses when present, the finding kinds it
can report (each declared once, with its severity and certainty), a pure function
``analyze(TraceData, Config) -> Result`` and the text rendering of its result. The
CLI commands, ``--only``, the report's findings and docs/analyze.md are derived from
these records (``vpmutrace.analyze.registry``), so adding an analyzer touches one file.

Certainty: a *fact* follows from the trace and the kernel code the rule cites; a
*candidate* rests on timing or a pattern and is shown with its evidence. A candidate
is never of high severity (as LISA gates analyses on events and Perfetto declares
each diagnostic once with its severity).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from vpmutrace.tracedata import TraceData

FACT = "fact"
CANDIDATE = "candidate"
SEVERITIES = ("high", "medium", "low", "info")

# what each event table is, for "not computable: needs X"
NEEDS = {
    "kvm_exit": "kvm:kvm_exit events",
    "kvm_entry": "kvm:kvm_entry events (not emitted by some hosts, e.g. kvm_pvm)",
    "kvm_msr": "kvm:kvm_msr events",
    "kvm_cpuid": "kvm:kvm_cpuid events",
    "nmi_handler": "nmi:nmi_handler events",
    "kvm_apic_accept_irq": "kvm:kvm_apic_accept_irq events",
    "host_msr": "msr:read_msr/write_msr/rdpmc events",
    "sched_switch": "sched:sched_switch events",
    "samples": "perf samples (perf record with a sampling event)",
    "host": "a host snapshot (vpmutrace record writes host.json)",
    "kvm-pmu": "kvm-pmu probe events (vpmutrace record --events kvm-pmu, on hosts with kprobe or fprobe events)",
}


# the unit of the trace's timestamps while analyzers run (``run`` sets it): "ns", or the unit of a clock in
# ticks that could not be converted (vpmutrace.clocks); durations are printed in it
TIME_UNIT: ContextVar[str] = ContextVar("time_unit", default="ns")


# the time text times are printed from (``run`` and ``render_text`` set it): the trace's start, so times read
# as from the start of the trace (as LISA's normalize_time), or None for the clock's own (--absolute-time)
TIME_ORIGIN: ContextVar[int | None] = ContextVar("time_origin", default=None)


def fmt_ts(ts: Any) -> str:
    """A point in time for text output: seconds from the trace's start (``TIME_ORIGIN``), or on the
    trace's clock when no origin is set; in ticks on a trace whose clock could not be converted."""
    if ts is None:
        return "-"
    origin = TIME_ORIGIN.get()
    v = int(ts) - (origin or 0)
    unit = TIME_UNIT.get()
    if unit != "ns":
        return f"{'+' if origin is not None else ''}{v} {'events' if unit == 'events' else 'ticks'}"
    return f"{'+' if origin is not None else ''}{v / 1e9:.6f} s"


def needs_ns(unit: str) -> str:
    """What an analyzer that compares times with physical constants lacks on a trace in ``unit``."""
    from vpmutrace.clocks import UNIT_TEXT

    return (f"timestamps in ns (this trace's times are {UNIT_TEXT.get(unit, unit)} and no frequency is known: "
            "give --tsc-khz, or a host snapshot with tsc_khz)")


@dataclass(frozen=True)
class FindingKind:
    """A kind of finding, declared once by the analyzer that reports it."""

    id: str
    severity: str  # high, medium, low, info
    certainty: str  # fact or candidate
    title: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES or self.certainty not in (FACT, CANDIDATE):
            raise ValueError(f"finding kind {self.id}: bad severity/certainty")
        if self.certainty == CANDIDATE and self.severity == "high":
            raise ValueError(f"finding kind {self.id}: a candidate cannot be of high severity")


@dataclass
class Finding:
    kind: str
    analyzer: str
    severity: str
    certainty: str
    text: str
    count: int | None = None
    first_ts_ns: int | None = None
    evidence: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "analyzer": self.analyzer, "severity": self.severity,
                "certainty": self.certainty, "text": self.text, "count": self.count,
                "first_ts_ns": self.first_ts_ns, "evidence": self.evidence}


@dataclass
class Result:
    name: str
    needs: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, pl.DataFrame] = field(default_factory=dict)
    rule: str = ""
    findings: list[Finding] = field(default_factory=list)

    @property
    def computable(self) -> bool:
        return not self.needs

    def to_json(self) -> dict[str, Any]:
        base: dict[str, Any] = {"computable": self.computable}
        if not self.computable:
            base.update({"needs": self.needs, "reason": "not computable: needs " + ", ".join(self.needs)})
        return {**base, **self.summary, "findings": [f.to_json() for f in self.findings]}


@dataclass(frozen=True)
class Analyzer:
    """The registry record of one analyzer (see the module docstring)."""

    name: str  # JSON key and --only name
    title: str  # one line: what it answers
    rule: str  # the rule applied, with the kernel functions and reference sections it rests on
    analyze: Callable[[TraceData, Any], Result]
    render: Callable[[Result], list[str]]
    requires: tuple[str, ...] = ()  # event tables (or "host") that must be present
    optional: tuple[str, ...] = ()  # used when present
    findings: tuple[FindingKind, ...] = ()
    order: int = 100  # position in the output
    limits: str = ""  # what it cannot see on a real host, and on which kernel versions
    # compares times with physical constants (thresholds, published costs, rates): not computable on a
    # trace whose clock is in ticks that could not be converted to ns; False: it runs, durations in ticks
    needs_ns: bool = True

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    def kind(self, kind_id: str) -> FindingKind:
        for k in self.findings:
            if k.id == kind_id:
                return k
        raise KeyError(f"analyzer {self.name} declares no finding kind {kind_id!r}")

    def finding(self, kind_id: str, text: str, count: int | None = None, first_ts_ns: int | None = None,
                evidence: list[str] | None = None, certainty: str | None = None) -> Finding:
        """A finding of a declared kind. ``certainty`` can only weaken the kind's: a fact resting on an
        input that is itself a candidate (an inferred design, a guessed PMU shape) is a candidate, and
        a candidate is never of high severity."""
        k = self.kind(kind_id)
        cert = CANDIDATE if CANDIDATE in (k.certainty, certainty) else FACT
        sev = "medium" if cert == CANDIDATE and k.severity == "high" else k.severity
        return Finding(k.id, self.name, sev, cert, text, count, first_ts_ns, evidence or [])


def weakest(*certainties: str | None) -> str:
    """The certainty of a conclusion drawn from several inputs: a candidate if any input is one."""
    return CANDIDATE if any(c != FACT for c in certainties) else FACT


def has_input(td: TraceData, name: str) -> bool:
    if name == "host":
        return bool(td.meta.get("host"))
    return td.has(name)


def missing(td: TraceData, tables: tuple[str, ...] | list[str]) -> list[str]:
    return [NEEDS.get(t, t) for t in tables if not has_input(td, t)]


def rule_of(doc: str | None) -> str:
    """The rule part of a module docstring: everything after its first paragraph (the title)."""
    parts = (doc or "").split("\n\n", 1)
    return parts[1].strip() if len(parts) > 1 else ""


def records(df: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (floats rounded to 3 decimals)."""
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in df.iter_rows(named=True)]


def fmt_ns(v: Any) -> str:
    """A duration for text output: '-' when unknown; in ticks when the trace's clock could not be
    converted to ns (``TIME_UNIT``)."""
    if v is None:
        return "-"
    v = float(v)
    unit = TIME_UNIT.get()
    if unit != "ns":
        return f"{v:,.0f} {'events' if unit == 'events' else 'ticks'}"
    for unit, div in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3f} {unit}"
    return f"{v:.0f} ns"


# columns that hold points in time (printed from the trace's start), not durations
POINT_COLUMNS = frozenset({"ts_ns", "start_ns", "end_ns", "first_ts_ns", "last_ts_ns"})


def text_table(rows: list[dict], cols: list[tuple[str, str, int]]) -> list[str]:
    """A fixed-width text table; columns ending in _ns are durations (``POINT_COLUMNS`` points in time),
    None is '-'."""
    out = ["  " + " ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (_, h, w) in enumerate(cols))]
    for r in rows:
        cells = []
        for i, (k, _, w) in enumerate(cols):
            v = r.get(k)
            if k in POINT_COLUMNS:
                s = fmt_ts(v)
            elif k.endswith("_ns"):
                s = fmt_ns(v)
            else:
                s = f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))
            cells.append(f"{s:>{w}}" if i else f"{s:<{w}}")
        out.append("  " + " ".join(cells))
    return out
