"""One place that counts every record we dropped, could not parse, or lost upstream.

Modelled on Perfetto's `stats` table: readers never skip silently; they call
:meth:`Stats.add` and the counts land in the ``stats`` table of the dataset and in
``vpmutrace info``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_EXAMPLES = 5

# Rows printed as text (vpmutrace show, show.bodies) without their print fmt: counted when printed,
# after ingest, one entry per event with the first rows as examples.
TEXT_NO_PRINT_FMT = "text_no_print_fmt"
TEXT_ROW_FAILED = "text_row_failed"
TEXT_CATEGORIES = {
    TEXT_NO_PRINT_FMT: "rows of an event whose print fmt does not parse (or that has no format), printed as "
                       "'[FAILED TO PARSE]' and their fields, as trace-cmd prints them",
    TEXT_ROW_FAILED: "rows whose print fmt could not be printed for their values (a field the row lacks, a "
                     "division by zero), printed as field=value",
}


@dataclass
class StatEntry:
    source_file: str
    category: str  # e.g. unparsed_line, body_unparsed, lost_events, print_fmt_fallback
    name: str  # event name or record kind this is about ("" when not applicable)
    count: int = 0
    examples: list[str] = field(default_factory=list)  # first few locations ("line 12: ...")


class Stats:
    """Accumulates counts keyed by (file, category, name)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], StatEntry] = {}

    def add(self, source_file: str, category: str, name: str = "", count: int = 1,
            example: str | None = None) -> None:
        key = (source_file, category, name)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = StatEntry(source_file, category, name)
        entry.count += count
        if example is not None and len(entry.examples) < MAX_EXAMPLES:
            entry.examples.append(example)

    def entries(self) -> list[StatEntry]:
        return list(self._entries.values())

    def total(self, category: str) -> int:
        return sum(e.count for e in self._entries.values() if e.category == category)

    def __bool__(self) -> bool:
        return bool(self._entries)
