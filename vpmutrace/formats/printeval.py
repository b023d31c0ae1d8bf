"""A parsed print fmt (formats/printfmt.py) printed for one record, as ``trace-cmd report`` prints it.

The values are the record's decoded fields, with C's meaning (a signed field is negative when
its sign bit is set; comparisons, division and shifts are C's). How each piece prints follows
libtraceevent 1.8.2 (src/event-parse.c), which trace-cmd 3.2 prints with:

- numbers through glibc's printf after a cast to the conversion's length (formats/cprint.py);
- ``%s`` of a pointer-sized field that is not an array: the constant string at that address
  (the trace's printk map) or the address in bare hex (print_str_arg); of a typecast or of an
  expression other than ``?:``, nothing; of a bare name, the name;
- ``%p``: ``(nil)``/``0x...``; ``%ps``/``%pf`` the symbol alone, ``%pS``/``%pF`` symbol+0x<offset>
  (print_function; unresolved: ``0x<address>``); the address extensions from cprint;
- a name the format does not define reads as its kernel symbol's address, else 0
  (test_for_symbol); as a key of ``__print_symbolic``/``__print_flags`` it matches no value
  (eval_flag gives -1; the softirq and HRTIMER_(NO)RESTART names are built in), a key that is an
  expression is computed with such names as 0 (arg_num_eval);
- ``__print_symbolic``/``__print_flags`` test the field's value as read (its width, zero-extended);
  unmatched values print as ``0x%llx``; ``__print_array`` prints ``%u`` elements separated by
  spaces, ``__get_cpumask`` a CPU list, ``__get_bitmask`` hex words;
- ``REC->arr[i]`` reads element i of a fixed array; ``__get_dynamic_array(d)[i]`` reads one
  element's width at byte i of the dynamic array.

Where trace-cmd's value is wrong for the record (its own bugs, see tests/tracecmd_bugs.py) the
value the kernel prints is printed instead: a zero ``__print_flags`` value prints nothing
(libtraceevent prints the first flag whose key it cannot resolve).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vpmutrace.errors import UnsupportedFormat
from vpmutrace.formats import cprint
from vpmutrace.formats.event_format import Field
from vpmutrace.formats.kernel_maps import FunctionMap
from vpmutrace.formats.printfmt import M64, Conversion, Node, PrintFmt, binary_op, c_cast

# names libtraceevent's eval_flag knows without the format (softirq vectors, hrtimer restart values)
BUILTIN_KEYS = {"HI_SOFTIRQ": 0, "TIMER_SOFTIRQ": 1, "NET_TX_SOFTIRQ": 2, "NET_RX_SOFTIRQ": 3, "BLOCK_SOFTIRQ": 4,
                "IRQ_POLL_SOFTIRQ": 5, "TASKLET_SOFTIRQ": 6, "SCHED_SOFTIRQ": 7, "HRTIMER_SOFTIRQ": 8,
                "RCU_SOFTIRQ": 9, "HRTIMER_NORESTART": 0, "HRTIMER_RESTART": 1}
# libtraceevent's argument kinds (enum tep_print_arg_type), named in its "ARG TYPE NOT FIELD" text
_ARG_KIND = {"num": 1, "str": 1, "field": 2, "__print_flags": 3, "__print_symbolic": 4, "__print_hex": 5,
             "__print_array": 6, "cast": 7, "__get_str": 8, "__get_rel_str": 8, "__get_dynamic_array": 10,
             "__get_rel_dynamic_array": 10, "__get_sockaddr": 10, "__get_sockaddr_rel": 10, "__get_bitmask": 13,
             "__get_rel_bitmask": 13, "__get_dynamic_array_len": 14, "__get_rel_dynamic_array_len": 14,
             "__print_hex_str": 15, "__get_cpumask": 16, "__get_rel_cpumask": 16}
_STRINGS = ("__get_str", "__get_rel_str")
_DYNAMIC = ("__get_dynamic_array", "__get_rel_dynamic_array", "__get_sockaddr", "__get_sockaddr_rel")
_ELEMENT_SIZES = {"u8": 1, "s8": 1, "char": 1, "u16": 2, "s16": 2, "u32": 4, "s32": 4, "u64": 8, "s64": 8}


class MissingValue(UnsupportedFormat):
    """A field the print fmt reads is not in the row (a text trace that did not print it)."""


@dataclass
class Env:
    """What printing needs besides the record: the event's fields (layout, type) and the trace's
    kernel maps."""

    fields: Mapping[str, Field] = field(default_factory=dict)
    functions: FunctionMap | None = None
    lookup: Callable[[int], str | None] | None = None  # an address -> name callable (no kallsyms text)
    printk: Mapping[int, str] = field(default_factory=dict)
    big_endian: bool = False
    long_size: int = 8
    # evaluate as libtraceevent does, its documented bug included (fields zero-extended, unsigned 64-bit
    # arithmetic and comparisons, casts that only mask): only to compare with trace-cmd's text
    trace_cmd: bool = False

    @classmethod
    def of(cls, symbols: Callable[[int], str | None] | None) -> Env:
        return cls(lookup=symbols)

    def with_fields(self, fields: Mapping[str, Field]) -> Env:
        return Env(fields, self.functions, self.lookup, self.printk, self.big_endian, self.long_size, self.trace_cmd)

    def function(self, addr: int) -> tuple[str, int] | None:
        if self.functions is not None:
            return self.functions.find(addr)
        if self.lookup is not None:
            name = self.lookup(addr)
            if name:
                base, plus, off = name.partition("+0x")
                return (base, addr - int(off, 16)) if plus else (name, addr)
        return None

    def symbol_address(self, name: str) -> int:
        if self.functions is not None:
            return self.functions.address(name) or 0
        return 0

    @property
    def order(self) -> str:
        return "big" if self.big_endian else "little"


def render(pf: PrintFmt, rec: Mapping[str, Any], env: Env, given: Mapping[int, str] | None = None) -> str:
    out: list[str] = []
    k = 0
    for c in pf.convs:
        out.append(c.literal)
        width, prec, flags = c.width, c.prec, c.flags
        star = None
        if width == "*" or prec == "*":
            star = c_cast(num(pf.args[k], rec, env), 32, True)
            k += 1
        if given is not None and k in given:
            out.append(given[k])
            k += 1
            continue
        w = star if width == "*" else int(width) if width else None
        p = star if prec == "*" else int(prec) if prec is not None else None
        if w is not None and w < 0:
            flags, w = flags + "-", -w
        if p is not None and p < 0:
            p = None
        out.append(_convert(c, flags, w, p, star, pf.args[k], rec, env))
        k += 1
    out.append(pf.tail)
    return "".join(out)


def _convert(c: Conversion, flags: str, w: int | None, p: int | None, star: int | None, arg: Node,
             rec: Mapping[str, Any], env: Env) -> str:
    if c.conv == "s":
        return text(arg, rec, env, lambda s: cprint.format_str(flags, w, p, s))
    if c.conv == "p":
        return _pointer(c.pext, arg, rec, env, star if star is not None else 1)
    return cprint.format_int(flags, w, p, c.conv, num(arg, rec, env), c.bits)


# ---- numbers -------------------------------------------------------------------------------------

CType = tuple[int, bool]  # (bits, signed)
_INT: CType = (32, True)
_ULONG: CType = (64, False)


def num(n: Node, rec: Mapping[str, Any], env: Env) -> int:
    """An argument's value as a number (libtraceevent's eval_num_arg, with C's arithmetic)."""
    return typed(n, rec, env)[0]


