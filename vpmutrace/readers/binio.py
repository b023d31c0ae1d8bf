"""Bounds-checked reading of binary headers; truncation becomes an InputError naming the offset."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from vpmutrace.errors import InputError


def map_file(path: Path) -> np.ndarray:
    """The whole file as a read-only uint8 array backed by the page cache (not copied).

    Not MAP_POPULATE: the perf.data walk touches the pages from several threads at once,
    which maps them faster than one bulk populate does.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise InputError(str(path), f"cannot read: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise InputError(str(path), "empty file", "offset 0")
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    except OSError as e:
        raise InputError(str(path), f"cannot map: {e.strerror}") from None
    finally:
        os.close(fd)
    return np.frombuffer(mm, dtype=np.uint8)


def release_pages(buf: np.ndarray, start: int = 0, end: int | None = None) -> None:
    """Let the kernel drop the pages of a mapped file we touched (they stay in the page cache),
    all of them or those wholly inside bytes [start, end).

    Keeps the reader's resident memory near the size of its tables, not tables + file.
    """
    base = buf
    while isinstance(base, np.ndarray | memoryview):
        base = base.obj if isinstance(base, memoryview) else base.base
    if not isinstance(base, mmap.mmap) or not hasattr(base, "madvise"):
        return
    page = mmap.PAGESIZE
    a = -(-start // page) * page
    z = len(base) if end is None else min(end, len(base))
    if z <= a:
        return
    try:
        base.madvise(mmap.MADV_DONTNEED, a, z - a)
    except (OSError, ValueError):
        pass


class Cursor:
    def __init__(self, data: bytes | memoryview, path: str, pos: int = 0, endian: str = "<",
                 base: int = 0, what: str = "") -> None:
        self.data = data
        self.path = path
        self.pos = pos
        self.endian = endian
        self.base = base  # file offset of data[0], for error messages
        self.what = what

    def fail(self, msg: str) -> InputError:
        where = f"offset {self.base + self.pos}" + (f" ({self.what})" if self.what else "")
        return InputError(self.path, msg, where)

    def need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated: needed {n} bytes, {len(self.data) - self.pos} left")

    def unpack(self, fmt: str) -> tuple:
        s = struct.Struct(self.endian + fmt)
        self.need(s.size)
        v = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return v

    def u8(self) -> int:
        return self.unpack("B")[0]

    def u16(self) -> int:
        return self.unpack("H")[0]

    def u32(self) -> int:
        return self.unpack("I")[0]

    def u64(self) -> int:
        return self.unpack("Q")[0]

    def bytes(self, n: int) -> bytes:
        self.need(n)
        b = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return b

    def cstr(self) -> str:
        data = self.data
        end = bytes(data[self.pos:self.pos + (1 << 20)]).find(b"\0")
        if end < 0:
            raise self.fail("unterminated string")
        s = bytes(data[self.pos:self.pos + end]).decode("utf-8", "replace")
        self.pos += end + 1
        return s

    def expect(self, lit: bytes, what: str) -> None:
        got = self.bytes(len(lit))
        if got != lit:
            self.pos -= len(lit)
            raise self.fail(f"expected {what} ({lit!r}), found {got!r}")

    @property
    def left(self) -> int:
        return len(self.data) - self.pos
