"""Grammars that give an event's printed text back its fields (text traces carry no binary data).

An event's body in ftrace text, ``trace-cmd report`` and ``perf script`` is its print fmt
applied to its fields. ``print_fmt_grammar`` turns a print fmt into one regex with a group per
argument and says, for each argument it can invert, which field the group gives back and how:

- ``REC->f`` (cast or not) printed with %d/%i/%u/%x/%p/%c/%s: the number (decimal or hex) or text;
- ``__get_str(f)`` / ``__get_rel_str(f)``: the string;
- ``__print_symbolic(REC->f, ...)``: the value whose name was printed (hex when unnamed);
- ``__print_flags(REC->f, "|", ...)``: the sum of the named flags (and any hex remainder);
- ``REC->f ? "a" : "b"`` (two literals): 1 or 0;
- ``__print_hex(REC->f, REC->n)``: the bytes, and n = their count;
- ``__print_array(__get_dynamic_array(f), ...)``: the list of numbers.

Other arguments (computed expressions) are matched but give nothing back: their fields stay
null and the reader counts them. ``plugin_grammars`` holds what trace-cmd's plugins print
instead of the print fmt for some events (libtraceevent plugin_sched_switch.c).
Conversion to typed columns is vectorised (polars).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vpmutrace.errors import UnsupportedFormat
from vpmutrace.formats.event_format import EventFormat
from vpmutrace.formats.printfmt import Conversion, Node, PrintFmt, const_eval

# how a group's text becomes a field value
INT, HEX, STR, SYMBOL, FLAGS, BOOL, HEXBYTES, ARRAY, COUNT = ("int", "hex", "str", "symbol", "flags", "bool",
                                                            "hexbytes", "array", "count")


@dataclass
class Group:
    field: str | None  # the field it gives back (None: matched only)
    kind: str = STR
    table: dict[str, int] = field(default_factory=dict)  # SYMBOL, FLAGS, BOOL: printed name -> value
    delim: str = ""  # FLAGS
    count_field: str | None = None  # HEXBYTES: the field that holds the byte count


@dataclass
class Grammar:
    pattern: str  # anchored regex; group i is named g<i>
    groups: list[Group]

    @property
    def fields(self) -> set[str]:
        return {g.field for g in self.groups if g.field} | {g.count_field for g in self.groups if g.count_field}


_INT_RE = {"d": r"-?\d+", "i": r"-?\d+", "u": r"\d+", "x": r"[0-9a-fA-F]+", "X": r"[0-9a-fA-F]+",
           "o": r"[0-7]+", "c": r".", "p": r"\S+"}


def _conv_regex(c: Conversion) -> str:
    pad = r"\s*" if c.width and not c.flags.startswith("-") else ""
    if c.conv in ("x", "X") and "#" in c.flags:
        return pad + r"(?:0[xX])?[0-9a-fA-F]+"
    return pad + _INT_RE[c.conv]


def _field_of(n: Node) -> str | None:
    """The field a plain reference names: REC->f, (cast)REC->f, f (inside __get_str)."""
    while n[0] == "cast":
        n = n[3]
    return n[1] if n[0] == "field" else None


def _table(items: list[Node]) -> dict[str, int] | None:
    out: dict[str, int] = {}
    for it in items:
        if it[0] != "list" or len(it[1]) != 2:
            if it[0] == "list" and not it[1]:
                continue
            return None
        try:
            v, s = const_eval(it[1][0]), const_eval(it[1][1])
        except (UnsupportedFormat, KeyError, TypeError, ValueError):
            return None
        if not isinstance(s, str):
            return None
        out.setdefault(s, int(v) & ((1 << 64) - 1))
    return out


def _alternation(names: list[str], extra: str = "") -> str:
    alts = [re.escape(s) for s in sorted(names, key=len, reverse=True)]
    return "(?:" + "|".join(alts + ([extra] if extra else [])) + ")"


def _arg(c: Conversion, n: Node) -> tuple[str, Group]:
    """Regex and group of one argument."""
    if n[0] == "call":
        name, args = n[1], n[2]
        if name in ("__get_str", "__get_rel_str") and c.conv == "s":
            return r".*?", Group(_field_of(args[0]), STR)
        if name.startswith("__print_symbolic") and c.conv == "s":
            table = _table(args[1:])
            f = _field_of(args[0])
            if table is not None and f:
                return _alternation(list(table), r"0x[0-9a-fA-F]+"), Group(f, SYMBOL, table)
        if name.startswith("__print_flags") and c.conv == "s":
            table = _table(args[2:])
            f = _field_of(args[0])
            if table is not None and f and args[1][0] == "str":
                return r".*?", Group(f, FLAGS, table, delim=args[1][1])
        if name in ("__print_hex", "__print_hex_str") and c.conv == "s":
            f, count = _field_of(args[0]), _field_of(args[1])
            sep = " " if name == "__print_hex" else ""
            return rf"(?:[0-9a-fA-F]{{2}}(?:{sep}[0-9a-fA-F]{{2}})*)?", Group(f, HEXBYTES, count_field=count)
        if name == "__print_array" and c.conv == "s" and args[0][0] == "call" and \
                args[0][1] in ("__get_dynamic_array", "__get_rel_dynamic_array"):
            return r"\{[^{}]*\}", Group(_field_of(args[0][2][0]), ARRAY)
        return r".*?", Group(None)
    if n[0] == "tern" and c.conv == "s" and n[2][0] == "str" and n[3][0] == "str" and n[2][1] != n[3][1]:
        cond, neg = n[1], False
        while cond[0] == "un" and cond[1] == "!":
            cond, neg = cond[2], not neg
        f = _field_of(cond)
        if f:
            yes, no = (n[3][1], n[2][1]) if neg else (n[2][1], n[3][1])
            return _alternation([yes, no]), Group(f, BOOL, {yes: 1, no: 0})
        return _alternation([n[2][1], n[3][1]]), Group(None)
    f = _field_of(n)
    if c.conv == "s":
        return r".*?", Group(f, STR)
    if c.conv == "p" and c.pext:
        return r"\S+", Group(None)
    if f is None:
        return _conv_regex(c), Group(None)
    hexy = c.conv in ("x", "X", "p", "o")
    return _conv_regex(c), Group(f, HEX if hexy else INT)


def print_fmt_grammar(fmt: EventFormat) -> Grammar | None:
    """The grammar of an event's print fmt output, or None when the print fmt does not parse."""
    p: PrintFmt | None = fmt.printer
    if p is None:
        return None
    parts: list[str] = ["^"]
    groups: list[Group] = []
    k = 0
    for c in p.convs:
        if c.conv == "%":
            parts.append(re.escape(c.literal) + "%")
            continue
        if c.width == "*" or c.prec == "*":
            return None  # widths taken from arguments: no fixed grammar
        regex, g = _arg(c, p.args[k])
        k += 1
        lit = re.escape(c.literal)
        if regex.startswith(".*?") and c.literal.endswith(" "):  # "x %s" with %s empty: "x" (stripped)
            lit = re.escape(c.literal.rstrip(" ")) + " *"
        parts.append(lit + f"(?P<g{len(groups)}>{regex})")
        groups.append(g)
    parts.append(re.escape(p.tail.rstrip()) + r"\s*$")
    return Grammar("".join(parts), groups)


