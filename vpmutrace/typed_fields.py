"""Raw tracepoint fields -> columns of the named tables (binary inputs and '[FAILED TO PARSE]' text).

Field names differ across kernels (kvm_msr ``write`` was ``rw``; kvm_pio gained
``val``; kvm_exit gained ``isa``, ``vcpu_id``, ``requests``), so each column lists
the field names it may come from. Names printed from symbol tables (exit reasons,
exception mnemonics) are evaluated from the event's own print fmt, once per
distinct combination of the fields they read; nothing here runs per row in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from vpmutrace.errors import UnsupportedFormat
from vpmutrace.formats.decode import factorize_rows
from vpmutrace.formats.event_format import EventFormat
from vpmutrace.formats.known import VMX_REASON_FLAGS
from vpmutrace.schema import DICT_STR, const_column, dict_array

# table -> {column: (field names to try, in order)}
FIELD_MAP: dict[str, dict[str, tuple[str, ...]]] = {
    "kvm_exit": {"vcpu_id": ("vcpu_id",), "exit_reason": ("exit_reason",), "isa": ("isa",),
                 "guest_rip": ("guest_rip",), "info1": ("info1",), "info2": ("info2",),
                 "intr_info": ("intr_info",), "error_code": ("error_code",), "requests": ("requests",)},
    "kvm_entry": {"vcpu_id": ("vcpu_id",), "rip": ("rip",), "immediate_exit": ("immediate_exit",),
                  "intr_info": ("intr_info",), "error_code": ("error_code",)},
    "kvm_msr": {"write": ("write", "rw"), "msr": ("ecx", "index"), "value": ("data",),
                "gp": ("exception",)},
    "kvm_inj_virq": {"vector": ("vector", "irq"), "soft": ("soft",), "reinjected": ("reinjected",)},
    "kvm_apic_accept_irq": {"apicid": ("apicid",), "vector": ("vec", "vector"), "coalesced": ("coalesced",),
                            "dm": ("dm",), "level": ("tm",)},
    "kvm_pio": {"write": ("rw",), "port": ("port",), "size": ("size",), "count": ("count",),
                "value": ("val",)},
    "kvm_cpuid": {"function": ("function",), "index": ("index",), "rax": ("rax",), "rbx": ("rbx",),
                  "rcx": ("rcx",), "rdx": ("rdx",), "found": ("found",), "used_max_basic": ("used_max_basic",)},
    "kvm_inj_exception": {"exception": ("exception",), "has_error": ("has_error",),
                          "error_code": ("error_code",), "reinjected": ("reinjected",)},
    "kvm_emulate_insn": {"rip": ("rip",), "csbase": ("csbase",), "failed": ("failed",), "flags": ("flags",)},
    "kvm_userspace_exit": {"errno": ("errno",), "reason": ("reason",)},
    "nmi_handler": {"handler_addr": ("handler",), "delta_ns": ("delta_ns",), "handled": ("handled",)},
    "host_msr": {"msr": ("msr",), "value": ("val",), "failed": ("failed",)},
    "sched_switch": {"prev_comm": ("prev_comm",), "prev_pid": ("prev_pid",), "prev_prio": ("prev_prio",),
                     "next_comm": ("next_comm",), "next_pid": ("next_pid",), "next_prio": ("next_prio",),
                     "prev_state_bits": ("prev_state",)},
    "irq_vectors": {"vector": ("vector",)},
}


# byte fields a named table takes cut to the length another field gives: field -> length field
CUTS: dict[str, dict[str, str]] = {"kvm_emulate_insn": {"insn": "len"}}


def _first(cols: dict[str, Any], names: tuple[str, ...]) -> Any:
    for n in names:
        if n in cols:
            return cols[n]
    return None


# columns of named tables that hold what a print fmt argument prints (a name from a symbol table):
# (column, the text before that argument or its index, whether the %s arguments printed right after
# it belong to it too). Derived from binary fields here; given to the print fmt by `vpmutrace show`
# for rows of text traces, which carry the name but not the raw field.
NAMED_ARGS: dict[str, tuple[str, str | int, bool]] = {
    "kvm_exit": ("reason", "reason ", True), "kvm_apic_accept_irq": ("delivery_mode", "(", False),
    "kvm_inj_exception": ("name", 0, False), "kvm_emulate_insn": ("mode", "(", False),
    "kvm_userspace_exit": ("reason_name", 0, False), "sched_switch": ("prev_state", "prev_state=", True),
}


def named_args(table: str, fmt: EventFormat | None) -> list[int]:
    """The print fmt arguments NAMED_ARGS[table]'s column holds (empty when the print fmt has none)."""
    if table not in NAMED_ARGS or fmt is None or fmt.printer is None:
        return []
    p = fmt.printer
    _, where, joined = NAMED_ARGS[table]
    k = where if isinstance(where, int) else p.arg_after(where)
    if k is None:
        return []
    ks = [k]
    if joined:
        conv_idx = [i for i, c in enumerate(p.convs) if c.conv != "%"]
        j = conv_idx.index(k) if k < len(conv_idx) else -1
        while j >= 0 and j + 1 < len(conv_idx) and p.convs[conv_idx[j + 1]].literal == "" \
                and p.convs[conv_idx[j + 1]].conv == "s":
            j += 1
            ks.append(j)
    return ks


