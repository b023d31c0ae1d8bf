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
from vpmutrace.formats.cprint import length_bits, pointer_ext_length

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
    "__get_sockaddr", "__get_sockaddr_rel",
}
_TAG_WORDS = {"struct", "union", "enum"}

_BINARY_PREC = {
    "||": 1, "&&": 2, "|": 3, "^": 4, "&": 5, "==": 6, "!=": 6,
    "<": 7, ">": 7, "<=": 7, ">=": 7, "<<": 8, ">>": 8, "+": 9, "-": 9, "*": 10, "/": 10, "%": 10,
}

Node = tuple  # ("num", v, (bits, signed)) ("str", s) ("field", name) ("un", op, n) ("bin", op, l, r) ("index", base, i)
#              ("tern", c, a, b) ("call", name, args) ("list", items) ("cast", bits, signed, n, pointer)
# ("field", name) is REC->name, or a bare name: a field inside __get_str(name) and friends, else a
# constant the format does not define (an enum, a kernel variable: printeval resolves it)


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
    def __init__(self, toks: list[tuple[str, str]], sizes: Mapping[str, int] | None = None) -> None:
        self.toks = toks
        self.i = 0
        self.sizes = sizes

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
        """``(type words [*...])`` before an operand: type words we know, a struct/union/enum tag, or
        any words followed by an operand (libtraceevent's process_paren takes ``(item) item`` and
        ``(item) (`` as typecasts)."""
        if self.peek()[1] != "(":
            return False
        j = 1
        words: list[str] = []
        while True:
            kind, val = self.peek(j)
            if kind == "id" and val != "REC":
                words.append(val)
            elif val == "*" and words:
                pass
            elif val == ")" and words:
                break
            else:
                return False
            j += 1
        if all(w in _TYPE_WORDS or w.endswith("_t") for w in words) or words[0] in _TAG_WORDS:
            return True
        kind, val = self.peek(j + 1)
        return kind in ("id", "num", "str", "chr") or val == "("

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
            ptr = "*" in words
            return ("cast", _cast_bits(words), _cast_signed(words) and not ptr, operand, ptr)
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
            return _number(val)
        if kind == "chr":
            return ("num", ord(_unescape(val)), (32, True))
        if kind == "str":
            s = _unescape(val)
            while self.peek()[0] == "str":
                s += _unescape(self.next()[1])
            return ("str", s)
        if kind == "id":
            if val == "REC":
                return ("id", "REC")
            if val == "sizeof" and self.peek()[1] == "(":
                return ("num", self.size_of(), (64, False))
            if self.peek()[1] == "(":
                if val not in _FUNCS and val != "__builtin_expect":
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
                if val == "__builtin_expect":  # (cond, hint): the condition
                    if not args:
                        raise UnsupportedFormat("__builtin_expect() without arguments")
                    return args[0]
                return ("call", val, args)
            # a bare name: the field argument of __get_str(name) and friends, or a constant
            return ("field", val, "bare")
        if val == "(":
            node = self.expr()
            self.expect(")")
            return node
        raise UnsupportedFormat(f"unexpected {val!r} in print fmt")

    def size_of(self) -> int:
        """``sizeof(int)``, ``sizeof(long)``, ``sizeof(long long)``, ``sizeof(unsigned ...)`` or
        ``sizeof(REC->f)`` of a non-array field (what libtraceevent's process_sizeof takes)."""
        self.expect("(")
        words = []
        while self.peek()[1] not in (")", "eof", ""):
            words.append(self.next()[1])
        self.expect(")")
        if words[:2] == ["REC", "->"] and len(words) == 3 and self.sizes is not None and words[2] in self.sizes:
            size = self.sizes[words[2]]
            if size > 0:
                return size
        if words == ["long", "long"] or words in (["long"], ["unsigned", "long"]):
            return 8
        if words and words[0] in ("int", "unsigned"):
            return 4
        raise UnsupportedFormat(f"sizeof({' '.join(words)})")

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


def _number(text: str) -> Node:
    """An integer literal with its C type (bits, signed): decimal int, long; octal and hex also
    unsigned int, unsigned long; a U suffix unsigned, an L suffix at least long."""
    digits = text.rstrip("uUlL")
    suffix = text[len(digits):].lower()
    base = 16 if digits[:2].lower() == "0x" else 8 if len(digits) > 1 and digits[0] == "0" else 10
    v = int(digits, base)
    unsigned = "u" in suffix
    kinds = [(32, False), (64, False)] if unsigned else [(32, True), (64, True)] if base == 10 else \
        [(32, True), (32, False), (64, True), (64, False)]
    if "l" in suffix:
        kinds = [k for k in kinds if k[0] == 64]
    for bits, signed in kinds:
        if v < 1 << (bits - 1 if signed else bits):
            return ("num", v, (bits, signed))
    return ("num", v & M64, (64, False))


