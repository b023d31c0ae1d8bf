"""A small ELF reader for symbolisation: the file header, section and program headers as numpy
record arrays over a read-only mapping of the file, section names, section contents (zlib
SHF_COMPRESSED sections inflated) and GNU build-id notes.

Only what readers/symbols.py needs, read the way pyelftools reads it (same extended section
numbering, same name lookup: the last section of a name), but without building a Python object
per header field: opening a file and finding its tables costs tens of microseconds, so a trace
with hundreds of DSOs spends no time here. Malformed files raise :class:`ElfError`.
"""

from __future__ import annotations

import mmap
import os
import zlib

import numpy as np

SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOTE, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 2, 3, 4, 7, 8, 9, 11
SHF_COMPRESSED = 0x800
ELFCOMPRESS_ZLIB = 1
PT_LOAD = 1
ET_EXEC = 2
NT_GNU_BUILD_ID = 3
SHN_XINDEX = 0xFFFF
PN_XNUM = 0xFFFF

_SHDR64 = [("name", "u4"), ("type", "u4"), ("flags", "u8"), ("addr", "u8"), ("offset", "u8"), ("size", "u8"),
           ("link", "u4"), ("info", "u4"), ("addralign", "u8"), ("entsize", "u8")]
_SHDR32 = [(n, "u4") for n, _ in _SHDR64]
_PHDR64 = [("type", "u4"), ("flags", "u4"), ("offset", "u8"), ("vaddr", "u8"), ("paddr", "u8"), ("filesz", "u8"),
           ("memsz", "u8"), ("align", "u8")]
_PHDR32 = [("type", "u4"), ("offset", "u4"), ("vaddr", "u4"), ("paddr", "u4"), ("filesz", "u4"), ("memsz", "u4"),
           ("flags", "u4"), ("align", "u4")]
# ELF header fields after e_ident: (64-bit offset, 32-bit offset, size)
_EHDR = {"type": (16, 16, 2), "phoff": (32, 28, 0), "shoff": (40, 32, 0), "phentsize": (54, 42, 2),
         "phnum": (56, 44, 2), "shentsize": (58, 46, 2), "shnum": (60, 48, 2), "shstrndx": (62, 50, 2)}


class ElfError(ValueError):
    """Not an ELF file, or one whose headers point outside it."""


