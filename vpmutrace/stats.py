"""One place that counts every record we dropped, could not parse, or lost upstream.

Modelled on Perfetto's `stats` table: readers never skip silently; they call
:meth:`Stats.add` and the counts land in the ``stats`` table of the dataset and in
``vpmutrace info``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_EXAMPLES = 5

# Rows printed as text without their print fmt (declared with the others in CATEGORIES)
TEXT_NO_PRINT_FMT = "text_no_print_fmt"
TEXT_ROW_FAILED = "text_row_failed"
TEXT_CATEGORIES = (TEXT_NO_PRINT_FMT, TEXT_ROW_FAILED)

INFO, DATA_LOSS, ERROR = "info", "data_loss", "error"  # severities, as Perfetto's stats
SEVERITIES = (DATA_LOSS, ERROR, INFO)


@dataclass(frozen=True)
class Category:
    severity: str  # info: how something was read; data_loss: data the tracer or the file lost;
    #               error: data in the file we could not read (or read only partly)
    meaning: str


# every category a reader may count, declared once (docs/schema.md lists them)
CATEGORIES: dict[str, Category] = {
    # lost upstream (the tracer or the recording)
    "lost_events": Category(DATA_LOSS, "perf LOST records / '[LOST n EVENTS]' notices: events the kernel dropped"),
    "lost_samples": Category(DATA_LOSS, "perf LOST_SAMPLES records: samples the kernel dropped"),
    "overrun": Category(DATA_LOSS, "ring-buffer overruns a trace.dat's CPUSTAT reports"),
    "missing_events": Category(DATA_LOSS, "ring-buffer pages flagged as having lost events before them"),
    "throttle": Category(DATA_LOSS, "perf THROTTLE records: sampling stopped for too many interrupts"),
    "unthrottle": Category(INFO, "perf UNTHROTTLE records: sampling resumed"),
    "partial": Category(DATA_LOSS, "a file cut short or never finished (perf record killed)"),
    "truncated": Category(DATA_LOSS, "a record cut off by the end of the data"),
    "out_of_order": Category(ERROR, "rows of a file ingested piece by piece (--max-memory) earlier than rows "
                                   "already written (a perf.data breaking perf's round rule, a trace.dat CPU whose "
                                   "times go back); written where they came"),
    # not readable here
    "unparsed_line": Category(ERROR, "text lines that are no event and no known notice"),
    "body_unparsed": Category(ERROR, "event lines whose body no grammar of the event matches (kept in 'unparsed')"),
    "unparsed_record": Category(ERROR, "binary records that could not be decoded (kept raw in 'unparsed')"),
    "records_not_decoded": Category(ERROR, "perf record types this reader does not know"),
    "header_unreadable": Category(ERROR, "perf.data header features past the end of the file or that do not parse "
                                         "(event names, kernel release, CPU count, ... may be missing)"),
    "bad_format": Category(ERROR, "event format descriptions in the file that do not parse"),
    "fields_missing": Category(ERROR, "records of an event whose format has no field, or one of another kind (text "
                                      "for a number), for a column of its named table (a kvm_msr without write or "
                                      "with a char ecx[4]): kept in a table of their own"),
    "no_format": Category(ERROR, "tracepoints with no format in the file and none usable from this host"),
    "dynamic_field_cut": Category(ERROR, "dynamic fields whose offset/length point outside the record"),
    "fields_unknown": Category(ERROR, "text events whose fields are not known to this reader"),
    "text_fields_not_recovered": Category(ERROR, "fields a text line prints only inside computed expressions"),
    # read, but by a route worth knowing
    "print_fmt_fallback": Category(INFO, "events whose print fmt cannot be evaluated (raw fields kept)"),
    "formats_from_local_tracefs": Category(INFO, "tracepoint layouts taken from this host (name and id agree)"),
    "callchain_lines": Category(INFO, "perf script callchain lines (not events)"),
    "unresolved_symbols": Category(INFO, "perf samples left without a symbol, one row per reason (no_ip, guest, "
                                         "no_map, no_kallsyms, build_id_mismatch, dso_not_here, no_symbol)"),
    "time_base": Category(INFO, "how an input's timestamps were turned into ns (or why they were not)"),
    "clock_mismatch": Category(ERROR, "inputs merged on one time line whose clocks are not the same time line"),
    # counted when rows are printed as text (vpmutrace show, show.bodies), after ingest: one entry per event
    TEXT_NO_PRINT_FMT: Category(INFO, "rows of an event whose print fmt does not parse (or that has no format), "
                                      "printed as '[FAILED TO PARSE]' and their fields, as trace-cmd prints them"),
    TEXT_ROW_FAILED: Category(INFO, "rows whose print fmt could not be printed for their values (a field the row "
                                    "lacks, a division by zero), printed as field=value"),
}


@dataclass
class StatEntry:
    source_file: str
    category: str  # a key of CATEGORIES
    name: str  # event name or record kind this is about ("" when not applicable)
    count: int = 0
    examples: list[str] = field(default_factory=list)  # first few locations ("line 12: ...")


class Stats:
    """Accumulates counts keyed by (file, category, name)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], StatEntry] = {}

    def add(self, source_file: str, category: str, name: str = "", count: int = 1,
            example: str | None = None) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"stats category {category!r} is not declared in vpmutrace.stats.CATEGORIES")
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

    def by_severity(self) -> dict[str, int]:
        """Counts summed per severity of their category (every severity present, 0 when none)."""
        out = dict.fromkeys(SEVERITIES, 0)
        for e in self._entries.values():
            out[CATEGORIES[e.category].severity] += e.count
        return out

    def __bool__(self) -> bool:
        return bool(self._entries)
