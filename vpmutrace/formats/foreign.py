"""What a file is when it is none of our inputs: the magic numbers of common non-trace formats.

A file that is not a perf.data (``PERFILE2``), a trace.dat (``\\x17\\x08\\x44tracing``) or text is
named by what it is ("a PNG image") with its first bytes, so a mislabelled file (a screenshot saved
as perf.data) is recognised at once. The magic numbers are the formats' own (PNG: RFC 2083 section
3.1; ELF: the System V ABI e_ident; ZIP: APPNOTE 4.3.7; gzip: RFC 1952; xz: the .xz file format
2.1.1.1; zstd: RFC 8878 section 3.1.1; PDF: ISO 32000 7.5.2; JPEG: JFIF SOI; GIF: GIF89a spec;
SQLite: its file format 1.3; Parquet: the format's "PAR1"; pcap/pcapng: their IETF drafts; tar:
POSIX ustar at offset 257; Python pickle protocol 2+: 0x80 and the protocol byte).
"""

from __future__ import annotations

# (offset, magic, what it is); longest and most specific first
FOREIGN_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\x7fELF", "an ELF executable or object"),
    (0, b"PK\x03\x04", "a ZIP archive (or a wheel, jar, docx)"),
    (0, b"%PDF-", "a PDF document"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"SQLite format 3\x00", "an SQLite database"),
    (0, b"PAR1", "a Parquet file (give the dataset directory, not one of its files)"),
    (0, b"\xd4\xc3\xb2\xa1", "a pcap capture"),
    (0, b"\xa1\xb2\xc3\xd4", "a pcap capture"),
    (0, b"\x0a\x0d\x0d\x0a", "a pcapng capture"),
    (257, b"ustar", "a tar archive (unpack it first)"),
    (0, b"\x80\x02", "a Python pickle"),
    (0, b"\x80\x04", "a Python pickle"),
    (0, b"\x80\x05", "a Python pickle"),
)
HEAD_BYTES = 512  # enough for every offset above
SHOWN_BYTES = 8


def magic_text(head: bytes) -> str:
    """The first bytes as hex, e.g. ``89 50 4e 47 0d 0a 1a 0a``."""
    return " ".join(f"{b:02x}" for b in head[:SHOWN_BYTES])


def what_it_is(head: bytes) -> str | None:
    """What a file starting with ``head`` is, when it is a known non-trace format, else None."""
    for off, magic, what in FOREIGN_MAGIC:
        if head[off:off + len(magic)] == magic:
            return what
    return None


def not_a_trace(head: bytes) -> str:
    """The message for a file that is none of our formats: its magic and, when known, what it is."""
    what = what_it_is(head)
    return (f"not a perf.data, trace.dat or text trace: magic {magic_text(head)}"
            f" ({what or 'binary data of an unknown format'})")
