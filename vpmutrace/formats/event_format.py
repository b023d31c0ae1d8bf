"""Parse tracefs event ``format`` descriptions (events/<system>/<event>/format).

The format text is the only authority on an event's binary layout: readers of
perf.data and trace.dat take it from the file (HEADER_TRACING_DATA, trace.dat's
event-format section), never from a table of ours.

Grammar (kernel/trace/trace_events.c, f_show):
    name: <name>
    ID: <id>
    format:
    \\tfield:<c declaration>;\\toffset:<n>;\\tsize:<n>;\\tsigned:<0|1>;
    ...
    print fmt: <C string>, <args>
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from vpmutrace.errors import BadFormat, UnsupportedFormat

_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"(?:\s*signed:(?P<signed>-?\d+);)?"
)
_ARRAY_RE = re.compile(r"^(?P<base>.*?)\s*(?P<name>\w+)\s*\[(?P<len>[^\]]*)\]\s*$")
_NAME_RE = re.compile(r"^(?P<base>.*?)[\s\*]*?(?P<name>\w+)\s*$")


# how a field's bytes become a column (formats/decode.py)
SCALAR = "scalar"  # 1, 2, 4 or 8 bytes: an integer (bool for bool fields)
CHARS = "chars"  # char array, fixed or dynamic: a string up to its first NUL
BYTES = "bytes"  # 1-byte elements that are not chars (u8 insn[15], u8[]), or a field of another size: binary
ARRAY = "array"  # array of 2-, 4- or 8-byte integers: a list (fixed size for fixed arrays)
_CHAR_WORDS = {"char", "signed", "const", "volatile"}


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # C type as written, without the name and array suffix
    offset: int
    size: int
    signed: bool
    array_len: int | None = None  # element count of a fixed array (char comm[16] -> 16; 0: flexible, see below)
    data_loc: bool = False  # __data_loc: u32 with offset (low 16 bits) and length (high 16)
    rel_loc: bool = False  # __rel_loc: like data_loc, offset relative to the end of the field
    is_pointer: bool = False

    @property
    def dynamic(self) -> bool:
        return self.data_loc or self.rel_loc

    @property
    def flexible(self) -> bool:
        """``char buf[]`` of size 0 (ftrace's print): the rest of the record, up to its end (what
        libtraceevent reads for a zero-sized field, print_str_arg)."""
        return self.array_len == 0 and self.size == 0 and not self.dynamic

    @property
    def elem_size(self) -> int:
        """Bytes per element: of an array (fixed or dynamic), else of the field."""
        if self.dynamic:
            return _scalar_size(self.type)
        if self.array_len:
            return self.size // self.array_len
        return self.size

    @property
    def kind(self) -> str:
        """SCALAR, CHARS, BYTES or ARRAY. Elements' signedness is the field's ``signed``."""
        if self.dynamic or self.array_len is not None:
            words = set(self.type.split())
            if "char" in words and words <= _CHAR_WORDS:
                return CHARS
            if self.elem_size in (2, 4, 8) and (self.dynamic or self.elem_size * self.array_len == self.size):
                return ARRAY
            return BYTES
        return SCALAR if self.size in (1, 2, 4, 8) else BYTES

    @property
    def is_string(self) -> bool:
        return self.kind == CHARS


@dataclass
class EventFormat:
    system: str
    name: str
    id: int
    fields: list[Field]  # event fields (without common_*)
    common_fields: list[Field]
    print_fmt: str
    text: str = field(default="", repr=False)  # the format description as read
    _fallback_reason: str | None = field(default=None, repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.system}:{self.name}" if self.system else self.name

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        for f in self.common_fields:
            if f.name == name:
                return f
        return None

    @property
    def record_size(self) -> int:
        """Size of the fixed part of a record (header included)."""
        return max((f.offset + f.size for f in self.common_fields + self.fields), default=0)

    @cached_property
    def printer(self):  # -> vpmutrace.formats.printfmt.PrintFmt | None
        """The parsed print fmt, or None when it uses constructs we do not evaluate.

        ``fallback_reason`` then says why; such events keep their raw fields.
        """
        from vpmutrace.formats.printfmt import PrintFmt

        try:
            return PrintFmt.parse(self.print_fmt, {f.name: f.size for f in self.fields
                                                   if f.array_len is None and not f.dynamic})
        except UnsupportedFormat as e:
            self._fallback_reason = str(e)
            return None

    @property
    def fallback_reason(self) -> str | None:
        _ = self.printer
        return self._fallback_reason


def _parse_decl(decl: str) -> tuple[str, str, int | None, bool, bool, bool]:
    decl = decl.strip()
    data_loc = rel_loc = False
    if decl.startswith("__data_loc "):
        data_loc, decl = True, decl[len("__data_loc "):]
    elif decl.startswith("__rel_loc "):
        rel_loc, decl = True, decl[len("__rel_loc "):]
    m = _ARRAY_RE.match(decl)
    array_len: int | None = None
    if m:
        base, name, length = m.group("base"), m.group("name"), m.group("len").strip()
        if length.isdigit():
            array_len = int(length)
        elif not (data_loc or rel_loc):
            array_len = 0  # flexible or symbolic length: sized by "size:"
    else:
        m = _NAME_RE.match(decl)
        if not m:
            raise BadFormat(f"cannot parse field declaration {decl!r}")
        base, name = m.group("base"), m.group("name")
    is_ptr = "*" in decl and not (data_loc or rel_loc)
    if data_loc or rel_loc:
        base = re.sub(r"\[[^\]]*\]\s*$", "", base.strip())  # "__data_loc u64[] name": elements are u64
    return base.strip(), name, array_len, data_loc, rel_loc, is_ptr


# the longest a tracepoint record can be: a perf RAW payload sits in a record of at most 64 KB
# (perf_event_header.size is a u16); a ring-buffer event in a sub-buffer (at most 1 MB here)
MAX_RECORD = 1 << 20


def parse_format(text: str, system: str = "") -> EventFormat:
    """Parse one tracefs format description. Raises errors.BadFormat with the offending line."""
    name = ""
    ev_id = -1
    fields: list[Field] = []
    common: list[Field] = []
    print_fmt = ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("name:"):
            name = s[5:].strip()
        elif s.startswith("ID:"):
            if not s[3:].strip().isdigit():
                raise BadFormat(f"line {i + 1}: ID {s[3:].strip()!r} is not a number")
            ev_id = int(s[3:].strip())
        elif s.startswith("field:") or s.startswith("field special:"):
            m = _FIELD_RE.match(s.replace("field special:", "field:", 1))
            if not m:
                raise BadFormat(f"line {i + 1}: malformed field line {s!r}")
            base, fname, alen, dloc, rloc, ptr = _parse_decl(m.group("decl"))
            size = int(m.group("size"))
            if alen == 0 and size > 0:
                alen = size // max(1, _scalar_size(base))
            elif alen is None and size == 0 and not (dloc or rloc or ptr):
                alen = 0  # "char buf; size:0" (kernels before 3.10's print/bprint): read as buf[] is, the
                #           rest of the record (libtraceevent reads a zero-sized field so: print_str_arg)
            signed = m.group("signed") not in (None, "0")
            offset = int(m.group("offset"))
            if offset + size > MAX_RECORD:
                raise BadFormat(f"line {i + 1}: field {fname} at offset {offset}, {size} bytes, ends past "
                                f"{MAX_RECORD} bytes (no trace record is that long)")
            if (dloc or rloc) and size != 4:
                raise BadFormat(f"line {i + 1}: dynamic field {fname} has size {size}, not 4 (u32 offset/length)")
            if alen and alen > size:
                # a declared length the recorded size cannot hold (a vendor arm32 kernel declares
                # "char comm[32]; size:16"): the size is what the kernel wrote, and what libtraceevent
                # reads (it takes a field's bytes from size:, not from the declaration)
                alen = size // max(1, _scalar_size(base))
            if any(x.name == fname for x in common + fields):  # (a record's fields are found by name)
                raise BadFormat(f"line {i + 1}: field {fname} declared twice")
            f = Field(fname, base, offset, size, signed, alen, dloc, rloc, ptr)
            (common if fname.startswith("common_") else fields).append(f)
        elif s.startswith("print fmt:"):
            print_fmt = "\n".join([line.split("print fmt:", 1)[1]] + lines[i + 1:]).strip()
            break
    if not name:
        raise BadFormat("format has no 'name:' line")
    return EventFormat(system, name, ev_id, fields, common, print_fmt, text)


def _scalar_size(ctype: str) -> int:
    t = ctype.replace("unsigned", "").replace("signed", "").replace("const", "").strip()
    sizes = {"char": 1, "u8": 1, "s8": 1, "__u8": 1, "__s8": 1, "bool": 1, "_Bool": 1,
             "short": 2, "u16": 2, "s16": 2, "__u16": 2, "__s16": 2,
             "int": 4, "u32": 4, "s32": 4, "__u32": 4, "__s32": 4, "": 4,
             "long": 8, "u64": 8, "s64": 8, "__u64": 8, "__s64": 8, "long long": 8,
             "uint8_t": 1, "int8_t": 1, "uint16_t": 2, "int16_t": 2, "uint32_t": 4, "int32_t": 4, "pid_t": 4,
             "uint64_t": 8, "int64_t": 8, "size_t": 8, "ssize_t": 8, "loff_t": 8}
    return sizes.get(t, 1)


_HEADER_FIELD_RE = re.compile(r"field:\s*(?:u64|int|local_t|char|long)\s+(\w+)(?:\[\])?;\s*offset:(\d+);"
                              r"\s*size:(\d+);")


def parse_header_page(text: str) -> dict[str, tuple[int, int]]:
    """header_page text -> {timestamp|commit|overwrite|data: (offset, size)}."""
    return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in _HEADER_FIELD_RE.finditer(text)}
