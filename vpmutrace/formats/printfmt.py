"""Evaluate a tracepoint's ``print fmt``: a C format string and C-expression arguments.

Supported: integer arithmetic and logic, comparisons, ternaries, casts, field
references (``REC->x``), string literal concatenation, and the kernel helpers
``__print_symbolic``/``__print_symbolic64``, ``__print_flags``/``__print_flags_u64``,
``__print_hex``/``__print_hex_str``, ``__print_array``, ``__get_str``/``__get_rel_str``,
``__get_dynamic_array(_len)``, ``__get_bitmask``/``__get_cpumask``. Anything else raises
:class:`UnsupportedFormat` at parse time; the reader then keeps the raw fields and reports the
event as a fallback.

An empty symbol table (``__print_symbolic(x, { })``, which perf 6.1's libtraceevent
rejects in kvm_inj_exception) is valid and prints the value in hex, like the kernel.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vpmutrace.errors import UnsupportedFormat

M64 = (1 << 64) - 1

_TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<num>0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*)
    | (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<chr>'(?:[^'\\]|\\.)')
    | (?P<id>[A-Za-z_]\w*)
    | (?P<op>->|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^~!<>?:(),.\[\]{}])
    )""",
    re.VERBOSE,
)

_TYPE_WORDS = {
    "u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "__u8", "__u16", "__u32", "__u64",
    "__s8", "__s16", "__s32", "__s64", "int", "unsigned", "signed", "long", "short", "char",
    "bool", "_Bool", "void", "size_t", "ssize_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t",
    "int8_t", "int16_t", "int32_t", "int64_t", "const", "gfp_t", "pid_t", "dev_t", "loff_t",
}

_FUNCS = {
    "__print_symbolic", "__print_symbolic64", "__print_symbolic_u64", "__print_flags",
    "__print_flags_u64", "__print_hex", "__print_hex_str", "__print_array", "__get_str",
    "__get_rel_str", "__get_dynamic_array", "__get_rel_dynamic_array", "__get_dynamic_array_len",
    "__get_rel_dynamic_array_len", "__get_bitmask", "__get_rel_bitmask", "__get_cpumask", "__get_rel_cpumask",
}

_BINARY_PREC = {
    "||": 1, "&&": 2, "|": 3, "^": 4, "&": 5, "==": 6, "!=": 6,
    "<": 7, ">": 7, "<=": 7, ">=": 7, "<<": 8, ">>": 8, "+": 9, "-": 9, "*": 10, "/": 10, "%": 10,
}

Node = tuple  # ("num", v) ("str", s) ("field", name) ("un", op, n) ("bin", op, l, r)
#              ("tern", c, a, b) ("call", name, args) ("pair", v, s) ("list", items) ("cast", bits, signed, n)


