"""The data model: every table vpmutrace produces, declared once.

Each event kind gets one Arrow table. All event tables start with the common
columns; typed columns follow. The named tables below (kvm_exit, sched_switch, ...) have
curated columns; every other event gets a table derived from its in-file format
(``event_table_spec``: its name, its columns and their types follow the rules of
``EVENT_TABLE_RULES``). ``docs/schema.md`` is generated from this module
(``python -m vpmutrace.schema > docs/schema.md``) so the two cannot drift.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vpmutrace.formats.event_format import ARRAY, CHARS, SCALAR, EventFormat, Field


@dataclass(frozen=True)
class Col:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = True
    binary_only: bool = False  # a raw field binary traces record; text traces print only a name for it


@dataclass(frozen=True)
class TableSpec:
    name: str
    doc: str
    columns: tuple[Col, ...]
    # trace event names ("system:event") whose rows go into this table
    events: tuple[str, ...] = ()
    common: bool = True  # starts with the COMMON columns

    @property
    def all_columns(self) -> tuple[Col, ...]:
        return (COMMON + self.columns) if self.common else self.columns

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, c.nullable) for c in self.all_columns])


# few distinct values over millions of rows: dictionary-encoded (polars Categorical, Parquet dictionary pages)
DICT_STR = pa.dictionary(pa.int32(), pa.string())

COMMON: tuple[Col, ...] = (
    Col("ts_ns", pa.int64(), "event time on the trace clock: ns, unless the trace's time_unit (_trace_meta.json, "
                             "vpmutrace info) says its clock stayed in ticks", False),
    Col("seq", pa.int64(), "record order in its input (text line, or record index in the file / CPU "
                           "stream); orders events with equal timestamps", False),
    Col("cpu", pa.int32(), "CPU the event was recorded on (null when the text had no CPU column)"),
    Col("pid", pa.int32(), "thread id (common_pid); for KVM events the vCPU thread"),
    Col("tgid", pa.int32(), "process id (thread group): for KVM events the VMM process, i.e. the VM; null "
                            "where the input does not carry it (trace.dat, trace-cmd report, default perf script)"),
    Col("comm", DICT_STR, "task name as the tool printed it or the trace's saved cmdlines"),
    Col("source", DICT_STR, "which trace the row came from: 'host', or the file/instance name "
                            "when several are merged (host+guest)", False),
)


def _t(name: str, doc: str, events: tuple[str, ...], *cols: Col) -> TableSpec:
    return TableSpec(name, doc, tuple(cols), events)


def binary_only(table: str) -> list[str]:
    """Columns of a named table that only binary traces fill (text traces print names, not raw fields)."""
    return [c.name for c in ALL_TABLES[table].columns if c.binary_only] if table in ALL_TABLES else []


U8, U16, U32, U64 = pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()
I32, I64, STR, BOOL, BIN = pa.int32(), pa.int64(), pa.string(), pa.bool_(), pa.binary()
I32_MAX, I64_MAX = (1 << 31) - 1, (1 << 63) - 1  # the largest values of those columns

EVENT_TABLES: tuple[TableSpec, ...] = (
    _t("kvm_exit", "VM-exits (kvm:kvm_exit).", ("kvm:kvm_exit",),
       Col("vcpu_id", U32, "vCPU index (null on kernels whose kvm_exit has no vcpu_id)"),
       Col("exit_reason", U32, "raw exit reason as recorded (VMX: basic reason | flag bits; SVM: exit code)"),
       Col("reason", DICT_STR, "exit reason name from the trace's own print fmt table"),
       Col("reason_flags", DICT_STR, "VMX exit-reason flag names (e.g. FAILED_VMENTRY), empty if none"),
       Col("isa", U8, "1 = VMX, 2 = SVM (null if the trace does not say)"),
       Col("guest_rip", U64, "guest RIP at exit"),
       Col("info1", U64, "exit qualification / EXITINFO1"),
       Col("info2", U64, "VMX: info2; SVM: EXITINFO2"),
       Col("intr_info", U32, "VM-exit interruption information"),
       Col("error_code", U32, "VM-exit interruption error code"),
       Col("requests", U64, "pending vCPU requests (6.18+)")),
    _t("kvm_entry", "VM-entries (kvm:kvm_entry).", ("kvm:kvm_entry",),
       Col("vcpu_id", U32, "vCPU index"),
       Col("rip", U64, "guest RIP at entry (null on kernels without it)"),
       Col("immediate_exit", BOOL, "entry requested an immediate exit"),
       Col("intr_info", U32, "injected event information"),
       Col("error_code", U32, "injected event error code")),
    _t("kvm_msr", "Guest MSR accesses KVM handled (kvm:kvm_msr).", ("kvm:kvm_msr",),
       Col("write", BOOL, "true for WRMSR, false for RDMSR", False),
       Col("msr", U32, "MSR index (ECX)", False),
       Col("value", U64, "value written or returned"),
       Col("gp", BOOL, "the access raised #GP in the guest")),
    _t("kvm_inj_virq", "Interrupts injected into the guest (kvm:kvm_inj_virq).", ("kvm:kvm_inj_virq",),
       Col("vector", U32, "interrupt vector", False),
       Col("soft", BOOL, "software interrupt (INTn)"),
       Col("reinjected", BOOL, "re-injection of an interrupted delivery")),
    _t("kvm_apic_accept_irq", "Interrupts accepted by a virtual local APIC.", ("kvm:kvm_apic_accept_irq",),
       Col("apicid", U32, "destination APIC id", False),
       Col("vector", U32, "vector", False),
       Col("delivery_mode", DICT_STR, "Fixed, LowPrio, SMI, NMI, INIT, SIPI, ExtINT"),
       Col("level", BOOL, "level-triggered (false = edge)"),
       Col("coalesced", BOOL, "older kernels: the IRQ was coalesced"),
       Col("dm", U32, "raw delivery-mode field as recorded (null from text traces)", binary_only=True)),
    _t("kvm_pio", "Guest port I/O handled by KVM (kvm:kvm_pio).", ("kvm:kvm_pio",),
       Col("write", BOOL, "OUT (true) or IN", False),
       Col("port", U32, "I/O port", False),
       Col("size", U32, "access size in bytes"),
       Col("count", U32, "repetitions (string I/O)"),
       Col("value", U32, "first value (null on kernels without it)")),
    _t("kvm_cpuid", "Guest CPUID executions (kvm:kvm_cpuid).", ("kvm:kvm_cpuid",),
       Col("function", U32, "leaf (EAX)", False),
       Col("index", U32, "subleaf (ECX)"),
       Col("rax", U64, "returned EAX"), Col("rbx", U64, "returned EBX"),
       Col("rcx", U64, "returned ECX"), Col("rdx", U64, "returned EDX"),
       Col("found", BOOL, "KVM had an entry for the leaf"),
       Col("used_max_basic", BOOL, "KVM answered with the max basic leaf")),
    _t("kvm_inj_exception", "Exceptions injected into the guest.", ("kvm:kvm_inj_exception",),
       Col("exception", U8, "vector", False),
       Col("name", DICT_STR, "mnemonic (#GP, #PF, ...)"),
       Col("has_error", BOOL, "an error code is delivered"),
       Col("error_code", U32, "error code"),
       Col("reinjected", BOOL, "re-injection")),
    _t("kvm_emulate_insn", "Instructions emulated by KVM.", ("kvm:kvm_emulate_insn",),
       Col("rip", U64, "guest RIP"), Col("csbase", U32, "CS base"),
       Col("insn", BIN, "instruction bytes (the first ``len`` of the recorded buffer); hex on demand "
                        "(`vpmutrace show`, or ``.bin.encode('hex')`` in polars)"),
       Col("mode", DICT_STR, "real, vm16, prot16, prot32, prot64"),
       Col("failed", BOOL, "emulation failed"),
       Col("flags", U8, "raw mode flags as recorded (null from text traces)", binary_only=True)),
    _t("kvm_userspace_exit", "Exits to the VMM in user space.", ("kvm:kvm_userspace_exit",),
       Col("reason", U32, "KVM_EXIT_* number (null when errno < 0)"),
       Col("reason_name", DICT_STR, "KVM_EXIT_* name, 'restart' or 'error'"),
       Col("errno", I32, "negative errno of the KVM_RUN ioctl, 0 on success")),
    _t("nmi_handler", "NMI handler invocations (nmi:nmi_handler).", ("nmi:nmi_handler",),
       Col("handler", STR, "handler symbol (e.g. perf_event_nmi_handler) or address"),
       Col("handler_addr", U64, "handler address when known"),
       Col("delta_ns", I64, "time spent in the handler"),
       Col("handled", I32, "number of NMIs the handler claimed")),
    _t("host_msr", "Host MSR accesses (msr:read_msr, msr:write_msr, msr:rdpmc).",
       ("msr:read_msr", "msr:write_msr", "msr:rdpmc"),
       Col("op", DICT_STR, "read, write or rdpmc", False),
       Col("msr", U32, "MSR index (counter index for rdpmc)", False),
       Col("value", U64, "value"),
       Col("failed", BOOL, "the access faulted")),
    _t("sched_switch", "Context switches (sched:sched_switch).", ("sched:sched_switch",),
       Col("prev_comm", STR, ""), Col("prev_pid", I32, ""), Col("prev_prio", I32, ""),
       Col("prev_state", DICT_STR, "state letters as printed (R, S, D, R+ ...)"),
       Col("next_comm", STR, ""), Col("next_pid", I32, ""), Col("next_prio", I32, ""),
       Col("prev_state_bits", I64, "raw prev_state field as recorded (null from text traces)", binary_only=True)),
    _t("irq_vectors", "x86 interrupt vector entries/exits (irq_vectors:*_entry, *_exit).",
       ("irq_vectors:*_entry", "irq_vectors:*_exit"),
       Col("event", DICT_STR, "event name, e.g. local_timer_entry", False),
       Col("vector", I32, "vector number when the event has one")),
    _t("samples", "perf samples of non-tracepoint events (cycles, cpu-clock, ...).", (),
       Col("event", DICT_STR, "event name as recorded", False),
       Col("tid", I32, "thread id"),
       Col("period", U64, "sample period"),
       Col("ip", U64, "sampled instruction pointer"),
       Col("sym", DICT_STR, "symbol as `perf script -F sym` prints it (no offset); null when unresolved "
                            "(perf's [unknown]), sym_source says why"),
       Col("dso", DICT_STR, "DSO as `perf script -F dso` prints it ([kernel.kallsyms], [kvm_intel], the mmapped "
                            "path, a BPF program); null when no map covers the IP or the sample is a guest's"),
       Col("cpumode", DICT_STR, "kernel, user, hypervisor, guest_kernel, guest_user, unknown"),
       Col("exact_ip", BOOL, "PERF_RECORD_MISC_EXACT_IP: the IP is precise (no skid)"),
       Col("sym_source", DICT_STR, "where sym came from (the kallsyms or ELF file, and whether its build-id "
                                   "matched the recording), or `unresolved: <why>` (no kallsyms, build-id "
                                   "mismatch, DSO not on this machine, no symbol covers the address, no map, "
                                   "guest sample); null for inputs that carry no symbols (perf script text)")),
    _t("unparsed", "Events that could not be decoded, kept so that nothing is dropped, and counted in the "
                   "stats table: records of an event id the trace has no format for, and text lines whose "
                   "body no grammar of the event matches.", (),
       Col("event", DICT_STR, "system:name when the system is known, else name (unknown:<id> for an id "
                              "without a format)", False),
       Col("text", STR, "the body as printed (text traces)"),
       Col("raw", BIN, "the record's payload bytes (binary traces)")),
)

META_TABLES: tuple[TableSpec, ...] = (
    TableSpec("lost", "Data the tracer lost, one row per notice. Kinds: lost_events (perf LOST records; "
                      "'[LOST n EVENTS]' / 'EVENTS DROPPED' lines of text traces), lost_samples (perf "
                      "LOST_SAMPLES), overrun (a trace.dat's CPUSTAT overrun count: no time), missing_events "
                      "(ring-buffer pages flagged as having lost events before them), throttle (perf THROTTLE: "
                      "the kernel stopped sampling an event on that CPU for too many interrupts; its samples "
                      "are missing until the next unthrottle row of that CPU) and unthrottle (perf UNTHROTTLE: "
                      "sampling resumed; count null). perf records' times are their sample_id trailer's, as "
                      "perf report -D prints them (the record's own time field when the attr has no "
                      "sample_id_all).", (
        Col("ts_ns", I64, "end of the loss: time of the notice or of the first record after it (null when unknown)"),
        Col("start_ns", I64, "start of the loss: the last recorded event on that CPU before ts_ns (the data "
                             "in [start_ns, ts_ns] on that CPU is incomplete); null when unknown"),
        Col("cpu", I32, "CPU (null when unknown)"),
        Col("kind", STR, "lost_events, lost_samples, overrun, missing_events, throttle, unthrottle", False),
        Col("count", I64, "events lost (null when the tracer only flagged a loss)"),
        Col("source", STR, "file", False),
    ), common=False),
    TableSpec("stats", "Counts of everything skipped, unparsed, lost or decoded by fallback "
                       "(one row per file, category and event).", (
        Col("source_file", STR, "input file", False),
        Col("category", STR, "unparsed_line, body_unparsed, print_fmt_fallback, lost_events, ...", False),
        Col("name", STR, "event or record kind", False),
        Col("count", I64, "how many", False),
        Col("examples", STR, "first few locations and texts, '; ' separated", False),
    ), common=False),
)

ALL_TABLES: dict[str, TableSpec] = {t.name: t for t in EVENT_TABLES + META_TABLES}


# irq_vectors events by name, for text traces that print no system (arch/x86/include/asm/trace/irq_vectors.h)
IRQ_VECTOR_EVENTS = frozenset(
    f"{v}_{edge}" for edge in ("entry", "exit") for v in (
        "local_timer", "spurious_apic", "error_apic", "x86_platform_ipi", "irq_work", "reschedule",
        "call_function", "call_function_single", "threshold_apic", "deferred_error_apic", "thermal_apic"))


def table_for_event(system: str | None, name: str) -> str | None:
    """Name of the named table an event goes to, or None when it gets a table of its own
    (``event_table_name``).

    ``system`` is None for text traces that print only the event name.
    """
    for spec in EVENT_TABLES:
        for ev in spec.events:
            sys_, _, pattern = ev.partition(":")
            if system is None:
                if "*" not in pattern and pattern == name:
                    return spec.name
            elif system == sys_ and fnmatch.fnmatchcase(name, pattern):
                return spec.name
    if system is None and name in IRQ_VECTOR_EVENTS:
        return "irq_vectors"
    return None


# Per-event tables: every event without a named table gets one, derived from its in-file format.
NO_SYSTEM = "nosys"  # system part of the table name of an event whose system the input does not say
EVENT_TABLE_RULES: tuple[tuple[str, str], ...] = (
    ("name", "`<system>.<event>` (e.g. `kvm.kvm_page_fault`, `sched.sched_wakeup`); `nosys.<event>` when a "
             "text trace names no system and the reference kernel's formats do not know the event. Named "
             "tables never contain a dot."),
    ("columns", "the common columns, then `common_flags`, `common_preempt_count` (and any other `common_*` "
                "field of the format except `common_type` and `common_pid`, which is `pid`), then every "
                "field of the event's format in format order. A field named like a common column "
                "(sched_wakeup's `comm`, `pid`) is named `field_<name>`."),
    ("scalar fields", "1, 2, 4 and 8 bytes: `int8`..`int64` or `uint8`..`uint64` by the format's `signed:`; "
                      "`bool` and `_Bool` fields: bool. Pointers are `uint64`."),
    ("char arrays", "fixed (`char comm[16]`) and dynamic (`__data_loc char[]`, `__rel_loc char[]`): string, "
                    "up to the first NUL; bytes that are not UTF-8 become U+FFFD."),
    ("byte arrays", "arrays of 1-byte elements that are not chars (`u8 insn[15]`, `__data_loc u8[]`, "
                    "`__data_loc cpumask_t`) and fields of other sizes: binary."),
    ("integer arrays", "arrays of 2-, 4- or 8-byte elements: `fixed_size_list<intN>[len]` for fixed arrays, "
                       "`list<intN>` for `__data_loc`/`__rel_loc` arrays, signed by the format's `signed:`."),
    ("bit fields", "tracefs formats have none: probe events' bit-field arguments (`b<width>@<offset>/<size>`) "
                   "are extracted by the kernel and recorded as plain integers of their container size."),
    ("text traces", "the columns of the event's format in the bundled reference kernel's formats (Linux "
                    "6.18: irq, irq_vectors, ipi, kvm, kvmmmu, msr, nmi, sched, timer), filled with what its "
                    "print fmt lets the printed text give back (fields printed through expressions that "
                    "cannot be inverted stay null, counted as `text_fields_not_recovered`); `key=value` "
                    "bodies of other events give one integer or string column per key; an event with no "
                    "grammar at all keeps its body in a `text` column, counted as `fields_unknown`."),
)


def event_table_name(system: str | None, name: str) -> str:
    return f"{system or NO_SYSTEM}.{name}"


def is_event_table(name: str) -> bool:
    return "." in name


def field_type(f: Field) -> pa.DataType:
    """The column type of one format field (EVENT_TABLE_RULES)."""
    if f.kind == SCALAR:
        if f.type in ("bool", "_Bool"):
            return BOOL
        return pa.from_numpy_dtype(np.dtype(f"{'i' if f.signed else 'u'}{f.size}"))
    if f.kind == CHARS:
        return STR
    if f.kind == ARRAY:
        elem = pa.from_numpy_dtype(np.dtype(f"{'i' if f.signed else 'u'}{f.elem_size}"))
        return pa.list_(elem) if f.dynamic else pa.list_(elem, f.array_len)
    return BIN


def column_names(fmt: EventFormat) -> dict[str, str]:
    """{format field: column} of an event's own table (EVENT_TABLE_RULES)."""
    taken = {c.name for c in COMMON}
    out: dict[str, str] = {}
    for f in fmt.common_fields + fmt.fields:
        if f.name in ("common_type", "common_pid"):
            continue
        col = f.name if f.name not in taken else f"field_{f.name}"
        while col in taken:
            col = f"field_{col}"
        taken.add(col)
        out[f.name] = col
    return out


