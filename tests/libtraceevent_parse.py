"""Print fmt arguments parsed as libtraceevent 1.8.2 parses them (src/event-parse.c: process_arg,
process_arg_token, process_op, process_paren, process_cond, process_array), to tell its operator
association bugs (tests/tracecmd_bugs.py) from ours: the trees it builds, evaluated by printeval with
libtraceevent's unsigned arithmetic (Env.trace_cmd), print what trace-cmd prints.

What differs from C (so from vpmutrace's own parser):
- the right operand of a binary operator is one item; when it is a parenthesised expression (or a
  unary operator) whose operator binds less tightly, the two are rotated as if the parentheses were
  not there: ``x * (y + 1)`` is ``(x * y) + 1``, ``f & (A | B | C)`` is ``(f & A) | B | C``;
- operators of equal priority group to the right: ``a - b - c`` is ``a - (b - c)``;
- the else operand of ``?:`` is one item, and what follows applies to the whole ``?:``:
  ``c ? a : b == 1 ? x : y`` is ``((c ? a : b) == 1) ? x : y``; an array index is one item.
"""

from __future__ import annotations

from typing import Any

from vpmutrace.errors import UnsupportedFormat
from vpmutrace.formats.printfmt import PrintFmt, _cast_bits, _cast_signed, _number, _tokenize, _unescape

_PRIO1 = {"~": 4, "!": 4, "*": 6, "/": 6, "%": 6, "+": 7, "-": 7, "<": 9, ">": 9, "&": 11, "^": 12, "|": 13,
          "?": 16}
_PRIO2 = {"++": 3, "--": 3, ">>": 8, "<<": 8, ">=": 9, "<=": 9, "==": 10, "!=": 10, "&&": 14, "||": 15}
_BINARY = {">>", "<<", "&", "|", "&&", "||", "-", "+", "*", "^", "/", "%", "<", ">", "<=", ">=", "==", "!="}
_DELIMS = {"(", ")", ","}


def op_prio(op: str) -> int:
    return (_PRIO1 if len(op) == 1 else _PRIO2).get(op, -1)


class _A:
    """A print arg (struct tep_print_arg), mutable as libtraceevent mutates them."""

    def __init__(self) -> None:
        self.type = "NULL"
        self.op = ""
        self.left: _A | None = None
        self.right: _A | None = None
        self.prio = 0
        self.atom: Any = None  # ("item", text) or ("str", text)
        self.args: list[Any] = []

    def copy_from(self, o: _A) -> None:
        self.__dict__.update(o.__dict__)


class _Tokens:
    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.toks, self.i = toks, 0

    def read(self) -> tuple[str, str]:
        t = self.toks[self.i] if self.i < len(self.toks) else ("eof", "")
        self.i += 1
        return t


def _is_op(tok: tuple[str, str]) -> bool:
    return tok[0] == "op" and tok[1] not in _DELIMS


def _arg_token(p: _Tokens, arg: _A, tok: tuple[str, str]) -> tuple[str, str]:
    kind, val = tok
    if kind == "id" and val == "REC":
        if p.read()[1] != "->":
            raise UnsupportedFormat("REC without ->")
        arg.type, arg.atom = "FIELD", p.read()[1]
        return p.read()
    if kind in ("id", "num"):
        nxt = p.read()
        if nxt[1] == "(" and kind == "id":
            return _function(p, arg, val)
        words = [val]
        while nxt[0] in ("id", "num"):
            words.append(nxt[1])
            nxt = p.read()
        arg.type, arg.atom = "ATOM", ("item", " ".join(words))
        return nxt
    if kind in ("str", "chr"):
        s = _unescape(val)
        nxt = p.read()
        while kind == "str" and nxt[0] == "str":
            s += _unescape(nxt[1])
            nxt = p.read()
        arg.type, arg.atom = "ATOM", ("str" if kind == "str" else "chr", s)
        return nxt
    if val == "(":
        return _paren(p, arg)
    if kind == "op":
        arg.type, arg.op, arg.left = "OP", val, None
        return _op(p, arg, tok)
    raise UnsupportedFormat(f"unexpected {val!r}")


