"""One printf conversion as trace-cmd prints it: glibc's printf for numbers, strings and ``%p``,
libtraceevent 1.8.2's own code for the kernel's ``%p`` extensions (src/event-parse.c).

glibc, unlike the kernel's vsprintf: ``%#x`` of 0 is ``0`` (the ``0x`` prefix only for a
nonzero value), ``%#o`` adds one leading ``0`` when the digits lack it, a precision of 0 prints
no digits for 0, and ``%p`` of NULL is ``(nil)``, of anything else ``0x`` and the hex digits
(print_arg_pointer prints a plain ``%p`` with no width). libtraceevent hands the value to
printf cast to the conversion's length: ``hh`` char, ``h`` short, none int, ``l``/``z``
long, ``ll``/``L`` long long (print_arg_number).

The address extensions (print_mac_arg, print_ipv4_arg, print_ipv6_arg, print_ipsa_arg,
print_uuid_arg, print_raw_buff_arg) read the bytes of the field they are given:
``%pM``/``%pMR``/``%pMF``/``%pm`` (6 bytes, else ``INVALIDMAC``), ``%pI4``/``%pi4`` with an
optional byte-order letter (4 bytes, else ``INVALIDIPv4``), ``%pI6``/``%pi6``/``%pI6c``
(16 bytes, else ``INVALIDIPv6``), ``%pIS[p][c]`` (a sockaddr: family 2 or 10 in the file's byte
order, port in network order), ``%pU[bBlL]`` (16 bytes, else ``INVALIDUUID``) and
``%*ph[CDN]`` (a dynamic array's first bytes).
"""

from __future__ import annotations

M64 = (1 << 64) - 1
_LENGTH_BITS = {"hh": 8, "h": 16, "": 32, "l": 64, "z": 64, "Z": 64, "j": 64, "t": 64, "ll": 64, "L": 64, "q": 64}


def length_bits(length: str) -> int:
    return _LENGTH_BITS.get(length, 32)


def format_int(flags: str, width: int | None, prec: int | None, conv: str, value: int, bits: int) -> str:
    """``value`` cast to ``bits`` and printed with ``%<flags><width>.<prec><conv>`` by glibc."""
    u = value & ((1 << bits) - 1)
    neg = False
    if conv in "di":
        if u >> (bits - 1):
            u = (1 << bits) - u
            neg = True
    if conv == "c":
        body = chr(u & 0xFF)
        return _pad(body, width, "-" in flags, " ")
    base = {"x": 16, "X": 16, "o": 8}.get(conv, 10)
    digits = "" if prec == 0 and u == 0 else _digits(u, base, conv == "X")
    if prec is not None and len(digits) < prec:
        digits = "0" * (prec - len(digits)) + digits
    prefix = ""
    if conv in "di":
        prefix = "-" if neg else "+" if "+" in flags else " " if " " in flags else ""
    elif "#" in flags:
        if conv in "xX" and u != 0:
            prefix = "0" + conv
        elif conv == "o" and not digits.startswith("0"):
            digits = "0" + digits
    left = "-" in flags
    if "0" in flags and not left and prec is None and width is not None:
        return prefix + digits.rjust(width - len(prefix), "0")
    return _pad(prefix + digits, width, left, " ")


def _digits(u: int, base: int, upper: bool) -> str:
    if base == 16:
        return f"{u:X}" if upper else f"{u:x}"
    if base == 8:
        return f"{u:o}"
    return str(u)


def _pad(s: str, width: int | None, left: bool, fill: str) -> str:
    if width is None or len(s) >= width:
        return s
    return s.ljust(width, fill) if left else s.rjust(width, fill)


def format_str(flags: str, width: int | None, prec: int | None, s: str) -> str:
    if prec is not None:
        s = s[:prec]
    return _pad(s, width, "-" in flags, " ")


def pointer(value: int) -> str:
    """glibc ``%p``."""
    v = value & M64
    return "(nil)" if v == 0 else f"0x{v:x}"


def pointer_ext_length(ext: str) -> int:
    """How many characters after ``%p`` libtraceevent takes as the extension
    (parse_arg_format_pointer): 0 for none (the letters stay literal text)."""
    if not ext:
        return 0
    c, n1 = ext[0], ext[1:2]
    if c in "FSfs":
        return 1
    if c in "Mm":
        return 2 if n1 in ("R", "F") and n1 else 1
    if c in "Ii":
        n = 0
        index = 2
        if n1 == "S":
            while ext[index:index + 1] in ("p", "f", "s") and ext[index:index + 1]:
                n += 1
                index += 1
        if n1 in ("S", "4"):
            if ext[index:index + 1] in ("h", "n", "l", "b") and ext[index:index + 1]:
                n += 1
                index += 1
            if n1 == "4":
                return n + 2
        if n1 in ("S", "6"):
            if ext[index:index + 1] == "c":
                n += 1
            return n + 2
        return 1
    if c == "U":
        return 2 if n1 in ("L", "l", "B", "b") and n1 else 1
    if c == "h":
        return 2 if n1 in ("C", "D", "N") and n1 else 1
    return 0