def file_identity(path: str) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime in ns) of a file: what tells a changed file from the one read before."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ElfFile:
    """One ELF file, mapped read-only. Use as a context manager (or call :meth:`close`): arrays
    returned by :meth:`data` of an uncompressed section are views of the mapping and must be copied
    before it is closed."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 52:
                raise ElfError(f"{path}: too short for an ELF header")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.buf = np.frombuffer(self._map, np.uint8)
        try:
            self._parse()
        except Exception:
            self.close()
            raise

    def _parse(self) -> None:
        b = self.buf
        if bytes(b[:4]) != b"\x7fELF":
            raise ElfError(f"{self.path}: not an ELF file")
        cls, data = int(b[4]), int(b[5])
        if cls not in (1, 2) or data not in (1, 2):
            raise ElfError(f"{self.path}: bad ELF class or data encoding")
        self.elfclass = 64 if cls == 2 else 32
        self.little_endian = data == 1
        order = "<" if self.little_endian else ">"
        self.order = order
        if self.elfclass == 64 and len(b) < 64:
            raise ElfError(f"{self.path}: too short for an ELF header")
        h: dict[str, int] = {}
        for name, (o64, o32, sz) in _EHDR.items():
            o = o64 if self.elfclass == 64 else o32
            sz = sz or (8 if self.elfclass == 64 else 4)
            h[name] = int.from_bytes(bytes(b[o:o + sz]), "little" if self.little_endian else "big")
        self.e_type = h["type"]
        shdr = np.dtype([(n, order + t) for n, t in (_SHDR64 if self.elfclass == 64 else _SHDR32)])
        phdr = np.dtype([(n, order + t) for n, t in (_PHDR64 if self.elfclass == 64 else _PHDR32)])
        shnum, shstrndx, phnum = h["shnum"], h["shstrndx"], h["phnum"]
        first = self._table(h["shoff"], 1, h["shentsize"], shdr) if h["shoff"] else None
        if h["shoff"] and shnum == 0 and first is not None and len(first):  # extended section numbering
            shnum = int(first["size"][0])
        if shstrndx == SHN_XINDEX and first is not None and len(first):
            shstrndx = int(first["link"][0])
        if phnum == PN_XNUM and first is not None and len(first):
            phnum = int(first["info"][0])
        self.shdrs = self._table(h["shoff"], shnum, h["shentsize"], shdr) if h["shoff"] else np.zeros(0, shdr)
        self.phdrs = self._table(h["phoff"], phnum, h["phentsize"], phdr) if h["phoff"] else np.zeros(0, phdr)
        self.names: list[str] = [""] * len(self.shdrs)
        if 0 < shstrndx < len(self.shdrs):
            strs = self.data(shstrndx)
            raw = strs.tobytes()
            for i, off in enumerate(self.shdrs["name"].tolist()):
                z = raw.find(b"\0", off)
                self.names[i] = raw[off:z if z >= 0 else len(raw)].decode("utf-8", "replace")
        self._by_name = {n: i for i, n in enumerate(self.names)}  # (the last of a name, as pyelftools)

    def _table(self, off: int, n: int, entsize: int, dtype: np.dtype) -> np.ndarray:
        if n == 0:
            return np.zeros(0, dtype)
        if entsize < dtype.itemsize or off + (n - 1) * entsize + dtype.itemsize > len(self.buf):
            raise ElfError(f"{self.path}: header table outside the file")
        return np.ndarray((n,), dtype, buffer=self._map, offset=off, strides=(entsize,))

    def close(self) -> None:
        self.buf = np.zeros(0, np.uint8)
        self.shdrs = self.shdrs[:0].copy() if hasattr(self, "shdrs") else None
        self.phdrs = self.phdrs[:0].copy() if hasattr(self, "phdrs") else None
        try:
            self._map.close()
        except BufferError:  # a view handed out is still alive: the mapping goes with it
            pass

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sections ------------------------------------------------------------------------------

    def section(self, name: str) -> int | None:
        """Index of the section of that name (the last one, as pyelftools' get_section_by_name)."""
        return self._by_name.get(name)

    def sh(self, i: int, field: str) -> int:
        return int(self.shdrs[field][i])

    def has_contents(self, i: int | None) -> bool:
        """A section that is there, with bytes in the file."""
        return i is not None and self.sh(i, "type") != SHT_NOBITS and self.sh(i, "size") > 0

    def data(self, i: int) -> np.ndarray:
        """A section's bytes (uint8): a view of the mapping, or for a compressed section its inflated
        copy; SHT_NOBITS sections are zeros, as pyelftools gives them."""
        if not 0 <= i < len(self.shdrs):
            raise ElfError(f"{self.path}: no section {i}")
        typ, flags, off, size = (self.sh(i, f) for f in ("type", "flags", "offset", "size"))
        if typ == SHT_NOBITS:
            return np.zeros(size, np.uint8)
        if off + size > len(self.buf):
            raise ElfError(f"{self.path}: section {self.names[i]} outside the file")
        raw = self.buf[off:off + size]
        if not flags & SHF_COMPRESSED:
            return raw
        # Elf32_Chdr: type, size, addralign (u4 each); Elf64_Chdr: type, reserved (u4), size, addralign (u8)
        w = 8 if self.elfclass == 64 else 4
        hsz = 24 if w == 8 else 12
        if size < hsz:
            raise ElfError(f"{self.path}: compressed section {self.names[i]} too short")
        hdr = raw[:hsz].tobytes()
        endian = "little" if self.little_endian else "big"
        ctype = int.from_bytes(hdr[:4], endian)
        csize = int.from_bytes(hdr[8:16] if w == 8 else hdr[4:8], endian)
        if ctype != ELFCOMPRESS_ZLIB:
            raise ElfError(f"{self.path}: section {self.names[i]}: unknown compression type {ctype:#x}")
        out = zlib.decompressobj().decompress(raw[hsz:].tobytes(), csize)
        if len(out) != csize:
            raise ElfError(f"{self.path}: section {self.names[i]} inflates to {len(out)} bytes, not {csize}")
        return np.frombuffer(out, np.uint8)

    # ---- notes ---------------------------------------------------------------------------------

    def build_id(self) -> str | None:
        """The GNU build-id: the first NT_GNU_BUILD_ID note (owner "GNU") of the SHT_NOTE sections, in
        section order, as hex. A type-3 note of another owner ends the search without one, as
        pyelftools' reading did."""
        endian = "little" if self.little_endian else "big"
        for i in np.flatnonzero(self.shdrs["type"] == SHT_NOTE).tolist():
            d = self.data(i).tobytes()
            pos = 0
            while pos + 12 < len(d):
                namesz, descsz, typ = (int.from_bytes(d[pos + k:pos + k + 4], endian) for k in (0, 4, 8))
                pos += 12
                name = d[pos:pos + namesz].split(b"\0", 1)[0] if namesz else None
                pos += (namesz + 3) // 4 * 4
                desc = d[pos:pos + descsz]
                pos += (descsz + 3) // 4 * 4
                if typ == NT_GNU_BUILD_ID:
                    return desc.hex() if name == b"GNU" else None
        return None