def event_table_spec(fmt: EventFormat) -> TableSpec:
    """The table of an event without a named table: common columns, then its format's fields."""
    names = column_names(fmt)
    fields = {f.name: f for f in fmt.common_fields + fmt.fields}
    return TableSpec(event_table_name(fmt.system, fmt.name), f"{fmt.full_name}, fields of its format",
                     tuple(Col(col, field_type(fields[f]), "") for f, col in names.items()), (fmt.full_name,))


def missing_required(spec: TableSpec, columns: dict[str, Any]) -> list[str]:
    """The columns of ``spec`` that may not be null and that ``columns`` lacks."""
    return [c.name for c in spec.all_columns if not c.nullable and columns.get(c.name) is None]


def _holds_text(t: pa.DataType) -> bool:
    t = t.value_type if pa.types.is_dictionary(t) else t
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or \
        pa.types.is_large_binary(t)


def unfit_columns(spec: TableSpec, columns: dict[str, Any]) -> list[str]:
    """The columns of ``spec`` that ``columns`` cannot fill: required and missing, or given text where
    the column holds numbers. What the fields of a format unlike the one the table was made for give
    (a damaged one: ``char ecx[4]`` for ``u32 ecx``, text that cannot be cast)."""
    out = missing_required(spec, columns)
    for c in spec.all_columns:
        v = columns.get(c.name)
        if isinstance(v, pa.Array | pa.ChunkedArray) and _holds_text(v.type) and not _holds_text(c.type):
            out.append(c.name)
    return out


