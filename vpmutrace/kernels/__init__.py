"""The compiled loops: ahead-of-time compiled when installed, numba JIT otherwise.

``pip install`` (and ``scripts/setup``) compiles every kernel of ``registry.KERNELS`` with
numba's ahead-of-time compiler into the extension ``vpmutrace.kernels._compiled``: a process
then loads them in milliseconds, without importing numba. Where that extension is missing
(no C compiler at install time) or older than the kernel sources (a checkout edited since
its install), the same source functions are compiled by numba's JIT on first use and cached
(``cache=True``: next to the sources, or in numba's per-user cache directory when the
installed package is read-only). ``VPMUTRACE_KERNELS=jit`` forces the JIT.

Kernels are called as attributes (``kernels.walk_pages(...)``); every call's arguments are
checked against the declared types (a wrong dtype is a TypeError, never a misread buffer).
``parallel`` runs a kernel that takes a trailing ``lo, hi`` range on several threads: the
kernels release the GIL.
"""

from __future__ import annotations

import importlib
import os
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vpmutrace.kernels.registry import BUF, CONST, KERNELS, SOURCES, Kernel, export_name

_DTYPES = {"u1": np.uint8, "u2": np.uint16, "u4": np.uint32, "u8": np.uint64, "i1": np.int8, "i2": np.int16,
           "i4": np.int32, "i8": np.int64, "b1": np.bool_, "f8": np.float64}


def source_stamp() -> int:
    """A checksum of the kernel sources (63 bits: their CRC-32 and Adler-32): the extension records
    the one it was built from. (zlib, not hashlib: importing hashlib loads OpenSSL, 14 ms of every
    process's start; the stamp only tells an edited checkout from its build.)"""
    root = Path(__file__).resolve().parents[1]
    data = b"".join((root / rel).read_bytes() for rel in SOURCES)
    return (zlib.crc32(data) << 31) | (zlib.adler32(data) >> 1)


def _arg_check(spec: str) -> Callable[[Any], Any] | tuple[np.dtype, int]:
    spec = spec.removeprefix(CONST)
    if spec == BUF:
        return np.dtype(np.uint8), 1
    if "[" in spec:
        return np.dtype(_DTYPES[spec.split("[")[0]]), spec.count(",") + 1
    return _DTYPES[spec]  # scalars as numpy scalars of the declared type: the JIT types them as the AOT build


class _Dispatch:
    """One kernel: checks the arguments, picks the compiled variant for their types, calls it."""

    def __init__(self, name: str, k: Kernel, funcs: list[Callable[..., Any]]) -> None:
        self.name = name
        self.funcs = funcs
        self.checks = [[_arg_check(s) for s in variant] for variant in k.variants()]

    def __call__(self, *args: Any) -> Any:
        for func, checks in zip(self.funcs, self.checks, strict=True):
            if len(args) != len(checks):
                raise TypeError(f"kernel {self.name}: {len(args)} arguments, expected {len(checks)}")
            conv = _convert(args, checks)
            if conv is not None:
                return func(*conv)
        got = ", ".join(f"{a.dtype}[{a.ndim}d]" if isinstance(a, np.ndarray) else type(a).__name__ for a in args)
        raise TypeError(f"kernel {self.name}: no compiled variant for ({got})")


def _convert(args: tuple[Any, ...], checks: list[Any]) -> list[Any] | None:
    out: list[Any] = []
    for a, c in zip(args, checks, strict=True):
        if isinstance(c, tuple):
            if not (isinstance(a, np.ndarray) and a.dtype == c[0] and a.ndim == c[1] and a.flags.c_contiguous):
                return None
            out.append(a)
        elif isinstance(a, np.ndarray):
            return None
        else:
            out.append(c(a))
    return out


_loaded: dict[str, _Dispatch] = {}
MODE = ""  # "aot" or "jit", once loaded