def eval_named(table: str, fmt: EventFormat | None, cols: dict[str, Any], n: int) -> pa.Array | None:
    """NAMED_ARGS[table]'s column for every row, evaluated once per distinct input tuple."""
    ks = named_args(table, fmt)
    if not ks:
        return None
    assert fmt is not None and fmt.printer is not None
    p = fmt.printer
    used = sorted(set().union(*(p.fields_used(p.args[i]) for i in ks)))
    if any(u not in cols or _is_list(cols[u]) for u in used):
        return None

    def one(rec: dict[str, Any]) -> str | None:
        try:
            return "".join(str(p.eval_arg(i, rec)) for i in ks)
        except (UnsupportedFormat, IndexError, TypeError, ValueError):
            return None

    if not used:
        v = one({})
        return const_column(v, n) if v is not None else pa.nulls(n, DICT_STR)
    codes, values = zip(*(value_codes(cols[u]) for u in used), strict=True)
    row_codes, first = factorize_rows(list(codes))  # distinct input tuples, one evaluation each
    names = [one({u: vals[c[i]] for u, c, vals in zip(used, codes, values, strict=True)}) for i in first.tolist()]
    return dict_array(row_codes, names)


def _is_list(col: Any) -> bool:
    return isinstance(col, pa.Array | pa.ChunkedArray) and (pa.types.is_list(col.type)
                                                            or pa.types.is_fixed_size_list(col.type))


def value_codes(col: Any) -> tuple[np.ndarray, Any]:
    """(integer codes per row, values by code) of a column: a numpy column is its own code; an
    Arrow column (strings, arrays) is dictionary-encoded, its values converted once each."""
    if isinstance(col, np.ndarray):
        return col, _Identity()
    enc = (col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col).dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()


class _Identity:
    def __getitem__(self, v: Any) -> Any:
        return v.item() if hasattr(v, "item") else v


def split_reason(joined: pa.Array) -> tuple[pa.Array, pa.Array]:
    """'INVALID_STATE FAILED_VMENTRY' -> ('INVALID_STATE', 'FAILED_VMENTRY'), once per distinct text."""
    enc = joined.dictionary_encode()
    r, f = _split_reason_list(enc.dictionary.to_pylist())
    return (pa.DictionaryArray.from_arrays(enc.indices, pa.array(r, pa.string())),
            pa.DictionaryArray.from_arrays(enc.indices, pa.array(f, pa.string())))


def _split_reason_list(joined: list[str | None]) -> tuple[list[str | None], list[str]]:
    reasons: list[str | None] = []
    flags: list[str] = []
    for s in joined:
        if s is None:
            reasons.append(None)
            flags.append("")
            continue
        words = s.split(" ")
        k = len(words)
        while k > 1 and words[k - 1] in VMX_REASON_FLAGS:
            k -= 1
        reasons.append(" ".join(words[:k]))
        flags.append(" ".join(words[k:]))
    return reasons, flags