def _arg(p: _Tokens, arg: _A) -> tuple[str, str]:
    return _arg_token(p, arg, p.read())


def _expr(p: _Tokens, arg: _A) -> tuple[str, str]:
    """process_arg, then process_op while an operator follows (a function argument, a top-level one)."""
    nxt = _arg(p, arg)
    while _is_op(nxt) and nxt[1] not in (":", "}", "]", "{"):
        nxt = _op(p, arg, nxt)
    return nxt


def _paren(p: _Tokens, arg: _A) -> tuple[str, str]:
    nxt = _arg(p, arg)
    if _is_op(nxt):
        nxt = _op(p, arg, nxt)
    if nxt[1] != ")":
        raise UnsupportedFormat("expected )")
    nxt = p.read()
    if nxt[0] in ("id", "num", "str", "chr") or nxt[1] == "(":  # a typecast
        if arg.type != "ATOM":
            raise UnsupportedFormat("typecast of a non-atom")
        item = _A()
        nxt = _arg_token(p, item, nxt)
        arg.type, arg.left = "TYPE", item
    return nxt


def _op(p: _Tokens, arg: _A, tok: tuple[str, str]) -> tuple[str, str]:
    op = tok[1]
    right: _A | None = None
    if arg.type == "OP" and arg.left is None and arg.op == op and arg.right is None:  # a single op
        if op not in ("~", "!", "+", "-"):
            raise UnsupportedFormat(f"bad op {op}")
        arg.left = _A()  # (TEP_PRINT_NULL)
        right = arg.right = _A()
        nxt = _arg(p, right)
    elif op == "?":
        left = _A()
        left.copy_from(arg)
        arg.__init__()
        arg.type, arg.op, arg.left, arg.prio = "OP", "?", left, 0
        nxt = _cond(p, arg)
    elif op in _BINARY:
        left = _A()
        left.copy_from(arg)
        arg.__init__()
        arg.type, arg.op, arg.left, arg.prio = "OP", op, left, op_prio(op)
        nxt = p.read()
        if op == "*" and nxt[1] == ")":  # a type pointer: "void *"
            if left.type != "ATOM":
                raise UnsupportedFormat("bad pointer type")
            left.atom = ("item", left.atom[1] + " *")
            arg.copy_from(left)
            return nxt
        right = _A()
        nxt = _arg_token(p, right, nxt)
        if right.type == "OP" and op_prio(op) < op_prio(right.op):  # rotate ops according to the priority
            arg.right = right.left
            tmp = _A()
            tmp.copy_from(arg)
            arg.copy_from(right)
            right.copy_from(tmp)
            arg.left = right
        else:
            arg.right = right
    elif op == "[":
        left = _A()
        left.copy_from(arg)
        arg.__init__()
        arg.type, arg.op, arg.left, arg.prio = "OP", "[", left, 0
        idx = _A()
        if _arg(p, idx)[1] != "]":
            raise UnsupportedFormat("array index is not one item")
        arg.right = idx
        nxt = p.read()
    else:
        raise UnsupportedFormat(f"unknown op {op}")
    if _is_op(nxt) and nxt[1] != ":":
        if op_prio(nxt[1]) > arg.prio:
            return _op(p, arg, nxt)
        if right is None:
            raise UnsupportedFormat(f"op {nxt[1]} after ?:")
        return _op(p, right, nxt)
    return nxt


def _cond(p: _Tokens, top: _A) -> tuple[str, str]:
    then, other = _A(), _A()
    nxt = _arg(p, then)
    while _is_op(nxt) and nxt[1] != ":":
        nxt = _op(p, then, nxt)
    if nxt[1] != ":":
        raise UnsupportedFormat("?: without :")
    colon = _A()
    colon.type, colon.op, colon.left, colon.right = "OP", ":", then, other
    nxt = _arg(p, other)
    top.right = colon
    return nxt