def _fit(v: int, t: CType) -> int:
    return c_cast(v, t[0], t[1])


def _promote(t: CType) -> CType:
    return _INT if t[0] < 32 else t


def _common(a: CType, b: CType) -> CType:
    """C's usual arithmetic conversions (LP64)."""
    a, b = _promote(a), _promote(b)
    if a == b:
        return a
    if a[1] == b[1]:
        return max(a, b)
    s, u = (a, b) if a[1] else (b, a)
    if u[0] >= s[0]:
        return u
    return s  # the signed type is wider: it holds every unsigned value


def typed(n: Node, rec: Mapping[str, Any], env: Env) -> tuple[int, CType]:
    """(value, C type) of an argument."""
    if env.trace_cmd:
        return _typed(n, rec, env)[0] & M64, _ULONG
    return _typed(n, rec, env)


def _typed(n: Node, rec: Mapping[str, Any], env: Env) -> tuple[int, CType]:
    kind = n[0]
    if env.trace_cmd:  # libtraceevent: every value an unsigned 64-bit number, fields zero-extended
        if kind == "field" and n[1] in rec:
            v, t = _field_num(n, rec, env)
            return v & ((1 << t[0]) - 1), _ULONG
        if kind == "cast" and n[1] is not None:
            return c_cast(typed(n[3], rec, env)[0], n[1], False), _ULONG
        if kind == "index":
            v, t = _index(n, rec, env)
            return v & ((1 << t[0]) - 1), _ULONG
    if kind == "num":
        return n[1], n[2] if len(n) > 2 else _INT
    if kind == "str":
        return 0, _ULONG
    if kind == "field":
        return _field_num(n, rec, env)
    if kind == "cast":
        v, t = typed(n[3], rec, env)
        if n[1] is None:
            return v, t
        return c_cast(v, n[1], n[2]), (n[1], n[2])
    if kind == "un":
        v, t = typed(n[2], rec, env)
        if n[1] == "!":
            return int(not v), _INT
        t = _promote(t)
        return _fit(-v if n[1] == "-" else ~v, t), t
    if kind == "bin":
        op = n[1]
        if op in ("&&", "||"):
            a = bool(num(n[2], rec, env))
            if (op == "&&") != a:
                return int(a), _INT
            return int(bool(num(n[3], rec, env))), _INT
        a, ta = typed(n[2], rec, env)
        b, tb = typed(n[3], rec, env)
        if op in ("<<", ">>"):  # (the count masked to the type's width, as x86 shifts do)
            t = _promote(ta)
            a, b = _fit(a, t), b & (t[0] - 1)
            return _fit(a << b if op == "<<" else a >> b, t), t
        t = _common(ta, tb)
        a, b = _fit(a, t), _fit(b, t)
        if op in ("<", ">", "<=", ">=", "==", "!="):
            return binary_op(op, a, b), _INT
        return _fit(binary_op(op, a, b), t), t
    if kind == "tern":
        return typed(n[2], rec, env) if num(n[1], rec, env) else typed(n[3], rec, env)
    if kind == "index":
        return _index(n, rec, env)
    if kind == "call":
        if n[1] in ("__get_dynamic_array_len", "__get_rel_dynamic_array_len"):
            return len(raw_bytes(n[2][0], rec, env)), (32, False)
        return 0, _INT  # strings, tables, arrays: not numbers (libtraceevent reads 0)
    raise UnsupportedFormat(f"cannot evaluate {kind}")