def build_table(name: str, columns: dict[str, Any], nrows: int | None = None,
                spec: TableSpec | None = None) -> pa.Table:
    """Make a table of the declared schema (or ``spec``, for an event's own table) from column data
    (lists, numpy arrays or Arrow arrays).

    Missing nullable columns are filled with nulls; a column that is declared but
    missing and not nullable is an error in the reader (a bug, not user input).
    """
    spec = spec or ALL_TABLES[name]
    if nrows is None:
        nrows = len(next(iter(columns.values()))) if columns else 0
    missing = missing_required(spec, columns)
    if missing:
        raise ValueError(f"table {name}: column {missing[0]} is required")
    arrays = []
    for col in spec.all_columns:
        data = columns.get(col.name)
        if data is None:
            arrays.append(pa.nulls(nrows, col.type))
            continue
        if isinstance(data, pa.ChunkedArray | pa.Array):
            arr = data if data.type == col.type else data.cast(col.type)
            if isinstance(arr, pa.ChunkedArray) and arr.num_chunks == 1:
                arr = arr.chunk(0)
        elif col.type == DICT_STR:
            arr = pa.array(data, type=pa.string(), from_pandas=True).dictionary_encode()
        else:
            arr = pa.array(data, type=col.type, from_pandas=True)
        if len(arr) != nrows:
            raise ValueError(f"table {name}: column {col.name} has {len(arr)} rows, expected {nrows}")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=spec.arrow_schema)


