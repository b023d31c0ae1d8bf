"""Ahead-of-time build of the kernels (numba.pycc) into ``vpmutrace.kernels._compiled``.

Used by setup.py at install time; ``python -m vpmutrace.kernels.build`` builds it in place.
Each kernel variant of the registry becomes one exported function, compiled as the JIT
fallback compiles it (``vpmutrace.kernels.kernel_flags``): with the GIL released in its
Python wrapper, so that ``vpmutrace.kernels.parallel`` can run it on several threads, and with
its array arguments marked as not aliasing each other. ``source_stamp()`` returns the hash of
the sources it was built from.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from vpmutrace.kernels import kernel_flags, source_stamp
from vpmutrace.kernels.registry import KERNELS, export_name

EXTENSION = "_compiled"


def _kernel_flags() -> None:
    """pycc compiles every export with one ``Flags()``: each kernel gets its own flags instead."""
    import numba.pycc.compiler as pycc_compiler

    compile_extra = pycc_compiler.compile_extra
    if getattr(compile_extra, "_vpmutrace", False):
        return

    def with_kernel_flags(typingctx: Any, targetctx: Any, func: Any, args: Any, return_type: Any, flags: Any,
                          *a: Any, **k: Any) -> Any:
        if func.__name__ in KERNELS:
            flags = flags.copy()
            for name, value in kernel_flags(KERNELS[func.__name__]).items():
                setattr(flags, name, value)
        return compile_extra(typingctx, targetctx, func, args, return_type, flags, *a, **k)

    with_kernel_flags._vpmutrace = True  # type: ignore[attr-defined]
    pycc_compiler.compile_extra = with_kernel_flags


def compiler() -> Any:
    """A numba.pycc.CC with every kernel variant exported."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycc's pending-deprecation notice
        from numba.pycc import CC

    _kernel_flags()
    cc = CC(EXTENSION, source_module=__name__)
    for name, k in KERNELS.items():
        func = getattr(importlib.import_module(f"vpmutrace.kernels.{k.module}"), name)
        for i, variant in enumerate(k.variants()):
            cc.export(export_name(name, i), k.signature(variant))(func)
    stamp = source_stamp()
    namespace: dict[str, Any] = {}
    exec(f"def source_stamp():\n    return {stamp}\n", namespace)  # a constant compiled into the module
    cc.export("source_stamp", "i8()")(namespace["source_stamp"])
    return cc


def extension() -> Any:
    """The setuptools Extension that builds the kernels (setup.py)."""
    return compiler().distutils_extension()


if __name__ == "__main__":
    cc = compiler()
    cc.verbose = "-v" in sys.argv
    cc.compile()
    print(f"built {cc.output_dir}/{cc.output_file}")