def _field_num(n: Node, rec: Mapping[str, Any], env: Env) -> tuple[int, CType]:
    name = n[1]
    f = env.fields.get(name)
    if name not in rec:
        if len(n) > 2 and f is None:  # a bare name: a constant the format does not define
            return env.symbol_address(name), _ULONG
        if env.fields and f is None:
            return 0, _INT  # (libtraceevent: field not found, 0)
        raise MissingValue(f"print fmt reads field {name}, which the row does not have")
    v = rec[name]
    t: CType = (8 * f.size, f.signed) if f is not None and f.size in (1, 2, 4, 8) else (64, True)
    if isinstance(v, bool | int):
        return int(v), t
    if v is None:
        raise MissingValue(f"field {name} is null in this row")
    data = raw_bytes(n, rec, env)  # an array read as a number: its bytes if they make one
    return (int.from_bytes(data, env.order) if len(data) in (1, 2, 4, 8) else 0), _ULONG


def tc_value(n: Node, rec: Mapping[str, Any], env: Env) -> int:
    """The value as libtraceevent reads it, for symbol and flag tables: a field zero-extended from its
    width, everything else as a 64-bit pattern."""
    v = num(n, rec, env)
    if n[0] == "field" and v < 0:
        f = env.fields.get(n[1])
        if f is not None and 0 < f.size < 8:
            return v & ((1 << (8 * f.size)) - 1)
    return v & M64


def _index(n: Node, rec: Mapping[str, Any], env: Env) -> tuple[int, CType]:
    base, i = n[1], num(n[2], rec, env)
    casts = []
    while base[0] == "cast":
        casts.append(base)
        base = base[3]
    if base[0] == "call" and base[1] in _DYNAMIC:
        data = raw_bytes(base[2][0], rec, env)
        f = env.fields.get(base[2][0][1])
        size = _ELEMENT_SIZES.get(f.type.split()[-1].removeprefix("__"), env.long_size) if f is not None else 1
        chunk = data[i:i + size] if i >= 0 else b""
        v, t = int.from_bytes(chunk.ljust(size, b"\0"), env.order), (8 * size, False)
    elif base[0] == "field":
        f = env.fields.get(base[1])
        v = _element(base, i, rec, env)
        t = (8 * f.elem_size, f.signed) if f is not None and f.elem_size in (1, 2, 4, 8) else _ULONG
    else:
        raise UnsupportedFormat("index of something that is not an array")
    for cast in reversed(casts):
        if cast[1] is not None:
            v, t = c_cast(v, cast[1], cast[2]), (cast[1], cast[2])
    return v, t