def dict_array(codes: np.ndarray, names: list[str | None], check: bool = True) -> pa.DictionaryArray:
    """Dictionary column from per-row codes into ``names``; a None name becomes a null row.
    ``check=False`` skips Arrow's scan of the codes, for codes that are in range by construction.

    (Arrow cannot unify dictionaries whose values contain nulls, so nulls live in the indices.)
    """
    codes = np.asarray(codes, dtype=np.int32)
    is_null = np.array([v is None for v in names], dtype=bool)
    if not is_null.any():
        return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names, pa.string()), safe=check)
    k = int(np.argmax(is_null))
    if is_null[k:].all():  # the null codes last (as distinct_names numbers them): codes below k stay as they are
        nulls = codes >= k
        idx = codes.copy()
        idx[nulls] = 0
        valid = pa.py_buffer(np.packbits(~nulls, bitorder="little"))
        return pa.DictionaryArray.from_arrays(pa.Array.from_buffers(pa.int32(), len(idx), [valid, pa.py_buffer(idx)]),
                                              pa.array(names[:k], pa.string()), safe=check)
    remap = np.where(is_null, 0, np.cumsum(~is_null, dtype=np.int32) - 1).astype(np.int32)  # code -> index
    idx = pa.array(remap[codes], mask=is_null[codes])
    return pa.DictionaryArray.from_arrays(idx, pa.array([v for v in names if v is not None], pa.string()))