def _unescape(lit: str) -> str:
    body = lit[1:-1]
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _tokenize(src: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    pos = 0
    src = src.rstrip()
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(src, pos)
        if not m or m.end() == pos:
            raise UnsupportedFormat(f"cannot tokenize print fmt at {src[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        toks.append((kind, m.group(kind)))
        pos = m.end()
    return toks


class _Parser:
    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, str]:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("eof", "")

    def next(self) -> tuple[str, str]:
        t = self.peek()
        self.i += 1
        return t

    def expect(self, val: str) -> None:
        t = self.next()
        if t[1] != val:
            raise UnsupportedFormat(f"expected {val!r}, got {t[1]!r}")

    def expr(self) -> Node:
        return self.ternary()

    def ternary(self) -> Node:
        cond = self.binary(1)
        if self.peek()[1] == "?":
            self.next()
            a = self.ternary()
            self.expect(":")
            b = self.ternary()
            return ("tern", cond, a, b)
        return cond

    def binary(self, min_prec: int) -> Node:
        left = self.unary()
        while True:
            kind, op = self.peek()
            prec = _BINARY_PREC.get(op) if kind == "op" else None
            if prec is None or prec < min_prec:
                return left
            self.next()
            right = self.binary(prec + 1)
            left = ("bin", op, left, right)

    def _is_cast(self) -> bool:
        if self.peek()[1] != "(":
            return False
        j = 1
        saw = False
        while True:
            kind, val = self.peek(j)
            if kind == "id" and (val in _TYPE_WORDS or val.endswith("_t")):
                saw = True
            elif val == "*" and saw:
                pass
            elif val == ")" and saw:
                return True
            else:
                return False
            j += 1

    def unary(self) -> Node:
        kind, val = self.peek()
        if kind == "op" and val in ("-", "+", "!", "~", "&", "*"):
            self.next()
            operand = self.unary()
            if val in ("&", "*", "+"):
                return operand
            return ("un", val, operand)
        if self._is_cast():
            self.next()
            words = []
            while self.peek()[1] != ")":
                words.append(self.next()[1])
            self.next()
            operand = self.unary()
            return ("cast", _cast_bits(words), _cast_signed(words), operand)
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while True:
            val = self.peek()[1]
            if val == "[":
                self.next()
                idx = self.expr()
                self.expect("]")
                node = ("index", node, idx)
            elif val in ("->", "."):
                self.next()
                kind, name = self.next()
                if kind != "id":
                    raise UnsupportedFormat(f"bad member access {name!r}")
                if node == ("id", "REC"):
                    node = ("field", name)
                else:
                    raise UnsupportedFormat("nested member access")
            else:
                return node

    def primary(self) -> Node:
        kind, val = self.next()
        if kind == "num":
            return ("num", int(val.rstrip("uUlL"), 0))
        if kind == "chr":
            return ("num", ord(_unescape(val)))
        if kind == "str":
            s = _unescape(val)
            while self.peek()[0] == "str":
                s += _unescape(self.next()[1])
            return ("str", s)
        if kind == "id":
            if val == "REC":
                return ("id", "REC")
            if self.peek()[1] == "(":
                if val not in _FUNCS:
                    raise UnsupportedFormat(f"print fmt calls {val}()")
                self.next()
                args: list[Node] = []
                while self.peek()[1] != ")":
                    args.append(self.brace_or_expr())
                    if self.peek()[1] == ",":
                        self.next()
                    elif self.peek()[1] != ")":
                        raise UnsupportedFormat(f"bad argument list of {val}")
                self.next()
                return ("call", val, args)
            # a bare name: the field argument of __get_str(name) and friends
            return ("field", val)
        if val == "(":
            node = self.expr()
            self.expect(")")
            return node
        raise UnsupportedFormat(f"unexpected {val!r} in print fmt")

    def brace_or_expr(self) -> Node:
        if self.peek()[1] != "{":
            return self.expr()
        self.next()
        items: list[Node] = []
        while self.peek()[1] != "}":
            items.append(self.brace_or_expr())
            if self.peek()[1] == ",":
                self.next()
        self.next()
        return ("list", items)


def _cast_bits(words: list[str]) -> int:
    w = " ".join(words)
    if "*" in w:
        return 64
    for key, bits in (("8", 8), ("16", 16), ("32", 32), ("64", 64)):
        if re.search(rf"\D{key}(_t)?$", " " + w.replace(" ", "")):
            return bits
    if "char" in w or "bool" in w:
        return 8
    if "short" in w:
        return 16
    if "long" in w:
        return 64
    return 32


def _cast_signed(words: list[str]) -> bool:
    w = " ".join(words)
    if "unsigned" in w or re.search(r"\bu(8|16|32|64)\b|__u|uint|size_t|bool", w):
        return False
    return True


_CONV_RE = re.compile(r"%(?P<flags>[-+ #0]*)(?P<width>\d+|\*)?(?:\.(?P<prec>\d+|\*))?"
                      r"(?P<len>hh|h|ll|l|z|j|t|L)?(?P<conv>[diouxXcsp%])")


@dataclass
class Conversion:
    literal: str  # text before this conversion
    spec: str  # the whole %... spec, "" for the trailing literal
    flags: str
    width: str | None
    prec: str | None
    length: str
    conv: str
    pext: str  # %p extension letters (pS, ps, ...)


MAX_DEPTH = 200  # expression nesting evaluated (kernel print fmts nest a few levels; __print_symbolic lists are flat)


def _depth(root: Any) -> int:
    """How deep tuples and lists nest in ``root`` (iteratively: the tree may be deeper than Python's stack)."""
    deepest, todo = 0, [(root, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            break
        todo.extend((c, d + 1) for c in node if isinstance(c, tuple | list))
    return deepest


@dataclass
class PrintFmt:
    convs: list[Conversion]
    tail: str
    args: list[Node]

    @classmethod
    def parse(cls, text: str) -> PrintFmt:
        toks = _tokenize(text)
        if not toks or toks[0][0] != "str":
            raise UnsupportedFormat("print fmt does not start with a string")
        p = _Parser(toks)
        fmt_node = p.primary()
        fmt = fmt_node[1]
        args: list[Node] = []
        try:
            while p.peek()[0] != "eof":
                p.expect(",")
                args.append(p.brace_or_expr())
        except RecursionError:
            raise UnsupportedFormat(f"print fmt nested deeper than this reader follows ({len(toks)} tokens)") from None
        if _depth(args) > MAX_DEPTH:  # (evaluating a node recurses into its operands)
            raise UnsupportedFormat(f"print fmt expressions nested deeper than {MAX_DEPTH}")
        convs: list[Conversion] = []
        pos = 0
        for m in _CONV_RE.finditer(fmt):
            lit = fmt[pos:m.start()]
            pos = m.end()
            if m.group("conv") == "%":
                convs.append(Conversion(lit, "%%", "", None, None, "", "%", ""))
                continue
            pext = ""
            if m.group("conv") == "p":
                ext = re.match(r"[SsFfBK]|I[46]|i[46]|M|m|U", fmt[pos:])
                if ext:
                    pext = ext.group(0)
                    pos += len(pext)
            convs.append(Conversion(lit, m.group(0), m.group("flags"), m.group("width"), m.group("prec"),
                                    m.group("len") or "", m.group("conv"), pext))
        tail = fmt[pos:]
        n_args = sum(1 for c in convs if c.conv != "%") + sum(
            (c.width == "*") + (c.prec == "*") for c in convs)
        if n_args != len(args):
            raise UnsupportedFormat(f"print fmt has {n_args} conversions but {len(args)} arguments")
        return cls(convs, tail, args)

    def fields_used(self, node: Node | None = None) -> set[str]:
        """Names of the record fields the arguments read."""
        out: set[str] = set()
        stack = list(self.args) if node is None else [node]
        while stack:
            n = stack.pop()
            if not isinstance(n, tuple):
                continue
            if n[0] == "field":
                out.add(n[1])
            for x in n[1:]:
                if isinstance(x, tuple):
                    stack.append(x)
                elif isinstance(x, list):
                    stack.extend(x)
        return out

    def arg_after(self, literal_suffix: str, conv: str = "s") -> int | None:
        """Index of the first argument whose conversion follows text ending in ``literal_suffix``."""
        k = 0
        for c in self.convs:
            if c.conv == "%":
                continue
            k += (c.width == "*") + (c.prec == "*")
            if c.conv == conv and c.literal.endswith(literal_suffix):
                return k
            k += 1
        return None

    def eval_arg(self, k: int, rec: Mapping[str, Any], symbols: Callable[[int], str] | None = None) -> Any:
        return _eval(self.args[k], rec)

    def render(self, rec: Mapping[str, Any], symbols: Callable[[int], str | None] | None = None,
               given: Mapping[int, str] | None = None) -> str:
        """The printed text; ``given`` holds the text of arguments already known (names a text trace
        printed, whose raw fields it does not carry)."""
        out: list[str] = []
        k = 0
        for c in self.convs:
            out.append(c.literal)
            if c.conv == "%":
                out.append("%")
                continue
            width = c.width
            prec = c.prec
            if width == "*":
                width = str(_as_int(_eval(self.args[k], rec)))
                k += 1
            if prec == "*":
                prec = str(_as_int(_eval(self.args[k], rec)))
                k += 1
            if given is not None and k in given:
                out.append(given[k])
                k += 1
                continue
            val = _eval(self.args[k], rec)
            k += 1
            out.append(_format_one(c, width, prec, val, symbols))
        out.append(self.tail)
        return "".join(out)


def _as_int(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, bytes | bytearray):
        return int.from_bytes(v[:8], "little")
    if isinstance(v, str):
        raise UnsupportedFormat("string used as a number")
    return int(v)


def _format_one(c: Conversion, width: str | None, prec: str | None, val: Any,
                symbols: Callable[[int], str | None] | None) -> str:
    spec = "%" + c.flags + (width or "") + (("." + prec) if prec is not None else "")
    if c.conv == "s":
        if isinstance(val, bytes | bytearray):
            val = bytes(val).split(b"\0", 1)[0].decode("utf-8", "replace")
        return (spec + "s") % (val if isinstance(val, str) else str(val))
    if c.conv == "p":
        v = _as_int(val) & M64
        if c.pext in ("S", "s", "F", "f", "B") and symbols is not None:
            name = symbols(v)
            if name:
                return (spec + "s") % name
        return (spec + "s") % f"0x{v:x}"
    iv = _as_int(val)
    bits = 64 if c.length in ("l", "ll", "z", "j", "t", "L") else 32
    if c.length == "h":
        bits = 16
    elif c.length == "hh":
        bits = 8
    mask = (1 << bits) - 1
    if c.conv in ("d", "i"):
        iv &= mask
        if iv >> (bits - 1):
            iv -= 1 << bits
        return (spec + "d") % iv
    if c.conv == "c":
        return (spec + "c") % chr(iv & 0xFF)
    iv &= mask
    conv = "d" if c.conv == "u" else c.conv
    return (spec + conv) % iv


def bitmask_text(data: bytes) -> str:
    """A bitmask as the kernel prints it (%*pb, lib/vsprintf.c bitmap_string): 32-bit chunks in hex,
    zero-padded to their width, most significant first, comma separated (the bits: little-endian
    words); the top chunk holds what is left of the bits beyond whole chunks."""
    v = int.from_bytes(data, "little")
    bits = len(data) * 8
    chunks = max(1, (bits + 31) // 32)
    top = (bits % 32 or 32) // 4 if bits else 1
    return ",".join(f"{(v >> (32 * i)) & 0xFFFFFFFF:0{top if i == chunks - 1 else 8}x}"
                    for i in reversed(range(chunks)))


def _truthy(v: Any) -> bool:
    if isinstance(v, str | bytes):
        return True
    return bool(v)


def _eval(n: Node, rec: Mapping[str, Any]) -> Any:
    kind = n[0]
    if kind == "num":
        return n[1]
    if kind == "str":
        return n[1]
    if kind == "field":
        try:
            return rec[n[1]]
        except KeyError as e:
            raise UnsupportedFormat(f"print fmt reads unknown field {n[1]}") from e
    if kind == "tern":
        return _eval(n[2], rec) if _truthy(_eval(n[1], rec)) else _eval(n[3], rec)
    if kind == "bin":
        op = n[1]
        if op == "&&":
            return int(_truthy(_eval(n[2], rec)) and _truthy(_eval(n[3], rec)))
        if op == "||":
            return int(_truthy(_eval(n[2], rec)) or _truthy(_eval(n[3], rec)))
        a, b = _as_int(_eval(n[2], rec)), _as_int(_eval(n[3], rec))
        return _BIN_OPS[op](a, b)
    if kind == "un":
        v = _as_int(_eval(n[2], rec))
        if n[1] == "-":
            return -v
        if n[1] == "!":
            return int(not v)
        return ~v & M64
    if kind == "cast":
        v = _eval(n[3], rec)
        if isinstance(v, str | bytes):
            return v
        v = _as_int(v) & ((1 << n[1]) - 1)
        if n[2] and v >> (n[1] - 1):
            v -= 1 << n[1]
        return v
    if kind == "index":
        base = _eval(n[1], rec)
        return base[_as_int(_eval(n[2], rec))]
    if kind == "call":
        return _call(n[1], n[2], rec)
    raise UnsupportedFormat(f"cannot evaluate {kind}")


def const_eval(n: Node) -> Any:
    """The value of a node that reads no field (symbol table entries)."""
    return _eval(n, {})


def _div(a: int, b: int) -> int:
    if b == 0:
        raise UnsupportedFormat("division by zero in print fmt")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


_BIN_OPS: dict[str, Callable[[int, int], int]] = {
    "|": lambda a, b: a | b, "^": lambda a, b: a ^ b, "&": lambda a, b: a & b,
    "==": lambda a, b: int((a & M64) == (b & M64)), "!=": lambda a, b: int((a & M64) != (b & M64)),
    "<": lambda a, b: int(a < b), ">": lambda a, b: int(a > b), "<=": lambda a, b: int(a <= b),
    ">=": lambda a, b: int(a >= b), "<<": lambda a, b: (a << b) & M64, ">>": lambda a, b: (a & M64) >> b,
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": _div, "%": lambda a, b: a - _div(a, b) * b if b else 0,
}


class _UnknownIsZero(dict):
    """Symbol table keys name constants; an enum the kernel did not export (``VDSO_CLOCKMODE_TSC``:
    no TRACE_DEFINE_ENUM) reads as 0, as libtraceevent takes it."""

    def __missing__(self, key: str) -> int:
        return 0


_CONSTANTS = _UnknownIsZero()


def _symtable(items: list[Node], rec: Mapping[str, Any]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for it in items:
        if it[0] != "list":
            raise UnsupportedFormat("symbol table entry is not a { value, name } pair")
        pair = it[1]
        if len(pair) == 0:
            continue
        if len(pair) != 2:
            raise UnsupportedFormat("symbol table entry is not a pair")
        out.append((_as_int(_eval(pair[0], _CONSTANTS)) & M64, str(_eval(pair[1], rec))))
    return out


def _call(name: str, args: list[Node], rec: Mapping[str, Any]) -> Any:
    if name in ("__print_symbolic", "__print_symbolic64", "__print_symbolic_u64"):
        val = _as_int(_eval(args[0], rec)) & M64
        for v, s in _symtable(args[1:], rec):
            if v == val:
                return s
        return f"0x{val:x}"
    if name in ("__print_flags", "__print_flags_u64"):
        val = _as_int(_eval(args[0], rec)) & M64
        delim = str(_eval(args[1], rec))
        parts: list[str] = []
        # kernel trace_print_flags_seq(): walk the table while bits remain, then hex leftovers
        for v, s in _symtable(args[2:], rec):
            if not val:
                break
            if val & v == v:
                parts.append(s)
                val &= ~v
        if val:
            parts.append(f"0x{val:x}")
        return delim.join(parts)
    if name in ("__get_str", "__get_rel_str"):
        v = _eval(args[0], rec)
        return v if isinstance(v, str) else bytes(v).split(b"\0", 1)[0].decode("utf-8", "replace")
    if name in ("__get_dynamic_array", "__get_rel_dynamic_array"):
        return _eval(args[0], rec)
    if name in ("__get_dynamic_array_len", "__get_rel_dynamic_array_len"):
        return len(_eval(args[0], rec))
    if name in ("__get_bitmask", "__get_rel_bitmask", "__get_cpumask", "__get_rel_cpumask"):
        return bitmask_text(bytes(_eval(args[0], rec)))
    if name in ("__print_hex", "__print_hex_str"):
        buf = _eval(args[0], rec)
        n = _as_int(_eval(args[1], rec))
        data = bytes(buf)[:n] if isinstance(buf, bytes | bytearray) else b""
        sep = "" if name == "__print_hex_str" else " "
        return sep.join(f"{b:02x}" for b in data)
    if name == "__print_array":
        arr = _eval(args[0], rec)
        count = _as_int(_eval(args[1], rec))
        size = _as_int(_eval(args[2], rec))
        if isinstance(arr, list):  # a decoded integer array
            vals = [v & ((1 << (8 * size)) - 1) for v in arr[:count]]
        else:
            buf = bytes(arr)
            vals = [int.from_bytes(buf[i * size:(i + 1) * size], "little") for i in range(count)]
        return "{" + ",".join(f"0x{v:x}" for v in vals) + "}"
    raise UnsupportedFormat(f"print fmt calls {name}()")
