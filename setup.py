"""Build hook: the compiled kernels (``vpmutrace.kernels._compiled``), ahead of time with numba.pycc.

Everything else is declared in pyproject.toml. The extension is optional: where it cannot be
built (no C compiler), the package installs without it and numba's JIT compiles the same
kernels on first use (see vpmutrace/kernels/__init__.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent))


class OptionalKernels(build_ext):
    """build_ext that compiles the numba.pycc objects first and does not fail the install."""

    def build_extension(self, ext: Any) -> None:
        try:
            if hasattr(ext, "_prepare_object_files"):
                ext._prepare_object_files(self)
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - any build failure: install without, JIT at run time
            print(f"vpmutrace: compiled kernels not built ({type(e).__name__}: {e}); numba will compile them on "
                  "first use", file=sys.stderr)


def extensions() -> list[Any]:
    try:
        from vpmutrace.kernels.build import extension

        return [extension()]
    except Exception as e:  # noqa: BLE001 - no numba at build time: install without
        print(f"vpmutrace: compiled kernels not built ({type(e).__name__}: {e})", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalKernels})