def _element(n: Node, i: int, rec: Mapping[str, Any], env: Env) -> int:
    if n[1] not in rec:
        raise MissingValue(f"print fmt reads field {n[1]}, which the row does not have")
    v = rec[n[1]]
    if isinstance(v, list | tuple):
        return int(v[i]) if 0 <= i < len(v) else 0
    f = env.fields.get(n[1])
    data = raw_bytes(n, rec, env)
    b = data[i] if 0 <= i < len(data) else 0
    return b - 256 if f is not None and f.signed and b > 127 else b


def raw_bytes(n: Node, rec: Mapping[str, Any], env: Env) -> bytes:
    """A field's bytes as the record holds them (rebuilt from the decoded value)."""
    if n[0] != "field":
        raise UnsupportedFormat("not a field")
    if n[1] not in rec:
        raise MissingValue(f"print fmt reads field {n[1]}, which the row does not have")
    v = rec[n[1]]
    f = env.fields.get(n[1])
    if isinstance(v, bytes | bytearray):
        return bytes(v)
    if isinstance(v, str):
        data = v.encode("utf-8", "surrogateescape")
        if f is not None and not f.dynamic and f.size > len(data):
            data = data.ljust(f.size, b"\0")
        return data
    if isinstance(v, list | tuple):
        size = f.elem_size if f is not None and f.elem_size else 8
        return b"".join((int(x) & ((1 << (8 * size)) - 1)).to_bytes(size, env.order) for x in v)
    if isinstance(v, bool | int):
        size = f.size if f is not None and f.size in (1, 2, 4, 8) else 8
        return (int(v) & ((1 << (8 * size)) - 1)).to_bytes(size, env.order)
    raise MissingValue(f"field {n[1]} is null in this row")


# ---- text (%s) -----------------------------------------------------------------------------------

def text(n: Node, rec: Mapping[str, Any], env: Env, fmt: Callable[[str], str] = str) -> str:
    """``%s`` of an argument (print_str_arg); ``fmt`` applies the conversion's width and precision
    where libtraceevent does."""
    kind = n[0]
    if kind == "str":
        return fmt(n[1])
    if kind == "num":
        return fmt(str(n[1]))
    if kind == "field":
        f = env.fields.get(n[1])
        if len(n) > 2 and f is None and n[1] not in rec:
            return fmt(n[1])  # a bare name is printed as it is written
        if f is not None and f.array_len is None and not f.dynamic and f.size == env.long_size \
                and f.kind != "chars":
            addr = num(n, rec, env) & M64
            s = env.printk.get(addr)
            return s if s is not None else f"{addr:x}"
        data = raw_bytes(n, rec, env) if not isinstance(rec.get(n[1]), str) else rec[n[1]].encode(
            "utf-8", "surrogateescape")
        return fmt(_cstr(data))
    if kind == "tern":
        return text(n[2] if num(n[1], rec, env) else n[3], rec, env, fmt)
    if kind == "call":
        return _call_text(n[1], n[2], rec, env, fmt)
    return ""  # a typecast, an operator other than ?: (libtraceevent prints nothing)


def _cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def value(n: Node, rec: Mapping[str, Any], env: Env) -> Any:
    """An argument's value: its text for strings and tables, else its number."""
    if n[0] == "str" or (n[0] == "call" and n[1] not in ("__get_dynamic_array_len", "__get_rel_dynamic_array_len")) \
            or (n[0] == "tern" and any(x[0] in ("str", "call") for x in n[2:])):
        return text(n, rec, env)
    return num(n, rec, env)