def const_column(value: str, n: int) -> pa.Array:
    """A dictionary column holding one value n times (no per-row strings)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string()),
                                          safe=False)  # all zeros: valid


def empty_table(name: str) -> pa.Table:
    return ALL_TABLES[name].arrow_schema.empty_table()


def render_markdown() -> str:
    out = ["# vpmutrace data model", "",
           "Generated from `vpmutrace/schema.py` (`python -m vpmutrace.schema`). A dataset is a directory",
           "with one Parquet file per table (`<table>.parquet`, only tables that have rows) and",
           "`_trace_meta.json` (older datasets: `trace_meta.json`). Each Parquet file carries the same",
           "metadata in its key-value metadata: `vpmutrace.schema_version`, `vpmutrace.table` and",
           "`vpmutrace.trace_meta` (the sidecar's JSON). Timestamps are int64 nanoseconds on the trace clock.",
           "Opening a dataset with polars, pyarrow and DuckDB: docs/dataset.md.", "",
           "## Common columns of every event table", "",
           "| column | type | meaning |", "|---|---|---|"]
    out += [f"| `{c.name}` | {c.type} | {c.doc} |" for c in COMMON]
    for spec in EVENT_TABLES + META_TABLES:
        out += ["", f"## `{spec.name}`", "", spec.doc]
        if spec.events:
            out += ["", "Events: " + ", ".join(f"`{e}`" for e in spec.events)]
        out += ["", "| column | type | nullable | meaning |", "|---|---|---|---|"]
        out += [f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.doc} |"
                for c in spec.columns]
    out += ["", "## Tables of other events", "",
            "Every event without a named table above gets a table of its own, derived from its in-file "
            "format (binary traces) or from the reference kernel's format (text traces):", "",
            "| what | rule |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in EVENT_TABLE_RULES]
    out += ["", "## `_trace_meta.json`", "",
            "| key | meaning |", "|---|---|"]
    out += [f"| `{k}` | {v} |" for k, v in META_KEYS.items()]
    from vpmutrace.clocks import CLOCKS, UNIT_TEXT
    from vpmutrace.stats import CATEGORIES

    out += ["", "## Trace clocks", "",
            "What each clock counts (`vpmutrace/clocks.py`); `time_unit` is `ns` unless an input's clock counts "
            "ticks that could not be converted (see `inputs[].time` for how each input's times were made ns).",
            "Clocks of one base, recorded on one boot, are one time line; merging others is counted as "
            "`clock_mismatch`.", "", "| clock | unit | base | what |", "|---|---|---|---|"]
    out += [f"| `{c.name}` | {UNIT_TEXT[c.unit]} | {c.base} | {c.what} |" for c in CLOCKS.values()]
    out += ["", "## `stats` categories", "",
            "Every category a reader counts, with its severity (`vpmutrace/stats.py`, as Perfetto's stats: "
            "info, data_loss, error).", "", "| category | severity | meaning |", "|---|---|---|"]
    out += [f"| `{k}` | {c.severity} | {c.meaning} |" for k, c in CATEGORIES.items()]
    return "\n".join(out) + "\n"


META_KEYS: dict[str, str] = {
    "schema_version": "version of this data model",
    "inputs": "list of input files, each with format, tool, size_bytes",
    "format": "ftrace-text, trace-cmd-report, perf-script, trace.dat, perf.data (or 'mixed')",
    "tool": "the program that wrote the input, with version when known",
    "kernel_release": "uname -r of the traced host when the input carries it",
    "clock": "trace clock (local, global, mono, perf, x86-tsc, ...; 'mixed' for inputs on several clocks) "
             "when known",
    "time_unit": "unit of every ts_ns column: 'ns', or the ticks of a clock that could not be converted "
                 "(tsc_ticks, arch_ticks, unknown_ticks, events)",
    "inputs[].clock, inputs[].time": "each input's clock and time base: the unit it recorded, the unit after "
                                     "loading, and how it was converted (TSC2NSEC, --tsc-khz, host snapshot, "
                                     "an estimate with its spread and pairs) or checked against events carrying "
                                     "the kernel's ns time",
    "inputs[].time_shift": "a guest trace.dat moved onto its host's clock with its TimeShift option",
    "host_guest": "guest trace.dat inputs and the source name their rows carry",
    "host_snapshot": "the host.json read with the trace (--host, or found next to the first input)",
    "cpus": "number of CPUs of the traced host when known, else CPUs seen",
    "sources": "host/guest/instance names present in the `source` column",
    "time_span_ns": "[first, last] event timestamps",
    "events": "rows per event name",
    "lost_events": "total events reported lost by the tracer",
    "unparsed": "total input lines/records we could not parse (details in the stats table)",
    "fallback_events": "events whose print fmt we could not fully evaluate (raw fields kept)",
    "event_formats": "the in-file format text of every decoded event (binary traces), by system:name: what "
                     "`vpmutrace show` renders text lines from",
    "event_tables": "the table each event's rows are in, by system:name",
    "host": "host snapshot captured with the trace (kernel, kvm params, PMU caps), when present",
}

SCHEMA_VERSION = 3  # 3: per-event tables replace `events`; kvm_emulate_insn.insn is binary

if __name__ == "__main__":
    print(render_markdown(), end="")