def mac(ext: str, data: bytes | None) -> str:
    if data is None or len(data) != 6:
        return "INVALIDMAC"
    b = list(data)
    if ext[1:2] == "R":
        b.reverse()
    sep = "" if ext[0] == "m" else "-" if ext[1:2] == "F" else ":"
    return sep.join(f"{x:02x}" for x in b)


def ip4(i: str, data: bytes, reverse: bool) -> str:
    b = list(data[:4])
    if reverse:
        b.reverse()
    return ".".join(f"{x:03d}" if i == "i" else str(x) for x in b)


def ip4_reverse(order: str, big_endian_file: bool) -> bool:
    """Whether ``%pI4`` with byte-order letter ``order`` prints the bytes reversed
    (parse_ip4_print_args: 'h' is the file's order, 'l' little endian, 'n'/'b' as stored)."""
    if order == "h":
        return not big_endian_file
    return order == "l"


def ip6(i: str, data: bytes) -> str:
    groups = [f"{data[j]:02x}{data[j + 1]:02x}" for j in range(0, 16, 2)]
    return (":" if i == "I" else "").join(groups)


def ip6c(data: bytes) -> str:
    """RFC 5952 form (print_ip6c_addr): the longest run of two or more zero words becomes "::";
    a v4-mapped or ISATAP address ends in its dotted quad."""
    words = [(data[j] << 8) | data[j + 1] for j in range(0, 16, 2)]
    v4mapped = words[:5] == [0] * 5 and words[5] == 0xFFFF
    isatap = (words[4] | 0x0200) == 0x0200 and words[5] == 0x5EFE
    rng = 6 if v4mapped or isatap else 8
    longest, colonpos = 1, -1
    for i in range(rng):
        run = 0
        for j in range(i, rng):
            if words[j]:
                break
            run += 1
        if run > longest:
            longest, colonpos = run, i
    out: list[str] = []
    needcolon = False
    i = 0
    while i < rng:
        if i == colonpos:
            if needcolon or i == 0:
                out.append(":")
            out.append(":")
            needcolon = False
            i += longest
            continue
        if needcolon:
            out.append(":")
        out.append(f"{words[i]:x}")
        needcolon = True
        i += 1
    if rng == 6:
        if needcolon:
            out.append(":")
        out.append(ip4("I", data[12:16], False))
    return "".join(out)


def ip_sockaddr(ext: str, data: bytes, big_endian_file: bool) -> str:
    """``%pIS[p][c][hnbl]`` of a struct sockaddr (print_ipsa_arg)."""
    i, rest = ext[0], ext[2:]
    have_p = have_c = False
    if i == "I":
        if rest[:1] == "p":
            have_p, rest = True, rest[1:]
        if rest[:1] == "c":
            have_c, rest = True, rest[1:]
    reverse = ip4_reverse(rest[:1], big_endian_file) if rest[:1] in ("h", "l", "n", "b") and rest[:1] else False
    if len(data) < 2:
        return ""
    family = int.from_bytes(data[:2], "big" if big_endian_file else "little")
    if family == 2:
        if len(data) < 16:
            return "INVALIDIPv4"
        s = ip4(i, data[4:8], reverse)
        return s + (f":{int.from_bytes(data[2:4], 'big')}" if have_p else "")
    if family == 10:
        if len(data) < 28:
            return "INVALIDIPv6"
        addr = data[8:24]
        s = ip6c(addr) if have_c else ip6(i, addr)
        return f"[{s}]:{int.from_bytes(data[2:4], 'big')}" if have_p else s
    return ""


_GUID_ORDER = (3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15)


def uuid(ext: str, data: bytes | None) -> str:
    if data is None or len(data) != 16:
        return "INVALIDUUID"
    v = ext[1:2]
    order = _GUID_ORDER if v in ("L", "l") else range(16)
    upper = v in ("L", "B")
    out = []
    for k, j in enumerate(order):
        out.append(f"{data[j]:02X}" if upper else f"{data[j]:02x}")
        if k in (3, 5, 7, 9):
            out.append("-")
    return "".join(out)


def hex_buffer(ext: str, data: bytes, count: int) -> str:
    """``%*ph[CDN]``: the first ``count`` bytes (1 without a ``*``) of a dynamic array."""
    sep = {"C": ":", "D": "-", "N": ""}.get(ext[1:2], " ") if ext[1:2] else " "
    n = min(count, len(data))
    return sep.join(f"{b:02x}" for b in data[:n]) if n >= 1 else ""
