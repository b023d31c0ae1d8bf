"""Tracepoint formats of the running kernel, for perf.data files that lost theirs.

A ``perf record`` that was killed never writes the feature sections, so the
HEADER_TRACING_DATA with the format files is missing. When the file was recorded on
this host (the usual case for a salvage), the running kernel's tracefs has the same
formats; the reader says in the stats that it used them.
"""

from __future__ import annotations

from pathlib import Path

from vpmutrace.formats.event_format import EventFormat, parse_format

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def local_formats(ids: set[int]) -> tuple[dict[int, EventFormat], str | None]:
    """{id: format} for the wanted event ids from the local tracefs, and where they came from."""
    for root in TRACEFS_ROOTS:
        events = root / "events"
        if not events.is_dir():
            continue
        out: dict[int, EventFormat] = {}
        try:
            for id_file in events.glob("*/*/id"):
                try:
                    ev_id = int(id_file.read_text().strip())
                except (OSError, ValueError):
                    continue
                if ev_id in ids:
                    fmt = parse_format((id_file.parent / "format").read_text(), id_file.parent.parent.name)
                    out[fmt.id] = fmt
        except OSError:
            continue
        return out, str(events)
    return {}, None