_CAST_BITS = {"char": 8, "bool": 8, "_Bool": 8, "short": 16, "int": 32, "long": 64, "u8": 8, "s8": 8, "u16": 16,
              "s16": 16, "u32": 32, "s32": 32, "u64": 64, "s64": 64, "size_t": 64, "ssize_t": 64, "pid_t": 32,
              "gfp_t": 32, "dev_t": 32, "loff_t": 64, "unsigned": 32, "signed": 32}


def _cast_bits(words: list[str]) -> int | None:
    """Bits of a cast's C type; None for a type we do not know (the value is left as it is)."""
    if "*" in words:
        return 64
    names = [w.removeprefix("__") for w in words if w not in ("const", "volatile")]
    for w in reversed(names):
        m = re.fullmatch(r"u?int(8|16|32|64)_t", w)
        if m:
            return int(m.group(1))
        if w in _CAST_BITS:
            return _CAST_BITS[w]
    return None


def _cast_signed(words: list[str]) -> bool:
    w = " ".join(words)
    if "unsigned" in w or re.search(r"\bu(8|16|32|64)\b|__u|uint|size_t|bool", w):
        return False
    return True


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

    @property
    def bits(self) -> int:
        """Width of the C type libtraceevent casts the value to (print_arg_number's ``ls``)."""
        return length_bits(self.length)


_SPEC_CHARS = set("#hlLzZ.0123456789-+*")


def _length(spec: str) -> str:
    """The length modifier as libtraceevent counts it (parse_arg_format: each h -1, each l +1,
    L = 2, z/Z = 1)."""
    ls = 0
    for ch in spec:
        if ch == "h":
            ls -= 1
        elif ch == "l":
            ls += 1
        elif ch == "L":
            ls = 2
        elif ch in "zZ":
            ls = 1
    if not -2 <= ls <= 2:
        raise UnsupportedFormat(f"bad length modifier in %{spec}")
    return {-2: "hh", -1: "h", 0: "", 1: "l", 2: "ll"}[ls]


def _width_prec(spec: str) -> tuple[str, str | None, str | None]:
    """(flags, width, precision) of the characters between % and the conversion letter."""
    body = "".join(ch for ch in spec if ch not in "hlLzZ")
    m = re.fullmatch(r"([-+#0]*)(\d+|\*)?(?:\.(\*|\d*))?.*", body)
    assert m is not None
    prec = m.group(3)
    return m.group(1), m.group(2), (prec or "0") if prec is not None else None


def parse_conversions(fmt: str) -> tuple[list[Conversion], str]:
    """The conversions of a print fmt string, as libtraceevent splits it (parse_args): ``%%`` is a
    literal %, a conversion is ``%`` then any of ``#hlLzZ.0-9-+*`` then one of ``cdiuxXosp``
    (``p`` followed by the extension letters parse_arg_format_pointer takes); any other letter
    after the ``%`` prints as ``>letter<``."""
    convs: list[Conversion] = []
    lit: list[str] = []
    i, n = 0, len(fmt)
    while i < n:
        ch = fmt[i]
        if ch != "%":
            lit.append(ch)
            i += 1
            continue
        if fmt[i + 1:i + 2] == "%":
            lit.append("%")
            i += 2
            continue
        j = i + 1
        while j < n and fmt[j] in _SPEC_CHARS:
            j += 1
        if j >= n:
            break  # a lone % at the end prints nothing
        conv = fmt[j]
        spec = fmt[i + 1:j]
        if conv not in "cdiuxXosp":
            lit.append(f">{conv}<")
            i = j + 1
            continue
        if spec.count("*") > 1:
            raise UnsupportedFormat(f"two '*' in %{spec}{conv}")
        flags, width, prec = _width_prec(spec)
        pext = ""
        if conv == "p":
            pext = fmt[j + 1:j + 1 + pointer_ext_length(fmt[j + 1:j + 8])]
        end = j + 1 + len(pext)
        convs.append(Conversion("".join(lit), fmt[i:end], flags, width, prec, _length(spec), conv, pext))
        lit = []
        i = end
    return convs, "".join(lit)


