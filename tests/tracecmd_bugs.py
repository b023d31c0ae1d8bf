"""Where trace-cmd 3.2 (libtraceevent 1.8.2) prints an event wrongly, and vpmutrace prints what the
kernel prints instead: the only differences tests/test_exact_text.py accepts between ``vpmutrace
show`` and ``trace-cmd report -N`` (and ``perf script``, whose libtraceevent shares them).

Each bug says what trace-cmd prints, why it is wrong (the libtraceevent function, src/event-parse.c
of libtraceevent 1.8.2; each was reproduced by feeding libtraceevent the format and record), how
to recognise a format it affects (so that files from other hosts are judged the same way), and
which differences between the two lines it explains. Where the capture holds the kernel's own text
of the same records, test_exact_text checks that vpmutrace's text is the kernel's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from vpmutrace.formats.event_format import EventFormat
from vpmutrace.formats.printeval import BUILTIN_KEYS


@dataclass(frozen=True)
class Bug:
    key: str
    trace_cmd_prints: str
    why: str
    applies: Callable[[EventFormat], bool]  # the event's format has the construct
    explains: Callable[[EventFormat, str, str], bool]  # (format, our body, trace-cmd's body)
    number: Callable[[int, int], bool] | None = None  # (ours, theirs) of one number it changes


def _failed(fmt: EventFormat, ours: str, theirs: str) -> bool:
    return theirs.startswith("[FAILED TO PARSE]") and not ours.startswith("[FAILED TO PARSE]")


def _fmt_string(fmt: EventFormat) -> str:
    m = re.match(r'\s*"((?:[^"\\]|\\.)*)"', fmt.print_fmt, re.S)
    return m.group(1) if m else ""


def _flag_tables(fmt: EventFormat) -> list[list[tuple[str, str]]]:
    """The (key, name) entries of each __print_flags table of the print fmt."""
    out = []
    for m in re.finditer(r"__print_flags\(", fmt.print_fmt):
        depth, i = 1, m.end()
        while i < len(fmt.print_fmt) and depth:
            depth += {"(": 1, ")": -1}.get(fmt.print_fmt[i], 0)
            i += 1
        out.append(re.findall(r"\{\s*([^{},]+?)\s*,\s*\"([^\"]*)\"\s*\}", fmt.print_fmt[m.end():i]))
    return out


def _first_unknown_flags(fmt: EventFormat) -> list[str]:
    """Per __print_flags table, the name of its first flag whose key libtraceevent cannot resolve."""
    out = []
    for table in _flag_tables(fmt):
        for key, name in table:
            if re.fullmatch(r"[A-Za-z_]\w*", key) and key not in BUILTIN_KEYS:
                out.append(name)
                break
    return out


def _zero_flags_explained(fmt: EventFormat, ours: str, theirs: str) -> bool:
    """``theirs`` is ``ours`` with such a name printed where ours prints nothing (a zero value)."""
    names = _first_unknown_flags(fmt)
    while ours != theirs:
        i = next((k for k, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
        hit = next((n for n in names if theirs.startswith(n, i)), None)
        if hit is None:
            return False
        theirs = theirs[:i] + theirs[i + len(hit):]
    return True


_NUMBER = re.compile(r"(-?\b(?:[0-9a-fA-F]*[0-9][0-9a-fA-F]*|[0-9a-fA-F]{4,})\b)")


def _numbers(ours: str, theirs: str) -> list[tuple[int, int]] | None:
    """The pairs of numbers where two texts differ, if they differ in numbers only (both read in hex when
    either holds a-f, else in decimal)."""
    a, b = _NUMBER.split(ours), _NUMBER.split(theirs)
    if len(a) != len(b) or any(x != y for x, y in zip(a[0::2], b[0::2], strict=True)):
        return None
    out = []
    for x, y in zip(a[1::2], b[1::2], strict=True):
        if x != y:
            base = 10 if re.fullmatch(r"-?\d+", x) and re.fullmatch(r"-?\d+", y) else 16
            out.append((int(x, base), int(y, base)))
    return out


def _unsigned_number(x: int, y: int) -> bool:
    """``y`` is what unsigned evaluation makes of ``x``: its low bits zero-extended, a negative value
    computed on unsigned, or a comparison of a negative value turned around."""
    return x < 0 <= y or any(y == x % (1 << bits) for bits in (8, 16, 32)) or {x, y} == {0, 1}


def _unsigned(fmt: EventFormat, ours: str, theirs: str) -> bool:
    ours = ours.replace("(early)", "(late)")  # (x < 0 ? "early" : "late")
    pairs = _numbers(ours, theirs)
    return pairs is not None and all(_unsigned_number(x, y) for x, y in pairs)


def _no_length_arrays(fmt: EventFormat) -> bool:
    return any(re.search(rf"field:(?!.*\b(?:char|u8|s8|long)\b)[^;]*\b{re.escape(f.name)}\[\];", fmt.text)
               for f in fmt.fields if f.size > 0)


def _zero_elements(fmt: EventFormat, ours: str, theirs: str) -> bool:
    pairs = _numbers(ours, theirs)
    return bool(pairs) and all(y == 0 for _, y in pairs)


def _masked_or_token(fmt: EventFormat, ours: str, theirs: str) -> bool:
    """The texts differ only in flag words (names joined by |, after the same ``name=`` if any)."""
    a, b = ours.split(" "), theirs.split(" ")
    if len(a) != len(b):
        return False
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    flag = re.compile(r"(\w+=)?[\w|]*")
    def key(t: str) -> str:
        return t.partition("=")[0] if "=" in t else ""

    return bool(diff) and all(flag.fullmatch(x) and flag.fullmatch(y) and key(x) == key(y) for x, y in diff)


def _key_with_operator(fmt: EventFormat) -> bool:
    """A __print_symbolic/__print_flags key that is an expression with * / % ^ ?: or a unary !."""
    return re.search(r"\{\s*[^{}\",]*(?:[*/%^?]|!(?!=))[^{}\",]*,\s*\"", fmt.print_fmt) is not None


BUGS = [
    Bug("empty-symbol-table", "[FAILED TO PARSE] and the raw fields",
        "process_fields() wants a { value, \"name\" } pair after each '{': the empty table of "
        "__print_symbolic(x, { }) (kvm_inj_exception's error code, Linux 6.x) fails the whole print fmt. "
        "The kernel's trace_print_symbols_seq() prints the value in hex, as vpmutrace does.",
        lambda f: re.search(r",\s*\{\s*\}\s*\)", f.print_fmt) is not None, _failed),
    Bug("non-printable-in-format", "[FAILED TO PARSE] and the raw fields",
        "__read_token() ends a quoted string at the first character that is not isprint(): the TAB in "
        "maple_tree's \"%s\\tNode: ...\" (ma_op, ma_read, ma_write) cuts the format string, and the print "
        "fmt does not parse. The kernel prints the TAB.",
        lambda f: any(not (c.isprintable() or c == " ") for c in _fmt_string(f)), _failed),
    Bug("and-of-parenthesised-or", "timer_start: flags=D|P|I where the masked flags are I or none",
        "libtraceevent evaluates REC->flags & (A | B | C | D) as (REC->flags & A) | B | C | D (the "
        "parenthesised right operand of '&' is not kept as one node by process_paren()/process_op()), so "
        "__print_flags() sees B|C|D set on every row. The kernel computes the mask.",
        lambda f: re.search(r"&\s*\((?:\s*\w+\s*\|)+", f.print_fmt) is not None, _masked_or_token),
    Bug("zero-flags-print-a-name", "writeback_*: state=I_DIRTY_SYNC for a state of 0",
        "print_str_arg() (TEP_PRINT_FLAGS) prints, for a value of 0, the first flag whose key eval_flag() "
        "cannot resolve (if (!val && fval < 0)): an enum the kernel did not export is not 0. The kernel's "
        "trace_print_flags_seq() prints nothing for 0.",
        lambda f: bool(_first_unknown_flags(f)), _zero_flags_explained),
    Bug("unsigned-evaluation", "a negative s8/s16 field under %d as 128.., (late) for a negative delta "
                               "whose format says early",
        "eval_num_arg() reads every field with tep_read_number() (zero-extended) and computes in unsigned "
        "64 bits: -128 in an s8 prints as 128, REC->delta < 0 is never true (kvm_wait_lapic_expire prints "
        "(late) for an early expiry), signed division and shifts are unsigned. The kernel's print fmt is C "
        "with the fields' types.",
        lambda f: any(x.signed and x.size < 8 for x in f.fields) or "< 0" in f.print_fmt, _unsigned,
        _unsigned_number),
    Bug("array-without-length", "0 for every element of a field declared type name[] with a size",
        "event_read_fields() gives an array field without a length (probe events' s16 temps[]; size 8) an "
        "element size of 0 unless its type is char/u8/s8 or long, so REC->temps[i] reads 0 bytes. The "
        "kernel (and vpmutrace) take the element size from the type.",
        _no_length_arrays, _zero_elements, lambda x, y: y == 0),
    Bug("key-operator", "[FAILED TO PARSE] and the raw fields",
        "arg_num_eval() computes a symbol or flag table key with | & << >> comparisons + - ~ only: a key such "
        "as { 2 * 3, \"six\" } fails the whole print fmt. The kernel's C computes it.",
        _key_with_operator, _failed),
]


def explain(fmt: EventFormat | None, ours: str, theirs: str) -> Bug | None:
    """The documented bug that explains why trace-cmd prints ``theirs`` where we print ``ours``."""
    if fmt is None:
        return None
    bugs = [b for b in BUGS if b.applies(fmt)]
    one = next((b for b in bugs if b.explains(fmt, ours, theirs)), None)
    if one is not None:
        return one
    pairs = _numbers(ours, theirs)  # numbers changed by several bugs at once: each by one of them
    numeric = [b for b in bugs if b.number is not None]
    if pairs and numeric and all(any(b.number(x, y) for b in numeric) for x, y in pairs):  # type: ignore[misc]
        return next(b for b in numeric if any(b.number(x, y) for x, y in pairs))  # type: ignore[misc]
    return None