def _call_text(name: str, args: list[Node], rec: Mapping[str, Any], env: Env, fmt: Callable[[str], str]) -> str:
    if name.startswith("__print_symbolic"):
        val = tc_value(args[0], rec, env)
        for key, s in _table_of(args, 1):
            if key & M64 == val:
                return fmt(s)
        return f"0x{val:x}"
    if name.startswith("__print_flags"):
        return _flags(tc_value(args[0], rec, env), text(args[1], rec, env), _table_of(args, 2), fmt)
    if name in _STRINGS:
        s = text(args[0], rec, env)
        return fmt(s) if s else ""
    if name in ("__get_bitmask", "__get_rel_bitmask"):
        return fmt(bitmask_text(raw_bytes(args[0], rec, env), env.big_endian))
    if name in ("__get_cpumask", "__get_rel_cpumask"):
        return fmt(cpumask_text(raw_bytes(args[0], rec, env), env.big_endian))
    if name in ("__print_hex", "__print_hex_str"):
        data = _buffer(args[0], rec, env)
        count = max(0, num(args[1], rec, env) & 0xFFFFFFFF)
        return (" " if name == "__print_hex" else "").join(f"{b:02x}" for b in data[:count])
    if name == "__print_array":
        return _int_array(_buffer(args[0], rec, env), num(args[1], rec, env), num(args[2], rec, env), env)
    return ""  # __get_dynamic_array, __get_dynamic_array_len as text: nothing


def _buffer(n: Node, rec: Mapping[str, Any], env: Env) -> bytes:
    if n[0] == "call" and n[1] in _DYNAMIC:
        return raw_bytes(n[2][0], rec, env)
    while n[0] == "cast":
        n = n[3]
    return raw_bytes(n, rec, env)


def _int_array(data: bytes, count: int, size: int, env: Env) -> str:
    out = []
    at = 0
    for _ in range(max(0, count)):
        if size in (1, 2, 4, 8):
            out.append(str(int.from_bytes(data[at:at + size].ljust(size, b"\0"), env.order)))
            at += size
        else:
            out.append(f"BAD SIZE:{size} 0x{data[at] if at < len(data) else 0:x}")
            at += 1
    return " ".join(out)


def _flags(val: int, delim: str, table: list[tuple[int, str]], fmt: Callable[[str], str]) -> str:
    parts: list[str] = []
    for key, s in table:
        fval = key - (1 << 64) if key >> 63 else key  # (a long long in libtraceevent)
        if not val and fval < 0:
            break  # libtraceevent prints s here (tests/tracecmd_bugs.py); the kernel prints nothing for 0
        if fval > 0 and val & fval == fval:
            parts.append(fmt(s))
            val &= ~fval
    if val:
        parts.append(f"0x{val:x}")
    return delim.join(parts)


_TABLES: dict[tuple[int, int], tuple[list[Node], list[tuple[int, str]]]] = {}


def _table_of(args: list[Node], start: int) -> list[tuple[int, str]]:
    """_table(args[start:]), computed once per parsed print fmt (the args list is part of its tree)."""
    hit = _TABLES.get((id(args), start))
    if hit is None or hit[0] is not args:
        hit = _TABLES[id(args), start] = (args, _table(args[start:]))
    return hit[1]


def _table(items: list[Node]) -> list[tuple[int, str]]:
    """(key as a 64-bit pattern, name) of a symbol or flag table; a key libtraceevent cannot resolve
    is -1 (matches no value but all ones)."""
    out: list[tuple[int, str]] = []
    for it in items:
        if it[0] != "list":
            raise UnsupportedFormat("symbol table entry is not a { value, name } pair")
        pair = it[1]
        if not pair:
            continue
        if len(pair) != 2:
            raise UnsupportedFormat("symbol table entry is not a pair")
        out.append((_key(pair[0]) & M64, _name(pair[1])))
    return out


def _key(n: Node) -> int:
    while n[0] == "cast":
        n = n[3]  # (arg_eval ignores a typecast on a key)
    if n[0] == "num":
        return n[1]
    if n[0] == "field":
        return BUILTIN_KEYS.get(n[1], -1)
    if n[0] == "str":
        return -1
    return _key_expr(n)


def _key_expr(n: Node) -> int:
    """A key that is an expression, names read as 0 (libtraceevent's arg_num_eval uses strtoll)."""
    kind = n[0]
    if kind == "num":
        return n[1]
    if kind in ("field", "str"):
        return BUILTIN_KEYS.get(n[1], 0) if kind == "field" else 0
    if kind == "cast":
        return c_cast(_key_expr(n[3]), n[1], n[2])
    if kind == "un":
        v = _key_expr(n[2])
        return -v if n[1] == "-" else int(not v) if n[1] == "!" else ~v
    if kind == "bin":
        return binary_op(n[1], _key_expr(n[2]), _key_expr(n[3]))
    if kind == "tern":
        return _key_expr(n[2]) if _key_expr(n[1]) else _key_expr(n[3])
    raise UnsupportedFormat(f"symbol table key {kind}")