def _as_bool(v: Any) -> Any:
    return v.astype(bool) if isinstance(v, np.ndarray) else v


Deriver = Callable[[EventFormat | None, dict[str, Any], dict[str, Any], int, Callable[[int], str | None] | None],
                   None]


def _d_kvm_exit(fmt, cols, out, n, sym) -> None:
    joined = eval_named("kvm_exit", fmt, cols, n)
    if joined is not None:
        out["reason"], out["reason_flags"] = split_reason(joined)


def _d_apic_accept(fmt, cols, out, n, sym) -> None:
    out["delivery_mode"] = eval_named("kvm_apic_accept_irq", fmt, cols, n)
    if "tm" in cols:
        out["level"] = _as_bool(cols["tm"])


def _d_inj_exception(fmt, cols, out, n, sym) -> None:
    out["name"] = eval_named("kvm_inj_exception", fmt, cols, n)
    if "has_error" in cols and "error_code" in cols:  # no error code is delivered: none to report
        has = np.asarray(cols["has_error"]).astype(bool)
        out["error_code"] = pa.array(np.asarray(cols["error_code"]), mask=~has)


def _d_emulate(fmt, cols, out, n, sym) -> None:
    if "insn" in cols:  # decoded cut to len (CUTS)
        out["insn"] = cols["insn"]
    out["mode"] = eval_named("kvm_emulate_insn", fmt, cols, n)


def _d_userspace_exit(fmt, cols, out, n, sym) -> None:
    out["reason_name"] = eval_named("kvm_userspace_exit", fmt, cols, n)
    if "reason" in cols and "errno" in cols:
        errno = np.asarray(cols["errno"], dtype=np.int64)
        # with a negative errno the KVM_RUN ioctl failed: there is no exit reason
        out["reason"] = pa.array(np.asarray(cols["reason"], dtype=np.uint32), mask=errno < 0)


def _d_nmi(fmt, cols, out, n, sym) -> None:
    addrs = cols.get("handler")
    if addrs is None:
        return
    codes, first = factorize_rows([np.asarray(addrs)])  # one symbol lookup per distinct handler
    names = [(sym(a) if sym else None) or f"0x{a:x}" for a in np.asarray(addrs)[first].tolist()]
    out["handler"] = dict_array(codes, names).cast(pa.string())


def _d_sched(fmt, cols, out, n, sym) -> None:
    out["prev_state"] = eval_named("sched_switch", fmt, cols, n)


DERIVE: dict[str, Deriver] = {
    "kvm_exit": _d_kvm_exit, "kvm_apic_accept_irq": _d_apic_accept,
    "kvm_inj_exception": _d_inj_exception, "kvm_emulate_insn": _d_emulate,
    "kvm_userspace_exit": _d_userspace_exit, "nmi_handler": _d_nmi, "sched_switch": _d_sched,
}


def event_columns(table: str, event_name: str, n: int) -> dict[str, Any]:
    """Columns a table takes from the event's name (tables that hold several events)."""
    if table == "host_msr":
        return {"op": const_column({"read_msr": "read", "write_msr": "write"}.get(event_name, event_name), n)}
    if table == "irq_vectors":
        return {"event": const_column(event_name, n)}
    return {}


def typed_columns(table: str, event_name: str, fmt: EventFormat | None, cols: dict[str, Any], n: int,
                  symbols: Callable[[int], str | None] | None = None) -> dict[str, Any]:
    """Map decoded fields of one event to its table's columns (common columns excluded)."""
    out: dict[str, Any] = {}
    for col, names in FIELD_MAP.get(table, {}).items():
        v = _first(cols, names)
        if v is not None:
            out[col] = v
    for b in ("write", "gp", "soft", "reinjected", "found", "used_max_basic", "has_error", "failed",
              "immediate_exit", "coalesced", "level"):
        if b in out:
            out[b] = _as_bool(out[b])
    out.update(event_columns(table, event_name, n))
    derive = DERIVE.get(table)
    if derive is not None:
        derive(fmt, cols, out, n, symbols)
    return out
