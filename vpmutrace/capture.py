"""A capture directory (what ``vpmutrace record -o DIR`` writes) as an input, and its event coverage.

Layout (declared here once; collectors/record.py writes it):
  trace.perf.data | trace.dat   the raw capture (perf or tracefs backend)
  host.json                     the host snapshot
  capture.json                  what was asked and what happened
  dataset/                      the Parquet dataset (absent with --raw-only)

As an input, a capture directory is read as its dataset when that is current (same schema
version), else as its trace file; its host.json and capture.json are used either way (the
analyses read the snapshot: design, watchdog, TSC frequency, kallsyms).

Coverage: every requested event with its count; an event that recorded nothing is said loudly,
with the analyses it leaves not computable, from the analyzers' own declarations
(``Analyzer.requires``/``optional`` name event tables; ``schema.table_for_event`` maps an event to
its table), never a second list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vpmutrace.errors import InputError, plural

PERF_TRACE = "trace.perf.data"
TRACEFS_TRACE = "trace.dat"
TRACE_FILES = (PERF_TRACE, TRACEFS_TRACE)
HOST_FILE = "host.json"
CAPTURE_FILE = "capture.json"
DATASET_DIR = "dataset"


def is_capture(path: Path) -> bool:
    """A directory ``vpmutrace record`` wrote (its capture.json or one of its trace files is there)."""
    return path.is_dir() and any((path / f).is_file() for f in (CAPTURE_FILE, *TRACE_FILES))


def _current_dataset(path: Path) -> bool:
    from vpmutrace.schema import SCHEMA_VERSION
    from vpmutrace.tracedata import meta_file

    mf = meta_file(path)
    try:
        return mf is not None and json.loads(mf.read_text()).get("schema_version") == SCHEMA_VERSION
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def capture_input(path: Path) -> Path:
    """What to read of a capture directory: its dataset when current, else its trace file."""
    ds = path / DATASET_DIR
    if _current_dataset(ds):
        return ds
    for name in TRACE_FILES:
        if (path / name).is_file():
            return path / name
    raise InputError(str(path), f"capture directory without a trace file ({' or '.join(TRACE_FILES)}) "
                                f"or a current {DATASET_DIR}/")


def capture_meta(path: Path) -> tuple[dict | None, dict | None]:
    """(host snapshot, capture.json) of a capture directory; None for a file that is absent."""
    out: list[dict | None] = []
    for name in (HOST_FILE, CAPTURE_FILE):
        f = path / name
        try:
            data = json.loads(f.read_text()) if f.is_file() else None
        except json.JSONDecodeError as e:
            raise InputError(str(f), f"invalid JSON ({e.msg})", f"line {e.lineno}") from None
        out.append(data if isinstance(data, dict) else None)
    return out[0], out[1]


def event_table(event: str) -> str:
    """The table a ``system:name`` event goes to."""
    from vpmutrace.schema import event_table_name, table_for_event

    system, _, name = event.rpartition(":")
    return table_for_event(system or None, name) or event_table_name(system or None, name)


def coverage(requested: list[str], counts: dict[str, int], missing_on_kernel: list[str] | None = None,
             have_host: bool = True) -> dict[str, Any]:
    """Every requested event with its count; those that recorded nothing; the analyses that leaves not
    computable (a required table fed only by silent events) and those it leaves partial (an optional one)."""
    from vpmutrace.analyze import registry

    skipped = set(missing_on_kernel or [])
    events = [{"event": e, "count": int(counts.get(e, 0)), "on_kernel": e not in skipped} for e in requested]
    silent = [e["event"] for e in events if not e["count"]]
    # the tables that have rows (from any event, requested or not)
    filled = {event_table(e) for e, n in counts.items() if n}
    silent_tables: dict[str, list[str]] = {}
    for e in silent:
        t = event_table(e)
        if t not in filled:
            silent_tables.setdefault(t, []).append(e)

    def lacking(tables: tuple[str, ...]) -> list[str]:
        wanted = {e for t in tables for e in silent_tables.get(t, [])}
        return [e for e in silent if e in wanted]  # in the order they were requested

    not_computable, partial = {}, {}
    for name, a in registry().items():
        if a.requires and "host" in a.requires and not have_host:
            continue  # not computable for another reason (no snapshot), not for silent events
        need = lacking(a.requires)
        if need:
            not_computable[name] = need
            continue
        opt = lacking(a.optional)
        if opt:
            partial[name] = opt
    return {"events": events, "silent": silent, "not_computable": not_computable, "partial": partial}


def coverage_lines(cov: dict[str, Any]) -> list[str]:
    """The coverage for a terminal: one line per requested event, then the silent ones and what they cost."""
    out = [f"{'requested event':<42}{'count':>10}"]
    for e in cov["events"]:
        note = "" if e["count"] else ("  <- not on this kernel" if not e["on_kernel"] else "  <- RECORDED NOTHING")
        out.append(f"  {e['event']:<40}{e['count']:>10}{note}")
    if cov["silent"]:
        out.append(f"WARNING: {plural(len(cov['silent']), 'requested event')} recorded nothing: "
                   f"{', '.join(cov['silent'])}")
        for name, evs in cov["not_computable"].items():
            out.append(f"  not computable: {name} (needs {', '.join(evs)})")
        for name, evs in cov["partial"].items():
            out.append(f"  partial:        {name} (runs without {', '.join(evs)})")
    return out


def capture_coverage(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The coverage of a trace read from a capture directory (its capture.json), else None."""
    cap = meta.get("capture") or {}
    if not cap.get("events_requested"):
        return None
    return coverage(cap["events_requested"], meta.get("events") or {}, cap.get("events_missing"),
                    bool(meta.get("host")))
