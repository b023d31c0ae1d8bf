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


def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    """The mmap an array's memory belongs to, if any."""
    base: object = arr
    while isinstance(base, np.ndarray | memoryview):
        base = base.obj if isinstance(base, memoryview) else base.base
    return base if isinstance(base, mmap.mmap) and hasattr(base, "madvise") else None


def _dontneed(mm: mmap.mmap, start: int, end: int, align: int) -> None:
    """MADV_DONTNEED on the whole ``align``-sized units inside bytes [start, end) of ``mm``."""
    a = -(-start // align) * align
    z = end // align * align if end < len(mm) else len(mm)
    if z <= a:
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED, a, z - a)
    except (OSError, ValueError):
        pass


def release_pages(buf: np.ndarray, start: int = 0, end: int | None = None) -> None:
    """Let the kernel drop the pages of a mapped file we touched (they stay in the page cache),
    all of them or those wholly inside bytes [start, end).

    Keeps the reader's resident memory near the size of its tables, not tables + file.
    """
    mm = _mapping(buf)
    if mm is not None:
        _dontneed(mm, start, len(mm) if end is None else end, mmap.PAGESIZE)


HUGE_PAGE = 2 << 20  # x86-64 PMD size: the unit transparent huge pages come and go in
SCRATCH_MIN_BYTES = 4 * HUGE_PAGE  # smaller arrays come from numpy's allocator


def scratch(n: int, dtype: np.dtype | type) -> np.ndarray:
    """A zeroed array of ``n`` elements in an anonymous mapping of its own (for large ones), so
    that the part already consumed can be handed back with ``discard`` while the rest is in use.

    The mapping's size is a whole number of huge pages, so that the kernel places it on a
    huge-page boundary and ``discard`` frees whole huge pages rather than splitting them when
    the system gives it transparent huge pages ("always" mode). It does not ask for them
    (MADV_HUGEPAGE, as numpy does for its large arrays): in a VM with free page reporting
    (virtio-balloon), huge-page faults often land on memory the hypervisor has taken back and
    are several times slower, while scratch in base pages comes from memory just freed. With
    huge pages asked for, the 6.8 M events of benchmarks/bench_readers.py's file read in
    0.33 to 0.90 s (median 0.45) in 12 fresh processes; without, interleaved with those,
    0.31 to 0.37 s (median 0.32).
    """
    dt = np.dtype(dtype)
    size = n * dt.itemsize
    if size < max(SCRATCH_MIN_BYTES, 1):
        return np.zeros(n, dt)
    length = -(-size // HUGE_PAGE) * HUGE_PAGE
    try:
        mm = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as e:  # as numpy's own allocations fail
        raise MemoryError(f"cannot map {length} bytes for a scratch array: {e.strerror}") from None
    return np.frombuffer(mm, dtype=dt, count=n)


def discard(arr: np.ndarray, start: int, end: int) -> None:
    """Give the memory behind elements [start, end) of a ``scratch`` array (or a view of one) back
    to the kernel (whole huge pages only); those elements read as zero afterwards. No-op for other
    arrays.

    Memory freed this way is what the next fresh pages come from, so a pass that consumes one
    array while it fills another needs about the larger of the two, not their sum.
    """
    mm = _mapping(arr)
    if mm is None:
        return
    at = arr.ctypes.data - np.frombuffer(mm, dtype=np.uint8).ctypes.data
    w = arr.itemsize
    z = at + min(end, len(arr)) * w
    if at == 0 and end >= len(arr) and len(mm) - z < HUGE_PAGE:  # what follows the array is the mapping's padding
        z = len(mm)
    _dontneed(mm, at + start * w, z, HUGE_PAGE)


# compressed data (perf.data COMPRESSED records, trace.dat sections and CPU chunks, compressed text)
# may expand to at most MAX_EXPANSION times the size of the file it is in, and to
# MIN_EXPANSION_BYTES whatever the file's size: bounds the memory a small damaged file can take
MAX_EXPANSION, MIN_EXPANSION_BYTES = 64, 64 << 20


def expansion_room(size: int) -> int:
    """How many bytes the compressed data of a file of ``size`` bytes may expand to."""
    return max(MAX_EXPANSION * size, MIN_EXPANSION_BYTES)


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
        count = fmt[:-1]
        if count[:1].isdigit() or count[:1] == "-":  # "<n>Q": n items, n from the file: checked first
            if not count.isdigit():
                raise self.fail(f"count {count} is not a number of items")
            self.need(int(count) * struct.calcsize(self.endian + fmt[-1]))
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