def _item(p: _Tokens, nxt: tuple[str, str]) -> tuple[_A, tuple[str, str]]:
    """One argument of a function or one member of a { } list, starting at token ``nxt``."""
    a = _A()
    nxt = _arg_token(p, a, nxt)
    while _is_op(nxt) and nxt[1] not in ("}", ":"):
        nxt = _op(p, a, nxt)
    return a, nxt


def _function(p: _Tokens, arg: _A, name: str) -> tuple[str, str]:
    args: list[Any] = []
    nxt = p.read()
    while nxt[1] != ")":
        if nxt[1] == "{":
            items: list[Any] = []
            nxt = p.read()
            while nxt[1] != "}":
                a, nxt = _item(p, nxt)
                items.append(a)
                if nxt[1] == ",":
                    nxt = p.read()
            args.append(("list", items))
            nxt = p.read()
        else:
            a, nxt = _item(p, nxt)
            args.append(a)
        if nxt[1] == ",":
            nxt = p.read()
        elif nxt[1] != ")":
            raise UnsupportedFormat(f"bad argument list of {name}")
    arg.type, arg.atom, arg.args = "FUNC", name, args
    return p.read()


def _node(a: Any) -> tuple:
    """A libtraceevent arg as a printeval node."""
    if isinstance(a, tuple):  # a { } list
        return ("list", [_node(x) for x in a[1]])
    if a is None or a.type == "NULL":
        return ("num", 0, (64, False))
    if a.type == "FIELD":
        return ("field", a.atom)
    if a.type == "ATOM":
        kind, text = a.atom
        if kind == "str":
            return ("str", text)
        if kind == "chr":
            return ("num", ord(text), (64, False))
        word = text.split()[0]
        if word[0].isdigit():
            try:
                return _number(word)
            except ValueError:
                return ("num", 0, (64, False))
        return ("field", text, "bare")
    if a.type == "TYPE":
        words = a.atom[1].replace("*", " * ").split()
        return ("cast", _cast_bits(words), _cast_signed(words) and "*" not in words, _node(a.left), "*" in words)
    if a.type == "FUNC":
        args = [_node(x) for x in a.args]
        if a.atom == "__builtin_expect":
            return args[0]
        if a.atom == "sizeof":
            raise UnsupportedFormat("sizeof")
        return ("call", a.atom, args)
    if a.op == "?":
        return ("tern", _node(a.left), _node(a.right.left), _node(a.right.right))
    if a.op == "[":
        return ("index", _node(a.left), _node(a.right))
    if a.left is not None and a.left.type == "NULL" and a.op in ("-", "!", "~", "+"):
        inner = _node(a.right)
        return inner if a.op == "+" else ("un", a.op, inner)
    return ("bin", a.op, _node(a.left), _node(a.right))


def trace_cmd_printfmt(pf: PrintFmt, print_fmt: str) -> PrintFmt:
    """``pf`` with its arguments parsed as libtraceevent parses them."""
    toks = _tokenize(print_fmt)
    p = _Tokens(toks)
    p.read()  # the format string
    while p.i < len(toks) and toks[p.i][0] == "str":
        p.read()
    args = []
    nxt = p.read()
    while nxt[1] == ",":
        a = _A()
        nxt = _expr(p, a)
        args.append(_node(a))
    return PrintFmt(pf.convs, pf.tail, args)


_CACHE: dict[int, tuple[Any, PrintFmt | None]] = {}


def trace_cmd_printer(fmt: Any) -> PrintFmt | None:
    """An event format's print fmt as libtraceevent parses it (ours where this emulation cannot)."""
    hit = _CACHE.get(id(fmt))
    if hit is None or hit[0] is not fmt:
        pf = fmt.printer
        if pf is not None:
            try:
                pf = trace_cmd_printfmt(pf, fmt.print_fmt)
            except (UnsupportedFormat, IndexError, AttributeError, TypeError):
                pass
        hit = _CACHE[id(fmt)] = (fmt, pf)
    return hit[1]


def reassociated(fmt: Any) -> bool:
    """Whether libtraceevent groups the print fmt's operators otherwise than C does."""
    pf = trace_cmd_printer(fmt)
    return pf is not None and fmt.printer is not None and pf.args != fmt.printer.args