@dataclass
class PrintFmt:
    convs: list[Conversion]
    tail: str
    args: list[Node]

    @classmethod
    def parse(cls, text: str, sizes: Mapping[str, int] | None = None) -> PrintFmt:
        """Parse a print fmt; ``sizes`` (field name -> size) resolves ``sizeof(REC->f)``."""
        toks = _tokenize(text)
        if not toks or toks[0][0] != "str":
            raise UnsupportedFormat("print fmt does not start with a string")
        p = _Parser(toks, sizes)
        fmt_node = p.primary()
        fmt = fmt_node[1]
        args: list[Node] = []
        while p.peek()[0] != "eof":
            p.expect(",")
            args.append(p.brace_or_expr())
        convs, tail = parse_conversions(fmt)
        n_args = sum(1 + (c.width == "*") + (c.prec == "*") for c in convs)
        if n_args > len(args):
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
            k += (c.width == "*") + (c.prec == "*")
            if c.conv == conv and c.literal.endswith(literal_suffix):
                return k
            k += 1
        return None

    def eval_arg(self, k: int, rec: Mapping[str, Any], symbols: Callable[[int], str] | None = None) -> Any:
        from vpmutrace.formats.printeval import Env, value

        return value(self.args[k], rec, Env.of(symbols))

    def render(self, rec: Mapping[str, Any], symbols: Callable[[int], str | None] | None = None,
               given: Mapping[int, str] | None = None, env: Any = None) -> str:
        """The printed text, as trace-cmd prints it (formats/printeval.py); ``given`` holds the text
        of arguments already known (names a text trace printed, whose raw fields it does not carry).
        ``env``: the trace's symbols, printk strings and field layouts (printeval.Env)."""
        from vpmutrace.formats.printeval import Env, render

        return render(self, rec, env if env is not None else Env.of(symbols), given)


def const_eval(n: Node) -> Any:
    """The value of a node that reads no field (symbol table entries, with C's arithmetic); a name the
    format does not define has no known value (UnsupportedFormat)."""
    kind = n[0]
    if kind in ("num", "str"):
        return n[1]
    if kind == "field":
        raise UnsupportedFormat(f"{n[1]} has no value in the format")
    if kind == "cast":
        v = const_eval(n[3])
        return v if isinstance(v, str) else c_cast(_int(v), n[1], n[2])
    if kind == "un":
        v = _int(const_eval(n[2]))
        return -v if n[1] == "-" else int(not v) if n[1] == "!" else ~v & M64
    if kind == "bin":
        return binary_op(n[1], _int(const_eval(n[2])), _int(const_eval(n[3])))
    if kind == "tern":
        return const_eval(n[2]) if const_eval(n[1]) else const_eval(n[3])
    raise UnsupportedFormat(f"cannot evaluate {kind} as a constant")


def _int(v: Any) -> int:
    if isinstance(v, str):
        raise UnsupportedFormat("string used as a number")
    return int(v)


def c_cast(v: int, bits: int | None, signed: bool) -> int:
    """``v`` converted to a C integer type of ``bits`` (None: a type we do not know, left as is)."""
    if bits is None:
        return v
    v &= (1 << bits) - 1
    if signed and v >> (bits - 1):
        v -= 1 << bits
    return v


def _div(a: int, b: int) -> int:
    if b == 0:
        raise UnsupportedFormat("division by zero in print fmt")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


_BIN_OPS: dict[str, Callable[[int, int], int]] = {
    "|": lambda a, b: a | b, "^": lambda a, b: a ^ b, "&": lambda a, b: a & b,
    "==": lambda a, b: int((a & M64) == (b & M64)), "!=": lambda a, b: int((a & M64) != (b & M64)),
    "<": lambda a, b: int(a < b), ">": lambda a, b: int(a > b), "<=": lambda a, b: int(a <= b),
    ">=": lambda a, b: int(a >= b), "<<": lambda a, b: (a << b) & M64, ">>": lambda a, b: (a & M64) >> b
    if a >= 0 or b >= 64 else a >> b,
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": _div, "%": lambda a, b: a - _div(a, b) * b,
    "&&": lambda a, b: int(bool(a) and bool(b)), "||": lambda a, b: int(bool(a) or bool(b)),
}


def binary_op(op: str, a: int, b: int) -> int:
    """A C binary operator on integers that carry their C value (signed ones negative)."""
    return _BIN_OPS[op](a, b)
