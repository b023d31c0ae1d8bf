"""Tracepoint formats of the running kernel, for perf.data files that lost theirs.

A ``perf record`` that was killed never writes the feature sections, so the
HEADER_TRACING_DATA with the format files is missing; a file converted or trimmed by other
tools may lack it too. Event ids are assigned at boot in registration order, so an id means
nothing on another kernel: a local format is used only for an event whose name the file
records (HEADER_EVENT_DESC) and whose id on this host equals the file's attr.config. Every
other tracepoint stays undecoded (its records kept raw, counted), never guessed by id alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vpmutrace.errors import BadFormat
from vpmutrace.formats.event_format import EventFormat, parse_format

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


@dataclass
class LocalMatch:
    formats: dict[int, EventFormat] = field(default_factory=dict)  # file id -> format (name and id agree)
    refused: dict[int, str] = field(default_factory=dict)  # file id -> why no local format was used
    where: str | None = None  # the tracefs events directory read


def _events_dir() -> Path | None:
    return next((r / "events" for r in TRACEFS_ROOTS if (r / "events").is_dir()), None)


def local_formats(wanted: dict[int, str | None]) -> LocalMatch:
    """Formats for the file's tracepoints (``wanted``: attr.config -> the name the file records,
    None when it records none) from this host's tracefs, where name and id both agree."""
    out = LocalMatch()
    events = _events_dir()
    if events is None:
        out.refused = {i: "no tracefs on this host" for i in wanted}
        return out
    out.where = str(events)
    for ev_id, name in wanted.items():
        if not name or name.count(":") != 1:
            out.refused[ev_id] = "the file records no name for this event id"
            continue
        system, event = name.split(":")
        d = events / system / event
        try:
            local_id = int((d / "id").read_text().strip())
            text = (d / "format").read_text()
        except (OSError, ValueError):
            out.refused[ev_id] = f"this host has no tracepoint {name}"
            continue
        if local_id != ev_id:
            out.refused[ev_id] = f"{name} has id {local_id} on this host, {ev_id} in the file"
            continue
        try:
            out.formats[ev_id] = parse_format(text, system)
        except BadFormat as e:
            out.refused[ev_id] = f"this host's format of {name} does not parse ({e})"
    return out
