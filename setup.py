"""Build hook: the package layout, the files a wheel carries besides the code, and the compiled
kernels (``vpmutrace.kernels._compiled``, ahead of time with numba.pycc).

Everything else is declared in pyproject.toml.

- Packages: ``vpmutrace`` and its subpackages from ``vpmutrace/``, and ``vpmutrace.collectors``
  from the top-level ``collectors/`` folder (setuptools ``package_dir``), so that a wheel installs
  nothing but ``vpmutrace`` into site-packages.
- Data copied into the wheel at build time: the real captures ``vpmutrace demo`` runs on
  (``vpmutrace/bundled.py`` lists them; they live in ``fixtures/``) as ``vpmutrace/demo_traces/``,
  and the project's documents (``docs/*.md``: the design reference the findings cite) as
  ``vpmutrace/docs/``. An editable install reads both from the checkout.
- The compiled kernels are optional: where they cannot be built (no C compiler), the package
  installs without them and numba's JIT compiles the same kernels on first use (see
  vpmutrace/kernels/__init__.py).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import find_namespace_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


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


class WithData(build_py):
    """build_py that also copies the demo's captures and docs/*.md into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        from vpmutrace import bundled

        pkg = Path(self.build_lib) / "vpmutrace"
        copies = [(ROOT / "fixtures" / f, pkg / bundled.PACKAGE_DIR / f) for f in bundled.FILES]
        copies += [(f, pkg / "docs" / f.name) for f in sorted((ROOT / "docs").glob("*.md"))]
        for src, dst in copies:
            if not src.is_file():
                raise SystemExit(f"vpmutrace build: {src} is missing (the wheel must carry it)")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


def extensions() -> list[Any]:
    try:
        from vpmutrace.kernels.build import extension

        return [extension()]
    except Exception as e:  # noqa: BLE001 - no numba at build time: install without
        print(f"vpmutrace: compiled kernels not built ({type(e).__name__}: {e})", file=sys.stderr)
        return []


setup(packages=[*find_namespace_packages(include=["vpmutrace", "vpmutrace.*"]), "vpmutrace.collectors"],
      package_dir={"vpmutrace.collectors": "collectors"},
      ext_modules=extensions(), cmdclass={"build_ext": OptionalKernels, "build_py": WithData})
