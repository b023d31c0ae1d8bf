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

from libtraceevent_parse import reassociated

from vpmutrace.formats.event_format import EventFormat
from vpmutrace.formats.printeval import BUILTIN_KEYS


@dataclass(frozen=True)
class Bug:
    key: str
    trace_cmd_prints: str
    why: str
    applies: Callable[[EventFormat], bool]  # the event's format has the construct
    explains: Callable[[EventFormat, str, str], bool]  # (format, our body, trace-cmd's body)


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


def _emulated(fmt: EventFormat, ours: str, theirs: str) -> bool:
    """Explained by printing with libtraceevent's arithmetic (printeval.Env.trace_cmd): see explain()."""
    return False


def _no_length_arrays(fmt: EventFormat) -> bool:
    return any(re.search(rf"field:(?!.*\b(?:char|u8|s8|long)\b)[^;]*\b{re.escape(f.name)}\[\];", fmt.text)
               for f in fmt.fields if f.size > 0)


def _zero_elements(fmt: EventFormat, ours: str, theirs: str) -> bool:
    pairs = _numbers(ours, theirs)
    return bool(pairs) and all(y == 0 for _, y in pairs)


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
    Bug("zero-flags-print-a-name", "writeback_*: state=I_DIRTY_SYNC for a state of 0",
        "print_str_arg() (TEP_PRINT_FLAGS) prints, for a value of 0, the first flag whose key eval_flag() "
        "cannot resolve (if (!val && fval < 0)): an enum the kernel did not export is not 0. The kernel's "
        "trace_print_flags_seq() prints nothing for 0.",
        lambda f: bool(_first_unknown_flags(f)), _zero_flags_explained),
    Bug("unsigned-evaluation", "kvm_userspace_exit: reason KVM_EXIT_INTR (10) for a KVM_RUN that returned "
                               "-EINTR (the kernel: restart (4)); a negative s8/s16 under %d as 128..; (late) for "
                               "a negative kvm_wait_lapic_expire delta whose format says early",
        "eval_num_arg() reads every field with tep_read_number() (zero-extended, whatever its signed:1) and "
        "computes in unsigned 64 bits, and eval_type() only masks on casts: REC->errno < 0 and REC->delta < 0 "
        "are never true, -128 in an s8 prints as 128, signed division and shifts are unsigned. The kernel's "
        "print fmt is C with the fields' types.",
        lambda f: any(x.signed for x in f.fields), _emulated),
    Bug("operator-association", "timer_start: flags=D|P|I where the masked flags are I or none; "
                                "kvm_nested_vmenter: nested_cr3 where the kernel prints guest_cr3",
        "process_op() takes the right operand of a binary operator as one item and rotates it with the "
        "operator when that item is a parenthesised expression binding less tightly: REC->flags & (A | B | C "
        "| D) is (REC->flags & A) | B | C | D, x * (y + 1) is (x * y) + 1; operators of equal priority group "
        "to the right (a - b - c is a - (b - c)); process_cond() takes the else operand of ?: as one item, "
        "so c ? a : b == 1 ? x : y is ((c ? a : b) == 1) ? x : y. C groups them as written "
        "(tests/libtraceevent_parse.py builds libtraceevent's trees).",
        reassociated, _emulated),
    Bug("array-without-length", "0 for every element of a field declared type name[] with a size",
        "event_read_fields() gives an array field without a length (probe events' s16 temps[]; size 8) an "
        "element size of 0 unless its type is char/u8/s8 or long, so REC->temps[i] reads 0 bytes. The "
        "kernel (and vpmutrace) take the element size from the type.",
        _no_length_arrays, _zero_elements),
    Bug("key-operator", "[FAILED TO PARSE] and the raw fields",
        "arg_num_eval() computes a symbol or flag table key with | & << >> comparisons + - ~ only: a key such "
        "as { 2 * 3, \"six\" } fails the whole print fmt. The kernel's C computes it.",
        _key_with_operator, _failed),
]


EMULATED = ("unsigned-evaluation", "operator-association")


def explain(fmt: EventFormat | None, ours: str, theirs: str, ours_as_trace_cmd: str | None = None) -> Bug | None:
    """The documented bug that explains why trace-cmd prints ``theirs`` where we print ``ours``;
    ``ours_as_trace_cmd``: our text printed with libtraceevent's arithmetic (the bugs in EMULATED)."""
    if fmt is None:
        return None
    bugs = [b for b in BUGS if b.applies(fmt)]
    one = next((b for b in bugs if b.explains(fmt, ours, theirs)), None)
    if one is not None or ours_as_trace_cmd is None:
        return one
    emulated = [b for b in bugs if b.key in EMULATED]
    if emulated and ours_as_trace_cmd != ours:
        if ours_as_trace_cmd == theirs:
            return emulated[0]
        return next((b for b in bugs if b.key not in EMULATED and b.explains(fmt, ours_as_trace_cmd, theirs)),
                    None)  # (another bug on top)
    return None