def _name(n: Node) -> str:
    while n[0] == "cast":
        n = n[3]
    if n[0] == "str":
        return n[1]
    if n[0] == "num":
        return str(n[1])
    if n[0] == "field":
        return n[1]
    return str(_key_expr(n))


def bitmask_text(data: bytes, big_endian: bool = False) -> str:
    """A bitmask as libtraceevent prints it (print_bitmask_to_seq, like the kernel's %*pb): two hex
    digits per byte, most significant first, a comma every four bytes."""
    nbits = len(data) * 8
    if nbits == 0:
        return ""
    size = (nbits + 3) // 4 + (nbits - 1) // 32
    out = [""] * size
    i, k = size - 2, 0
    while i >= 0:
        b = data[len(data) - 1 - k] if big_endian else data[k]
        out[i], out[i + 1] = f"{b:02x}"
        k += 1
        if k % 4 == 0 and i > 0:
            i -= 1
            out[i] = ","
        i -= 2
    return "".join(out)


def cpumask_text(data: bytes, big_endian: bool = False) -> str:
    """The CPUs of a mask as ranges ("0-3,8"), as print_cpumask_to_seq prints them."""
    ordered = data[::-1] if big_endian else data
    bits = [(ordered[i // 8] >> (i % 8)) & 1 for i in range(len(ordered) * 8)]
    out = []
    i = 0
    while i < len(bits):
        if bits[i]:
            j = i
            while j + 1 < len(bits) and bits[j + 1]:
                j += 1
            out.append(f"{i}-{j}" if j > i else f"{i}")
            i = j + 1
        else:
            i += 1
    return ",".join(out)


# ---- pointers (%p) -------------------------------------------------------------------------------

def _pointer(ext: str, arg: Node, rec: Mapping[str, Any], env: Env, count: int) -> str:
    c = ext[:1]
    if c in ("s", "f", "S", "F"):
        addr = num(arg, rec, env) & M64
        hit = env.function(addr)
        if hit is None:
            return f"0x{addr:x}" if env.long_size == 8 else f"0x{addr & 0xFFFFFFFF:x}"
        return hit[0] + (f"+0x{addr - hit[1]:x}" if c in ("S", "F") else "")
    if c in ("M", "m", "I", "i", "U", "h"):
        return _address(ext, arg, rec, env, count)
    return cprint.pointer(num(arg, rec, env))


def _address(ext: str, arg: Node, rec: Mapping[str, Any], env: Env, count: int) -> str:
    while arg[0] == "cast":
        arg = arg[3]
    kind = _ARG_KIND.get(arg[1] if arg[0] == "call" else arg[0], 11)
    c = ext[0]
    if c == "h":
        if not (arg[0] == "call" and arg[1] in _DYNAMIC):
            return f"ARG TYPE NOT FIELD BUT {kind}"
        return cprint.hex_buffer(ext, raw_bytes(arg[2][0], rec, env), count)
    dynamic = arg[0] == "call" and arg[1] in _DYNAMIC
    if c in "Ii" and ext[1:2] == "S" and dynamic:
        return cprint.ip_sockaddr(ext, raw_bytes(arg[2][0], rec, env), env.big_endian)
    if arg[0] != "field" or (len(arg) > 2 and arg[1] not in env.fields):
        if c in "Ii" and ext[1:2] == "S":
            return f"ARG NOT FIELD NOR DYNAMIC ARRAY BUT TYPE {kind}"
        if c in "Ii" and ext[1:2] not in ("4", "6"):
            return ""
        return f"ARG TYPE NOT FIELD BUT {kind}"
    data = raw_bytes(arg, rec, env)
    f = env.fields.get(arg[1])
    if f is not None and not f.dynamic:
        data = data[:f.size].ljust(f.size, b"\0")
    if c in "Mm":
        return cprint.mac(ext, data)
    if c == "U":
        return cprint.uuid(ext, data)
    kind2 = ext[1:2]
    if kind2 == "4":
        if len(data) != 4:
            return "INVALIDIPv4"
        order = ext[2:3]
        return cprint.ip4(c, data, cprint.ip4_reverse(order, env.big_endian) if order else False)
    if kind2 == "6":
        if len(data) != 16:
            return "INVALIDIPv6"
        return cprint.ip6c(data) if c == "I" and ext[2:3] == "c" else cprint.ip6(c, data)
    if kind2 == "S":
        return cprint.ip_sockaddr(ext, data, env.big_endian)
    return ""
