"""Event body grammars for text traces (ftrace, trace-cmd report, perf script).

The body is the event's print fmt output, identical in the kernel's own ``trace``
file and in libtraceevent's output, with layout differences across kernel versions
covered by alternative patterns. Named groups carry a type suffix:
``__x`` hex, ``__d`` decimal, ``__p`` presence (bool); no suffix = string.
Matching runs vectorised in polars (Rust regex).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import polars as pl
import pyarrow as pa

from vpmutrace.formats.known import VMX_REASON_FLAGS, exception_vectors, exit_reason_codes
from vpmutrace.schema import ALL_TABLES

H = "[0-9a-fA-F]+"

PATTERNS: dict[str, list[str]] = {
    "kvm_exit": [
        rf"^(?:vcpu (?P<vcpu_id__d>\d+) )?reason (?P<reason>.+?) rip 0x(?P<guest_rip__x>{H}) "
        rf"info1? (?:0x)?(?P<info1__x>{H}) (?:info2 )?(?:0x)?(?P<info2__x>{H})"
        rf"(?: intr_info 0x(?P<intr_info__x>{H}) error_code 0x(?P<error_code__x>{H}))?"
        rf"(?: requests 0x(?P<requests__x>{H}))?\s*$",
    ],
    "kvm_entry": [
        rf"^vcpu (?P<vcpu_id__d>\d+)(?:, rip 0x(?P<rip__x>{H}))?"
        rf"(?: intr_info 0x(?P<intr_info__x>{H}) error_code 0x(?P<error_code__x>{H}))?"
        r"(?P<immediate_exit__p>\[immediate exit\])?\s*$",
    ],
    "kvm_msr": [rf"^msr_(?P<rw>read|write) (?P<msr__x>{H}) = 0x(?P<value__x>{H})(?P<gp__p> \(#GP\))?\s*$"],
    "kvm_inj_virq": [
        rf"^(?P<kind>IRQ|Soft/INTn) 0x(?P<vector__x>{H})(?P<reinjected__p> \[reinjected\])?\s*$",
        r"^irq (?P<vector__d>\d+)\s*$",
    ],
    "kvm_apic_accept_irq": [
        rf"^apicid (?P<apicid__x>{H}) vec (?P<vector__d>\d+) \((?P<delivery_mode>\w+)\|(?P<trig>edge|level)\)"
        r"(?P<coalesced__p> \(coalesced\))?\s*$",
    ],
    "kvm_pio": [
        rf"^pio_(?P<rw>read|write) at 0x(?P<port__x>{H}) size (?P<size__d>\d+) count (?P<count__d>\d+)"
        rf"(?: val 0x(?P<value__x>{H}))?\s*(?:\(\.\.\.\))?\s*$",
    ],
    "kvm_cpuid": [
        rf"^func (?P<function__x>{H})(?: idx (?P<index__x>{H}))? rax (?P<rax__x>{H}) rbx (?P<rbx__x>{H}) "
        rf"rcx (?P<rcx__x>{H}) rdx (?P<rdx__x>{H})"
        r"(?:, cpuid entry (?P<found>found|not found)(?P<used_max_basic__p>, used max basic)?)?\s*$",
    ],
    "kvm_inj_exception": [
        rf"^(?P<name>#\w+|0x{H})(?: \(0x(?P<error_code__x>{H})\))?(?P<reinjected__p> \[reinjected\])?\s*$",
    ],
    "kvm_emulate_insn": [
        # (__print_hex: whole bytes, two digits each, a space between)
        rf"^(?P<csbase__x>{H}):(?P<rip__x>{H}): ?(?P<insn>(?:[0-9a-fA-F]{{2}}(?: [0-9a-fA-F]{{2}})*)?) ?"
        r"\((?P<mode>\w+)\)"
        r"(?P<failed__p> failed)?\s*$",
        # trace-cmd's kvm plugin (libtraceevent plugin_kvm.c): bytes (or their disassembly), no mode
        rf"^(?P<csbase__x>{H}):(?P<rip__x>{H}): (?P<insn>(?:[0-9a-f]{{2}} )*[0-9a-f]{{2}})(?P<failed__p> FAIL)?\s*$",
    ],
    "kvm_userspace_exit": [r"^reason (?P<reason_name>\S+) \((?P<num__d>-?\d+)\)\s*$"],
    "nmi_handler": [
        r"^(?P<handler>\S+?)(?:\(\))? delta_ns: (?P<delta_ns__d>-?\d+) handled: (?P<handled__d>-?\d+)\s*$",
    ],
    "host_msr": [rf"^(?P<msr__x>{H}), value (?P<value__x>{H})(?P<failed__p> #GP)?\s*$"],
    "sched_switch": [
        r"^prev_comm=(?P<prev_comm>.*?) prev_pid=(?P<prev_pid__d>-?\d+) prev_prio=(?P<prev_prio__d>-?\d+) "
        r"prev_state=(?P<prev_state>\S+) ==> next_comm=(?P<next_comm>.*?) next_pid=(?P<next_pid__d>-?\d+) "
        r"next_prio=(?P<next_prio__d>-?\d+)\s*$",
        r"^(?P<prev_comm>.*?):(?P<prev_pid__d>-?\d+) \[(?P<prev_prio__d>-?\d+)\] (?P<prev_state>\S+) ==> "
        r"(?P<next_comm>.*?):(?P<next_pid__d>-?\d+) \[(?P<next_prio__d>-?\d+)\]\s*$",
    ],
    "irq_vectors": [r"^vector=(?P<vector__d>-?\d+)\s*$", r"^\s*$"],
}

_GROUP_RE = re.compile(r"\(\?P<(\w+)>")


def _col_type(table: str, col: str) -> pl.DataType:
    spec = ALL_TABLES[table]
    for c in spec.all_columns:
        if c.name == col:
            return pl.from_arrow(pa.array([], c.type)).dtype  # type: ignore[union-attr]
    return pl.Int64()


def convert(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """Turn extracted string groups into typed columns named as in the schema."""
    exprs: list[pl.Expr] = []
    for name in df.columns:
        base, _, kind = name.partition("__")
        if kind == "x":
            e = pl.col(name).str.strip_prefix("0x").str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        elif kind == "d":
            e = pl.col(name).str.to_integer(dtype=pl.Int64, strict=False)
        elif kind == "p":
            e = pl.col(name).is_not_null()
        else:
            e = pl.col(name)
        if base in [c.name for c in ALL_TABLES[table].all_columns] and kind in ("x", "d"):
            e = e.cast(_col_type(table, base), strict=False)
        exprs.append(e.alias(base))
    out = df.select(exprs) if exprs else df
    post = POST.get(table)
    return post(out) if post else out


def _post_msr(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(write=pl.col("rw") == "write").drop("rw")


def _post_pio(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(write=pl.col("rw") == "write").drop("rw")


def _post_virq(df: pl.DataFrame) -> pl.DataFrame:
    if "kind" in df.columns:
        df = df.with_columns(soft=pl.col("kind") == "Soft/INTn").drop("kind")
    return df


def _post_apic(df: pl.DataFrame) -> pl.DataFrame:
    # " (coalesced)" only exists on old kernels: its absence says nothing on newer ones
    return df.with_columns(level=pl.col("trig") == "level",
                           coalesced=pl.when(pl.col("coalesced")).then(True).otherwise(None)).drop("trig")


def _post_cpuid(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(found=pl.when(pl.col("found").is_null()).then(None)
                           .otherwise(pl.col("found") == "found"))


def _per_name(col: pl.Series, fn: Callable[[str], tuple], names: list[str], dtypes: list[pl.DataType]) \
        -> dict[str, pl.Series]:
    """Columns computed from a name column once per distinct name (not per row)."""
    distinct = col.unique().drop_nulls().to_list()
    values = [fn(v) for v in distinct]
    out: dict[str, pl.Series] = {}
    for k, (name, dtype) in enumerate(zip(names, dtypes, strict=True)):
        mapped = col.replace_strict(distinct, [v[k] for v in values], default=None, return_dtype=dtype)
        out[name] = mapped.alias(name)
    return out


def _exit_reason(s: str) -> tuple[str, str, int | None, int | None]:
    codes = exit_reason_codes()
    words = s.split(" ")
    k = len(words)
    while k > 1 and words[k - 1] in VMX_REASON_FLAGS:
        k -= 1
    r, f = " ".join(words[:k]), words[k:]
    if r in codes:
        c, i = codes[r]
        return r, " ".join(f), c | sum(VMX_REASON_FLAGS[w] for w in f), i
    if r.startswith("0x"):
        return r, " ".join(f), int(r, 16), None
    return r, " ".join(f), None, None


def _post_exit(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(**_per_name(df["reason"], _exit_reason, ["reason", "reason_flags", "exit_reason", "isa"],
                                       [pl.String, pl.String, pl.UInt32, pl.UInt8]))


def _post_exception(df: pl.DataFrame) -> pl.DataFrame:
    vec = exception_vectors()
    exc = _per_name(df["name"], lambda n: (vec.get(n, int(n, 16) if n.startswith("0x") else None),),
                    ["exception"], [pl.UInt8])
    return df.with_columns(**exc, has_error=pl.col("error_code").is_not_null())


def _post_userspace(df: pl.DataFrame) -> pl.DataFrame:
    special = pl.col("reason_name").is_in(["restart", "error"])
    return df.with_columns(
        reason=pl.when(special).then(None).otherwise(pl.col("num")).cast(pl.UInt32),
        errno=pl.when(special).then(-pl.col("num")).otherwise(0).cast(pl.Int32),
    ).drop("num")


def _post_nmi(df: pl.DataFrame) -> pl.DataFrame:
    h = pl.col("handler")
    addr = h.str.slice(2).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    return df.with_columns(handler_addr=pl.when(h.str.starts_with("0x")).then(addr).otherwise(None))


def _post_emulate(df: pl.DataFrame) -> pl.DataFrame:
    # the bytes as printed ("0f 00 d8"): binary
    return df.with_columns(insn=pl.col("insn").str.replace_all(" ", "").str.decode("hex"))


POST: dict[str, Callable[[pl.DataFrame], pl.DataFrame]] = {
    "kvm_msr": _post_msr, "kvm_pio": _post_pio, "kvm_inj_virq": _post_virq,
    "kvm_apic_accept_irq": _post_apic, "kvm_cpuid": _post_cpuid, "kvm_exit": _post_exit,
    "kvm_inj_exception": _post_exception, "kvm_userspace_exit": _post_userspace, "nmi_handler": _post_nmi,
    "kvm_emulate_insn": _post_emulate,
}


def group_names(pattern: str) -> list[str]:
    return _GROUP_RE.findall(pattern)