def kernel_flags(k: Kernel | None = None) -> dict[str, Any]:
    """numba compiler flags of a kernel, ahead of time and JIT alike: the GIL released; array
    arguments that do not alias each other (no kernel is called with one array in two arguments
    unless the two are disjoint parts of one buffer); and numba's parallel-loop pipeline. The
    kernels have no prange (threads come from ``parallel``), but that pipeline's passes leave code
    that runs 4-5x faster on the record walks (split_keys_chunks: 0.21 s -> 0.047 s for 1.7 M
    samples on one thread). Those passes miscompile an array grown in a loop (numba 0.68): the
    kernels take their outputs preallocated and say when they are too small."""
    from numba.core.cpu import ParallelOptions

    return {"release_gil": True, "noalias": True, "auto_parallel": ParallelOptions(True)}


def _compiled_module() -> Any | None:
    if os.environ.get("VPMUTRACE_KERNELS") == "jit":
        return None
    try:
        mod = importlib.import_module("vpmutrace.kernels._compiled")
    except ImportError:
        return None
    return mod if mod.source_stamp() == source_stamp() else None


_MODULE: list[Any] = []  # [the compiled extension, or None for the JIT], once looked for


def _load(name: str) -> _Dispatch:
    """One kernel: from the compiled extension, else compiled (or loaded from numba's cache) by the JIT."""
    global MODE
    if not _MODULE:
        _MODULE.append(_compiled_module())
        MODE = "aot" if _MODULE[0] is not None else "jit"
    k = KERNELS[name]
    if _MODULE[0] is not None:
        return _Dispatch(name, k, [getattr(_MODULE[0], export_name(name, i)) for i in range(len(k.variants()))])
    import numba
    from numba.core import cpu

    finalize = cpu.CPUTargetOptions.finalize
    flags = kernel_flags(k)

    def with_kernel_flags(self: Any, numba_flags: Any, options: Any) -> None:  # numba has no option for noalias
        finalize(self, numba_flags, options)
        for flag, value in flags.items():
            setattr(numba_flags, flag, value)

    cpu.CPUTargetOptions.finalize = with_kernel_flags  # only while this kernel compiles or loads
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", numba.NumbaPerformanceWarning)  # "no parallel transformation"
            src = getattr(importlib.import_module(f"vpmutrace.kernels.{k.module}"), name)
            funcs = [numba.njit(_jit_signatures(k, v), cache=True, nogil=True)(src) for v in k.variants()]
    finally:
        cpu.CPUTargetOptions.finalize = finalize
    return _Dispatch(name, k, funcs)


def _jit_signatures(k: Kernel, variant: tuple[str, ...]) -> list[Any]:
    """The variant's signature, and the same with read-only data buffers (a mapped file, bytes) and
    ``const`` arrays: numba types those apart, the ahead-of-time wrappers do not."""
    from numba.core import sigutils

    args, ret = sigutils.normalize_signature(k.signature(variant))
    ro = tuple(a.copy(readonly=True) if spec == BUF or spec.startswith(CONST) else a
               for a, spec in zip(args, variant, strict=True))
    return [ret(*args)] + ([ret(*ro)] if ro != args else [])


def __getattr__(name: str) -> _Dispatch:
    if name not in KERNELS:
        raise AttributeError(name)
    if name not in _loaded:
        _loaded[name] = _load(name)
    return _loaded[name]


_POOL: ThreadPoolExecutor | None = None
MIN_PER_THREAD = 1 << 14  # items below which a range is not worth a thread


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel(kernel: Callable[..., Any], n: int, *args: Any, pieces: int | None = None,
             min_items: int = MIN_PER_THREAD) -> list[Any]:
    """Run ``kernel(*args, lo, hi)`` over items 0..n in ranges on the worker threads (inline when
    one thread or few items). ``pieces`` fixes the number of ranges (kernels whose items are
    pieces of the data). Returns each range's result, in order."""
    global _POOL
    t = threads()
    k = pieces if pieces is not None else min(4 * t, max(1, n // min_items))
    if t == 1 or k <= 1 or n <= 1:
        return [kernel(*args, 0, n)]
    bounds = np.linspace(0, n, min(k, n) + 1).astype(np.int64).tolist()
    if _POOL is None:
        _POOL = ThreadPoolExecutor(t, thread_name_prefix="vpmutrace-kernel")
    return list(_POOL.map(lambda ab: kernel(*args, ab[0], ab[1]), zip(bounds[:-1], bounds[1:], strict=True)))