# what trace-cmd's plugins print for some events instead of their print fmt
_WAKEUP = Grammar(r"^(?P<g0>.*?):(?P<g1>-?\d+) \[(?P<g2>-?\d+)\](?: success=(?P<g3>\d+))? CPU:(?P<g4>\d+)\s*$",
                  [Group("comm", STR), Group("pid", INT), Group("prio", INT), Group("success", INT),
                   Group("target_cpu", INT)])
# libtraceevent plugin_hrtimer.c: "hrtimer=0x%llx now=%llu function=%s" / "hrtimer=0x%llx function=%s
# expires=%llu softexpires=%llu" (the function as a symbol, or its address when unresolved)
_HRT_EXPIRE = Grammar(r"^hrtimer=(?P<g0>0x[0-9a-fA-F]+) now=(?P<g1>-?\d+)(?: function=\S+)?\s*$",
                      [Group("hrtimer", HEX), Group("now", INT)])
_HRT_START = Grammar(r"^hrtimer=(?P<g0>0x[0-9a-fA-F]+)(?: function=\S+)? expires=(?P<g1>\d+) "
                     r"softexpires=(?P<g2>\d+)\s*$", [Group("hrtimer", HEX), Group("expires", INT),
                                                      Group("softexpires", INT)])
PLUGIN_GRAMMARS: dict[str, list[Grammar]] = {
    "sched:sched_wakeup": [_WAKEUP], "sched:sched_wakeup_new": [_WAKEUP], "sched:sched_waking": [_WAKEUP],
    "timer:hrtimer_expire_entry": [_HRT_EXPIRE], "timer:hrtimer_start": [_HRT_START],
}

KEY_VALUE = re.compile(r"^(?:\w+=\S*)(?: \w+=\S*)*\s*$")
